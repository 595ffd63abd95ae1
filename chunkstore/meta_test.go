package chunkstore

import (
	"os"
	"testing"
)

// Storing a record that holds the value already writes nothing; a new
// value, or deleting, does.
func TestPutMetaUnchangedWritesNothing(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	writes := func() int64 { st := s.db.Stats(); return st.TxStats.GetWrite() }
	big := make([]byte, 400<<10)
	if err := s.PutMeta("manifest/x", big); err != nil {
		t.Fatal(err)
	}
	w0 := writes()
	if err := s.PutMeta("manifest/x", append([]byte(nil), big...)); err != nil {
		t.Fatal(err)
	}
	if n := writes() - w0; n != 0 {
		t.Fatalf("storing the same value again wrote %d pages", n)
	}
	big[7] = 1
	if err := s.PutMeta("manifest/x", big); err != nil {
		t.Fatal(err)
	}
	if writes() == w0 {
		t.Fatal("a changed value was not written")
	}
	if v, _ := s.GetMeta("manifest/x"); len(v) != len(big) || v[7] != 1 {
		t.Fatal("GetMeta does not return the new value")
	}
	if err := s.PutMeta("manifest/x", nil); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.GetMeta("manifest/x"); v != nil {
		t.Fatal("record not deleted")
	}
}

// Opening a store whose index agrees with its packs commits nothing (no
// fdatasync); one whose pack vanished is still reconciled.
func TestOpenConsistentWritesNothing(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Encode([]byte("some chunk content"), LevelFastest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := s.db.Stats()
	if n := st.TxStats.GetWrite(); n != 0 {
		t.Fatalf("opening a consistent store wrote %d pages", n)
	}
	if ok, _ := s.Has(t.Context(), c.ID()); !ok {
		t.Fatal("chunk lost")
	}
	p, _, _, err := s.Locate(c.ID())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ok, _ := s.Has(t.Context(), c.ID()); ok {
		t.Fatal("a chunk of a vanished pack is still indexed")
	}
}
