package chunkstore

import (
	"context"
	"runtime"
	"sync"

	"errors"
	"golang.org/x/sync/errgroup"
	"io"
	"sort"

	"golang.org/x/sys/unix"
)

// Digest returns BLAKE3 of the first size bytes of r, reading nothing
// where the file system reports a hole (a hole reads as zeros), hashing
// TreeBlock-sized blocks on all cores. progress, if set, is called with
// byte counts.
func Digest(ctx context.Context, r io.ReaderAt, size int64, progress func(int64)) (ID, error) {
	holes := FindHoles(r, size)
	d := NewTreeDigest(size)
	pool := sync.Pool{New: func() any { b := make([]byte, TreeBlock); return &b }}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i := 0; i < d.Blocks(); i++ {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			bp := pool.Get().(*[]byte)
			defer pool.Put(bp)
			if err := d.ReadBlock(i, r, holes, *bp); err != nil {
				return err
			}
			if progress != nil {
				_, n := d.BlockRange(i)
				progress(n)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return ID{}, err
	}
	if err := ctx.Err(); err != nil {
		return ID{}, err
	}
	return d.Sum()
}

// span is a byte range [off, off+n).
type span struct{ off, n int64 }

// HoleMap lists the ranges of r that the file system reports as holes
// (SEEK_HOLE/SEEK_DATA). A hole reads as zeros by definition, so scanning
// and hashing can take zeros for it without reading. Readers that are not
// files, and file systems without hole support, give an empty map: every
// byte is then read.
type HoleMap []span

func FindHoles(r io.ReaderAt, size int64) HoleMap { return FindHolesIn(r, 0, size) }

// FindHolesIn is FindHoles for [from, size). The map is a snapshot: use it
// only for ranges nothing writes to any more.
func FindHolesIn(r io.ReaderAt, from, size int64) HoleMap {
	f, ok := r.(interface{ Fd() uintptr })
	if !ok || size <= from {
		return nil
	}
	fd := int(f.Fd())
	var holes HoleMap
	for off := from; off < size; {
		h, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil || h >= size {
			break
		}
		d, err := unix.Seek(fd, h, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) { // hole to the end
			d = size
		} else if err != nil {
			return nil
		}
		d = min(d, size)
		if d > h {
			holes = append(holes, span{h, d - h})
		}
		off = d
	}
	return holes
}

// dataIn returns the ranges of [off, off+n) outside holes, relative to
// off, each widened to start and end on a multiple of page (or at n), and
// merged where they touch; nil when no hole of at least a page lies
// inside (the whole range is data).
func (h HoleMap) dataIn(off, n, page int64) []span {
	var data []span
	at, holed := int64(0), false // at: start of the data range not yet closed
	for _, s := range h {
		a, b := max(s.off-off, 0), min(s.off+s.n-off, n)
		if b <= a {
			continue
		}
		a = (a + page - 1) / page * page // the hole's whole pages
		if b < n {
			b = b / page * page
		}
		if b <= a {
			continue
		}
		if a > at {
			data = append(data, span{at, a - at})
		}
		at, holed = b, true
	}
	if !holed {
		return nil
	}
	if at < n {
		data = append(data, span{at, n - at})
	}
	if data == nil {
		data = []span{} // all holes
	}
	return data
}

// Covers reports whether [off, off+n) lies entirely inside one hole.
func (h HoleMap) Covers(off, n int64) bool {
	i := sort.Search(len(h), func(i int) bool { return h[i].off+h[i].n > off })
	return i < len(h) && h[i].off <= off && off+n <= h[i].off+h[i].n
}

// ReadAt fills p from r at off, taking zeros where a hole covers the range.
func (h HoleMap) ReadAt(r io.ReaderAt, p []byte, off int64) error {
	if h.Covers(off, int64(len(p))) {
		clear(p)
		return nil
	}
	k, err := r.ReadAt(p, off)
	if k < len(p) {
		if err == nil || errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}
