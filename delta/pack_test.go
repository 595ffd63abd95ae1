package delta_test

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/internal/zdeflate"
	"github.com/imgctl/imgctl/manifest"
)

// memChunks is an in-memory chunk getter.
type memChunks map[chunkstore.ID]chunkstore.Chunk

func (m memChunks) Get(_ context.Context, id chunkstore.ID) (chunkstore.Chunk, error) {
	c, ok := m[id]
	if !ok {
		return c, chunkstore.ErrNotFound
	}
	return c, nil
}

// release cuts data with the default chunker into a manifest and adds its
// chunks to store.
func release(t *testing.T, data []byte, rev uint64, store memChunks) *manifest.Manifest {
	t.Helper()
	p := chunkstore.DefaultParams()
	exts, err := chunkstore.Split(context.Background(), bytes.NewReader(data), int64(len(data)), p, 1)
	if err != nil {
		t.Fatal(err)
	}
	b := manifest.NewBuilder()
	for _, e := range exts {
		if e.Zero {
			b.AddZero(e.Size)
			continue
		}
		plain := data[e.Offset : e.Offset+e.Size]
		c, err := chunkstore.Encode(plain, chunkstore.LevelDefault)
		if err != nil {
			t.Fatal(err)
		}
		store[c.ID()] = c
		b.AddChunk(c.ID(), uint32(e.Size))
	}
	m := &manifest.Manifest{Kind: manifest.KindImage, Name: "os", Channel: "stable", Revision: rev,
		Chunker: p, Compression: manifest.CompressionZstd, Size: int64(len(data)), Digest: chunkstore.Sum(data)}
	m.Chunks, m.Runs = b.Result()
	return m
}

// textish makes compressible data that is not trivially repetitive.
func textish(r *rand.Rand, n int) []byte {
	words := []string{"alpha ", "beta ", "gamma ", "delta ", "kiosk ", "terminal ", "update\n", "slot ", "chunk "}
	var b []byte
	for len(b) < n {
		b = append(b, words[r.IntN(len(words))]...)
		if r.IntN(20) == 0 {
			b = append(b, byte('0'+r.IntN(10)))
		}
	}
	return b[:n]
}

// A pack from→to yields exactly the chunks to lacks, each verified, and is
// much smaller than those chunks compressed one by one when to is an edit of
// from; every kind of damage is refused with ErrPack, never a bad chunk.
func TestPackRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	old := textish(r, 3<<20)
	// The update: small edits all over (every chunk around them changes),
	// a moved block, and some new data.
	upd := append([]byte{}, old...)
	for i := 0; i < 60; i++ {
		off := r.IntN(len(upd) - 100)
		copy(upd[off:], "EDITED")
	}
	upd = append(upd[:1<<20], append(textish(rand.New(rand.NewPCG(9, 9)), 200<<10), upd[1<<20:]...)...)
	upd = append(upd, old[100<<10:400<<10]...)
	store := memChunks{}
	from := release(t, old, 1, store)
	to := release(t, upd, 2, store)
	missing := delta.PackChunks(from, to)
	var perChunk int64
	for _, c := range missing {
		perChunk += int64(len(store[c.ID].Stored()))
	}
	var pack bytes.Buffer
	st, err := delta.BuildPack(context.Background(), &pack, from, to, bytes.NewReader(old), store, delta.PackOptions{SegmentSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if st.Chunks != len(missing) || st.Size != int64(pack.Len()) || st.Segments < 2 {
		t.Fatalf("stats %+v for %d missing chunks, pack %d bytes", st, len(missing), pack.Len())
	}
	t.Logf("%d chunks (%d plain bytes): %d bytes one by one, pack %d bytes (%d segments, %d reference bytes)",
		len(missing), st.PlainBytes, perChunk, st.Size, st.Segments, st.RefBytes)
	if st.Size*2 > perChunk {
		t.Fatalf("pack of %d bytes is not much smaller than the chunks (%d)", st.Size, perChunk)
	}
	want := map[chunkstore.ID]bool{}
	for _, c := range missing {
		want[c.ID] = true
	}
	list := missing
	decode := func(p []byte, ref []byte) (map[chunkstore.ID]bool, error) {
		got := map[chunkstore.ID]bool{}
		var mu sync.Mutex
		err := delta.DecodePack(context.Background(), bytes.NewReader(p), bytes.NewReader(ref), int64(len(ref)), list,
			func(c chunkstore.Chunk) error {
				if chunkstore.Sum(c.Plain()) != c.ID() {
					t.Fatal("unverified chunk delivered")
				}
				mu.Lock()
				got[c.ID()] = true
				mu.Unlock()
				return nil
			}, 2)
		return got, err
	}
	got, err := decode(pack.Bytes(), old)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("decoded %d of %d chunks", len(got), len(want))
	}

	// Damage: a flipped byte in a frame, a truncated pack, a reference that
	// drifted (FROM is not what the terminal holds).
	flipped := append([]byte{}, pack.Bytes()...)
	flipped[len(flipped)/2] ^= 0x40
	drifted := append([]byte{}, old...)
	for i := 0; i < len(drifted); i += 4096 {
		drifted[i] ^= 1
	}
	for name, tc := range map[string][2][]byte{
		"flipped byte": {flipped, old},
		"truncated":    {pack.Bytes()[:pack.Len()-100], old},
		"drifted FROM": {pack.Bytes(), drifted},
		"not a pack":   {[]byte("hello"), old},
	} {
		if _, err := decode(tc[0], tc[1]); !errors.Is(err, delta.ErrPack) {
			t.Errorf("%s: %v, want ErrPack", name, err)
		}
	}
	// A pack for another pair of releases (other chunks, or not all of
	// them) is refused.
	other := append([]manifest.ChunkRef{from.Chunks[0]}, missing[1:]...) // a chunk FROM has: not in the pack
	for name, l := range map[string][]manifest.ChunkRef{
		"fewer chunks": missing[:len(missing)-1],
		"more chunks":  append(append([]manifest.ChunkRef{}, missing...), missing[0]),
		"other chunks": other,
	} {
		list = l
		if _, err := decode(pack.Bytes(), old); !errors.Is(err, delta.ErrPack) {
			t.Errorf("%s: %v, want ErrPack", name, err)
		}
	}
}

// Packs written by version 1 (every chunk's ID in the pack) still decode,
// and only for the chunk list they were built for.
func TestPackVersion1Decodes(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	old := textish(r, 200<<10)
	upd := append([]byte{}, old...)
	for i := 1000; i < len(upd); i += 30 << 10 {
		copy(upd[i:], "CHANGED")
	}
	store := memChunks{}
	from, to := release(t, old, 1, store), release(t, upd, 2, store)
	p, err := os.ReadFile("testdata/v1.dpack")
	if err != nil {
		t.Fatal(err)
	}
	missing := delta.PackChunks(from, to)
	n := 0
	err = delta.DecodePack(context.Background(), bytes.NewReader(p), bytes.NewReader(old), int64(len(old)), missing,
		func(chunkstore.Chunk) error { n++; return nil }, 1)
	if err != nil || n != len(missing) || n == 0 {
		t.Fatalf("version 1 pack: %d of %d chunks, %v", n, len(missing), err)
	}
	other := append([]manifest.ChunkRef{from.Chunks[0]}, missing[1:]...)
	err = delta.DecodePack(context.Background(), bytes.NewReader(p), bytes.NewReader(old), int64(len(old)), other,
		func(chunkstore.Chunk) error { return nil }, 1)
	if !errors.Is(err, delta.ErrPack) {
		t.Fatalf("version 1 pack decoded for another chunk list: %v", err)
	}
}

// FuzzDecodePack: a pack from anywhere never panics the decoder, and every
// chunk it hands out is verified.
func FuzzDecodePack(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 5))
	old := textish(r, 300<<10)
	upd := append([]byte{}, old...)
	for i := 0; i < len(upd); i += 20 << 10 {
		upd[i] ^= 1
	}
	// gzip'd documents, changed in the update: the pack carries transforms
	// and inflated references for the fuzzer to start from.
	for i := 0; i < 6; i++ {
		doc := textish(r, 8<<10)
		def, _ := zdeflate.DeflateGzip(nil, doc, 9)
		old = append(old, gzipMember(def, doc)...)
		doc = append(textish(r, 200), doc...)
		def, _ = zdeflate.DeflateGzip(nil, doc, 9)
		upd = append(upd, gzipMember(def, doc)...)
	}
	store := memChunks{}
	p := chunkstore.DefaultParams()
	mk := func(data []byte, rev uint64) *manifest.Manifest {
		exts, _ := chunkstore.Split(context.Background(), bytes.NewReader(data), int64(len(data)), p, 1)
		b := manifest.NewBuilder()
		for _, e := range exts {
			c, _ := chunkstore.Encode(data[e.Offset:e.Offset+e.Size], chunkstore.LevelDefault)
			store[c.ID()] = c
			b.AddChunk(c.ID(), uint32(e.Size))
		}
		m := &manifest.Manifest{Kind: manifest.KindImage, Name: "os", Channel: "stable", Revision: rev, Chunker: p,
			Compression: manifest.CompressionZstd, Size: int64(len(data))}
		m.Chunks, m.Runs = b.Result()
		return m
	}
	from, to := mk(old, 1), mk(upd, 2)
	var pack bytes.Buffer
	if st, err := delta.BuildPack(context.Background(), &pack, from, to, bytes.NewReader(old), store, delta.PackOptions{SegmentSize: 64 << 10}); err != nil || st.Regzipped == 0 {
		f.Fatal(err, st.Regzipped)
	}
	f.Add(pack.Bytes())
	f.Add(pack.Bytes()[:40])
	f.Fuzz(func(t *testing.T, b []byte) {
		var mu sync.Mutex
		delta.DecodePack(context.Background(), bytes.NewReader(b), bytes.NewReader(old), int64(len(old)), delta.PackChunks(from, to),
			func(c chunkstore.Chunk) error {
				mu.Lock()
				defer mu.Unlock()
				if chunkstore.Sum(c.Plain()) != c.ID() {
					t.Fatal("an unverified chunk was handed out")
				}
				return nil
			}, 2)
	})
}

// decodeAll decodes pack against from with two workers and returns how many
// chunks it handed out; every one must verify.
func decodeAll(t *testing.T, pack, from []byte, chunks []manifest.ChunkRef) (int, error) {
	t.Helper()
	n := 0
	var mu sync.Mutex
	err := delta.DecodePack(context.Background(), bytes.NewReader(pack), bytes.NewReader(from), int64(len(from)), chunks,
		func(c chunkstore.Chunk) error {
			if chunkstore.Sum(c.Plain()) != c.ID() {
				t.Error("unverified chunk delivered")
			}
			mu.Lock()
			n++
			mu.Unlock()
			return nil
		}, 2)
	return n, err
}

// gzipMember wraps deflate data as a gzip member (no name, as gzip -n).
func gzipMember(deflated, plain []byte) []byte {
	m := []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3}
	m = append(m, deflated...)
	m = binary.LittleEndian.AppendUint32(m, crc32.ChecksumIEEE(plain))
	return binary.LittleEndian.AppendUint32(m, uint32(len(plain)))
}

// A release full of gzip'd text (Debian's changelogs and manual pages):
// the pack carries the members GNU gzip's or zlib's encoder reproduces
// inflated, compressed against FROM's inflated members, and is far smaller
// for it; a member written by another encoder stays as it is; every chunk
// comes out verified, and a version-2 pack (KeepGzip) of the same pair still
// decodes.
func TestPackRegzip(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 11))
	type doc struct {
		text []byte
		enc  int // 0: gzip -9, 1: zlib 6, 2: compress/gzip (not reproducible)
	}
	var docs []doc
	for i := 0; i < 24; i++ {
		docs = append(docs, doc{textish(r, 4<<10+r.IntN(60<<10)), i % 3})
	}
	image := func(docs []doc) []byte {
		var img []byte
		for _, d := range docs {
			var def []byte
			switch d.enc {
			case 0:
				def, _ = zdeflate.DeflateGzip(nil, d.text, 9)
			case 1:
				def, _ = zdeflate.Deflate(nil, d.text, 6)
			default:
				var b bytes.Buffer
				w, _ := flate.NewWriter(&b, 9)
				w.Write(d.text)
				w.Close()
				def = b.Bytes()
			}
			img = append(img, textish(r, 10<<10)...) // other files between
			img = append(img, gzipMember(def, d.text)...)
		}
		return img
	}
	old := image(docs)
	// The update: every document gets a new entry at its top, two are new.
	for i := range docs {
		docs[i].text = append(textish(r, 300), docs[i].text...)
	}
	docs = append(docs, doc{append([]byte{}, docs[0].text[:20<<10]...), 0}, doc{textish(r, 30<<10), 1})
	upd := image(docs)
	store := memChunks{}
	from, to := release(t, old, 1, store), release(t, upd, 2, store)
	missing := delta.PackChunks(from, to)
	build := func(keep bool) ([]byte, delta.PackStats) {
		var pack bytes.Buffer
		st, err := delta.BuildPack(context.Background(), &pack, from, to, bytes.NewReader(old), store,
			delta.PackOptions{SegmentSize: 256 << 10, KeepGzip: keep})
		if err != nil {
			t.Fatal(err)
		}
		return pack.Bytes(), st
	}
	p3, st3 := build(false)
	p2, st2 := build(true)
	t.Logf("%d chunks, %d plain bytes: pack %d bytes, %d gzip streams (%d bytes) inflated; with gzip kept %d bytes",
		st3.Chunks, st3.PlainBytes, st3.Size, st3.Regzipped, st3.RegzippedBytes, st2.Size)
	// 26 documents: the 17 or 18 of the two reproducible encoders (the
	// cut of chunks may leave one out of the missing chunks: at least 16).
	if st3.Regzipped < 16 || st3.Regzipped > 18 || st2.Regzipped != 0 {
		t.Errorf("%d streams inflated (%d with KeepGzip), want 16-18 and 0", st3.Regzipped, st2.Regzipped)
	}
	if st3.Size*10 > st2.Size*6 {
		t.Errorf("pack with inflated streams %d bytes, with gzip kept %d: want at most 60 %%", st3.Size, st2.Size)
	}
	for name, p := range map[string][]byte{"version 3": p3, "version 2": p2} {
		if n, err := decodeAll(t, p, old, missing); err != nil || n != len(missing) {
			t.Errorf("%s: %d of %d chunks, %v", name, n, len(missing), err)
		}
	}
	// FROM's gzip members drifted (the inflated references are not what
	// the pack was built with): refused, never a bad chunk.
	drifted := append([]byte{}, old...)
	for i := 0; ; i += 2 {
		k := bytes.Index(drifted[i:], []byte{0x1f, 0x8b, 8})
		if k < 0 {
			break
		}
		i += k
		drifted[i+40] ^= 0x10
	}
	_, err := decodeAll(t, p3, drifted, missing)
	if !errors.Is(err, delta.ErrPack) {
		t.Errorf("FROM's gzip members drifted: %v, want ErrPack", err)
	}
}

// x86-like code: calls (E8 + displacement) to a few hundred functions from
// everywhere, between runs of other instructions.
func x86ish(r *rand.Rand, n int, funcs []int) []byte {
	var b []byte
	for len(b) < n {
		for k := r.IntN(12); k > 0; k-- {
			b = append(b, 0x48, 0x89, byte(0xc0+r.IntN(64)))
		}
		target := funcs[r.IntN(len(funcs))]
		b = append(b, 0xe8)
		b = binary.LittleEndian.AppendUint32(b, uint32(int32(target-(len(b)+4))))
	}
	return b[:n]
}

// Segments of new machine code go through the x86 filter (their calls to
// one function become one byte string), which makes the pack smaller than
// the same pack without it (format 2), and the filtered segments decode to
// the exact chunks.
func TestPackX86Filter(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 21))
	funcs := make([]int, 300)
	for i := range funcs {
		funcs[i] = r.IntN(2 << 20)
	}
	old := x86ish(r, 2<<20, funcs)
	// The update: new code (a new package's binaries), calling the same
	// functions.
	upd := append(bytes.Clone(old), x86ish(r, 1<<20, funcs)...)
	store := memChunks{}
	from, to := release(t, old, 1, store), release(t, upd, 2, store)
	missing := delta.PackChunks(from, to)
	var p3, p2 bytes.Buffer
	st3, err := delta.BuildPack(context.Background(), &p3, from, to, bytes.NewReader(old), store, delta.PackOptions{SegmentSize: 512 << 10})
	if err != nil {
		t.Fatal(err)
	}
	st2, err := delta.BuildPack(context.Background(), &p2, from, to, bytes.NewReader(old), store, delta.PackOptions{SegmentSize: 512 << 10, KeepGzip: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d chunks: %d of %d segments filtered, pack %d bytes; without the filter %d", st3.Chunks, st3.Filtered, st3.Segments, st3.Size, st2.Size)
	if st3.Filtered == 0 || st3.Size >= st2.Size {
		t.Fatalf("filtered %d segments, %d bytes against %d", st3.Filtered, st3.Size, st2.Size)
	}
	if n, err := decodeAll(t, p3.Bytes(), old, missing); err != nil || n != len(missing) {
		t.Fatalf("%d of %d chunks, %v", n, len(missing), err)
	}
}

// zeroFrom is FROM content of size bytes, all zeros, that records the
// largest read asked of it (the decoder reads a reference into a buffer of
// its length).
type zeroFrom struct {
	size int64
	most atomic.Int64
}

func (z *zeroFrom) ReadAt(b []byte, off int64) (int, error) {
	for m := z.most.Load(); int64(len(b)) > m && !z.most.CompareAndSwap(m, int64(len(b))); m = z.most.Load() {
	}
	if off >= z.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), z.size-off))
	clear(b[:n])
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// authReader is a pack reader that can check the whole pack first.
type authReader struct {
	io.Reader
	calls int
	err   error
}

func (a *authReader) Authenticate() error { a.calls++; return a.err }

// A pack's lengths are its own to claim: before a segment would hold more
// than a pack of the default options ever needs, the decoder has the pack
// checked as a whole, and a forged one is refused before anything of the
// claimed size is allocated. Claims within the bound are not checked
// first; a checked pack decodes on.
func TestPackForgedHeaderCheckedFirst(t *testing.T) {
	ctx := context.Background()
	from := &zeroFrom{size: 1 << 30}
	var chunks []manifest.ChunkRef // 64 MiB, the most a segment yields
	for i := range 4 {
		chunks = append(chunks, manifest.ChunkRef{ID: chunkstore.Sum([]byte{byte(i)}), Size: 16 << 20})
	}
	forge := func(refLen uint64) []byte {
		b := []byte("IMGPACK\x03")
		for _, v := range []uint64{
			1,            // segments
			1, 0, refLen, // one reference range, at 0
			0,  // inflated references
			0,  // transforms
			0,  // filter
			4,  // chunks
			10, // frame length
		} {
			b = binary.AppendUvarint(b, v)
		}
		return append(b, make([]byte, 10)...)
	}
	decode := func(r io.Reader) error {
		return delta.DecodePack(ctx, r, from, from.size, chunks, func(chunkstore.Chunk) error { return nil }, 1)
	}
	forged := errors.New("the pack does not hash to its record's")
	r := &authReader{Reader: bytes.NewReader(forge(200 << 20)), err: forged}
	if err := decode(r); !errors.Is(err, forged) || r.calls != 1 {
		t.Fatalf("forged 200 MiB reference: %v after %d checks, want the check's error after one", err, r.calls)
	}
	if m := from.most.Load(); m > 0 {
		t.Fatalf("a %d-byte reference was read before the pack was checked", m)
	}
	r = &authReader{Reader: bytes.NewReader(forge(16 << 20)), err: forged}
	if err := decode(r); !errors.Is(err, delta.ErrPack) || r.calls != 0 {
		t.Fatalf("16 MiB reference: %v after %d checks, want ErrPack (the frame is garbage) unchecked", err, r.calls)
	}
	r = &authReader{Reader: bytes.NewReader(forge(40 << 20))} // with 64 MiB of data: over the bound
	if err := decode(r); !errors.Is(err, delta.ErrPack) || r.calls != 1 {
		t.Fatalf("40 MiB reference, pack checked: %v after %d checks, want ErrPack from the frame after one", err, r.calls)
	}
	if m := from.most.Load(); m != 40<<20 {
		t.Fatalf("after the check the reference read was %d bytes, want %d", m, 40<<20)
	}
}
