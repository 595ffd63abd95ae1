package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/chunkstore/storetest"
	"github.com/imgctl/imgctl/manifest"
)

var imgctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "imgctl-e2e-bin-")
	if err != nil {
		panic(err)
	}
	imgctlBin = filepath.Join(dir, "imgctl")
	out, err := exec.Command("go", "build", "-o", imgctlBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building imgctl: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// imgctl runs the imgctlBin with a time limit and returns its output and exit
// code.
func imgctl(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, imgctlBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("imgctl %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return result{so.String(), se.String(), code}
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	r := imgctl(t, nil, args...)
	if r.code != 0 {
		t.Fatalf("imgctl %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%v in %q", err, s)
	}
	return v
}

// serve starts `imgctl serve` on a free loopback port and stops it (by PID)
// when the test ends.
func serve(t *testing.T, store string, extra ...string) string {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), "addr")
	args := append([]string{"serve", "--store", store, "--listen", "127.0.0.1:0", "--addr-file", addrFile, "-q"}, extra...)
	cmd := exec.Command(imgctlBin, args...)
	var se bytes.Buffer
	cmd.Stderr = &se
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopProcess(cmd, syscall.SIGTERM, 10*time.Second) })
	for i := 0; i < 200; i++ {
		if b, err := os.ReadFile(addrFile); err == nil && len(b) > 0 {
			return "http://" + strings.TrimSpace(string(b))
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("serve did not start: %s", se.String())
	return ""
}

// stopProcess stops a started command by its PID: sig, then SIGKILL after
// grace, and waits for it.
func stopProcess(cmd *exec.Cmd, sig os.Signal, grace time.Duration) {
	cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		cmd.Process.Kill()
		<-done
	}
}

// makeImage writes an image-like file: compressible and random regions,
// long zero runs. variant 2 changes a few regions of variant 1 the way an
// update does.
func makeImage(t *testing.T, path string, size int, variant int) {
	t.Helper()
	r := rand.New(rand.NewPCG(7, 7))
	b := make([]byte, size)
	for off := 0; off < size; {
		n := 4096 * (1 + r.IntN(96))
		end := min(off+n, size)
		switch r.IntN(4) {
		case 0: // zeros
		case 1:
			for i := off; i < end; i++ {
				b[i] = "abcdefgh \n"[r.IntN(10)]
			}
		default:
			for i := off; i < end; i++ {
				b[i] = byte(r.Uint32())
			}
		}
		off = end
	}
	if variant >= 2 {
		r2 := rand.New(rand.NewPCG(8, 8))
		for k := 0; k < 4; k++ {
			at := r2.IntN(size - 200<<10)
			for i := at; i < at+50<<10+r2.IntN(100<<10); i++ {
				b[i] = byte(r2.Uint32())
			}
		}
	}
	if variant == 3 {
		r3 := rand.New(rand.NewPCG(9, 9))
		at := r3.IntN(size - 300<<10)
		for i := at; i < at+200<<10; i++ {
			b[i] = byte(r3.Uint32())
		}
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ", a, b)
	}
}

type pullJSON struct {
	Revision       uint64 `json:"revision"`
	Size           int64  `json:"size"`
	BytesFetched   int64  `json:"bytes_fetched"`
	BytesFromSeed  int64  `json:"bytes_from_seed"`
	BytesFromCache int64  `json:"bytes_from_cache"`
	BytesInPlace   int64  `json:"bytes_in_place"`
	ChunksFetched  int    `json:"chunks_fetched"`
	Chunks         int    `json:"chunks"`
	ManifestBytes  int    `json:"manifest_bytes"`
	BytesFromPacks int64  `json:"bytes_from_packs"`
	PackLean       bool   `json:"pack_lean"`
	Fallbacks      int    `json:"fallbacks"`
}

type fixture struct {
	dir, store, key, pub, img1, img2 string
}

func newFixture(t *testing.T, size int) *fixture {
	t.Helper()
	d := t.TempDir()
	f := &fixture{dir: d, store: filepath.Join(d, "store"), key: filepath.Join(d, "k.key"), pub: filepath.Join(d, "k.pub"),
		img1: filepath.Join(d, "v1.img"), img2: filepath.Join(d, "v2.img")}
	mustRun(t, "key", "gen", "--out", filepath.Join(d, "k"))
	makeImage(t, f.img1, size, 1)
	makeImage(t, f.img2, size, 2)
	return f
}

func (f *fixture) publish(t *testing.T, img string, extra ...string) map[string]any {
	t.Helper()
	out := mustRun(t, append([]string{"publish", "--store", f.store, "--key", f.key, "--name", "os", img, "--json", "-q"}, extra...)...)
	return decode[map[string]any](t, out)
}

func (f *fixture) pull(t *testing.T, url, cache, out string, extra ...string) (pullJSON, result) {
	t.Helper()
	args := append([]string{"pull", "--from", url, "--trust", f.pub, "--name", "os", "--cache", cache, "--out", out, "--json", "-q"}, extra...)
	r := imgctl(t, nil, args...)
	if r.code != 0 {
		return pullJSON{}, r
	}
	return decode[pullJSON](t, r.stdout), r
}

func TestEndToEndPublishServePullDelta(t *testing.T) {
	f := newFixture(t, 24<<20)
	p1 := f.publish(t, f.img1)
	p2 := f.publish(t, f.img2)
	for k, want := range map[string]float64{"revision": 1} {
		if p1[k] != want {
			t.Fatalf("publish 1 %s = %v", k, p1[k])
		}
	}
	if p2["revision"] != float64(2) || p2["stored_bytes_added"].(float64) >= p1["stored_bytes_added"].(float64)/2 {
		t.Fatalf("publish 2: %v", p2)
	}
	for _, k := range []string{"name", "channel", "chunks", "size"} {
		if _, ok := p1[k]; !ok {
			t.Fatalf("publish --json lacks %s", k)
		}
	}
	url := serve(t, f.store)
	cache := filepath.Join(f.dir, "cache")
	slotA, slotB := filepath.Join(f.dir, "slotA"), filepath.Join(f.dir, "slotB")

	r1, res := f.pull(t, url, cache, slotA, "--revision", "1")
	if res.code != 0 {
		t.Fatalf("pull 1: %d %s", res.code, res.stderr)
	}
	sameFile(t, slotA, f.img1)
	r2, res := f.pull(t, url, cache, slotB, "--seed", slotA)
	if res.code != 0 {
		t.Fatalf("pull 2: %d %s", res.code, res.stderr)
	}
	sameFile(t, slotB, f.img2)
	if r2.Revision != 2 || r2.BytesFromSeed == 0 || r2.BytesFetched*4 > r1.BytesFetched || r2.ChunksFetched == 0 {
		t.Fatalf("delta pull did not reuse the seed: first %+v, delta %+v", r1, r2)
	}
	// The manifest is a small part of what a pull costs.
	if r2.ManifestBytes*200 > int(r2.Size) {
		t.Fatalf("manifest %d bytes for a %d byte image", r2.ManifestBytes, r2.Size)
	}

	// A seed the cache does not know is cut to find chunks.
	copyA := filepath.Join(f.dir, "copyA")
	b, _ := os.ReadFile(slotA)
	os.WriteFile(copyA, b, 0o644)
	r3, res := f.pull(t, url, filepath.Join(f.dir, "cache2"), filepath.Join(f.dir, "slotC"), "--seed", copyA)
	if res.code != 0 {
		t.Fatalf("pull with unknown seed: %s", res.stderr)
	}
	if r3.BytesFromSeed < r2.BytesFromSeed/2 || r3.BytesFetched > 2*r2.BytesFetched {
		t.Fatalf("unknown seed: %+v vs known seed %+v", r3, r2)
	}
	// The same update straight from the store directory (a USB stick):
	// same bytes, same checks, no server.
	r5, res := f.pull(t, f.store, filepath.Join(f.dir, "cache5"), filepath.Join(f.dir, "slotE"), "--seed", copyA)
	if res.code != 0 || r5.BytesFromSeed == 0 || r5.ChunksFetched == 0 {
		t.Fatalf("pull from a store directory: %+v %s", r5, res.stderr)
	}
	sameFile(t, filepath.Join(f.dir, "slotE"), f.img2)

	// A seed whose layout is given by its manifest but whose bytes drifted
	// since (a root file system mounted read-write changes its superblock
	// at every mount): each drifted chunk fails its hash and is fetched.
	drifted := filepath.Join(f.dir, "drifted")
	d1 := append([]byte(nil), b...)
	for off := 4096; off < len(d1); off += 1 << 20 {
		if k := bytes.IndexFunc(d1[off:min(off+65536, len(d1))], func(r rune) bool { return r != 0 }); k >= 0 {
			d1[off+k] ^= 0x55
		}
	}
	os.WriteFile(drifted, d1, 0o644)
	m1 := filepath.Join(f.store, "manifests", "os", "stable", "1.imgm")
	r6, res := f.pull(t, f.store, filepath.Join(f.dir, "cache6"), filepath.Join(f.dir, "slotF"), "--seed", drifted+":"+m1)
	if res.code != 0 || r6.Fallbacks == 0 || r6.BytesFromSeed >= r5.BytesFromSeed || r6.BytesFromSeed == 0 {
		t.Fatalf("pull with a drifted seed: %+v (undrifted: %+v) %s", r6, r5, res.stderr)
	}
	sameFile(t, filepath.Join(f.dir, "slotF"), f.img2)

	// Pulling again into a complete slot fetches only the manifest.
	r4, res := f.pull(t, url, cache, slotB)
	if res.code != 0 || r4.ChunksFetched != 0 || r4.BytesFetched != int64(r4.ManifestBytes) {
		t.Fatalf("re-pull fetched chunks: %+v %s", r4, res.stderr)
	}
	sameFile(t, slotB, f.img2)

	// Served bytes are counted.
	// The server counts a response when its handler returns, which can be
	// just after the client has the body: read the counter until it agrees.
	total := r1.BytesFetched + r2.BytesFetched + r3.BytesFetched + r4.BytesFetched
	served := metric(t, url, "imgctl_served_bytes_total")
	for try := 0; try < 50 && int64(served) != total; try++ {
		time.Sleep(20 * time.Millisecond)
		served = metric(t, url, "imgctl_served_bytes_total")
	}
	if int64(served) != total {
		t.Fatalf("served %v bytes, clients fetched %d", served, total)
	}

	// diff, manifest show, verify.
	d := decode[map[string]any](t, mustRun(t, "diff", "--store", f.store, "os@1", "os@2", "--format", "json"))
	if d["new_chunks"].(float64) == 0 || d["fetch_bytes_exact"] != true {
		t.Fatalf("diff: %v", d)
	}
	if fb := int64(d["fetch_bytes"].(float64)); fb > r2.BytesFetched || fb < r2.BytesFetched-int64(r2.ManifestBytes)-int64(r2.ChunksFetched)*40-4096 {
		t.Fatalf("diff predicts %d bytes to fetch, the pull fetched %d", fb, r2.BytesFetched)
	}
	if h := mustRun(t, "diff", "--store", f.store, "os@1", "os@2", "--format", "html"); !strings.Contains(h, "<svg") {
		t.Fatal("html diff without svg")
	}
	if txt := mustRun(t, "diff", "--store", f.store, "os@1", "os@latest"); !strings.Contains(txt, "to fetch") {
		t.Fatal(txt)
	}
	mfile := filepath.Join(f.store, "manifests", "os", "stable", "2.imgm")
	show := decode[map[string]any](t, mustRun(t, "manifest", "show", mfile, "--json"))
	if show["revision"] != float64(2) || show["name"] != "os" {
		t.Fatalf("manifest show: %v", show)
	}
	if out := mustRun(t, "verify", "--trust", f.pub, mfile); !strings.HasPrefix(out, "OK os/stable@2") {
		t.Fatal(out)
	}
	mustRun(t, "diff", filepath.Join(f.store, "manifests", "os", "stable", "1.imgm"), mfile)

	// fsck, gc.
	mustRun(t, "fsck", "--store", f.store)
	mustRun(t, "fsck", "--store", cache)
	gc := decode[map[string]any](t, mustRun(t, "gc", "--store", f.store, "--keep", "1", "--json"))
	if gc["removed_releases"] != float64(1) || gc["removed_chunks"].(float64) == 0 {
		t.Fatalf("gc: %v", gc)
	}
	mustRun(t, "fsck", "--store", f.store)
	// The kept release still pulls in full from nothing.
	if _, res := f.pull(t, url, filepath.Join(f.dir, "cache3"), filepath.Join(f.dir, "slotD")); res.code != 0 {
		t.Fatalf("pull after gc: %s", res.stderr)
	}
	sameFile(t, filepath.Join(f.dir, "slotD"), f.img2)
}

func TestEndToEndRefusals(t *testing.T) {
	f := newFixture(t, 4<<20)
	f.publish(t, f.img1)
	f.publish(t, f.img2)
	url := serve(t, f.store)
	cache := filepath.Join(f.dir, "cache")
	out := func(name string) string { return filepath.Join(f.dir, name) }

	// Newer revision pulled first; an older one is then a rollback.
	if _, res := f.pull(t, url, cache, out("a")); res.code != 0 {
		t.Fatal(res.stderr)
	}
	if _, res := f.pull(t, url, cache, out("old"), "--revision", "1"); res.code != 3 || !strings.Contains(res.stderr, "older") {
		t.Fatalf("rollback: exit %d %s", res.code, res.stderr)
	}
	assertAbsent(t, out("old"))

	// Unknown key.
	mustRun(t, "key", "gen", "--out", out("other"))
	r := imgctl(t, nil, "pull", "--from", url, "--trust", out("other.pub"), "--name", "os", "--cache", out("c2"), "--out", out("b"), "-q")
	if r.code != 3 || !strings.Contains(r.stderr, "trusted") {
		t.Fatalf("unknown key: exit %d %s", r.code, r.stderr)
	}
	assertAbsent(t, out("b"))

	// Tampered manifest.
	m2 := filepath.Join(f.store, "manifests", "os", "stable", "2.imgm")
	orig, _ := os.ReadFile(m2)
	bad := append([]byte{}, orig...)
	bad[60] ^= 0x01
	os.WriteFile(m2, bad, 0o644)
	if _, res := f.pull(t, url, out("c3"), out("c")); res.code != 3 || !strings.Contains(res.stderr, "signature") {
		t.Fatalf("tampered: exit %d %s", res.code, res.stderr)
	}
	if r := imgctl(t, nil, "verify", "--trust", f.pub, m2); r.code != 3 {
		t.Fatalf("verify tampered: exit %d", r.code)
	}
	os.WriteFile(m2, orig, 0o644)
	assertAbsent(t, out("c"))

	// Wrong name: the manifest of os served under another name.
	other := filepath.Join(f.store, "manifests", "pos", "stable")
	os.MkdirAll(other, 0o755)
	os.WriteFile(filepath.Join(other, "1.imgm"), orig, 0o644)
	r = imgctl(t, nil, "pull", "--from", url, "--trust", f.pub, "--name", "pos", "--cache", out("c4"), "--out", out("d"), "-q")
	if r.code != 3 || !strings.Contains(r.stderr, "another name") {
		t.Fatalf("wrong name: exit %d %s", r.code, r.stderr)
	}
	assertAbsent(t, out("d"))

	// Expired: published a day ago with one hour to live.
	past := []string{"IMGCTL_NOW=" + time.Now().Add(-24*time.Hour).UTC().Format(time.RFC3339)}
	r = imgctl(t, past, "publish", "--store", f.store, "--key", f.key, "--name", "exp", "--expires", "1h", f.img1, "-q")
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	r = imgctl(t, nil, "pull", "--from", url, "--trust", f.pub, "--name", "exp", "--cache", out("c5"), "--out", out("e"), "-q")
	if r.code != 3 || !strings.Contains(r.stderr, "expired") {
		t.Fatalf("expired: exit %d %s", r.code, r.stderr)
	}
	assertAbsent(t, out("e"))

	// Usage errors exit 2.
	if r := imgctl(t, nil, "pull", "--from", url); r.code != 2 {
		t.Fatalf("usage: exit %d", r.code)
	}
	if r := imgctl(t, nil, "publish", "--bogus"); r.code != 2 {
		t.Fatalf("unknown flag: exit %d", r.code)
	}
	if r := imgctl(t, nil, "pull", "--from", url, "--trust", f.pub, "--name", "os", "--cache", cache, "--out", out("a"), "--seed", out("a")); r.code != 2 || !strings.Contains(r.stderr, "overwrites") {
		t.Fatalf("--seed equal to --out: exit %d %s", r.code, r.stderr)
	}
	if r := imgctl(t, nil, "pull", "--from", f.dir, "--trust", f.pub, "--name", "os", "--out", out("z")); r.code != 2 {
		t.Fatalf("--from a directory that is not a store: exit %d", r.code)
	}
	// A tampered manifest read from a store directory is refused the same way.
	os.WriteFile(m2, bad, 0o644)
	if _, res := f.pull(t, f.store, out("c6"), out("f")); res.code != 3 {
		t.Fatalf("tampered, from a directory: exit %d %s", res.code, res.stderr)
	}
	os.WriteFile(m2, orig, 0o644)
}

func assertAbsent(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Stat(p); err == nil {
		t.Fatalf("%s was written although the pull was refused", p)
	}
}

// A server that corrupts chunk bodies: the pull fails with exit 3, the
// cache stays clean, and a later pull from a good server completes.
func TestEndToEndCorruptServer(t *testing.T) {
	f := newFixture(t, 4<<20)
	f.publish(t, f.img1)
	good := serve(t, f.store)
	u, _ := url.Parse(good)
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if !strings.HasPrefix(resp.Request.URL.Path, "/v1/chunks") {
			return nil
		}
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		body := b.Bytes()
		for i := 200; i < len(body); i += 5000 {
			body[i] ^= 0x55
		}
		resp.Body = ioNopCloser(bytes.NewReader(body))
		return nil
	}
	bad := httptest.NewServer(proxy)
	defer bad.Close()
	cache := filepath.Join(f.dir, "cache")
	slot := filepath.Join(f.dir, "slot")
	_, res := f.pull(t, bad.URL, cache, slot)
	if res.code != 3 || !strings.Contains(res.stderr, "corrupt") {
		t.Fatalf("corrupt server: exit %d %s", res.code, res.stderr)
	}
	mustRun(t, "fsck", "--store", cache)
	r, res := f.pull(t, good, cache, slot)
	if res.code != 0 {
		t.Fatalf("pull from good server: %s", res.stderr)
	}
	sameFile(t, slot, f.img1)
	_ = r
}

// Chunks damaged in the cache's packs are taken again, not written wrong:
// one stored raw (random bytes: the damaged copy still decodes, to other
// bytes, which only the whole-image digest sees; the pull then finds it
// in the output and fetches it) and one compressed (it no longer decodes).
// The pull succeeds, fetches exactly those two, and the cache is sound.
func TestEndToEndDamagedCache(t *testing.T) {
	f := newFixture(t, 8<<20)
	f.publish(t, f.img1)
	url := serve(t, f.store)
	cache := filepath.Join(f.dir, "cache")
	if _, r := f.pull(t, url, cache, filepath.Join(f.dir, "first")); r.code != 0 {
		t.Fatalf("first pull: %s", r.stderr)
	}
	env, err := os.ReadFile(filepath.Join(f.store, "manifests", "os", "stable", "1.imgm"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Open(env)
	if err != nil {
		t.Fatal(err)
	}
	s, err := chunkstore.Open(cache, chunkstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	raw, packed := false, false
	for _, c := range m.Chunks {
		_, _, k, err := s.Locate(c.ID)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case !raw && k > int(c.Size):
			raw = true
			storetest.Damage(t, s, c.ID, func(n int) int { return n - 100 })
		case !packed && k < int(c.Size)/2:
			packed = true
			storetest.Damage(t, s, c.ID, func(n int) int { return n / 2 })
		}
	}
	s.Close()
	if !raw || !packed {
		t.Fatalf("the image needs chunks stored raw (%v) and compressed (%v)", raw, packed)
	}
	out := filepath.Join(f.dir, "second")
	r, res := f.pull(t, url, cache, out)
	if res.code != 0 {
		t.Fatalf("pull over a damaged cache: %s", res.stderr)
	}
	sameFile(t, out, f.img1)
	if r.ChunksFetched != 2 || r.Fallbacks != 2 {
		t.Fatalf("fetched %d chunks after %d fallbacks, want the 2 damaged ones: %+v", r.ChunksFetched, r.Fallbacks, r)
	}
	mustRun(t, "fsck", "--store", cache)
}

// kill -9 in the middle of a pull, then the same pull again: it completes
// and fetches only what it still lacked.
func TestEndToEndKillAndResume(t *testing.T) {
	f := newFixture(t, 48<<20)
	f.publish(t, f.img1)
	slow := serve(t, f.store, "--upload-limit", "4MB/s")
	cache := filepath.Join(f.dir, "cache")
	slot := filepath.Join(f.dir, "slot")
	cmd := exec.Command(imgctlBin, "pull", "--from", slow, "--trust", f.pub, "--name", "os", "--cache", cache, "--out", slot, "-q")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill := func() { once.Do(func() { cmd.Process.Kill(); cmd.Wait() }) }
	defer kill()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		// Sealed packs of fetched chunks (one per second of fetching).
		idx, _ := filepath.Glob(filepath.Join(cache, "packs", "*.idx"))
		if len(idx) >= 2 {
			break
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	kill()
	if cmd.ProcessState != nil && cmd.ProcessState.Success() {
		t.Fatal("the pull finished before it could be killed: raise the image size or lower the rate")
	}
	full, _ := f.pull(t, serve(t, f.store), filepath.Join(f.dir, "fresh-cache"), filepath.Join(f.dir, "fresh"))
	r, res := f.pull(t, slow, cache, slot)
	if res.code != 0 {
		t.Fatalf("resume: %s", res.stderr)
	}
	sameFile(t, slot, f.img1)
	if r.BytesFromCache+r.BytesInPlace == 0 || r.ChunksFetched >= full.ChunksFetched {
		t.Fatalf("resume fetched everything again: %+v (a full pull fetches %d chunks)", r, full.ChunksFetched)
	}
	mustRun(t, "fsck", "--store", cache)
}

func TestDemo(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Fatal("demo needs mkfs.ext4: install e2fsprogs (.ci/run does)")
	}
	out := mustRun(t, "demo", "--size", "64")
	if strings.Count(out, "digest verified") != 3 || !strings.Contains(out, "diff terminal-os/stable@1") ||
		!strings.Contains(out, "over BitTorrent with terminal 1 as its peer") || strings.Contains(out, " 0 B from the peer") ||
		!strings.Contains(out, "it took from the delta pack, reproduced from slot B") || strings.Contains(out, "the 0 it took") ||
		!strings.Contains(out, "current -> releases/2") || strings.Contains(out, "B reused from the installed release") && strings.Contains(out, " 0 B reused from the installed") {
		t.Fatalf("demo output:\n%s", out)
	}
	if _, err := exec.LookPath("grub-editenv"); err == nil && !strings.Contains(out, "slot B boots next") {
		t.Fatalf("demo did not flip to slot B:\n%s", out)
	}
}

// A full disk loses nothing: a publish into a store on a full file system
// fails with a clear error and leaves the store consistent; a pull whose
// output runs out of space fails, its cache stays sound, and the same pull
// onto a roomy disk fetches only what the failed one had not.
func TestEndToEndFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (CI runs as root)")
	}
	f := newFixture(t, 24<<20)
	small := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", small).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", small).Run() })

	// Publish into a store on the full disk.
	full := filepath.Join(small, "store")
	r := imgctl(t, nil, "publish", "--store", full, "--key", f.key, "--name", "os", f.img1, "-q")
	if r.code != 1 || !strings.Contains(r.stderr, "no space left") {
		t.Fatalf("publish on a full disk: exit %d %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(full, "manifests", "os", "stable", "1.imgm")); err == nil {
		t.Fatal("a manifest was written for a release whose chunks did not fit")
	}
	// fsck runs on the still full disk: the interrupted pack is cleaned up
	// and what remains is consistent.
	mustRun(t, "fsck", "--store", full)

	// Pull onto a full disk.
	f.publish(t, f.img1)
	url := serve(t, f.store)
	cache := filepath.Join(f.dir, "cache")
	r = imgctl(t, nil, "pull", "--from", url, "--trust", f.pub, "--name", "os", "--cache", cache, "--out", filepath.Join(small, "slot"), "-q")
	if r.code != 1 || !strings.Contains(r.stderr, "no space left") {
		t.Fatalf("pull onto a full disk: exit %d %s", r.code, r.stderr)
	}
	mustRun(t, "fsck", "--store", cache)
	got, res := f.pull(t, url, cache, filepath.Join(f.dir, "slot"))
	if res.code != 0 {
		t.Fatalf("pull after the full disk: %s", res.stderr)
	}
	sameFile(t, filepath.Join(f.dir, "slot"), f.img1)
	// The failed pull stopped fetching when the disk filled; what it had
	// fetched was kept and is not fetched again.
	if got.BytesFromCache == 0 || got.ChunksFetched >= got.Chunks {
		t.Fatalf("chunks fetched before the disk filled were fetched again: %+v", got)
	}
}

// An image that changes while it is published is refused, and no manifest
// is written for it.
func TestPublishRefusesChangingImage(t *testing.T) {
	f := newFixture(t, 200<<20)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w, err := os.OpenFile(f.img1, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		defer w.Close()
		for i := 0; i < 200; i++ {
			w.WriteAt([]byte{byte(i)}, int64(i)*4096)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	r := imgctl(t, nil, "publish", "--store", f.store, "--key", f.key, "--name", "os", f.img1, "-q")
	<-done
	if r.code == 0 || !strings.Contains(r.stderr, "changed while") {
		t.Fatalf("publish of a changing image: exit %d %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(f.store, "manifests", "os", "stable", "1.imgm")); err == nil {
		t.Fatal("a manifest was written for a changing image")
	}
}
