package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// target is the file or block device a pull writes into.
type target struct {
	*os.File
	fd      int
	regular bool
	fresh   bool // created or empty: reads as zeros everywhere
	wmu     sync.Mutex
	dirty   atomic.Int64
	kick    chan struct{}
	done    chan struct{}
}

// writebackEvery is how many written bytes start asynchronous writeback,
// so that the final fsync has little left to wait for.
const writebackEvery = 32 << 20

// WriteAt writes and, every writebackEvery bytes, asks a background
// goroutine to start writeback of dirty pages (sync_file_range without
// waiting), so that writers never block on submitting I/O.
//
// The writes go one at a time, each a raw pwrite (pwriteRaw): the kernel
// takes the file's lock for every buffered write anyway, and a write of
// up to a few MiB into the page cache takes a few hundred µs, long enough
// for the Go runtime to hand the writer's P to another thread and make it
// wait for one on return. decisions/0007 has the measurements.
func (t *target) WriteAt(p []byte, off int64) (int, error) {
	t.wmu.Lock()
	n, err := pwriteRaw(t.fd, p, off)
	t.wmu.Unlock()
	if err != nil {
		err = &fs.PathError{Op: "write", Path: t.Name(), Err: err}
	}
	if t.dirty.Add(int64(n)) >= writebackEvery {
		t.dirty.Store(0)
		select {
		case t.kick <- struct{}{}:
		default: // writeback already requested
		}
	}
	return n, err
}

// pwriteRaw writes all of p at off with pwrite(2) as a raw system call:
// the calling goroutine keeps its P meanwhile, and the scheduler does not
// hand it to another thread. Only for writes that land in the page cache
// (they block only when the kernel throttles a writer with too many dirty
// pages), one at a time.
func pwriteRaw(fd int, p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		r, _, e := unix.RawSyscall6(unix.SYS_PWRITE64, uintptr(fd), uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n), uintptr(off+int64(n)), 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e != 0:
			return n, e
		case r == 0:
			return n, io.ErrShortWrite
		}
		n += int(r)
	}
	return n, nil
}

func (t *target) writeback() {
	defer close(t.done)
	for range t.kick {
		_ = unix.SyncFileRange(t.fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
}

// Close stops the writeback goroutine and closes the file.
func (t *target) Close() error {
	close(t.kick)
	<-t.done
	return t.File.Close()
}

// openTarget opens path for in-place writing and sizes it: a regular file is
// created or truncated to size; a block device must be at least size bytes.
func openTarget(path string, size int64) (*target, error) {
	st, err := os.Stat(path)
	fresh := errors.Is(err, fs.ErrNotExist) || (err == nil && st.Mode().IsRegular() && st.Size() == 0)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	t := &target{File: f, fd: int(f.Fd()), fresh: fresh, kick: make(chan struct{}, 1), done: make(chan struct{})}
	st, err = f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	switch {
	case st.Mode().IsRegular():
		t.regular = true
		if st.Size() != size {
			if err := f.Truncate(size); err != nil {
				f.Close()
				return nil, fmt.Errorf("size %s to %d bytes: %w", path, size, err)
			}
		}
	case st.Mode()&fs.ModeDevice != 0:
		n, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, err
		}
		if n < size {
			f.Close()
			return nil, fmt.Errorf("%s holds %d bytes, the release needs %d", path, n, size)
		}
	default:
		f.Close()
		return nil, fmt.Errorf("%s is neither a regular file nor a block device", path)
	}
	go t.writeback()
	return t, nil
}

// blkZeroOut is BLKZEROOUT, _IO(0x12, 127): zero a byte range of a block
// device in the kernel (WRITE_ZEROES where the device has it).
const blkZeroOut = 0x127f

// Zero makes [off, off+n) read as zeros without writing them: a punched
// hole in a regular file, BLKZEROOUT on a block device. Where neither works
// it returns errors.ErrUnsupported and the assembler writes zeros.
func (t *target) Zero(off, n int64) error {
	if t.regular {
		err := unix.Fallocate(t.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if err == nil {
			return nil
		}
	} else if off%512 == 0 && n%512 == 0 {
		r := [2]uint64{uint64(off), uint64(n)}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(t.fd), blkZeroOut, uintptr(unsafe.Pointer(&r[0]))); errno == 0 {
			return nil
		}
	}
	return errors.ErrUnsupported
}

// imageSize returns the size of a regular file or block device.
func imageSize(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if st.Mode().IsRegular() {
		return st.Size(), nil
	}
	if st.Mode()&fs.ModeDevice != 0 {
		return f.Seek(0, io.SeekEnd)
	}
	return 0, fmt.Errorf("%s is neither a regular file nor a block device", f.Name())
}

// phases times the steps of a command (phases_ms in --json): each call of
// done charges the time since the previous one to name.
type phases struct {
	now  func() time.Time
	mark time.Time
	ms   map[string]int64
}

func newPhases(now func() time.Time) *phases {
	return &phases{now: now, mark: now(), ms: map[string]int64{}}
}

func (p *phases) done(name string) {
	t := p.now()
	p.ms[name] += t.Sub(p.mark).Milliseconds()
	p.mark = t
}
