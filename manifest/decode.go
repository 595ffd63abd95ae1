package manifest

import (
	"encoding/binary"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/imgctl/imgctl/chunkstore"
)

type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(f string, a ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("at byte %d: "+f, append([]any{d.off}, a...)...)
	}
}

func (d *decoder) u8() uint8 {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.b) {
		d.fail("%v", errShort)
		return 0
	}
	v := d.b[d.off]
	d.off++
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	if n != len(binary.AppendUvarint(nil, v)) {
		d.fail("non-minimal varint")
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	if n != len(binary.AppendVarint(nil, v)) {
		d.fail("non-minimal varint")
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) uint(max uint64, what string) uint64 {
	v := d.uvarint()
	if v > max {
		d.fail("%s %d exceeds %d", what, v, max)
		return 0
	}
	return v
}

func (d *decoder) raw(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b)-d.off < n {
		d.fail("%v", errShort)
		return nil
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	return p
}

func (d *decoder) bytes(max int) []byte {
	n := d.uint(uint64(max), "length")
	return d.raw(int(n))
}

func (d *decoder) str(what string) string {
	p := d.bytes(maxString)
	if d.err == nil && !utf8.Valid(p) {
		d.fail("%s is not UTF-8", what)
	}
	return string(p)
}

func timeOrZero(s int64) time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(s, 0).UTC()
}

// Decode parses a canonical payload. It refuses any encoding that Encode
// would not produce, so Encode(Decode(b)) == b for every accepted b.
// Decode does not check signatures: use Verify for untrusted input.
func Decode(b []byte) (*Manifest, error) {
	if len(b) > MaxPayload {
		return nil, malformed("payload of %d bytes exceeds %d", len(b), MaxPayload)
	}
	d := &decoder{b: b}
	if v := d.uvarint(); d.err == nil && v != FormatVersion {
		return nil, &VerifyError{Err: ErrUnknownVersion, Detail: fmt.Sprintf("format version %d (this imgctl reads %d)", v, FormatVersion)}
	}
	m := &Manifest{}
	m.Kind = Kind(d.u8())
	m.Name = d.str("name")
	m.Channel = d.str("channel")
	m.Revision = d.uvarint()
	m.Created = timeOrZero(d.varint())
	m.Expires = timeOrZero(d.varint())
	m.Chunker.Algorithm = d.u8()
	m.Chunker.Polynomial = d.uvarint()
	m.Chunker.MinSize = uint32(d.uint(chunkstore.MaxChunkSize, "min size"))
	m.Chunker.AvgBits = d.u8()
	m.Chunker.MaxSize = uint32(d.uint(chunkstore.MaxChunkSize, "max size"))
	m.Chunker.ZeroBlock = uint32(d.uint(1<<30, "zero block"))
	m.Chunker.ZeroMin = uint32(d.uint(1<<30, "zero minimum"))
	m.Compression = d.u8()
	m.Size = int64(d.uint(1<<62, "size"))
	copy(m.Digest[:], d.raw(32))
	n := d.uint(uint64(len(b)/33), "chunk count")
	if d.err == nil {
		m.Chunks = make([]ChunkRef, n)
	}
	for i := range m.Chunks {
		copy(m.Chunks[i].ID[:], d.raw(32))
		m.Chunks[i].Size = uint32(d.uint(chunkstore.MaxChunkSize, "chunk size"))
		if d.err != nil {
			break
		}
	}
	nr := d.uint(uint64(len(b)/2), "run count")
	if d.err == nil {
		m.Runs = make([]Run, 0, nr)
	}
	introduced := 0
	var off int64
	for i := uint64(0); i < nr && d.err == nil; i++ {
		r := Run{Kind: RunKind(d.u8()), Offset: off}
		switch r.Kind {
		case RunChunks:
			r.Chunk = introduced
			r.Count = int(d.uint(uint64(len(m.Chunks)-introduced), "chunk run"))
			for k := r.Chunk; k < r.Chunk+r.Count; k++ {
				r.Size += int64(m.Chunks[k].Size)
			}
			introduced += r.Count
		case RunRepeat:
			r.Chunk = int(d.uint(uint64(max(introduced-1, 0)), "repeated chunk"))
			r.Count = int(d.uint(maxRunCount, "repeat count"))
			if d.err == nil && introduced > 0 {
				r.Size = int64(r.Count) * int64(m.Chunks[r.Chunk].Size)
			}
		case RunZero:
			r.Size = int64(d.uint(1<<62, "zero run"))
		default:
			d.fail("unknown run kind %d", r.Kind)
		}
		if d.err == nil && r.Size > (1<<62)-off {
			d.fail("layout too large")
		}
		off += r.Size
		m.Runs = append(m.Runs, r)
	}
	nh := d.uint(maxHints, "hint count")
	if nh > 0 {
		m.Hints = make(map[string]string, nh)
	}
	prevKey := ""
	for i := uint64(0); i < nh && d.err == nil; i++ {
		k := d.str("hint key")
		v := d.str("hint value")
		if i > 0 && k <= prevKey {
			d.fail("hint keys not sorted and unique")
		}
		prevKey = k
		m.Hints[k] = v
	}
	ne := d.uint(maxExts, "extension count")
	if ne > 0 {
		m.Ext = make(map[uint64][]byte, ne)
	}
	var prevTag uint64
	for i := uint64(0); i < ne && d.err == nil; i++ {
		t := d.uvarint()
		v := d.bytes(MaxPayload)
		if i > 0 && t <= prevTag {
			d.fail("extension tags not sorted and unique")
		}
		prevTag = t
		m.Ext[t] = append([]byte{}, v...)
	}
	if d.err == nil && d.off != len(b) {
		d.fail("%d trailing bytes", len(b)-d.off)
	}
	if d.err != nil {
		return nil, malformed("%v", d.err)
	}
	if err := m.Validate(); err != nil {
		return nil, malformed("%v", err)
	}
	return m, nil
}
