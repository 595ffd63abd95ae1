package delta

import (
	"context"
	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"io"
)

// RegionKind classifies a byte range of the new content.
type RegionKind string

// Region kinds.
const (
	RegionSame  RegionKind = "same"  // same chunk at the same offset in the old release
	RegionMoved RegionKind = "moved" // chunk present in the old release elsewhere
	RegionNew   RegionKind = "new"   // chunk the old release lacks: must be fetched
	RegionZero  RegionKind = "zero"  // zero extent
)

// Region is a maximal byte range of the new content of one kind.
type Region struct {
	Offset int64      `json:"offset"`
	Size   int64      `json:"size"`
	Kind   RegionKind `json:"kind"`
}

// Side summarises one release of a diff.
type Side struct {
	Name        string        `json:"name"`
	Channel     string        `json:"channel"`
	Revision    uint64        `json:"revision"`
	Size        int64         `json:"size"`
	Digest      chunkstore.ID `json:"blake3"`
	Chunks      int           `json:"chunks"`
	UniqueBytes int64         `json:"unique_bytes"`
	ZeroBytes   int64         `json:"zero_bytes"`
}

// Diff explains what changed from Old to New.
type Diff struct {
	Old           Side  `json:"old"`
	New           Side  `json:"new"`
	NewChunks     int   `json:"new_chunks"`
	NewBytes      int64 `json:"new_bytes"`
	SharedChunks  int   `json:"shared_chunks"`
	SharedBytes   int64 `json:"shared_bytes"`
	RemovedChunks int   `json:"removed_chunks"`
	RemovedBytes  int64 `json:"removed_bytes"`
	// FetchBytes is what a terminal on Old fetches to reach New, with the
	// old content as seed: the stored (compressed) size of the new chunks
	// when the store knows them (FetchExact), else their plain size.
	FetchBytes int64 `json:"fetch_bytes"`
	FetchExact bool  `json:"fetch_bytes_exact"`
	// FullBytes is what a terminal with nothing fetches: the stored size of
	// every chunk of New (plain size where the store does not know it).
	FullBytes int64 `json:"full_bytes"`
	// PackBytes is the size of the delta pack Old→New, when the store has
	// one (set by the caller; 0: none).
	PackBytes int64 `json:"pack_bytes,omitempty"`
	// ChangedBytes is the bytes of New not at the same place in Old.
	ChangedBytes int64    `json:"changed_bytes"`
	Regions      []Region `json:"regions"`
	// Files is the file-level view when both releases are bundles.
	Files *FileDiff `json:"files,omitempty"`
}

// Compare diffs two manifests. stored, if not nil, returns the stored size
// of a chunk (ok false if unknown).
//
// For bundles, chunks (nil: none) lets the file view compare the bytes of
// small files that share changed chunks (see CompareFiles).
func Compare(ctx context.Context, old, new *manifest.Manifest, stored func(chunkstore.ID) (int64, bool), chunks chunkstore.Getter) *Diff {
	side := func(m *manifest.Manifest) Side {
		s := m.Stats()
		return Side{Name: m.Name, Channel: m.Channel, Revision: m.Revision, Size: m.Size, Digest: m.Digest,
			Chunks: len(m.Chunks), UniqueBytes: s.UniqueBytes, ZeroBytes: s.ZeroBytes}
	}
	d := &Diff{Old: side(old), New: side(new), FetchExact: stored != nil}
	oldIdx := old.ChunkIndex()
	newIdx := new.ChunkIndex()
	for _, c := range new.Chunks {
		if _, ok := oldIdx[c.ID]; ok {
			d.SharedChunks++
			d.SharedBytes += int64(c.Size)
			continue
		}
		d.NewChunks++
		d.NewBytes += int64(c.Size)
		if stored != nil {
			if n, ok := stored(c.ID); ok {
				d.FetchBytes += n
				continue
			}
			d.FetchExact = false
		}
		d.FetchBytes += int64(c.Size)
	}
	for _, c := range new.Chunks {
		n := int64(c.Size)
		if stored != nil {
			if k, ok := stored(c.ID); ok {
				n = k
			}
		}
		d.FullBytes += n
	}
	for _, c := range old.Chunks {
		if _, ok := newIdx[c.ID]; !ok {
			d.RemovedChunks++
			d.RemovedBytes += int64(c.Size)
		}
	}
	at := map[int64]chunkstore.ID{}
	old.Walk(func(off, size int64, c int) bool {
		if c >= 0 {
			at[off] = old.Chunks[c].ID
		}
		return true
	})
	new.Walk(func(off, size int64, c int) bool {
		kind := RegionZero
		if c >= 0 {
			id := new.Chunks[c].ID
			switch {
			case at[off] == id:
				kind = RegionSame
			case hasID(oldIdx, id):
				kind = RegionMoved
			default:
				kind = RegionNew
			}
		}
		if kind == RegionMoved || kind == RegionNew {
			d.ChangedBytes += size
		}
		if k := len(d.Regions) - 1; k >= 0 && d.Regions[k].Kind == kind {
			d.Regions[k].Size += size
		} else {
			d.Regions = append(d.Regions, Region{Offset: off, Size: size, Kind: kind})
		}
		return true
	})
	if old.Kind == manifest.KindBundle && new.Kind == manifest.KindBundle {
		var oldR, newR io.ReaderAt
		if chunks != nil {
			oldR, newR = StoreReader(ctx, chunks, old), StoreReader(ctx, chunks, new)
		}
		d.Files, _ = CompareFiles(old, new, oldR, newR)
	}
	return d
}

func hasID(m map[chunkstore.ID]int, id chunkstore.ID) bool { _, ok := m[id]; return ok }

// Changed returns the regions that are not the same as in the old release
// and not zero.
func (d *Diff) Changed() []Region {
	var out []Region
	for _, r := range d.Regions {
		if r.Kind == RegionNew || r.Kind == RegionMoved {
			out = append(out, r)
		}
	}
	return out
}
