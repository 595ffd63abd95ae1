//go:build !amd64

package chunkstore

const haveAVX2 = false

// subtreeCVAVX2 has no kernels outside amd64.
func subtreeCVAVX2([]byte, uint64) ([8]uint32, bool) { return [8]uint32{}, false }
