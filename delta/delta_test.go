package delta_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"golang.org/x/sync/errgroup"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/chunkstore/storetest"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
)

// mem is an in-memory Output.
type mem struct {
	mu sync.Mutex
	b  []byte
}

func (m *mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.b[off:], p)
	return len(p), nil
}

func (m *mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.b[off:]), nil
}

// content builds content and its manifest from a layout description: a
// letter is a 1000-byte chunk filled with that letter, '0' is 4096 zeros.
func content(t *testing.T, layout string) ([]byte, *manifest.Manifest) {
	t.Helper()
	var data []byte
	b := manifest.NewBuilder()
	for _, c := range layout {
		if c == '0' {
			data = append(data, make([]byte, 4096)...)
			b.AddZero(4096)
			continue
		}
		chunk := bytes.Repeat([]byte{byte(c)}, 1000)
		data = append(data, chunk...)
		b.AddChunk(chunkstore.Sum(chunk), 1000)
	}
	m := &manifest.Manifest{Kind: manifest.KindImage, Name: "t", Channel: "c", Revision: 1,
		Chunker: chunkstore.DefaultParams(), Compression: manifest.CompressionZstd, Size: b.Size(), Digest: chunkstore.Sum(data)}
	m.Chunks, m.Runs = b.Result()
	return data, m
}

// layout places chunks one after the other, with zeros(i) zero bytes after
// chunk i, and returns the content and its manifest.
func layout(chunks [][]byte, zeros func(i int) int64) ([]byte, *manifest.Manifest) {
	var data []byte
	b := manifest.NewBuilder()
	for i, c := range chunks {
		data = append(data, c...)
		b.AddChunk(chunkstore.Sum(c), uint32(len(c)))
		if z := zeros(i); z > 0 {
			data = append(data, make([]byte, z)...)
			b.AddZero(z)
		}
	}
	m := &manifest.Manifest{Kind: manifest.KindImage, Name: "t", Channel: "c", Revision: 1,
		Chunker: chunkstore.DefaultParams(), Compression: manifest.CompressionZstd, Size: b.Size(), Digest: chunkstore.Sum(data)}
	m.Chunks, m.Runs = b.Result()
	return data, m
}

// zerosEvery puts n zeros after every k-th chunk (layout).
func zerosEvery(k int, n int64) func(int) int64 {
	return func(i int) int64 {
		if i%k == 0 {
			return n
		}
		return 0
	}
}

// fetcher serves chunks from a map and records what was asked.
type fetcher struct {
	mu     sync.Mutex
	chunks map[chunkstore.ID][]byte
	asked  []chunkstore.ID
	err    error
}

// batchFetcher delivers in batches of 16 refs, two batches at a time.
type batchFetcher struct{ fetcher }

func (f *batchFetcher) FetchBatches(ctx context.Context, refs []manifest.ChunkRef, open func() (func(chunkstore.Chunk) error, func() error)) error {
	var g errgroup.Group
	g.SetLimit(2)
	for k := 0; k < len(refs); k += 16 {
		g.Go(func() error {
			put, done := open()
			err := f.fetcher.Fetch(ctx, refs[k:min(k+16, len(refs))], put)
			if e := done(); err == nil {
				err = e
			}
			return err
		})
	}
	return g.Wait()
}

// intoFetcher is a batchFetcher that decodes into the buffers its receiver
// provides (delta.BatchInto), as transport.Client does. The first chunk of
// each batch is delivered corrupt first (another chunk's bytes), decoded
// where into said, refused and delivered again, as a retry would.
type intoFetcher struct {
	batchFetcher
	t                *testing.T
	inPlace, corrupt atomic.Int64
}

func (f *intoFetcher) FetchBatchesInto(ctx context.Context, refs []manifest.ChunkRef, open func() (func(chunkstore.ID, int) []byte, func(chunkstore.Chunk) error, func() error)) error {
	var g errgroup.Group
	g.SetLimit(2)
	for k := 0; k < len(refs); k += 16 {
		g.Go(func() error {
			into, put, done := open()
			batch := refs[k:min(k+16, len(refs))]
			for j, r := range batch {
				c, err := chunkstore.Encode(f.chunks[r.ID], chunkstore.LevelFastest)
				if err != nil {
					return err
				}
				stored := c.Stored()
				if j == 0 && len(batch) > 1 {
					other, _ := chunkstore.Encode(f.chunks[batch[1].ID], chunkstore.LevelFastest)
					if dst := into(r.ID, int(r.Size)); dst != nil {
						if _, err := chunkstore.VerifyInto(dst, r.ID, other.Stored(), int(r.Size)); err == nil {
							f.t.Error("a corrupt chunk verified")
						}
						f.corrupt.Add(1)
					}
				}
				var ch chunkstore.Chunk
				if dst := into(r.ID, int(r.Size)); dst != nil {
					if ch, err = chunkstore.VerifyInto(dst, r.ID, stored, int(r.Size)); err != nil {
						return err
					}
					if n := len(dst); cap(dst) > n && &dst[n:cap(dst)][0] == &ch.Plain()[0] {
						f.inPlace.Add(1)
					}
				} else if ch, err = chunkstore.Verify(r.ID, stored, int(r.Size)); err != nil {
					return err
				}
				if err := put(ch); err != nil {
					return err
				}
			}
			return done()
		})
	}
	return g.Wait()
}

func (f *fetcher) Fetch(ctx context.Context, refs []manifest.ChunkRef, fn func(chunkstore.Chunk) error) error {
	if f.err != nil {
		return f.err
	}
	for _, r := range refs {
		f.mu.Lock()
		f.asked = append(f.asked, r.ID)
		f.mu.Unlock()
		c, err := chunkstore.VerifyPlain(r.ID, f.chunks[r.ID])
		if err != nil {
			return err
		}
		if err := fn(c); err != nil {
			return err
		}
	}
	return nil
}

func chunkMap(data []byte, m *manifest.Manifest) map[chunkstore.ID][]byte {
	out := map[chunkstore.ID][]byte{}
	m.Walk(func(off, size int64, c int) bool {
		if c >= 0 {
			out[m.Chunks[c].ID] = data[off : off+size]
		}
		return true
	})
	return out
}

func TestPlanPrefersLocalSources(t *testing.T) {
	_, target := content(t, "ab0cda")
	_, seed := content(t, "xbyc")
	_, inplace := content(t, "qb")
	have := func(id chunkstore.ID) bool { return id == chunkstore.Sum(bytes.Repeat([]byte{'d'}, 1000)) }
	p := delta.NewPlan(delta.Inputs{Target: target, InPlace: inplace, Seeds: []delta.SeedIndex{delta.IndexManifest(seed)}, Have: have})
	var got []string
	for i, c := range p.Sources {
		s := "fetch"
		if len(c) > 0 {
			s = c[0].Kind.String()
		}
		got = append(got, fmt.Sprintf("%c:%s", "abcd"[i], s))
	}
	want := "a:fetch b:in-place c:seed d:cache"
	if strings.Join(got, " ") != want {
		t.Fatalf("plan %q, want %q", strings.Join(got, " "), want)
	}
	r := p.Report
	if r.FetchChunks != 1 || r.InPlaceChunks != 1 || r.SeedChunks != 1 || r.CacheChunks != 1 || r.ZeroBytes != 4096 {
		t.Fatalf("report %+v", r)
	}
	if len(p.Missing()) != 1 {
		t.Fatalf("missing %v", p.Missing())
	}
}

func TestAssembleFromSeedFetchAndFallback(t *testing.T) {
	want, target := content(t, "abc0dbbba0e")
	seedData, seedMan := content(t, "eabx")
	// The seed drifted: chunk 'b' in it is no longer what its manifest says.
	seedData[1000+500] = 'Z'
	f := &fetcher{chunks: chunkMap(want, target)}
	out := &mem{b: bytes.Repeat([]byte{0xEE}, len(want))} // old junk: zero fill needed
	plan := delta.NewPlan(delta.Inputs{Target: target, Seeds: []delta.SeedIndex{delta.IndexManifest(seedMan)}})
	asm := &delta.Assembler{Out: out, Seeds: []io.ReaderAt{bytes.NewReader(seedData)}, Fetch: f, ZeroFill: true, Workers: 3, Digest: true}
	st, err := asm.Run(context.Background(), plan)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.b, want) {
		t.Fatal("assembled content differs")
	}
	if err := delta.CheckDigest(out, target, chunkstore.Sum(out.b)); err != nil {
		t.Fatal(err)
	}
	if st.Digest != target.Digest {
		t.Fatal("digest computed while assembling differs from the content's")
	}
	if st.SeedChunks != 2 || st.Fallbacks != 1 || st.FetchChunks != 3 {
		t.Fatalf("stats %+v: want a and e from the seed, b refetched after a fallback, c d fetched", st)
	}
	// The drifted chunk was fetched, and nothing was fetched twice.
	seen := map[chunkstore.ID]bool{}
	for _, id := range f.asked {
		if seen[id] {
			t.Fatal("chunk fetched twice")
		}
		seen[id] = true
	}
}

func TestAssembleInPlaceSkipsCorrectChunks(t *testing.T) {
	want, target := content(t, "abcd")
	out := &mem{b: append([]byte{}, want...)}
	copy(out.b[2000:], bytes.Repeat([]byte{'X'}, 1000)) // 'c' is damaged
	f := &fetcher{chunks: chunkMap(want, target)}
	plan := delta.NewPlan(delta.Inputs{Target: target, InPlace: target})
	st, err := (&delta.Assembler{Out: out, Fetch: f}).Run(context.Background(), plan)
	if err != nil {
		t.Fatal(err)
	}
	if st.InPlaceChunks != 3 || st.FetchChunks != 1 || !bytes.Equal(out.b, want) {
		t.Fatalf("stats %+v", st)
	}
}

func TestAssembleFetchFailureIsReported(t *testing.T) {
	_, target := content(t, "ab")
	out := &mem{b: make([]byte, target.Size)}
	f := &fetcher{err: errors.New("network down")}
	_, err := (&delta.Assembler{Out: out, Fetch: f}).Run(context.Background(), delta.NewPlan(delta.Inputs{Target: target}))
	if err == nil || !strings.Contains(err.Error(), "network down") {
		t.Fatalf("err %v", err)
	}
}

func TestVerifyDigestNamesBadChunk(t *testing.T) {
	want, target := content(t, "abc")
	out := &mem{b: append([]byte{}, want...)}
	out.b[1500] ^= 1
	err := delta.CheckDigest(out, target, chunkstore.Sum(out.b))
	if !errors.Is(err, delta.ErrDigestMismatch) || !strings.Contains(err.Error(), "offset 1000") {
		t.Fatalf("err %v", err)
	}
}

func TestIndexSeedFindsShiftedChunks(t *testing.T) {
	// Real chunker: content shifted by an insertion still shares chunks.
	base := make([]byte, 2<<20)
	x := uint64(1)
	for i := range base {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		base[i] = byte(x)
	}
	shifted := append(append([]byte("inserted!"), base[:1<<20]...), base[1<<20:]...)
	p := chunkstore.DefaultParams()
	ctx := context.Background()
	exts, err := chunkstore.Split(ctx, bytes.NewReader(shifted), int64(len(shifted)), p, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32]bool{}
	ids := map[chunkstore.ID]bool{}
	for _, e := range exts {
		want[uint32(e.Size)] = true
		ids[chunkstore.Sum(shifted[e.Offset:e.Offset+e.Size])] = true
	}
	idx, err := delta.IndexSeed(ctx, bytes.NewReader(base), int64(len(base)), p, want, 2)
	if err != nil {
		t.Fatal(err)
	}
	shared := 0
	for id := range idx {
		if ids[id] {
			shared++
		}
	}
	if shared < len(exts)/2 {
		t.Fatalf("only %d of %d chunks found in the unshifted seed", shared, len(exts))
	}
}

func TestDiff(t *testing.T) {
	_, old := content(t, "abc0d")
	_, new := content(t, "abe0dc")
	d := delta.Compare(context.Background(), old, new, nil, nil)
	if d.NewChunks != 1 || d.SharedChunks != 4 || d.RemovedChunks != 0 || d.FetchBytes != 1000 || d.FetchExact {
		t.Fatalf("diff %+v", d)
	}
	kinds := ""
	for _, r := range d.Regions {
		kinds += string(r.Kind[0])
	}
	// a b same, e new, zero, d moved (offset changed? no: same offset), c moved
	if kinds != "snzsm" {
		t.Fatalf("regions %q (%+v)", kinds, d.Regions)
	}
	var sb strings.Builder
	if err := d.WriteHTML(&sb); err != nil {
		t.Fatal(err)
	}
	h := sb.String()
	if !strings.Contains(h, "<svg") || strings.Contains(h, "<script") || strings.Contains(h, "http://") && !strings.Contains(h, "http://www.w3.org/2000/svg") {
		t.Fatal("html report is not a self-contained page with an svg")
	}
	sb.Reset()
	d.WriteText(&sb, 0)
	if !strings.Contains(sb.String(), "new") {
		t.Fatal(sb.String())
	}
}

// memNoZero is an Output whose Zeroer cannot zero: the assembler writes
// the zeros itself.
type memNoZero struct{ *mem }

func (memNoZero) Zero(off, n int64) error { return errors.ErrUnsupported }

func TestAssembleZeroFallback(t *testing.T) {
	want, target := content(t, "a0b")
	f := &fetcher{chunks: chunkMap(want, target)}
	out := memNoZero{&mem{b: bytes.Repeat([]byte{0xEE}, len(want))}}
	if _, err := (&delta.Assembler{Out: out, Fetch: f, ZeroFill: true}).Run(context.Background(), delta.NewPlan(delta.Inputs{Target: target})); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.b, want) {
		t.Fatal("zero extent not written when the Zeroer is unsupported")
	}
}

// counting is a mem Output that counts its writes.
type counting struct {
	mem
	writes int
}

func (c *counting) WriteAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.mem.WriteAt(p, off)
}

type getter map[chunkstore.ID][]byte

func (g getter) Get(_ context.Context, id chunkstore.ID) (chunkstore.Chunk, error) {
	b, ok := g[id]
	if !ok {
		return chunkstore.Chunk{}, chunkstore.ErrNotFound
	}
	return chunkstore.VerifyPlain(id, b)
}

// Hundreds of chunks of varied sizes from a seed, the cache, in place and
// the fetcher: the output is exact, sources are counted right, and chunks
// that follow each other go out in runs, not one write each. The cache is
// a map, then a chunk store (which decodes into the assembler's buffer),
// with one of its chunks damaged (fetched instead).
func TestAssembleManyChunksInRuns(t *testing.T) {
	t.Run("map", func(t *testing.T) { testAssembleManyChunksInRuns(t, false, false, false) })
	t.Run("store", func(t *testing.T) { testAssembleManyChunksInRuns(t, true, false, false) })
	t.Run("batches", func(t *testing.T) { testAssembleManyChunksInRuns(t, false, true, false) })
	t.Run("into", func(t *testing.T) { testAssembleManyChunksInRuns(t, false, true, true) })
}

func testAssembleManyChunksInRuns(t *testing.T, store, batches, into bool) {
	const n = 600
	var chunks [][]byte
	for i := range n {
		chunks = append(chunks, bytes.Repeat([]byte(fmt.Sprintf("chunk %d.", i)), 200+i*7%3000))
	}
	data, target := layout(chunks, zerosEvery(97, 8192))
	all := chunkMap(data, target)
	// Runs of 50 chunks: i/50%4 is 0 seed (the target's own bytes), 1 cache,
	// 2 in place, 3 fetched.
	cache, fetch := getter{}, map[chunkstore.ID][]byte{}
	out := &counting{mem: mem{b: make([]byte, len(data))}}
	for i, c := range target.Chunks {
		switch i / 50 % 4 {
		case 1:
			cache[c.ID] = all[c.ID]
		case 3:
			fetch[c.ID] = all[c.ID]
		}
	}
	seedMan := *target
	seedMan.Chunks = nil
	sb := manifest.NewBuilder()
	inb := manifest.NewBuilder()
	target.Walk(func(off, size int64, c int) bool {
		switch {
		case c < 0:
			sb.AddZero(size)
			inb.AddZero(size)
		case c/50%4 == 0:
			sb.AddChunk(target.Chunks[c].ID, uint32(size))
			inb.AddZero(size)
		case c/50%4 == 2:
			sb.AddZero(size)
			inb.AddChunk(target.Chunks[c].ID, uint32(size))
			copy(out.b[off:], data[off:off+size])
		default:
			sb.AddZero(size)
			inb.AddZero(size)
		}
		return true
	})
	seedMan.Chunks, seedMan.Runs = sb.Result()
	inPlace := *target
	inPlace.Chunks, inPlace.Runs = inb.Result()
	plan := delta.NewPlan(delta.Inputs{Target: target, InPlace: &inPlace, Seeds: []delta.SeedIndex{delta.IndexManifest(&seedMan)},
		Have: func(id chunkstore.ID) bool { _, ok := cache[id]; return ok }})
	f := &fetcher{chunks: fetch}
	var c chunkstore.Getter = cache
	damaged := 0
	if store {
		s := storeOf(t, cache)
		// Damage a cached chunk on disk: it is fetched instead.
		bad := target.Chunks[60].ID
		fetch[bad] = cache[bad]
		storetest.Damage(t, s, bad, func(n int) int { return n / 2 })
		c, damaged = s, 1
	}
	var fe delta.Fetcher = f
	var inf *intoFetcher
	if batches {
		fe = &batchFetcher{fetcher{chunks: fetch}}
	}
	if into {
		inf = &intoFetcher{batchFetcher: batchFetcher{fetcher{chunks: fetch}}, t: t}
		fe = inf
	}
	asm := &delta.Assembler{Out: out, Seeds: []io.ReaderAt{bytes.NewReader(data)}, Cache: c, Fetch: fe, Workers: 2, Digest: true}
	st, err := asm.Run(context.Background(), plan)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.b, data) {
		t.Fatal("assembled content differs")
	}
	if st.Digest != target.Digest {
		t.Fatal("digest differs")
	}
	if st.SeedChunks != n/4 || st.CacheChunks != n/4-damaged || st.InPlaceChunks != n/4 || st.FetchChunks != n/4+damaged || st.Fallbacks != damaged {
		t.Fatalf("stats %+v", st)
	}
	if inf != nil {
		// Fetched chunks are decoded into the run's buffer (all of them
		// here); the first of each batch is delivered corrupt first,
		// decoded where into said and not kept.
		if int(inf.inPlace.Load()) < n/4*3/4 || inf.corrupt.Load() == 0 {
			t.Fatalf("%d of %d fetched chunks decoded in place, %d corrupt deliveries", inf.inPlace.Load(), n/4, inf.corrupt.Load())
		}
		t.Logf("%d of %d fetched chunks decoded in place, %d corrupt deliveries", inf.inPlace.Load(), n/4, inf.corrupt.Load())
	}
	// The fetcher writes chunk by chunk; the 300 local chunks go out in
	// runs (batches of 64 chunks, cut at zero extents and ends of runs).
	// Fetched batches of 16 go out in runs too.
	if batches {
		if out.writes > 30+n/4/16+10 {
			t.Fatalf("%d writes for %d chunks copied locally and %d fetched in batches", out.writes, n/2, n/4)
		}
	} else if local := out.writes - n/4; local > 30 {
		t.Fatalf("%d writes for %d chunks copied locally", local, n/2)
	}
}

// countingReader counts ReadAt calls.
type countingReader struct {
	io.ReaderAt
	mu    sync.Mutex
	reads int
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.ReaderAt.ReadAt(p, off)
}

// Chunks that lie one after the other in the seed and in the output are
// read from the seed together, and each is still checked: one that drifted
// in the middle of such a span is taken from the cache, the chunks around
// it from the seed.
func TestAssembleSeedSpans(t *testing.T) {
	want, target := content(t, "abcdefghijklmnop")
	seedData := append([]byte(nil), want...)
	seedData[6*1000+10] = 'Z' // g drifted
	cache := getter{target.Chunks[6].ID: want[6000:7000]}
	plan := delta.NewPlan(delta.Inputs{Target: target, Seeds: []delta.SeedIndex{delta.IndexManifest(target)},
		Have: func(id chunkstore.ID) bool { _, ok := cache[id]; return ok }})
	seed := &countingReader{ReaderAt: bytes.NewReader(seedData)}
	out := &counting{mem: mem{b: make([]byte, len(want))}}
	asm := &delta.Assembler{Out: out, Seeds: []io.ReaderAt{seed}, Cache: cache, Workers: 1, Digest: true}
	st, err := asm.Run(context.Background(), plan)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.b, want) || st.Digest != target.Digest {
		t.Fatal("assembled content differs")
	}
	if st.SeedChunks != 15 || st.CacheChunks != 1 || st.Fallbacks != 1 {
		t.Fatalf("stats %+v: want 15 chunks from the seed, g from the cache after one fallback", st)
	}
	// a–p in one read; g fails in it, so g is read alone and h–p again
	// together: 3 reads instead of 16 (and one write).
	if seed.reads > 3 || out.writes != 1 {
		t.Fatalf("%d seed reads and %d writes for 16 adjacent chunks", seed.reads, out.writes)
	}
}

// storeOf opens a chunk store holding plains (encoded fastest), flushed.
func storeOf(t *testing.T, plains map[chunkstore.ID][]byte) *chunkstore.Local {
	t.Helper()
	s, err := chunkstore.Open(t.TempDir(), chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, p := range plains {
		ch, err := chunkstore.Encode(p, chunkstore.LevelFastest)
		if err != nil {
			t.Fatal(err)
		}
		storetest.Fill(t, s, ch)
	}
	return s
}

// flipper corrupts what is written over one offset.
type flipper struct {
	*mem
	at int64
}

func (f flipper) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.mem.WriteAt(p, off)
	if f.at >= off && f.at < off+int64(len(p)) {
		f.mem.b[f.at] ^= 1
	}
	return n, err
}

// TrustCache copies cached chunks without hashing each. A cached chunk
// that decodes to the wrong bytes (its stored form damaged) makes the
// digest differ; Run then finds that chunk in the output, drops it from
// the store, fetches it and ends with the right content and digest. A
// mismatch that no cached chunk explains (a write gone wrong) is
// reported as a digest that differs, with nothing fetched.
func TestAssembleTrustCacheRecheck(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var chunks [][]byte
	for range 40 {
		c := make([]byte, 2000+rng.IntN(3000)) // random: stored raw, so a damaged byte still decodes
		for k := range c {
			c[k] = byte(rng.Uint32())
		}
		chunks = append(chunks, c)
	}
	data, target := layout(chunks, zerosEvery(9, 5000))
	all := chunkMap(data, target)
	ids := make([]chunkstore.ID, len(target.Chunks))
	for i, c := range target.Chunks {
		ids[i] = c.ID
	}
	bad := target.Chunks[17].ID

	for _, elsewhere := range []bool{false, true} {
		s := storeOf(t, all)
		if !elsewhere {
			storetest.Damage(t, s, bad, func(n int) int { return n - 100 })
		}
		held, err := s.Holds(ids)
		if err != nil || held.Len() != len(ids) {
			t.Fatalf("holds %d of %d: %v", held.Len(), len(ids), err)
		}
		var scratch []byte
		got, err := held.AppendPlainUnchecked(nil, bad, &scratch)
		if err != nil || bytes.Equal(got, all[bad]) != elsewhere {
			t.Fatalf("the damaged chunk must decode, to other bytes: %v", err)
		}
		plan := delta.NewPlan(delta.Inputs{Target: target, Have: held.Has})
		f := &fetcher{chunks: all}
		out := &mem{b: make([]byte, len(data))}
		var o delta.Output = out
		if elsewhere {
			o = flipper{mem: out, at: 3000}
		}
		asm := &delta.Assembler{Out: o, Cache: held, Fetch: f, Workers: 2, Digest: true, TrustCache: true}
		st, err := asm.Run(context.Background(), plan)
		if err != nil {
			t.Fatal(err)
		}
		if elsewhere {
			if st.Digest == target.Digest || len(f.asked) != 0 || st.Fallbacks != 0 || st.CacheChunks != len(ids) {
				t.Fatalf("a bad write: digest right %v, fetched %d, stats %+v", st.Digest == target.Digest, len(f.asked), st)
			}
			continue
		}
		if !bytes.Equal(out.b, data) || st.Digest != target.Digest {
			t.Fatalf("content right %v, digest right %v", bytes.Equal(out.b, data), st.Digest == target.Digest)
		}
		if len(f.asked) != 1 || f.asked[0] != bad || st.Fallbacks != 1 || st.FetchChunks != 1 || st.CacheChunks != len(ids)-1 {
			t.Fatalf("fetched %d, stats %+v: want the damaged chunk fetched once", len(f.asked), st)
		}
		if ok, _ := s.Has(context.Background(), bad); ok {
			t.Fatal("the damaged chunk is still in the store's index")
		}
	}
}
