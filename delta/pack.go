package delta

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"golang.org/x/sync/errgroup"
)

// A delta pack holds the chunks of a release TO that a release FROM lacks,
// compressed against FROM's content (decisions/0006). It is cut into
// segments; each segment is one zstd frame of some of those chunks, in TO's
// order, compressed with a raw dictionary made of ranges of FROM's content
// chosen by similarity. A terminal holding FROM (its running slot, or its
// installed bundle release) reads those ranges from it, decodes the frame
// and verifies every chunk by its ID. Memory is bounded by one segment plus
// its reference, whatever the size of the release.
//
// Format (version 3):
//
//	"IMGPACK\x03"
//	uvarint segments
//	per segment:
//	  uvarint refs;   refs × (uvarint offset delta, uvarint length)   ranges of FROM, ascending, disjoint
//	  uvarint inflated; × (uvarint offset delta, uvarint length,     FROM's gzip members (their deflate data,
//	                       uvarint inflated length)                   ascending) joining the reference inflated
//	  uvarint transforms; × (uvarint offset delta, uvarint length,   deflate data in the segment's bytes that
//	                       uvarint inflated length, uvarint encoder)  the frame carries inflated (regzip.go)
//	  uvarint filter                                               0, or 1: x86 branch filter on the segment's
//	                                                               bytes and its reference (bcj.go)
//	  uvarint chunks                                               how many of the pack's chunks the frame yields
//	  uvarint frame length; the zstd frame
//
// A segment's reference is its ranges of FROM, then its inflated members,
// one after the other. Its frame decodes to its chunks' bytes with each
// transform's deflate data inflated (and, with the x86 filter, filtered,
// against a filtered reference); the decoder undoes the filter and deflates
// the transforms again (internal/zdeflate) before it verifies the chunks.
// Version 2 is version 3 without the inflated and transform lists and the
// filter (what BuildPack writes with KeepGzip).
//
// The chunks themselves are not in the pack: they are PackChunks(FROM, TO),
// which a terminal computes from the two manifests it holds and the signed
// pack record commits to (ChunksDigest), and the segments yield them in
// that order. Version 1 listed every chunk's ID and size in its segment
// (34 bytes a chunk, 0.9 % of the image pack); it is still read, and its
// list must be the same.
var (
	packMagic   = []byte("IMGPACK\x03")
	packMagicV2 = []byte("IMGPACK\x02")
	packMagicV1 = []byte("IMGPACK\x01")
)

// PackOptions tune BuildPack. The zero value is the default.
type PackOptions struct {
	SegmentSize int // plain bytes of chunks per segment (default 8 MiB)
	// RefBudget is how many bytes of FROM a segment references (default
	// 16 MiB), and again how many of FROM's inflated gzip members.
	RefBudget int
	// Margin is how much of FROM around a similar region is referenced
	// (default 64 KiB).
	Margin int64
	// Progress, if set, is called with plain bytes packed.
	Progress func(n int64)
	// Encode, if set, replaces the built-in encoder (klauspost/compress
	// zstd at its best level): it must return one zstd frame of plain that
	// uses ref as a raw-content prefix (what `zstd --patch-from=REF` writes)
	// with a window no larger than the next power of two of
	// len(ref)+len(plain), at least 1 MiB. The decoder stays the same.
	Encode func(plain, ref []byte) ([]byte, error)
	// KeepGzip carries gzip streams as they are (format version 2, which
	// terminals before version 3 read) instead of inflated.
	KeepGzip bool
}

func (o *PackOptions) defaults() {
	if o.SegmentSize <= 0 {
		o.SegmentSize = 8 << 20
	}
	if o.RefBudget <= 0 {
		o.RefBudget = 16 << 20
	}
	if o.Margin <= 0 {
		o.Margin = 64 << 10
	}
}

// Limits a decoder enforces on a pack (a pack is untrusted until its chunks
// verify).
const (
	// maxDeflateRatio bounds what n bytes of DEFLATE data can inflate to
	// (258 bytes for each 2-bit match code at best, ~1032:1): a claimed
	// size beyond it is a lie, refused before anything is allocated.
	maxDeflateRatio = 1032
	maxPackSegment  = 64 << 20
	maxPackRef      = 256 << 20
	maxPackRefs     = 1 << 16
	maxPackChunks   = 1 << 20
)

// PackStats describes a built pack.
type PackStats struct {
	Chunks     int   `json:"chunks"`
	PlainBytes int64 `json:"plain_bytes"` // of the chunks it yields
	Segments   int   `json:"segments"`
	RefBytes   int64 `json:"reference_bytes"` // of FROM read by a decoder
	Size       int64 `json:"size"`
	// Regzipped counts the gzip streams carried inflated, and their
	// deflate bytes.
	Regzipped      int   `json:"regzipped,omitempty"`
	RegzippedBytes int64 `json:"regzipped_bytes,omitempty"`
	// RegzipInflated is what those streams inflate to: the bytes a
	// terminal deflates again.
	RegzipInflated int64 `json:"regzip_inflated,omitempty"`
	// Filtered counts the segments encoded through the x86 filter.
	Filtered int `json:"filtered,omitempty"`
	// Format is the pack format version written (2 with KeepGzip, else 3).
	Format int `json:"format"`
}

// PackChunks returns the chunks a pack from→to carries: those of to that
// from lacks, in to's order.
func PackChunks(from, to *manifest.Manifest) []manifest.ChunkRef {
	have := from.ChunkIndex()
	var out []manifest.ChunkRef
	for _, c := range to.Chunks {
		if _, ok := have[c.ID]; !ok {
			out = append(out, c)
		}
	}
	return out
}

// anchor positions: content-defined (a gear hash over the last 64 bytes
// hits a mask), so the same bytes give the same anchors wherever they are.
var gear = func() (g [256]uint64) {
	r := rand.New(rand.NewPCG(0x696d6763746c, 6)) // fixed: anchors must not change between builds
	for i := range g {
		g[i] = r.Uint64()
	}
	return
}()

const anchorMask = 1<<8 - 1 // one anchor per ~256 bytes

func anchors(b []byte, fn func(pos int, fp uint64)) {
	var h uint64
	for i, c := range b {
		h = h<<1 + gear[c]
		if i >= 63 && h&anchorMask == 0 {
			fn(i, h)
		}
	}
}

// fromIndex maps anchor fingerprints of FROM's data to their offsets.
func fromIndex(ctx context.Context, from *manifest.Manifest, r io.ReaderAt) (map[uint64]int64, error) {
	idx := map[uint64]int64{}
	buf := make([]byte, from.Chunker.MaxSize)
	var err error
	from.Walk(func(off, size int64, c int) bool {
		if c < 0 {
			return true
		}
		if err = ctx.Err(); err != nil {
			return false
		}
		b := buf[:size]
		if _, err = r.ReadAt(b, off); err != nil {
			return false
		}
		anchors(b, func(pos int, fp uint64) {
			if _, ok := idx[fp]; !ok {
				idx[fp] = off + int64(pos)
			}
		})
		return true
	})
	return idx, err
}

type span64 struct{ off, end int64 }

// BuildPack writes the pack from→to to w. fromContent reads FROM's content
// (the publisher's store through StoreContent, or an image); chunks gives
// the plain bytes of TO's chunks.
func BuildPack(ctx context.Context, w io.Writer, from, to *manifest.Manifest, fromContent io.ReaderAt, chunks chunkstore.Getter, opts PackOptions) (PackStats, error) {
	opts.defaults()
	var st PackStats
	refs := PackChunks(from, to)
	idx, err := fromIndex(ctx, from, fromContent)
	if err != nil {
		return st, fmt.Errorf("indexing revision %d: %w", from.Revision, err)
	}
	// FROM's gzip members, inflated, get addresses past FROM's end in the
	// same index.
	var infl []inflatedRef
	if !opts.KeepGzip {
		if infl, err = fromGzip(ctx, from, fromContent); err != nil {
			return st, fmt.Errorf("reading revision %d: %w", from.Revision, err)
		}
		for _, m := range infl {
			anchors(m.plain, func(pos int, fp uint64) {
				if _, ok := idx[fp]; !ok {
					idx[fp] = m.at + int64(pos)
				}
			})
		}
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	cw := &countWriter{w: bw}
	if opts.KeepGzip {
		cw.Write(packMagicV2)
		st.Format = 2
	} else {
		cw.Write(packMagic)
		st.Format = 3
	}
	// Segments: consecutive chunks up to SegmentSize.
	var segs [][]manifest.ChunkRef
	for i := 0; i < len(refs); {
		j, n := i, 0
		for j < len(refs) && (j == i || n+int(refs[j].Size) <= opts.SegmentSize) {
			n += int(refs[j].Size)
			j++
		}
		segs = append(segs, refs[i:j])
		i = j
	}
	cw.Write(binary.AppendUvarint(nil, uint64(len(segs))))
	votes := map[int64]int{}
	for _, seg := range segs {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		var plain []byte
		cuts := []int{0} // chunk boundaries in plain
		for _, c := range seg {
			ch, err := chunks.Get(ctx, c.ID)
			if err != nil {
				return st, fmt.Errorf("chunk %s: %w", c.ID.Short(), err)
			}
			plain = append(plain, ch.Plain()...)
			cuts = append(cuts, len(plain))
		}
		var ts []transform
		if !opts.KeepGzip {
			ts = regzippable(ctx, plain)
		}
		data := applyTransforms(plain, ts)
		// Each piece (a chunk, or up to 16 KiB of inflated text) votes for
		// the places of FROM (or of its inflated members) that share its
		// anchors; the two best become windows of the reference.
		var wins []span64
		for _, p := range pieces(cuts, ts) {
			b := data[p.off:p.end]
			clear(votes)
			anchors(b, func(pos int, fp uint64) {
				if o, ok := idx[fp]; ok {
					votes[(o-int64(pos))>>12]++
				}
			})
			for _, k := range topVotes(votes, 2) {
				lo, hi := k<<12-opts.Margin, k<<12+int64(len(b))+opts.Margin
				if k<<12 < from.Size {
					wins = append(wins, span64{max(lo, 0), min(hi, from.Size)})
				} else {
					wins = append(wins, wholeMembers(infl, max(lo, from.Size), hi))
				}
			}
		}
		// Merge the windows, keep them within the budget (most chunks'
		// windows come first in content order; keep the earliest).
		// Inflated members have a budget of their own: they come after
		// FROM's ranges in address order and would otherwise find it spent.
		sort.Slice(wins, func(a, b int) bool { return wins[a].off < wins[b].off })
		var merged []span64
		var budget [2]int64 // FROM's ranges, inflated members: RefBudget each
		for _, s := range wins {
			if s.end <= s.off {
				continue
			}
			kind := 0
			if s.off >= from.Size {
				kind = 1
			}
			if k := len(merged) - 1; k >= 0 && s.off <= merged[k].end && (merged[k].off >= from.Size) == (kind == 1) {
				if grow := s.end - merged[k].end; grow > 0 && budget[kind]+grow <= int64(opts.RefBudget) {
					merged[k].end = s.end
					budget[kind] += grow
				}
				continue
			}
			if budget[kind]+s.end-s.off > int64(opts.RefBudget) {
				continue
			}
			merged = append(merged, s)
			budget[kind] += s.end - s.off
		}
		// The header: FROM's ranges (read into the reference as they are
		// listed), then, in format 3, its inflated members and transforms.
		ref := make([]byte, 0, budget[0]+budget[1])
		var ranges []byte
		nraw, prev := 0, int64(0)
		for _, s := range merged {
			if s.off >= from.Size {
				continue
			}
			ref = slices.Grow(ref, int(s.end-s.off))
			b := ref[len(ref) : len(ref)+int(s.end-s.off)]
			if _, err := fromContent.ReadAt(b, s.off); err != nil {
				return st, fmt.Errorf("reading revision %d at %d: %w", from.Revision, s.off, err)
			}
			ref = ref[:len(ref)+len(b)]
			ranges = binary.AppendUvarint(ranges, uint64(s.off-prev))
			ranges = binary.AppendUvarint(ranges, uint64(s.end-s.off))
			prev = s.end
			nraw++
		}
		h := append(binary.AppendUvarint(nil, uint64(nraw)), ranges...)
		if !opts.KeepGzip {
			var used []inflatedRef
			for _, s := range merged {
				if s.off >= from.Size {
					used = append(used, membersIn(infl, s)...)
				}
			}
			h = binary.AppendUvarint(h, uint64(len(used)))
			prev = 0
			for _, m := range used {
				ref = append(ref, m.plain...)
				h = binary.AppendUvarint(h, uint64(m.off-prev))
				h = binary.AppendUvarint(h, uint64(m.n))
				h = binary.AppendUvarint(h, uint64(len(m.plain)))
				prev = m.off + m.n
			}
			h = binary.AppendUvarint(h, uint64(len(ts)))
			at := 0
			for _, t := range ts {
				h = binary.AppendUvarint(h, uint64(t.off-at))
				h = binary.AppendUvarint(h, uint64(t.n))
				h = binary.AppendUvarint(h, uint64(t.size))
				h = binary.AppendUvarint(h, uint64(t.enc))
				at = t.off + t.n
				st.Regzipped++
				st.RegzippedBytes += int64(t.n)
				st.RegzipInflated += int64(t.size)
			}
		}
		encode := func(plain, ref []byte) ([]byte, error) {
			return chunkstore.EncodeWithDict(plain, ref, chunkstore.LevelBest)
		}
		var frame []byte
		if !opts.KeepGzip {
			// The x86 filter, where it makes the segment smaller: both
			// are encoded with the built-in encoder (whose frame is kept
			// when it is the encoder), and the smaller wins. A quicker
			// trial level chose wrongly: the toolchain pack grew 21 %.
			fd, fr := slices.Clone(data), slices.Clone(ref)
			bcjX86(fd, true)
			bcjX86(fr, true)
			var a, b []byte
			var g errgroup.Group
			g.Go(func() (err error) { a, err = encode(data, ref); return })
			g.Go(func() (err error) { b, err = encode(fd, fr); return })
			if err := g.Wait(); err != nil {
				return st, err
			}
			filter := filterNone
			frame = a
			if len(b) < len(a) {
				filter, data, ref, frame = filterX86, fd, fr, b
				st.Filtered++
			}
			h = binary.AppendUvarint(h, uint64(filter))
		}
		if opts.Encode != nil || frame == nil {
			enc := encode
			if opts.Encode != nil {
				enc = opts.Encode
			}
			var err error
			if frame, err = enc(data, ref); err != nil {
				return st, err
			}
		}
		h = binary.AppendUvarint(h, uint64(len(seg)))
		h = binary.AppendUvarint(h, uint64(len(frame)))
		cw.Write(h)
		cw.Write(frame)
		st.Segments++
		st.Chunks += len(seg)
		st.PlainBytes += int64(len(plain))
		st.RefBytes += int64(len(ref))
		if opts.Progress != nil {
			opts.Progress(int64(len(plain)))
		}
	}
	if err := bw.Flush(); err != nil {
		return st, err
	}
	if cw.err != nil {
		return st, cw.err
	}
	st.Size = cw.n
	return st, nil
}

// pieces cuts a segment's data (its bytes with transforms applied) into the
// parts that vote for reference windows: its chunks, except that inflated
// text goes in pieces of up to 16 KiB of its own. cuts are the chunk
// boundaries in the segment's bytes.
func pieces(cuts []int, ts []transform) []span {
	const most = 16 << 10
	var out []span
	shift := 0 // data position minus segment position, before transform k
	k := 0
	last := 0
	for _, c := range cuts[1:] {
		// Transforms that end at or before c: inflated text of their own.
		for k < len(ts) && ts[k].off+ts[k].n <= c {
			t := ts[k]
			if t.off+shift > last {
				out = append(out, span{last, t.off + shift})
			}
			at := t.off + shift
			for p := at; p < at+t.size; p += most {
				out = append(out, span{p, min(p+most, at+t.size)})
			}
			shift += t.size - t.n
			last = at + t.size
			k++
		}
		if k < len(ts) && ts[k].off < c {
			continue // c falls inside a transform: no cut there
		}
		if c+shift > last {
			out = append(out, span{last, c + shift})
			last = c + shift
		}
	}
	return out
}

type span struct{ off, end int }

// wholeMembers widens a window of the inflated address space to whole
// members.
func wholeMembers(infl []inflatedRef, lo, hi int64) span64 {
	i := sort.Search(len(infl), func(i int) bool { return infl[i].at+int64(len(infl[i].plain)) > lo })
	if i == len(infl) || infl[i].at >= hi {
		return span64{}
	}
	j := sort.Search(len(infl), func(j int) bool { return infl[j].at >= hi })
	return span64{infl[i].at, infl[j-1].at + int64(len(infl[j-1].plain))}
}

// membersIn returns the members a window of whole members covers.
func membersIn(infl []inflatedRef, s span64) []inflatedRef {
	i := sort.Search(len(infl), func(i int) bool { return infl[i].at >= s.off })
	j := sort.Search(len(infl), func(j int) bool { return infl[j].at >= s.end })
	return infl[i:j]
}

// topVotes returns up to n candidate keys with at least 2 votes, most
// votes first (ties: lower key), so builds are deterministic.
func topVotes(v map[int64]int, n int) []int64 {
	type kv struct {
		k int64
		v int
	}
	var all []kv
	for k, c := range v {
		if c >= 2 {
			all = append(all, kv{k, c})
		}
	}
	sort.Slice(all, func(a, b int) bool { return all[a].v > all[b].v || all[a].v == all[b].v && all[a].k < all[b].k })
	var out []int64
	for i := 0; i < len(all) && i < n; i++ {
		out = append(out, all[i].k)
	}
	return out
}

type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

// readInflatedRefs reads a segment's list of FROM's gzip members and their
// deflate data from FROM; the segment's worker inflates them.
func readInflatedRefs(uv func(uint64, string) (uint64, error), need func(int64) error, from io.ReaderAt, fromSize, refLen int64) ([]gzRef, error) {
	n, err := uv(maxPackRefs, "inflated reference count")
	if err != nil {
		return nil, err
	}
	var out []gzRef
	pos := int64(0)
	read := int64(0) // deflate bytes read from FROM
	for i := uint64(0); i < n; i++ {
		d, err := uv(uint64(fromSize), "inflated reference offset")
		if err != nil {
			return nil, err
		}
		clen, err := uv(maxGzipMember, "inflated reference length")
		if err != nil {
			return nil, err
		}
		size, err := uv(maxInflated, "inflated reference size")
		if err != nil {
			return nil, err
		}
		off := pos + int64(d)
		refLen += int64(size)
		read += int64(clen)
		if clen == 0 || size == 0 || size > maxDeflateRatio*clen || off+int64(clen) > fromSize || refLen > maxPackRef || read > maxPackRef {
			return nil, packErr("inflated reference %d: %d bytes at %d inflating to %d, beyond the release or the reference limits", i, clen, off, size)
		}
		if err := need(refLen + read); err != nil {
			return nil, err
		}
		b := make([]byte, clen)
		if _, err := from.ReadAt(b, off); err != nil {
			return nil, fmt.Errorf("reading the reference at %d: %w", off, err)
		}
		out = append(out, gzRef{off: off, deflated: b, size: int(size)})
		pos = off + int64(clen)
	}
	return out, nil
}

// gzRef is one of FROM's gzip members as a decoder reads it: its deflate
// data, to be inflated (size bytes) into the segment's reference.
type gzRef struct {
	off      int64
	deflated []byte
	size     int
}

// readTransforms reads a segment's transform list.
func readTransforms(uv func(uint64, string) (uint64, error)) ([]transform, error) {
	n, err := uv(maxPackRefs, "transform count")
	if err != nil {
		return nil, err
	}
	var ts []transform
	at := 0
	for i := uint64(0); i < n; i++ {
		var v [4]uint64
		for k, what := range []string{"transform offset", "transform length", "transform size", "transform encoder"} {
			lim := uint64(maxPackSegment)
			if k == 3 {
				lim = uint64(len(encoders) - 1)
			}
			if v[k], err = uv(lim, what); err != nil {
				return nil, err
			}
		}
		t := transform{off: at + int(v[0]), n: int(v[1]), size: int(v[2]), enc: int(v[3])}
		if t.n < minRegzip || t.size == 0 || t.size > maxDeflateRatio*t.n || t.off+t.n > maxPackSegment {
			return nil, packErr("transform %d: %d bytes at %d", i, t.n, t.off)
		}
		ts = append(ts, t)
		at = t.off + t.n
	}
	return ts, nil
}

// ErrPack: a pack could not be used (malformed, or it does not decode to
// the chunks it names). The caller falls back to fetching chunks.
var ErrPack = errors.New("delta pack unusable")

// PackAuthenticator is what a pack's reader may offer its decoder:
// Authenticate checks the whole pack against the hash its signed record
// gives, reading the rest of it first; the reader then goes on with the
// checked bytes. The decoder asks before one segment would hold more than
// maxUnchecked bytes (references, frame, decoded data): the lengths are the
// pack's to claim, and a forged header could otherwise make a terminal
// allocate hundreds of MiB before its chunks fail to verify. A pack of the
// default options never asks. A reader without it is trusted as checked.
type PackAuthenticator interface {
	Authenticate() error
}

// maxUnchecked bounds what one segment of a pack not yet checked as a
// whole may hold: about twice what the default options give one at most
// (8 MiB of data, 16 MiB of FROM's bytes and 16 MiB of inflated members
// as its reference, their deflate data, the frame). Larger segments
// (pack --reference 64) still decode, after the check.
const maxUnchecked = 96 << 20

// DecodePack reads a pack from r, taking its references from FROM's content
// (from, size fromSize), and calls fn with every chunk it yields, verified
// by its ID. chunks is what the pack must yield, in order: PackChunks(FROM,
// TO), the list the pack record's ChunksDigest commits to; a pack that
// yields anything else, or not all of it, is an error (ErrPack). Memory: one
// segment and its reference.
//
// Up to workers segments (0: one) are decoded at once, each holding its
// segment and reference: fn may be called from several goroutines.
func DecodePack(ctx context.Context, r io.Reader, from io.ReaderAt, fromSize int64, chunks []manifest.ChunkRef, fn func(chunkstore.Chunk) error, workers int) error {
	return DecodePackBatches(ctx, r, from, fromSize, chunks, func() (func(chunkstore.Chunk) error, func() error) { return fn, nil }, workers)
}

// DecodePackBatches is DecodePack that hands out each segment's chunks as a
// batch (the shape of BatchFetcher): open is called from the goroutine that
// decoded the segment, its put gets the segment's chunks in order, then done
// (if not nil) is called; an error from either stops the decoding.
func DecodePackBatches(ctx context.Context, r io.Reader, from io.ReaderAt, fromSize int64, chunks []manifest.ChunkRef,
	open func() (put func(chunkstore.Chunk) error, done func() error), workers int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(max(workers, 1))
	err := readPack(ctx, r, from, fromSize, chunks, func(sg segment) {
		g.Go(func() error { return decodeSegment(sg, open) })
	})
	if werr := g.Wait(); werr != nil {
		return werr
	}
	return err
}

func packErr(f string, a ...any) error { return fmt.Errorf("%w: "+f, append([]any{ErrPack}, a...)...) }

// segment is one parsed segment of a pack: its frame, its reference (read
// from FROM), its transforms and the chunks it yields (total bytes).
type segment struct {
	n          uint64 // its index
	frame, ref []byte
	gz         []gzRef // FROM's members to inflate after ref
	ts         []transform
	filter     int
	crefs      []manifest.ChunkRef
	total      int
}

// decodeSegment decodes one frame and hands out its verified chunks.
func decodeSegment(sg segment, open func() (func(chunkstore.Chunk) error, func() error)) error {
	size := sg.total // of the decoded frame
	for _, t := range sg.ts {
		size += t.size - t.n
	}
	if size > maxPackSegment {
		return packErr("segment %d decodes to more than %d bytes", sg.n, maxPackSegment)
	}
	ref := sg.ref // with room for the inflated members (readPack)
	for _, g := range sg.gz {
		var err error
		if ref, err = inflateInto(ref, g.deflated, g.size); err != nil {
			return packErr("inflated reference at %d (%d bytes): %v", g.off, g.size, err)
		}
	}
	if sg.filter == filterX86 {
		bcjX86(ref, true)
	}
	data, err := chunkstore.DecodeWithDict(sg.frame, ref, size)
	if err != nil {
		return packErr("segment %d: %v", sg.n, err)
	}
	if len(data) != size {
		return packErr("segment %d decodes to %d bytes, not %d", sg.n, len(data), size)
	}
	if sg.filter == filterX86 {
		bcjX86(data, false)
	}
	plain, err := undoTransforms(data, sg.ts, sg.total)
	if err != nil {
		return err
	}
	fn, done := open()
	off := 0
	for _, c := range sg.crefs {
		n := int(c.Size)
		ch, err := chunkstore.VerifyPlain(c.ID, plain[off:off+n:off+n])
		if err == nil {
			err = fn(ch)
		} else {
			err = packErr("%v", err)
		}
		if err != nil {
			if done != nil {
				done()
			}
			return err
		}
		off += n
	}
	if done != nil {
		return done()
	}
	return nil
}

// readPack parses a pack and calls seg with each segment's frame, reference
// (read from FROM) and chunk list, in order.
func readPack(ctx context.Context, r io.Reader, from io.ReaderAt, fromSize int64, chunks []manifest.ChunkRef, seg func(segment)) error {
	br := bufio.NewReaderSize(r, 1<<20)
	bad := packErr
	magic := make([]byte, len(packMagic))
	version := 0
	if _, err := io.ReadFull(br, magic); err == nil {
		switch string(magic) {
		case string(packMagicV1):
			version = 1
		case string(packMagicV2):
			version = 2
		case string(packMagic):
			version = 3
		}
	}
	if version == 0 {
		return bad("not a pack (version 1, 2 or 3)")
	}
	v1 := version == 1
	auth, _ := r.(PackAuthenticator)
	checked := auth == nil
	// need is called before a segment holds n bytes.
	need := func(n int64) error {
		if checked || n <= maxUnchecked {
			return nil
		}
		if err := auth.Authenticate(); err != nil {
			return fmt.Errorf("a segment claims %d bytes; checking the pack first: %w", n, err)
		}
		checked = true
		return nil
	}
	next := 0 // chunks handed to segments so far
	uv := func(max uint64, what string) (uint64, error) {
		v, err := binary.ReadUvarint(br)
		if err != nil {
			return 0, bad("%s: %v", what, err)
		}
		if v > max {
			return 0, bad("%s %d exceeds %d", what, v, max)
		}
		return v, nil
	}
	nseg, err := uv(1<<24, "segment count")
	if err != nil {
		return err
	}
	for s := uint64(0); s < nseg; s++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		nref, err := uv(maxPackRefs, "reference count")
		if err != nil {
			return err
		}
		// The ranges first, then one buffer read into in place.
		ranges := make([]span64, 0, nref)
		pos, refLen := int64(0), int64(0)
		for i := uint64(0); i < nref; i++ {
			d, err := uv(uint64(fromSize), "reference offset")
			if err != nil {
				return err
			}
			n, err := uv(maxPackRef, "reference length")
			if err != nil {
				return err
			}
			off := pos + int64(d)
			refLen += int64(n)
			if off+int64(n) > fromSize || refLen > maxPackRef {
				return bad("reference %d+%d beyond the release it refers to (%d bytes)", off, n, fromSize)
			}
			ranges = append(ranges, span64{off, off + int64(n)})
			pos = off + int64(n)
		}
		if err := need(refLen); err != nil {
			return err
		}
		var ts []transform
		var gz []gzRef
		filter := filterNone
		inflated := 0 // bytes of FROM's members the reference gets inflated
		if version >= 3 {
			if gz, err = readInflatedRefs(uv, need, from, fromSize, refLen); err != nil {
				return err
			}
			for _, g := range gz {
				inflated += g.size
			}
			if ts, err = readTransforms(uv); err != nil {
				return err
			}
			f, err := uv(filterX86, "segment filter")
			if err != nil {
				return err
			}
			filter = int(f)
		}
		ref := make([]byte, refLen, refLen+int64(inflated))
		at := int64(0)
		for _, r := range ranges {
			if _, err := from.ReadAt(ref[at:at+r.end-r.off], r.off); err != nil {
				return fmt.Errorf("reading the reference at %d: %w", r.off, err)
			}
			at += r.end - r.off
		}
		nch, err := uv(maxPackChunks, "chunk count")
		if err != nil {
			return err
		}
		if nch > uint64(len(chunks)-next) {
			return bad("segment %d yields %d chunks, %d are left to yield", s, nch, len(chunks)-next)
		}
		crefs := chunks[next : next+int(nch)]
		next += int(nch)
		total := 0
		for _, c := range crefs {
			if v1 {
				var id chunkstore.ID
				if _, err := io.ReadFull(br, id[:]); err != nil {
					return bad("chunk list: %v", err)
				}
				n, err := uv(chunkstore.MaxChunkSize, "chunk size")
				if err != nil {
					return err
				}
				if id != c.ID || uint32(n) != c.Size {
					return bad("chunk list differs from the releases' (chunk %s)", id.Short())
				}
			}
			total += int(c.Size)
			if total > maxPackSegment {
				return bad("segment of more than %d bytes", maxPackSegment)
			}
		}
		flen, err := uv(uint64(chunkstore.MaxStoredSize(total)), "frame length")
		if err != nil {
			return err
		}
		held := refLen + int64(inflated) + int64(flen) + int64(total)
		for _, g := range gz {
			held += int64(len(g.deflated))
		}
		for _, t := range ts {
			held += int64(t.size - t.n) // the decoded data grows by these
		}
		if err := need(held); err != nil {
			return err
		}
		frame := make([]byte, flen)
		if _, err := io.ReadFull(br, frame); err != nil {
			return bad("frame: %v", err)
		}
		if n := len(ts); n > 0 && ts[n-1].off+ts[n-1].n > total {
			return bad("segment %d: a transform ends past its %d bytes", s, total)
		}
		seg(segment{n: s, frame: frame, ref: ref, gz: gz, ts: ts, filter: filter, crefs: crefs, total: total})
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return bad("trailing bytes")
	}
	if next != len(chunks) {
		return bad("the pack yields %d of its %d chunks", next, len(chunks))
	}
	return nil
}
