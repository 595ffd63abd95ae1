package transport

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"golang.org/x/sync/errgroup"
)

// DirSource reads manifests and chunks straight from a store directory: a
// store on a USB stick, an NFS mount, or a local origin. It needs no lock
// and verifies every chunk, exactly as the HTTP client does.
type DirSource struct {
	root     string
	rel      *manifest.Releases
	mu       sync.Mutex
	dir      *chunkstore.Dir // opened at the first chunk read (store)
	closed   bool
	received atomic.Int64
	// Workers read and verify chunks in parallel; 0 means GOMAXPROCS.
	Workers int
}

// OpenDirSource opens the store at root for reading. Its chunk index is
// read when the first chunk is: a pull that takes every chunk from its
// seeds and cache reads only a manifest from it (reading the index of
// the slot bench's store was ~8 ms before anything else could start).
func OpenDirSource(root string) (*DirSource, error) {
	if _, err := os.Stat(root); err != nil {
		return nil, err
	}
	return &DirSource{root: root, rel: manifest.OpenReleases(root)}, nil
}

// store returns the chunk store, opened (its index read) the first time.
func (s *DirSource) store() (*chunkstore.Dir, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("transport: store directory source is closed")
	}
	if s.dir == nil {
		d, err := chunkstore.OpenDir(s.root)
		if err != nil {
			return nil, err
		}
		s.dir = d
	}
	return s.dir, nil
}

// Close releases the store's open files.
func (s *DirSource) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.dir == nil {
		return nil
	}
	return s.dir.Close()
}

// Received returns the stored bytes read so far (manifests and chunks).
func (s *DirSource) Received() int64 { return s.received.Load() }

// Manifest returns the signed manifest of name/channel at rev (0: latest).
func (s *DirSource) Manifest(_ context.Context, name, channel string, rev uint64) ([]byte, error) {
	env, _, err := s.rel.Read(name, channel, rev)
	if err != nil {
		return nil, err
	}
	if len(env) > manifest.MaxEnvelope {
		return nil, &manifest.VerifyError{Err: manifest.ErrTooLarge, Detail: fmt.Sprintf("%d bytes", len(env))}
	}
	s.received.Add(int64(len(env)))
	return env, nil
}

// Fetch reads, verifies and hands on every chunk of refs (delta.Fetcher).
func (s *DirSource) Fetch(ctx context.Context, refs []manifest.ChunkRef, fn func(chunkstore.Chunk) error) error {
	return s.FetchBatches(ctx, refs, func() (func(chunkstore.Chunk) error, func() error) { return fn, nil })
}

// dirBatch is how many consecutive refs a DirSource worker takes at a time.
const dirBatch = 64

// FetchBatches is Fetch in batches of consecutive refs (delta.BatchFetcher;
// transport.Client.FetchBatches says how).
func (s *DirSource) FetchBatches(ctx context.Context, refs []manifest.ChunkRef, open func() (func(chunkstore.Chunk) error, func() error)) error {
	return s.FetchBatchesInto(ctx, refs, noInto(open))
}

// FetchBatchesInto is FetchBatches decoding into the receiver's buffers
// (delta.BatchInto; transport.Client.FetchBatchesInto says how).
func (s *DirSource) FetchBatchesInto(ctx context.Context, refs []manifest.ChunkRef, open func() (func(chunkstore.ID, int) []byte, func(chunkstore.Chunk) error, func() error)) error {
	if len(refs) == 0 {
		return nil
	}
	dir, err := s.store()
	if err != nil {
		return err
	}
	workers := s.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	// A fixed pool: a goroutine per chunk grew a stack per chunk.
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range min(workers, max(len(refs), 1)) {
		g.Go(func() error {
			for {
				k := int(next.Add(dirBatch)) - dirBatch
				if k >= len(refs) || gctx.Err() != nil {
					return nil
				}
				err := inBatch(open, func(fn sink) error { return s.batch(dir, refs[k:min(k+dirBatch, len(refs))], fn) })
				if err != nil {
					return err
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

func (s *DirSource) batch(dir *chunkstore.Dir, refs []manifest.ChunkRef, fn sink) error {
	for _, r := range refs {
		b, _, err := dir.ReadStored(r.ID)
		if err != nil {
			return fmt.Errorf("chunk %s: %w", r.ID.Short(), err)
		}
		s.received.Add(int64(len(b)))
		c, err := fn.verify(r, b)
		if err != nil {
			return err
		}
		if err := fn.put(c); err != nil {
			return err
		}
	}
	return nil
}
