package delta

import (
	"errors"
	"fmt"
	"io"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
)

// ErrDigestMismatch: the assembled content does not hash to the manifest's
// digest.
var ErrDigestMismatch = errors.New("content digest mismatch")

// CheckDigest compares a digest computed over r (chunkstore.Digest, or
// Assembler.Digest while writing) with m.Digest. On a mismatch it re-checks
// every extent of r to name the first bad one.
func CheckDigest(r io.ReaderAt, m *manifest.Manifest, got chunkstore.ID) error {
	if got == m.Digest {
		return nil
	}
	detail := ""
	buf := make([]byte, m.Chunker.MaxSize)
	m.Walk(func(off, size int64, c int) bool {
		if c < 0 {
			return true // zero runs are checked by the digest only
		}
		b := buf[:size]
		if _, err := r.ReadAt(b, off); err != nil || chunkstore.Sum(b) != m.Chunks[c].ID {
			detail = fmt.Sprintf(": first bad chunk at offset %d (%d bytes)", off, size)
			return false
		}
		return true
	})
	return fmt.Errorf("%w: got %s, want %s%s", ErrDigestMismatch, got.Short(), m.Digest.Short(), detail)
}
