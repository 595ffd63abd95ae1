package chunkstore

import (
	"errors"
	"io"
	"sort"

	"golang.org/x/sys/unix"
)

// span is a byte range [off, off+n).
type span struct{ off, n int64 }

// holeMap lists the ranges of r that the file system reports as holes
// (SEEK_HOLE/SEEK_DATA). A hole reads as zeros by definition, so scanning
// and hashing can take zeros for it without reading. Readers that are not
// files, and file systems without hole support, give an empty map: every
// byte is then read.
type holeMap []span

func findHoles(r io.ReaderAt, size int64) holeMap {
	f, ok := r.(interface{ Fd() uintptr })
	if !ok || size == 0 {
		return nil
	}
	fd := int(f.Fd())
	var holes holeMap
	for off := int64(0); off < size; {
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

// covers reports whether [off, off+n) lies entirely inside one hole.
func (h holeMap) covers(off, n int64) bool {
	i := sort.Search(len(h), func(i int) bool { return h[i].off+h[i].n > off })
	return i < len(h) && h[i].off <= off && off+n <= h[i].off+h[i].n
}

// readAt fills p from r at off, taking zeros where a hole covers the range.
func (h holeMap) readAt(r io.ReaderAt, p []byte, off int64) error {
	if h.covers(off, int64(len(p))) {
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
