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

type testLocal struct{ *chunkstore.Local }

func (l testLocal) Corrupt(t *testing.T, id chunkstore.ID) {
	storetest.Damage(t, l.Local, id, func(n int) int { return n / 2 })
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

func TestLocalFlushEveryConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		s, err := chunkstore.Open(t.TempDir(), chunkstore.Options{FlushEvery: time.Nanosecond})
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

// A reader without the lock sees chunks the writer flushes after the reader
// opened, and never sees unflushed ones.
func TestDirSeesFlushedPacks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	w, err := chunkstore.Open(dir, chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r, err := chunkstore.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.RescanEvery = 0
	c := storetest.Chunk(t, 1, 5000)
	w.Put(ctx, c)
	if ok, _ := r.Has(ctx, c.ID()); ok {
		t.Fatal("reader sees an unflushed chunk")
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := r.Get(ctx, c.ID())
	if err != nil || got.ID() != c.ID() {
		t.Fatalf("reader after flush: %v", err)
	}
	if n, ok := r.StoredSize(c.ID()); !ok || n != int64(len(c.Stored())) {
		t.Fatalf("stored size %d %v", n, ok)
	}
}

// Crash simulations: a temporary pack (crash before sealing) is removed; a
// sealed pack whose entries never reached the index (crash between rename
// and commit) is imported from its .idx.
func TestLocalReconcilesAfterCrash(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := chunkstore.Open(dir, chunkstore.Options{})
	a := storetest.Chunk(t, 1, 3000)
	s.Put(ctx, a)
	s.Flush(ctx)
	s.Close()
	// The sealed pack's index records lost: rebuild the index from scratch.
	os.Remove(filepath.Join(dir, "index.db"))
	os.WriteFile(filepath.Join(dir, "packs", ".tmp-000000ff.pack"), []byte("torn"), 0o644)
	s, err := chunkstore.Open(dir, chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Get(ctx, a.ID()); err != nil {
		t.Fatalf("sealed pack not imported: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "packs", ".tmp-000000ff.pack")); err == nil {
		t.Fatal("temporary pack left behind")
	}
	rep, err := s.Check(ctx, nil)
	if err != nil || !rep.OK() || rep.Chunks != 1 {
		t.Fatalf("check after reconcile: %+v %v", rep, err)
	}
}

// A corrupt chunk is dropped from the index, so that the next Put restores
// it (in a newer pack, which readers prefer).
func TestLocalCorruptIsDroppedAndRepairable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := chunkstore.Open(dir, chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := storetest.Chunk(t, 2, 50000)
	s.Put(ctx, c)
	testLocal{s}.Corrupt(t, c.ID())
	rep, _ := s.Check(ctx, nil)
	if len(rep.Corrupt) != 1 || rep.OK() {
		t.Fatalf("check: %+v", rep)
	}
	if _, err := s.Get(ctx, c.ID()); !errors.Is(err, chunkstore.ErrCorrupt) {
		t.Fatalf("get: %v", err)
	}
	if ok, _ := s.Has(ctx, c.ID()); ok {
		t.Fatal("corrupt chunk still indexed")
	}
	if added, err := s.Put(ctx, c); err != nil || !added {
		t.Fatalf("re-put: %v %v", added, err)
	}
	if _, err := s.Get(ctx, c.ID()); err != nil {
		t.Fatal(err)
	}
	s.Flush(ctx)
	r, _ := chunkstore.OpenDir(dir)
	defer r.Close()
	if _, err := r.Get(ctx, c.ID()); err != nil {
		t.Fatalf("reader prefers the repaired copy: %v", err)
	}
}

func TestLocalDeleteCompacts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := chunkstore.Open(dir, chunkstore.Options{})
	defer s.Close()
	var keep, drop []chunkstore.Chunk
	for i := 0; i < 40; i++ {
		c := storetest.Chunk(t, uint64(100+i), 4000+i)
		s.Put(ctx, c)
		if i%4 == 0 {
			keep = append(keep, c)
		} else {
			drop = append(drop, c)
		}
	}
	s.Flush(ctx)
	only := storetest.Chunk(t, 999, 7000) // a pack with nothing live after the delete
	s.Put(ctx, only)
	s.Flush(ctx)
	var ids []chunkstore.ID
	for _, c := range append(drop, only) {
		ids = append(ids, c.ID())
	}
	st, err := s.Delete(ids)
	if err != nil {
		t.Fatal(err)
	}
	if st.PacksRemoved != 1 || st.PacksRewritten != 1 || st.BytesFreed <= 0 {
		t.Fatalf("compaction %+v", st)
	}
	for _, c := range keep {
		if _, err := s.Get(ctx, c.ID()); err != nil {
			t.Fatalf("kept chunk lost: %v", err)
		}
	}
	for _, c := range drop {
		if ok, _ := s.Has(ctx, c.ID()); ok {
			t.Fatal("deleted chunk still present")
		}
	}
	rep, err := s.Check(ctx, nil)
	if err != nil || !rep.OK() || rep.Unindexed != 0 || rep.Packs != 1 {
		t.Fatalf("check after compaction: %+v %v", rep, err)
	}
}

func TestLocalReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := chunkstore.Open(dir, chunkstore.Options{})
	for i := 0; i < 25; i++ {
		s.Put(ctx, storetest.Chunk(t, uint64(i), 1000))
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

// Killed in the middle of sealing: temporary pack and index both exist.
// Both must go, and the next pack must be creatable.
func TestLocalReconcilesInterruptedSeal(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := chunkstore.Open(dir, chunkstore.Options{})
	s.Put(ctx, storetest.Chunk(t, 1, 3000))
	s.Close()
	for _, n := range []string{".tmp-00000001.pack", ".tmp-00000001.idx", "00000007.pack"} {
		os.WriteFile(filepath.Join(dir, "packs", n), []byte("x"), 0o644)
	}
	s, err := chunkstore.Open(dir, chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	left, _ := filepath.Glob(filepath.Join(dir, "packs", "*"))
	if len(left) != 2 {
		t.Fatalf("left after reconcile: %v", left)
	}
	if _, err := s.Put(ctx, storetest.Chunk(t, 2, 3000)); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// openLocal opens a store in a temporary directory, closed after the test.
func openLocal(t *testing.T) *chunkstore.Local {
	t.Helper()
	s, err := chunkstore.Open(t.TempDir(), chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Holds answers for flushed and pending chunks alike, as Has does.
func TestLocalHolds(t *testing.T) {
	ctx := context.Background()
	s := openLocal(t)
	var ids []chunkstore.ID
	for i := range 30 {
		c := storetest.Chunk(t, uint64(i), 1000)
		ids = append(ids, c.ID())
		if i%3 == 2 {
			continue // never stored
		}
		if _, err := s.Put(ctx, c); err != nil {
			t.Fatal(err)
		}
		if i == 14 {
			if err := s.Flush(ctx); err != nil { // 0..14 flushed, 15.. pending
				t.Fatal(err)
			}
		}
	}
	held, err := s.Holds(ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		has, _ := s.Has(ctx, id)
		if held.Has(id) != (i%3 != 2) || held.Has(id) != has {
			t.Fatalf("chunk %d: Holds %v, Has %v", i, held.Has(id), has)
		}
	}
	if held.Len() != 20 {
		t.Fatalf("Holds returned %d chunks, want 20", held.Len())
	}
}

// AppendPlain decodes into the caller's buffer after what it holds, reuses
// the scratch buffer, and on a corrupt chunk leaves the buffer's content
// alone and drops the chunk from the index, as Get does.
func TestLocalAppendPlain(t *testing.T) {
	ctx := context.Background()
	s := openLocal(t)
	a, b := storetest.Chunk(t, 3, 40000), storetest.Chunk(t, 4, 30000)
	storetest.Fill(t, s, a, b)
	buf := make([]byte, 0, 100000)
	buf = append(buf, "head"...)
	var scratch []byte
	buf, err := s.AppendPlain(buf, a.ID(), &scratch)
	if err != nil {
		t.Fatal(err)
	}
	sc := &scratch[:1][0]
	buf, err = s.AppendPlain(buf, b.ID(), &scratch)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte("head"), a.Plain()...), b.Plain()...)
	if string(buf) != string(want) || cap(buf) != 100000 {
		t.Fatalf("got %d bytes (cap %d), want %d", len(buf), cap(buf), len(want))
	}
	if &scratch[:1][0] != sc {
		t.Error("the scratch buffer was not reused for a smaller chunk")
	}
	testLocal{s}.Corrupt(t, a.ID())
	got, err := s.AppendPlain(buf[:4], a.ID(), &scratch)
	if !errors.Is(err, chunkstore.ErrCorrupt) || string(got) != "head" {
		t.Fatalf("corrupt chunk: %q, %v", got[:min(len(got), 8)], err)
	}
	if ok, _ := s.Has(ctx, a.ID()); ok {
		t.Fatal("corrupt chunk still indexed")
	}
}

// Held reads a chunk where Holds found it; when the pack was rewritten
// since (Delete compacts it), it looks the chunk up afresh and keeps it
// indexed; a chunk it was not asked about is looked up as usual.
func TestHeldAppendPlain(t *testing.T) {
	ctx := context.Background()
	s := openLocal(t)
	a, b := storetest.Chunk(t, 5, 20000), storetest.Chunk(t, 6, 20000)
	big := storetest.Chunk(t, 7, 200000)
	storetest.Fill(t, s, a, b, big)
	held, err := s.Holds([]chunkstore.ID{a.ID(), big.ID()})
	if err != nil {
		t.Fatal(err)
	}
	var scratch []byte
	got, err := held.AppendPlain(nil, a.ID(), &scratch)
	if err != nil || string(got) != string(a.Plain()) {
		t.Fatalf("held chunk: %d bytes, %v", len(got), err)
	}
	got, err = held.AppendPlain(nil, b.ID(), &scratch)
	if err != nil || string(got) != string(b.Plain()) {
		t.Fatalf("chunk not asked about: %d bytes, %v", len(got), err)
	}
	st, err := s.Delete([]chunkstore.ID{big.ID()})
	if err != nil || st.PacksRewritten != 1 {
		t.Fatalf("Delete: %+v, %v (the test needs the pack rewritten)", st, err)
	}
	got, err = held.AppendPlain(got[:0], a.ID(), &scratch)
	if err != nil || string(got) != string(a.Plain()) {
		t.Fatalf("after the pack was rewritten: %d bytes, %v", len(got), err)
	}
	if ok, _ := s.Has(ctx, a.ID()); !ok {
		t.Fatal("a good chunk read from a stale location was dropped")
	}
}

// PutNew stores a chunk without asking the index: a pending copy is still
// found; a flushed one is superseded, and the chunk reads back either way.
func TestLocalPutNew(t *testing.T) {
	ctx := context.Background()
	s := openLocal(t)
	a, b := storetest.Chunk(t, 8, 30000), storetest.Chunk(t, 9, 30000)
	if ok, err := s.PutNew(ctx, a); !ok || err != nil {
		t.Fatalf("PutNew of a new chunk: %v, %v", ok, err)
	}
	if ok, err := s.PutNew(ctx, a); ok || err != nil {
		t.Fatalf("PutNew of a pending chunk: %v, %v (want not stored)", ok, err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Put(ctx, a); ok || err != nil {
		t.Fatalf("Put of a flushed chunk: %v, %v (want not stored)", ok, err)
	}
	if ok, err := s.PutNew(ctx, a); !ok || err != nil {
		t.Fatalf("PutNew of a flushed chunk: %v, %v (want stored again)", ok, err)
	}
	if _, err := s.PutNew(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []chunkstore.Chunk{a, b} {
		if got, err := s.Get(ctx, c.ID()); err != nil || string(got.Plain()) != string(c.Plain()) {
			t.Fatalf("chunk %s after PutNew: %v", c.ID().Short(), err)
		}
	}
	rep, err := s.Check(ctx, nil)
	if err != nil || !rep.OK() {
		t.Fatalf("check after a superseded copy: %+v, %v", rep, err)
	}
}

// A chunk read while it still sits in the current pack's append buffer is
// read from there: the read does not write the buffer out. Once it is
// written (a large chunk pushes it out) or sealed, reads find the file.
func TestLocalReadsAppendBuffer(t *testing.T) {
	ctx := context.Background()
	s := openLocal(t)
	small := []chunkstore.Chunk{storetest.Chunk(t, 1, 30000), storetest.Chunk(t, 2, 50000), storetest.Chunk(t, 3, 20000)}
	put := func(cs ...chunkstore.Chunk) {
		t.Helper()
		for _, c := range cs {
			if _, err := s.Put(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(small...)
	packed := func() int64 {
		t.Helper()
		tmp, err := filepath.Glob(filepath.Join(s.Root(), "packs", ".tmp-*.pack"))
		if err != nil || len(tmp) != 1 {
			t.Fatalf("open packs: %v, %v", tmp, err)
		}
		fi, err := os.Stat(tmp[0])
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	check := func(cs ...chunkstore.Chunk) {
		t.Helper()
		for _, c := range cs {
			got, err := s.Get(ctx, c.ID())
			if err != nil || string(got.Plain()) != string(c.Plain()) {
				t.Fatalf("chunk %s: %v", c.ID().Short(), err)
			}
			b, _, err := s.ReadStoredChecked(c.ID())
			if err != nil || string(b) != string(c.Stored()) {
				t.Fatalf("chunk %s stored bytes: %v", c.ID().Short(), err)
			}
		}
	}
	check(small...)
	if n := packed(); n != 0 {
		t.Errorf("reading buffered chunks wrote %d bytes of the pack", n)
	}
	big := storetest.Chunk(t, 4, 2<<20) // stored > the 1 MiB buffer: written at once
	more := storetest.Chunk(t, 5, 10000)
	put(big, more)
	if n := packed(); n == 0 || n >= int64(len(small[0].Stored())+len(small[1].Stored())+len(small[2].Stored())+len(big.Stored())+len(more.Stored())) {
		t.Fatalf("pack file of %d bytes: the large chunk should be written, the last one buffered", n)
	}
	check(append(small, big, more)...)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	check(append(small, big, more)...)
}
