package manifest

import (
	"encoding/hex"
	"fmt"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
)

// View is the JSON form of a manifest (imgctl manifest show --json).
type View struct {
	ID          chunkstore.ID     `json:"id"`
	Format      int               `json:"format_version"`
	Kind        string            `json:"kind"`
	Name        string            `json:"name"`
	Channel     string            `json:"channel"`
	Revision    uint64            `json:"revision"`
	Created     time.Time         `json:"created"`
	Expires     *time.Time        `json:"expires,omitempty"`
	Chunker     ChunkerView       `json:"chunker"`
	Compression string            `json:"compression"`
	Size        int64             `json:"size"`
	Digest      chunkstore.ID     `json:"blake3"`
	Stats       StatsView         `json:"stats"`
	Signers     []string          `json:"signed_by,omitempty"`
	Hints       map[string]string `json:"hints,omitempty"`
	Torrents    []TorrentView     `json:"torrents,omitempty"`
	Mandatory   bool              `json:"mandatory,omitempty"`
	Tree        *TreeView         `json:"tree,omitempty"`
	Chunks      []ChunkRef        `json:"chunks,omitempty"`
	Layout      []Run             `json:"layout,omitempty"`
	Files       []FileView        `json:"files,omitempty"`
}

// TorrentView is the JSON form of a torrent record.
type TorrentView struct {
	InfoHash   string        `json:"infohash"`
	InfoSize   int           `json:"info_bytes"`
	InfoDigest chunkstore.ID `json:"info_blake3"`
}

// ChunkerView is the JSON form of chunker parameters.
type ChunkerView struct {
	Algorithm  string `json:"algorithm"`
	Polynomial uint64 `json:"polynomial"`
	MinSize    uint32 `json:"min_size"`
	AvgSize    uint32 `json:"avg_size"`
	MaxSize    uint32 `json:"max_size"`
	ZeroBlock  uint32 `json:"zero_block"`
	ZeroMin    uint32 `json:"zero_min"`
}

// StatsView is the JSON form of Stats.
type StatsView struct {
	Chunks      int   `json:"chunks"`
	Extents     int   `json:"extents"`
	Runs        int   `json:"runs"`
	DataBytes   int64 `json:"data_bytes"`
	UniqueBytes int64 `json:"unique_bytes"`
	ZeroBytes   int64 `json:"zero_bytes"`
	ZeroExtents int   `json:"zero_extents"`
}

// TreeView counts a bundle's file table.
type TreeView struct {
	Files     int `json:"files"`
	Dirs      int `json:"dirs"`
	Symlinks  int `json:"symlinks"`
	Hardlinks int `json:"hardlinks"`
}

// FileView is one file-table entry.
type FileView struct {
	Path   string `json:"path"`
	Type   string `json:"type"`
	Mode   string `json:"mode"`
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
	Size   int64  `json:"size,omitempty"`
	Offset int64  `json:"offset,omitempty"`
	MTime  string `json:"mtime"`
	Link   string `json:"link,omitempty"`
}

// NewView builds the JSON view of the envelope env holding m. With full,
// the chunk table and layout are included.
func NewView(env []byte, m *Manifest, full bool) View {
	id, _ := ID(env)
	signers, _ := Signers(env)
	s := m.Stats()
	v := View{
		ID: id, Format: FormatVersion, Kind: m.Kind.String(), Name: m.Name, Channel: m.Channel,
		Revision: m.Revision, Created: m.Created, Size: m.Size, Digest: m.Digest, Hints: m.Hints,
		Compression: "zstd",
		Chunker: ChunkerView{Algorithm: "rabin", Polynomial: m.Chunker.Polynomial, MinSize: m.Chunker.MinSize,
			AvgSize: 1 << m.Chunker.AvgBits, MaxSize: m.Chunker.MaxSize, ZeroBlock: m.Chunker.ZeroBlock, ZeroMin: m.Chunker.ZeroMin},
		Stats: StatsView{Chunks: len(m.Chunks), Extents: s.Extents, Runs: len(m.Runs), DataBytes: s.DataBytes,
			UniqueBytes: s.UniqueBytes, ZeroBytes: s.ZeroBytes, ZeroExtents: s.ZeroExtents},
	}
	if !m.Expires.IsZero() {
		e := m.Expires
		v.Expires = &e
	}
	refs, _ := m.Torrents()
	for _, r := range refs {
		v.Torrents = append(v.Torrents, TorrentView{InfoHash: hex.EncodeToString(r.InfoHash[:]), InfoSize: r.InfoSize, InfoDigest: r.InfoDigest})
	}
	for _, k := range signers {
		v.Signers = append(v.Signers, k.String())
	}
	v.Mandatory = m.Mandatory()
	files, _ := m.FileTable()
	if files != nil {
		v.Tree = &TreeView{}
	}
	for _, f := range files {
		switch f.Type {
		case TypeRegular:
			v.Tree.Files++
		case TypeDir:
			v.Tree.Dirs++
		case TypeSymlink:
			v.Tree.Symlinks++
		case TypeHardlink:
			v.Tree.Hardlinks++
		}
		if full {
			v.Files = append(v.Files, FileView{Path: f.Path, Type: f.Type.String(), Mode: fmt.Sprintf("%04o", f.Mode),
				UID: f.UID, GID: f.GID, Size: f.Size, Offset: f.Offset, Link: f.Link,
				MTime: time.Unix(0, f.MTime).UTC().Format(time.RFC3339Nano)})
		}
	}
	if full {
		v.Chunks = m.Chunks
		v.Layout = m.Runs
	}
	return v
}
