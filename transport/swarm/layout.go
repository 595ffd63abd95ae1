// Package swarm distributes releases over standard BitTorrent (v1
// metainfo, anacrolix/torrent): one torrent per release whose first file
// is the signed manifest and whose other files are the release's chunks,
// named by ID and holding their stored (compressed) bytes. A storage
// backend over the chunk store reports chunks already held as complete,
// stages downloaded pieces and admits a chunk into the store only after its
// BLAKE3 matches. docs/decisions/0004-torrent-layout.md explains the layout.
package swarm

import (
	"crypto/sha1"
	"fmt"
	"runtime"
	"slices"
	"sort"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	"golang.org/x/sync/errgroup"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
)

// ManifestFile is the name of a release torrent's first file.
const ManifestFile = manifest.TorrentManifestFile

// DefaultPieceLength is the piece size of release torrents. Pieces span
// chunk boundaries, and a piece shared with a chunk the terminal holds is
// downloaded whole, but with the newest chunks first a terminal on the
// previous release downloads +0.05 % at 32 KiB (as at 16 KiB; +0.12 % at
// 64 KiB). anacrolix's cost grows with the number of pieces (20 terminals
// on two cores: 5.1–5.7 s at 32 KiB against 6.4–7.6 s at 16 KiB), and the
// origin sends more duplicates as pieces grow (5 terminals straight from a
// 1 MB/s origin: 1.12 deltas at 16 KiB, 1.37 at 32, 1.55 at 64);
// decisions/0004.
const DefaultPieceLength = 32 << 10

// Entry is one chunk file of a release torrent.
type Entry struct {
	ID     chunkstore.ID
	Stored int64 // stored (compressed) bytes: the file's length
}

// Layout maps a release torrent's byte stream to its files: file 0 is the
// signed manifest, file i > 0 is Chunks[i-1]. Files follow each other with
// no padding, so pieces may span files.
type Layout struct {
	Name        string
	PieceLength int64
	Chunks      []Entry
	offs        []int64 // start of every file, then the total length
}

// NewLayout lays out a manifest of manifestLen bytes and chunks.
func NewLayout(name string, manifestLen int64, chunks []Entry, pieceLength int64) *Layout {
	l := &Layout{Name: name, PieceLength: pieceLength, Chunks: chunks, offs: make([]int64, 0, len(chunks)+2)}
	off := int64(0)
	l.offs = append(l.offs, off)
	off += manifestLen
	for _, c := range chunks {
		l.offs = append(l.offs, off)
		off += c.Stored
	}
	l.offs = append(l.offs, off)
	return l
}

// Files is the number of files (chunks + 1).
func (l *Layout) Files() int { return len(l.offs) - 1 }

// Total is the torrent's length in bytes.
func (l *Layout) Total() int64 { return l.offs[len(l.offs)-1] }

// NumPieces is the number of pieces.
func (l *Layout) NumPieces() int { return int((l.Total() + l.PieceLength - 1) / l.PieceLength) }

// FileRange returns where file f lies in the torrent.
func (l *Layout) FileRange(f int) (off, n int64) { return l.offs[f], l.offs[f+1] - l.offs[f] }

// PieceRange returns where piece p lies in the torrent.
func (l *Layout) PieceRange(p int) (off, n int64) {
	off = int64(p) * l.PieceLength
	return off, min(l.PieceLength, l.Total()-off)
}

// fileAt returns the file holding byte off (off < Total), skipping empty
// files.
func (l *Layout) fileAt(off int64) int {
	return sort.Search(l.Files(), func(f int) bool { return l.offs[f+1] > off })
}

// FilesOf returns the files piece p touches, [first, last].
func (l *Layout) FilesOf(p int) (first, last int) {
	off, n := l.PieceRange(p)
	return l.fileAt(off), l.fileAt(off + n - 1)
}

// PiecesOf returns the pieces file f touches, [first, last]; an empty file
// touches none (last < first).
func (l *Layout) PiecesOf(f int) (first, last int) {
	off, n := l.FileRange(f)
	if n == 0 {
		return 0, -1
	}
	return int(off / l.PieceLength), int((off + n - 1) / l.PieceLength)
}

// ReadFile returns the whole content of file f.
type ReadFile func(f int) ([]byte, error)

// readAt fills p with the torrent's bytes at off, file by file.
func (l *Layout) readAt(read ReadFile, p []byte, off int64) error {
	for len(p) > 0 {
		f := l.fileAt(off)
		if f >= l.Files() {
			return fmt.Errorf("read past the end of the torrent at %d", off)
		}
		b, err := read(f)
		if err != nil {
			return err
		}
		start, n := l.FileRange(f)
		if int64(len(b)) != n {
			return fmt.Errorf("file %d has %d bytes, the torrent says %d", f, len(b), n)
		}
		k := copy(p, b[off-start:])
		p, off = p[k:], off+int64(k)
	}
	return nil
}

// Info hashes the pieces (SHA-1, on all cores) and returns the v1 info
// dictionary and its bencoded bytes.
func (l *Layout) Info(read ReadFile) (*metainfo.Info, []byte, error) {
	np := l.NumPieces()
	pieces := make([]byte, 20*np)
	workers := runtime.GOMAXPROCS(0)
	per := (np + workers - 1) / max(workers, 1)
	var g errgroup.Group
	for w := 0; w < workers && w*per < np; w++ {
		g.Go(func() error {
			// One file cached: consecutive pieces mostly share it.
			cf, cb := -1, []byte(nil)
			cached := func(f int) ([]byte, error) {
				if f != cf {
					b, err := read(f)
					if err != nil {
						return nil, err
					}
					cf, cb = f, b
				}
				return cb, nil
			}
			buf := make([]byte, l.PieceLength)
			for p := w * per; p < min(np, (w+1)*per); p++ {
				off, n := l.PieceRange(p)
				if err := l.readAt(cached, buf[:n], off); err != nil {
					return err
				}
				h := sha1.Sum(buf[:n])
				copy(pieces[20*p:], h[:])
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	return l.info(pieces)
}

// info returns the info dictionary of l with the given piece hashes, and
// its bencoded bytes: the one shape both publishing and ExpandTorrent
// produce, so that a rebuilt info hashes to the published infohash.
func (l *Layout) info(pieces []byte) (*metainfo.Info, []byte, error) {
	info := &metainfo.Info{Name: l.Name, PieceLength: l.PieceLength, Pieces: pieces,
		Files: make([]metainfo.FileInfo, 0, l.Files())}
	info.Files = append(info.Files, metainfo.FileInfo{Length: l.offs[1], Path: []string{ManifestFile}})
	for _, c := range l.Chunks {
		info.Files = append(info.Files, metainfo.FileInfo{Length: c.Stored, Path: []string{c.ID.String()}})
	}
	b, err := bencode.Marshal(info)
	if err != nil {
		return nil, nil, err
	}
	return info, b, nil
}

// LayoutFromInfo reads a release torrent's layout back from its info
// dictionary, refusing any other shape: the first file must be the
// manifest, every other file a chunk named by its ID, at most once, no
// larger than the largest stored chunk, and the piece count must match.
func LayoutFromInfo(info *metainfo.Info) (*Layout, error) {
	if info.HasV2() && !info.HasV1() {
		return nil, fmt.Errorf("torrent %q: v2-only torrents are not supported", info.Name)
	}
	if info.PieceLength <= 0 || len(info.Files) == 0 {
		return nil, fmt.Errorf("torrent %q is not an imgctl release torrent (no files)", info.Name)
	}
	if len(info.Files[0].Path) != 1 || info.Files[0].Path[0] != ManifestFile {
		return nil, fmt.Errorf("torrent %q is not an imgctl release torrent (first file %v)", info.Name, info.Files[0].Path)
	}
	if info.Files[0].Length <= 0 || info.Files[0].Length > manifest.MaxEnvelope {
		return nil, fmt.Errorf("torrent %q: manifest file of %d bytes", info.Name, info.Files[0].Length)
	}
	seen := make(map[chunkstore.ID]bool, len(info.Files))
	chunks := make([]Entry, 0, len(info.Files)-1)
	maxStored := int64(chunkstore.MaxStoredSize(chunkstore.MaxChunkSize))
	for _, fi := range info.Files[1:] {
		if len(fi.Path) != 1 {
			return nil, fmt.Errorf("torrent %q: file %v is not a chunk", info.Name, fi.Path)
		}
		id, err := chunkstore.ParseID(fi.Path[0])
		if err != nil || seen[id] {
			return nil, fmt.Errorf("torrent %q: file %q is not a chunk ID or repeats one", info.Name, fi.Path[0])
		}
		if fi.Length <= 0 || fi.Length > maxStored {
			return nil, fmt.Errorf("torrent %q: chunk %s of %d bytes", info.Name, id.Short(), fi.Length)
		}
		seen[id] = true
		chunks = append(chunks, Entry{ID: id, Stored: fi.Length})
	}
	l := NewLayout(info.Name, info.Files[0].Length, chunks, info.PieceLength)
	if len(info.Pieces) != 20*l.NumPieces() {
		return nil, fmt.Errorf("torrent %q: %d piece hashes for %d pieces", info.Name, len(info.Pieces)/20, l.NumPieces())
	}
	return l, nil
}

// Order returns m's chunks in torrent order: first the chunks the previous
// revision lacks, then those only the one before lacks, and so on, each
// group in order of first appearance in m. prev holds the earlier
// revisions newest first (nil entries are skipped). A terminal on a
// recent revision then needs a prefix of the torrent: what it downloads is
// contiguous, and pieces that span chunks it holds are few
// (decisions/0004).
func Order(m *manifest.Manifest, prev []*manifest.Manifest) []int {
	age := make([]int, len(m.Chunks))
	alive := make([]bool, len(m.Chunks))
	for i := range alive {
		alive[i] = true
	}
	for _, p := range prev {
		if p == nil {
			continue
		}
		have := make(map[chunkstore.ID]bool, len(p.Chunks))
		for _, c := range p.Chunks {
			have[c.ID] = true
		}
		for i, c := range m.Chunks {
			if alive[i] && have[c.ID] {
				age[i]++
			} else {
				alive[i] = false
			}
		}
	}
	order := make([]int, len(m.Chunks))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return age[a] - age[b] })
	return order
}

// ParseInfo lays out a release torrent from its bencoded info.
func ParseInfo(infoBytes []byte) (*Layout, error) {
	_, l, err := parseInfo(infoBytes)
	return l, err
}

// parseInfo decodes a release torrent's info bytes and lays them out.
func parseInfo(infoBytes []byte) (*metainfo.Info, *Layout, error) {
	info, err := (&metainfo.MetaInfo{InfoBytes: infoBytes}).UnmarshalInfo()
	if err != nil {
		return nil, nil, fmt.Errorf("torrent info: %w", err)
	}
	l, err := LayoutFromInfo(&info)
	return &info, l, err
}

// FetchCost returns what a node holding the files held says yes to must
// download to complete the others: the missing files' bytes, and the bytes
// of every piece touching them (pieces span files, so a piece shared with
// a held file is downloaded whole).
func (l *Layout) FetchCost(held func(f int) bool) (missing, download int64) {
	need := make([]bool, l.NumPieces())
	for f := 0; f < l.Files(); f++ {
		if held(f) {
			continue
		}
		_, n := l.FileRange(f)
		missing += n
		a, z := l.PiecesOf(f)
		for p := a; p <= z; p++ {
			need[p] = true
		}
	}
	for p, ok := range need {
		if ok {
			_, n := l.PieceRange(p)
			download += n
		}
	}
	return missing, download
}
