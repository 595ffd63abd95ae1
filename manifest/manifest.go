package manifest

import (
	"fmt"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
)

// FormatVersion is the payload format this package writes. Decode refuses
// any other.
const FormatVersion = 1

// Kind says what a manifest describes.
type Kind uint8

// Kinds.
const (
	KindImage  Kind = 1 // a byte image (partition, disk)
	KindBundle Kind = 2 // a directory tree (service bundle); file table in an extension
)

func (k Kind) String() string {
	switch k {
	case KindImage:
		return "image"
	case KindBundle:
		return "bundle"
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Compression algorithms of stored chunks.
const CompressionZstd uint8 = 1

// ChunkRef is one distinct chunk of a release.
type ChunkRef struct {
	ID   chunkstore.ID
	Size uint32
}

// RunKind is the kind of one layout run.
type RunKind uint8

// Run kinds.
const (
	// RunChunks: Count chunks that appear here for the first time, in
	// order: Chunks[Chunk], Chunks[Chunk+1], …
	RunChunks RunKind = 0
	// RunRepeat: Chunks[Chunk], already seen, Count times in a row.
	RunRepeat RunKind = 1
	// RunZero: Size zero bytes.
	RunZero RunKind = 2
)

// Run is one entry of the compact layout. Offset and, for chunk runs, Size
// are implied by the encoding and filled in by Decode and Builder.
type Run struct {
	Kind   RunKind
	Chunk  int   // first (RunChunks) or repeated (RunRepeat) chunk index
	Count  int   // chunks in the run (0 for RunZero)
	Offset int64 // where the run starts in the content
	Size   int64 // bytes the run covers
}

// Manifest describes one release. The zero Expires means "never".
type Manifest struct {
	Kind        Kind
	Name        string
	Channel     string
	Revision    uint64
	Created     time.Time // second precision
	Expires     time.Time // second precision; zero: never
	Chunker     chunkstore.Params
	Compression uint8
	Size        int64         // bytes of content
	Digest      chunkstore.ID // BLAKE3 of the whole content
	Chunks      []ChunkRef    // distinct chunks in order of first appearance
	Runs        []Run         // layout
	Hints       map[string]string
	// Ext holds extension records by tag (sorted on encoding). Even tags
	// are optional: a decoder that does not know one keeps it. Odd tags are
	// critical: a decoder that does not know one refuses the manifest.
	Ext map[uint64][]byte
}

// Extension tags known to this version.
const (
	ExtFileTable uint64 = 3 // bundle file table (critical)
)

var knownCritical = map[uint64]bool{ExtFileTable: true}

// Walk calls fn for every extent of the content in order: a chunk (index
// into Chunks) or a zero extent (chunk −1). It stops when fn returns false.
func (m *Manifest) Walk(fn func(off, size int64, chunk int) bool) {
	for _, r := range m.Runs {
		off := r.Offset
		switch r.Kind {
		case RunZero:
			if !fn(off, r.Size, -1) {
				return
			}
		case RunChunks:
			for i := r.Chunk; i < r.Chunk+r.Count; i++ {
				sz := int64(m.Chunks[i].Size)
				if !fn(off, sz, i) {
					return
				}
				off += sz
			}
		case RunRepeat:
			sz := int64(m.Chunks[r.Chunk].Size)
			for k := 0; k < r.Count; k++ {
				if !fn(off, sz, r.Chunk) {
					return
				}
				off += sz
			}
		}
	}
}

// Occurrence is a place where a chunk appears: Count copies back to back
// starting at Offset.
type Occurrence struct {
	Offset int64
	Count  int
}

// Occurrences returns, per chunk index, where the chunk appears. The first
// occurrence of each chunk is its first appearance.
func (m *Manifest) Occurrences() [][]Occurrence {
	occ := make([][]Occurrence, len(m.Chunks))
	for _, r := range m.Runs {
		switch r.Kind {
		case RunChunks:
			off := r.Offset
			for i := r.Chunk; i < r.Chunk+r.Count; i++ {
				occ[i] = append(occ[i], Occurrence{Offset: off, Count: 1})
				off += int64(m.Chunks[i].Size)
			}
		case RunRepeat:
			occ[r.Chunk] = append(occ[r.Chunk], Occurrence{Offset: r.Offset, Count: r.Count})
		}
	}
	return occ
}

// Stats summarises the layout.
type Stats struct {
	Extents     int   // chunk extents (with repeats) plus zero extents
	ZeroBytes   int64 // bytes in zero extents
	ZeroExtents int
	DataBytes   int64 // bytes in chunk extents
	UniqueBytes int64 // bytes of distinct chunks
}

// Stats computes layout statistics.
func (m *Manifest) Stats() Stats {
	var s Stats
	for _, r := range m.Runs {
		if r.Kind == RunZero {
			s.ZeroBytes += r.Size
			s.ZeroExtents++
			s.Extents++
			continue
		}
		s.DataBytes += r.Size
		s.Extents += r.Count
	}
	for _, c := range m.Chunks {
		s.UniqueBytes += int64(c.Size)
	}
	return s
}

// Builder builds the chunk table and layout from extents in order.
type Builder struct {
	chunks []ChunkRef
	runs   []Run
	index  map[chunkstore.ID]int
	off    int64
}

// NewBuilder returns an empty builder.
func NewBuilder() *Builder { return &Builder{index: map[chunkstore.ID]int{}} }

// AddZero appends n zero bytes.
func (b *Builder) AddZero(n int64) {
	if n <= 0 {
		return
	}
	if k := len(b.runs) - 1; k >= 0 && b.runs[k].Kind == RunZero {
		b.runs[k].Size += n
	} else {
		b.runs = append(b.runs, Run{Kind: RunZero, Offset: b.off, Size: n})
	}
	b.off += n
}

// AddChunk appends a chunk.
func (b *Builder) AddChunk(id chunkstore.ID, size uint32) {
	i, seen := b.index[id]
	k := len(b.runs) - 1
	switch {
	case !seen:
		i = len(b.chunks)
		b.index[id] = i
		b.chunks = append(b.chunks, ChunkRef{ID: id, Size: size})
		if k >= 0 && b.runs[k].Kind == RunChunks {
			b.runs[k].Count++
			b.runs[k].Size += int64(size)
		} else {
			b.runs = append(b.runs, Run{Kind: RunChunks, Chunk: i, Count: 1, Offset: b.off, Size: int64(size)})
		}
	case k >= 0 && b.runs[k].Kind == RunRepeat && b.runs[k].Chunk == i:
		b.runs[k].Count++
		b.runs[k].Size += int64(size)
	default:
		b.runs = append(b.runs, Run{Kind: RunRepeat, Chunk: i, Count: 1, Offset: b.off, Size: int64(size)})
	}
	b.off += int64(size)
}

// Size returns the bytes added so far.
func (b *Builder) Size() int64 { return b.off }

// Result returns the chunk table and layout.
func (b *Builder) Result() ([]ChunkRef, []Run) { return b.chunks, b.runs }

// ChunkIndex returns a map from chunk ID to its index in m.Chunks.
func (m *Manifest) ChunkIndex() map[chunkstore.ID]int {
	idx := make(map[chunkstore.ID]int, len(m.Chunks))
	for i, c := range m.Chunks {
		idx[c.ID] = i
	}
	return idx
}
