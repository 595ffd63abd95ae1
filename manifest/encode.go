package manifest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/imgctl/imgctl/chunkstore"
)

// Limits the decoder enforces, so that hostile input cannot make it
// allocate without bound.
const (
	MaxPayload   = 64 << 20 // bytes of an encoded payload
	maxString    = 4096
	maxHints     = 256
	maxExts      = 64
	maxRunCount  = 1 << 40
	maxNameBytes = 128
)

type encoder struct{ b []byte }

func (e *encoder) u8(v uint8)       { e.b = append(e.b, v) }
func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) bytes(p []byte)   { e.uvarint(uint64(len(p))); e.b = append(e.b, p...) }
func (e *encoder) str(s string)     { e.bytes([]byte(s)) }

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// Encode returns the canonical payload encoding of m. Two manifests with the
// same content encode to the same bytes. It fails if m is not valid.
func Encode(m *Manifest) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	e := &encoder{b: make([]byte, 0, 256+len(m.Chunks)*36+len(m.Runs)*6)}
	e.uvarint(FormatVersion)
	e.u8(uint8(m.Kind))
	e.str(m.Name)
	e.str(m.Channel)
	e.uvarint(m.Revision)
	e.varint(unixOrZero(m.Created))
	e.varint(unixOrZero(m.Expires))
	p := m.Chunker
	e.u8(p.Algorithm)
	e.uvarint(p.Polynomial)
	e.uvarint(uint64(p.MinSize))
	e.u8(p.AvgBits)
	e.uvarint(uint64(p.MaxSize))
	e.uvarint(uint64(p.ZeroBlock))
	e.uvarint(uint64(p.ZeroMin))
	e.u8(m.Compression)
	e.uvarint(uint64(m.Size))
	e.b = append(e.b, m.Digest[:]...)
	e.uvarint(uint64(len(m.Chunks)))
	for _, c := range m.Chunks {
		e.b = append(e.b, c.ID[:]...)
		e.uvarint(uint64(c.Size))
	}
	e.uvarint(uint64(len(m.Runs)))
	for _, r := range m.Runs {
		e.u8(uint8(r.Kind))
		switch r.Kind {
		case RunChunks:
			e.uvarint(uint64(r.Count))
		case RunRepeat:
			e.uvarint(uint64(r.Chunk))
			e.uvarint(uint64(r.Count))
		case RunZero:
			e.uvarint(uint64(r.Size))
		}
	}
	keys := make([]string, 0, len(m.Hints))
	for k := range m.Hints {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	e.uvarint(uint64(len(keys)))
	for _, k := range keys {
		e.str(k)
		e.str(m.Hints[k])
	}
	tags := make([]uint64, 0, len(m.Ext))
	for t := range m.Ext {
		tags = append(tags, t)
	}
	sort.Slice(tags, func(i, j int) bool { return tags[i] < tags[j] })
	e.uvarint(uint64(len(tags)))
	for _, t := range tags {
		e.uvarint(t)
		e.bytes(m.Ext[t])
	}
	if len(e.b) > MaxPayload {
		return nil, fmt.Errorf("manifest: encoded size %d exceeds %d", len(e.b), MaxPayload)
	}
	return e.b, nil
}

// ValidName reports whether s is a valid release name or channel:
// 1-128 bytes of [a-z0-9._-], starting with a letter or digit.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > maxNameBytes {
		return false
	}
	for i, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// Validate checks the invariants that Encode relies on and Decode enforces.
func (m *Manifest) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("manifest: "+f, a...) }
	if m.Kind != KindImage && m.Kind != KindBundle {
		return bad("unknown kind %d", m.Kind)
	}
	if !ValidName(m.Name) {
		return bad("invalid name %q", m.Name)
	}
	if !ValidName(m.Channel) {
		return bad("invalid channel %q", m.Channel)
	}
	if m.Revision == 0 {
		return bad("revision must be ≥ 1")
	}
	if err := m.Chunker.Validate(); err != nil {
		return bad("%v", err)
	}
	if m.Compression != CompressionZstd {
		return bad("unknown compression %d", m.Compression)
	}
	if m.Size < 0 {
		return bad("negative size")
	}
	seen := make(map[chunkstore.ID]struct{}, len(m.Chunks))
	for i, c := range m.Chunks {
		if c.Size == 0 || c.Size > m.Chunker.MaxSize {
			return bad("chunk %d: size %d out of range 1..%d", i, c.Size, m.Chunker.MaxSize)
		}
		if _, dup := seen[c.ID]; dup {
			return bad("chunk %d: duplicate id %s", i, c.ID.Short())
		}
		seen[c.ID] = struct{}{}
	}
	introduced := 0
	var off int64
	for i, r := range m.Runs {
		if r.Offset != off {
			return bad("run %d: offset %d, want %d", i, r.Offset, off)
		}
		var prev *Run
		if i > 0 {
			prev = &m.Runs[i-1]
		}
		switch r.Kind {
		case RunChunks:
			if r.Count < 1 || r.Chunk != introduced || introduced+r.Count > len(m.Chunks) {
				return bad("run %d: chunk run %d+%d does not continue at %d of %d", i, r.Chunk, r.Count, introduced, len(m.Chunks))
			}
			if prev != nil && prev.Kind == RunChunks {
				return bad("run %d: adjacent chunk runs", i)
			}
			var sz int64
			for k := r.Chunk; k < r.Chunk+r.Count; k++ {
				sz += int64(m.Chunks[k].Size)
			}
			if sz != r.Size {
				return bad("run %d: size %d, want %d", i, r.Size, sz)
			}
			introduced += r.Count
		case RunRepeat:
			if r.Count < 1 || r.Count > maxRunCount || r.Chunk < 0 || r.Chunk >= introduced {
				return bad("run %d: repeat of chunk %d ×%d out of range", i, r.Chunk, r.Count)
			}
			if prev != nil && prev.Kind == RunRepeat && prev.Chunk == r.Chunk {
				return bad("run %d: adjacent repeats of one chunk", i)
			}
			sz := int64(m.Chunks[r.Chunk].Size)
			if r.Size/sz != int64(r.Count) || r.Size%sz != 0 {
				return bad("run %d: size %d, want %d×%d", i, r.Size, r.Count, sz)
			}
		case RunZero:
			if r.Size < 1 || r.Count != 0 {
				return bad("run %d: empty zero run", i)
			}
			if prev != nil && prev.Kind == RunZero {
				return bad("run %d: adjacent zero runs", i)
			}
		default:
			return bad("run %d: unknown kind %d", i, r.Kind)
		}
		if r.Size > math.MaxInt64-off {
			return bad("run %d: size overflows", i)
		}
		off += r.Size
	}
	if introduced != len(m.Chunks) {
		return bad("%d chunks never appear in the layout", len(m.Chunks)-introduced)
	}
	if off != m.Size {
		return bad("layout covers %d bytes, size is %d", off, m.Size)
	}
	if len(m.Hints) > maxHints {
		return bad("too many hints")
	}
	for k, v := range m.Hints {
		if k == "" || len(k) > maxString || len(v) > maxString || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return bad("invalid hint %q", k)
		}
	}
	if len(m.Ext) > maxExts {
		return bad("too many extensions")
	}
	for t := range m.Ext {
		if t%2 == 1 && !knownCritical[t] {
			return bad("unknown critical extension %d", t)
		}
	}
	_, hasFiles := m.Ext[ExtFileTable]
	switch {
	case m.Kind == KindBundle:
		if _, err := m.FileTable(); err != nil {
			return err
		}
	case hasFiles:
		return bad("an image with a file table")
	}
	return nil
}

var errShort = errors.New("truncated")
