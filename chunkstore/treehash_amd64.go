package chunkstore

import (
	_ "unsafe" // go:linkname

	_ "github.com/zeebo/blake3" // links the kernels named below
	"golang.org/x/sys/cpu"
	"lukechampine.com/blake3/guts"
)

// zeebo/blake3 hashes 8 BLAKE3 chunks at once with AVX2, 1.9× as fast on
// this project's machines as lukechampine's AVX-512 path (3.3 against 1.75
// GB/s on one core, `go test -bench Subtree ./chunkstore`), but it keeps
// its kernels in an internal package with no API for chaining values. The
// two declarations below name them (the module version is pinned in
// go.mod); TestTreeDigestEqualsSum and TestSubtreeKernels check every
// use against zeebo's Sum and lukechampine's tree.

// hashF writes the chaining values of the 8 chunks of input (length bytes,
// the first chunk's counter), transposed: word w of chunk i at out[i+8w].
//
//go:linkname hashF github.com/zeebo/blake3/internal/alg/hash/hash_avx2.HashF
//go:noescape
func hashF(input *[8192]byte, length, counter uint64, flags uint32, key *[8]uint32, out *[64]uint32, chain *[8]uint32)

// hashP writes the parents of left[i] and right[i], i < n, transposed.
//
//go:linkname hashP github.com/zeebo/blake3/internal/alg/hash/hash_avx2.HashP
//go:noescape
func hashP(left, right *[64]uint32, flags uint32, key *[8]uint32, out *[64]uint32, n int)

var haveAVX2 = cpu.X86.HasAVX2

const flagParent = 1 << 2

// subtreeCVAVX2 is subtreeCV with zeebo's kernels; ok is false where they
// cannot run. len(data) is 8 KiB times a power of two.
func subtreeCVAVX2(data []byte, counter uint64) (cv [8]uint32, ok bool) {
	if n := len(data) / 8192; !haveAVX2 || n == 0 || n&(n-1) != 0 || len(data)%8192 != 0 {
		return cv, false
	}
	// Eight chunks' chaining values per group, transposed; each round
	// pairs neighbours (even CVs on the left, odd on the right) into half
	// as many groups.
	groups := make([][64]uint32, len(data)/8192)
	var chain [8]uint32
	for j := range groups {
		hashF((*[8192]byte)(data[j*8192:]), 8192, counter+uint64(j*8), 0, &guts.IV, &groups[j], &chain)
	}
	var l, r [64]uint32
	for len(groups) > 1 {
		for k := range len(groups) / 2 {
			g0, g1 := &groups[2*k], &groups[2*k+1]
			for w := 0; w < 64; w += 8 {
				for i := range 4 {
					l[w+i], r[w+i] = g0[w+2*i], g0[w+2*i+1]
					l[w+4+i], r[w+4+i] = g1[w+2*i], g1[w+2*i+1]
				}
			}
			hashP(&l, &r, flagParent, &guts.IV, &groups[k], 8)
		}
		groups = groups[:len(groups)/2]
	}
	var cvs [8][8]uint32
	for i := range cvs {
		for w := range 8 {
			cvs[i][w] = groups[0][i+8*w]
		}
	}
	for n := 8; n > 1; n /= 2 {
		for j := range n / 2 {
			cvs[j] = guts.ChainingValue(guts.ParentNode(cvs[2*j], cvs[2*j+1], &guts.IV, 0))
		}
	}
	return cvs[0], true
}
