package chunkstore

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
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

	exts, err := Split(ctx, r, size, p, workers)
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
		wg       sync.WaitGroup
		once     sync.Once
		first    error
		pool     = sync.Pool{New: func() any { b := make([]byte, p.MaxSize); return &b }}
	)
	fail := func(err error) { once.Do(func() { first = err; cancel() }) }
	jobs := make(chan int, workers*4)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				e := exts[i]
				res.Pieces[i] = Piece{Extent: e}
				if e.Zero {
					if opts.Progress != nil {
						opts.Progress(e.Size)
					}
					continue
				}
				bp := pool.Get().(*[]byte)
				buf := (*bp)[:e.Size]
				if k, err := r.ReadAt(buf, e.Offset); int64(k) != e.Size {
					pool.Put(bp)
					fail(fmt.Errorf("read at %d: %v", e.Offset, err))
					continue
				}
				if IsZeros(buf) {
					res.Pieces[i].Zero = true
					pool.Put(bp)
					if opts.Progress != nil {
						opts.Progress(e.Size)
					}
					continue
				}
				id := Sum(buf)
				res.Pieces[i].ID = id
				if _, busy := inflight.LoadOrStore(id, true); !busy {
					has, err := dst.Has(ctx, id)
					if err == nil && !has {
						var c Chunk
						c, err = Encode(buf, opts.Level)
						if err == nil {
							var ok bool
							ok, err = dst.Put(ctx, c)
							if ok {
								newN.Add(1)
								added.Add(int64(len(c.stored)))
							}
						}
					}
					if err != nil {
						fail(err)
					}
				}
				pool.Put(bp)
				if opts.Progress != nil {
					opts.Progress(e.Size)
				}
			}
		}()
	}
feed:
	for i := range exts {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	d := <-dch
	if first != nil {
		return nil, first
	}
	if d.err != nil {
		return nil, d.err
	}
	res.Digest = d.id
	res.NewChunks = int(newN.Load())
	res.StoredAdded = added.Load()
	return res, nil
}
