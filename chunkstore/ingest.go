package chunkstore

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// Piece is one extent of ingested content with its chunk ID (zero for a
// zero extent).
type Piece struct {
	Extent
	ID ID
}

// IngestOptions configure Ingest. The zero value is usable.
type IngestOptions struct {
	Workers  int   // 0 means GOMAXPROCS
	Level    Level // compression effort for chunks the store lacks
	Progress func(n int64)
	// Segments are offsets where the content is cut as if a new stream
	// began there (SplitSegments): the files of a bundle.
	Segments []int64
}

// IngestResult describes ingested content.
type IngestResult struct {
	Pieces      []Piece // in content order
	Digest      ID      // BLAKE3 of the whole content
	NewChunks   int     // chunks the store did not hold
	StoredAdded int64   // stored bytes written for them
}

// Ingest splits the size bytes of r under p, stores every chunk dst lacks
// and returns the pieces and the whole-content digest. Chunks that are all
// zeros become zero extents. Work runs on several cores: cut finding
// (Split), then hashing and compression by a worker pool, while one more
// goroutine computes the whole-content digest. The caller flushes dst.
func Ingest(ctx context.Context, r io.ReaderAt, size int64, p Params, dst interface {
	Haver
	Putter
}, opts IngestOptions) (*IngestResult, error) {
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Whole-content digest, concurrently.
	type digestResult struct {
		id  ID
		err error
	}
	dch := make(chan digestResult, 1)
	go func() {
		id, err := Digest(ctx, r, size, nil)
		dch <- digestResult{id: id, err: err}
	}()

	exts, err := SplitSegments(ctx, r, size, p, workers, opts.Segments)
	if err != nil {
		cancel()
		<-dch
		return nil, err
	}
	res := &IngestResult{Pieces: make([]Piece, len(exts))}
	var (
		inflight sync.Map
		newN     atomic.Int64
		added    atomic.Int64
		pool     = sync.Pool{New: func() any { b := make([]byte, p.MaxSize); return &b }}
	)
	progress := func(n int64) {
		if opts.Progress != nil {
			opts.Progress(n)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for i, e := range exts {
		res.Pieces[i] = Piece{Extent: e}
		if e.Zero {
			progress(e.Size)
			continue
		}
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			defer progress(e.Size)
			bp := pool.Get().(*[]byte)
			defer pool.Put(bp)
			buf := (*bp)[:e.Size]
			if k, err := r.ReadAt(buf, e.Offset); int64(k) != e.Size {
				return fmt.Errorf("read at %d: %v", e.Offset, err)
			}
			if IsZeros(buf) {
				res.Pieces[i].Zero = true
				return nil
			}
			id := Sum(buf)
			res.Pieces[i].ID = id
			if _, busy := inflight.LoadOrStore(id, true); busy {
				return nil // another worker stores it
			}
			if has, err := dst.Has(gctx, id); err != nil || has {
				return err
			}
			c, err := Encode(buf, opts.Level)
			if err != nil {
				return err
			}
			ok, err := dst.Put(gctx, c)
			if ok {
				newN.Add(1)
				added.Add(int64(len(c.stored)))
			}
			return err
		})
	}
	werr := g.Wait()
	if werr != nil {
		cancel()
	}
	d := <-dch
	if werr != nil {
		return nil, werr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if d.err != nil {
		return nil, d.err
	}
	res.Digest = d.id
	res.NewChunks = int(newN.Load())
	res.StoredAdded = added.Load()
	return res, nil
}
