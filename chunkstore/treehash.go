package chunkstore

import (
	"fmt"
	"io"
	"math/bits"
	"sync"

	"lukechampine.com/blake3/guts"
)

// TreeBlock is the block size of a TreeDigest: 2^13 BLAKE3 chunks.
const TreeBlock = 8 << 20

const treeBlockHeight = 13 // log2(TreeBlock / guts.ChunkSize)

// TreeDigest computes the plain BLAKE3-256 of content of a known size from
// its TreeBlock-sized, TreeBlock-aligned blocks, which may be supplied in
// any order and from several goroutines. It uses BLAKE3's tree: every
// aligned block followed by more content is a complete subtree whose
// chaining value depends only on its bytes and position, so blocks can be
// hashed as soon as they are final; Sum merges them in order exactly as a
// sequential hasher would (the final block is kept and closes the tree).
// The result equals Sum over the whole content (tested).
type TreeDigest struct {
	size   int64
	blocks int // number of blocks, the last one possibly short
	mu     sync.Mutex
	cvs    [][8]uint32 // blocks 0..blocks-2
	have   []bool
	// The last block: the chaining values of its whole chunks but the
	// final one (as the largest aligned subtrees, in order), and the final
	// chunk's bytes, which close the tree in Sum.
	lastTrees []subtree
	lastChunk []byte
}

// subtree is the chaining value of a complete subtree of 2^height chunks.
type subtree struct {
	cv     [8]uint32
	height int
}

// NewTreeDigest prepares a digest of size bytes.
func NewTreeDigest(size int64) *TreeDigest {
	n := int((size + TreeBlock - 1) / TreeBlock)
	if n == 0 {
		n = 1
	}
	return &TreeDigest{size: size, blocks: n, cvs: make([][8]uint32, n-1), have: make([]bool, n)}
}

// Blocks returns the number of blocks.
func (d *TreeDigest) Blocks() int { return d.blocks }

// BlockRange returns the byte range of block i.
func (d *TreeDigest) BlockRange(i int) (off, n int64) {
	off = int64(i) * TreeBlock
	return off, min(TreeBlock, d.size-off)
}

// Block supplies the bytes of block i (exactly BlockRange(i) long). Safe
// for concurrent use; data is not retained after it returns.
func (d *TreeDigest) Block(i int, data []byte) error { return d.block(i, data, false) }

// block is Block; zero says data is known to be all zeros.
func (d *TreeDigest) block(i int, data []byte, zero bool) error {
	if i < 0 || i >= d.blocks {
		return fmt.Errorf("tree digest: block %d of %d", i, d.blocks)
	}
	if _, n := d.BlockRange(i); int64(len(data)) != n {
		return fmt.Errorf("tree digest: block %d has %d bytes, want %d", i, len(data), n)
	}
	if i == d.blocks-1 {
		trees, final := lastBlock(data, uint64(i)<<treeBlockHeight)
		d.mu.Lock()
		d.lastTrees, d.lastChunk, d.have[i] = trees, final, true
		d.mu.Unlock()
		return nil
	}
	var cv [8]uint32
	if zero || allZero(data) {
		cv = zeroCV(i)
	} else {
		cv = subtreeCV(data, uint64(i)<<treeBlockHeight)
	}
	d.mu.Lock()
	d.cvs[i], d.have[i] = cv, true
	d.mu.Unlock()
	return nil
}

// ZeroBlock supplies block i as all zeros, for callers that know it without
// reading (a hole): nothing is hashed unless i is the final block.
func (d *TreeDigest) ZeroBlock(i int) error {
	if i < 0 || i >= d.blocks {
		return fmt.Errorf("tree digest: block %d of %d", i, d.blocks)
	}
	_, n := d.BlockRange(i)
	return d.block(i, zeroBlock[:n], true)
}

// ReadBlock supplies block i from r: where holes covers the whole block it
// is zeros without a read, else it is read into buf (TreeBlock bytes).
func (d *TreeDigest) ReadBlock(i int, r io.ReaderAt, holes HoleMap, buf []byte) error {
	off, n := d.BlockRange(i)
	if holes.Covers(off, n) {
		return d.ZeroBlock(i)
	}
	if err := holes.ReadAt(r, buf[:n], off); err != nil {
		return fmt.Errorf("read at %d: %w", off, err)
	}
	return d.Block(i, buf[:n])
}

// subtreeCV is the chaining value of a complete subtree of 2^k chunks (k ≥
// 4) starting at chunk counter. It runs on the calling goroutine (callers
// hash blocks in parallel), unlike guts.CompressEigentree, which starts a
// goroutine per 16 chunks.
func subtreeCV(data []byte, counter uint64) [8]uint32 {
	if cv, ok := subtreeCVAVX2(data, counter); ok {
		return cv
	}
	return subtreeCVGuts(data, counter)
}

// subtreeCVGuts is subtreeCV with lukechampine's kernels.
func subtreeCVGuts(data []byte, counter uint64) [8]uint32 {
	const group = guts.MaxSIMD * guts.ChunkSize
	cvs := make([][8]uint32, len(data)/group)
	for j := range cvs {
		n := guts.CompressBuffer((*[group]byte)(data[j*group:(j+1)*group]), group, &guts.IV, counter+uint64(j*guts.MaxSIMD), 0)
		cvs[j] = guts.ChainingValue(n)
	}
	for len(cvs) > 1 {
		for j := 0; j < len(cvs)/2; j++ {
			cvs[j] = guts.ChainingValue(guts.ParentNode(cvs[2*j], cvs[2*j+1], &guts.IV, 0))
		}
		cvs = cvs[:len(cvs)/2]
	}
	return cvs[0]
}

// lastBlock hashes the final block of content, which starts at chunk
// counter, but for its final chunk (full or not), returned as a copy.
func lastBlock(data []byte, counter uint64) (trees []subtree, final []byte) {
	chunks := uint64((len(data) + guts.ChunkSize - 1) / guts.ChunkSize)
	if chunks > 0 {
		chunks--
	}
	off := 0
	for _, h := range guts.Eigentrees(counter, chunks) {
		n := (1 << h) * guts.ChunkSize
		var cv [8]uint32
		if h >= 4 {
			cv = subtreeCV(data[off:off+n], counter)
		} else {
			cv = guts.ChainingValue(guts.CompressEigentree(data[off:off+n], &guts.IV, counter, 0))
		}
		trees = append(trees, subtree{cv, h})
		counter += 1 << h
		off += n
	}
	return trees, append([]byte(nil), data[off:]...)
}

// Sum returns the BLAKE3-256 of the content; every block must have been
// supplied.
func (d *TreeDigest) Sum() (ID, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, ok := range d.have {
		if !ok {
			return ID{}, fmt.Errorf("tree digest: block %d missing", i)
		}
	}
	var stack [64][8]uint32
	var counter uint64 // chunks pushed; its set bits are the occupied stack slots
	push := func(cv [8]uint32, height int) {
		i := height
		for counter&(1<<i) != 0 {
			cv = guts.ChainingValue(guts.ParentNode(stack[i], cv, &guts.IV, 0))
			i++
		}
		stack[i] = cv
		counter += 1 << height
	}
	for _, cv := range d.cvs {
		push(cv, treeBlockHeight)
	}
	// The last block's subtrees, then its final chunk closes the tree
	// with the ROOT flag.
	for _, t := range d.lastTrees {
		push(t.cv, t.height)
	}
	root := guts.CompressChunk(d.lastChunk, &guts.IV, counter, 0)
	for i := bits.TrailingZeros64(counter); i < bits.Len64(counter); i++ {
		if counter&(1<<i) != 0 {
			root = guts.ParentNode(stack[i], guts.ChainingValue(root), &guts.IV, 0)
		}
	}
	root.Flags |= guts.FlagRoot
	out := guts.WordsToBytes(guts.CompressNode(root))
	var id ID
	copy(id[:], out[:32])
	return id, nil
}
