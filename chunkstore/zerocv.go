package chunkstore

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"sync"
)

// Every TreeBlock of zeros at block index i has one BLAKE3 chaining value,
// a pure function of i (the chunk counter is the only input that varies),
// yet computing it costs as much as hashing 8 MiB of data. Disk images are
// mostly zeros (the bench's 1 GiB image: 812 MB), so the whole-image check
// spent most of its time re-deriving these constants. zerocvs.bin holds
// them for the first ZeroTableBlocks blocks (16 GiB of content), generated
// by `go test ./chunkstore -run TestZeroTable -update-zero-table` and checked
// entry by entry against subtreeCV by TestZeroTable; blocks past the table
// are computed once per process and remembered.
//
//go:embed zerocvs.bin
var zeroTable []byte

// ZeroTableBlocks is how many leading blocks zerocvs.bin covers.
const ZeroTableBlocks = 2048

var (
	zeroMu    sync.Mutex
	zeroExtra = map[int][8]uint32{}
	zeroBlock = make([]byte, TreeBlock) // read-only
)

// zeroCV returns the chaining value of the all-zero block i (i is not the
// final block of its content).
func zeroCV(i int) [8]uint32 {
	var cv [8]uint32
	if i < ZeroTableBlocks && len(zeroTable) == 32*ZeroTableBlocks {
		for j := range cv {
			cv[j] = binary.LittleEndian.Uint32(zeroTable[32*i+4*j:])
		}
		return cv
	}
	zeroMu.Lock()
	cv, ok := zeroExtra[i]
	zeroMu.Unlock()
	if ok {
		return cv
	}
	cv = subtreeCV(zeroBlock, uint64(i)<<treeBlockHeight)
	zeroMu.Lock()
	zeroExtra[i] = cv
	zeroMu.Unlock()
	return cv
}

// allZero reports whether p holds only zero bytes; it stops at the first
// 64 KiB window that does not (data blocks cost next to nothing).
func allZero(p []byte) bool {
	const w = 64 << 10
	for len(p) > 0 {
		n := min(w, len(p))
		if !bytes.Equal(p[:n], zeroBlock[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
