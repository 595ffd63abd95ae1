package chunkstore

import (
	"bytes"
	"encoding/binary"
	"flag"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"math/rand/v2"
	"sync"
	"testing"
	"unsafe"
)

// TreeDigest equals BLAKE3 (zeebo's Sum) for every size around chunk and
// block boundaries, with blocks supplied in random order from several
// goroutines, for random data and for zeros.
func TestTreeDigestEqualsSum(t *testing.T) {
	sizes := []int{0, 1, 1023, 1024, 1025, 2048, 16 << 10, TreeBlock - 1, TreeBlock, TreeBlock + 1,
		TreeBlock + 1024, 2 * TreeBlock, 2*TreeBlock + 5, 3*TreeBlock - 1024, 5*TreeBlock + 777}
	src := make([]byte, 5*TreeBlock+777)
	rand.NewChaCha8([32]byte{7}).Read(src)
	zeros := make([]byte, len(src))
	for _, data := range [][]byte{src, zeros} {
		for _, n := range sizes {
			content := data[:n]
			d := NewTreeDigest(int64(n))
			order := rand.Perm(d.Blocks())
			var wg sync.WaitGroup
			for _, i := range order {
				wg.Add(1)
				go func() {
					defer wg.Done()
					off, k := d.BlockRange(i)
					if err := d.Block(i, content[off:off+k]); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			got, err := d.Sum()
			if err != nil {
				t.Fatal(err)
			}
			if got != Sum(content) {
				t.Fatalf("size %d: tree digest differs from BLAKE3", n)
			}
		}
	}
	d := NewTreeDigest(3 * TreeBlock)
	d.Block(0, make([]byte, TreeBlock))
	if _, err := d.Sum(); err == nil {
		t.Fatal("sum with missing blocks")
	}
	if err := d.Block(1, make([]byte, 10)); err == nil {
		t.Fatal("short block accepted")
	}
}

var updateZeroTable = flag.Bool("update-zero-table", false, "regenerate zerocvs.bin")

// Every entry of the embedded zero-block table is the chaining value of a
// block of zeros at its position (16 GiB of zeros hashed on all cores, a
// few seconds); -update-zero-table writes the file anew.
func TestZeroTable(t *testing.T) {
	table := make([]byte, 32*ZeroTableBlocks)
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i := 0; i < ZeroTableBlocks; i++ {
		g.Go(func() error {
			cv := subtreeCV(zeroBlock, uint64(i)<<treeBlockHeight)
			for j, w := range cv {
				binary.LittleEndian.PutUint32(table[32*i+4*j:], w)
			}
			return nil
		})
	}
	g.Wait()
	if *updateZeroTable {
		if err := os.WriteFile("zerocvs.bin", table, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Skip("zerocvs.bin rewritten: run again to check the embedded copy")
	}
	if !bytes.Equal(table, zeroTable) {
		t.Fatal("zerocvs.bin differs from the computed zero-block chaining values")
	}
	// Through ZeroBlock: equal to hashing zeros. (Blocks past the table
	// go through subtreeCV like data blocks.)
	for _, n := range []int64{3*TreeBlock + 5, 4 * TreeBlock} {
		d := NewTreeDigest(n)
		for i := 0; i < d.Blocks(); i++ {
			if err := d.ZeroBlock(i); err != nil {
				t.Fatal(err)
			}
		}
		got, err := d.Sum()
		if err != nil {
			t.Fatal(err)
		}
		h := blake3.New()
		if _, err := io.CopyN(h, zeroReader{}, n); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:], h.Sum(nil)) {
			t.Fatalf("size %d: zero digest differs from BLAKE3", n)
		}
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// Both kernels give the same chaining value for subtrees of every size a
// digest uses and at several positions, and where AVX2 runs it is used.
func TestSubtreeKernels(t *testing.T) {
	data := make([]byte, TreeBlock)
	rand.NewChaCha8([32]byte{9}).Read(data)
	for _, n := range []int{16 << 10, 1 << 20, TreeBlock} {
		for _, counter := range []uint64{0, uint64(n / 1024), 3 << treeBlockHeight, 1 << 40} {
			want := subtreeCVGuts(data[:n], counter)
			got, ok := subtreeCVAVX2(data[:n], counter)
			if !ok {
				if haveAVX2 {
					t.Fatalf("%d bytes: AVX2 kernels not used", n)
				}
				continue
			}
			if got != want {
				t.Fatalf("%d bytes at chunk %d: kernels differ", n, counter)
			}
		}
	}
	if _, ok := subtreeCVAVX2(data[:24<<10], 0); ok {
		t.Fatal("AVX2 kernels took a subtree that is not a power of two")
	}
}

// go test -bench Subtree -cpu 1 ./chunkstore
func BenchmarkSubtree(b *testing.B) {
	data := make([]byte, TreeBlock)
	rand.NewChaCha8([32]byte{9}).Read(data)
	for _, k := range []struct {
		name string
		f    func([]byte, uint64) [8]uint32
	}{{"guts", subtreeCVGuts}, {"kernel", subtreeCV}} {
		b.Run(k.name, func(b *testing.B) {
			b.SetBytes(TreeBlock)
			for b.Loop() {
				k.f(data, 1<<treeBlockHeight)
			}
		})
	}
}

// MapBlock hashes a file's blocks through a mapping to the same digest as
// BLAKE3 of the file, for a file whose last block is short and one with a
// hole, and falls back to reading for a reader that is not a file.
func TestMapBlock(t *testing.T) {
	for _, n := range []int{100, TreeBlock, 2*TreeBlock + 4097, 3*TreeBlock - 1} {
		content := make([]byte, n)
		rand.NewChaCha8([32]byte{9}).Read(content)
		if n > 2*TreeBlock {
			clear(content[TreeBlock : 2*TreeBlock]) // a hole below
		}
		p := t.TempDir() + "/f"
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(int64(n)); err != nil {
			t.Fatal(err)
		}
		for off := 0; off < n; off += TreeBlock {
			end := min(off+TreeBlock, n)
			if !allZero(content[off:end]) {
				if _, err := f.WriteAt(content[off:end], int64(off)); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, r := range []io.ReaderAt{f, bytes.NewReader(content)} {
			var buf []byte
			d := NewTreeDigest(int64(n))
			for i := range d.Blocks() {
				off, k := d.BlockRange(i)
				if err := d.MapBlock(i, r, FindHolesIn(r, off, off+k), &buf); err != nil {
					t.Fatal(err)
				}
			}
			if got, _ := d.Sum(); got != Sum(content) {
				t.Fatalf("size %d, %T: mapped digest differs from BLAKE3", n, r)
			}
			if _, isFile := r.(*os.File); isFile && buf != nil {
				t.Fatalf("size %d: a block of the file was read, not mapped", n)
			}
		}
	}
}

// dataIn lists the data between holes in whole pages: a hole's partial
// pages stay data, a hole shorter than a page is no hole, and a hole
// reaching the end of the range ends it.
func TestHoleMapDataIn(t *testing.T) {
	const p = 4096
	for _, c := range []struct {
		holes HoleMap
		off   int64
		n     int64
		want  []span
	}{
		{nil, 0, 10 * p, nil},
		{HoleMap{{20 * p, p}}, 0, 10 * p, nil},                                                   // outside
		{HoleMap{{p + 1, p}}, 0, 10 * p, nil},                                                    // no whole page
		{HoleMap{{0, 2 * p}}, 0, 10 * p, []span{{2 * p, 8 * p}}},                                 // at the start
		{HoleMap{{3*p - 5, 2*p + 10}}, 0, 10 * p, []span{{0, 3 * p}, {5 * p, 5 * p}}},            // partial pages are data
		{HoleMap{{2 * p, p}, {5 * p, 100 * p}}, 0, 10*p + 7, []span{{0, 2 * p}, {3 * p, 2 * p}}}, // to the end
		{HoleMap{{0, 100 * p}}, 8 * p, 10 * p, []span{}},                                         // all holes
		{HoleMap{{10 * p, 3 * p}}, 8 * p, 10 * p, []span{{0, 2 * p}, {5 * p, 5 * p}}},            // relative to off
	} {
		got := c.holes.dataIn(c.off, c.n, p)
		if (got == nil) != (c.want == nil) || len(got) != len(c.want) {
			t.Fatalf("%v in [%d,+%d): got %v, want %v", c.holes, c.off, c.n, got, c.want)
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Fatalf("%v in [%d,+%d): got %v, want %v", c.holes, c.off, c.n, got, c.want)
			}
		}
	}
}

// A block that mixes data and holes is hashed right, and its holes are not
// brought into the page cache (they read as the kernel's zero page).
func TestMapBlockHoles(t *testing.T) {
	const p = 4096
	n := TreeBlock + 3*p + 100
	content := make([]byte, n)
	rand.NewChaCha8([32]byte{11}).Read(content)
	holes := []span{{0, 5 * p}, {7*p + 10, 40 * p}, {TreeBlock - 3*p, 3*p + 1}, {TreeBlock + 2*p, int64(n - TreeBlock - 2*p)}}
	for _, h := range holes {
		clear(content[h.off : h.off+h.n])
	}
	f, err := os.Create(t.TempDir() + "/f")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(n)); err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < int64(n); off += p {
		end := min(off+p, int64(n))
		if !allZero(content[off:end]) {
			if _, err := f.WriteAt(content[off:end], off); err != nil {
				t.Fatal(err)
			}
		}
	}
	hm := FindHoles(f, int64(n))
	if len(hm) < 3 {
		t.Skipf("the file system reports %d holes: needs SEEK_HOLE support", len(hm))
	}
	var buf []byte
	d := NewTreeDigest(int64(n))
	for i := range d.Blocks() {
		if err := d.MapBlock(i, f, hm, &buf); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := d.Sum(); got != Sum(content) {
		t.Fatal("digest of a block with holes differs from BLAKE3")
	}
	if buf != nil {
		t.Fatal("a block was read, not mapped")
	}
	m, err := unix.Mmap(int(f.Fd()), 0, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (n+p-1)/p)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(n), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	for pg := 8; pg < 47; pg++ { // whole pages of the second hole
		if vec[pg]&1 != 0 {
			t.Fatalf("page %d of a hole is in the page cache", pg)
		}
	}
}

// A mapped page the kernel cannot supply (here: the file was truncated
// after it was mapped) is an error from hashMapped, not a crash.
func TestMapBlockFault(t *testing.T) {
	p := t.TempDir() + "/f"
	content := make([]byte, 2*TreeBlock)
	rand.NewChaCha8([32]byte{10}).Read(content)
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, TreeBlock, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	if err := f.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	d := NewTreeDigest(2 * TreeBlock)
	err = hashMapped(d, 0, 0, m)
	if err == nil || !strings.Contains(err.Error(), "memory fault") {
		t.Fatalf("hashing a truncated mapping: %v", err)
	}
	if d.have[0] {
		t.Fatal("the block counts as hashed")
	}
}
