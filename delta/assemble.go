package delta

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"golang.org/x/sync/errgroup"
)

// Fetcher retrieves chunks from elsewhere. Fetch calls fn once for every
// requested chunk, possibly from several goroutines at once, with a
// verified chunk; it returns an error if any chunk could not be had or fn
// failed.
type Fetcher interface {
	Fetch(ctx context.Context, chunks []manifest.ChunkRef, fn func(chunkstore.Chunk) error) error
}

// BatchFetcher is an optional upgrade of a Fetcher that says where its
// batches begin and end (transport.Client.FetchBatches): for each batch it
// calls open from the goroutine that delivers it, hands the batch's chunks
// to put, then calls done. The assembler then writes chunks of a batch that
// follow each other in the output with one call instead of one per chunk
// (~16 KiB each: a third of a 1 GiB HTTP pull's write time went to
// per-chunk pwrite calls).
type BatchFetcher interface {
	Fetcher
	FetchBatches(ctx context.Context, chunks []manifest.ChunkRef, open func() (put func(chunkstore.Chunk) error, done func() error)) error
}

// BatchInto is an optional upgrade of a BatchFetcher that decodes each
// chunk into memory its receiver provides: open also returns into, which
// the fetcher calls before it decodes a chunk of size plain bytes (size >
// 0) and which returns a buffer to decode into past its length (or nil: a
// fresh buffer); put then receives a chunk whose plain bytes lie there.
// The assembler hands out its write buffer, which spares a buffer and a
// copy per fetched chunk (~9 % of an HTTP pull's CPU went to allocating,
// zeroing and copying them).
type BatchInto interface {
	FetchBatchesInto(ctx context.Context, chunks []manifest.ChunkRef, open func() (into func(id chunkstore.ID, size int) []byte, put func(chunkstore.Chunk) error, done func() error)) error
}

// Output is where the content is assembled: a file or block device.
type Output interface {
	io.WriterAt
	io.ReaderAt
}

// Zeroer is an optional Output upgrade: make a range read as zeros quickly
// (punch a hole, BLKZEROOUT). errors.ErrUnsupported means "write them".
type Zeroer interface {
	Zero(off, n int64) error
}

// Progress receives byte counts as the output fills. Implementations must be
// safe for concurrent use.
type Progress interface {
	Start(total int64)
	Add(n int64)
	Done()
}

type noProgress struct{}

func (noProgress) Start(int64) {}
func (noProgress) Add(int64)   {}
func (noProgress) Done()       {}

// Assembler carries out a Plan.
type Assembler struct {
	Out   Output
	Seeds []io.ReaderAt     // by the plan's seed index
	Cache chunkstore.Getter // may be nil
	Fetch Fetcher           // may be nil if nothing is to be fetched
	// ZeroFill writes zero extents; leave it off only when the output is
	// known to read as zeros there (a new or truncated file).
	ZeroFill bool
	Digest   bool
	Workers  int // local copy workers; 0 means GOMAXPROCS
	// Digest computes the BLAKE3 of the output while it is assembled
	// (Stats.Digest).
	//
	// TrustCache (with Digest, and a Cache that can decode without the
	// check) copies cached chunks without hashing each: the whole-image
	// digest covers them, and hashing them was ~7 % of a slot write's CPU.
	// If the digest then differs from the target's, Run checks each chunk
	// it so wrote where it lies in the output; those that fail are taken
	// again with their hash checked (a corrupt cached copy is dropped from
	// the cache on the way), and the output is hashed anew. Seed chunks are
	// always checked: a seed may have drifted (decisions/0003).
	TrustCache bool
	Progress   Progress
	Logger     *slog.Logger
}

// Stats counts what Run actually did (plain bytes of distinct chunks).
type Stats struct {
	InPlaceChunks int   `json:"in_place_chunks"`
	InPlaceBytes  int64 `json:"bytes_in_place"`
	SeedChunks    int   `json:"seed_chunks"`
	SeedBytes     int64 `json:"bytes_from_seed"`
	CacheChunks   int   `json:"cache_chunks"`
	CacheBytes    int64 `json:"bytes_from_cache"`
	FetchChunks   int   `json:"chunks_fetched"`
	FetchBytes    int64 `json:"plain_bytes_fetched"`
	// Fallbacks counts candidates that failed verification (a drifted seed,
	// a corrupt cache file) and were passed over.
	Fallbacks int `json:"fallbacks"`
	// Digest is the BLAKE3 of the output, read back (Assembler.Digest).
	Digest chunkstore.ID `json:"-"`
}

// Run assembles plan.Target into a.Out. The chunks the plan fetches are
// requested at once, while local candidates are copied; chunks whose local
// candidates all fail are fetched after that. On success every chunk
// written was verified against its ID; with Digest set, Stats.Digest is the
// BLAKE3 of the assembled output, read back from a.Out while it fills. The
// caller should Sync the output and compare that digest (VerifyDigest
// explains a mismatch).
func (a *Assembler) Run(ctx context.Context, plan *Plan) (Stats, error) {
	t := plan.Target
	prog := a.Progress
	if prog == nil {
		prog = noProgress{}
	}
	prog.Start(t.Size)
	defer prog.Done()

	// Zero extents first: the hasher may read them at once.
	for _, r := range t.Runs {
		if r.Kind != manifest.RunZero {
			continue
		}
		if a.ZeroFill {
			if err := zeroRange(a.Out, r.Offset, r.Size); err != nil {
				return Stats{}, fmt.Errorf("zero %d+%d: %w", r.Offset, r.Size, err)
			}
		}
		prog.Add(r.Size)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	occ := t.Occurrences()
	var tr *blockTracker
	var digestc chan digestResult
	if a.Digest {
		tr = newBlockTracker(t, occ)
		digestc = make(chan digestResult, 1)
		go func() { digestc <- a.hash(ctx, t, tr) }()
	}

	w := &writer{out: a.Out, t: t, occ: occ, prog: prog, tr: tr}
	if ua, ok := a.Cache.(uncheckedAppender); ok && a.TrustCache && a.Digest && t.Digest != (chunkstore.ID{}) {
		w.unchecked = ua
	}
	var (
		st      Stats
		mu      sync.Mutex
		missing []int
		retry   []int
	)
	for i, c := range plan.Sources {
		if len(c) == 0 {
			missing = append(missing, i)
		}
	}
	errc := make(chan error, 2)
	go func() { errc <- a.fetch(ctx, w, missing, &st, &mu) }()
	go func() { errc <- a.locals(ctx, w, plan, &st, &mu, &retry) }()
	var err error
	for k := 0; k < 2; k++ {
		if e := <-errc; e != nil && err == nil {
			err = e
			cancel()
		}
	}
	if err == nil && len(retry) > 0 {
		err = a.fetch(ctx, w, retry, &st, &mu)
	}
	if err != nil {
		return st, err
	}
	if digestc != nil {
		d := <-digestc
		if d.err != nil {
			return st, d.err
		}
		st.Digest = d.id
		if d.id != t.Digest && len(w.trusted) > 0 {
			if err := a.recheck(ctx, plan, occ, w.trusted, &st); err != nil {
				return st, err
			}
		}
	}
	return st, nil
}

// recheck follows a digest that differs from the target's after cached
// chunks were written unchecked (TrustCache): each of those is read back
// from the output and hashed; the ones that fail go through their
// candidates again, checked this time (a corrupt cached copy fails its
// check and is dropped from the cache, a stale location is looked up
// afresh), or are fetched; then the whole output is hashed again. If all
// of them pass, the mismatch lies elsewhere and is left to the caller.
func (a *Assembler) recheck(ctx context.Context, plan *Plan, occ [][]manifest.Occurrence, unchecked []int, st *Stats) error {
	t := plan.Target
	buf := make([]byte, t.Chunker.MaxSize)
	sub := &Plan{Target: t, Sources: make([][]Candidate, len(plan.Sources))}
	bad := 0
	for _, i := range unchecked {
		c := t.Chunks[i]
		b := buf[:c.Size]
		if n, _ := a.Out.ReadAt(b, occ[i][0].Offset); n == len(b) && chunkstore.Sum(b) == c.ID {
			continue
		}
		sub.Sources[i] = plan.Sources[i]
		bad++
		st.CacheChunks--
		st.CacheBytes -= int64(c.Size) // counted again where it is taken from
	}
	a.logf("digest differs: %d of %d chunks copied unchecked from the cache are wrong", bad, len(unchecked))
	if bad == 0 {
		return nil
	}
	w := &writer{out: a.Out, t: t, occ: occ, prog: noProgress{}}
	var mu sync.Mutex
	var retry []int
	if err := a.locals(ctx, w, sub, st, &mu, &retry); err != nil {
		return err
	}
	if len(retry) > 0 {
		if err := a.fetch(ctx, w, retry, st, &mu); err != nil {
			return err
		}
	}
	id, err := chunkstore.Digest(ctx, a.Out, t.Size, nil)
	if err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	st.Digest = id
	return nil
}

type digestResult struct {
	id  chunkstore.ID
	err error
}

// hash reads the output back block by block (chunkstore.TreeBlock) as
// soon as every extent of a block is written, on all cores, and returns the
// BLAKE3 of the whole output. Blocks without chunks (zeros) are hashed at
// once; holes are asked for only within final blocks.
func (a *Assembler) hash(ctx context.Context, t *manifest.Manifest, tr *blockTracker) digestResult {
	d := tr.digest
	workers := max(runtime.GOMAXPROCS(0), 1)
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte // made if a block cannot be mapped
			for {
				var b int
				select {
				case <-ctx.Done():
					errc <- ctx.Err()
					return
				case x, ok := <-tr.ready:
					if !ok {
						return
					}
					b = x
				}
				off, n := d.BlockRange(b)
				if err := d.MapBlock(b, a.Out, chunkstore.FindHolesIn(a.Out, off, off+n), &buf); err != nil {
					errc <- fmt.Errorf("read back: %w", err)
					return
				}
				if tr.hashed() {
					close(tr.ready)
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return digestResult{err: err}
	default:
	}
	id, err := d.Sum()
	return digestResult{id: id, err: err}
}

// blockTracker counts, per digest block, the chunk extents not yet written,
// and queues a block for hashing when its count reaches zero.
type blockTracker struct {
	digest  *chunkstore.TreeDigest
	t       *manifest.Manifest
	occ     [][]manifest.Occurrence
	mu      sync.Mutex
	pending []int
	left    int      // blocks not yet hashed
	ready   chan int // blocks ready to hash; closed when all are hashed
}

func newBlockTracker(t *manifest.Manifest, occ [][]manifest.Occurrence) *blockTracker {
	d := chunkstore.NewTreeDigest(t.Size)
	tr := &blockTracker{digest: d, t: t, occ: occ, pending: make([]int, d.Blocks()),
		left: d.Blocks(), ready: make(chan int, d.Blocks())}
	t.Walk(func(off, size int64, c int) bool {
		if c >= 0 && size > 0 {
			for b := off / chunkstore.TreeBlock; b <= (off+size-1)/chunkstore.TreeBlock; b++ {
				tr.pending[b]++
			}
		}
		return true
	})
	for b, n := range tr.pending {
		if n == 0 {
			tr.ready <- b
		}
	}
	return tr
}

// written records that every occurrence of chunk i is written.
func (tr *blockTracker) written(i int) {
	if tr == nil {
		return
	}
	size := int64(tr.t.Chunks[i].Size)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, o := range tr.occ[i] {
		for k := 0; k < o.Count; k++ {
			off := o.Offset + int64(k)*size
			for b := off / chunkstore.TreeBlock; b <= (off+size-1)/chunkstore.TreeBlock; b++ {
				tr.pending[b]--
				if tr.pending[b] == 0 {
					tr.ready <- int(b)
				}
			}
		}
	}
}

// hashed counts a hashed block and reports whether it was the last.
func (tr *blockTracker) hashed() bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.left--
	return tr.left == 0
}

// locals copies every chunk that has local candidates, with a.Workers
// workers; chunks whose candidates all fail go to *retry. Each worker takes
// runs of localBatch consecutive chunks, which lie one after the other in
// the output, and writes what follows on in one call (a run): per-chunk
// writes of ~16 KiB cost twice the kernel time of 1 MiB ones, and a
// goroutine per chunk grew ~12,000 stacks for one image.
func (a *Assembler) locals(ctx context.Context, w *writer, plan *Plan, st *Stats, mu *sync.Mutex, retry *[]int) error {
	t := plan.Target
	workers := a.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	var idx []int
	for i, c := range plan.Sources {
		if len(c) > 0 {
			idx = append(idx, i)
		}
	}
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range min(workers, max(len(idx), 1)) {
		g.Go(func() error {
			buf := make([]byte, 0, t.Chunker.MaxSize)
			r := &run{w: w, buf: make([]byte, 0, runBytes)}
			for {
				start := int(next.Add(localBatch)) - localBatch
				if start >= len(idx) {
					return nil
				}
				batch := idx[start:min(start+localBatch, len(idx))]
				skipSpan := false
				for k := 0; k < len(batch); {
					if err := gctx.Err(); err != nil {
						return err
					}
					// Chunks that lie one after the other in a seed and
					// in the output are read with one call.
					n, cut, err := 0, false, error(nil)
					if !skipSpan {
						n, cut, err = a.seedSpan(r, plan, batch[k:])
						if err != nil {
							return err
						}
					}
					// A chunk that failed in a span goes through local
					// without being read in a span again.
					skipSpan = cut
					if n > 0 {
						mu.Lock()
						for _, i := range batch[k : k+n] {
							st.countLocal(SourceSeed, int64(t.Chunks[i].Size), 0)
						}
						mu.Unlock()
						k += n
						continue
					}
					i := batch[k]
					k++
					kind, fallbacks, err := a.local(gctx, r, plan, i, buf)
					if err != nil {
						return err
					}
					mu.Lock()
					if !st.countLocal(kind, int64(t.Chunks[i].Size), fallbacks) {
						*retry = append(*retry, i)
					}
					mu.Unlock()
				}
				if err := r.flush(); err != nil {
					return err
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

const (
	localBatch = 64      // chunks a local worker takes at a time
	runBytes   = 1 << 20 // most bytes a run holds before it is written
)

// countLocal adds a chunk of n bytes copied from kind after fallbacks
// candidates failed; false means no candidate held it (it is fetched).
func (st *Stats) countLocal(kind SourceKind, n int64, fallbacks int) bool {
	st.Fallbacks += fallbacks
	switch kind {
	case SourceInPlace:
		st.InPlaceChunks++
		st.InPlaceBytes += n
	case SourceSeed:
		st.SeedChunks++
		st.SeedBytes += n
	case SourceCache:
		st.CacheChunks++
		st.CacheBytes += n
	default:
		return false
	}
	return true
}

// fetch gets chunks idx from a.Fetch and writes them everywhere they go.
func (a *Assembler) fetch(ctx context.Context, w *writer, idx []int, st *Stats, mu *sync.Mutex) error {
	if len(idx) == 0 {
		return nil
	}
	if a.Fetch == nil {
		return fmt.Errorf("%d chunks must be fetched and no source is configured", len(idx))
	}
	t := w.t
	want := make(map[chunkstore.ID]int, len(idx))
	refs := make([]manifest.ChunkRef, 0, len(idx))
	for _, i := range idx {
		want[t.Chunks[i].ID] = i
		refs = append(refs, t.Chunks[i])
	}
	var got atomic.Int64
	seen := make([]atomic.Bool, len(t.Chunks))
	// put checks a delivered chunk and writes it with write (into a
	// batch's run, or at once), unless it is written already.
	put := func(c chunkstore.Chunk, write func(i int, data []byte, skip int64) error) error {
		i, ok := want[c.ID()]
		if !ok {
			return fmt.Errorf("fetcher returned unrequested chunk %s", c.ID().Short())
		}
		if c.Size() != int(t.Chunks[i].Size) {
			return &chunkstore.IntegrityError{ID: c.ID(), Reason: "size differs from manifest"}
		}
		if seen[i].Swap(true) {
			return nil
		}
		if err := write(i, c.Plain(), -1); err != nil {
			return err
		}
		got.Add(1)
		mu.Lock()
		st.FetchChunks++
		st.FetchBytes += int64(c.Size())
		mu.Unlock()
		return nil
	}
	var err error
	bi, ok := a.Fetch.(BatchInto)
	if bf, isBatch := a.Fetch.(BatchFetcher); !ok && isBatch {
		bi, ok = AsBatchInto(bf), true
	}
	if ok {
		err = bi.FetchBatchesInto(ctx, refs, func() (func(chunkstore.ID, int) []byte, func(chunkstore.Chunk) error, func() error) {
			bp := runBufs.Get().(*[]byte)
			r := &run{w: w, buf: (*bp)[:0]}
			var roomErr error
			into := func(id chunkstore.ID, size int) []byte {
				i, ok := want[id]
				if !ok || roomErr != nil || seen[i].Load() {
					return nil
				}
				ok, roomErr = r.room(i, size, -1)
				if !ok {
					return nil
				}
				return r.buf
			}
			// inRun commits chunk i if the fetcher decoded it where into
			// said, else adds it as any other.
			inRun := func(i int, data []byte, skip int64) error {
				if n := len(r.buf); len(data) > 0 && cap(r.buf)-n >= len(data) && &r.buf[n:cap(r.buf)][0] == &data[0] {
					r.commit(i, len(data))
					return nil
				}
				return r.add(i, data, skip)
			}
			done := func() error {
				err := r.flush()
				runBufs.Put(bp)
				if roomErr != nil {
					return roomErr
				}
				return err
			}
			return into, func(c chunkstore.Chunk) error {
				if roomErr != nil {
					return roomErr
				}
				return put(c, inRun)
			}, done
		})
	} else {
		err = a.Fetch.Fetch(ctx, refs, func(c chunkstore.Chunk) error { return put(c, w.writeAll) })
	}
	if err != nil {
		return err
	}
	if int(got.Load()) != len(idx) {
		return fmt.Errorf("fetch delivered %d of %d chunks", got.Load(), len(idx))
	}
	return nil
}

// AsBatchInto is bf as a BatchInto: bf itself if it is one, else a
// BatchInto that never decodes where it is told (its receiver copies the
// chunks).
func AsBatchInto(bf BatchFetcher) BatchInto {
	if bi, ok := bf.(BatchInto); ok {
		return bi
	}
	return batchesInto{bf}
}

type batchesInto struct{ BatchFetcher }

func (b batchesInto) FetchBatchesInto(ctx context.Context, refs []manifest.ChunkRef, open func() (func(chunkstore.ID, int) []byte, func(chunkstore.Chunk) error, func() error)) error {
	return b.FetchBatches(ctx, refs, func() (func(chunkstore.Chunk) error, func() error) {
		_, put, done := open()
		return put, done
	})
}

// runBufs holds the write buffers of fetched batches.
var runBufs = sync.Pool{New: func() any { b := make([]byte, 0, runBytes); return &b }}

// seedSpan reads the longest run of chunks at the head of list (at least
// two) whose first candidates lie one after the other in one seed and
// that follow each other in the output, with one read into the run's
// buffer, and checks each chunk there. It returns how many chunks from the
// head passed (they are in the run); 0 means list[0] is to go through
// local. A chunk that fails cuts the span short (cut): it goes through
// local, which tries its other candidates.
func (a *Assembler) seedSpan(r *run, plan *Plan, list []int) (n int, cut bool, err error) {
	t := plan.Target
	first := func(i int) (Candidate, bool) {
		if c := plan.Sources[i]; len(c) > 0 && c[0].Kind == SourceSeed && c[0].Seed < len(a.Seeds) {
			return c[0], true
		}
		return Candidate{}, false
	}
	s0, ok := first(list[0])
	if !ok {
		return 0, false, nil
	}
	if into, err := r.room(list[0], int(t.Chunks[list[0]].Size), -1); err != nil || !into {
		return 0, false, err
	}
	space := cap(r.buf) - len(r.buf)
	total := 0
	for _, i := range list {
		s, ok := first(i)
		o := r.w.occ[i]
		size := int(t.Chunks[i].Size)
		if !ok || s.Seed != s0.Seed || s.Offset != s0.Offset+int64(total) ||
			len(o) != 1 || o[0].Count != 1 || o[0].Offset != r.off+int64(len(r.buf)+total) || total+size > space {
			break
		}
		n++
		total += size
	}
	if n < 2 {
		return 0, false, nil
	}
	span := r.buf[len(r.buf) : len(r.buf)+total]
	if k, err := a.Seeds[s0.Seed].ReadAt(span, s0.Offset); k != len(span) {
		if err != nil && !errors.Is(err, io.EOF) {
			a.logf("read seed at %d: %v", s0.Offset, err)
		}
		return 0, false, nil
	}
	done := 0
	for _, i := range list[:n] {
		size := int(t.Chunks[i].Size)
		if chunkstore.Sum(r.buf[len(r.buf):len(r.buf)+size]) != t.Chunks[i].ID {
			break
		}
		r.commit(i, size)
		done++
	}
	return done, done < n, nil
}

// plainAppender is an optional upgrade of the Cache: decode a chunk into
// the caller's buffer (chunkstore.Local.AppendPlain).
type plainAppender interface {
	AppendPlain(dst []byte, id chunkstore.ID, scratch *[]byte) ([]byte, error)
}

// uncheckedAppender is a further upgrade: decode a chunk without checking
// its hash (chunkstore.Held.AppendPlainUnchecked), for TrustCache.
type uncheckedAppender interface {
	AppendPlainUnchecked(dst []byte, id chunkstore.ID, scratch *[]byte) ([]byte, error)
}

// local tries chunk i's local candidates in order. It returns the source
// used, or SourceFetch if none held the chunk. A chunk that continues the
// worker's run is read (seed, in place) or decoded (cache) straight into
// the run's buffer and checked there; the others go through buf (or the
// cache's own buffers) and are copied.
func (a *Assembler) local(ctx context.Context, out *run, plan *Plan, i int, buf []byte) (SourceKind, int, error) {
	c := plan.Target.Chunks[i]
	fallbacks := 0
	for _, cand := range plan.Sources[i] {
		if err := ctx.Err(); err != nil {
			return 0, fallbacks, err
		}
		skip := int64(-1)
		if cand.Kind == SourceInPlace {
			skip = cand.Offset
		}
		var data []byte
		switch cand.Kind {
		case SourceInPlace, SourceSeed:
			var r io.ReaderAt = a.Out
			if cand.Kind == SourceSeed {
				if cand.Seed >= len(a.Seeds) {
					return 0, fallbacks, errors.New("plan names a seed the assembler lacks")
				}
				r = a.Seeds[cand.Seed]
			}
			into, err := out.room(i, int(c.Size), skip)
			if err != nil {
				return 0, fallbacks, err
			}
			if into {
				buf = out.buf[len(out.buf) : len(out.buf)+int(c.Size)]
			} else {
				buf = buf[:c.Size]
			}
			if n, err := r.ReadAt(buf, cand.Offset); n != len(buf) {
				if err != nil && !errors.Is(err, io.EOF) {
					a.logf("read %s at %d: %v", cand.Kind, cand.Offset, err)
				}
				fallbacks++
				continue
			}
			if chunkstore.Sum(buf) != c.ID {
				fallbacks++
				continue
			}
			if into {
				out.commit(i, len(buf))
				return cand.Kind, fallbacks, nil
			}
			data = buf
		case SourceCache:
			if a.Cache == nil {
				continue
			}
			if ap, ok := a.Cache.(plainAppender); ok {
				into, err := out.room(i, int(c.Size), skip)
				if err != nil {
					return 0, fallbacks, err
				}
				if into {
					n := len(out.buf)
					var got []byte
					if ua := out.w.unchecked; ua != nil {
						got, err = ua.AppendPlainUnchecked(out.buf, c.ID, &out.scratch)
					} else {
						got, err = ap.AppendPlain(out.buf, c.ID, &out.scratch)
					}
					if err != nil {
						a.logf("cache %s: %v", c.ID.Short(), err)
						fallbacks++
						continue
					}
					k := len(got) - n // == c.Size, checked
					if &got[:1][0] != &out.buf[:1][0] {
						// The decoder moved to a new array (it should not:
						// room made space for c.Size): copy back.
						copy(out.buf[n:n+k], got[n:])
					}
					out.commit(i, k)
					if out.w.unchecked != nil {
						out.w.mu.Lock()
						out.w.trusted = append(out.w.trusted, i)
						out.w.mu.Unlock()
					}
					return cand.Kind, fallbacks, nil
				}
			}
			ch, err := a.Cache.Get(ctx, c.ID)
			if err != nil {
				a.logf("cache %s: %v", c.ID.Short(), err)
				fallbacks++
				continue
			}
			data = ch.Plain()
		}
		if err := out.add(i, data, skip); err != nil {
			return 0, fallbacks, err
		}
		return cand.Kind, fallbacks, nil
	}
	return SourceFetch, fallbacks, nil
}

func (a *Assembler) logf(f string, args ...any) {
	if a.Logger != nil {
		a.Logger.Debug(fmt.Sprintf(f, args...))
	}
}

type writer struct {
	out  Output
	t    *manifest.Manifest
	occ  [][]manifest.Occurrence
	prog Progress
	tr   *blockTracker

	// unchecked, when set (TrustCache), decodes cached chunks without
	// their hash check; trusted lists the chunks so written.
	unchecked uncheckedAppender
	mu        sync.Mutex
	trusted   []int
}

// writeAll writes data at every occurrence of chunk i, except at skip.
func (w *writer) writeAll(i int, data []byte, skip int64) error {
	n := int64(len(data))
	for _, o := range w.occ[i] {
		for k := 0; k < o.Count; k++ {
			off := o.Offset + int64(k)*n
			if off != skip {
				if _, err := w.out.WriteAt(data, off); err != nil {
					return fmt.Errorf("write at %d: %w", off, err)
				}
			}
			w.prog.Add(n)
		}
	}
	w.tr.written(i)
	return nil
}

// run gathers chunks that lie one after the other in the output and writes
// them with one call. A chunk counts as written (block tracker, progress)
// only once its run is.
type run struct {
	w       *writer
	off     int64
	buf     []byte
	idx     []int
	scratch []byte // stored bytes of a cached chunk being decoded into buf
}

// room reports whether chunk i, of n bytes, continues the run and fits
// in its buffer (flushing the run first when it is full or i lies
// elsewhere): the caller may then put the chunk at out.buf[len(out.buf):]
// and commit it. False: write it with add.
func (r *run) room(i, n int, skip int64) (bool, error) {
	o := r.w.occ[i]
	if len(o) != 1 || o[0].Count != 1 || o[0].Offset == skip || n+chunkstore.DecodeSlack > cap(r.buf) {
		return false, nil
	}
	if len(r.buf) > 0 && (o[0].Offset != r.off+int64(len(r.buf)) || len(r.buf)+n > cap(r.buf)) {
		if err := r.flush(); err != nil {
			return false, err
		}
	}
	if len(r.buf) == 0 {
		r.off = o[0].Offset
	}
	return true, nil
}

// commit adds chunk i, the n bytes just past the end of the run's buffer,
// to the run.
func (r *run) commit(i, n int) {
	r.buf = r.buf[:len(r.buf)+n]
	r.idx = append(r.idx, i)
}

// add places chunk i's data everywhere it goes except at skip: into the run
// when its single occurrence continues it, else directly.
func (r *run) add(i int, data []byte, skip int64) error {
	o := r.w.occ[i]
	if len(o) != 1 || o[0].Count != 1 || o[0].Offset == skip || len(data) > cap(r.buf) {
		if err := r.flush(); err != nil {
			return err
		}
		return r.w.writeAll(i, data, skip)
	}
	if len(r.buf) > 0 && (o[0].Offset != r.off+int64(len(r.buf)) || len(r.buf)+len(data) > cap(r.buf)) {
		if err := r.flush(); err != nil {
			return err
		}
	}
	if len(r.buf) == 0 {
		r.off = o[0].Offset
	}
	r.buf = append(r.buf, data...)
	r.idx = append(r.idx, i)
	return nil
}

// flush writes the run.
func (r *run) flush() error {
	if len(r.buf) == 0 {
		return nil
	}
	if _, err := r.w.out.WriteAt(r.buf, r.off); err != nil {
		return fmt.Errorf("write at %d: %w", r.off, err)
	}
	r.w.prog.Add(int64(len(r.buf)))
	for _, i := range r.idx {
		r.w.tr.written(i)
	}
	r.buf, r.idx = r.buf[:0], r.idx[:0]
	return nil
}

// zeroRange makes [off, off+n) of out read as zeros: by its Zeroer, or,
// where it has none or the Zeroer reports errors.ErrUnsupported, by writing
// zeros.
func zeroRange(out Output, off, n int64) error {
	if z, ok := out.(Zeroer); ok {
		if err := z.Zero(off, n); !errors.Is(err, errors.ErrUnsupported) {
			return err
		}
	}
	zeros := chunkstore.Zeros(64 << 10)
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := out.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}
