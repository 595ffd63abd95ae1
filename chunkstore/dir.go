package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// Dir is the file half of a store: chunks/ab/<id>.zst files, no index. It
// needs no lock, so a server can read a store that a publisher is writing.
// Has is a stat; Get verifies the file against its ID.
type Dir struct {
	root string
	// SyncEach makes Put fsync every file and its directory; otherwise
	// writes are made durable in one go by Flush.
	SyncEach bool

	mu    sync.Mutex
	dirty bool
}

var _ WriteStore = (*Dir)(nil)

// OpenDir opens (creating if needed) the chunk files under root.
func OpenDir(root string) (*Dir, error) {
	if err := os.MkdirAll(filepath.Join(root, "chunks"), 0o755); err != nil {
		return nil, err
	}
	return &Dir{root: root}, nil
}

// Root returns the store's root directory.
func (d *Dir) Root() string { return d.root }

// Path returns the file that holds id.
func (d *Dir) Path(id ID) string {
	h := id.String()
	return filepath.Join(d.root, "chunks", h[:2], h+".zst")
}

// Has reports whether the chunk's file exists.
func (d *Dir) Has(_ context.Context, id ID) (bool, error) {
	_, err := os.Stat(d.Path(id))
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// ReadStored returns the stored bytes of id, unverified.
func (d *Dir) ReadStored(id ID) ([]byte, error) {
	b, err := os.ReadFile(d.Path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("chunk %s: %w", id.Short(), ErrNotFound)
	}
	return b, err
}

// Get reads and verifies id.
func (d *Dir) Get(ctx context.Context, id ID) (Chunk, error) {
	return d.get(ctx, id, -1)
}

func (d *Dir) get(_ context.Context, id ID, size int) (Chunk, error) {
	b, err := d.ReadStored(id)
	if err != nil {
		return Chunk{}, err
	}
	return Verify(id, b, size)
}

// Put writes c's stored bytes unless the file exists.
func (d *Dir) Put(ctx context.Context, c Chunk) (bool, error) {
	if c.IsZero() {
		return false, errors.New("put: empty chunk")
	}
	if c.stored == nil {
		var err error
		if c, err = Encode(c.plain, LevelDefault); err != nil {
			return false, err
		}
	}
	p := d.Path(c.id)
	if _, err := os.Stat(p); err == nil {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return false, err
	}
	if err := writeTempRename(p, c.stored, 0o444, d.SyncEach); err != nil {
		return false, err
	}
	if d.SyncEach {
		return true, SyncDir(filepath.Dir(p))
	}
	d.mu.Lock()
	d.dirty = true
	d.mu.Unlock()
	return true, nil
}

// Remove deletes the chunk's file (absent is not an error).
func (d *Dir) Remove(id ID) error {
	err := os.Remove(d.Path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// Flush makes every Put so far durable: one syncfs(2) on the store's file
// system, which covers the files and the renames that named them.
func (d *Dir) Flush(_ context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.dirty {
		return nil
	}
	f, err := os.Open(d.root)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", d.root, err)
	}
	d.dirty = false
	return nil
}

// Close flushes.
func (d *Dir) Close() error { return d.Flush(context.Background()) }

// WalkFiles calls fn for every chunk file, in no particular order. Files
// whose names are not chunk IDs are passed with ok false.
func (d *Dir) WalkFiles(fn func(id ID, path string, ok bool) error) error {
	return filepath.WalkDir(filepath.Join(d.root, "chunks"), func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		name := e.Name()
		if len(name) == 68 && filepath.Ext(name) == ".zst" {
			if id, err := ParseID(name[:64]); err == nil {
				return fn(id, path, true)
			}
		}
		return fn(ID{}, path, false)
	})
}
