package zdeflate

// Huffman trees and block output, as zlib's trees.c chooses and writes them.

const (
	literals  = 256
	lengthCds = 29
	lCodes    = literals + 1 + lengthCds
	dCodes    = 30
	blCodes   = 19
	heapSize  = 2*lCodes + 1
	maxBits   = 15
	maxBLBits = 7
	endBlock  = 256
	rep3to6   = 16
	repz3to10 = 17
	repz11to  = 18
)

var (
	extraLBits  = [lengthCds]int{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	extraDBits  = [dCodes]int{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
	extraBLBits = [blCodes]int{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 7}
	blOrder     = [blCodes]int{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}

	lengthCode [maxMatch - minMatch + 1]uint8
	distCode   [512]uint8
	baseLength [lengthCds]int
	baseDist   [dCodes]int
	staticL    tree // lens and codes of the fixed literal/length code
	staticD    tree
)

func init() {
	length := 0
	code := 0
	for ; code < lengthCds-1; code++ {
		baseLength[code] = length
		for n := 0; n < 1<<extraLBits[code]; n++ {
			lengthCode[length] = uint8(code)
			length++
		}
	}
	// Length 258 has two encodings; zlib uses code 285.
	lengthCode[length-1] = uint8(code)
	dist := 0
	for code = 0; code < 16; code++ {
		baseDist[code] = dist
		for n := 0; n < 1<<extraDBits[code]; n++ {
			distCode[dist] = uint8(code)
			dist++
		}
	}
	dist >>= 7
	for ; code < dCodes; code++ {
		baseDist[code] = dist << 7
		for n := 0; n < 1<<(extraDBits[code]-7); n++ {
			distCode[256+dist] = uint8(code)
			dist++
		}
	}
	var count [maxBits + 1]int
	for n := 0; n <= 287; n++ {
		l := 8
		switch {
		case n >= 144 && n <= 255:
			l = 9
		case n >= 256 && n <= 279:
			l = 7
		}
		staticL.len[n] = l
		count[l]++
	}
	genCodes(&staticL, lCodes+1, &count)
	for n := 0; n < dCodes; n++ {
		staticD.len[n] = 5
		staticD.code[n] = reverse(n, 5)
	}
}

func dCode(dist int) int {
	if dist < 256 {
		return int(distCode[dist])
	}
	return int(distCode[256+dist>>7])
}

// tree holds one code's per-symbol data; zlib overlays freq with code and
// dad with len, which the separate arrays here only make explicit.
type tree struct {
	freq, code, len, dad [heapSize]int
}

// treeDesc describes one of the three trees of a block.
type treeDesc struct {
	t         *tree
	static    *tree // nil for the bit-length tree
	extra     []int
	extraBase int
	elems     int
	maxLength int
	maxCode   int
}

type trees struct {
	ltree, dtree, bltree tree
	l, d, bl             treeDesc
	heap                 [heapSize]int
	heapLen, heapMax     int
	depth                [heapSize]int
	blCount              [maxBits + 1]int
	optLen, staticLen    int
}

func (d *deflater) initBlock() {
	tr := &d.trees
	if tr.l.t == nil {
		tr.l = treeDesc{t: &tr.ltree, static: &staticL, extra: extraLBits[:], extraBase: literals + 1, elems: lCodes, maxLength: maxBits}
		tr.d = treeDesc{t: &tr.dtree, static: &staticD, extra: extraDBits[:], elems: dCodes, maxLength: maxBits}
		tr.bl = treeDesc{t: &tr.bltree, extra: extraBLBits[:], elems: blCodes, maxLength: maxBLBits}
	}
	clear(tr.ltree.freq[:lCodes])
	clear(tr.dtree.freq[:dCodes])
	clear(tr.bltree.freq[:blCodes])
	tr.ltree.freq[endBlock] = 1
	tr.optLen, tr.staticLen = 0, 0
	d.syms = d.syms[:0]
	d.matches = 0
}

// smaller orders heap nodes by frequency, then depth.
func (tr *trees) smaller(t *tree, n, m int) bool {
	return t.freq[n] < t.freq[m] || t.freq[n] == t.freq[m] && tr.depth[n] <= tr.depth[m]
}

func (tr *trees) downHeap(t *tree, k int) {
	v := tr.heap[k]
	j := k << 1
	for j <= tr.heapLen {
		if j < tr.heapLen && tr.smaller(t, tr.heap[j+1], tr.heap[j]) {
			j++
		}
		if tr.smaller(t, v, tr.heap[j]) {
			break
		}
		tr.heap[k] = tr.heap[j]
		k = j
		j <<= 1
	}
	tr.heap[k] = v
}

// genBitLen sets the code lengths from the built tree, limiting them to
// maxLength the way zlib does, and adds the block's cost to optLen and
// staticLen.
func (tr *trees) genBitLen(desc *treeDesc) {
	t := desc.t
	clear(tr.blCount[:])
	t.len[tr.heap[tr.heapMax]] = 0
	overflow := 0
	h := tr.heapMax + 1
	for ; h < heapSize; h++ {
		n := tr.heap[h]
		bits := t.len[t.dad[n]] + 1
		if bits > desc.maxLength {
			bits = desc.maxLength
			overflow++
		}
		t.len[n] = bits
		if n > desc.maxCode {
			continue
		}
		tr.blCount[bits]++
		xbits := 0
		if n >= desc.extraBase {
			xbits = desc.extra[n-desc.extraBase]
		}
		f := t.freq[n]
		tr.optLen += f * (bits + xbits)
		if desc.static != nil {
			tr.staticLen += f * (desc.static.len[n] + xbits)
		}
	}
	if overflow == 0 {
		return
	}
	for overflow > 0 {
		bits := desc.maxLength - 1
		for tr.blCount[bits] == 0 {
			bits--
		}
		tr.blCount[bits]--
		tr.blCount[bits+1] += 2
		tr.blCount[desc.maxLength]--
		overflow -= 2
	}
	for bits := desc.maxLength; bits != 0; bits-- {
		n := tr.blCount[bits]
		for n != 0 {
			h--
			m := tr.heap[h]
			if m > desc.maxCode {
				continue
			}
			if t.len[m] != bits {
				tr.optLen += (bits - t.len[m]) * t.freq[m]
				t.len[m] = bits
			}
			n--
		}
	}
}

// genCodes assigns canonical codes (bit-reversed for output) from lengths.
func genCodes(t *tree, maxCode int, count *[maxBits + 1]int) {
	var next [maxBits + 1]int
	code := 0
	for bits := 1; bits <= maxBits; bits++ {
		code = (code + count[bits-1]) << 1
		next[bits] = code
	}
	for n := 0; n <= maxCode; n++ {
		l := t.len[n]
		if l == 0 {
			continue
		}
		t.code[n] = reverse(next[l], l)
		next[l]++
	}
}

func reverse(code, n int) int {
	r := 0
	for ; n > 0; n-- {
		r = r<<1 | code&1
		code >>= 1
	}
	return r
}

// buildTree builds the Huffman tree of one description from its
// frequencies.
func (tr *trees) buildTree(desc *treeDesc) {
	t := desc.t
	tr.heapLen, tr.heapMax = 0, heapSize
	maxCode := -1
	for n := 0; n < desc.elems; n++ {
		if t.freq[n] != 0 {
			tr.heapLen++
			tr.heap[tr.heapLen] = n
			maxCode = n
			tr.depth[n] = 0
		} else {
			t.len[n] = 0
		}
	}
	// At least two codes of non-zero frequency.
	for tr.heapLen < 2 {
		node := 0
		if maxCode < 2 {
			maxCode++
			node = maxCode
		}
		tr.heapLen++
		tr.heap[tr.heapLen] = node
		t.freq[node] = 1
		tr.depth[node] = 0
		tr.optLen--
		if desc.static != nil {
			tr.staticLen -= desc.static.len[node]
		}
	}
	desc.maxCode = maxCode
	for n := tr.heapLen / 2; n >= 1; n-- {
		tr.downHeap(t, n)
	}
	node := desc.elems
	for {
		n := tr.heap[1]
		tr.heap[1] = tr.heap[tr.heapLen]
		tr.heapLen--
		tr.downHeap(t, 1)
		m := tr.heap[1]
		tr.heapMax--
		tr.heap[tr.heapMax] = n
		tr.heapMax--
		tr.heap[tr.heapMax] = m
		t.freq[node] = t.freq[n] + t.freq[m]
		tr.depth[node] = max(tr.depth[n], tr.depth[m]) + 1
		t.dad[n], t.dad[m] = node, node
		tr.heap[1] = node
		node++
		tr.downHeap(t, 1)
		if tr.heapLen < 2 {
			break
		}
	}
	tr.heapMax--
	tr.heap[tr.heapMax] = tr.heap[1]
	tr.genBitLen(desc)
	genCodes(t, maxCode, &tr.blCount)
}

// lengthCodes walks a tree's code lengths (0..maxCode) as the bit-length
// code sends them, run-length coded, calling sym with each bit-length
// symbol and its extra bits.
func lengthCodes(t *tree, maxCode int, sym func(code, extra, bits int)) {
	prevLen, next := -1, t.len[0]
	count, maxCount, minCount := 0, 7, 4
	if next == 0 {
		maxCount, minCount = 138, 3
	}
	t.len[maxCode+1] = 0xffff // guard
	for n := 0; n <= maxCode; n++ {
		cur := next
		next = t.len[n+1]
		count++
		if count < maxCount && cur == next {
			continue
		}
		switch {
		case count < minCount:
			for ; count > 0; count-- {
				sym(cur, 0, 0)
			}
		case cur != 0:
			if cur != prevLen {
				sym(cur, 0, 0)
				count--
			}
			sym(rep3to6, count-3, 2)
		case count <= 10:
			sym(repz3to10, count-3, 3)
		default:
			sym(repz11to, count-11, 7)
		}
		count, prevLen = 0, cur
		switch {
		case next == 0:
			maxCount, minCount = 138, 3
		case cur == next:
			maxCount, minCount = 6, 3
		default:
			maxCount, minCount = 7, 4
		}
	}
}

// scanTree counts the bit-length codes a tree's lengths will be sent with.
func (tr *trees) scanTree(t *tree, maxCode int) {
	lengthCodes(t, maxCode, func(code, _, _ int) { tr.bltree.freq[code]++ })
}

// sendTree writes a tree's lengths with the bit-length code.
func (d *deflater) sendTree(t *tree, maxCode int) {
	bl := &d.bltree
	lengthCodes(t, maxCode, func(code, extra, bits int) {
		d.bits.put(bl.code[code], bl.len[code])
		if bits > 0 {
			d.bits.put(extra, bits)
		}
	})
}

// flushTrees writes the block of the tallied symbols as zlib's
// _tr_flush_block does: stored, fixed or dynamic codes, whichever is
// smallest (stored only while the block's bytes are still in the window).
func (d *deflater) flushTrees(buf []byte, storedLen int, last bool) {
	tr := &d.trees
	tr.buildTree(&tr.l)
	tr.buildTree(&tr.d)
	tr.scanTree(&tr.ltree, tr.l.maxCode)
	tr.scanTree(&tr.dtree, tr.d.maxCode)
	tr.buildTree(&tr.bl)
	maxBLIndex := blCodes - 1
	for ; maxBLIndex >= 3; maxBLIndex-- {
		if tr.bltree.len[blOrder[maxBLIndex]] != 0 {
			break
		}
	}
	tr.optLen += 3*(maxBLIndex+1) + 5 + 5 + 4
	optLenB := (tr.optLen + 3 + 7) >> 3
	staticLenB := (tr.staticLen + 3 + 7) >> 3
	if staticLenB <= optLenB {
		optLenB = staticLenB
	}
	lastBit := 0
	if last {
		lastBit = 1
	}
	switch {
	case storedLen+4 <= optLenB && buf != nil:
		d.bits.put(0<<1+lastBit, 3)
		d.bits.align()
		d.bits.out = append(d.bits.out, byte(storedLen), byte(storedLen>>8), ^byte(storedLen), ^byte(storedLen>>8))
		d.bits.out = append(d.bits.out, buf...)
	case staticLenB == optLenB:
		d.bits.put(1<<1+lastBit, 3)
		d.compressBlock(&staticL, &staticD)
	default:
		d.bits.put(2<<1+lastBit, 3)
		lcodes, dcodes, blcodes := tr.l.maxCode+1, tr.d.maxCode+1, maxBLIndex+1
		d.bits.put(lcodes-257, 5)
		d.bits.put(dcodes-1, 5)
		d.bits.put(blcodes-4, 4)
		for r := 0; r < blcodes; r++ {
			d.bits.put(tr.bltree.len[blOrder[r]], 3)
		}
		d.sendTree(&tr.ltree, lcodes-1)
		d.sendTree(&tr.dtree, dcodes-1)
		d.compressBlock(&tr.ltree, &tr.dtree)
	}
	d.initBlock()
	if last {
		d.bits.align()
	}
}

// compressBlock writes the tallied symbols with the given codes.
func (d *deflater) compressBlock(lt, dt *tree) {
	b := &d.bits
	for _, s := range d.syms {
		lc := int(s.lc)
		if s.dist == 0 {
			b.put(lt.code[lc], lt.len[lc])
			continue
		}
		code := int(lengthCode[lc])
		b.put(lt.code[code+literals+1], lt.len[code+literals+1])
		if e := extraLBits[code]; e != 0 {
			b.put(lc-baseLength[code], e)
		}
		dist := int(s.dist) - 1
		code = dCode(dist)
		b.put(dt.code[code], dt.len[code])
		if e := extraDBits[code]; e != 0 {
			b.put(dist-baseDist[code], e)
		}
	}
	b.put(lt.code[endBlock], lt.len[endBlock])
}

// bitWriter packs codes LSB first, as DEFLATE wants.
type bitWriter struct {
	out  []byte
	acc  uint64
	nacc int
}

func (b *bitWriter) put(v, n int) {
	b.acc |= uint64(v) << b.nacc
	b.nacc += n
	for b.nacc >= 8 {
		b.out = append(b.out, byte(b.acc))
		b.acc >>= 8
		b.nacc -= 8
	}
}

// align pads to a byte boundary with zero bits.
func (b *bitWriter) align() {
	if b.nacc > 0 {
		b.out = append(b.out, byte(b.acc))
	}
	b.acc, b.nacc = 0, 0
}
