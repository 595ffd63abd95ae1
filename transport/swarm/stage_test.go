package swarm

import (
	"bytes"
	"context"
	"crypto/sha1"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/anacrolix/torrent/metainfo"
	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/chunkstore"
)

// Downloaded pieces are staged in memory up to the budget and in the
// staging file beyond it. Either way the hash check (WriteTo) and peers
// (ReadAt) read the staged bytes, every chunk is admitted intact, and a
// piece's staging is given back once every chunk it touches is held.
func TestStagingMemory(t *testing.T) {
	ctx := context.Background()
	rel := makeRelease(t, 30, 5, 32<<10)
	l := rel.layout
	ih := metainfo.HashBytes(rel.info)
	for _, tc := range []struct {
		name  string
		limit int64
		file  bool // some pieces go to the staging file
	}{
		{"memory", 32 << 20, false},
		{"mixed", l.PieceLength, true},
		{"file", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := openStore(t)
			dir := t.TempDir()
			st := NewStorage(store, store, dir, nil)
			st.SetStagingMemory(tc.limit)
			tor, err := st.Register(ctx, ih, l, nil)
			if err != nil {
				t.Fatal(err)
			}
			peak := int64(0)
			// Backwards, so that a piece's chunks wait for pieces after
			// it as well as before it.
			for i := l.NumPieces() - 1; i >= 0; i-- {
				po, pn := l.PieceRange(i)
				want := rel.content(po, pn)
				p := piece{tor, i}
				for off := int64(0); off < pn; off += 16 << 10 {
					if _, err := p.WriteAt(want[off:min(off+16<<10, pn)], off); err != nil {
						t.Fatal(err)
					}
				}
				peak = max(peak, staged(st))
				var hashed bytes.Buffer
				if n, err := p.WriteTo(&hashed); err != nil || n != pn || !bytes.Equal(hashed.Bytes(), want) {
					t.Fatalf("piece %d: WriteTo wrote %d bytes (want %d), err %v, equal %v", i, n, pn, err, bytes.Equal(hashed.Bytes(), want))
				}
				got := make([]byte, pn)
				if _, err := p.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("piece %d: ReadAt: %v, equal %v", i, err, bytes.Equal(got, want))
				}
				if err := p.MarkComplete(); err != nil {
					t.Fatal(err)
				}
			}
			if peak > tc.limit {
				t.Errorf("%d bytes staged in memory, the limit is %d", peak, tc.limit)
			}
			if tc.limit > 0 && peak == 0 {
				t.Error("nothing was staged in memory")
			}
			for _, c := range rel.chunks {
				got, err := store.Get(ctx, c.ID())
				if err != nil || !bytes.Equal(got.Plain(), c.Plain()) {
					t.Fatalf("chunk %s: %v", c.ID().Short(), err)
				}
			}
			if env, ok := tor.Manifest(); !ok || !bytes.Equal(env, rel.env) {
				t.Error("manifest file not admitted")
			}
			if n, k := staged(st), len(tor.mem); n != 0 || k != 0 {
				t.Errorf("%d bytes in %d pieces still staged in memory with every chunk held", n, k)
			}
			fi, err := os.Stat(filepath.Join(dir, ih.HexString()+".part"))
			if (err == nil) != tc.file {
				t.Fatalf("staging file: %v (pieces in it expected: %v)", err, tc.file)
			}
			if tc.file && punches(t, dir) {
				if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 4096 {
					t.Errorf("the staging file still uses %d bytes with every chunk held", used)
				}
			}
		})
	}
}

// punches reports whether dir's file system punches holes.
func punches(t *testing.T, dir string) bool {
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, 8192)); err != nil {
		t.Fatal(err)
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 8192)
	if err != nil {
		t.Logf("not checking the staging file's blocks: the file system does not punch holes (%v)", err)
	}
	return err == nil
}

// A chunk that reaches the store another way (the HTTP fallback, another
// torrent) while its pieces are staged frees them, except those that
// still hold a part of a chunk not held.
func TestStagingFreedByRefresh(t *testing.T) {
	ctx := context.Background()
	rel := makeRelease(t, 10, 6, 32<<10)
	l := rel.layout
	store := openStore(t)
	st := NewStorage(store, store, t.TempDir(), nil)
	st.SetStagingMemory(32 << 20)
	tor, err := st.Register(ctx, metainfo.HashBytes(rel.info), l, rel.env)
	if err != nil {
		t.Fatal(err)
	}
	// A chunk over at least three pieces, not the first.
	f, a, z := 2, 0, 0
	for ; f < l.Files(); f++ {
		if a, z = l.PiecesOf(f); z-a >= 2 {
			break
		}
	}
	if f == l.Files() {
		t.Fatal("no chunk spans three pieces")
	}
	for i := a; i <= z; i++ {
		po, pn := l.PieceRange(i)
		if _, err := (piece{tor, i}).WriteAt(rel.content(po, pn), 0); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := staged(st), int64(z-a+1)*l.PieceLength; got != want {
		t.Fatalf("%d bytes staged, want %d", got, want)
	}
	if _, err := store.Put(ctx, rel.chunks[f-1]); err != nil {
		t.Fatal(err)
	}
	tor.Refresh(ctx)
	var shared []int // pieces that also hold bytes of the chunks around it
	for i := a; i <= z; i++ {
		if first, last := l.FilesOf(i); first != last {
			shared = append(shared, i)
		}
		if _, ok := tor.mem[i]; ok != slices.Contains(shared, i) {
			t.Errorf("piece %d staged: %v, shared with another chunk: %v", i, ok, !ok)
		}
	}
	if n, want := staged(st), int64(len(shared))*l.PieceLength; n != want || len(shared) == 0 {
		t.Errorf("%d bytes staged after the chunk arrived, want %d (%d pieces)", n, want, len(shared))
	}
	// What is still staged is read as staged; the held chunk from the store.
	for _, i := range shared {
		po, pn := l.PieceRange(i)
		got := make([]byte, pn)
		if _, err := (piece{tor, i}).ReadAt(got, 0); err != nil || !bytes.Equal(got, rel.content(po, pn)) {
			t.Errorf("piece %d after the refresh: %v", i, err)
		}
	}
	tor.close()
	if n := staged(st); n != 0 {
		t.Errorf("%d bytes staged after the torrent closed", n)
	}
}

// BenchmarkStaging stages a release's pieces as a downloading terminal
// does (16 KiB blocks, the SHA-1 check through WriteTo, admission), with
// pieces in memory or in the staging file.
func BenchmarkStaging(b *testing.B) {
	ctx := context.Background()
	rel := makeRelease(b, 200, 7, DefaultPieceLength)
	l := rel.layout
	ih := metainfo.HashBytes(rel.info)
	all := rel.content(0, l.Total())
	for _, bc := range []struct {
		name  string
		limit int64
	}{{"memory", 32 << 20}, {"file", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			dir := b.TempDir()
			b.SetBytes(l.Total())
			for b.Loop() {
				b.StopTimer()
				store, err := chunkstore.Open(b.TempDir(), chunkstore.Options{})
				if err != nil {
					b.Fatal(err)
				}
				st := NewStorage(store, store, dir, nil)
				st.SetStagingMemory(bc.limit)
				tor, err := st.Register(ctx, ih, l, nil)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				for i := range l.NumPieces() {
					po, pn := l.PieceRange(i)
					data := all[po : po+pn]
					p := piece{tor, i}
					for off := int64(0); off < pn; off += 16 << 10 {
						if _, err := p.WriteAt(data[off:min(off+16<<10, pn)], off); err != nil {
							b.Fatal(err)
						}
					}
					h := sha1.New()
					if _, err := p.WriteTo(h); err != nil {
						b.Fatal(err)
					}
					if err := p.MarkComplete(); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				tor.close()
				store.Close()
				b.StartTimer()
			}
		})
	}
}

// A write that comes after the torrent closed (anacrolix's writers are
// not stopped by it) is refused and takes no memory.
func TestStagingClosed(t *testing.T) {
	rel := makeRelease(t, 4, 8, 32<<10)
	store := openStore(t)
	dir := t.TempDir()
	st := NewStorage(store, store, dir, nil)
	st.SetStagingMemory(32 << 20)
	tor, err := st.Register(context.Background(), metainfo.HashBytes(rel.info), rel.layout, nil)
	if err != nil {
		t.Fatal(err)
	}
	tor.close()
	if _, err := (piece{tor, 0}).WriteAt([]byte("late"), 0); err == nil {
		t.Error("a write after close was accepted")
	}
	if n := staged(st); n != 0 {
		t.Errorf("%d bytes staged after close", n)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("staging directory holds %d files after close", len(ents))
	}
}

// staged is the bytes of pieces st holds in memory.
func staged(st *Storage) int64 { return st.memUsed.Load() }

// A file torrent (a delta pack) whose data cannot be written ends its
// Download at once with ErrStorage: anacrolix's own answer, disallowing
// data download, broke its invariants and could hang the client
// (decisions/0004).
func TestFileDownloadWriteError(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data := make([]byte, 600<<10)
	for i := range data {
		data[i] = byte(i * 31)
	}
	path := filepath.Join(dir, "x.dpack")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := BuildFile(path)
	if err != nil {
		t.Fatal(err)
	}
	seeder := newClient(t, Config{Listen: "127.0.0.1:0"}, openStore(t), false)
	if _, err := seeder.AddFile(info, dir); err != nil {
		t.Fatal(err)
	}
	// Where the leech's file should go is under a regular file: every
	// write fails (as root, permissions would not).
	blocked := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocked, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	leech := newClient(t, Config{Listen: "127.0.0.2:0", Peers: []string{seeder.Addr()}}, openStore(t), true)
	h, err := leech.AddFile(info, filepath.Join(blocked, "deltas"))
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := h.Download(dctx, 0); !errors.Is(err, ErrStorage) {
		t.Fatalf("download into an unwritable place: %v, want ErrStorage", err)
	}
}
