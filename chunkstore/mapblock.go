package chunkstore

import (
	"fmt"
	"io"
	"runtime/debug"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MapBlock is ReadBlock for a file that holds block i in its page cache
// (the block was just written): the block is hashed where the page cache
// holds it, through a read-only mapping, instead of being copied into buf
// first. On a slot write that copy was ~5 % of the CPU. If r is not a
// file or the mapping fails, it is ReadBlock into *buf, which is made
// (TreeBlock bytes) the first time it is needed.
//
// Holes inside the block (holes) are not mapped from the file: faulting
// them in makes the kernel allocate and zero a page-cache page for every
// page of a hole (~5 % of the CPU of a slot write into a sparse file, whose
// blocks mix chunks and zero runs). They are read from an anonymous
// mapping instead, which the kernel backs with its shared zero page; the
// file's data is mapped over it (mapLayout).
//
// A page the kernel cannot supply (an I/O error, a file truncated meanwhile)
// is an error, not a crash: the hashing goroutine panics on the fault
// (debug.SetPanicOnFault) and the panic is recovered here. The hashing runs
// on this goroutine (subtreeCV), which that needs.
func (d *TreeDigest) MapBlock(i int, r io.ReaderAt, holes HoleMap, buf *[]byte) error {
	off, n := d.BlockRange(i)
	read := func() error {
		if *buf == nil {
			*buf = make([]byte, TreeBlock)
		}
		return d.ReadBlock(i, r, holes, *buf)
	}
	if holes.Covers(off, n) {
		return d.ZeroBlock(i)
	}
	f, ok := r.(interface{ Fd() uintptr })
	if !ok || n == 0 {
		return read()
	}
	m, unmap, err := mapLayout(int(f.Fd()), off, n, holes.dataIn(off, n, mapPage))
	if err != nil {
		return read()
	}
	defer unmap()
	return hashMapped(d, i, off, m)
}

// mapPage is the granularity of mappings.
var mapPage = int64(unix.Getpagesize())

// maxDataRanges bounds the mappings made for one block: a block with more
// data ranges than this is mapped whole, its holes included.
const maxDataRanges = 64

// mapLayout maps n bytes of file fd at off read-only, where data lists the
// ranges (relative to off, page-aligned starts) to map from the file; the
// rest reads as zeros from an anonymous mapping. Without data ranges given
// (nil) the whole range is mapped from the file.
func mapLayout(fd int, off, n int64, data []span) (m []byte, unmap func(), err error) {
	if data == nil || len(data) > maxDataRanges {
		m, err := unix.Mmap(fd, off, int(n), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return nil, nil, err
		}
		return m, func() { unix.Munmap(m) }, nil
	}
	base, err := unix.MmapPtr(-1, 0, nil, uintptr(n), unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, nil, err
	}
	unmap = func() { unix.MunmapPtr(base, uintptr(n)) }
	for _, s := range data {
		at := unsafe.Add(base, s.off)
		if _, err := unix.MmapPtr(fd, off+s.off, at, uintptr(s.n), unix.PROT_READ,
			unix.MAP_SHARED|unix.MAP_FIXED|unix.MAP_POPULATE); err != nil {
			unmap()
			return nil, nil, err
		}
	}
	return unsafe.Slice((*byte)(base), n), unmap, nil
}

func hashMapped(d *TreeDigest, i int, off int64, m []byte) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			e, ok := p.(interface{ Addr() uintptr })
			if !ok {
				panic(p)
			}
			err = fmt.Errorf("read at %d: memory fault at %#x in the mapped block (an I/O error, or the file was truncated)", off, e.Addr())
		}
	}()
	return d.Block(i, m)
}
