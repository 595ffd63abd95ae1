package chunkstore

import (
	"math/rand/v2"
	"sync"
	"testing"
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
