package chunkstore_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/chunkstore/storetest"
)

type testDir struct{ *chunkstore.Dir }

func (d testDir) Corrupt(t *testing.T, id chunkstore.ID) { corruptFile(t, d.Path(id)) }

type testLocal struct{ *chunkstore.Local }

func (l testLocal) Corrupt(t *testing.T, id chunkstore.ID) { corruptFile(t, l.Path(id)) }

func corruptFile(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestDirConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		d, err := chunkstore.OpenDir(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return testDir{d}
	})
}

func TestLocalConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		s, err := chunkstore.Open(t.TempDir(), chunkstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return testLocal{s}
	})
}

func TestLocalSyncEachConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		s, err := chunkstore.Open(t.TempDir(), chunkstore.Options{SyncEach: true, BatchSize: 3})
		if err != nil {
			t.Fatal(err)
		}
		return testLocal{s}
	})
}

func TestLocalSecondWriterFailsFast(t *testing.T) {
	dir := t.TempDir()
	s, err := chunkstore.Open(dir, chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = chunkstore.Open(dir, chunkstore.Options{Timeout: 100 * time.Millisecond})
	if !errors.Is(err, chunkstore.ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
}

// A file left by a crash before Flush is not indexed; the next Put of the
// same chunk must rewrite it even if it is torn.
func TestLocalRewritesUnindexedLeftover(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := storetest.Chunk(t, 1, 40000)
	d, _ := chunkstore.OpenDir(dir)
	p := d.Path(c.ID())
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, c.Stored()[:10], 0o444); err != nil { // torn
		t.Fatal(err)
	}
	s, err := chunkstore.Open(dir, chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ok, _ := s.Has(ctx, c.ID()); ok {
		t.Fatal("unindexed leftover counted as present")
	}
	if added, err := s.Put(ctx, c); err != nil || !added {
		t.Fatalf("put over leftover: %v %v", added, err)
	}
	if _, err := s.Get(ctx, c.ID()); err != nil {
		t.Fatalf("get after repair: %v", err)
	}
}

// A corrupt chunk is quarantined and dropped from the index, so that the
// next Put restores it.
func TestLocalCorruptIsQuarantinedAndRepairable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := chunkstore.Open(dir, chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := storetest.Chunk(t, 2, 50000)
	if _, err := s.Put(ctx, c); err != nil {
		t.Fatal(err)
	}
	s.Flush(ctx)
	corruptFile(t, s.Path(c.ID()))
	if _, err := s.Get(ctx, c.ID()); !errors.Is(err, chunkstore.ErrCorrupt) {
		t.Fatalf("get: %v", err)
	}
	if ok, _ := s.Has(ctx, c.ID()); ok {
		t.Fatal("corrupt chunk still indexed")
	}
	if _, err := os.Stat(filepath.Join(dir, "quarantine", c.ID().String()+".zst")); err != nil {
		t.Fatalf("not quarantined: %v", err)
	}
	if added, err := s.Put(ctx, c); err != nil || !added {
		t.Fatalf("re-put: %v %v", added, err)
	}
	if _, err := s.Get(ctx, c.ID()); err != nil {
		t.Fatal(err)
	}
}

// Batches are committed to the index: a reopened store sees what was
// flushed, and Close flushes.
func TestLocalReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := chunkstore.Open(dir, chunkstore.Options{BatchSize: 10})
	var ids []chunkstore.ID
	for i := 0; i < 25; i++ {
		c := storetest.Chunk(t, uint64(i), 1000)
		s.Put(ctx, c)
		ids = append(ids, c.ID())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := chunkstore.Open(dir, chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n := 0
	s.Walk(func(chunkstore.Info) error { n++; return nil })
	if n != 25 {
		t.Fatalf("index holds %d chunks, want 25", n)
	}
	if err := s.PutMeta("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.GetMeta("k"); string(v) != "v" {
		t.Fatalf("meta: %q", v)
	}
}

func TestVerifyRejects(t *testing.T) {
	c := storetest.Chunk(t, 3, 10000)
	cases := map[string]func() error{
		"wrong size": func() error { _, err := chunkstore.Verify(c.ID(), c.Stored(), 9999); return err },
		"wrong id":   func() error { _, err := chunkstore.Verify(chunkstore.Sum([]byte("x")), c.Stored(), 10000); return err },
		"garbage":    func() error { _, err := chunkstore.Verify(c.ID(), []byte("not zstd"), 10000); return err },
		"oversized": func() error {
			big := make([]byte, chunkstore.MaxStoredSize(10000)+1)
			_, err := chunkstore.Verify(c.ID(), big, 10000)
			return err
		},
	}
	for name, fn := range cases {
		if err := fn(); !errors.Is(err, chunkstore.ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
	if _, err := chunkstore.Verify(c.ID(), c.Stored(), 10000); err != nil {
		t.Fatal(err)
	}
}

// Incompressible chunks still fit the stored-size bound transports cut at.
func TestMaxStoredSizeHoldsForRandomData(t *testing.T) {
	r := rand.NewChaCha8([32]byte{1})
	for _, n := range []int{1, 100, 4096, 128 << 10, 1 << 20} {
		x := make([]byte, n)
		r.Read(x)
		c, err := chunkstore.Encode(x, chunkstore.LevelDefault)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Stored()) > chunkstore.MaxStoredSize(n) {
			t.Fatalf("%d bytes stored as %d > bound %d", n, len(c.Stored()), chunkstore.MaxStoredSize(n))
		}
	}
}
