package delta

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"github.com/zeebo/blake3"
)

// ErrDigestMismatch: the assembled content does not hash to the manifest's
// digest.
var ErrDigestMismatch = errors.New("content digest mismatch")

// VerifyDigest reads m.Size bytes of r and checks them against m.Digest.
// On a mismatch it re-checks every extent to name the first bad one.
func VerifyDigest(ctx context.Context, r io.ReaderAt, m *manifest.Manifest, prog Progress) error {
	if prog == nil {
		prog = noProgress{}
	}
	prog.Start(m.Size)
	defer prog.Done()
	got, err := Digest(ctx, r, m.Size, prog)
	if err != nil {
		return err
	}
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

// Digest returns BLAKE3 of the first size bytes of r.
func Digest(ctx context.Context, r io.ReaderAt, size int64, prog Progress) (chunkstore.ID, error) {
	if prog == nil {
		prog = noProgress{}
	}
	h := blake3.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return chunkstore.ID{}, err
		}
		n := min(int64(len(buf)), size-off)
		k, err := r.ReadAt(buf[:n], off)
		if int64(k) < n {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return chunkstore.ID{}, fmt.Errorf("read at %d: %w", off, err)
		}
		h.Write(buf[:n])
		off += n
		prog.Add(n)
	}
	var id chunkstore.ID
	h.Sum(id[:0])
	return id, nil
}
