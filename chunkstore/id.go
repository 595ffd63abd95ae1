package chunkstore

import (
	"encoding/hex"
	"fmt"
	"io"

	"github.com/zeebo/blake3"
)

// ID names a chunk: the BLAKE3-256 digest of its uncompressed bytes.
// IDs are values; the zero ID is never the ID of real data.
type ID [32]byte

// Sum returns the ID of plain.
func Sum(plain []byte) ID { return ID(blake3.Sum256(plain)) }

// SumReader returns the BLAKE3 of everything r yields, and its length.
func SumReader(r io.Reader) (ID, int64, error) {
	h := blake3.New()
	n, err := io.Copy(h, r)
	var id ID
	copy(id[:], h.Sum(nil))
	return id, n, err
}

// ParseID parses the 64-character lower- or upper-case hex form of an ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*len(id) {
		return id, fmt.Errorf("chunk id %q: want %d hex characters, got %d", s, 2*len(id), len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("chunk id %q: %w", s, err)
	}
	return id, nil
}

// String returns the full hex form.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 12 hex characters, for humans.
func (id ID) Short() string { return hex.EncodeToString(id[:6]) }

// IsZero reports whether id is the zero value.
func (id ID) IsZero() bool { return id == ID{} }

// MarshalText implements encoding.TextMarshaler (hex).
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (hex).
func (id *ID) UnmarshalText(b []byte) error {
	p, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}
