package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// Dir reads a store's packs through their sidecar indexes, without the
// store's lock: a server reads a store while a publisher writes it. On a
// miss it rescans the packs directory (at most every RescanEvery), so
// chunks published after Open are found; packs removed by gc are dropped.
// Every read is verified.
type Dir struct {
	root string
	// RescanEvery bounds how often a miss rescans the directory.
	RescanEvery time.Duration
	now         func() time.Time

	mu      sync.RWMutex
	entries []idxEntry // sorted by id, one per id (the newest pack's)
	known   map[uint32]bool
	files   map[uint32]*os.File
	scanned time.Time
}

var _ Store = (*Dir)(nil)

// OpenDir opens the packs under root for reading.
func OpenDir(root string) (*Dir, error) {
	if _, err := os.Stat(root); err != nil {
		return nil, err
	}
	d := &Dir{root: root, RescanEvery: 100 * time.Millisecond, now: time.Now, known: map[uint32]bool{}, files: map[uint32]*os.File{}}
	if err := d.Refresh(); err != nil {
		return nil, err
	}
	return d, nil
}

// Root returns the store's root directory.
func (d *Dir) Root() string { return d.root }

// Refresh rescans the packs directory.
func (d *Dir) Refresh() error {
	seqs, _, err := listPacks(d.root)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.scanned = d.now()
	present := map[uint32]bool{}
	var added []idxEntry
	for _, s := range seqs {
		present[s] = true
		if d.known[s] {
			continue
		}
		st, err := os.Stat(packPath(d.root, s))
		if err != nil {
			continue // removed meanwhile
		}
		es, err := readIdx(d.root, s, st.Size())
		if err != nil {
			continue // not complete (or damaged: fsck reports it)
		}
		d.known[s] = true
		added = append(added, es...)
	}
	removed := false
	for s := range d.known {
		if !present[s] {
			delete(d.known, s)
			if f := d.files[s]; f != nil {
				f.Close()
				delete(d.files, s)
			}
			removed = true
		}
	}
	if len(added) == 0 && !removed {
		return nil
	}
	all := append(d.entries, added...)
	if removed {
		kept := all[:0]
		for _, e := range all {
			if d.known[e.pack] {
				kept = append(kept, e)
			}
		}
		all = kept
	}
	// Sort by id, newest pack first, and keep one entry per id.
	sort.Slice(all, func(i, j int) bool {
		if c := bytes.Compare(all[i].id[:], all[j].id[:]); c != 0 {
			return c < 0
		}
		return all[i].pack > all[j].pack
	})
	out := all[:0]
	for i, e := range all {
		if i > 0 && e.id == all[i-1].id {
			continue
		}
		out = append(out, e)
	}
	d.entries = out
	return nil
}

func (d *Dir) find(id ID) (loc, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	i := sort.Search(len(d.entries), func(i int) bool { return bytes.Compare(d.entries[i].id[:], id[:]) >= 0 })
	if i < len(d.entries) && d.entries[i].id == id {
		return d.entries[i].loc, true
	}
	return loc{}, false
}

func (d *Dir) lookup(id ID) (loc, bool, error) {
	if l, ok := d.find(id); ok {
		return l, true, nil
	}
	d.mu.RLock()
	stale := d.now().Sub(d.scanned) >= d.RescanEvery
	d.mu.RUnlock()
	if !stale {
		return loc{}, false, nil
	}
	if err := d.Refresh(); err != nil {
		return loc{}, false, err
	}
	l, ok := d.find(id)
	return l, ok, nil
}

// Has reports whether the store holds id.
func (d *Dir) Has(_ context.Context, id ID) (bool, error) {
	_, ok, err := d.lookup(id)
	return ok, err
}

// StoredSize returns the stored size of id, if the store holds it.
func (d *Dir) StoredSize(id ID) (int64, bool) {
	l, ok, _ := d.lookup(id)
	return int64(l.stored), ok
}

func (d *Dir) file(seq uint32) (*os.File, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if f := d.files[seq]; f != nil {
		return f, nil
	}
	f, err := os.Open(packPath(d.root, seq))
	if err != nil {
		return nil, err
	}
	d.files[seq] = f
	return f, nil
}

// ReadStoredChecked returns the stored bytes of id after checking them
// against the pack index's checksum of the stored bytes (cheap: no
// decompression), and the chunk's plain size. A mismatch is an
// *IntegrityError. Servers send these bytes; clients verify them fully.
func (d *Dir) ReadStoredChecked(id ID) ([]byte, int, error) {
	b, size, sum, err := d.readStored(id)
	if err != nil {
		return nil, 0, err
	}
	if sumStored(b) != sum {
		return nil, 0, &IntegrityError{ID: id, Reason: "stored bytes do not match the pack index"}
	}
	return b, size, nil
}

// ReadStored returns the stored bytes of id, unverified, and its plain size.
func (d *Dir) ReadStored(id ID) ([]byte, int, error) {
	b, size, _, err := d.readStored(id)
	return b, size, err
}

func (d *Dir) readStored(id ID) ([]byte, int, storedSum, error) {
	for attempt := 0; ; attempt++ {
		l, ok, err := d.lookup(id)
		if err != nil {
			return nil, 0, storedSum{}, err
		}
		if !ok {
			return nil, 0, storedSum{}, fmt.Errorf("chunk %s: %w", id.Short(), ErrNotFound)
		}
		f, err := d.file(l.pack)
		if errors.Is(err, os.ErrNotExist) && attempt == 0 {
			d.Refresh() // removed by gc: look again
			continue
		}
		if err != nil {
			return nil, 0, storedSum{}, err
		}
		b := make([]byte, l.stored)
		if _, err := f.ReadAt(b, int64(l.off)); err != nil {
			return nil, 0, storedSum{}, fmt.Errorf("read chunk %s: %w", id.Short(), err)
		}
		return b, int(l.size), l.sum, nil
	}
}

// Get reads and verifies id.
func (d *Dir) Get(_ context.Context, id ID) (Chunk, error) {
	b, size, err := d.ReadStored(id)
	if err != nil {
		return Chunk{}, err
	}
	return Verify(id, b, size)
}

// Close closes open pack files.
func (d *Dir) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for s, f := range d.files {
		f.Close()
		delete(d.files, s)
	}
	return nil
}

// Locate returns the pack file, offset and stored length of id (for tools
// and tests).
func (d *Dir) Locate(id ID) (path string, off int64, n int, err error) {
	l, ok, err := d.lookup(id)
	if err != nil || !ok {
		return "", 0, 0, fmt.Errorf("chunk %s: %w", id.Short(), ErrNotFound)
	}
	return filepath.Join(d.root, packDir, packName(l.pack)+".pack"), int64(l.off), int(l.stored), nil
}
