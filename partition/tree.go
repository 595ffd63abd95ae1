package partition

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/imgctl/imgctl/manifest"
	"golang.org/x/sys/unix"
)

// ScanOptions normalise a scanned file table (Apply).
type ScanOptions struct {
	// MTime, when set, replaces every timestamp (reproducible publishes,
	// like SOURCE_DATE_EPOCH). Timestamps live in the file table, not in
	// the chunked content, so they never cost chunk reuse; they only make
	// two publishes of one tree differ.
	MTime *time.Time
	// Owner, when set, replaces every uid/gid (trees built by a CI user
	// that terminals install as root:root).
	Owner *[2]uint32
}

// Apply returns files with the options applied (files is not changed).
func (o ScanOptions) Apply(files []manifest.File) []manifest.File {
	out := append([]manifest.File(nil), files...)
	for i := range out {
		if o.MTime != nil {
			out[i].MTime = o.MTime.UnixNano()
		}
		if o.Owner != nil {
			out[i].UID, out[i].GID = o.Owner[0], o.Owner[1]
		}
	}
	return out
}

// ScanTree walks the directory tree at root and returns its file table in
// table order, as the tree is (ScanOptions.Apply normalises it). It refuses what a bundle cannot hold or must not hold:
// device nodes, FIFOs, sockets, symlinks that point outside the tree, and
// hard links to files outside it (a link count the tree does not account
// for is allowed: the file is then a plain file).
func ScanTree(root string) ([]manifest.File, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s: not a directory", root)
	}
	var files []manifest.File
	inodes := map[string][2]uint64{} // path → (dev, ino) of regular files with nlink > 1
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if !manifest.ValidPath(rel) {
			return fmt.Errorf("%s: a path a bundle cannot hold", p)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		sys, _ := info.Sys().(*syscall.Stat_t)
		if sys == nil {
			return fmt.Errorf("%s: no file status", p)
		}
		f := manifest.File{Path: rel, Mode: unixMode(info.Mode()), UID: sys.Uid, GID: sys.Gid,
			MTime: time.Unix(sys.Mtim.Sec, sys.Mtim.Nsec).UnixNano()}
		switch m := info.Mode(); {
		case m.IsRegular():
			f.Type, f.Size = manifest.TypeRegular, info.Size()
			if sys.Nlink > 1 {
				inodes[rel] = [2]uint64{uint64(sys.Dev), sys.Ino}
			}
		case m.IsDir():
			f.Type = manifest.TypeDir
		case m&fs.ModeSymlink != 0:
			f.Type, f.Mode = manifest.TypeSymlink, 0777
			if f.Link, err = os.Readlink(p); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: %s files cannot be in a bundle (only files, directories and symlinks)", p, typeName(m))
		}
		files = append(files, f)
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Hard links: the first name in table order holds the content, the
	// others name it.
	manifest.SortFiles(files)
	first := map[[2]uint64]string{}
	for i := range files {
		k, ok := inodes[files[i].Path]
		if !ok {
			continue
		}
		if p, seen := first[k]; seen {
			files[i].Type, files[i].Link, files[i].Size = manifest.TypeHardlink, p, 0
		} else {
			first[k] = files[i].Path
		}
	}
	if _, err := manifest.ValidateFiles(files); err != nil {
		return nil, fmt.Errorf("%s: %w", root, err)
	}
	return files, nil
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeDevice != 0:
		return "device"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special"
}

// unixMode returns the permission and setuid/setgid/sticky bits of m in
// their Unix encoding (07777).
func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 04000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 02000
	}
	if m&fs.ModeSticky != 0 {
		u |= 01000
	}
	return u
}

// Tree is the content of a bundle (its regular files, concatenated in
// table order) as one io.ReaderAt / io.WriterAt over a directory: the seed
// an installed release offers, the source a publish reads, and the output a
// bundle is assembled into. Files are opened on demand (a bounded number at
// once) without following symlinks.
type Tree struct {
	root    string
	files   []manifest.File // regular files with content, by offset
	size    int64
	write   bool
	mu      sync.Mutex
	open    map[int]*handle
	maxOpen int
	closed  bool
}

type handle struct {
	f    *os.File
	refs int
}

// OpenTree reads (or, with write, writes) the content of the tree at root
// laid out by files.
func OpenTree(root string, files []manifest.File, write bool) *Tree {
	t := &Tree{root: root, write: write, open: map[int]*handle{}, maxOpen: 128}
	for _, f := range files {
		if f.Type == manifest.TypeRegular && f.Size > 0 {
			t.files = append(t.files, f)
			t.size = f.Offset + f.Size
		}
	}
	return t
}

// Size is the content size.
func (t *Tree) Size() int64 { return t.size }

func (t *Tree) get(i int) (*handle, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, os.ErrClosed
	}
	if h := t.open[i]; h != nil {
		h.refs++
		return h, nil
	}
	if len(t.open) >= t.maxOpen {
		for k, h := range t.open {
			if h.refs == 0 {
				h.f.Close()
				delete(t.open, k)
				break
			}
		}
	}
	flag := unix.O_RDONLY
	if t.write {
		flag = unix.O_RDWR
	}
	// unix.Open and os.NewFile: a regular file needs no poller, and
	// os.OpenFile's extra fcntl and epoll_ctl calls add up over 10k files.
	p := filepath.Join(t.root, filepath.FromSlash(t.files[i].Path))
	fd, err := unix.Open(p, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	h := &handle{f: f, refs: 1}
	t.open[i] = h
	return h, nil
}

func (t *Tree) put(h *handle) {
	t.mu.Lock()
	h.refs--
	t.mu.Unlock()
}

// find returns the index of the file holding content offset off.
func (t *Tree) find(off int64) int {
	return sort.Search(len(t.files), func(i int) bool { return t.files[i].Offset+t.files[i].Size > off })
}

func (t *Tree) do(p []byte, off int64, write bool) (int, error) {
	if off < 0 {
		return 0, errors.New("tree: negative offset")
	}
	n := 0
	for i := t.find(off); n < len(p); i++ {
		if i >= len(t.files) {
			if write {
				return n, fmt.Errorf("tree: write beyond the content (%d bytes)", t.size)
			}
			return n, io.EOF
		}
		f := t.files[i]
		in := off + int64(n) - f.Offset
		k := int(min(int64(len(p)-n), f.Size-in))
		h, err := t.get(i)
		if err != nil {
			return n, err
		}
		var m int
		if write {
			m, err = h.f.WriteAt(p[n:n+k], in)
		} else {
			m, err = h.f.ReadAt(p[n:n+k], in)
		}
		t.put(h)
		n += m
		if m < k {
			if err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("%s: shorter than its %d bytes in the file table", f.Path, f.Size)
			}
			return n, err
		}
	}
	return n, nil
}

// ReadAt reads content bytes.
func (t *Tree) ReadAt(p []byte, off int64) (int, error) { return t.do(p, off, false) }

// WriteAt writes content bytes (a tree opened for writing).
func (t *Tree) WriteAt(p []byte, off int64) (int, error) {
	if !t.write {
		return 0, errors.New("tree: opened read-only")
	}
	return t.do(p, off, true)
}

// Close closes every open file.
func (t *Tree) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var first error
	for k, h := range t.open {
		if err := h.f.Close(); err != nil && first == nil {
			first = err
		}
		delete(t.open, k)
	}
	t.closed = true
	return first
}

// CreateTree makes the skeleton of files under dir, which must not exist:
// directories (owner-only while the tree is written) and regular files of
// their final size, reading as zeros. Content goes in with OpenTree(dir,
// files, true); FinishTree then gives every entry its final form.
func CreateTree(ctx context.Context, dir string, files []manifest.File) error {
	if _, err := manifest.ValidateFiles(files); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0700); err != nil {
		return err
	}
	for i, f := range files {
		if i%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		switch f.Type {
		case manifest.TypeDir:
			if err := os.Mkdir(p, 0700); err != nil {
				return err
			}
		case manifest.TypeRegular:
			fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0600)
			if err != nil {
				return &os.PathError{Op: "create", Path: p, Err: err}
			}
			if f.Size > 0 {
				err = unix.Ftruncate(fd, f.Size)
			}
			if cerr := unix.Close(fd); err == nil {
				err = cerr
			}
			if err != nil {
				return &os.PathError{Op: "truncate", Path: p, Err: err}
			}
		}
	}
	return nil
}

// FinishTree completes a tree whose content is written and verified: hard
// links and symlinks, then modes, owners (when running as root) and
// timestamps, directories last and deepest first so that their timestamps
// stay. Nothing here follows a symlink.
func FinishTree(ctx context.Context, dir string, files []manifest.File) error {
	root := os.Geteuid() == 0
	abs := func(p string) string { return filepath.Join(dir, filepath.FromSlash(p)) }
	for _, f := range files {
		switch f.Type {
		case manifest.TypeHardlink:
			if err := os.Link(abs(f.Link), abs(f.Path)); err != nil {
				return err
			}
		case manifest.TypeSymlink:
			if err := os.Symlink(f.Link, abs(f.Path)); err != nil {
				return err
			}
		}
	}
	meta := func(f manifest.File) error {
		p := abs(f.Path)
		if root {
			if err := unix.Lchown(p, int(f.UID), int(f.GID)); err != nil {
				return fmt.Errorf("chown %s: %w", f.Path, err)
			}
		}
		if f.Type != manifest.TypeSymlink { // chown clears setuid: mode after owner
			if err := unix.Fchmodat(unix.AT_FDCWD, p, f.Mode, 0); err != nil {
				return fmt.Errorf("chmod %s: %w", f.Path, err)
			}
		}
		ts := unix.NsecToTimespec(f.MTime)
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	}
	for i, f := range files {
		if i%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		if f.Type == manifest.TypeRegular || f.Type == manifest.TypeSymlink {
			if err := meta(f); err != nil {
				return err
			}
		}
	}
	for i := len(files) - 1; i >= 0; i-- {
		if files[i].Type == manifest.TypeDir {
			if err := meta(files[i]); err != nil {
				return err
			}
		}
	}
	return os.Chmod(dir, 0755)
}

// SyncFS flushes the file system holding path (one syncfs(2), which is
// what `sync` costs, instead of one fsync per file of a tree).
func SyncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// CheckTree compares what is under dir with files, except the content of
// regular files (hash that through OpenTree): every entry present with its
// type, mode, size and link; hard links sharing their target's inode.
// It returns the first difference.
func CheckTree(ctx context.Context, dir string, files []manifest.File) error {
	abs := func(p string) string { return filepath.Join(dir, filepath.FromSlash(p)) }
	for i, f := range files {
		if i%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		st, err := os.Lstat(abs(f.Path))
		if err != nil {
			return err
		}
		m := st.Mode()
		switch f.Type {
		case manifest.TypeRegular, manifest.TypeHardlink:
			if !m.IsRegular() {
				return fmt.Errorf("%s: not a regular file", f.Path)
			}
			if f.Type == manifest.TypeHardlink {
				t, err := os.Lstat(abs(f.Link))
				if err != nil || !os.SameFile(st, t) {
					return fmt.Errorf("%s: not a hard link to %s", f.Path, f.Link)
				}
				continue
			}
			if st.Size() != f.Size {
				return fmt.Errorf("%s: %d bytes, want %d", f.Path, st.Size(), f.Size)
			}
		case manifest.TypeDir:
			if !m.IsDir() {
				return fmt.Errorf("%s: not a directory", f.Path)
			}
		case manifest.TypeSymlink:
			if m&fs.ModeSymlink == 0 {
				return fmt.Errorf("%s: not a symlink", f.Path)
			}
			if t, err := os.Readlink(abs(f.Path)); err != nil || t != f.Link {
				return fmt.Errorf("%s: symlink to %q, want %q", f.Path, t, f.Link)
			}
			continue
		}
		if got := unixMode(m); got != f.Mode {
			return fmt.Errorf("%s: mode %04o, want %04o", f.Path, got, f.Mode)
		}
	}
	return nil
}
