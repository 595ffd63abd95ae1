package chunkstore

import (
	"context"
	"fmt"
	"hash"

	"errors"
	"io"
	lblake3 "lukechampine.com/blake3"
	"sort"

	"golang.org/x/sys/unix"
)

// NewDigest returns a BLAKE3-256 hasher for whole images. Writes of at
// least DigestBlock bytes are hashed on all cores (lukechampine.com/blake3
// splits them into subtrees); the result is plain BLAKE3, equal to Sum's
// for the same bytes. Chunk IDs use Sum (zeebo/blake3): chunks are small.
func NewDigest() hash.Hash { return lblake3.New(32, nil) }

// DigestBlock is the write size at which NewDigest uses every core.
const DigestBlock = 8 << 20

// Digest returns BLAKE3 of the first size bytes of r, reading nothing
// where the file system reports a hole (a hole reads as zeros). progress,
// if set, is called with byte counts.
func Digest(ctx context.Context, r io.ReaderAt, size int64, progress func(int64)) (ID, error) {
	holes := FindHoles(r, size)
	h := NewDigest()
	buf := make([]byte, DigestBlock)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return ID{}, err
		}
		n := min(int64(len(buf)), size-off)
		if err := holes.ReadAt(r, buf[:n], off); err != nil {
			return ID{}, fmt.Errorf("read at %d: %w", off, err)
		}
		h.Write(buf[:n])
		off += n
		if progress != nil {
			progress(n)
		}
	}
	var id ID
	h.Sum(id[:0])
	return id, nil
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
