package chunkstore

import (
	"errors"
	"fmt"

	"github.com/restic/chunker"
)

// Algorithm numbers recorded in manifests. They never change meaning.
const (
	// ChunkerRabin is restic/chunker's Rabin fingerprint over a 64-byte
	// window, with zero extents split off first (see Params).
	ChunkerRabin uint8 = 1
)

// DefaultPolynomial is the fixed irreducible polynomial every imgctl
// publisher uses, so that every publisher cuts the same boundaries.
const DefaultPolynomial = 0x3DA3358B4DC173

// Params fixes how a stream is cut into chunks. Every field is recorded in
// the manifest: two publishers with equal Params cut equal chunks.
//
// A stream is first split into zero extents and data extents: the stream is
// seen as ZeroBlock-sized blocks aligned to offset 0, and every maximal run
// of all-zero blocks at least ZeroMin bytes long is a zero extent. The bytes
// between zero extents form data extents, and each data extent is cut by the
// Rabin chunker starting from a fresh state. A final partial block is always
// data. Boundaries are therefore a pure function of the content.
type Params struct {
	Algorithm  uint8  // ChunkerRabin
	Polynomial uint64 // restic/chunker polynomial, degree ≤ 53
	MinSize    uint32 // no cut before this many bytes (except at the end of a data extent)
	AvgBits    uint8  // cut when the low AvgBits bits of the fingerprint are zero
	MaxSize    uint32 // always cut at this size
	ZeroBlock  uint32 // block size for zero detection (power of two); 0 disables zero extents
	ZeroMin    uint32 // minimum zero extent length, a multiple of ZeroBlock
}

// DefaultParams are the parameters publish uses unless told otherwise:
// 8/32/128 KiB chunks and 64 KiB zero extents on 4 KiB blocks. The choice is
// explained in docs/decisions/0001-chunker-parameters.md.
func DefaultParams() Params {
	return Params{
		Algorithm:  ChunkerRabin,
		Polynomial: DefaultPolynomial,
		MinSize:    8 << 10,
		AvgBits:    15,
		MaxSize:    128 << 10,
		ZeroBlock:  4 << 10,
		ZeroMin:    64 << 10,
	}
}

// MaxChunkSize is the largest MaxSize any manifest may declare.
const MaxChunkSize = 16 << 20

// Validate reports whether p is usable.
func (p Params) Validate() error {
	if p.Algorithm != ChunkerRabin {
		return fmt.Errorf("chunker: unknown algorithm %d", p.Algorithm)
	}
	// Testing irreducibility costs ~1 ms, and every manifest decode
	// validates: the fixed polynomial is known to pass (TestDefaultParams).
	pol := chunker.Pol(p.Polynomial)
	if p.Polynomial != DefaultPolynomial && (pol.Deg() < 9 || pol.Deg() > 53 || !pol.Irreducible()) {
		return fmt.Errorf("chunker: polynomial %#x is not an irreducible polynomial of degree 9..53", p.Polynomial)
	}
	if p.MinSize < 64 || p.MaxSize < p.MinSize || p.MaxSize > MaxChunkSize {
		return fmt.Errorf("chunker: sizes min %d max %d out of range (64 ≤ min ≤ max ≤ %d)", p.MinSize, p.MaxSize, MaxChunkSize)
	}
	if p.AvgBits < 6 || p.AvgBits > 30 {
		return fmt.Errorf("chunker: average bits %d out of range 6..30", p.AvgBits)
	}
	if p.ZeroBlock != 0 {
		if p.ZeroBlock&(p.ZeroBlock-1) != 0 || p.ZeroBlock < 512 || p.ZeroBlock > 1<<20 {
			return fmt.Errorf("chunker: zero block %d is not a power of two in 512..1Mi", p.ZeroBlock)
		}
		if p.ZeroMin < p.ZeroBlock || p.ZeroMin%p.ZeroBlock != 0 {
			return fmt.Errorf("chunker: zero extent minimum %d is not a positive multiple of the zero block %d", p.ZeroMin, p.ZeroBlock)
		}
	} else if p.ZeroMin != 0 {
		return errors.New("chunker: zero extent minimum without a zero block")
	}
	return nil
}

// String is the human form, e.g. "rabin 8K/32K/128K zero≥64K/4K".
func (p Params) String() string {
	s := fmt.Sprintf("rabin pol=%#x %s/%s/%s", p.Polynomial, kib(int64(p.MinSize)), kib(int64(1)<<p.AvgBits), kib(int64(p.MaxSize)))
	if p.ZeroBlock != 0 {
		s += fmt.Sprintf(" zero≥%s/%s", kib(int64(p.ZeroMin)), kib(int64(p.ZeroBlock)))
	}
	return s
}

func kib(n int64) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%dK", n/1024)
	}
	return fmt.Sprint(n)
}
