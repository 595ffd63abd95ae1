package delta_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
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
	if _, err := delta.BuildPack(context.Background(), &pack, from, to, bytes.NewReader(old), store, delta.PackOptions{SegmentSize: 64 << 10}); err != nil {
		f.Fatal(err)
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
