package chunkstore

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/restic/chunker"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// splitmix64 is a fixed generator, so golden inputs never depend on a
// library's random number algorithms.
type splitmix64 uint64

func (s *splitmix64) next() uint64 {
	*s += 0x9E3779B97F4A7C15
	z := uint64(*s)
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

func (s *splitmix64) intn(n int) int { return int(s.next() % uint64(n)) }

// testImage builds deterministic content that looks like a file system
// image: random and text-like data, aligned zero runs long and short,
// unaligned zeros, a repeated pattern, and an odd tail.
func testImage(seed uint64, size int) []byte {
	r := splitmix64(seed)
	b := make([]byte, size)
	for off := 0; off < size; {
		n := 4096 * (1 + r.intn(64))
		end := min(off+n, size)
		switch r.intn(5) {
		case 0: // zeros, aligned (often ≥ 64 KiB)
		case 1: // text-ish
			for i := off; i < end; i++ {
				b[i] = "etaoin shrdlu\n"[r.intn(14)]
			}
		case 2: // a repeated pattern
			for i := off; i < end; i++ {
				b[i] = 0xA5
			}
		default:
			for i := off; i < end; i += 8 {
				v := r.next()
				for k := 0; k < 8 && i+k < end; k++ {
					b[i+k] = byte(v >> (8 * k))
				}
			}
		}
		off = end
	}
	// Some short and unaligned zero runs inside data.
	for k := 0; k < 20; k++ {
		at := r.intn(size - 10000)
		clear(b[at : at+100+r.intn(9000)])
	}
	return b
}

func formatExtents(exts []Extent, data []byte) string {
	var sb strings.Builder
	for _, e := range exts {
		if e.Zero {
			fmt.Fprintf(&sb, "%d %d zero\n", e.Offset, e.Size)
			continue
		}
		fmt.Fprintf(&sb, "%d %d %s\n", e.Offset, e.Size, Sum(data[e.Offset:e.Offset+e.Size]))
	}
	return sb.String()
}

// TestSplitGolden pins boundaries and IDs of a fixed input under the
// default parameters. If this fails, deduplication against every release
// already deployed breaks: do not update the golden file unless the format
// version changes.
func TestSplitGolden(t *testing.T) {
	data := testImage(1, 6<<20+1234)
	exts, err := Split(context.Background(), bytes.NewReader(data), int64(len(data)), DefaultParams(), 2)
	if err != nil {
		t.Fatal(err)
	}
	got := formatExtents(exts, data)
	path := filepath.Join("testdata", "split-default.golden")
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestSplitGolden -update once)", err)
	}
	if got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := range min(len(gl), len(wl)) {
			if gl[i] != wl[i] {
				t.Fatalf("boundaries changed at extent %d:\n got  %s\n want %s", i, gl[i], wl[i])
			}
		}
		t.Fatalf("boundaries changed: %d extents, want %d", len(gl), len(wl))
	}
	// Sanity on the golden content itself.
	zero, chunks := 0, 0
	sc := bufio.NewScanner(strings.NewReader(got))
	for sc.Scan() {
		if strings.HasSuffix(sc.Text(), "zero") {
			zero++
		} else {
			chunks++
		}
	}
	if zero < 5 || chunks < 50 {
		t.Fatalf("golden input is not representative: %d zero extents, %d chunks", zero, chunks)
	}
}

func checkCover(t *testing.T, exts []Extent, data []byte, p Params) {
	t.Helper()
	var off int64
	for i, e := range exts {
		if e.Offset != off || e.Size <= 0 {
			t.Fatalf("extent %d: %+v, expected offset %d", i, e, off)
		}
		if e.Zero {
			if !IsZeros(data[e.Offset : e.Offset+e.Size]) {
				t.Fatalf("zero extent %d holds data", i)
			}
			if e.Offset%int64(p.ZeroBlock) != 0 || e.Size < int64(p.ZeroMin) || e.Size%int64(p.ZeroBlock) != 0 {
				t.Fatalf("zero extent %d misaligned or short: %+v", i, e)
			}
			if i > 0 && exts[i-1].Zero {
				t.Fatalf("adjacent zero extents at %d", i)
			}
		} else if e.Size > int64(p.MaxSize) {
			t.Fatalf("chunk %d larger than max: %d", i, e.Size)
		}
		off += e.Size
	}
	if off != int64(len(data)) {
		t.Fatalf("extents cover %d of %d bytes", off, len(data))
	}
}

// Parallel cutting with resynchronisation must give exactly the sequential
// result, for any section size and worker count.
func TestSplitParallelEqualsSequential(t *testing.T) {
	defer func(s int64) { sectionSize = s }(sectionSize)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"image-like", testImage(2, 9<<20+77)},
		{"dense", func() []byte {
			b := make([]byte, 7<<20+5)
			rand.NewChaCha8([32]byte{3}).Read(b)
			return b
		}()},
		{"short", []byte("tiny")},
		{"empty", nil},
		{"all-zero", make([]byte, 3<<20+100)},
	} {
		p := DefaultParams()
		sectionSize = 1 << 40 // one section per extent: the sequential chain
		want, err := Split(ctx, bytes.NewReader(tc.data), int64(len(tc.data)), p, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkCover(t, want, tc.data, p)
		for _, sec := range []int64{64 << 10, 300 << 10, 1 << 20} {
			for _, w := range []int{1, 2, 5} {
				sectionSize = sec
				got, err := Split(ctx, bytes.NewReader(tc.data), int64(len(tc.data)), p, w)
				if err != nil {
					t.Fatal(err)
				}
				if formatExtents(got, tc.data) != formatExtents(want, tc.data) {
					t.Fatalf("%s: section %d workers %d: boundaries differ from sequential", tc.name, sec, w)
				}
			}
		}
	}
}

func TestSplitZeroExtents(t *testing.T) {
	p := DefaultParams()
	data := make([]byte, 1<<20)
	fill := func(from, to int) {
		for i := from; i < to; i++ {
			data[i] = byte(i%251 + 1)
		}
	}
	fill(0, 10000)         // data, then zeros from 10000: first aligned zero block at 12288
	fill(200<<10, 210<<10) // zeros 12288..200K = 188K → a zero extent
	fill(240<<10, 1<<20-1) // zeros 210K..240K = 30K < 64K → stays data
	exts, err := Split(context.Background(), bytes.NewReader(data), int64(len(data)), p, 2)
	if err != nil {
		t.Fatal(err)
	}
	checkCover(t, exts, data, p)
	var zeros []Extent
	for _, e := range exts {
		if e.Zero {
			zeros = append(zeros, e)
		}
	}
	if len(zeros) != 1 || zeros[0].Offset != 12288 || zeros[0].Size != 200<<10-12288 {
		t.Fatalf("zero extents %+v, want one at 12288 of %d", zeros, 200<<10-12288)
	}
	// The same content with a zero extent moved: chunks after it are cut
	// the same (fresh state per data extent).
}

func TestSplitRejectsBadParams(t *testing.T) {
	p := DefaultParams()
	p.Polynomial = 4 // not irreducible of a usable degree
	if _, err := Split(context.Background(), bytes.NewReader(nil), 0, p, 1); err == nil {
		t.Fatal("bad polynomial accepted")
	}
	p.Polynomial = DefaultPolynomial ^ 1<<40 // reducible (has the factor x+1), degree 53
	if err := p.Validate(); err == nil {
		t.Fatal("reducible polynomial accepted")
	}
	// Validate takes the fixed polynomial without testing it; it is
	// irreducible.
	if pol := chunker.Pol(DefaultPolynomial); pol.Deg() != 53 || !pol.Irreducible() {
		t.Fatal("the default polynomial is not irreducible of degree 53")
	}
	p = DefaultParams()
	p.ZeroMin = 1000
	if err := p.Validate(); err == nil {
		t.Fatal("zero minimum not a multiple of the block accepted")
	}
}

func TestSplitShortInput(t *testing.T) {
	data := testImage(4, 1<<20)
	_, err := Split(context.Background(), bytes.NewReader(data[:1000]), int64(len(data)), DefaultParams(), 2)
	if err == nil {
		t.Fatal("split of a short reader succeeded")
	}
}

func TestSplitCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	data := testImage(5, 4<<20)
	if _, err := Split(ctx, bytes.NewReader(data), int64(len(data)), DefaultParams(), 2); err == nil {
		t.Fatal("cancelled split succeeded")
	}
}

// Digest (tree-parallel, hole-aware) is plain BLAKE3: equal to Sum over the
// same bytes, across block boundaries and odd sizes, with and without holes.
func TestDigestEqualsSum(t *testing.T) {
	for _, n := range []int{0, 1, 1023, 1024, 1025, TreeBlock - 1, TreeBlock, TreeBlock + 4097, 19<<20 + 5} {
		data := testImage(uint64(n)+9, max(n, 20000))[:n]
		got, err := Digest(context.Background(), bytes.NewReader(data), int64(n), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got != Sum(data) {
			t.Fatalf("size %d: Digest differs from Sum", n)
		}
	}
	// A sparse file: holes are not read but hashed as zeros.
	f, err := os.CreateTemp(t.TempDir(), "sparse")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, 40<<20)
	copy(data[17<<20:], "hello")
	f.Truncate(int64(len(data)))
	f.WriteAt([]byte("hello"), 17<<20)
	got, err := Digest(context.Background(), f, int64(len(data)), nil)
	if err != nil || got != Sum(data) {
		t.Fatalf("sparse file digest wrong: %v", err)
	}
}

// A segment is cut as if it were a stream of its own, wherever it lies:
// SplitSegments over concatenated parts equals Split of each part, shifted.
func TestSplitSegmentsEqualsParts(t *testing.T) {
	ctx := context.Background()
	p := DefaultParams()
	parts := [][]byte{
		testImage(5, 3<<20+1234), // zero extents at unaligned content offsets
		[]byte("small"),
		nil,
		testImage(6, 200<<10+3),
		make([]byte, 70<<10), // all zeros
	}
	var all []byte
	var starts []int64
	var want []Extent
	for _, b := range parts {
		exts, err := Split(ctx, bytes.NewReader(b), int64(len(b)), p, 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range exts {
			e.Offset += int64(len(all))
			want = append(want, e)
		}
		starts = append(starts, int64(len(all)))
		all = append(all, b...)
	}
	for _, w := range []int{1, 3} {
		got, err := SplitSegments(ctx, bytes.NewReader(all), int64(len(all)), p, w, starts)
		if err != nil {
			t.Fatal(err)
		}
		if formatExtents(got, all) != formatExtents(want, all) {
			t.Fatalf("workers %d: segments are not cut like separate streams", w)
		}
	}
	// Without segments the same bytes are cut differently (the test can fail).
	got, _ := Split(ctx, bytes.NewReader(all), int64(len(all)), p, 1)
	if formatExtents(got, all) == formatExtents(want, all) {
		t.Fatal("segments made no difference: the test data does not exercise them")
	}
}
