package delta

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
)

// FileChange is one entry of a bundle diff.
type FileChange struct {
	Path string `json:"path"`
	// Change: added, removed, changed (content or type), metadata (mode,
	// owner, timestamp or link target only).
	Change  string `json:"change"`
	Type    string `json:"type"`
	OldSize int64  `json:"old_size,omitempty"`
	NewSize int64  `json:"new_size,omitempty"`
	// NewBytes is the plain bytes of the file's content in chunks the old
	// release lacks: what fetching it costs before compression (chunks
	// shared by small files are counted by overlap).
	NewBytes int64  `json:"new_bytes,omitempty"`
	Detail   string `json:"detail,omitempty"`
}

// FileDiff is the file-level view of a diff between two bundles.
type FileDiff struct {
	Added        int          `json:"added"`
	AddedBytes   int64        `json:"added_bytes"`
	Removed      int          `json:"removed"`
	RemovedBytes int64        `json:"removed_bytes"`
	Changed      int          `json:"changed"`
	ChangedBytes int64        `json:"changed_bytes"` // new size of changed files
	Metadata     int          `json:"metadata_only"`
	Unchanged    int          `json:"unchanged"`
	Files        []FileChange `json:"files"` // by new bytes, then path
}

// CompareFiles explains what changed between two bundles, file by file. A
// file's content is unchanged when every chunk covering it in the new
// release sits in the old release at the same place of the same path. Small
// files share chunks, so a changed neighbour makes that test fail for an
// unchanged file: where it cannot decide, CompareFiles compares the bytes
// read from oldR and newR, the two releases' content (nil: it says it could
// not).
func CompareFiles(old, new *manifest.Manifest, oldR, newR io.ReaderAt) (*FileDiff, error) {
	of, err := old.FileTable()
	if err != nil {
		return nil, err
	}
	nf, err := new.FileTable()
	if err != nil {
		return nil, err
	}
	if of == nil || nf == nil {
		return nil, fmt.Errorf("not two bundles")
	}
	oldByPath := make(map[string]*manifest.File, len(of))
	for i := range of {
		oldByPath[of[i].Path] = &of[i]
	}
	// Where each old chunk first appears, and which old regular file holds
	// each old offset.
	oldAt := map[chunkstore.ID]int64{}
	old.Walk(func(off, size int64, c int) bool {
		if c >= 0 {
			if _, ok := oldAt[old.Chunks[c].ID]; !ok {
				oldAt[old.Chunks[c].ID] = off
			}
		}
		return true
	})
	// Extents of the new content, in order.
	type ext struct {
		off, size int64
		oldOff    int64 // -1: chunk the old release lacks; -2: zero extent
	}
	var exts []ext
	new.Walk(func(off, size int64, c int) bool {
		e := ext{off: off, size: size, oldOff: -2}
		if c >= 0 {
			e.oldOff = -1
			if o, ok := oldAt[new.Chunks[c].ID]; ok {
				e.oldOff = o
			}
		}
		exts = append(exts, e)
		return true
	})
	d := &FileDiff{}
	seen := map[string]bool{}
	for _, f := range nf {
		seen[f.Path] = true
		o := oldByPath[f.Path]
		fc := FileChange{Path: f.Path, Type: f.Type.String(), NewSize: f.Size}
		// Content comparison for regular files.
		same := true
		if f.Type == manifest.TypeRegular {
			i := sort.Search(len(exts), func(i int) bool { return exts[i].off+exts[i].size > f.Offset })
			for ; i < len(exts) && exts[i].off < f.Offset+f.Size; i++ {
				e := exts[i]
				lo, hi := max(e.off, f.Offset), min(e.off+e.size, f.Offset+f.Size)
				switch {
				case e.oldOff == -1:
					fc.NewBytes += hi - lo
					same = false
				case e.oldOff == -2:
					// zeros: same if the old file has zeros there too (not
					// tracked): count as a change only by position below
					if o == nil || o.Type != manifest.TypeRegular || o.Size != f.Size {
						same = false
					}
				default:
					// The chunk's bytes at lo must be the old file's bytes at
					// the same position within it.
					if o == nil || o.Type != manifest.TypeRegular || o.Size != f.Size || e.oldOff-e.off != o.Offset-f.Offset {
						same = false
					}
				}
			}
		}
		switch {
		case o == nil:
			fc.Change = "added"
			d.Added++
			d.AddedBytes += f.Size
		case o.Type != f.Type:
			fc.Change, fc.OldSize = "changed", o.Size
			fc.Detail = fmt.Sprintf("was a %s", o.Type)
			d.Changed++
			d.ChangedBytes += f.Size
		case f.Type == manifest.TypeRegular && !same && o.Size == f.Size && !ownSegment(f, new) && (oldR == nil || newR == nil):
			fc.Change, fc.OldSize = "changed", o.Size
			fc.Detail = "maybe: shares a changed chunk with other files; content not compared"
			d.Changed++
			d.ChangedBytes += f.Size
		case f.Type == manifest.TypeRegular && (o.Size != f.Size || !same && (ownSegment(f, new) && fc.NewBytes > 0 || !equalContent(oldR, newR, o, &f))):
			fc.Change, fc.OldSize = "changed", o.Size
			d.Changed++
			d.ChangedBytes += f.Size
		default:
			fc.OldSize = o.Size
			fc.Detail = metaDetail(o, &f)
			if fc.Detail == "" {
				d.Unchanged++
				continue
			}
			fc.Change = "metadata"
			d.Metadata++
		}
		d.Files = append(d.Files, fc)
	}
	for _, f := range of {
		if !seen[f.Path] {
			d.Removed++
			d.RemovedBytes += f.Size
			d.Files = append(d.Files, FileChange{Path: f.Path, Change: "removed", Type: f.Type.String(), OldSize: f.Size})
		}
	}
	sort.SliceStable(d.Files, func(a, b int) bool {
		if d.Files[a].NewBytes != d.Files[b].NewBytes {
			return d.Files[a].NewBytes > d.Files[b].NewBytes
		}
		return d.Files[a].Path < d.Files[b].Path
	})
	return d, nil
}

// ownSegment: the file is cut on its own (manifest.SegmentStarts), so a
// chunk covering it covers nothing else.
func ownSegment(f manifest.File, m *manifest.Manifest) bool {
	return f.Size >= int64(m.Chunker.MinSize)
}

// equalContent compares a file's bytes in two releases (false on error).
func equalContent(oldR, newR io.ReaderAt, o, n *manifest.File) bool {
	if oldR == nil || newR == nil || o.Size != n.Size {
		return false
	}
	a, b := make([]byte, o.Size), make([]byte, n.Size)
	if _, err := oldR.ReadAt(a, o.Offset); err != nil && err != io.EOF {
		return false
	}
	if _, err := newR.ReadAt(b, n.Offset); err != nil && err != io.EOF {
		return false
	}
	return bytes.Equal(a, b)
}

func metaDetail(o, n *manifest.File) string {
	s := ""
	add := func(f string, a ...any) {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf(f, a...)
	}
	if o.Mode != n.Mode {
		add("mode %04o→%04o", o.Mode, n.Mode)
	}
	if o.UID != n.UID || o.GID != n.GID {
		add("owner %d:%d→%d:%d", o.UID, o.GID, n.UID, n.GID)
	}
	if o.Link != n.Link {
		add("link %q→%q", o.Link, n.Link)
	}
	if o.MTime != n.MTime && n.Type != manifest.TypeDir {
		add("mtime")
	}
	return s
}

// StoreReader reads the content m describes from a store's chunks, as an
// io.ReaderAt (zero extents read as zeros).
func StoreReader(ctx context.Context, g chunkstore.Getter, m *manifest.Manifest) io.ReaderAt {
	r := &storeReader{ctx: ctx, g: g, m: m}
	m.Walk(func(off, size int64, c int) bool {
		r.exts = append(r.exts, extent{off, size, c})
		return true
	})
	return r
}

type extent struct {
	off, size int64
	chunk     int // -1: zeros
}

type storeReader struct {
	ctx  context.Context
	g    chunkstore.Getter
	m    *manifest.Manifest
	exts []extent
}

func (s *storeReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.m.Size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), s.m.Size-off)
	i := sort.Search(len(s.exts), func(i int) bool { return s.exts[i].off+s.exts[i].size > off })
	for ; i < len(s.exts) && s.exts[i].off < off+n; i++ {
		e := s.exts[i]
		lo, hi := max(e.off, off), min(e.off+e.size, off+n)
		if e.chunk < 0 {
			clear(p[lo-off : hi-off])
			continue
		}
		ch, err := s.g.Get(s.ctx, s.m.Chunks[e.chunk].ID)
		if err != nil {
			return 0, err
		}
		copy(p[lo-off:hi-off], ch.Plain()[lo-e.off:hi-e.off])
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}
