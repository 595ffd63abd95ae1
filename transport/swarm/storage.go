package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	g "github.com/anacrolix/generics"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
)

// Source reads the stored bytes of chunks a role holds: a chunk store
// (chunkstore.Local or Dir). ReadStoredChecked checks them against the
// store's own checksum, so that a damaged store does not send bad pieces.
type Source interface {
	ReadStoredChecked(id chunkstore.ID) ([]byte, int, error)
	Has(ctx context.Context, id chunkstore.ID) (bool, error)
}

// Storage is a storage.ClientImpl over a chunk store. Pieces whose chunks
// the store holds are complete and read from it; other pieces are staged
// in a sparse file per torrent (or in memory, up to a limit all torrents
// share: SetStagingMemory), and a chunk whose pieces have all passed their
// SHA-1 check is decoded, checked against its BLAKE3 ID and only then put
// into the store. Torrent data never reaches the store unchecked.
type Storage struct {
	src Source
	put chunkstore.Putter // nil: a seeder that never downloads
	// fill makes src hold a chunk (a branch cache's upstream); with it,
	// every piece is offered (Config.Fill).
	fill    func(ctx context.Context, ids []chunkstore.ID) error
	staging string
	log     *slog.Logger
	// memLimit bounds the bytes of pieces staged in memory, memUsed
	// counts them; beyond the limit pieces go to the staging file.
	memLimit int64
	memUsed  atomic.Int64

	mu       sync.Mutex
	torrents map[metainfo.Hash]*Torrent
}

// NewStorage returns a storage over src; downloaded chunks go to put
// (nil for a seeder) and are staged under dir.
func NewStorage(src Source, put chunkstore.Putter, dir string, log *slog.Logger) *Storage {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Storage{src: src, put: put, staging: dir, log: log, torrents: map[metainfo.Hash]*Torrent{}}
}

// SetStagingMemory sets how many bytes of downloaded pieces are staged in
// memory rather than in the staging file (0, the default: none); it
// applies to pieces not yet written. A piece stays there from its first
// block until every chunk it touches is held. It saves the file's write
// and two reads of every byte (and a terminal's flash the pages), at the
// cost of resident memory: decisions/0004 has the figures. Call it before
// the first piece is written.
func (s *Storage) SetStagingMemory(n int64) { s.memLimit = max(n, 0) }

// reserve takes n bytes of the memory budget, if it has them.
func (s *Storage) reserve(n int64) bool {
	for {
		u := s.memUsed.Load()
		if u+n > s.memLimit {
			return false
		}
		if s.memUsed.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// Torrent is the storage state of one release torrent.
type Torrent struct {
	s  *Storage
	L  *Layout
	ih metainfo.Hash

	mu       sync.Mutex
	have     []bool // per file: readable from the store (or the manifest bytes)
	want     []int  // per file: fetches asking for it (Want)
	done     []bool // per piece: passed its hash check in this process
	manifest []byte
	sizes    map[chunkstore.ID]int
	// Downloaded pieces are staged from their first block until every
	// file they touch is held: in mem, or (spilled) in the stage file.
	// Pieces in neither hold nothing yet (zeros). A buffer dropped from
	// mem is never written again, so a reader that took it keeps valid
	// bytes.
	mem     map[int][]byte
	spilled []bool
	stage   *os.File
	closed  bool          // staging is given back: nothing is staged any more
	failed  error         // the first failure to stage or store downloaded data
	changed chan struct{} // closed and replaced whenever a file arrives
	watches map[*watch]struct{}
	recent  [16]recentFile // chunk files last read for peers (readFile)
	next    int            // the entry of recent to replace next
}

// A watch collects the files that arrive while it is open, in order. A
// chunk this process downloaded comes with its checked form while the
// watch's budget lasts, so that the receiver need not read it back from
// the store and decode and hash it a second time.
type watch struct {
	queue []arrival
	bytes int // of the chunks in queue
}

type arrival struct {
	f int
	c chunkstore.Chunk // zero: read it from the store
}

// watchBudget bounds the chunk bytes (plain and stored) a watch holds for
// a receiver that lags: beyond it, arrivals carry only their file index.
const watchBudget = 16 << 20

// openWatch starts collecting arrivals; close it with closeWatch.
func (t *Torrent) openWatch() *watch {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := &watch{}
	if t.watches == nil {
		t.watches = map[*watch]struct{}{}
	}
	t.watches[w] = struct{}{}
	return w
}

func (t *Torrent) closeWatch(w *watch) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.watches, w)
}

// take returns the arrivals collected since the last call.
func (t *Torrent) take(w *watch) []arrival {
	t.mu.Lock()
	defer t.mu.Unlock()
	q := w.queue
	w.queue, w.bytes = nil, 0
	return q
}

// Register prepares the state of a torrent whose layout is known (seeding,
// or fetching with info bytes from the origin); env is the manifest file's
// content if known.
func (s *Storage) Register(ctx context.Context, ih metainfo.Hash, l *Layout, env []byte) (*Torrent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.torrents[ih]; ok {
		// Known already: chunks may have reached the store since.
		t.Refresh(ctx)
		t.setManifestFile(env)
		return t, nil
	}
	t := s.newTorrent(ih, l)
	if env != nil {
		if int64(len(env)) != l.offs[1] {
			return nil, fmt.Errorf("torrent %s: manifest of %d bytes, the torrent says %d", ih.HexString(), len(env), l.offs[1])
		}
		t.manifest, t.have[0] = env, true
		if m, err := manifest.Open(env); err == nil {
			t.setSizesLocked(m)
		}
	}
	for i, c := range l.Chunks {
		ok, err := s.src.Has(ctx, c.ID)
		if err != nil {
			return nil, err
		}
		t.have[i+1] = ok
	}
	s.torrents[ih] = t
	return t, nil
}

// newTorrent returns the state of torrent ih, laid out as l, holding
// nothing.
func (s *Storage) newTorrent(ih metainfo.Hash, l *Layout) *Torrent {
	return &Torrent{s: s, L: l, ih: ih, have: make([]bool, l.Files()), want: make([]int, l.Files()), done: make([]bool, l.NumPieces()),
		mem: map[int][]byte{}, spilled: make([]bool, l.NumPieces()), changed: make(chan struct{})}
}

// Refresh marks files that reached the store since (another way than this
// torrent) as held and returns them.
func (t *Torrent) Refresh(ctx context.Context) []int {
	var got []int
	for i, c := range t.L.Chunks {
		if t.Have(i + 1) {
			continue
		}
		if ok, _ := t.s.src.Has(ctx, c.ID); ok {
			t.mu.Lock()
			if !t.have[i+1] {
				t.arrivedLocked(i+1, chunkstore.Chunk{})
				got = append(got, i+1)
			}
			t.mu.Unlock()
		}
	}
	return got
}

// setManifestFile makes env the content of file 0 unless it is held or
// has another length; it reports whether it did.
func (t *Torrent) setManifestFile(env []byte) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if env == nil || t.have[0] || int64(len(env)) != t.L.offs[1] {
		return false
	}
	t.manifest = env
	t.arrivedLocked(0, chunkstore.Chunk{})
	return true
}

// Torrent returns the registered state of ih.
func (s *Storage) Torrent(ih metainfo.Hash) (*Torrent, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.torrents[ih]
	return t, ok
}

// OpenTorrent implements storage.ClientImpl. A torrent that was not
// registered (a magnet: the info came from peers) is laid out from its
// info, which must have the shape of a release torrent.
func (s *Storage) OpenTorrent(ctx context.Context, info *metainfo.Info, ih metainfo.Hash) (storage.TorrentImpl, error) {
	t, ok := s.Torrent(ih)
	if !ok {
		l, err := LayoutFromInfo(info)
		if err != nil {
			return storage.TorrentImpl{}, err
		}
		if t, err = s.Register(ctx, ih, l, nil); err != nil {
			return storage.TorrentImpl{}, err
		}
	}
	if t.L.NumPieces() != info.NumPieces() || t.L.Total() != info.TotalLength() {
		return storage.TorrentImpl{}, fmt.Errorf("torrent %s: info does not match its registered layout", ih.HexString())
	}
	return storage.TorrentImpl{
		PieceWithHash: func(p metainfo.Piece, _ g.Option[[]byte]) storage.PieceImpl {
			return piece{t, p.Index()}
		},
		Close: t.close,
	}, nil
}

func (t *Torrent) close() error {
	t.mu.Lock()
	t.closed = true
	if t.stage != nil {
		name := t.stage.Name()
		t.stage.Close()
		t.stage = nil
		os.Remove(name)
	}
	for q := range t.mem {
		t.dropMemLocked(q)
	}
	t.mu.Unlock()
	// Not under t.mu: Register takes Storage.mu, then Torrent.mu.
	t.s.mu.Lock()
	if t.s.torrents[t.ih] == t {
		delete(t.s.torrents, t.ih)
	}
	t.s.mu.Unlock()
	return nil
}

// SetManifest records the verified manifest of the torrent: its chunk
// sizes bound the decoding of downloaded chunks.
func (t *Torrent) SetManifest(m *manifest.Manifest) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.setSizesLocked(m)
}

func (t *Torrent) setSizesLocked(m *manifest.Manifest) {
	t.sizes = make(map[chunkstore.ID]int, len(m.Chunks))
	for _, c := range m.Chunks {
		t.sizes[c.ID] = int(c.Size)
	}
}

// Want counts a fetch asking for files (on) or no longer asking (off), and
// returns the pieces whose Completion that changes (from unknown to known
// or back): the caller has anacrolix read them again
// (Piece.UpdateCompletion). Pieces complete either way are not among them.
func (t *Torrent) Want(files []int, on bool) (changed []int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	before := map[int]storage.Completion{}
	for _, f := range files {
		first, last := t.L.PiecesOf(f)
		for p := first; p <= last; p++ {
			if _, ok := before[p]; !ok {
				before[p] = t.completionLocked(p)
			}
		}
	}
	d := 1
	if !on {
		d = -1
	}
	for _, f := range files {
		t.want[f] = max(t.want[f]+d, 0)
	}
	for p, c := range before {
		if t.completionLocked(p) != c {
			changed = append(changed, p)
		}
	}
	return changed
}

// Have reports whether file f is held.
func (t *Torrent) Have(f int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.have[f]
}

// Manifest returns the manifest file's bytes once held.
func (t *Torrent) Manifest() ([]byte, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.manifest, t.have[0]
}

// Changed returns a channel closed when the next file arrives.
func (t *Torrent) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

// readFile returns file f's content from the store or the manifest.
func (t *Torrent) readFile(f int) ([]byte, error) {
	if f == 0 {
		t.mu.Lock()
		defer t.mu.Unlock()
		if !t.have[0] {
			return nil, errors.New("manifest not held")
		}
		return t.manifest, nil
	}
	t.mu.Lock()
	for _, r := range t.recent {
		if r.f == f && r.b != nil {
			t.mu.Unlock()
			return r.b, nil
		}
	}
	t.mu.Unlock()
	b, _, err := t.s.src.ReadStoredChecked(t.L.Chunks[f-1].ID)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.recent[t.next] = recentFile{f: f, b: b}
	t.next = (t.next + 1) % len(t.recent)
	t.mu.Unlock()
	return b, nil
}

// recentFile is a chunk file read for a peer: peers ask for 16 KiB blocks,
// so a chunk of several blocks, or one spanning a block boundary, is asked
// for again at once. Reading and checking it from the store each time was
// ~5 % of a seeding terminal's CPU.
type recentFile struct {
	f int
	b []byte // the stored bytes, checked; never modified
}

// staged opens the staging file; t.mu held.
func (t *Torrent) staged() (*os.File, error) {
	if t.stage != nil {
		return t.stage, nil
	}
	if t.closed {
		return nil, errTorrentClosed
	}
	if err := os.MkdirAll(t.s.staging, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(t.s.staging, t.ih.HexString()+".part"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(t.L.Total()); err != nil {
		f.Close()
		return nil, err
	}
	t.stage = f
	return f, nil
}

var errTorrentClosed = errors.New("torrent closed")

type piece struct {
	t *Torrent
	i int
}

// eachFile calls fn with each file that piece i's bytes [off, off+n)
// touch, in order, and where the part lies in the torrent (abs, m bytes).
func (t *Torrent) eachFile(i int, off, n int64, fn func(f int, abs, m int64) error) error {
	po, _ := t.L.PieceRange(i)
	for abs, end := po+off, po+off+n; abs < end; {
		f := t.L.fileAt(abs)
		fo, fl := t.L.FileRange(f)
		m := min(end, fo+fl) - abs
		if err := fn(f, abs, m); err != nil {
			return err
		}
		abs += m
	}
	return nil
}

// fileBytes returns file f's bytes [abs, abs+m) of the torrent, f held.
func (t *Torrent) fileBytes(f int, abs, m int64) ([]byte, error) {
	data, err := t.readFile(f)
	if err != nil {
		return nil, err
	}
	fo, _ := t.L.FileRange(f)
	return data[abs-fo : abs-fo+m], nil
}

// ReadAt reads the piece's bytes: held files from the store, the rest
// from where they are staged.
func (p piece) ReadAt(b []byte, off int64) (int, error) {
	t := p.t
	po, pn := t.L.PieceRange(p.i)
	if off >= pn {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), pn-off)]
	if t.s.fill != nil {
		if err := t.fillPiece(p.i); err != nil {
			return 0, err
		}
	}
	n := 0
	err := t.eachFile(p.i, off, int64(len(b)), func(f int, abs, m int64) error {
		seg := b[n : n+int(m)]
		_, held, err := t.readStaged(f, p.i, abs-po, m, seg)
		if held {
			var data []byte
			if data, err = t.fileBytes(f, abs, m); err == nil {
				copy(seg, data)
			}
		}
		if err != nil {
			return err
		}
		n += int(m)
		return nil
	})
	return n, err
}

// WriteTo writes the whole piece to w (io.WriterTo; anacrolix hashes a
// piece through it): held files straight from the bytes read from the
// store, pieces staged in memory from their buffer, without a copy.
func (p piece) WriteTo(w io.Writer) (int64, error) {
	t := p.t
	po, pn := t.L.PieceRange(p.i)
	if t.s.fill != nil {
		if err := t.fillPiece(p.i); err != nil {
			return 0, err
		}
	}
	var written int64
	err := t.eachFile(p.i, 0, pn, func(f int, abs, m int64) error {
		b, held, err := t.readStaged(f, p.i, abs-po, m, nil)
		if held {
			b, err = t.fileBytes(f, abs, m)
		}
		if err != nil {
			return err
		}
		k, err := w.Write(b)
		written += int64(k)
		return err
	})
	return written, err
}

// readStaged reads the n bytes of file f staged in piece i at off (within
// the piece) into dst, or reports that f is held (read it from the store:
// once held, a piece's staged bytes may be gone). With a nil dst it
// returns the bytes from their memory buffer itself where they are in
// memory (or a new buffer otherwise). Unwritten bytes read as zeros, as
// from a sparse file.
func (t *Torrent) readStaged(f, i int, off, n int64, dst []byte) (b []byte, held bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.have[f] {
		return nil, true, nil
	}
	if buf, ok := t.mem[i]; ok {
		if dst == nil {
			return buf[off : off+n], false, nil
		}
		copy(dst, buf[off:])
		return dst, false, nil
	}
	if dst == nil {
		dst = make([]byte, n)
	}
	if !t.spilled[i] {
		clear(dst)
		return dst, false, nil
	}
	st, err := t.staged()
	if err != nil {
		return nil, false, err
	}
	po, _ := t.L.PieceRange(i)
	_, err = st.ReadAt(dst, po+off)
	return dst, false, err
}

// WriteAt stages downloaded bytes.
func (p piece) WriteAt(b []byte, off int64) (int, error) {
	t := p.t
	if t.s.put == nil {
		return 0, errors.New("this role does not download")
	}
	if _, pn := t.L.PieceRange(p.i); off+int64(len(b)) > pn {
		return 0, fmt.Errorf("write past piece %d", p.i)
	}
	if err := t.writePiece(p.i, b, off); err != nil {
		return 0, err
	}
	return len(b), nil
}

// writeStaged stages bytes of the torrent at off, piece by piece.
func (t *Torrent) writeStaged(b []byte, off int64) error {
	for len(b) > 0 {
		i := int(off / t.L.PieceLength)
		po, pn := t.L.PieceRange(i)
		m := min(int64(len(b)), po+pn-off)
		if err := t.writePiece(i, b[:m], off-po); err != nil {
			return err
		}
		b, off = b[m:], off+m
	}
	return nil
}

// writePiece stages b at off in piece i: in memory if the piece is there
// or the budget has room for it at its first write, else in the staging
// file. Bytes for a piece whose files are all held are not needed.
func (t *Torrent) writePiece(i int, b []byte, off int64) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return errTorrentClosed
	}
	if t.heldLocked(i) {
		t.mu.Unlock()
		return nil
	}
	buf, ok := t.mem[i]
	if !ok && !t.spilled[i] {
		if _, pn := t.L.PieceRange(i); t.s.reserve(pn) {
			buf = make([]byte, pn)
			t.mem[i] = buf
		} else {
			t.spilled[i] = true
		}
	}
	if buf != nil {
		copy(buf[off:], b)
		t.mu.Unlock()
		return nil
	}
	st, err := t.staged()
	t.mu.Unlock()
	if err != nil {
		return err
	}
	// Outside the lock, so that peers' blocks are written side by side: a
	// piece held meanwhile, its range punched, only gets pages back that
	// the file keeps until the torrent closes.
	po, _ := t.L.PieceRange(i)
	_, err = st.WriteAt(b, po+off)
	return err
}

// heldLocked reports whether every file piece i touches is held.
func (t *Torrent) heldLocked(i int) bool {
	first, last := t.L.FilesOf(i)
	for f := first; f <= last; f++ {
		if !t.have[f] {
			return false
		}
	}
	return true
}

// MarkComplete records a piece that passed its hash check and admits every
// chunk whose pieces are now all checked.
func (p piece) MarkComplete() error {
	t := p.t
	t.mu.Lock()
	t.done[p.i] = true
	first, last := t.L.FilesOf(p.i)
	var ready []int
	for f := first; f <= last; f++ {
		if t.have[f] {
			continue
		}
		a, b := t.L.PiecesOf(f)
		all := true
		for q := a; q <= b && all; q++ {
			all = t.done[q]
		}
		if all {
			ready = append(ready, f)
		}
	}
	t.mu.Unlock()
	var errs []error
	for _, f := range ready {
		errs = append(errs, t.admit(f))
	}
	return errors.Join(errs...)
}

// admit reads file f from its staged pieces, checks it, and puts it into
// the store (or keeps the manifest bytes).
func (t *Torrent) admit(f int) error {
	off, n := t.L.FileRange(f)
	b := make([]byte, n)
	a, z := t.L.PiecesOf(f)
	for q := a; q <= z; q++ {
		po, pn := t.L.PieceRange(q)
		lo, hi := max(po, off), min(po+pn, off+n)
		if _, held, err := t.readStaged(f, q, lo-po, hi-lo, b[lo-off:hi-off]); held || err != nil {
			return err // held: it came another way meanwhile
		}
	}
	if f == 0 {
		t.mu.Lock()
		t.manifest = b
		t.arrivedLocked(0, chunkstore.Chunk{})
		t.mu.Unlock()
		return nil
	}
	id := t.L.Chunks[f-1].ID
	t.mu.Lock()
	size, ok := t.sizes[id]
	t.mu.Unlock()
	if !ok {
		size = -1
	}
	c, err := chunkstore.Verify(id, b, size)
	if err != nil {
		t.mu.Lock()
		for q := a; q <= z; q++ {
			t.done[q] = false
		}
		t.mu.Unlock()
		t.s.log.Warn("torrent chunk failed its BLAKE3 check after its pieces passed SHA-1: the torrent's info is wrong", "torrent", t.ih.HexString(), "chunk", id.Short(), "err", err)
		return err
	}
	if _, err := t.s.put.Put(context.Background(), c); err != nil {
		t.fail(fmt.Errorf("%w: storing chunk %s: %w", ErrStorage, id.Short(), err))
		return err
	}
	t.mu.Lock()
	t.arrivedLocked(f, c)
	t.mu.Unlock()
	return nil
}

// ErrStorage wraps a failure to stage or store what the swarm delivered
// (a full disk, say): a fetch ends with it at once, instead of waiting for
// data that cannot be kept.
var ErrStorage = errors.New("keeping downloaded data")

// fail records the torrent's first storage failure (an ErrStorage) and
// wakes its fetches.
func (t *Torrent) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.failed == nil {
		t.failed = err
		t.wakeLocked()
	}
}

// wakeLocked wakes those waiting on Changed; t.mu is held.
func (t *Torrent) wakeLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// Failed returns the torrent's storage failure, if one happened.
func (t *Torrent) Failed() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

// arrivedLocked marks file f held (c: its checked form, if this process
// downloaded it) and gives back the staging of its pieces that now hold
// only held files.
func (t *Torrent) arrivedLocked(f int, c chunkstore.Chunk) {
	t.have[f] = true
	for w := range t.watches {
		a := arrival{f: f}
		if n := len(c.Plain()) + len(c.Stored()); !c.IsZero() && w.bytes+n <= watchBudget {
			a.c = c
			w.bytes += n
		}
		w.queue = append(w.queue, a)
	}
	t.wakeLocked()
	a, z := t.L.PiecesOf(f)
	for q := a; q <= z; q++ {
		if !t.heldLocked(q) {
			continue
		}
		t.dropMemLocked(q)
		if t.spilled[q] && t.stage != nil {
			t.spilled[q] = false
			// Only whole 4 KiB pages. Through SyscallConn: it holds the
			// descriptor against a concurrent close (Fd() does not, and
			// the race detector saw it).
			po, pn := t.L.PieceRange(q)
			if lo, hi := (po+4095)&^4095, (po+pn)&^4095; hi > lo {
				if rc, err := t.stage.SyscallConn(); err == nil {
					_ = rc.Control(func(fd uintptr) {
						_ = unix.Fallocate(int(fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, lo, hi-lo)
					})
				}
			}
		}
	}
}

// dropMemLocked gives piece q's memory buffer back to the budget, if it
// has one; t.mu is held. A reader that took the buffer keeps it: it is
// never written again.
func (t *Torrent) dropMemLocked(q int) {
	if buf, ok := t.mem[q]; ok {
		delete(t.mem, q)
		t.s.memUsed.Add(-int64(len(buf)))
	}
}

// MarkNotComplete forgets a piece's check.
func (p piece) MarkNotComplete() error {
	p.t.mu.Lock()
	defer p.t.mu.Unlock()
	p.t.done[p.i] = false
	return nil
}

// fillTimeout bounds how long a peer's read waits for a branch's upstream.
const fillTimeout = 2 * time.Minute

// fillPiece has the store fetch the chunks of piece i it lacks (a branch
// cache), in one call: a peer reads a piece in 16 KiB blocks, and the
// chunks of the whole piece are needed anyway. It marks them held.
func (t *Torrent) fillPiece(i int) error {
	first, last := t.L.FilesOf(i)
	var files []int
	var ids []chunkstore.ID
	for f := max(first, 1); f <= last; f++ {
		if !t.Have(f) {
			files = append(files, f)
			ids = append(ids, t.L.Chunks[f-1].ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), fillTimeout)
	defer cancel()
	if err := t.s.fill(ctx, ids); err != nil {
		return fmt.Errorf("filling %d chunks of piece %d: %w", len(ids), i, err)
	}
	for _, id := range ids {
		if ok, err := t.s.src.Has(ctx, id); err != nil || !ok {
			return fmt.Errorf("chunk %s: filled, but the store does not have it", id.Short())
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, f := range files {
		if !t.have[f] {
			t.arrivedLocked(f, chunkstore.Chunk{})
		}
	}
	return nil
}

// Completion: a piece is complete when every file it touches is held, or
// when it passed its check in this process, or always on a node that
// fills chunks on demand (a branch cache). A piece that is not complete
// and that no fetch asks for (Want) has an unknown completion: anacrolix
// then leaves it out of its request planning, which otherwise walks every
// incomplete piece of the torrent for every peer whenever it plans
// requests (~80 % of a terminal's pieces in the swarm bench are chunks it
// takes from its seed and never downloads). Unknown pieces are neither
// requested nor offered, as incomplete ones; Client.Add turns anacrolix's
// initial check of such pieces off.
func (p piece) Completion() storage.Completion {
	p.t.mu.Lock()
	defer p.t.mu.Unlock()
	return p.t.completionLocked(p.i)
}

// completionLocked is piece i's Completion; t.mu is held.
func (t *Torrent) completionLocked(i int) storage.Completion {
	if t.done[i] || t.s.fill != nil {
		return storage.Completion{Ok: true, Complete: true}
	}
	first, last := t.L.FilesOf(i)
	held, asked := true, false
	for f := first; f <= last; f++ {
		held = held && t.have[f]
		asked = asked || t.want[f] > 0
	}
	return storage.Completion{Ok: held || asked, Complete: held}
}
