package delta

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"slices"

	"github.com/imgctl/imgctl/internal/zdeflate"
	"github.com/imgctl/imgctl/manifest"
	"golang.org/x/sync/errgroup"
)

// Gzip streams in packs (format version 3, decisions/0006).
//
// A Debian image update carries megabytes of gzip'd changelogs and manual
// pages. As compressed bytes they match nothing in the old release and do
// not compress again; inflated, they compress against the old release's
// inflated text. So a pack builder looks for gzip members in the new
// chunks, and where GNU gzip's or zlib's encoder (internal/zdeflate,
// bit-exact) at some level gives the member's deflate data back exactly, the
// segment carries the inflated text instead (a transform) and the terminal
// deflates it again. Likewise FROM's own gzip members can join a segment's
// reference inflated (an inflated reference). Members written by other
// encoders stay as they are; every chunk is verified by its ID after the
// rebuild in any case.

const (
	minRegzip     = 64       // deflate bytes: smaller members are not worth a transform
	maxGzipMember = 4 << 20  // deflate bytes of one member considered
	maxInflated   = 32 << 20 // inflated bytes of one member considered
)

// encoders are tried in order (Debian compresses with gzip -9n; for inputs
// of one zlib block gzip and zlib agree). A transform names its encoder by
// its index here, so the list only grows at its end.
var encoders = []struct {
	level int
	fn    func(dst, src []byte, level int) ([]byte, error)
}{
	{9, zdeflate.DeflateGzip}, // gzip -9
	{9, zdeflate.Deflate},     // zlib level 9
	{6, zdeflate.DeflateGzip}, // gzip -6
	{6, zdeflate.Deflate},     // zlib level 6
}

// gzMember is the deflate data of one gzip member inside some bytes.
type gzMember struct {
	off, n int // the deflate data (between header and trailer)
	plain  []byte
}

// gzipMembers calls fn for every complete, valid gzip member in b (its
// trailer's CRC-32 and size match what its deflate data inflates to), in
// order; fn returns false to stop.
func gzipMembers(b []byte, fn func(m gzMember) bool) {
	for i := 0; ; {
		k := bytes.Index(b[i:], []byte{0x1f, 0x8b, 8})
		if k < 0 {
			return
		}
		i += k
		m, end, ok := gzipMemberAt(b, i)
		if !ok {
			i++
			continue
		}
		if !fn(m) {
			return
		}
		i = end
	}
}

// gzipMemberAt parses a gzip member starting at b[i] and returns its deflate
// data and where the member ends.
func gzipMemberAt(b []byte, i int) (gzMember, int, bool) {
	if len(b)-i < 18 {
		return gzMember{}, 0, false
	}
	flg := b[i+3]
	if flg&0xe0 != 0 {
		return gzMember{}, 0, false
	}
	j := i + 10
	if flg&4 != 0 { // FEXTRA
		if j+2 > len(b) {
			return gzMember{}, 0, false
		}
		j += 2 + int(binary.LittleEndian.Uint16(b[j:]))
	}
	for _, bit := range []byte{8, 16} { // FNAME, FCOMMENT: zero-terminated
		if flg&bit != 0 {
			z := bytes.IndexByte(b[min(j, len(b)):], 0)
			if z < 0 {
				return gzMember{}, 0, false
			}
			j += z + 1
		}
	}
	if flg&2 != 0 { // FHCRC
		j += 2
	}
	if j >= len(b) {
		return gzMember{}, 0, false
	}
	in := bytes.NewReader(b[j:min(len(b), j+maxGzipMember)])
	// bytes.Reader is an io.ByteReader: flate reads no further than the
	// end of the stream, so what is left tells where it ends.
	fr := flate.NewReader(in)
	plain, err := io.ReadAll(io.LimitReader(fr, maxInflated+1))
	if err != nil || len(plain) > maxInflated {
		return gzMember{}, 0, false
	}
	n := int(in.Size()) - in.Len()
	end := j + n + 8
	if end > len(b) || binary.LittleEndian.Uint32(b[j+n:]) != crc32.ChecksumIEEE(plain) ||
		binary.LittleEndian.Uint32(b[j+n+4:]) != uint32(len(plain)) {
		return gzMember{}, 0, false
	}
	return gzMember{off: j, n: n, plain: plain}, end, true
}

// inflateInto appends what the raw deflate data b inflates to, which must
// be exactly size bytes, to dst (in place when dst has room).
func inflateInto(dst, b []byte, size int) ([]byte, error) {
	at := len(dst)
	dst = slices.Grow(dst, size)[:at+size]
	fr := flate.NewReader(bytes.NewReader(b))
	if _, err := io.ReadFull(fr, dst[at:]); err != nil {
		return dst[:at], err
	}
	if n, _ := fr.Read(make([]byte, 1)); n != 0 {
		return dst[:at], fmt.Errorf("more than %d bytes", size)
	}
	return dst, nil
}

// transform: in a segment's bytes, deflate data at off (n bytes) that the
// frame carries inflated (size bytes: plain, when building) and
// encoders[enc] rebuilds.
type transform struct {
	off, n, size, enc int
	plain             []byte
}

// regzippable returns the transforms of a segment's bytes: the gzip members
// one of encoders reproduces exactly.
func regzippable(ctx context.Context, b []byte) []transform {
	var out []transform
	var buf []byte
	gzipMembers(b, func(m gzMember) bool {
		if ctx.Err() != nil {
			return false
		}
		if m.n < minRegzip {
			return true
		}
		for k, e := range encoders {
			buf, _ = e.fn(buf[:0], m.plain, e.level)
			if bytes.Equal(buf, b[m.off:m.off+m.n]) {
				out = append(out, transform{off: m.off, n: m.n, size: len(m.plain), enc: k, plain: m.plain})
				break
			}
		}
		return true
	})
	return out
}

// applyTransforms returns b with each transform's deflate data replaced by
// its inflated bytes (what the frame carries).
func applyTransforms(b []byte, ts []transform) []byte {
	if len(ts) == 0 {
		return b
	}
	var out []byte
	at := 0
	for _, t := range ts {
		out = append(out, b[at:t.off]...)
		out = append(out, t.plain...)
		at = t.off + t.n
	}
	return append(out, b[at:]...)
}

// undoTransforms rebuilds a segment's bytes (total long) from what its frame
// decoded to, deflating each transform's inflated bytes (taken from d)
// again, on all cores.
func undoTransforms(d []byte, ts []transform, total int) ([]byte, error) {
	if len(ts) == 0 {
		return d, nil
	}
	// Where each transform's inflated bytes lie in d.
	starts := make([]int, len(ts))
	at, dat := 0, 0 // positions in the result and in d
	for i, t := range ts {
		gap := t.off - at
		if gap < 0 || dat+gap+t.size > len(d) {
			return nil, packErr("transform %d out of its segment", i)
		}
		starts[i] = dat + gap
		dat += gap + t.size
		at = t.off + t.n
	}
	if len(d)-dat != total-at {
		return nil, packErr("segment rebuilds to %d bytes, its chunks add up to %d", at+len(d)-dat, total)
	}
	out := make([]byte, total)
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	at, dat = 0, 0
	for i, t := range ts {
		gap := t.off - at
		copy(out[at:t.off], d[dat:dat+gap])
		g.Go(func() error {
			e := encoders[t.enc]
			z, _ := e.fn(out[t.off:t.off:t.off+t.n], d[starts[i]:starts[i]+t.size], e.level)
			if len(z) != t.n || &z[0] != &out[t.off] {
				return packErr("transform %d deflates to %d bytes, not %d", i, len(z), t.n)
			}
			return nil
		})
		dat += gap + t.size
		at = t.off + t.n
	}
	copy(out[at:], d[dat:])
	return out, g.Wait()
}

// inflatedRef is one of FROM's gzip members whose inflated bytes can join a
// segment's reference; at is its place in the index's address space (past
// FROM's size, members one after the other).
type inflatedRef struct {
	off, n int64 // FROM's deflate data
	plain  []byte
	at     int64
}

// fromGzip finds FROM's gzip members (each within 8 MiB of content read at
// once, the next 4 MiB read with it so members may cross), in order.
func fromGzip(ctx context.Context, from *manifest.Manifest, r io.ReaderAt) ([]inflatedRef, error) {
	const block, ahead = 8 << 20, maxGzipMember
	var out []inflatedRef
	at := from.Size
	buf := make([]byte, block+ahead)
	next := int64(0)                                // members found so far end here
	data := make([]bool, (from.Size+block-1)/block) // blocks with chunks
	from.Walk(func(off, size int64, c int) bool {
		if c >= 0 && size > 0 {
			for k := off / block; k <= (off+size-1)/block; k++ {
				data[k] = true
			}
		}
		return true
	})
	for base := int64(0); base < from.Size; base += block {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !data[base/block] {
			continue
		}
		b := buf[:min(int64(len(buf)), from.Size-base)]
		if _, err := r.ReadAt(b, base); err != nil {
			return nil, err
		}
		lim := min(block, len(b)) // members must start in this block
		gzipMembers(b, func(m gzMember) bool {
			start := base + int64(m.off)
			if m.off >= lim {
				return false
			}
			if start < next || m.n < minRegzip {
				return true
			}
			out = append(out, inflatedRef{off: start, n: int64(m.n), plain: m.plain, at: at})
			at += int64(len(m.plain))
			next = start + int64(m.n)
			return true
		})
	}
	return out, nil
}
