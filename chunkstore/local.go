package chunkstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterr "go.etcd.io/bbolt/errors"
)

// Options configure Open. The zero value is usable.
type Options struct {
	// Timeout is how long Open waits for another process's lock on the
	// index before failing with ErrLocked. Zero means 10 seconds.
	Timeout time.Duration
	// ReadOnly opens the index shared and refuses writes.
	ReadOnly bool
	// SyncEach fsyncs every chunk file on Put instead of once per batch.
	SyncEach bool
	// BatchSize is how many Puts are committed to the index at once (after
	// one syncfs). Zero means 256.
	BatchSize int
}

var (
	bucketChunks = []byte("chunks")
	bucketMeta   = []byte("meta")
)

// Local is a chunk store on a local file system: chunk files (see Dir) plus
// a bbolt index at <root>/index.db holding every chunk's sizes and small
// metadata records. The index is the truth for Has: a file that is not
// indexed (left by a crash before Flush) is rewritten by the next Put.
//
// Only one process may hold a Local open for writing; Open waits up to
// Options.Timeout and then fails with ErrLocked. Servers read through Dir,
// which needs no lock.
type Local struct {
	*Dir
	db    *bolt.DB
	opts  Options
	quar  string
	mu    sync.Mutex // guards pending
	cmu   sync.Mutex // serialises commits
	pend  map[ID]Info
	close sync.Once
}

var _ WriteStore = (*Local)(nil)

// Open opens or creates the store at root.
func Open(root string, opts Options) (*Local, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 256
	}
	d, err := OpenDir(root)
	if err != nil {
		return nil, err
	}
	d.SyncEach = opts.SyncEach
	db, err := bolt.Open(filepath.Join(root, "index.db"), 0o644, &bolt.Options{Timeout: opts.Timeout, ReadOnly: opts.ReadOnly})
	if err != nil {
		if errors.Is(err, bolterr.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w (waited %s)", root, ErrLocked, opts.Timeout)
		}
		return nil, fmt.Errorf("open index %s: %w", root, err)
	}
	if !opts.ReadOnly {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketChunks, bucketMeta} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			db.Close()
			return nil, err
		}
	}
	return &Local{Dir: d, db: db, opts: opts, pend: map[ID]Info{}, quar: filepath.Join(root, "quarantine")}, nil
}

func encodeInfo(i Info) []byte {
	var b [8]byte
	binary.BigEndian.PutUint32(b[:4], i.Size)
	binary.BigEndian.PutUint32(b[4:], i.Stored)
	return b[:]
}

func decodeInfo(id ID, v []byte) (Info, bool) {
	if len(v) != 8 {
		return Info{}, false
	}
	return Info{ID: id, Size: binary.BigEndian.Uint32(v[:4]), Stored: binary.BigEndian.Uint32(v[4:])}, true
}

// Stat returns the index record of id, or ErrNotFound.
func (s *Local) Stat(_ context.Context, id ID) (Info, error) {
	s.mu.Lock()
	if i, ok := s.pend[id]; ok {
		s.mu.Unlock()
		return i, nil
	}
	s.mu.Unlock()
	var info Info
	found := false
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks)
		if b == nil {
			return nil
		}
		info, found = decodeInfo(id, b.Get(id[:]))
		return nil
	})
	if err != nil {
		return Info{}, err
	}
	if !found {
		return Info{}, fmt.Errorf("chunk %s: %w", id.Short(), ErrNotFound)
	}
	return info, nil
}

// Has reports whether the index (or the unflushed batch) holds id.
func (s *Local) Has(ctx context.Context, id ID) (bool, error) {
	_, err := s.Stat(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Get reads and verifies id. A chunk whose file is missing or corrupt is
// dropped from the index (the file is moved to <root>/quarantine), so that a
// later Put repairs it; the error wraps ErrNotFound or ErrCorrupt.
func (s *Local) Get(ctx context.Context, id ID) (Chunk, error) {
	info, err := s.Stat(ctx, id)
	if err != nil {
		return Chunk{}, err
	}
	c, err := s.Dir.get(ctx, id, int(info.Size))
	if err != nil && !s.opts.ReadOnly && (errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNotFound)) {
		s.quarantine(id)
	}
	return c, err
}

func (s *Local) quarantine(id ID) {
	s.mu.Lock()
	delete(s.pend, id)
	s.mu.Unlock()
	_ = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketChunks).Delete(id[:]) })
	if os.MkdirAll(s.quar, 0o755) == nil {
		_ = os.Rename(s.Path(id), filepath.Join(s.quar, id.String()+".zst"))
	}
}

// Put stores c unless the index already holds it.
func (s *Local) Put(ctx context.Context, c Chunk) (bool, error) {
	if s.opts.ReadOnly {
		return false, errors.New("put: store opened read-only")
	}
	if c.IsZero() {
		return false, errors.New("put: empty chunk")
	}
	if ok, err := s.Has(ctx, c.id); err != nil || ok {
		return false, err
	}
	if c.stored == nil {
		var err error
		if c, err = Encode(c.plain, LevelDefault); err != nil {
			return false, err
		}
	}
	p := s.Path(c.id)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return false, err
	}
	// Always write: an unindexed file may be a torn leftover of a crash.
	if err := writeTempRename(p, c.stored, 0o444, s.opts.SyncEach); err != nil {
		return false, err
	}
	s.Dir.mu.Lock()
	s.Dir.dirty = true
	s.Dir.mu.Unlock()
	s.mu.Lock()
	s.pend[c.id] = Info{ID: c.id, Size: uint32(len(c.plain)), Stored: uint32(len(c.stored))}
	full := len(s.pend) >= s.opts.BatchSize
	s.mu.Unlock()
	if full {
		if err := s.Flush(ctx); err != nil {
			return true, err
		}
	}
	return true, nil
}

// Flush makes all Puts durable (one syncfs) and then records them in the
// index, in that order, so the index never names a chunk that a crash could
// take back.
func (s *Local) Flush(ctx context.Context) error {
	if s.opts.ReadOnly {
		return nil
	}
	s.cmu.Lock()
	defer s.cmu.Unlock()
	s.mu.Lock()
	batch := make([]Info, 0, len(s.pend))
	for _, i := range s.pend {
		batch = append(batch, i)
	}
	s.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	if err := s.Dir.Flush(ctx); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks)
		for _, i := range batch {
			if err := b.Put(i.ID[:], encodeInfo(i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("index commit: %w", err)
	}
	s.mu.Lock()
	for _, i := range batch {
		delete(s.pend, i.ID)
	}
	s.mu.Unlock()
	return nil
}

// Close flushes and closes the index. It is safe to call more than once.
func (s *Local) Close() error {
	var err error
	s.close.Do(func() {
		err = s.Flush(context.Background())
		if cerr := s.db.Close(); err == nil {
			err = cerr
		}
	})
	return err
}

// Walk calls fn for every indexed chunk, in ID order. fn must not call
// other methods of s.
func (s *Local) Walk(fn func(Info) error) error {
	if err := s.Flush(context.Background()); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var id ID
			copy(id[:], k)
			info, ok := decodeInfo(id, v)
			if !ok || len(k) != len(id) {
				return fmt.Errorf("index: bad record for key %x", k)
			}
			return fn(info)
		})
	})
}

// Delete removes chunks from the index and then their files.
func (s *Local) Delete(ids []ID) error {
	if err := s.Flush(context.Background()); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks)
		for _, id := range ids {
			if err := b.Delete(id[:]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := s.Remove(id); err != nil {
			return err
		}
	}
	return nil
}

// Unindex drops index records without touching files (fsck repair).
func (s *Local) Unindex(ids []ID) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks)
		for _, id := range ids {
			if err := b.Delete(id[:]); err != nil {
				return err
			}
		}
		return nil
	})
}

// GetMeta returns the metadata record key, or nil.
func (s *Local) GetMeta(key string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta); b != nil {
			if v := b.Get([]byte(key)); v != nil {
				out = append([]byte(nil), v...)
			}
		}
		return nil
	})
	return out, err
}

// PutMeta stores a metadata record durably (bbolt fsyncs its commit). A nil
// value deletes the record. Pending chunks are flushed first, so a record
// never refers to chunks a crash could lose.
func (s *Local) PutMeta(key string, value []byte) error {
	if err := s.Flush(context.Background()); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if value == nil {
			return b.Delete([]byte(key))
		}
		return b.Put([]byte(key), value)
	})
}

// MetaPrefix calls fn for every metadata record whose key starts with prefix.
func (s *Local) MetaPrefix(prefix string, fn func(key string, value []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && len(k) >= len(p) && string(k[:len(p)]) == prefix; k, v = c.Next() {
			if err := fn(string(k), v); err != nil {
				return err
			}
		}
		return nil
	})
}
