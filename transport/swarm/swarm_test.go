package swarm

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anacrolix/torrent/metainfo"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/chunkstore/storetest"
)

// release is a set of random chunks in a store, laid out as a torrent.
type release struct {
	env    []byte
	chunks []chunkstore.Chunk
	layout *Layout
	info   []byte
}

// ids lists the release's chunk IDs in order.
func (r *release) ids() []chunkstore.ID {
	out := make([]chunkstore.ID, 0, len(r.chunks))
	for _, c := range r.chunks {
		out = append(out, c.ID())
	}
	return out
}

// index is the position of chunk id in the release, or -1.
func (r *release) index(id chunkstore.ID) int {
	for i, c := range r.chunks {
		if c.ID() == id {
			return i
		}
	}
	return -1
}

func openStore(t *testing.T) *chunkstore.Local {
	t.Helper()
	s, err := chunkstore.Open(t.TempDir(), chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func makeRelease(t testing.TB, n int, seed uint64, pl int64) *release {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	rel := &release{env: bytes.Repeat([]byte("manifest!"), 1000+int(seed))}
	var entries []Entry
	for i := 0; i < n; i++ {
		plain := make([]byte, 8<<10+r.IntN(60<<10))
		for j := range plain { // compressible, not trivially
			plain[j] = byte(r.IntN(16))
		}
		c, err := chunkstore.Encode(plain, chunkstore.LevelFastest)
		if err != nil {
			t.Fatal(err)
		}
		rel.chunks = append(rel.chunks, c)
		entries = append(entries, Entry{ID: c.ID(), Stored: int64(len(c.Stored()))})
	}
	rel.layout = NewLayout("test-stable-1", int64(len(rel.env)), entries, pl)
	_, b, err := rel.layout.Info(func(f int) ([]byte, error) {
		if f == 0 {
			return rel.env, nil
		}
		return rel.chunks[f-1].Stored(), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rel.info = b
	return rel
}

// storeWith opens a store holding cs.
func storeWith(t *testing.T, cs []chunkstore.Chunk) *chunkstore.Local {
	t.Helper()
	s := openStore(t)
	storetest.Fill(t, s, cs...)
	return s
}

// startSeeder starts a client on 127.0.0.1 that seeds rel from src.
func startSeeder(ctx context.Context, t *testing.T, src Source, rel *release) *Client {
	t.Helper()
	c, err := New(Config{Listen: "127.0.0.1:0", Staging: t.TempDir()}, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Add(ctx, rel.info, rel.env); err != nil {
		t.Fatal(err)
	}
	return c
}

func newClient(t *testing.T, cfg Config, s *chunkstore.Local, download bool) *Client {
	t.Helper()
	if cfg.Staging == "" {
		cfg.Staging = t.TempDir()
	}
	var p chunkstore.Putter
	if download {
		p = s
	}
	c, err := New(cfg, s, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The layout round-trips through the info, and pieces span files.
func TestLayoutFromInfo(t *testing.T) {
	rel := makeRelease(t, 20, 1, 16<<10)
	mi := metainfo.MetaInfo{InfoBytes: rel.info}
	info, err := mi.UnmarshalInfo()
	if err != nil {
		t.Fatal(err)
	}
	l, err := LayoutFromInfo(&info)
	if err != nil {
		t.Fatal(err)
	}
	if l.Total() != rel.layout.Total() || l.Files() != 21 || l.NumPieces() != rel.layout.NumPieces() {
		t.Fatalf("layout differs: %d/%d bytes, %d files", l.Total(), rel.layout.Total(), l.Files())
	}
	for f := 0; f < l.Files(); f++ {
		a, z := l.PiecesOf(f)
		for p := a; p <= z; p++ {
			if x, y := l.FilesOf(p); f < x || f > y {
				t.Fatalf("file %d: piece %d touches files %d..%d", f, p, x, y)
			}
		}
	}
	bad := info
	bad.Files = append([]metainfo.FileInfo{{Length: 5, Path: []string{"etc", "passwd"}}}, info.Files[1:]...)
	if _, err := LayoutFromInfo(&bad); err == nil {
		t.Fatal("a torrent without the manifest first was accepted")
	}
	bad = info
	bad.Files = append(append([]metainfo.FileInfo(nil), info.Files...), info.Files[1])
	if _, err := LayoutFromInfo(&bad); err == nil {
		t.Fatal("a torrent repeating a chunk was accepted")
	}
}

// A terminal holding half the chunks downloads exactly the other half
// from a seeder, and every chunk it ends with verifies.
func TestFetchFromPeer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rel := makeRelease(t, 60, 2, 16<<10)
	origin := storeWith(t, rel.chunks)
	term := storeWith(t, rel.chunks[30:]) // holds the older half, as a terminal on the previous release would

	reads := &countingSource{Local: origin}
	seeder := startSeeder(ctx, t, reads, rel)
	leech := newClient(t, Config{Listen: "127.0.0.2:0", Peers: []string{seeder.Addr()}}, term, true)
	h, err := leech.Add(ctx, rel.info, rel.env)
	if err != nil {
		t.Fatal(err)
	}
	var want []chunkstore.ID
	var missing int64
	for i, c := range rel.chunks {
		want = append(want, c.ID())
		if i < 30 {
			missing += int64(len(c.Stored()))
		}
	}
	// Every chunk is handed over once: held ones as a zero Chunk (read
	// them from the store), downloaded ones as checked on admission.
	got := map[chunkstore.ID]int{}
	err = h.FetchChunksTo(ctx, want, 0, func(id chunkstore.ID, c chunkstore.Chunk) error {
		got[id]++
		if !c.IsZero() && (c.ID() != id || chunkstore.Sum(c.Plain()) != id) {
			t.Errorf("chunk %s handed over as %s", id.Short(), c.ID().Short())
		}
		if held := !c.IsZero(); held != (rel.index(id) < 30) {
			t.Errorf("chunk %d handed over with content %v", rel.index(id), held)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v (leech %+v; the seeder sent %d bytes)", err, h.Stats(), seeder.Uploaded())
	}
	for _, c := range rel.chunks {
		if got[c.ID()] != 1 {
			t.Errorf("chunk %s handed over %d times", c.ID().Short(), got[c.ID()])
		}
		if _, err := term.Get(ctx, c.ID()); err != nil {
			t.Fatalf("chunk %s: %v", c.ID().Short(), err)
		}
	}
	st := h.Stats()
	// Chunks are contiguous here, so only the piece on the boundary of the
	// held half is fetched beyond what was missing.
	if st.FromPeers < missing || st.FromPeers > missing+2*16<<10 {
		t.Fatalf("received %d bytes from peers, %d were missing", st.FromPeers, missing)
	}
	t.Logf("missing %d bytes, received %d from peers; the seeder read chunks %d times", missing, st.FromPeers, reads.n.Load())
}

// Pieces no fetch asks for and the store does not hold have an unknown
// completion, so that anacrolix leaves them out of its request planning;
// a fetch makes its pieces known while it runs, held pieces are complete
// (offered to peers) throughout, and a later fetch of other chunks works.
func TestUnaskedPiecesUnknown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rel := makeRelease(t, 60, 4, 16<<10)
	origin := storeWith(t, rel.chunks)
	term := storeWith(t, rel.chunks[50:])
	seeder := startSeeder(ctx, t, origin, rel)
	leech := newClient(t, Config{Listen: "127.0.0.2:0", Peers: []string{seeder.Addr()}}, term, true)
	h, err := leech.Add(ctx, rel.info, rel.env)
	if err != nil {
		t.Fatal(err)
	}
	// state names each piece: c complete, i incomplete, ? unknown.
	state := func() string {
		b := make([]byte, rel.layout.NumPieces())
		for p := range b {
			switch st := h.t.Piece(p).State(); {
			case !st.Ok:
				b[p] = '?'
			case st.Complete:
				b[p] = 'c'
			default:
				b[p] = 'i'
			}
		}
		return string(b)
	}
	// want is the state expected when the store holds chunks held and a
	// fetch asks for asked (indexes into rel.chunks; file = index+1).
	want := func(held, asked func(i int) bool) string {
		b := make([]byte, rel.layout.NumPieces())
		for p := range b {
			first, last := rel.layout.FilesOf(p)
			all, any := true, false
			for f := first; f <= last; f++ {
				h := f == 0 || held(f-1)
				all = all && h
				any = any || (f > 0 && asked(f-1))
			}
			switch {
			case all:
				b[p] = 'c'
			case any:
				b[p] = 'i'
			default:
				b[p] = '?'
			}
		}
		return string(b)
	}
	none := func(int) bool { return false }
	if got, w := state(), want(func(i int) bool { return i >= 50 }, none); got != w {
		t.Fatalf("before any fetch:\n got %s\nwant %s", got, w)
	}
	if !strings.Contains(state(), "?") || !strings.Contains(state(), "c") {
		t.Fatalf("the test needs unknown and complete pieces: %s", state())
	}
	fetch := func(from, to int) {
		t.Helper()
		if err := h.FetchChunksTo(ctx, rel.ids()[from:to], 0, nil); err != nil {
			t.Fatalf("fetch %d..%d: %v (the seeder sent %d bytes)", from, to, err, seeder.Uploaded())
		}
	}
	fetch(0, 10)
	// Pieces of fetched and held chunks are complete (as is a piece that
	// passed its check and reaches into chunk 10); pieces of chunks 11..49
	// go back to unknown once the fetch is over.
	// The fetch returns once the store holds its chunks, which the storage
	// admits inside MarkComplete, before anacrolix records the piece as
	// complete itself: the state is read until it settles (bounded).
	done := func(i int) bool { return i < 10 || i >= 50 }
	bad := func(got string) int {
		for p := range got {
			first, last := rel.layout.FilesOf(p)
			whole, unasked := true, true
			for f := first; f <= last; f++ {
				whole = whole && (f == 0 || done(f-1))
				unasked = unasked && f-1 >= 11 && f-1 < 50
			}
			if whole && got[p] != 'c' || unasked && got[p] != '?' {
				return p
			}
		}
		return -1
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got := state()
		if p := bad(got); p < 0 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("after fetching chunks 0..9, piece %d is %c:\n%s", p, got[p], got)
		}
	}
	fetch(20, 30)
	for i, c := range rel.chunks {
		if _, err := term.Get(ctx, c.ID()); (err == nil) != (done(i) || (i >= 20 && i < 30)) && !(i == 10 || i == 19 || i == 30) {
			t.Fatalf("chunk %d: held %v", i, err == nil)
		}
	}
}

// A connection that stays up but brings nothing (the peer answers the
// handshake, then never unchokes) is replaced: Fetch closes it when no
// useful byte has come for stuckAfter and dials the configured peer again.
// The peer here is a front for the seeder that is silent on its first
// connection and relays later ones.
func TestFetchRecyclesSilentPeer(t *testing.T) {
	defer func(r, s time.Duration) { redialEvery, stuckAfter = r, s }(redialEvery, stuckAfter)
	redialEvery, stuckAfter = 100*time.Millisecond, time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rel := makeRelease(t, 20, 4, 16<<10)
	origin := storeWith(t, rel.chunks)
	seeder := startSeeder(ctx, t, origin, rel)

	ln, err := net.Listen("tcp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	silentClosed := make(chan struct{})
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		open []net.Conn
	)
	defer wg.Wait()
	defer func() { // a failed run does not wait for anacrolix's timeouts
		mu.Lock()
		defer mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			n := conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if n == 1 {
					// A plain BitTorrent handshake back, then silence.
					hs := make([]byte, 68)
					if _, err := io.ReadFull(c, hs); err != nil {
						return
					}
					copy(hs[48:], "-XX0001-silentpeer00")
					if _, err := c.Write(hs); err != nil {
						return
					}
					io.Copy(io.Discard, c) // until the leech hangs up
					close(silentClosed)
					return
				}
				up, err := net.Dial("tcp", seeder.Addr())
				if err != nil {
					return
				}
				defer up.Close()
				go func() { io.Copy(up, c); up.Close() }()
				io.Copy(c, up)
			}()
		}
	}()

	term := openStore(t)
	leech := newClient(t, Config{Listen: "127.0.0.2:0", Peers: []string{ln.Addr().String()}}, term, true)
	h, err := leech.Add(ctx, rel.info, rel.env)
	if err != nil {
		t.Fatal(err)
	}
	want := rel.ids()
	if err := h.FetchChunks(ctx, want, 0); err != nil {
		t.Fatalf("%v (leech %+v; %d connections to the front)", err, h.Stats(), conns.Load())
	}
	select {
	case <-silentClosed:
	case <-time.After(5 * time.Second):
		t.Fatal("the silent connection was not closed")
	}
	for _, c := range rel.chunks {
		if _, err := term.Get(ctx, c.ID()); err != nil {
			t.Fatalf("chunk %s: %v", c.ID().Short(), err)
		}
	}
}

// A peer reads a piece in 16 KiB blocks, and a chunk file often spans
// pieces: reading the torrent piece after piece, block by block, reads
// each chunk from the store once.
func TestPieceReadsChunkOnce(t *testing.T) {
	ctx := context.Background()
	rel := makeRelease(t, 40, 3, 32<<10)
	src := &countingSource{Local: openStore(t)}
	storetest.Fill(t, src.Local, rel.chunks...)
	st := NewStorage(src, nil, t.TempDir(), nil)
	tor, err := st.Register(ctx, metainfo.HashBytes(rel.info), rel.layout, rel.env)
	if err != nil {
		t.Fatal(err)
	}
	blocks := 0
	for i := 0; i < rel.layout.NumPieces(); i++ {
		po, n := rel.layout.PieceRange(i)
		got := make([]byte, 0, n)
		for off := int64(0); off < n; off += 16 << 10 {
			b := make([]byte, min(16<<10, n-off))
			if _, err := (piece{tor, i}).ReadAt(b, off); err != nil {
				t.Fatal(err)
			}
			got = append(got, b...)
			blocks++
		}
		if !bytes.Equal(got, rel.content(po, n)) {
			t.Fatalf("piece %d: wrong bytes", i)
		}
	}
	if n := src.n.Load(); n != int64(len(rel.chunks)) {
		t.Errorf("%d store reads for %d blocks of %d chunks", n, blocks, len(rel.chunks))
	}
}

// content is the torrent's bytes [off, off+n).
func (r *release) content(off, n int64) []byte {
	all := append([]byte(nil), r.env...)
	for _, c := range r.chunks {
		all = append(all, c.Stored()...)
	}
	return all[off : off+n]
}

// countingSource counts reads of stored chunks.
type countingSource struct {
	*chunkstore.Local
	n atomic.Int64
}

func (c *countingSource) ReadStoredChecked(id chunkstore.ID) ([]byte, int, error) {
	c.n.Add(1)
	return c.Local.ReadStoredChecked(id)
}

// lyingSource serves a store's chunks with one byte flipped in each.
type lyingSource struct{ *chunkstore.Local }

func (l lyingSource) ReadStoredChecked(id chunkstore.ID) ([]byte, int, error) {
	b, n, err := l.Local.ReadStoredChecked(id)
	if err == nil && len(b) > 0 {
		b = append([]byte(nil), b...)
		b[len(b)/2] ^= 0x55
	}
	return b, n, err
}

// A peer that sends corrupt pieces is banned (by IP) and its data never
// reaches the store; the honest peer is not banned and completes the
// download.
func TestLyingPeerBanned(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rel := makeRelease(t, 40, 4, 16<<10)
	good, bad := openStore(t), openStore(t)
	storetest.Fill(t, good, rel.chunks...)
	storetest.Fill(t, bad, rel.chunks...)
	honest := newClient(t, Config{Listen: "127.0.0.5:0"}, good, false)
	liar, err := New(Config{Listen: "127.0.0.6:0", Staging: t.TempDir()}, lyingSource{bad}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer liar.Close()
	var hh *Handle
	for _, c := range []*Client{honest, liar} {
		h, err := c.Add(ctx, rel.info, rel.env)
		if err != nil {
			t.Fatal(err)
		}
		if c == honest {
			hh = h
		}
	}
	term := openStore(t)
	// The liar is dialled first and alone: it gets the first requests.
	leech := newClient(t, Config{Listen: "127.0.0.7:0", Peers: []string{liar.Addr()}}, term, true)
	h, err := leech.Add(ctx, rel.info, rel.env)
	if err != nil {
		t.Fatal(err)
	}
	want := rel.ids()
	done := make(chan error, 1)
	go func() { done <- h.FetchChunks(ctx, want, 0) }()
	deadline := time.Now().Add(20 * time.Second)
	for len(leech.BannedIPs()) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	banned := leech.BannedIPs()
	if len(banned) != 1 || banned[0] != "127.0.0.6" {
		t.Fatalf("banned %v, want the liar 127.0.0.6", banned)
	}
	// Offer the honest peer as a tracker would: again every few seconds,
	// and to both sides, since a tracker tells the honest peer about the
	// terminal too (about one run in ten, offering it to the terminal
	// alone led to no transfer in 40 s).
	offers := 0
	for err := error(nil); ; {
		h.AddPeers([]string{honest.Addr()})
		hh.AddPeers([]string{leech.Addr()})
		offers++
		select {
		case err = <-done:
		case <-time.After(5 * time.Second):
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		break
	}
	if offers > 1 {
		t.Logf("the honest peer was offered %d times", offers)
	}
	for _, c := range rel.chunks {
		if _, err := term.Get(ctx, c.ID()); err != nil {
			t.Fatalf("chunk %s: %v", c.ID().Short(), err)
		}
	}
	if b := leech.BannedIPs(); len(b) != 1 {
		t.Fatalf("banned %v after the honest peer delivered", b)
	}
	st := h.Stats()
	if st.BadPieces == 0 {
		t.Fatalf("no bad pieces counted: %+v", st)
	}
	// The liar cost a few pieces, not a stream of them.
	if wasted := st.FromPeers - rel.layout.Total(); wasted > 64*16<<10 {
		t.Fatalf("received %d bytes for %d: the liar was not cut off early", st.FromPeers, rel.layout.Total())
	}
	t.Logf("bad pieces %d, received %d bytes for %d", st.BadPieces, st.FromPeers, rel.layout.Total())
}

// A terminal that holds chunks only as plain bytes (decoded from a delta
// pack, or copied from a seed) reproduces their stored form; those whose
// pieces pass enter its store and a second terminal downloads them from
// it. A chunk it holds wrongly stays out (the chunks sharing a piece with
// it may too: only a piece's hash vouches for bytes).
func TestReproduce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rel := makeRelease(t, 40, 3, 16<<10) // stored at LevelFastest: the default is tried first and missed
	term := storeWith(t, rel.chunks[:5])
	plain := map[chunkstore.ID][]byte{}
	for _, c := range rel.chunks[5:] {
		plain[c.ID()] = c.Plain()
	}
	// Chunk 17 is held wrongly, with bytes whose compression has the right
	// length: only the piece hash can tell.
	const bad = 17
	orig := rel.chunks[bad]
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatal("no same-length tampering found")
		}
		p := bytes.Clone(orig.Plain())
		p[i*7%len(p)] ^= 0x0f
		c, err := chunkstore.Encode(p, chunkstore.LevelFastest)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Stored()) == len(orig.Stored()) {
			plain[orig.ID()] = p
			break
		}
	}
	seeder := newClient(t, Config{Listen: "127.0.0.1:0"}, term, true)
	h, err := seeder.Add(ctx, rel.info, rel.env)
	if err != nil {
		t.Fatal(err)
	}
	n, err := h.Reproduce(ctx, func(id chunkstore.ID) ([]byte, error) { return plain[id], nil })
	if err != nil {
		t.Fatal(err)
	}
	a, z := rel.layout.PiecesOf(bad + 1)
	var want []chunkstore.ID
	for i, c := range rel.chunks {
		x, y := rel.layout.PiecesOf(i + 1)
		spoiled := x <= z && y >= a
		ok, err := term.Has(ctx, c.ID())
		if err != nil {
			t.Fatal(err)
		}
		if i == bad && ok || !spoiled && !ok {
			t.Fatalf("chunk %d (pieces %d..%d, bad chunk's %d..%d): in the store %v", i, x, y, a, z, ok)
		}
		if ok {
			want = append(want, c.ID())
		}
	}
	if n != len(want)-5 {
		t.Fatalf("Reproduce reported %d chunks, %d entered the store", n, len(want)-5)
	}
	// What entered is seeded: a second terminal downloads it.
	other := openStore(t)
	leech := newClient(t, Config{Listen: "127.0.0.2:0", Peers: []string{seeder.Addr()}}, other, true)
	lh, err := leech.Add(ctx, rel.info, rel.env)
	if err != nil {
		t.Fatal(err)
	}
	if err := lh.FetchChunks(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	for _, id := range want {
		if _, err := other.Get(ctx, id); err != nil {
			t.Fatalf("chunk %s: %v", id.Short(), err)
		}
	}
	t.Logf("%d of %d chunks reproduced, %d downloaded from the reproducing terminal", n, len(rel.chunks)-5, len(want))
}

// A node with Fill (a branch cache) offers every piece while its store is
// empty and fills each chunk once, when a peer first asks for its piece.
func TestFillOnDemand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rel := makeRelease(t, 30, 4, 16<<10)
	upstream := map[chunkstore.ID]chunkstore.Chunk{}
	for _, c := range rel.chunks {
		upstream[c.ID()] = c
	}
	branch := openStore(t)
	var mu sync.Mutex
	fills := map[chunkstore.ID]int{}
	seeder := newClient(t, Config{Listen: "127.0.0.1:0", Fill: func(ctx context.Context, ids []chunkstore.ID) error {
		for _, id := range ids {
			mu.Lock()
			fills[id]++
			mu.Unlock()
			c, ok := upstream[id]
			if !ok {
				return chunkstore.ErrNotFound
			}
			if _, err := branch.Put(ctx, c); err != nil {
				return err
			}
		}
		return nil
	}}, branch, false)
	if _, err := seeder.Add(ctx, rel.info, rel.env); err != nil {
		t.Fatal(err)
	}
	term := openStore(t)
	leech := newClient(t, Config{Listen: "127.0.0.2:0", Peers: []string{seeder.Addr()}}, term, true)
	h, err := leech.Add(ctx, rel.info, rel.env)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]chunkstore.ID, 0, 10)
	for _, c := range rel.chunks[:10] {
		want = append(want, c.ID())
	}
	if err := h.FetchChunks(ctx, want, 0); err != nil {
		t.Fatalf("%v (leech %+v)", err, h.Stats())
	}
	for _, id := range want {
		if _, err := term.Get(ctx, id); err != nil {
			t.Fatalf("chunk %s: %v", id.Short(), err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for id, n := range fills {
		if n != 1 {
			t.Fatalf("chunk %s filled %d times", id.Short(), n)
		}
	}
	// Ten chunks asked for, plus at most the neighbours sharing their last
	// piece: the rest of the release was not fetched upstream.
	if len(fills) < 10 || len(fills) > 12 {
		t.Fatalf("%d chunks filled for 10 asked for", len(fills))
	}
}

// anacrolix's scheduling diagnostic is debug output; other warnings pass.
func TestQuietHandler(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(quietHandler{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})}).With("component", "torrent")
	log.Warn(unlockDiagnostic, "duration", time.Second)
	log.Warn("piece failed", "piece", 3)
	if out := buf.String(); strings.Contains(out, unlockDiagnostic) || !strings.Contains(out, "piece failed") || !strings.Contains(out, "component=torrent") {
		t.Fatalf("log at info:\n%s", out)
	}
	buf.Reset()
	log = slog.New(quietHandler{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})})
	log.Warn(unlockDiagnostic)
	if out := buf.String(); !strings.Contains(out, "level=DEBUG") {
		t.Fatalf("log at debug:\n%s", out)
	}
}

// A configured peer that is not up when the fetch starts is dialled again
// until it is: the fetch completes once the seeder appears (anacrolix
// alone drops a peer whose dial failed, and no tracker names it again).
func TestConfiguredPeerRedialled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rel := makeRelease(t, 6, 8, 16<<10)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // the seeder takes this port later; until then dials are refused
	term := openStore(t)
	leech := newClient(t, Config{Listen: "127.0.0.2:0", Peers: []string{addr}}, term, true)
	h, err := leech.Add(ctx, rel.info, rel.env)
	if err != nil {
		t.Fatal(err)
	}
	want := rel.ids()
	done := make(chan error, 1)
	go func() { done <- h.FetchChunks(ctx, want, 0) }()
	time.Sleep(time.Second) // the first dial has failed by now
	origin := storeWith(t, rel.chunks)
	seeder := newClient(t, Config{Listen: addr}, origin, false)
	if _, err := seeder.Add(ctx, rel.info, rel.env); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("%v (leech %+v)", err, h.Stats())
	}
}

// A watch carries arrivals in order; the chunks themselves only while
// they fit its budget (a lagging receiver reads the rest from the store),
// and a closed watch collects nothing.
func TestWatchBudget(t *testing.T) {
	rel := makeRelease(t, 4, 5, 32<<10)
	tor := NewStorage(nil, nil, t.TempDir(), nil).newTorrent(metainfo.Hash{}, rel.layout)
	w := tor.openWatch()
	big := make([]byte, watchBudget/2)
	huge, err := chunkstore.Encode(big, chunkstore.LevelFastest) // ~8 MiB plain
	if err != nil {
		t.Fatal(err)
	}
	tor.mu.Lock()
	tor.arrivedLocked(1, huge)
	tor.arrivedLocked(2, rel.chunks[1])
	tor.arrivedLocked(3, huge) // over budget: index only
	tor.arrivedLocked(4, rel.chunks[3])
	tor.mu.Unlock()
	got := tor.take(w)
	if len(got) != 4 {
		t.Fatalf("%d arrivals, want 4", len(got))
	}
	for k, want := range []bool{true, true, false, true} {
		if got[k].f != k+1 || got[k].c.IsZero() == want {
			t.Errorf("arrival %d: file %d, chunk carried %v, want file %d, %v", k, got[k].f, !got[k].c.IsZero(), k+1, want)
		}
	}
	if len(tor.take(w)) != 0 {
		t.Error("take returned arrivals twice")
	}
	tor.closeWatch(w)
	tor.mu.Lock()
	tor.arrivedLocked(1, rel.chunks[0])
	tor.mu.Unlock()
	if len(w.queue) != 0 {
		t.Error("a closed watch still collects")
	}
}
