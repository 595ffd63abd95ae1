package chunkstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterr "go.etcd.io/bbolt/errors"
	"golang.org/x/sys/unix"
)

// Options configure Open. The zero value is usable.
type Options struct {
	// Timeout is how long Open waits for another process's lock on the
	// index before failing with ErrLocked. Zero means 10 seconds.
	Timeout time.Duration
	// ReadOnly opens the index shared and refuses writes.
	ReadOnly bool
	// FlushEvery, if positive, seals the current pack and commits it when
	// the last commit is older than this: the most fetching a crash can
	// lose. Zero: only Flush, Close and full packs commit.
	FlushEvery time.Duration
	// Now is the clock for FlushEvery; nil means time.Now.
	Now func() time.Time
	// Logger receives repairs made at Open; nil discards.
	Logger *slog.Logger
}

var (
	bucketChunks = []byte("chunks") // id → pack u32 ‖ off u32 ‖ stored u32 ‖ size u32 ‖ stored sum [16]
	bucketPacks  = []byte("packs")  // seq u32 → (empty): packs whose entries are indexed
	bucketMeta   = []byte("meta")
)

// Local is the writable store: chunks appended to pack files (see pack.go)
// and a bbolt index at <root>/index.db holding every chunk's location and
// small metadata records.
//
// Only one process may hold a Local open for writing: Open waits up to
// Options.Timeout and then fails with ErrLocked. Servers read through Dir,
// which needs no lock.
//
// Durability: Put appends to the current pack; Flush (or a full pack, or
// FlushEvery) writes the pack's .idx, fsyncs both, renames them into place,
// fsyncs the directory and only then commits the entries to the index. A
// crash leaves either a temporary pack (removed at the next Open) or a
// complete pack whose entries the next Open imports from its .idx.
type Local struct {
	root string
	db   *bolt.DB
	opts Options
	log  *slog.Logger

	smu     sync.Mutex // serialises seals
	mu      sync.Mutex // guards everything below
	cur     *os.File   // open pack (temporary name), nil if none
	curSeq  uint32
	curOff  int64  // logical end of the pack (buffer included)
	curBuf  []byte // appended bytes not yet written to cur, ending at curOff
	curEnts []idxEntry
	pend    map[ID]loc
	files   map[uint32]*os.File
	nextSeq uint32
	last    time.Time
	closed  bool
	dirty   int64         // bytes written to cur since the last writeback kick
	wb      chan *os.File // packs to start writeback of (see writeback)
	wbDone  chan struct{}
}

var _ WriteStore = (*Local)(nil)

// writebackEvery is how many bytes written to a pack ask for its writeback
// to start. Sealing a pack fsyncs it: with the pages already on their way
// the seal at the end of a pull waits for the last few MiB, not for all
// (a 1 GiB update puts 42 MB into the cache).
const writebackEvery = 8 << 20

// writeback starts writeback of the packs it is sent (sync_file_range
// without waiting), off the writers' path; it ends when wb is closed.
func (s *Local) writeback() {
	defer close(s.wbDone)
	for f := range s.wb {
		// Through SyscallConn: it holds the descriptor against a Close.
		if rc, err := f.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) {
				_ = unix.SyncFileRange(int(fd), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
			})
		}
	}
}

// Open opens or creates the store at root.
func Open(root string, opts Options) (*Local, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !opts.ReadOnly {
		if err := os.MkdirAll(filepath.Join(root, packDir), 0o755); err != nil {
			return nil, err
		}
	}
	db, err := bolt.Open(filepath.Join(root, "index.db"), 0o644, &bolt.Options{Timeout: opts.Timeout, ReadOnly: opts.ReadOnly})
	if err != nil {
		if errors.Is(err, bolterr.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w (waited %s)", root, ErrLocked, opts.Timeout)
		}
		return nil, fmt.Errorf("open index %s: %w", root, err)
	}
	s := &Local{root: root, db: db, opts: opts, log: log, pend: map[ID]loc{}, files: map[uint32]*os.File{}, last: opts.Now()}
	if !opts.ReadOnly {
		if err := s.reconcile(); err != nil {
			db.Close()
			return nil, err
		}
		s.wb, s.wbDone = make(chan *os.File, 1), make(chan struct{})
		go s.writeback()
	}
	return s, nil
}

func encodeLoc(l loc) []byte {
	var b [32]byte
	binary.BigEndian.PutUint32(b[0:], l.pack)
	binary.BigEndian.PutUint32(b[4:], l.off)
	binary.BigEndian.PutUint32(b[8:], l.stored)
	binary.BigEndian.PutUint32(b[12:], l.size)
	copy(b[16:], l.sum[:])
	return b[:]
}

func decodeLoc(v []byte) (loc, bool) {
	if len(v) != 32 {
		return loc{}, false
	}
	return loc{pack: binary.BigEndian.Uint32(v[0:]), off: binary.BigEndian.Uint32(v[4:]),
		stored: binary.BigEndian.Uint32(v[8:]), size: binary.BigEndian.Uint32(v[12:]), sum: storedSum(v[16:32])}, true
}

func seqKey(s uint32) []byte { return binary.BigEndian.AppendUint32(nil, s) }

// indexedPacks lists the packs the index holds and those of them not on
// disk, and notes the highest sequence.
func (s *Local) indexedPacks(packs *bolt.Bucket, onDisk map[uint32]bool) (indexed map[uint32]bool, gone []uint32, err error) {
	indexed = map[uint32]bool{}
	err = packs.ForEach(func(k, _ []byte) error {
		q := binary.BigEndian.Uint32(k)
		indexed[q] = true
		s.nextSeq = max(s.nextSeq, q+1)
		if !onDisk[q] {
			gone = append(gone, q)
		}
		return nil
	})
	return indexed, gone, err
}

// reconcile makes the index agree with the packs on disk after a crash:
// temporary files go, complete packs the index lacks are imported from
// their .idx, incomplete packs go, and entries of vanished packs go.
func (s *Local) reconcile() error {
	seqs, other, err := listPacks(s.root)
	if err != nil {
		return err
	}
	for _, p := range other {
		s.log.Info("removing incomplete pack file", "path", p)
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	onDisk := map[uint32]bool{}
	for _, q := range seqs {
		onDisk[q] = true
		s.nextSeq = max(s.nextSeq, q+1)
	}
	// Most opens find the index and the packs in agreement: a read-only
	// look then spares the commit (two fdatasyncs) an update would cost.
	clean := false
	_ = s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketChunks) == nil || tx.Bucket(bucketPacks) == nil || tx.Bucket(bucketMeta) == nil {
			return nil
		}
		indexed, gone, err := s.indexedPacks(tx.Bucket(bucketPacks), onDisk)
		clean = err == nil && len(gone) == 0 && len(indexed) == len(seqs)
		return nil
	})
	if clean {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketChunks, bucketPacks, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		chunks, packs := tx.Bucket(bucketChunks), tx.Bucket(bucketPacks)
		indexed, gone, err := s.indexedPacks(packs, onDisk)
		if err != nil {
			return err
		}
		for _, q := range seqs {
			if indexed[q] {
				continue
			}
			st, err := os.Stat(packPath(s.root, q))
			if err != nil {
				return err
			}
			ents, err := readIdx(s.root, q, st.Size())
			if err != nil {
				s.log.Warn("removing pack with a bad index", "pack", packName(q), "err", err)
				os.Remove(idxPath(s.root, q))
				os.Remove(packPath(s.root, q))
				continue
			}
			s.log.Info("importing pack written before a crash", "pack", packName(q), "chunks", len(ents))
			for _, e := range ents {
				if chunks.Get(e.id[:]) == nil {
					if err := chunks.Put(e.id[:], encodeLoc(e.loc)); err != nil {
						return err
					}
				}
			}
			if err := packs.Put(seqKey(q), nil); err != nil {
				return err
			}
		}
		if len(gone) > 0 {
			lost := map[uint32]bool{}
			for _, q := range gone {
				lost[q] = true
				if err := packs.Delete(seqKey(q)); err != nil {
					return err
				}
			}
			var drop [][]byte
			chunks.ForEach(func(k, v []byte) error {
				if l, ok := decodeLoc(v); ok && lost[l.pack] {
					drop = append(drop, append([]byte(nil), k...))
				}
				return nil
			})
			s.log.Warn("packs missing from disk: dropping their chunks from the index", "packs", len(gone), "chunks", len(drop))
			for _, k := range drop {
				if err := chunks.Delete(k); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// Root returns the store's root directory.
func (s *Local) Root() string { return s.root }

func (s *Local) locate(id ID) (loc, bool, error) {
	s.mu.Lock()
	if l, ok := s.pend[id]; ok {
		s.mu.Unlock()
		return l, true, nil
	}
	s.mu.Unlock()
	var l loc
	var found bool
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketChunks); b != nil {
			l, found = decodeLoc(b.Get(id[:]))
		}
		return nil
	})
	return l, found, err
}

// Stat returns the sizes of id, or ErrNotFound.
func (s *Local) Stat(_ context.Context, id ID) (Info, error) {
	l, err := s.find(id)
	if err != nil {
		return Info{}, err
	}
	return Info{ID: id, Size: l.size, Stored: l.stored}, nil
}

// Has reports whether the store holds id (flushed or not).
func (s *Local) Has(_ context.Context, id ID) (bool, error) {
	_, ok, err := s.locate(id)
	return ok, err
}

// Held is what Holds found: which of the chunks asked for the store holds,
// and where.
type Held struct {
	s  *Local
	at map[ID]loc
}

// Has reports whether the store held id when Holds looked.
func (h Held) Has(id ID) bool {
	_, ok := h.at[id]
	return ok
}

// Len is the number of chunks held.
func (h Held) Len() int { return len(h.at) }

// AppendPlain is Local.AppendPlain reading id where Holds found it, without
// an index lookup of its own (one read transaction per chunk was ~3 % of a
// slot write's CPU). If that read fails, as it would if the pack was
// rewritten since, id is looked up afresh; only that second read can drop
// it from the index as corrupt.
func (h Held) AppendPlain(dst []byte, id ID, scratch *[]byte) ([]byte, error) {
	if l, ok := h.at[id]; ok {
		if out, err := h.s.appendPlainAt(dst, id, l, scratch); err == nil {
			return out, nil
		}
	}
	return h.s.AppendPlain(dst, id, scratch)
}

// Get is Local.Get: Held is the store as a pull's assembler reads it
// (chunkstore.Getter, with AppendPlain and AppendPlainUnchecked).
func (h Held) Get(ctx context.Context, id ID) (Chunk, error) { return h.s.Get(ctx, id) }

// AppendPlainUnchecked is AppendPlain without the hash check (DecodeAppend):
// for a caller that checks what it builds as a whole, and that on a
// mismatch reads the chunks again with AppendPlain (which drops a corrupt
// one from the index). A chunk that cannot be read or decoded where Holds
// found it goes through AppendPlain at once.
func (h Held) AppendPlainUnchecked(dst []byte, id ID, scratch *[]byte) ([]byte, error) {
	if l, ok := h.at[id]; ok {
		if out, err := h.s.decodeAt(dst, id, l, scratch, DecodeAppend); err == nil {
			return out, nil
		}
	}
	return h.s.AppendPlain(dst, id, scratch)
}

// Holds looks up which of ids the store holds (flushed or not) in one read
// transaction: a pull's plan asks for every chunk of a release, and a
// transaction per chunk cost ~15 ms for 12,000.
func (s *Local) Holds(ids []ID) (Held, error) {
	h := Held{s: s, at: make(map[ID]loc, len(ids))}
	s.mu.Lock()
	for _, id := range ids {
		if l, ok := s.pend[id]; ok {
			h.at[id] = l
		}
	}
	s.mu.Unlock()
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks)
		if b == nil {
			return nil
		}
		for _, id := range ids {
			if _, ok := h.at[id]; ok {
				continue
			}
			if l, ok := decodeLoc(b.Get(id[:])); ok {
				h.at[id] = l
			}
		}
		return nil
	})
	return h, err
}

// file returns the file of l's pack, or nil after copying l's stored
// bytes into b if they are still in the current pack's append buffer. A
// chunk just put is often read at once (a peer asks for the piece that
// completed it); writing the buffer out for that cost a small write each
// time.
func (s *Local) file(l loc, b []byte) (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil && l.pack == s.curSeq {
		if start := s.curOff - int64(len(s.curBuf)); int64(l.off) >= start {
			copy(b, s.curBuf[int64(l.off)-start:])
			return nil, nil
		}
		return s.cur, nil
	}
	if f := s.files[l.pack]; f != nil {
		return f, nil
	}
	f, err := os.Open(packPath(s.root, l.pack))
	if err != nil {
		return nil, err
	}
	s.files[l.pack] = f
	return f, nil
}

func (s *Local) readStored(id ID, l loc) ([]byte, error) {
	b := make([]byte, l.stored)
	if err := s.readStoredInto(id, l, b); err != nil {
		return nil, err
	}
	return b, nil
}

// readStoredInto reads the stored bytes at l into b (len(b) == l.stored).
func (s *Local) readStoredInto(id ID, l loc, b []byte) error {
	f, err := s.file(l, b)
	if err != nil {
		return fmt.Errorf("chunk %s: %w", id.Short(), err)
	}
	if f == nil {
		return nil // read from the append buffer
	}
	if _, err := f.ReadAt(b, int64(l.off)); err != nil {
		return &IntegrityError{ID: id, Reason: "read: " + err.Error()}
	}
	return nil
}

// Get reads and verifies id. A chunk that fails verification is dropped
// from the index, so that a later Put stores a good copy; the error wraps
// ErrCorrupt.
func (s *Local) Get(_ context.Context, id ID) (Chunk, error) {
	l, err := s.find(id)
	if err != nil {
		return Chunk{}, err
	}
	b, err := s.readStored(id, l)
	var c Chunk
	if err == nil {
		c, err = Verify(id, b, int(l.size))
	}
	return c, s.dropCorrupt(id, err)
}

// find locates id, or fails with ErrNotFound.
func (s *Local) find(id ID) (loc, error) {
	l, ok, err := s.locate(id)
	if err == nil && !ok {
		err = fmt.Errorf("chunk %s: %w", id.Short(), ErrNotFound)
	}
	return l, err
}

// dropCorrupt drops id from the index when err says it is corrupt, so that
// a later Put stores a good copy; it returns err.
func (s *Local) dropCorrupt(id ID, err error) error {
	if errors.Is(err, ErrCorrupt) && !s.opts.ReadOnly {
		s.log.Warn("dropping corrupt chunk from the index", "id", id, "err", err)
		s.Unindex([]ID{id})
	}
	return err
}

// AppendPlain is Get that decodes id into dst's spare capacity and returns
// dst extended by its plain bytes (chunkstore.VerifyAppend); *scratch is
// reused for the stored bytes read. Nothing is allocated once both are
// large enough: the assembler copies cached chunks into its write buffer
// this way.
func (s *Local) AppendPlain(dst []byte, id ID, scratch *[]byte) ([]byte, error) {
	l, err := s.find(id)
	if err != nil {
		return dst, err
	}
	out, err := s.appendPlainAt(dst, id, l, scratch)
	if err != nil {
		return dst, s.dropCorrupt(id, err)
	}
	return out, nil
}

// appendPlainAt reads id's stored bytes at l into *scratch and decodes and
// verifies them into dst's spare capacity.
func (s *Local) appendPlainAt(dst []byte, id ID, l loc, scratch *[]byte) ([]byte, error) {
	return s.decodeAt(dst, id, l, scratch, VerifyAppend)
}

// decodeAt reads the stored bytes at l into *scratch and decodes them onto
// dst with decode (VerifyAppend or DecodeAppend).
func (s *Local) decodeAt(dst []byte, id ID, l loc, scratch *[]byte, decode func([]byte, ID, []byte, int) ([]byte, error)) ([]byte, error) {
	if cap(*scratch) < int(l.stored) {
		*scratch = make([]byte, l.stored)
	}
	b := (*scratch)[:l.stored]
	if err := s.readStoredInto(id, l, b); err != nil {
		return dst, err
	}
	return decode(dst, id, b, int(l.size))
}

// ReadStored returns the stored bytes of id, unverified, and its size.
func (s *Local) ReadStored(id ID) ([]byte, int, error) {
	b, l, err := s.readStoredByID(id)
	return b, int(l.size), err
}

// ReadStoredChecked is ReadStored after checking the bytes against the
// pack index's checksum of the stored bytes (no decompression), as
// Dir.ReadStoredChecked: for bytes sent to others unchanged.
func (s *Local) ReadStoredChecked(id ID) ([]byte, int, error) {
	b, l, err := s.readStoredByID(id)
	if err == nil && sumStored(b) != l.sum {
		err = &IntegrityError{ID: id, Reason: "stored bytes do not match the pack index"}
	}
	return b, int(l.size), err
}

func (s *Local) readStoredByID(id ID) ([]byte, loc, error) {
	l, err := s.find(id)
	if err != nil {
		return nil, loc{}, err
	}
	b, err := s.readStored(id, l)
	return b, l, err
}

// Put stores c unless the store holds it already.
func (s *Local) Put(ctx context.Context, c Chunk) (bool, error) {
	if err := s.canPut(c); err != nil {
		return false, err
	}
	if ok, err := s.Has(ctx, c.id); err != nil || ok {
		return false, err
	}
	return s.PutNew(ctx, c)
}

// canPut refuses what no Put may store.
func (s *Local) canPut(c Chunk) error {
	if s.opts.ReadOnly {
		return errors.New("put: store opened read-only")
	}
	if c.IsZero() {
		return errors.New("put: empty chunk")
	}
	return nil
}

// PutNew is Put for a chunk the caller has just learnt the store does not
// hold (a Holds lookup, then a fetch): it skips the index lookup, a read
// transaction per chunk (~3.5 % of an HTTP pull's CPU). Should a flushed
// copy exist after all, the new one supersedes it in the index and the old
// bytes are left for compaction; unflushed copies are still found.
func (s *Local) PutNew(ctx context.Context, c Chunk) (bool, error) {
	if err := s.canPut(c); err != nil {
		return false, err
	}
	if c.stored == nil {
		var err error
		if c, err = Encode(c.plain, LevelDefault); err != nil {
			return false, err
		}
	}
	s.mu.Lock()
	if _, ok := s.pend[c.id]; ok { // a concurrent Put won
		s.mu.Unlock()
		return false, nil
	}
	if err := s.append(c.id, c.stored, uint32(len(c.plain))); err != nil {
		s.mu.Unlock()
		return false, err
	}
	full := s.curOff >= MaxPackSize || (s.opts.FlushEvery > 0 && s.opts.Now().Sub(s.last) >= s.opts.FlushEvery)
	s.mu.Unlock()
	if full {
		if err := s.Flush(ctx); err != nil {
			return true, err
		}
	}
	return true, nil
}

// append writes stored bytes to the current pack. s.mu is held.
func (s *Local) append(id ID, stored []byte, size uint32) error {
	if s.closed {
		return ErrClosed
	}
	if s.cur == nil {
		seq := s.nextSeq
		f, err := os.OpenFile(filepath.Join(s.root, packDir, ".tmp-"+packName(seq)+".pack"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		s.nextSeq++
		s.cur, s.curSeq, s.curOff, s.curEnts = f, seq, 0, nil
		if s.curBuf == nil {
			s.curBuf = make([]byte, 0, packBufSize)
		}
	}
	// Appends are buffered: one write per MiB instead of one per chunk.
	if len(s.curBuf)+len(stored) > cap(s.curBuf) {
		if err := s.writeBuf(); err != nil {
			return err
		}
	}
	if len(stored) >= packBufSize {
		if _, err := s.cur.WriteAt(stored, s.curOff); err != nil {
			return fmt.Errorf("write pack: %w", err)
		}
	} else {
		s.curBuf = append(s.curBuf, stored...)
	}
	l := loc{pack: s.curSeq, off: uint32(s.curOff), stored: uint32(len(stored)), size: size, sum: sumStored(stored)}
	s.pend[id] = l
	s.curEnts = append(s.curEnts, idxEntry{id: id, loc: l})
	s.curOff += int64(len(stored))
	return nil
}

const packBufSize = 1 << 20

// writeBuf writes the append buffer to the current pack. s.mu is held.
func (s *Local) writeBuf() error {
	if s.cur == nil || len(s.curBuf) == 0 {
		return nil
	}
	if _, err := s.cur.WriteAt(s.curBuf, s.curOff-int64(len(s.curBuf))); err != nil {
		return fmt.Errorf("write pack: %w", err)
	}
	if s.dirty += int64(len(s.curBuf)); s.dirty >= writebackEvery && s.wb != nil && !s.closed {
		s.dirty = 0
		select {
		case s.wb <- s.cur:
		default: // one is pending already
		}
	}
	s.curBuf = s.curBuf[:0]
	return nil
}

// Flush seals the current pack (index file, fsync, rename, fsync dir) and
// commits its entries to the index. Puts may go on meanwhile, into a new
// pack.
func (s *Local) Flush(_ context.Context) error {
	if s.opts.ReadOnly {
		return nil
	}
	s.smu.Lock()
	defer s.smu.Unlock()
	return s.flushLocked()
}

// flushLocked seals the current pack, if any. s.smu is held.
func (s *Local) flushLocked() error {
	s.mu.Lock()
	if s.cur == nil {
		s.mu.Unlock()
		return nil
	}
	if err := s.writeBuf(); err != nil {
		s.mu.Unlock()
		return err
	}
	f, seq, ents := s.cur, s.curSeq, s.curEnts
	s.files[seq] = f // readers of pending chunks find the pack here
	s.cur, s.curEnts = nil, nil
	s.mu.Unlock()
	if err := s.seal(f, seq, ents); err != nil {
		return err
	}
	s.mu.Lock()
	for _, e := range ents {
		if l, ok := s.pend[e.id]; ok && l.pack == seq {
			delete(s.pend, e.id)
		}
	}
	s.last = s.opts.Now()
	s.mu.Unlock()
	return nil
}

// seal makes pack seq durable and commits its entries. s.smu is held.
func (s *Local) seal(f *os.File, seq uint32, ents []idxEntry) error {
	tmpIdx := filepath.Join(s.root, packDir, ".tmp-"+packName(seq)+".idx")
	if err := writeFileSync(tmpIdx, encodeIdx(append([]idxEntry(nil), ents...))); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync pack: %w", err)
	}
	if err := os.Rename(f.Name(), packPath(s.root, seq)); err != nil {
		return err
	}
	if err := os.Rename(tmpIdx, idxPath(s.root, seq)); err != nil {
		return err
	}
	if err := SyncDir(filepath.Join(s.root, packDir)); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks)
		for _, e := range ents {
			if err := b.Put(e.id[:], encodeLoc(e.loc)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketPacks).Put(seqKey(seq), nil)
	})
	if err != nil {
		return fmt.Errorf("index commit: %w", err)
	}
	return nil
}

// Close seals the current pack and closes the index. Safe to call twice.
func (s *Local) Close() error {
	var err error
	if !s.opts.ReadOnly {
		err = s.Flush(context.Background())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.wb != nil {
		close(s.wb)
		<-s.wbDone
	}
	for q, f := range s.files {
		f.Close()
		delete(s.files, q)
	}
	if s.cur != nil {
		s.cur.Close()
	}
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	return err
}

// Walk calls fn for every indexed chunk, in ID order. fn must not call
// other methods of s.
func (s *Local) Walk(fn func(Info) error) error {
	if err := s.Flush(context.Background()); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChunks).ForEach(func(k, v []byte) error {
			l, ok := decodeLoc(v)
			if !ok || len(k) != 32 {
				return fmt.Errorf("index: bad record for key %x", k)
			}
			return fn(Info{ID: ID(k), Size: l.size, Stored: l.stored})
		})
	})
}

// Unindex drops index records (the bytes stay in their packs until the
// next compaction).
func (s *Local) Unindex(ids []ID) error {
	s.mu.Lock()
	for _, id := range ids {
		delete(s.pend, id)
	}
	s.mu.Unlock()
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks)
		for _, id := range ids {
			if err := b.Delete(id[:]); err != nil {
				return err
			}
		}
		return nil
	})
}

// GetMeta returns the metadata record key, or nil.
func (s *Local) GetMeta(key string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta); b != nil {
			if v := b.Get([]byte(key)); v != nil {
				out = append([]byte(nil), v...)
			}
		}
		return nil
	})
	return out, err
}

// PutMeta stores a metadata record durably (bbolt fsyncs its commit). A nil
// value deletes the record. Pending chunks are sealed first, so a record
// never refers to chunks a crash could lose.
func (s *Local) PutMeta(key string, value []byte) error {
	if err := s.Flush(context.Background()); err != nil {
		return err
	}
	// A record that holds value already is left alone: no write, no fsync
	// (a pull after a --no-flip pull of the same release stores its
	// 400 KB manifest again: 15 ms, an eighth of what comes before the
	// first byte of a slot write).
	same := false
	if value != nil {
		_ = s.db.View(func(tx *bolt.Tx) error {
			if b := tx.Bucket(bucketMeta); b != nil {
				same = bytes.Equal(b.Get([]byte(key)), value)
			}
			return nil
		})
	}
	if same {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if value == nil {
			return b.Delete([]byte(key))
		}
		return b.Put([]byte(key), value)
	})
}

// MetaPrefix calls fn for every metadata record whose key starts with prefix.
func (s *Local) MetaPrefix(prefix string, fn func(key string, value []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek([]byte(prefix)); k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Next() {
			if err := fn(string(k), v); err != nil {
				return err
			}
		}
		return nil
	})
}

// Locate returns the pack file, offset and stored length of id.
func (s *Local) Locate(id ID) (path string, off int64, n int, err error) {
	if err := s.Flush(context.Background()); err != nil {
		return "", 0, 0, err
	}
	l, ok, err := s.locate(id)
	if err != nil || !ok {
		return "", 0, 0, fmt.Errorf("chunk %s: %w", id.Short(), ErrNotFound)
	}
	return packPath(s.root, l.pack), int64(l.off), int(l.stored), nil
}
