// Package zdeflate writes raw DEFLATE (RFC 1951) streams bit for bit as
// zlib does with windowBits 15, memLevel 8, the default strategy and the
// whole input given at once (deflateInit2 + deflate(Z_FINISH); Python's
// zlib.compressobj(level, DEFLATED, -15, 8)), and as GNU gzip does
// (DeflateGzip), for levels 4 to 9, the ones both compress with lazy
// matching.
//
// It exists so that a compressed stream found inside a release (the gzip'd
// changelogs and manual pages of a Debian image) can be carried inflated in a
// delta pack and deflated again on the terminal to the very same bytes: a
// pack then compresses the text against the old release's text instead of
// carrying compressed bytes that match nothing. Any other DEFLATE encoder
// (compress/flate, klauspost's) writes a valid stream that differs in its
// bits, which is useless for that. The algorithm and its constants follow
// zlib's deflate.c and trees.c (zlib licence, (C) 1995-2022 Jean-loup Gailly
// and Mark Adler); this is an independent Go implementation of the same
// algorithm, checked against zlib's and gzip's output in the tests. GNU
// gzip's encoder is the same algorithm by the same author; it differs only
// in where it ends blocks, which DeflateGzip reproduces from the rule zlib
// keeps under TRUNCATE_BLOCK (found to match gzip 1.12 on the bench image's
// 200 streams zlib does not reproduce, all but one).
package zdeflate

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync"
)

const (
	wBits     = 15
	wSize     = 1 << wBits
	wMask     = wSize - 1
	hashBits  = 8 + 7 // memLevel 8
	hashSize  = 1 << hashBits
	hashMask  = hashSize - 1
	hashShift = (hashBits + minMatch - 1) / minMatch
	minMatch  = 3
	maxMatch  = 258
	minLook   = maxMatch + minMatch + 1
	maxDist   = wSize - minLook
	windowLen = 2 * wSize
	litBufLen = 1 << (8 + 6) // symbols per block at most (less one)
	tooFar    = 4096
)

type config struct{ good, lazy, nice, chain int }

// configs are zlib's parameters for levels 4..9 (deflate_slow).
var configs = [10]config{
	4: {4, 4, 16, 16},
	5: {8, 16, 32, 32},
	6: {8, 16, 128, 128},
	7: {8, 32, 128, 256},
	8: {32, 128, 258, 1024},
	9: {32, 258, 258, 4096},
}

// symbol is one tallied literal (dist 0) or match (lc = length-3).
type symbol struct {
	dist uint16
	lc   uint8
}

type deflater struct {
	cfg    config
	in     []byte // input not yet read into the window
	window [windowLen + maxMatch + 8]byte
	head   [hashSize]uint16
	prev   [wSize]uint16
	insH   int

	strstart, lookahead, blockStart int
	matchStart, matchLength         int
	prevMatch, prevLength           int
	matchAvailable                  bool

	syms []symbol
	// Block ends: after litBuf-1 symbols (zlib: 16K; GNU gzip: 32K), and
	// with gzip's rule every 4096 symbols when the block compresses well.
	litBuf   int
	gzipRule bool
	matches  int
	trees
	bits bitWriter
}

// Deflate appends to dst the raw DEFLATE stream zlib writes for src at the
// given level (4..9) and returns it.
func Deflate(dst, src []byte, level int) ([]byte, error) { return deflate(dst, src, level, false) }

// DeflateGzip is Deflate as GNU gzip writes (gzip -N for level N, the deflate
// data between its header and trailer), which differs from zlib in where it
// ends blocks: after up to 32K symbols instead of 16K, and earlier when a
// block compresses to less than half (the rule zlib keeps, unused, under
// TRUNCATE_BLOCK, checked every 4096 symbols).
func DeflateGzip(dst, src []byte, level int) ([]byte, error) { return deflate(dst, src, level, true) }

// pool keeps deflaters (~400 KB of tables each) between calls: a release's
// streams are many and small.
var pool = sync.Pool{New: func() any { return new(deflater) }}

func deflate(dst, src []byte, level int, gzip bool) ([]byte, error) {
	if level < 4 || level > 9 {
		return dst, fmt.Errorf("zdeflate: level %d: only 4..9 are implemented", level)
	}
	d := pool.Get().(*deflater)
	syms := d.syms
	*d = deflater{cfg: configs[level], in: src, litBuf: litBufLen, gzipRule: gzip}
	if gzip {
		d.litBuf = 2 * litBufLen
	}
	d.syms = syms[:0]
	if cap(d.syms) < d.litBuf {
		d.syms = make([]symbol, 0, d.litBuf)
	}
	d.bits.out = dst
	d.prevLength, d.matchLength = minMatch-1, minMatch-1
	d.initBlock()
	d.run()
	out := d.bits.out
	d.in, d.bits.out = nil, nil
	pool.Put(d)
	return out, nil
}

func (d *deflater) updateHash(c byte) { d.insH = ((d.insH << hashShift) ^ int(c)) & hashMask }

// insertString adds the string at pos to the hash chains and returns the
// previous head of its chain.
func (d *deflater) insertString(pos int) int {
	d.updateHash(d.window[pos+minMatch-1])
	h := d.head[d.insH]
	d.prev[pos&wMask] = h
	d.head[d.insH] = uint16(pos)
	return int(h)
}

// fillWindow reads input into the window, sliding it by wSize when the
// current position nears its end (zlib's fill_window with all input
// available).
func (d *deflater) fillWindow() {
	for {
		more := windowLen - d.lookahead - d.strstart
		if d.strstart >= wSize+maxDist {
			copy(d.window[:wSize], d.window[wSize:windowLen])
			d.matchStart -= wSize
			d.strstart -= wSize
			d.blockStart -= wSize
			slide(d.head[:])
			slide(d.prev[:])
			more += wSize
		}
		if len(d.in) == 0 {
			return
		}
		n := copy(d.window[d.strstart+d.lookahead:d.strstart+d.lookahead+more], d.in)
		d.in = d.in[n:]
		d.lookahead += n
		// The running hash starts again from the first two bytes at
		// strstart (zlib does this on every read; with all input given at
		// once it never has strings left to insert here).
		if d.lookahead >= minMatch {
			d.insH = int(d.window[d.strstart])
			d.updateHash(d.window[d.strstart+1])
		}
		if d.lookahead >= minLook || len(d.in) == 0 {
			return
		}
	}
}

// slide moves hash chain positions down by wSize after the window slid;
// those that fell out of it end their chains.
func slide(a []uint16) {
	for i, m := range a {
		if int(m) >= wSize {
			a[i] = m - wSize
		} else {
			a[i] = 0
		}
	}
}

// longestMatch follows the hash chain from cur and returns the length of
// the longest match at strstart longer than prevLength (setting
// matchStart), at most lookahead.
func (d *deflater) longestMatch(cur int) int {
	chain := d.cfg.chain
	w := d.window[:]
	scan := d.strstart
	best := d.prevLength
	nice := d.cfg.nice
	limit := 0
	if d.strstart > maxDist {
		limit = d.strstart - maxDist
	}
	strend := d.strstart + maxMatch
	scanEnd1, scanEnd := w[scan+best-1], w[scan+best]
	if d.prevLength >= d.cfg.good {
		chain >>= 2
	}
	if nice > d.lookahead {
		nice = d.lookahead
	}
	for {
		m := cur
		if w[m+best] == scanEnd && w[m+best-1] == scanEnd1 && w[m] == w[scan] && w[m+1] == w[scan+1] {
			// Byte 2 agrees when bytes 0 and 1 do (the hash of the
			// three is equal), so the comparison goes on from byte 3.
			// Eight bytes at a time; the window has room past strend.
			s, t := scan+3, m+3
			for s < strend {
				x := binary.LittleEndian.Uint64(w[s:]) ^ binary.LittleEndian.Uint64(w[t:])
				if x != 0 {
					s += bits.TrailingZeros64(x) >> 3
					break
				}
				s += 8
				t += 8
			}
			n := min(s, strend) - scan
			if n > best {
				d.matchStart = cur
				best = n
				if n >= nice {
					break
				}
				scanEnd1, scanEnd = w[scan+best-1], w[scan+best]
			}
		}
		cur = int(d.prev[cur&wMask])
		if cur <= limit {
			break
		}
		chain--
		if chain == 0 {
			break
		}
	}
	if best <= d.lookahead {
		return best
	}
	return d.lookahead
}

func (d *deflater) tallyLit(c byte) bool {
	d.syms = append(d.syms, symbol{0, c})
	d.ltree.freq[c]++
	return d.blockFull()
}

func (d *deflater) tallyDist(dist, lc int) bool {
	d.syms = append(d.syms, symbol{uint16(dist), uint8(lc)})
	d.ltree.freq[int(lengthCode[lc])+literals+1]++
	d.dtree.freq[dCode(dist-1)]++
	d.matches++
	return d.blockFull()
}

// blockFull tells whether the block ends after the symbol just tallied.
func (d *deflater) blockFull() bool {
	n := len(d.syms)
	if d.gzipRule && n&0xfff == 0 {
		out := n * 8
		for c := 0; c < dCodes; c++ {
			out += d.dtree.freq[c] * (5 + extraDBits[c])
		}
		out >>= 3
		if d.matches < n/2 && out < (d.strstart-d.blockStart)/2 {
			return true
		}
	}
	return n == d.litBuf-1
}

// flushBlock ends the current block at strstart.
func (d *deflater) flushBlock(last bool) {
	var buf []byte
	if d.blockStart >= 0 {
		buf = d.window[d.blockStart:d.strstart]
	}
	d.flushTrees(buf, d.strstart-d.blockStart, last)
	d.blockStart = d.strstart
}

// run is zlib's deflate_slow driven to the end of the input (Z_FINISH).
func (d *deflater) run() {
	for {
		if d.lookahead < minLook {
			d.fillWindow()
			if d.lookahead == 0 {
				break
			}
		}
		head := 0
		if d.lookahead >= minMatch {
			head = d.insertString(d.strstart)
		}
		d.prevLength, d.prevMatch = d.matchLength, d.matchStart
		d.matchLength = minMatch - 1
		if head != 0 && d.prevLength < d.cfg.lazy && d.strstart-head <= maxDist {
			d.matchLength = d.longestMatch(head)
			if d.matchLength <= 5 && d.matchLength == minMatch && d.strstart-d.matchStart > tooFar {
				d.matchLength = minMatch - 1
			}
		}
		switch {
		case d.prevLength >= minMatch && d.matchLength <= d.prevLength:
			maxInsert := d.strstart + d.lookahead - minMatch
			flush := d.tallyDist(d.strstart-1-d.prevMatch, d.prevLength-minMatch)
			d.lookahead -= d.prevLength - 1
			for k := d.prevLength - 2; k > 0; k-- {
				d.strstart++
				if d.strstart <= maxInsert {
					d.insertString(d.strstart)
				}
			}
			d.prevLength = 0
			d.matchAvailable = false
			d.matchLength = minMatch - 1
			d.strstart++
			if flush {
				d.flushBlock(false)
			}
		case d.matchAvailable:
			if d.tallyLit(d.window[d.strstart-1]) {
				d.flushBlock(false)
			}
			d.strstart++
			d.lookahead--
		default:
			d.matchAvailable = true
			d.strstart++
			d.lookahead--
		}
	}
	if d.matchAvailable {
		d.tallyLit(d.window[d.strstart-1])
		d.matchAvailable = false
	}
	d.flushBlock(true)
}
