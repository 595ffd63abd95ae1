package delta

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
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
// Format (version 2):
//
//	"IMGPACK\x02"
//	uvarint segments
//	per segment:
//	  uvarint refs;   refs × (uvarint offset delta, uvarint length)   ranges of FROM, ascending, disjoint
//	  uvarint chunks                                               how many of the pack's chunks the frame yields
//	  uvarint frame length; the zstd frame
//
// The chunks themselves are not in the pack: they are PackChunks(FROM, TO),
// which a terminal computes from the two manifests it holds and the signed
// pack record commits to (ChunksDigest), and the segments yield them in
// that order. Version 1 listed every chunk's ID and size in its segment
// (34 bytes a chunk, 0.9 % of the image pack); it is still read, and its
// list must be the same.
var (
	packMagic   = []byte("IMGPACK\x02")
	packMagicV1 = []byte("IMGPACK\x01")
)

// PackOptions tune BuildPack. The zero value is the default.
type PackOptions struct {
	SegmentSize int // plain bytes of chunks per segment (default 8 MiB)
	RefBudget   int // bytes of FROM referenced per segment (default 16 MiB)
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
	maxPackSegment = 64 << 20
	maxPackRef     = 256 << 20
	maxPackRefs    = 1 << 16
	maxPackChunks  = 1 << 20
)

// PackStats describes a built pack.
type PackStats struct {
	Chunks     int   `json:"chunks"`
	PlainBytes int64 `json:"plain_bytes"` // of the chunks it yields
	Segments   int   `json:"segments"`
	RefBytes   int64 `json:"reference_bytes"` // of FROM read by a decoder
	Size       int64 `json:"size"`
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
	bw := bufio.NewWriterSize(w, 1<<20)
	cw := &countWriter{w: bw}
	cw.Write(packMagic)
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
		var wins []span64
		for _, c := range seg {
			ch, err := chunks.Get(ctx, c.ID)
			if err != nil {
				return st, fmt.Errorf("chunk %s: %w", c.ID.Short(), err)
			}
			p := ch.Plain()
			clear(votes)
			anchors(p, func(pos int, fp uint64) {
				if o, ok := idx[fp]; ok {
					votes[(o-int64(pos))>>12]++
				}
			})
			for _, k := range topVotes(votes, 2) {
				start := k<<12 - opts.Margin
				wins = append(wins, span64{max(start, 0), min(k<<12+int64(len(p))+opts.Margin, from.Size)})
			}
			plain = append(plain, p...)
		}
		// Merge the windows, keep them within the budget (most chunks'
		// windows come first in content order; keep the earliest).
		sort.Slice(wins, func(a, b int) bool { return wins[a].off < wins[b].off })
		var merged []span64
		total := int64(0)
		for _, s := range wins {
			if k := len(merged) - 1; k >= 0 && s.off <= merged[k].end {
				if grow := s.end - merged[k].end; grow > 0 && total+grow <= int64(opts.RefBudget) {
					merged[k].end = s.end
					total += grow
				}
				continue
			}
			if total+s.end-s.off > int64(opts.RefBudget) {
				continue
			}
			merged = append(merged, s)
			total += s.end - s.off
		}
		ref := make([]byte, 0, total)
		for _, s := range merged {
			b := make([]byte, s.end-s.off)
			if _, err := fromContent.ReadAt(b, s.off); err != nil {
				return st, fmt.Errorf("reading revision %d at %d: %w", from.Revision, s.off, err)
			}
			ref = append(ref, b...)
		}
		encode := func(plain, ref []byte) ([]byte, error) {
			return chunkstore.EncodeWithDict(plain, ref, chunkstore.LevelBest)
		}
		if opts.Encode != nil {
			encode = opts.Encode
		}
		frame, err := encode(plain, ref)
		if err != nil {
			return st, err
		}
		// Header.
		h := binary.AppendUvarint(nil, uint64(len(merged)))
		prev := int64(0)
		for _, s := range merged {
			h = binary.AppendUvarint(h, uint64(s.off-prev))
			h = binary.AppendUvarint(h, uint64(s.end-s.off))
			prev = s.end
		}
		h = binary.AppendUvarint(h, uint64(len(seg)))
		h = binary.AppendUvarint(h, uint64(len(frame)))
		cw.Write(h)
		cw.Write(frame)
		st.Segments++
		st.Chunks += len(seg)
		st.PlainBytes += int64(len(plain))
		st.RefBytes += total
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

// ErrPack: a pack could not be used (malformed, or it does not decode to
// the chunks it names). The caller falls back to fetching chunks.
var ErrPack = errors.New("delta pack unusable")

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
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(max(workers, 1))
	err := readPack(ctx, r, from, fromSize, chunks, func(s uint64, frame, ref []byte, crefs []manifest.ChunkRef, total int) {
		g.Go(func() error { return decodeSegment(s, frame, ref, crefs, total, fn) })
	})
	if werr := g.Wait(); werr != nil {
		return werr
	}
	return err
}

func packErr(f string, a ...any) error { return fmt.Errorf("%w: "+f, append([]any{ErrPack}, a...)...) }

// decodeSegment decodes one frame and hands out its verified chunks.
func decodeSegment(s uint64, frame, ref []byte, crefs []manifest.ChunkRef, total int, fn func(chunkstore.Chunk) error) error {
	plain, err := chunkstore.DecodeWithDict(frame, ref, total)
	if err != nil {
		return packErr("segment %d: %v", s, err)
	}
	if len(plain) != total {
		return packErr("segment %d decodes to %d bytes, its chunks add up to %d", s, len(plain), total)
	}
	off := 0
	for _, c := range crefs {
		n := int(c.Size)
		ch, err := chunkstore.VerifyPlain(c.ID, plain[off:off+n:off+n])
		if err != nil {
			return packErr("%v", err)
		}
		if err := fn(ch); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// readPack parses a pack and calls seg with each segment's frame, reference
// (read from FROM) and chunk list, in order.
func readPack(ctx context.Context, r io.Reader, from io.ReaderAt, fromSize int64, chunks []manifest.ChunkRef, seg func(s uint64, frame, ref []byte, crefs []manifest.ChunkRef, total int)) error {
	br := bufio.NewReaderSize(r, 1<<20)
	bad := packErr
	magic := make([]byte, len(packMagic))
	if _, err := io.ReadFull(br, magic); err != nil || (string(magic) != string(packMagic) && string(magic) != string(packMagicV1)) {
		return bad("not a pack (version 1 or 2)")
	}
	v1 := string(magic) == string(packMagicV1)
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
		ref := make([]byte, refLen)
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
		frame := make([]byte, flen)
		if _, err := io.ReadFull(br, frame); err != nil {
			return bad("frame: %v", err)
		}
		seg(s, frame, ref, crefs, total)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return bad("trailing bytes")
	}
	if next != len(chunks) {
		return bad("the pack yields %d of its %d chunks", next, len(chunks))
	}
	return nil
}
