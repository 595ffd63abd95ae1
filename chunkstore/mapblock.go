package chunkstore

import (
	"fmt"
	"io"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// MapBlock is ReadBlock for a file that holds block i in its page cache
// (the block was just written): the block is hashed where the page cache
// holds it, through a read-only mapping, instead of being copied into buf
// first. On a slot write that copy was ~5 % of the CPU. If r is not a
// file or the mapping fails, it is ReadBlock into *buf, which is made
// (TreeBlock bytes) the first time it is needed.
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
	m, err := unix.Mmap(int(f.Fd()), off, int(n), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return read()
	}
	defer unix.Munmap(m)
	return hashMapped(d, i, off, m)
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
