package delta

import (
	"context"
	"io"

	"github.com/imgctl/imgctl/chunkstore"
)

// IndexSeed finds chunks in content whose layout is not known, by cutting
// it with the target's chunker parameters (as casync does). Only extents
// whose size is in want are hashed, so the cost is one cut pass plus the
// hashing of plausible candidates. The result is belief like any seed
// index: the assembler re-hashes what it reads.
func IndexSeed(ctx context.Context, r io.ReaderAt, size int64, p chunkstore.Params, want map[uint32]bool, workers int) (SeedIndex, error) {
	exts, err := chunkstore.Split(ctx, r, size, p, workers)
	if err != nil {
		return nil, err
	}
	idx := SeedIndex{}
	buf := make([]byte, p.MaxSize)
	for i, e := range exts {
		if e.Zero || !want[uint32(e.Size)] {
			continue
		}
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		b := buf[:e.Size]
		if _, err := r.ReadAt(b, e.Offset); err != nil {
			return nil, err
		}
		id := chunkstore.Sum(b)
		if _, ok := idx[id]; !ok {
			idx[id] = e.Offset
		}
	}
	return idx, nil
}
