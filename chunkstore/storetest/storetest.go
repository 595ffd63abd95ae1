// Package storetest is the conformance suite every chunkstore.WriteStore
// implementation runs: wire it in with
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) storetest.Store { return newStore(t) })
//	}
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/imgctl/imgctl/chunkstore"
)

// Store is what the suite needs: a write store whose stored bytes can be
// damaged on purpose.
type Store interface {
	chunkstore.WriteStore
	// Corrupt damages the stored bytes of id (flip a byte, truncate).
	Corrupt(t *testing.T, id chunkstore.ID)
}

// Chunk returns a deterministic verified chunk of n bytes.
func Chunk(t testing.TB, seed uint64, n int) chunkstore.Chunk {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.IntN(40)) // compressible, like real data
	}
	c, err := chunkstore.Encode(b, chunkstore.LevelDefault)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Fill puts cs into s and flushes it.
func Fill(t testing.TB, s chunkstore.WriteStore, cs ...chunkstore.Chunk) {
	t.Helper()
	for _, c := range cs {
		if _, err := s.Put(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Damage flips the bits of one stored byte of id in the pack file of a
// local store: the byte at(n) of the chunk's n stored bytes.
func Damage(t testing.TB, s *chunkstore.Local, id chunkstore.ID, at func(n int) int) {
	t.Helper()
	p, off, n, err := s.Locate(id)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	pos := off + int64(at(n))
	if _, err := f.ReadAt(b, pos); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5A
	if _, err := f.WriteAt(b, pos); err != nil {
		t.Fatal(err)
	}
}

// Run runs every conformance test against stores made by newStore.
func Run(t *testing.T, newStore func(t *testing.T) Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s Store)
	}{
		{"PutGetHas", testPutGetHas},
		{"MissingIsNotFound", testMissing},
		{"PutTwiceKeepsFirst", testPutTwice},
		{"CorruptIsErrCorrupt", testCorrupt},
		{"ConcurrentPutSameID", testConcurrentSame},
		{"FlushThenReadable", testFlush},
		{"StoredBytesCanonical", testCanonical},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() { s.Close() })
			tc.fn(t, s)
		})
	}
}

func testPutGetHas(t *testing.T, s Store) {
	ctx := context.Background()
	for i, n := range []int{1, 100, 64 << 10, 128 << 10} {
		c := Chunk(t, uint64(i), n)
		added, err := s.Put(ctx, c)
		if err != nil || !added {
			t.Fatalf("put %d bytes: added=%v err=%v", n, added, err)
		}
		ok, err := s.Has(ctx, c.ID())
		if err != nil || !ok {
			t.Fatalf("has after put: %v %v", ok, err)
		}
		got, err := s.Get(ctx, c.ID())
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if !bytes.Equal(got.Plain(), c.Plain()) || got.ID() != c.ID() {
			t.Fatalf("get returned other bytes")
		}
	}
}

func testMissing(t *testing.T, s Store) {
	ctx := context.Background()
	id := chunkstore.Sum([]byte("never stored"))
	if ok, err := s.Has(ctx, id); ok || err != nil {
		t.Fatalf("has missing: %v %v", ok, err)
	}
	if _, err := s.Get(ctx, id); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("get missing: %v, want ErrNotFound", err)
	}
}

func testPutTwice(t *testing.T, s Store) {
	ctx := context.Background()
	c := Chunk(t, 7, 5000)
	if _, err := s.Put(ctx, c); err != nil {
		t.Fatal(err)
	}
	// The same plain bytes compressed differently must not replace the
	// stored bytes (they are canonical once stored).
	other, err := chunkstore.Encode(c.Plain(), chunkstore.LevelFastest)
	if err != nil {
		t.Fatal(err)
	}
	added, err := s.Put(ctx, other)
	if err != nil || added {
		t.Fatalf("second put: added=%v err=%v", added, err)
	}
	got, err := s.Get(ctx, c.ID())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Stored(), c.Stored()) {
		t.Fatalf("stored bytes replaced by a second put")
	}
}

func testCorrupt(t *testing.T, s Store) {
	ctx := context.Background()
	c := Chunk(t, 9, 20000)
	if _, err := s.Put(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	s.Corrupt(t, c.ID())
	_, err := s.Get(ctx, c.ID())
	if !errors.Is(err, chunkstore.ErrCorrupt) && !errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("get corrupt: %v, want ErrCorrupt", err)
	}
	var ie *chunkstore.IntegrityError
	if errors.Is(err, chunkstore.ErrCorrupt) && !errors.As(err, &ie) {
		t.Fatalf("corruption is not an *IntegrityError: %T", err)
	}
}

func testConcurrentSame(t *testing.T, s Store) {
	ctx := context.Background()
	c := Chunk(t, 11, 30000)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Put(ctx, c); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("concurrent put: %v", errs)
	}
	if _, err := s.Get(ctx, c.ID()); err != nil {
		t.Fatal(err)
	}
}

func testFlush(t *testing.T, s Store) {
	ctx := context.Background()
	var ids []chunkstore.ID
	for i := 0; i < 300; i++ {
		c := Chunk(t, uint64(1000+i), 100+i)
		if _, err := s.Put(ctx, c); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, c.ID())
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := s.Get(ctx, id); err != nil {
			t.Fatalf("after flush: %v", err)
		}
	}
}

func testCanonical(t *testing.T, s Store) {
	ctx := context.Background()
	c := Chunk(t, 13, 70000)
	if _, err := s.Put(ctx, c); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, c.ID())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Stored(), c.Stored()) {
		t.Fatal(fmt.Errorf("stored bytes differ from what was put"))
	}
}
