package main

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// The target's raw writes land where they are asked, from many goroutines
// at once, and fail with the system's error and the file's name.
func TestTargetWriteAt(t *testing.T) {
	const size = 8 << 20
	p := filepath.Join(t.TempDir(), "out")
	out, err := openTarget(p, size)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	rand.NewChaCha8([32]byte{3}).Read(want)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := g * 4096; off < size; off += 4 * 4096 {
				end := min(off+4096-g*7, size) // pieces of varying length, and gaps
				if n, err := out.WriteAt(want[off:end], int64(off)); n != end-off || err != nil {
					t.Errorf("write at %d: %d, %v", off, n, err)
				}
			}
		}()
	}
	wg.Wait()
	if n, err := out.WriteAt(nil, 5); n != 0 || err != nil {
		t.Fatalf("empty write: %d, %v", n, err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < size; off += 4096 {
		g := off / 4096 % 4
		end := min(off+4096-g*7, size)
		if !bytes.Equal(got[off:end], want[off:end]) || !bytes.Equal(got[end:off+4096], make([]byte, off+4096-end)) {
			t.Fatalf("bytes at %d differ", off)
		}
	}

	ro, err := os.Open(p) // a descriptor not open for writing
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	bad := &target{File: ro, fd: int(ro.Fd())}
	_, err = bad.WriteAt([]byte("x"), 0)
	var pe *os.PathError
	if !errors.As(err, &pe) || pe.Path != p || !errors.Is(err, syscall.EBADF) {
		t.Fatalf("write to a read-only descriptor: %v", err)
	}
}
