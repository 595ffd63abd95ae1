package zdeflate

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"
)

// inputs are the golden test inputs, made by a seeded generator so the test
// carries no data files. Each exercises a different path of the encoder.
var inputs = []struct {
	name string
	gen  func() []byte
}{
	{"empty", func() []byte { return nil }},
	{"one byte", func() []byte { return []byte{'x'} }},
	// Incompressible: stored blocks, the window slides.
	{"random 200 KB", func() []byte { return randomBytes(200_000, 1) }},
	// Dynamic blocks, long hash chains, lazy matches, far matches.
	{"words 1 MB", func() []byte { return words(1_000_000, 2) }},
	// Maximal matches: a block of 16383 symbols spans megabytes, so its
	// start leaves the window (no stored block possible).
	{"zeros 5 MB then text", func() []byte { return append(make([]byte, 5<<20), words(50_000, 3)...) }},
	// Copies of earlier spans near and beyond the window, lightly
	// changed: the case where levels differ (chain, nice and lazy lengths).
	{"copies 1 MB", func() []byte { return copies(1_000_000, 4) }},
	// A mix of the above in short runs.
	{"mixed 600 KB", func() []byte {
		var b []byte
		for i := 0; len(b) < 600_000; i++ {
			switch i % 3 {
			case 0:
				b = append(b, randomBytes(3000, uint64(i))...)
			case 1:
				b = append(b, words(20_000, uint64(i))...)
			default:
				b = append(b, bytes.Repeat([]byte{byte(i)}, 1000+i)...)
			}
		}
		return b
	}},
}

// golden holds the SHA-256 and length of what zlib 1.2.13 (Python's
// zlib.compressobj(level, DEFLATED, -15, 8)) writes for each input.
var golden = map[string]map[int]string{
	"empty":                {9: "9b4fb24edd6d1d8830e272398263cdbf026b97392cc35387b991dc0248a628f9", 6: "9b4fb24edd6d1d8830e272398263cdbf026b97392cc35387b991dc0248a628f9"},
	"one byte":             {9: "f5b976feaac71fd875e2850ce8a0f229ad2fe83beab9d1284fe2a75f1e172a56", 6: "f5b976feaac71fd875e2850ce8a0f229ad2fe83beab9d1284fe2a75f1e172a56"},
	"random 200 KB":        {9: "b431077dd8a36539bf4fe5fb5fb25dd5738355077732529b952611196ec09a00", 6: "b431077dd8a36539bf4fe5fb5fb25dd5738355077732529b952611196ec09a00"},
	"words 1 MB":           {9: "94a5078c084f668a111c66e0505fa19a9b8aa2d7149169cb2347f7f5dde9e3ec", 6: "94a5078c084f668a111c66e0505fa19a9b8aa2d7149169cb2347f7f5dde9e3ec"},
	"zeros 5 MB then text": {9: "6203020118ea1545ed21085242fdc1e53c0717a06b5eed77ceedae0df7415ef9", 6: "6203020118ea1545ed21085242fdc1e53c0717a06b5eed77ceedae0df7415ef9"},
	"copies 1 MB":          {9: "1dabec60dd1d8795c266ab1ed8e4f582ab6f8b0830533b1bc5f6b4579de5cd70", 6: "ae6e909255c4e755435719064953d141acf4121e22217473e4d328bcb6a3f65c"},
	"mixed 600 KB":         {9: "a6d398cea364f9001fba9712b19bde4719d6dfd4509f400255bc19d8c97f0d00", 6: "a6d398cea364f9001fba9712b19bde4719d6dfd4509f400255bc19d8c97f0d00"},
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// words is text of n bytes from a small vocabulary.
func words(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	vocab := make([]string, 700)
	for i := range vocab {
		w := make([]byte, 1+r.IntN(9))
		for j := range w {
			w[j] = "etaoinshrdlucmfwypvbgkqjxz"[r.IntN(26)]
		}
		vocab[i] = string(w)
	}
	var b strings.Builder
	for b.Len() < n {
		b.WriteString(vocab[r.IntN(len(vocab))])
		if r.IntN(12) == 0 {
			b.WriteString(".\n")
		} else {
			b.WriteByte(' ')
		}
	}
	return []byte(b.String()[:n])
}

// copies is text in which most spans repeat an earlier one, up to 64 KiB
// back (half of them out of reach of a 32 KiB window), with small edits.
func copies(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	b := words(4096, seed)
	for len(b) < n {
		if r.IntN(4) == 0 {
			b = append(b, words(1+r.IntN(200), r.Uint64())...)
			continue
		}
		l := 3 + r.IntN(400)
		from := max(0, len(b)-1-r.IntN(64<<10))
		span := append([]byte(nil), b[from:min(from+l, len(b))]...)
		if len(span) > 0 && r.IntN(2) == 0 {
			span[r.IntN(len(span))] ^= 0x20
		}
		b = append(b, span...)
	}
	return b[:n]
}

func digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestMatchesZlib(t *testing.T) {
	for _, in := range inputs {
		src := in.gen()
		for _, level := range []int{9, 6} {
			out, err := Deflate(nil, src, level)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := digest(out), golden[in.name][level]; got != want {
				t.Errorf("%s, level %d: %d bytes, SHA-256 %s; zlib's is %s", in.name, level, len(out), got, want)
			}
			back, err := io.ReadAll(flate.NewReader(bytes.NewReader(out)))
			if err != nil || !bytes.Equal(back, src) {
				t.Errorf("%s, level %d: does not inflate to the input (%v)", in.name, level, err)
			}
		}
	}
}

// TestMatchesGzip checks the case the package is for: DeflateGzip writes
// what `gzip -N -n` (GNU gzip, which wrote Debian's changelogs and manual
// pages) does, and Deflate does too for inputs that fit one zlib block.
func TestMatchesGzip(t *testing.T) {
	if _, err := exec.LookPath("gzip"); err != nil {
		t.Skip("needs the gzip command (Debian package gzip)")
	}
	for seed, n := range []int{100, 1500, 9000, 18000, 100_000, 400_000} {
		for _, level := range []int{9, 6} {
			src := copies(n, uint64(seed))
			cmd := exec.Command("gzip", fmt.Sprintf("-%dn", level))
			cmd.Stdin = bytes.NewReader(src)
			gz, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			if len(gz) < 18 || gz[3] != 0 {
				t.Fatalf("gzip wrote an unexpected header % x", gz[:min(len(gz), 10)])
			}
			want := gz[10 : len(gz)-8]
			out, _ := DeflateGzip(nil, src, level)
			if !bytes.Equal(out, want) {
				t.Errorf("%d bytes, level %d: %d bytes, gzip wrote %d", n, level, len(out), len(want))
			}
			if z, _ := Deflate(nil, src, level); n <= 9000 && !bytes.Equal(z, want) {
				t.Errorf("%d bytes, level %d: zlib's encoding differs from gzip's for one block", n, level)
			}
		}
	}
}

func TestLevels(t *testing.T) {
	for _, level := range []int{-1, 0, 3, 10} {
		if _, err := Deflate(nil, []byte("x"), level); err == nil {
			t.Errorf("level %d accepted", level)
		}
		if _, err := DeflateGzip(nil, []byte("x"), level); err == nil {
			t.Errorf("level %d accepted for gzip", level)
		}
	}
}

func BenchmarkDeflate9Text(b *testing.B) {
	src := words(1<<20, 7)
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		Deflate(nil, src, 9)
	}
}
