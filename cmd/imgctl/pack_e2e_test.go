package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
)

// editImage writes an update of src that edits it everywhere a little: one
// byte in every 40 KiB changes, so nearly every chunk is new, but each is
// close to an old one (what a delta pack is for).
func editImage(t *testing.T, src, dst string) { editImageEvery(t, src, dst, 40<<10) }

// editImageEvery changes one byte in every step bytes of src.
func editImageEvery(t *testing.T, src, dst string, step int) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1000; i < len(b); i += step {
		b[i] ^= 0x5a
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// p2pPull is what the pack tests read from pull --p2p --json.
type p2pPull struct {
	Packs int64 `json:"bytes_from_packs"`
	Lean  bool  `json:"pack_lean"`
	Peers int64 `json:"bytes_from_peers"`
	Web   int64 `json:"bytes_from_webseeds"`
}

// pullP2P pulls release 2 from url with --p2p (listening on listen) and the
// seed into out, and checks that out is want.
func (f *fixture) pullP2P(t *testing.T, url, cache, out, seed, listen, want string, extra ...string) p2pPull {
	t.Helper()
	args := append([]string{"pull", "--from", url, "--trust", f.pub, "--name", "os", "--cache", cache, "--out", out,
		"--seed", seed, "--p2p", "--listen", listen, "--p2p-stall", "20s", "--json", "-q"}, extra...)
	r := imgctl(t, nil, args...)
	if r.code != 0 {
		t.Fatalf("pull --p2p from %s: exit %d\n%s", url, r.code, r.stderr)
	}
	sameFile(t, out, want)
	return decode[p2pPull](t, r.stdout)
}

// A terminal holding release 1 takes release 2 from the delta pack the
// publisher built (publish --packs-from), fetching far fewer bytes; a
// damaged pack falls back to the chunks without a failed pull.
func TestPackPullAndFallback(t *testing.T) {
	f := newFixture(t, 12<<20)
	upd := filepath.Join(f.dir, "v3.img")
	editImage(t, f.img1, upd)
	f.publish(t, f.img1)
	p := f.publish(t, upd, "--packs-from", "1")
	packs, _ := p["packs"].([]any)
	if len(packs) != 1 {
		t.Fatalf("publish --packs-from 1 made %d packs: %v", len(packs), p["packs"])
	}
	if ls := mustRun(t, "pack", "ls", "--store", f.store, "os"); !strings.Contains(ls, "os/stable 1→2") {
		t.Fatalf("pack ls:\n%s", ls)
	}
	if d := mustRun(t, "diff", "--store", f.store, "os@1", "os@2"); !strings.Contains(d, "delta pack") {
		t.Fatalf("diff does not show the pack:\n%s", d)
	}
	url := serve(t, f.store)
	seed := f.holdRelease1(t, url)
	pull2 := func(name string, extra ...string) pullJSON {
		t.Helper()
		out := filepath.Join(f.dir, name+".img")
		j, r := f.pull(t, url, filepath.Join(f.dir, "cache-"+name), out, append([]string{"--seed", seed}, extra...)...)
		if r.code != 0 {
			t.Fatalf("pull %s: exit %d\n%s", name, r.code, r.stderr)
		}
		sameFile(t, out, upd)
		return j
	}
	withPack := pull2("pack")
	chunks := pull2("chunks", "--no-packs")
	t.Logf("v1→v2: %d bytes with the pack (%d of them the pack), %d with chunks", withPack.BytesFetched, withPack.BytesFromPacks, chunks.BytesFetched)
	if withPack.BytesFromPacks == 0 || chunks.BytesFromPacks != 0 || withPack.BytesFetched*2 > chunks.BytesFetched {
		t.Fatalf("pack pull %+v, chunk pull %+v", withPack, chunks)
	}
	// The seed's manifest is known, so the new one came as a delta against it.
	if m := withPack.BytesFetched - withPack.BytesFromPacks; m >= int64(withPack.ManifestBytes) {
		t.Fatalf("manifest: %d bytes fetched for a %d-byte manifest", m, withPack.ManifestBytes)
	}

	// Damage the pack on the server: the pull still succeeds, from chunks.
	dp, _ := filepath.Glob(filepath.Join(f.store, "deltas", "*.dpack"))
	if len(dp) != 1 {
		t.Fatalf("packs in the store: %v", dp)
	}
	b, _ := os.ReadFile(dp[0])
	b[len(b)/2] ^= 0xff
	os.WriteFile(dp[0], b, 0o644)
	if r := imgctl(t, nil, "fsck", "--store", f.store, "-q"); r.code != 3 || !strings.Contains(r.stdout, "bad delta pack") {
		t.Fatalf("fsck of a damaged pack: exit %d\n%s", r.code, r.stdout)
	}
	damaged := pull2("damaged")
	if damaged.BytesFetched <= withPack.BytesFetched {
		t.Fatalf("a damaged pack cost nothing extra: %+v", damaged)
	}

	// gc keeps a pack while its release is kept, and removes it with it.
	mustRun(t, "gc", "--store", f.store, "--keep", "1")
	if left, _ := filepath.Glob(filepath.Join(f.store, "deltas", "*.dpack")); len(left) != 1 {
		t.Fatalf("gc removed the pack of a kept release: %v", left)
	}
	f.publish(t, f.img2) // revision 3: release 2 and its pack go
	// A pack younger than --pack-grace may be a build whose record is not
	// written yet: kept.
	mustRun(t, "gc", "--store", f.store, "--keep", "1")
	if left, _ := filepath.Glob(filepath.Join(f.store, "deltas", "*.dpack")); len(left) != 1 {
		t.Fatalf("gc removed a pack younger than its grace: %v", left)
	}
	os.WriteFile(filepath.Join(f.store, "deltas", ".tmp-123"), []byte("a build that died"), 0o644)
	mustRun(t, "gc", "--store", f.store, "--keep", "1", "--pack-grace", "0s")
	if left, _ := filepath.Glob(filepath.Join(f.store, "deltas", "*")); len(left) != 0 {
		t.Fatalf("gc kept the pack of a removed release, or a dead build's file: %v", left)
	}
}

// bundle apply takes a pack when the installed release is the pack's FROM.
func TestPackBundleApply(t *testing.T) {
	if _, err := exec.LookPath("gzip"); err != nil {
		t.Skip("needs the gzip command (Debian package gzip)")
	}
	f := newBundleFixture(t)
	// Changelogs in both trees, updated in the second: the pack carries
	// them inflated and the terminal (told its link is slow, so it takes
	// that form) deflates them again inside the installed tree's files.
	for gen, tree := range []string{f.tree1, f.tree2} {
		for d := 0; d < 8; d++ {
			p := filepath.Join(tree, "share", "doc", fmt.Sprintf("pkg%d", d), "changelog.gz")
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, changelog(t, d, gen+1), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	f.publish(t, f.tree1)
	p := f.publish(t, f.tree2, "--packs-from", "1")
	if packs, _ := p["packs"].([]any); len(packs) != 1 || packs[0].(map[string]any)["regzipped"] == nil {
		t.Fatalf("packs: %v", p["packs"])
	}
	url := serve(t, f.store)
	f.mustApply(t, url, "--revision", "1")
	r := imgctl(t, nil, "bundle", "apply", "--from", url, "--trust", f.pub, "--name", "svc", "--root", f.root,
		"--cache", f.cache, "--state-dir", f.state, "--json", "-q", "--link-rate", "100kB/s")
	if r.code != 0 {
		t.Fatalf("apply: %s", r.stderr)
	}
	j := decode[struct {
		FromPacks int64 `json:"bytes_from_packs"`
		Fetched   int64 `json:"bytes_fetched"`
		Lean      bool  `json:"pack_lean"`
	}](t, r.stdout)
	sameTree(t, f.tree2, filepath.Join(f.root, "current"))
	if j.FromPacks == 0 || j.Lean {
		t.Fatalf("no pack used: %s", r.stdout)
	}
	// The installed release's manifest is the base of a manifest delta.
	st, _ := os.Stat(filepath.Join(f.store, "manifests", "svc", "stable", "2.imgm"))
	if m := j.Fetched - j.FromPacks; m >= st.Size() {
		t.Fatalf("manifest: %d bytes fetched for a %d-byte manifest", m, st.Size())
	}
	t.Logf("bundle 1→2 with a pack: %d bytes fetched, %d of them the pack", j.Fetched, j.FromPacks)
}

// A pack encoded by the zstd command (publisher side) decodes with the
// built-in decoder on the terminal.
func TestPackZstdCommandEncoder(t *testing.T) {
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Fatal("needs the zstd command (Debian package zstd; scripts/deps.sh installs it)")
	}
	f := newBundleFixture(t)
	f.publish(t, f.tree1)
	f.publish(t, f.tree2)
	p := decode[map[string]any](t, mustRun(t, "pack", "build", "--store", f.store, "--key", f.key, "--encoder", "zstd", "svc@1", "svc@2", "--json", "-q"))
	if p["encoder"] != "zstd" || p["size"].(float64) <= 0 {
		t.Fatalf("pack build: %v", p)
	}
	f.mustApply(t, f.store, "--revision", "1")
	j := f.mustApply(t, f.store)
	sameTree(t, f.tree2, filepath.Join(f.root, "current"))
	if j.BytesFromPacks == 0 {
		t.Fatalf("apply did not use the zstd-encoded pack: %+v", j)
	}
	r := imgctl(t, nil, "bundle", "status", "--root", f.root, "--state-dir", f.state, "--verify")
	if r.code != 0 {
		t.Fatalf("status: %s", r.stderr)
	}
}

// packReleases publishes an image and an edit of it with a pack 1→2, and
// returns the fixture and the edited image.
func packReleases(t *testing.T) (*fixture, string) {
	t.Helper()
	f := newFixture(t, 8<<20)
	upd := filepath.Join(f.dir, "v3.img")
	editImage(t, f.img1, upd)
	f.publish(t, f.img1)
	f.publish(t, upd, "--packs-from", "1")
	return f, upd
}

// holdRelease1 pulls release 1 from url as a terminal would hold it and
// returns it as a --seed with its manifest.
func (f *fixture) holdRelease1(t *testing.T, url string) string {
	t.Helper()
	out1 := filepath.Join(f.dir, "out1.img")
	if _, r := f.pull(t, url, filepath.Join(f.dir, "c1"), out1, "--revision", "1"); r.code != 0 {
		t.Fatalf("pull 1: %s", r.stderr)
	}
	return out1 + ":" + filepath.Join(f.store, "manifests", "os", "stable", "1.imgm")
}

// A branch cache fetches a pack record and the pack from upstream once and
// serves them to its terminals.
func TestPackThroughBranchCache(t *testing.T) {
	f, upd := packReleases(t)
	origin := serve(t, f.store)
	branch := serve(t, filepath.Join(f.dir, "branch"), "--upstream", origin)
	seed := f.holdRelease1(t, branch)
	for i, name := range []string{"t1", "t2"} {
		out := filepath.Join(f.dir, name+".img")
		j, r := f.pull(t, branch, filepath.Join(f.dir, "cache-"+name), out, "--seed", seed)
		if r.code != 0 {
			t.Fatalf("pull through the branch: %s", r.stderr)
		}
		sameFile(t, out, upd)
		if j.BytesFromPacks == 0 {
			t.Fatalf("terminal %d took no pack through the branch: %+v", i, j)
		}
	}
	if dp, _ := filepath.Glob(filepath.Join(f.dir, "branch", "deltas", "*.dpack")); len(dp) != 1 {
		t.Fatalf("the branch holds %v", dp)
	}
}

// With --p2p a terminal takes the pack from its own torrent (the origin
// seeds it), verified against the record's BLAKE3.
func TestPackOverSwarm(t *testing.T) {
	f, upd := packReleases(t)
	url := serve(t, f.store, "--seed-torrents", "--tracker", "--tracker-interval", "2s")
	seed := f.holdRelease1(t, url)
	j := f.pullP2P(t, url, filepath.Join(f.dir, "c2"), filepath.Join(f.dir, "out2.img"), seed, "127.0.0.40:0", upd)
	if j.Packs == 0 || j.Peers < j.Packs {
		t.Fatalf("pack over the swarm: %+v", j)
	}
	if left, _ := filepath.Glob(filepath.Join(f.dir, "c2", "deltas", "*")); len(left) != 0 {
		t.Fatalf("the pull left its pack in the cache: %v", left)
	}
	t.Logf("pack %d bytes, %d bytes from peers", j.Packs, j.Peers)
}

// mirror copies a release's delta packs with it, and stores the release
// only once its chunks are there: a mirror cut short offers nothing.
func TestMirrorPacks(t *testing.T) {
	f, upd := packReleases(t)
	hq := serve(t, f.store)
	branch := filepath.Join(f.dir, "branch")
	m := decode[struct {
		Packs int `json:"delta_packs"`
	}](t, mustRun(t, "mirror", "-q", "--json", "--store", branch, "--from", hq, "--name", "os"))
	if m.Packs != 1 {
		t.Fatalf("mirror copied %d packs", m.Packs)
	}
	mustRun(t, "fsck", "-q", "--store", branch)
	// A terminal on release 1 takes the pack from the mirror, served alone.
	url := serve(t, branch)
	seed := f.holdRelease1(t, hq)
	out := filepath.Join(f.dir, "t.img")
	j, r := f.pull(t, url, filepath.Join(f.dir, "c2"), out, "--seed", seed)
	if r.code != 0 || j.BytesFromPacks == 0 {
		t.Fatalf("pull from the mirror: %+v %s", j, r.stderr)
	}
	sameFile(t, out, upd)

	// Cut short (kill -9 while chunks trickle in at 10 kB/s): the new
	// release must not be there.
	f.publish(t, f.img2) // revision 3, megabytes of new chunks
	cmd := exec.Command(imgctlBin, "mirror", "-q", "--store", branch, "--from", hq, "--name", "os", "--download-limit", "10kB/s")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	cmd.Process.Kill()
	cmd.Wait()
	if _, err := os.Stat(filepath.Join(branch, "manifests", "os", "stable", "3.imgm")); err == nil {
		t.Fatal("a mirror cut short stored a release whose chunks it does not hold")
	}
	mustRun(t, "fsck", "-q", "--store", branch)
}

// A terminal that took a release from a delta pack seeds the whole release
// afterwards: the pack's chunks reproduced from the slot it wrote (vouched
// for by the torrent's piece hashes), the older ones from its cache. A
// neighbour holding nothing gets the release from it, not from the origin,
// which only serves HTTP and a tracker here.
func TestPackTerminalSeedsRelease(t *testing.T) {
	f, upd := packReleases(t)
	url := serve(t, f.store, "--tracker", "--tracker-interval", "1s")
	seed := f.holdRelease1(t, url)
	pull := func(dir, listen string, extra ...string) *exec.Cmd {
		return exec.Command(imgctlBin, append([]string{"pull", "--json", "--from", url, "--trust", f.pub, "--name", "os",
			"--cache", filepath.Join(f.dir, dir, "cache"), "--out", filepath.Join(f.dir, dir, "os.img"),
			"--p2p", "--listen", listen, "--announce", url + "/announce"}, extra...)...)
	}
	// Terminal A pulls with the cache it pulled release 1 with (which holds
	// release 1's chunks); the pack gives it the new ones.
	os.MkdirAll(filepath.Join(f.dir, "a"), 0o755)
	if err := os.Rename(filepath.Join(f.dir, "c1"), filepath.Join(f.dir, "a", "cache")); err != nil {
		t.Fatal(err)
	}
	a := pull("a", "127.0.0.42:0", "--seed", seed, "--seed-for", "90s")
	var ao bytes.Buffer
	a.Stdout = &ao
	alog := startSeeding(t, a)
	if !strings.Contains(alog, "taken from a delta pack too") {
		t.Fatalf("terminal A reproduced nothing to seed:\n%s", alog)
	}
	r := imgctl(t, nil, pull("b", "127.0.0.43:0", "-q", "--p2p-stall", "20s").Args[1:]...)
	if r.code != 0 {
		t.Fatalf("pull B: exit %d\n%s", r.code, r.stderr)
	}
	sameFile(t, filepath.Join(f.dir, "b", "os.img"), upd)
	peers, web := mostlyFromPeers(t, r.stdout, "pull B, the pack terminal seeding")
	stopProcess(a, os.Kill, 0)
	ja := decode[struct {
		Packs int64 `json:"bytes_from_packs"`
	}](t, ao.String())
	if ja.Packs == 0 {
		t.Fatalf("terminal A did not use the pack: %s", ao.String())
	}
	t.Logf("A: %d pack bytes; B: %d bytes from peers, %d over HTTP", ja.Packs, peers, web)
}

// packProxy stands between a terminal and an origin. The first request for
// a pack gets cut bytes of it, then the connection breaks (or, with hang,
// stalls until the terminal goes away, after closing sent). It records the
// Range header of every pack request.
type packProxy struct {
	url    string
	cut    int64
	hang   bool
	sent   chan struct{}
	mu     sync.Mutex
	ranges []string
}

func newPackProxy(t *testing.T, origin string, cut int64, hang bool) *packProxy {
	t.Helper()
	u, err := neturl.Parse(origin)
	if err != nil {
		t.Fatal(err)
	}
	p := &packProxy{cut: cut, hang: hang, sent: make(chan struct{})}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	rp.ModifyResponse = func(resp *http.Response) error {
		path := resp.Request.URL.Path
		if !strings.HasPrefix(path, "/v1/packs/") || strings.Count(path, "/") != 3 {
			return nil // not a pack (a record, an info)
		}
		p.mu.Lock()
		p.ranges = append(p.ranges, resp.Request.Header.Get("Range"))
		first := len(p.ranges) == 1
		p.mu.Unlock()
		if first {
			resp.Body = &cutBody{ReadCloser: resp.Body, left: cut, p: p, ctx: resp.Request.Context()}
		}
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

func (p *packProxy) Ranges() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.ranges...)
}

type cutBody struct {
	io.ReadCloser
	left int64
	p    *packProxy
	ctx  context.Context
}

func (c *cutBody) Read(b []byte) (int, error) {
	if c.left <= 0 {
		if c.p.hang {
			close(c.p.sent)
			<-c.ctx.Done()
		}
		return 0, errors.New("cut off")
	}
	n, err := c.ReadCloser.Read(b[:min(int64(len(b)), c.left)])
	c.left -= int64(n)
	return n, err
}

// packFixture: release 2 differs from release 1 in one byte of every 256,
// so its pack (returned size) is large enough to cut in the middle.
func packFixture(t *testing.T) (*fixture, string, int64) {
	t.Helper()
	f := newFixture(t, 8<<20)
	upd := filepath.Join(f.dir, "v3.img")
	editImageEvery(t, f.img1, upd, 256)
	f.publish(t, f.img1)
	j := f.publish(t, upd, "--packs-from", "1")
	packs, _ := j["packs"].([]any)
	if len(packs) != 1 {
		t.Fatalf("publish built no pack: %v", j)
	}
	size := int64(packs[0].(map[string]any)["size"].(float64))
	if size < 32<<10 {
		t.Fatalf("pack of %d bytes: too small to cut", size)
	}
	return f, upd, size
}

// A pack download that breaks off is resumed from where it broke (Range),
// not abandoned for the chunks.
func TestPackResumesBrokenDownload(t *testing.T) {
	f, upd, size := packFixture(t)
	url := serve(t, f.store)
	seed := f.holdRelease1(t, url)
	cut := size / 2
	px := newPackProxy(t, url, cut, false)
	j, r := f.pull(t, px.url, filepath.Join(f.dir, "c2"), filepath.Join(f.dir, "out2.img"), "--seed", seed)
	if r.code != 0 {
		t.Fatalf("pull: exit %d\n%s", r.code, r.stderr)
	}
	sameFile(t, filepath.Join(f.dir, "out2.img"), upd)
	if got := px.Ranges(); len(got) != 2 || got[0] != "" || got[1] != fmt.Sprintf("bytes=%d-", cut) {
		t.Fatalf("pack requests: %q (cut at %d of %d)", got, cut, size)
	}
	// Chunks fell back to would be megabytes; the manifest and the record
	// are a few KB.
	if j.BytesFromPacks != size || j.BytesFetched > size+size/4 {
		t.Fatalf("after the break: fetched %d bytes, %d of the %d-byte pack used\n%s", j.BytesFetched, j.BytesFromPacks, size, r.stderr)
	}
}

// A pull killed while its pack downloads leaves what it received in its
// cache; the next one asks only for the rest.
func TestPackResumesAfterKill(t *testing.T) {
	f, upd, size := packFixture(t)
	url := serve(t, f.store)
	seed := f.holdRelease1(t, url)
	px := newPackProxy(t, url, size/2, true)
	cache := filepath.Join(f.dir, "c2")
	out := filepath.Join(f.dir, "out2.img")
	cmd := exec.Command(imgctlBin, "pull", "--from", px.url, "--trust", f.pub, "--name", "os", "--cache", cache, "--out", out,
		"--seed", seed, "-q")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer stopProcess(cmd, os.Kill, 0)
	select {
	case <-px.sent:
	case <-time.After(60 * time.Second):
		t.Fatal("the proxy never sent half the pack")
	}
	// Let the terminal take in what was sent, then kill it.
	var part string
	var kept int64
	for i := 0; i < 200 && kept < size/2; i++ {
		time.Sleep(50 * time.Millisecond)
		if m, _ := filepath.Glob(filepath.Join(cache, "deltas", "*.dpack.http")); len(m) == 1 {
			part = m[0]
			if st, err := os.Stat(part); err == nil {
				kept = st.Size()
			}
		}
	}
	stopProcess(cmd, os.Kill, 0)
	if kept == 0 {
		t.Fatal("the killed pull kept nothing of the pack")
	}
	j, r := f.pull(t, px.url, cache, out, "--seed", seed)
	if r.code != 0 {
		t.Fatalf("rerun: exit %d\n%s", r.code, r.stderr)
	}
	sameFile(t, out, upd)
	if got := px.Ranges(); len(got) != 2 || got[1] != fmt.Sprintf("bytes=%d-", kept) {
		t.Fatalf("pack requests: %q (%d bytes kept of %d)", got, kept, size)
	}
	if j.BytesFromPacks != size || j.BytesFetched > size-kept+size/4 {
		t.Fatalf("rerun fetched %d bytes, %d from the pack; %d of the %d-byte pack were kept", j.BytesFetched, j.BytesFromPacks, kept, size)
	}
	if _, err := os.Stat(part); !os.IsNotExist(err) {
		t.Fatalf("the finished pull left %s", part)
	}
}

// pack build takes no lock on the store: it runs while another process
// (here: this test) holds it, as it would beside a publish.
func TestPackBuildWithoutStoreLock(t *testing.T) {
	f := newFixture(t, 8<<20)
	upd := filepath.Join(f.dir, "v3.img")
	editImage(t, f.img1, upd)
	f.publish(t, f.img1)
	f.publish(t, upd)
	held, err := chunkstore.Open(f.store, chunkstore.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if r := imgctl(t, nil, "publish", "--store", f.store, "--key", f.key, "--name", "os", f.img2, "--lock-timeout", "1s", "-q"); r.code == 0 {
		t.Fatal("a publish ran while the store was locked: the test holds no lock")
	}
	out := mustRun(t, "pack", "build", "--store", f.store, "--key", f.key, "os@1", "os@2", "--json")
	j := decode[map[string]any](t, out)
	if j["chunks"].(float64) == 0 || j["size"].(float64) == 0 {
		t.Fatalf("pack build: %s", out)
	}
	ls := decode[[]map[string]any](t, mustRun(t, "pack", "ls", "--store", f.store, "os", "--json"))
	if len(ls) != 1 || ls[0]["from"] != float64(1) || ls[0]["to"] != float64(2) || ls[0]["pack"] != j["pack"] ||
		ls[0]["chunk_bytes"] != j["chunk_bytes"] || ls[0]["ratio"].(float64) <= 0 || ls[0]["ratio"].(float64) >= 1 {
		t.Fatalf("pack ls after the build: %v (built: %v)", ls, j)
	}
}

// changelog is document d of generation gen, gzip'd by the gzip command
// (gzip -9n, as Debian's changelogs are): each later generation adds an
// entry at its top.
func changelog(t *testing.T, d, gen int) []byte {
	t.Helper()
	var doc bytes.Buffer
	for e := gen; e >= 0; e-- {
		fmt.Fprintf(&doc, "pkg%d (1.%d) stable; urgency=medium\n\n", d, e)
		for l := 0; l < 40+d; l++ {
			fmt.Fprintf(&doc, "  * change %d.%d.%d: fix issue #%d in module %x\n", d, e, l, (d*7919+e*104729+l*31)%100000, (d*l+e)%4096)
		}
		fmt.Fprintf(&doc, "\n -- Maintainer <m@example.org>  Mon, %02d Jan 2026 10:00:00 +0000\n\n", 1+e%28)
	}
	cmd := exec.Command("gzip", "-9n")
	cmd.Stdin = &doc
	gz, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return gz
}

// gzipImage writes an image of binary filler and 40 changelogs of
// generation gen.
func gzipImage(t *testing.T, path string, gen int) {
	t.Helper()
	r := rand.New(rand.NewPCG(7, 7))
	var img []byte
	for d := 0; d < 40; d++ {
		filler := make([]byte, 20<<10)
		for i := range filler {
			filler[i] = byte(r.Uint32())
		}
		img = append(append(img, filler...), changelog(t, d, gen)...)
	}
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A pack whose new chunks hold gzip streams is published in two forms: the
// smallest, which carries the streams inflated (the terminal rebuilds them
// bit for bit), and a lean twin that keeps them. A terminal whose link is
// slow takes the smallest, a fast one the lean form; both write the exact
// release.
func TestPackRegzipForms(t *testing.T) {
	if _, err := exec.LookPath("gzip"); err != nil {
		t.Skip("needs the gzip command (Debian package gzip)")
	}
	f := newFixture(t, 1<<20)
	img1, img2 := filepath.Join(f.dir, "g1.img"), filepath.Join(f.dir, "g2.img")
	gzipImage(t, img1, 1)
	gzipImage(t, img2, 2)
	f.publish(t, img1)
	p := f.publish(t, img2, "--packs-from", "1")
	packs, _ := p["packs"].([]any)
	if len(packs) != 1 {
		t.Fatalf("packs: %v", p["packs"])
	}
	pk := packs[0].(map[string]any)
	lean, _ := pk["lean"].(map[string]any)
	if pk["regzipped"] != float64(40) || lean == nil || lean["Size"].(float64) <= pk["size"].(float64) {
		t.Fatalf("pack: %v", pk)
	}
	if ls := mustRun(t, "pack", "ls", "--store", f.store, "os"); !strings.Contains(ls, "lean twin") {
		t.Fatalf("pack ls does not show the lean twin:\n%s", ls)
	}
	url := serve(t, f.store)
	seed := f.holdRelease1(t, url)
	var got [2]pullJSON
	for i, rate := range []string{"100kB/s", "1GB/s"} {
		out := filepath.Join(f.dir, fmt.Sprintf("out-%d.img", i))
		j, r := f.pull(t, url, filepath.Join(f.dir, fmt.Sprintf("c-%d", i)), out, "--seed", seed, "--link-rate", rate)
		if r.code != 0 {
			t.Fatalf("pull at %s: exit %d\n%s", rate, r.code, r.stderr)
		}
		sameFile(t, out, img2)
		got[i] = j
	}
	t.Logf("slow link: %d bytes of pack (lean %v); fast link: %d (lean %v)", got[0].BytesFromPacks, got[0].PackLean, got[1].BytesFromPacks, got[1].PackLean)
	if got[0].PackLean || !got[1].PackLean || got[0].BytesFromPacks == 0 || got[0].BytesFromPacks >= got[1].BytesFromPacks {
		t.Fatalf("slow link %+v, fast link %+v", got[0], got[1])
	}
	if r := imgctl(t, nil, "pull", "--from", url, "--trust", f.pub, "--name", "os", "--out", filepath.Join(f.dir, "x.img"), "--link-rate", "fast"); r.code != 2 {
		t.Errorf("--link-rate fast: exit %d, want 2", r.code)
	}

	// Each form is its own torrent: --p2p pulls take the one their link
	// calls for from the origin's seeder, not over HTTP.
	turl := serve(t, f.store, "--seed-torrents", "--tracker", "--tracker-interval", "2s")
	for i, rate := range []string{"100kB/s", "1GB/s"} {
		j := f.pullP2P(t, turl, filepath.Join(f.dir, fmt.Sprintf("pc-%d", i)), filepath.Join(f.dir, fmt.Sprintf("p2p-%d.img", i)),
			seed, fmt.Sprintf("127.0.0.%d:0", 41+i), img2, "--link-rate", rate)
		if j.Lean != (i == 1) || j.Packs != got[i].BytesFromPacks || j.Peers < j.Packs {
			t.Fatalf("pull --p2p at %s: %+v (over HTTP: %d bytes of pack, lean %v)", rate, j, got[i].BytesFromPacks, got[i].PackLean)
		}
	}

	// Through a branch cache that holds nothing yet: asked for the lean
	// torrent's info, the branch fetches that pack from upstream and seeds
	// it, so the first terminal behind it takes the pack from peers too
	// (before, it waited out --p2p-stall and fell back to HTTP).
	branch := serve(t, filepath.Join(f.dir, "branch"), "--upstream", turl, "--seed-torrents", "--tracker", "--tracker-interval", "2s")
	j := f.pullP2P(t, branch, filepath.Join(f.dir, "pc-branch"), filepath.Join(f.dir, "p2p-branch.img"), seed, "127.0.0.43:0", img2,
		"--link-rate", "1GB/s")
	if !j.Lean || j.Packs != got[1].BytesFromPacks || j.Peers < j.Packs || j.Web >= j.Packs {
		t.Fatalf("pull --p2p through the branch: %+v", j)
	}
}
