package transport_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/chunkstore/storetest"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/transport"
)

// origin makes a store holding n chunks and one signed release, served by a
// real Server.
func origin(t *testing.T, n int) (string, []manifest.ChunkRef, *transport.Server) {
	t.Helper()
	dir := t.TempDir()
	s, err := chunkstore.Open(dir, chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := manifest.NewBuilder()
	var refs []manifest.ChunkRef
	for i := 0; i < n; i++ {
		c := storetest.Chunk(t, uint64(i), 3000+i*10)
		if _, err := s.Put(context.Background(), c); err != nil {
			t.Fatal(err)
		}
		refs = append(refs, manifest.ChunkRef{ID: c.ID(), Size: uint32(c.Size())})
		b.AddChunk(c.ID(), uint32(c.Size()))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Kind: manifest.KindImage, Name: "os", Channel: "stable", Revision: 1,
		Chunker: chunkstore.DefaultParams(), Compression: manifest.CompressionZstd, Size: b.Size()}
	m.Chunks, m.Runs = b.Result()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))
	env, err := manifest.Sign(m, manifest.PrivateKey{Key: priv, ID: manifest.KeyIDOf(priv.Public().(ed25519.PublicKey))})
	if err != nil {
		t.Fatal(err)
	}
	if err := manifest.OpenReleases(dir).Put(env, m); err != nil {
		t.Fatal(err)
	}
	srv, err := transport.NewServer(dir, transport.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return dir, refs, srv
}

func noSleep(context.Context, time.Duration) error { return nil }

func fetchAll(t *testing.T, c *transport.Client, refs []manifest.ChunkRef) (map[chunkstore.ID]bool, error) {
	var mu sync.Mutex
	got := map[chunkstore.ID]bool{}
	err := c.Fetch(context.Background(), refs, func(ch chunkstore.Chunk) error {
		mu.Lock()
		defer mu.Unlock()
		if got[ch.ID()] {
			t.Errorf("chunk delivered twice")
		}
		got[ch.ID()] = true
		return nil
	})
	return got, err
}

func TestFetchRoundTripAndMetrics(t *testing.T) {
	_, refs, srv := origin(t, 200)
	hs := httptest.NewServer(srv)
	defer hs.Close()
	c, err := transport.NewClient(hs.URL, transport.ClientOptions{BatchBytes: 50 << 10, Sleep: noSleep})
	if err != nil {
		t.Fatal(err)
	}
	env, err := c.Manifest(context.Background(), "os", "stable", 0)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := manifest.Open(env); err != nil || m.Revision != 1 {
		t.Fatalf("manifest: %v", err)
	}
	got, err := fetchAll(t, c, refs)
	if err != nil || len(got) != len(refs) {
		t.Fatalf("fetched %d of %d: %v", len(got), len(refs), err)
	}
	// Served bytes equal what the client received (before /metrics
	// itself). The server counts a response when its handler returns, which
	// can be just after the client has read the body: look again briefly.
	var served float64
	for try := 0; try < 100; try++ {
		resp, err := http.Get(hs.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), "imgctl_served_bytes_total") {
			t.Fatal("metrics lack imgctl_served_bytes_total")
		}
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, "imgctl_served_bytes_total ") {
				if _, err := fmtSscan(strings.TrimPrefix(l, "imgctl_served_bytes_total "), &served); err != nil {
					t.Fatal(err)
				}
			}
		}
		if int64(served) == c.Received() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if int64(served) != c.Received() {
		t.Fatalf("server counted %v bytes, client received %d", served, c.Received())
	}
	if _, err := c.Manifest(context.Background(), "os", "stable", 7); !errors.Is(err, manifest.ErrNoRelease) {
		t.Fatalf("missing revision: %v", err)
	}
}

// corrupting wraps a handler and flips a byte in the bodies of chunk
// responses for the first `times` requests.
type corrupting struct {
	h     http.Handler
	mu    sync.Mutex
	times int
}

type rec struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (r *rec) Write(p []byte) (int, error) { return r.buf.Write(p) }

func (c *corrupting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, "/v1/chunks") {
		c.h.ServeHTTP(w, r)
		return
	}
	rw := &rec{ResponseWriter: w}
	c.h.ServeHTTP(rw, r)
	b := rw.buf.Bytes()
	c.mu.Lock()
	if c.times != 0 && len(b) > 100 {
		b[len(b)-5] ^= 0xFF
		if c.times > 0 {
			c.times--
		}
	}
	c.mu.Unlock()
	w.Write(b)
}

func TestCorruptServerIsRetriedThenRefused(t *testing.T) {
	_, refs, srv := origin(t, 20)
	// Transient corruption: retried, then succeeds.
	hs := httptest.NewServer(&corrupting{h: srv, times: 2})
	c, _ := transport.NewClient(hs.URL, transport.ClientOptions{Sleep: noSleep})
	got, err := fetchAll(t, c, refs)
	hs.Close()
	if err != nil || len(got) != len(refs) {
		t.Fatalf("transient corruption: %d of %d: %v", len(got), len(refs), err)
	}
	// Persistent corruption: an IntegrityError, and the bad chunk is never delivered.
	hs = httptest.NewServer(&corrupting{h: srv, times: -1})
	defer hs.Close()
	c, _ = transport.NewClient(hs.URL, transport.ClientOptions{Sleep: noSleep, Retries: 2})
	got, err = fetchAll(t, c, refs)
	if !errors.Is(err, chunkstore.ErrCorrupt) {
		t.Fatalf("persistent corruption: %v, want ErrCorrupt", err)
	}
	if len(got) == len(refs) {
		t.Fatal("corrupt chunk delivered")
	}
}

// FetchBatchesInto decodes each chunk into the buffer its receiver gives,
// past the buffer's length, also when the server first sent a corrupt body
// (decoded there, refused, fetched again); chunks for which the receiver
// gives no buffer come in buffers of their own. DirSource does the same.
func TestFetchBatchesInto(t *testing.T) {
	dir, refs, srv := origin(t, 60)
	hs := httptest.NewServer(&corrupting{h: srv, times: 1})
	defer hs.Close()
	c, _ := transport.NewClient(hs.URL, transport.ClientOptions{BatchBytes: 40 << 10, Sleep: noSleep})
	checkFetchInto(t, refs, c)
	ds, err := transport.OpenDirSource(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkFetchInto(t, refs, ds)
}

// A DirSource reads the store's chunk index only when a chunk is read: it
// serves manifests from a store whose packs cannot be listed, and the
// fetch then fails with the store's error; once closed it reads nothing.
func TestDirSourceReadsIndexLate(t *testing.T) {
	dir, refs, _ := origin(t, 3)
	packs := filepath.Join(dir, "packs")
	if err := os.Rename(packs, packs+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(packs, nil, 0o644); err != nil { // not a directory
		t.Fatal(err)
	}
	ds, err := transport.OpenDirSource(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Manifest(context.Background(), "os", "stable", 0); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	fetch := func() error {
		return ds.Fetch(context.Background(), refs, func(chunkstore.Chunk) error { return nil })
	}
	if err := fetch(); err == nil || !strings.Contains(err.Error(), "packs") {
		t.Fatalf("fetch from a store whose packs cannot be listed: %v", err)
	}
	if err := os.Remove(packs); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(packs+".away", packs); err != nil {
		t.Fatal(err)
	}
	if err := fetch(); err != nil {
		t.Fatalf("fetch once the packs are back: %v", err)
	}
	if err := ds.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fetch(); err == nil {
		t.Fatal("a closed source fetched")
	}
}

func checkFetchInto(t *testing.T, refs []manifest.ChunkRef, f delta.BatchInto) {
	t.Helper()
	var mu sync.Mutex
	got := map[chunkstore.ID]bool{}
	inPlace, own := 0, 0
	err := f.FetchBatchesInto(context.Background(), refs, func() (func(chunkstore.ID, int) []byte, func(chunkstore.Chunk) error, func() error) {
		buf := make([]byte, 0, 1<<20)
		var last []byte // what into returned for the chunk put receives next
		into := func(id chunkstore.ID, size int) []byte {
			if id[0]%3 == 0 { // no room for this one
				last = nil
				return nil
			}
			last = buf
			return buf
		}
		put := func(ch chunkstore.Chunk) error {
			mu.Lock()
			defer mu.Unlock()
			got[ch.ID()] = true
			if chunkstore.Sum(ch.Plain()) != ch.ID() {
				t.Errorf("chunk %s: wrong bytes", ch.ID().Short())
			}
			switch {
			case last == nil:
				own++
			case &last[len(last):cap(last)][0] == &ch.Plain()[0]:
				inPlace++
				buf = buf[:len(buf)+ch.Size()] // keep it, as the assembler's run does
				if cap(ch.Plain()) != ch.Size() {
					t.Errorf("a chunk decoded in place may grow over the buffer (cap %d)", cap(ch.Plain()))
				}
			default:
				t.Errorf("chunk %s: given a buffer, decoded elsewhere", ch.ID().Short())
			}
			return nil
		}
		return into, put, nil
	})
	if err != nil || len(got) != len(refs) {
		t.Fatalf("%T: fetched %d of %d: %v", f, len(got), len(refs), err)
	}
	if inPlace == 0 || own == 0 || inPlace+own != len(refs) {
		t.Fatalf("%T: %d chunks decoded in place, %d in buffers of their own, of %d", f, inPlace, own, len(refs))
	}
}

// A server that sends more than it should is cut off at the bound.
func TestOversizedBodyIsCutOff(t *testing.T) {
	_, refs, _ := origin(t, 1)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			http.NotFound(w, r) // no batch route: single GETs
			return
		}
		chunk := bytes.Repeat([]byte{1}, 1<<20)
		for i := 0; i < 50; i++ {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer hs.Close()
	c, _ := transport.NewClient(hs.URL, transport.ClientOptions{Sleep: noSleep, Retries: 1})
	_, err := fetchAll(t, c, refs)
	if !errors.Is(err, chunkstore.ErrCorrupt) {
		t.Fatalf("oversized body: %v", err)
	}
	if c.Received() > int64(2*chunkstore.MaxStoredSize(int(refs[0].Size))+10) {
		t.Fatalf("client read %d bytes of an oversized body", c.Received())
	}
}

func TestFallbackToSingleGets(t *testing.T) {
	_, refs, srv := origin(t, 10)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			http.Error(w, "no", http.StatusMethodNotAllowed)
			return
		}
		srv.ServeHTTP(w, r)
	}))
	defer hs.Close()
	c, _ := transport.NewClient(hs.URL, transport.ClientOptions{Sleep: noSleep})
	got, err := fetchAll(t, c, refs)
	if err != nil || len(got) != len(refs) {
		t.Fatalf("%d of %d: %v", len(got), len(refs), err)
	}
}

func TestServerRefusesCorruptFile(t *testing.T) {
	dir, refs, srv := origin(t, 3)
	d, _ := chunkstore.OpenDir(dir)
	p, off, n, err := d.Locate(refs[1].ID)
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := readFile(p)
	b[off+int64(n/2)] ^= 1
	writeFile(t, p, b)
	hs := httptest.NewServer(srv)
	defer hs.Close()
	resp, err := http.Get(hs.URL + "/v1/chunks/" + refs[1].ID.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("corrupt chunk served with %s", resp.Status)
	}
	resp, _ = http.Get(hs.URL + "/v1/chunks/" + refs[0].ID.String())
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("good chunk: %s", resp.Status)
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "10MB/s": 10e6, "512KiB": 512 << 10, "1.5M": 1536 << 10, "100": 100} {
		got, err := transport.ParseRate(in)
		if err != nil || got != want {
			t.Errorf("%s: %d %v, want %d", in, got, err, want)
		}
	}
	if _, err := transport.ParseRate("fast"); err == nil {
		t.Error("bad rate accepted")
	}
	if got, err := transport.ParseSize("32MiB"); err != nil || got != 32<<20 {
		t.Errorf("32MiB: %d %v", got, err)
	}
	if _, err := transport.ParseSize("32MiB/s"); err == nil {
		t.Error("a rate accepted as a size")
	}
}

// A connection dropped in the middle of a batch: the client asks again for
// what it did not get, and every chunk is delivered exactly once.
func TestDroppedConnectionIsResumed(t *testing.T) {
	_, refs, srv := origin(t, 120)
	var mu sync.Mutex
	drops := 2
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		drop := r.Method == http.MethodPost && drops > 0
		if drop {
			drops--
		}
		mu.Unlock()
		if !drop {
			srv.ServeHTTP(w, r)
			return
		}
		rw := &rec{ResponseWriter: w}
		srv.ServeHTTP(rw, r)
		body := rw.buf.Bytes()
		hj, ok := w.(http.Hijacker)
		if !ok {
			t.Error("no hijacker")
			return
		}
		conn, bw, _ := hj.Hijack()
		// Promise the whole body, send half, hang up.
		bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: " + transport.MediaBatch + "\r\nContent-Length: " + itoa(len(body)) + "\r\n\r\n")
		bw.Write(body[:len(body)/2])
		bw.Flush()
		conn.Close()
	}))
	defer hs.Close()
	c, _ := transport.NewClient(hs.URL, transport.ClientOptions{Sleep: noSleep, BatchBytes: 100 << 10})
	got, err := fetchAll(t, c, refs)
	if err != nil || len(got) != len(refs) {
		t.Fatalf("fetched %d of %d: %v", len(got), len(refs), err)
	}
	if drops != 0 {
		t.Fatal("no connection was dropped")
	}
}

// The compact torrent route hands the release's info bytes, manifest and
// trackers to the server's CompactTorrent once per release (twenty
// terminals at once cost one conversion), and is absent without it.
func TestTorrentCompactRoute(t *testing.T) {
	dir, _, plain := origin(t, 3)
	if err := manifest.OpenReleases(dir).PutSide("os", "stable", 1, manifest.SideTorrentInfo, []byte("INFO")); err != nil {
		t.Fatal(err)
	}
	calls := 0
	srv, err := transport.NewServer(dir, transport.ServerOptions{Announce: []string{"http://tracker/announce"},
		CompactTorrent: func(info, env []byte, trackers []string) ([]byte, error) {
			calls++
			if _, err := manifest.Open(env); err != nil {
				return nil, err
			}
			return append(append([]byte("C:"), info...), trackers[0]...), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c, err := transport.NewClient(ts.URL, transport.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		b, err := c.TorrentCompact(context.Background(), "os", "stable", 1, 1<<20)
		if err != nil || string(b) != "C:INFOhttp://tracker/announce" {
			t.Fatalf("compact torrent %q, %v", b, err)
		}
	}
	if calls != 1 {
		t.Fatalf("%d conversions for one release", calls)
	}
	ts2 := httptest.NewServer(plain)
	defer ts2.Close()
	c2, _ := transport.NewClient(ts2.URL, transport.ClientOptions{})
	if _, err := c2.TorrentCompact(context.Background(), "os", "stable", 1, 1<<20); err == nil {
		t.Fatal("a server without CompactTorrent served a compact torrent")
	}
}

// countingOrigin serves srv and counts the chunk IDs asked for, by single
// GETs and inside batch requests.
type countingOrigin struct {
	srv         http.Handler
	mu          sync.Mutex
	gets, posts int
	asked       map[chunkstore.ID]int
}

func (o *countingOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/chunks/batch":
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		o.posts++
		for _, l := range strings.Fields(string(body)) {
			if id, err := chunkstore.ParseID(l); err == nil {
				o.asked[id]++
			}
		}
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/chunks/"):
		o.gets++
		if id, err := chunkstore.ParseID(strings.TrimPrefix(r.URL.Path, "/v1/chunks/")); err == nil {
			o.asked[id]++
		}
	}
	h := o.srv
	o.mu.Unlock()
	h.ServeHTTP(w, r)
}

// branchOf serves upstream over HTTP and returns a fresh branch store
// with an Upstream on it; both are closed when the test ends.
func branchOf(t *testing.T, upstream http.Handler) (*chunkstore.Local, *transport.Upstream) {
	t.Helper()
	hs := httptest.NewServer(upstream)
	t.Cleanup(hs.Close)
	store, err := chunkstore.Open(t.TempDir(), chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	up, err := transport.NewUpstream(hs.URL, store, transport.UpstreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return store, up
}

// A branch fills what it lacks by batch requests, each chunk once however
// many callers ask at the same time; a chunk upstream lacks fails alone.
func TestUpstreamChunksBatches(t *testing.T) {
	ctx := context.Background()
	_, refs, srv := origin(t, 40)
	o := &countingOrigin{srv: srv, asked: map[chunkstore.ID]int{}}
	store, up := branchOf(t, o)

	// Four callers at once, over overlapping halves; some refs by ID only.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for k := 0; k < 4; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			part := append([]manifest.ChunkRef(nil), refs[k*10:min(len(refs), k*10+20)]...)
			if k%2 == 1 {
				for i := range part {
					part[i].Size = 0
				}
			}
			errs[k] = up.Chunks(ctx, part)
		}()
	}
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", k, err)
		}
	}
	for _, r := range refs {
		if _, err := store.Get(ctx, r.ID); err != nil {
			t.Fatalf("chunk %s: %v", r.ID.Short(), err)
		}
		if n := o.asked[r.ID]; n != 1 {
			t.Fatalf("chunk %s asked upstream %d times", r.ID.Short(), n)
		}
	}
	if o.gets != 0 || o.posts == 0 || o.posts > 4 {
		t.Fatalf("%d GETs and %d batch requests for %d chunks", o.gets, o.posts, len(refs))
	}

	// Held chunks cost no request; one upstream lacks fails alone.
	fresh := storetest.Chunk(t, 999, 4000)
	_, more, srv2 := origin(t, 45) // the same first 40 chunks and 5 more
	o.mu.Lock()
	o.srv = srv2
	before := o.posts + o.gets
	o.mu.Unlock()
	ask := append(append(append([]manifest.ChunkRef(nil), refs...), manifest.ChunkRef{ID: fresh.ID(), Size: uint32(fresh.Size())}), more[40:]...)
	err := up.Chunks(ctx, ask)
	if !errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("a chunk upstream lacks: %v", err)
	}
	for _, r := range more[40:] {
		if _, err := store.Get(ctx, r.ID); err != nil {
			t.Fatalf("chunk %s after a missing one: %v", r.ID.Short(), err)
		}
	}
	for _, r := range refs {
		if o.asked[r.ID] != 1 {
			t.Fatalf("held chunk %s asked again", r.ID.Short())
		}
	}
	t.Logf("first fill: %d batch requests for %d chunks; with a missing chunk: %d requests more", o.posts, len(refs), o.posts+o.gets-before)
}

// An unreachable upstream fails a branch's fill after the batch's retries,
// without a storm of single-chunk requests.
func TestUpstreamChunksUnavailable(t *testing.T) {
	_, refs, _ := origin(t, 30)
	o := &countingOrigin{asked: map[chunkstore.ID]int{}, srv: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	})}
	_, up := branchOf(t, o)
	if err := up.Chunks(context.Background(), refs); !errors.Is(err, transport.ErrPeerUnavailable) {
		t.Fatalf("upstream down: %v", err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.gets != 0 || o.posts == 0 || o.posts > 5 {
		t.Fatalf("upstream down: %d single GETs, %d batch requests for %d chunks", o.gets, o.posts, len(refs))
	}
}
