package manifest

import (
	"encoding/binary"
	"fmt"
	"path"
	"sort"
	"strings"
	"unicode/utf8"
)

// A bundle (KindBundle) is a directory tree. Its content — what the chunk
// table and layout describe, and what Digest hashes — is the concatenation
// of the regular files' bytes in file-table order; hard links add nothing.
// The file table (extension ExtFileTable) says where each file's bytes
// lie in that content and everything else about the tree.

// FileType is the type of one file-table entry.
type FileType uint8

// File types. Device nodes, FIFOs and sockets are not representable: a
// bundle with one is refused at publish.
const (
	TypeRegular  FileType = 1
	TypeDir      FileType = 2
	TypeSymlink  FileType = 3
	TypeHardlink FileType = 4 // another name of an earlier regular file (Target)
)

func (t FileType) String() string {
	switch t {
	case TypeRegular:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	case TypeHardlink:
		return "hardlink"
	}
	return fmt.Sprintf("type(%d)", t)
}

// File is one entry of a bundle's file table.
type File struct {
	Path  string   // relative, slash-separated, clean; never "", ".", absolute or with ".."
	Type  FileType //
	Mode  uint32   // permission and setuid/setgid/sticky bits (07777)
	UID   uint32
	GID   uint32
	MTime int64  // nanoseconds since the Unix epoch
	Size  int64  // regular files: bytes of content
	Link  string // symlink: target; hardlink: Path of the regular file it names
	// Offset is where a regular file's bytes start in the content; implied
	// by the order (filled in by FileTable and SetFileTable).
	Offset int64
}

// Segment rule of the file table: which file starts a new chunker segment
// (see chunkstore.IngestOptions.Segments). Recorded so that a future rule
// can be told apart; a terminal does not need it to assemble.
const (
	// SegmentsLargeFiles: every regular file of at least the chunker's
	// MinSize starts a segment, and so does the first smaller file after
	// one. Small files are chunked together; large ones on their own.
	SegmentsLargeFiles uint8 = 1
)

const (
	fileTableVersion = 1
	maxFiles         = 1 << 21
	maxPathLen       = 4096
	maxPathDepth     = 256
)

// Bundle flags (ExtBundleFlags).
const (
	// FlagMandatory: terminals apply the release even when an operator
	// holds the bundle back.
	FlagMandatory uint64 = 1 << 0
)

// ExtBundleFlags carries release flags (optional: a decoder that does not
// know it ignores them).
const ExtBundleFlags uint64 = 6

// Mandatory reports whether the release is marked mandatory.
func (m *Manifest) Mandatory() bool {
	b := m.Ext[ExtBundleFlags]
	v, n := binary.Uvarint(b)
	return n > 0 && v&FlagMandatory != 0
}

// SetMandatory marks the release mandatory (or not).
func (m *Manifest) SetMandatory(on bool) {
	if !on {
		delete(m.Ext, ExtBundleFlags)
		return
	}
	if m.Ext == nil {
		m.Ext = map[uint64][]byte{}
	}
	m.Ext[ExtBundleFlags] = binary.AppendUvarint(nil, FlagMandatory)
}

// SegmentStarts returns the content offsets where rule
// SegmentsLargeFiles starts a chunker segment, for regular files of files
// in order (the first is always 0 when there is content).
func SegmentStarts(files []File, minSize uint32) []int64 {
	var out []int64
	prevLarge := true
	for _, f := range files {
		if f.Type != TypeRegular || f.Size == 0 {
			continue
		}
		large := f.Size >= int64(minSize)
		if large || prevLarge {
			out = append(out, f.Offset)
		}
		prevLarge = large
	}
	return out
}

// SetFileTable encodes files into m (kind bundle), filling in their
// offsets, and returns the content size they imply. files must be in
// table order (see ValidateFiles).
func (m *Manifest) SetFileTable(files []File) (int64, error) {
	size, err := ValidateFiles(files)
	if err != nil {
		return 0, err
	}
	b := []byte{fileTableVersion, SegmentsLargeFiles}
	b = binary.AppendUvarint(b, uint64(len(files)))
	prev := ""
	for _, f := range files {
		common := 0
		for common < len(prev) && common < len(f.Path) && prev[common] == f.Path[common] {
			common++
		}
		b = binary.AppendUvarint(b, uint64(common))
		b = binary.AppendUvarint(b, uint64(len(f.Path)-common))
		b = append(b, f.Path[common:]...)
		b = append(b, byte(f.Type))
		b = binary.AppendUvarint(b, uint64(f.Mode))
		b = binary.AppendUvarint(b, uint64(f.UID))
		b = binary.AppendUvarint(b, uint64(f.GID))
		b = binary.AppendVarint(b, f.MTime)
		switch f.Type {
		case TypeRegular:
			b = binary.AppendUvarint(b, uint64(f.Size))
		case TypeSymlink, TypeHardlink:
			b = binary.AppendUvarint(b, uint64(len(f.Link)))
			b = append(b, f.Link...)
		}
		prev = f.Path
	}
	if m.Ext == nil {
		m.Ext = map[uint64][]byte{}
	}
	m.Ext[ExtFileTable] = b
	return size, nil
}

// FileTable decodes and validates m's file table (nil for an image).
func (m *Manifest) FileTable() ([]File, error) {
	b, ok := m.Ext[ExtFileTable]
	if !ok {
		if m.Kind == KindBundle {
			return nil, malformed("bundle without a file table")
		}
		return nil, nil
	}
	d := &decoder{b: b}
	if v := d.u8(); d.err == nil && v != fileTableVersion {
		return nil, malformed("file table: unknown version %d", v)
	}
	if r := d.u8(); d.err == nil && r != SegmentsLargeFiles {
		return nil, malformed("file table: unknown segment rule %d", r)
	}
	n := d.uint(maxFiles, "file count")
	if d.err == nil && n > uint64(len(b)) { // every entry takes bytes
		d.fail("file count %d exceeds the record", n)
	}
	files := make([]File, 0, n)
	prev := ""
	for i := uint64(0); i < n && d.err == nil; i++ {
		common := d.uint(uint64(len(prev)), "shared path prefix")
		suffix := d.bytes(maxPathLen)
		f := File{Path: prev[:common] + string(suffix)}
		f.Type = FileType(d.u8())
		f.Mode = uint32(d.uint(07777, "mode"))
		f.UID = uint32(d.uint(1<<32-1, "uid"))
		f.GID = uint32(d.uint(1<<32-1, "gid"))
		f.MTime = d.varint()
		switch f.Type {
		case TypeRegular:
			f.Size = int64(d.uint(1<<62, "file size"))
		case TypeSymlink, TypeHardlink:
			f.Link = string(d.bytes(maxPathLen))
		case TypeDir:
		default:
			d.fail("file %q: unknown type %d", f.Path, f.Type)
		}
		files = append(files, f)
		prev = f.Path
	}
	if d.err == nil && d.off != len(b) {
		d.fail("%d trailing bytes", len(b)-d.off)
	}
	if d.err != nil {
		return nil, malformed("file table: %v", d.err)
	}
	size, err := ValidateFiles(files)
	if err != nil {
		return nil, malformed("%v", err)
	}
	if size != m.Size {
		return nil, malformed("file table: files hold %d bytes, manifest declares %d", size, m.Size)
	}
	// Re-encoding must give the same bytes (one encoding per table).
	var check Manifest
	if _, err := check.SetFileTable(files); err != nil || string(check.Ext[ExtFileTable]) != string(b) {
		return nil, malformed("file table: not in canonical form")
	}
	return files, nil
}

// ValidPath reports whether p is a path a bundle may hold: relative,
// slash-separated, clean, UTF-8, without "." or ".." elements.
func ValidPath(p string) bool {
	if p == "" || len(p) > maxPathLen || !utf8.ValidString(p) || strings.HasPrefix(p, "/") ||
		path.Clean(p) != p || strings.ContainsRune(p, 0) {
		return false
	}
	for _, e := range strings.Split(p, "/") {
		if e == "." || e == ".." {
			return false
		}
	}
	return strings.Count(p, "/") < maxPathDepth
}

// pathLess orders paths so that every directory comes right before its
// contents: element by element, like a depth-first walk.
func pathLess(a, b string) bool {
	return strings.ReplaceAll(a, "/", "\x00") < strings.ReplaceAll(b, "/", "\x00")
}

// SortFiles puts files into table order.
func SortFiles(files []File) {
	keys := make([]string, len(files))
	idx := make([]int, len(files))
	for i := range files {
		keys[i] = strings.ReplaceAll(files[i].Path, "/", "\x00")
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return keys[idx[a]] < keys[idx[b]] })
	out := make([]File, len(files))
	for i, k := range idx {
		out[i] = files[k]
	}
	copy(files, out)
}

// ValidateFiles checks a file table and fills in the offsets of regular
// files; it returns the content size. The rules keep every entry inside the
// bundle's root: paths valid and in table order without duplicates, every
// parent a directory listed before its entries, symlink targets relative and
// resolving inside the root, hard links naming an earlier regular file.
func ValidateFiles(files []File) (int64, error) {
	bad := func(f string, a ...any) error { return fmt.Errorf("file table: "+f, a...) }
	if len(files) > maxFiles {
		return 0, bad("%d files exceed %d", len(files), maxFiles)
	}
	types := make(map[string]FileType, len(files))
	var off int64
	for i := range files {
		f := &files[i]
		if !ValidPath(f.Path) {
			return 0, bad("invalid path %q", f.Path)
		}
		if i > 0 && !pathLess(files[i-1].Path, f.Path) {
			return 0, bad("%q after %q: not in order or duplicate", f.Path, files[i-1].Path)
		}
		if dir := path.Dir(f.Path); dir != "." && types[dir] != TypeDir {
			return 0, bad("%q: parent %q is not a directory of the bundle", f.Path, dir)
		}
		if f.Mode > 07777 {
			return 0, bad("%q: mode %o", f.Path, f.Mode)
		}
		switch f.Type {
		case TypeRegular:
			if f.Size < 0 || f.Link != "" {
				return 0, bad("%q: bad regular file", f.Path)
			}
			f.Offset = off
			off += f.Size
			if off < 0 {
				return 0, bad("size overflow")
			}
		case TypeDir:
			if f.Size != 0 || f.Link != "" {
				return 0, bad("%q: bad directory", f.Path)
			}
		case TypeSymlink:
			if f.Size != 0 || f.Link == "" || len(f.Link) > maxPathLen || strings.ContainsRune(f.Link, 0) {
				return 0, bad("%q: bad symlink", f.Path)
			}
			if path.IsAbs(f.Link) {
				return 0, bad("%q: symlink to absolute path %q points outside the bundle", f.Path, f.Link)
			}
			if !symlinkInside(f.Path, f.Link) {
				return 0, bad("%q: symlink to %q points outside the bundle", f.Path, f.Link)
			}
		case TypeHardlink:
			if f.Size != 0 || types[f.Link] != TypeRegular {
				return 0, bad("%q: hard link to %q, which is not an earlier regular file of the bundle", f.Path, f.Link)
			}
		default:
			return 0, bad("%q: unsupported type %d", f.Path, f.Type)
		}
		if f.Type != TypeRegular {
			f.Offset = 0
		}
		types[f.Path] = f.Type
	}
	return off, nil
}

// symlinkInside reports whether a symlink at p with target link resolves
// inside the bundle whatever the other symlinks are: the target must be
// some ".." elements, then only names (no ".." after a name, where a
// symlinked directory would make ".." leave the tree), and the ".." must not
// climb above the root from p's directory. Parents of p are real
// directories (ValidateFiles), so the climb is exact.
func symlinkInside(p, link string) bool {
	up, named := 0, false
	for _, e := range strings.Split(link, "/") {
		switch e {
		case "", ".":
		case "..":
			if named {
				return false
			}
			up++
		default:
			named = true
		}
	}
	return up <= strings.Count(p, "/")
}
