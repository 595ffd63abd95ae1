package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// makeTree writes a service-bundle-like tree: a binary with a hard link, a
// setuid helper, a symlink into the tree, an empty directory, many small
// files and a large data file. variant 2 changes it the way a release
// does: part of the large file, one small file edited, one removed, one
// added, the binary rebuilt with a small difference.
func makeTree(t *testing.T, dir string, variant int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 7))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string, b []byte, mode os.FileMode) {
		t.Helper()
		must(os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0755))
		must(os.WriteFile(filepath.Join(dir, p), b, mode))
		must(os.Chmod(filepath.Join(dir, p), mode)) // umask
	}
	noise := func(n int) []byte { // compressible but not trivially
		b := make([]byte, n)
		for i := range b {
			b[i] = "abcdefghij0123\n"[rng.IntN(15)]
		}
		return b
	}
	bin := noise(600 << 10)
	big := noise(3 << 20)
	if variant == 2 {
		copy(bin[100<<10:], "rebuilt with a new version string")
		copy(big[1<<20:], bytes.Repeat([]byte("changed data block "), 3000)) // ~57 KiB
	}
	write("bin/svc", bin, 0755)
	must(os.Link(filepath.Join(dir, "bin/svc"), filepath.Join(dir, "bin/svc-hardlink")))
	write("bin/helper", noise(20<<10), 04755)
	write("data/big.bin", big, 0644)
	write("data/conf.txt", []byte(fmt.Sprintf("variant=%d\n", variant)), 0640)
	must(os.MkdirAll(filepath.Join(dir, "etc"), 0755))
	must(os.Symlink("../data/conf.txt", filepath.Join(dir, "etc/conf")))
	must(os.MkdirAll(filepath.Join(dir, "var/empty"), 0700))
	for i := 0; i < 150; i++ {
		b := noise(500 + rng.IntN(6000))
		if variant == 2 && i == 7 {
			b = append(b, "edited"...)
		}
		if variant == 2 && i == 10 {
			continue
		}
		write(fmt.Sprintf("lib/mod-%03d.txt", i), b, 0644)
	}
	if variant == 2 {
		write("lib/new-module.txt", noise(3000), 0644)
	}
	// Fixed timestamps, so two trees built alike are alike.
	ts := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			tv := unix.NsecToTimespec(ts.UnixNano())
			must(unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{tv, tv}, unix.AT_SYMLINK_NOFOLLOW))
		}
		return nil
	})
}

// sameTree fails unless got has exactly want's entries with the same
// types, permission bits, content, link targets, timestamps and hard links.
func sameTree(t *testing.T, want, got string) {
	t.Helper()
	type ent struct {
		mode  fs.FileMode
		size  int64
		mtime int64
		link  string
		ino   uint64
		data  []byte
	}
	scan := func(root string) map[string]ent {
		m := map[string]ent{}
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(root, p)
			if rel == "." {
				return nil
			}
			st, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			e := ent{mode: st.Mode(), mtime: st.ModTime().UnixNano(), ino: st.Sys().(*syscall.Stat_t).Ino}
			switch {
			case st.Mode().IsRegular():
				e.size = st.Size()
				e.data, _ = os.ReadFile(p)
			case st.Mode()&fs.ModeSymlink != 0:
				e.link, _ = os.Readlink(p)
			}
			m[rel] = e
			return nil
		})
		return m
	}
	if r, err := filepath.EvalSymlinks(got); err == nil { // ROOT/current
		got = r
	}
	w, g := scan(want), scan(got)
	for p, we := range w {
		ge, ok := g[p]
		switch {
		case !ok:
			t.Fatalf("%s: missing in %s", p, got)
		case ge.mode != we.mode:
			t.Fatalf("%s: mode %v, want %v", p, ge.mode, we.mode)
		case ge.link != we.link:
			t.Fatalf("%s: link %q, want %q", p, ge.link, we.link)
		case !bytes.Equal(ge.data, we.data):
			t.Fatalf("%s: content differs", p)
		case ge.mtime != we.mtime:
			t.Fatalf("%s: mtime %d, want %d", p, ge.mtime, we.mtime)
		}
	}
	for p := range g {
		if _, ok := w[p]; !ok {
			t.Fatalf("%s: in %s but not in %s", p, got, want)
		}
	}
	if g["bin/svc"].ino != g["bin/svc-hardlink"].ino {
		t.Fatalf("bin/svc-hardlink is not a hard link of bin/svc in %s", got)
	}
}

type bundleJSON struct {
	Revision       uint64 `json:"revision"`
	BytesFetched   int64  `json:"bytes_fetched"`
	BytesFromSeed  int64  `json:"bytes_from_seed"`
	BytesFromCache int64  `json:"bytes_from_cache"`
	BytesFromPacks int64  `json:"bytes_from_packs"`
	ChunksFetched  int    `json:"chunks_fetched"`
	Action         string `json:"action"`
	Held           bool   `json:"held"`
	Mandatory      bool   `json:"mandatory"`
	Files          int    `json:"files"`
}

type bundleFixture struct {
	dir, store, key, pub, tree1, tree2, root, cache, state string
}

func newBundleFixture(t *testing.T) *bundleFixture {
	d := t.TempDir()
	f := &bundleFixture{dir: d, store: filepath.Join(d, "store"), key: filepath.Join(d, "k.key"), pub: filepath.Join(d, "k.pub"),
		tree1: filepath.Join(d, "tree1"), tree2: filepath.Join(d, "tree2"), root: filepath.Join(d, "opt/svc"),
		cache: filepath.Join(d, "cache"), state: filepath.Join(d, "state")}
	mustRun(t, "key", "gen", "--out", filepath.Join(d, "k"))
	makeTree(t, f.tree1, 1)
	makeTree(t, f.tree2, 2)
	return f
}

func (f *bundleFixture) publish(t *testing.T, tree string, extra ...string) map[string]any {
	t.Helper()
	out := mustRun(t, append([]string{"publish", "--store", f.store, "--key", f.key, "--name", "svc", "--kind", "bundle", tree, "--json", "-q"}, extra...)...)
	return decode[map[string]any](t, out)
}

func (f *bundleFixture) apply(t *testing.T, from string, extra ...string) (bundleJSON, result) {
	t.Helper()
	args := append([]string{"bundle", "apply", "--from", from, "--trust", f.pub, "--name", "svc", "--root", f.root,
		"--cache", f.cache, "--state-dir", f.state, "--json", "-q"}, extra...)
	r := imgctl(t, nil, args...)
	if r.code != 0 {
		return bundleJSON{}, r
	}
	return decode[bundleJSON](t, r.stdout), r
}

func (f *bundleFixture) mustApply(t *testing.T, from string, extra ...string) bundleJSON {
	t.Helper()
	j, r := f.apply(t, from, extra...)
	if r.code != 0 {
		t.Fatalf("bundle apply: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	return j
}

func (f *bundleFixture) current(t *testing.T) string {
	t.Helper()
	l, err := os.Readlink(filepath.Join(f.root, "current"))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestBundleApplyDeltaRollbackHold(t *testing.T) {
	f := newBundleFixture(t)
	p1 := f.publish(t, f.tree1)
	p2 := f.publish(t, f.tree2)
	if p1["revision"].(float64) != 1 || p2["revision"].(float64) != 2 {
		t.Fatalf("revisions %v %v", p1["revision"], p2["revision"])
	}
	url := serve(t, f.store)

	j1 := f.mustApply(t, url, "--revision", "1")
	if j1.Revision != 1 || j1.Action != "installed" || j1.BytesFromSeed != 0 {
		t.Fatalf("first apply: %+v", j1)
	}
	if f.current(t) != "releases/1" {
		t.Fatalf("current -> %s", f.current(t))
	}
	sameTree(t, f.tree1, filepath.Join(f.root, "current"))

	j2 := f.mustApply(t, url)
	sameTree(t, f.tree2, filepath.Join(f.root, "current"))
	if j2.Revision != 2 || j2.BytesFromSeed == 0 {
		t.Fatalf("delta apply: %+v", j2)
	}
	// The change is ~60 KiB of the large file, a few bytes of the binary
	// and two small files: a delta must fetch far less than the first apply.
	if j2.BytesFetched*4 > j1.BytesFetched {
		t.Fatalf("delta apply fetched %d bytes, first apply %d: unchanged files were fetched again", j2.BytesFetched, j1.BytesFetched)
	}
	t.Logf("first apply fetched %d bytes, delta %d (%d chunks), %d from the installed release",
		j1.BytesFetched, j2.BytesFetched, j2.ChunksFetched, j2.BytesFromSeed)
	mustRun(t, "bundle", "status", "--root", f.root, "--state-dir", f.state, "--verify")

	// Rollback, then apply again: switched back without fetching chunks.
	mustRun(t, "bundle", "rollback", "--root", f.root)
	if f.current(t) != "releases/1" {
		t.Fatalf("after rollback current -> %s", f.current(t))
	}
	sameTree(t, f.tree1, filepath.Join(f.root, "current"))
	j3 := f.mustApply(t, url)
	if j3.Action != "switched" || j3.ChunksFetched != 0 || f.current(t) != "releases/2" {
		t.Fatalf("re-apply after rollback: %+v, current %s", j3, f.current(t))
	}

	// Hold: an optional release is not installed, a mandatory one is.
	mustRun(t, "bundle", "hold", "svc", "--state-dir", f.state)
	f.publish(t, f.tree1) // rev 3: optional
	j4 := f.mustApply(t, url)
	if j4.Action != "held" || !j4.Held || f.current(t) != "releases/2" {
		t.Fatalf("held bundle updated: %+v, current %s", j4, f.current(t))
	}
	f.publish(t, f.tree1, "--mandatory") // rev 4
	j5 := f.mustApply(t, url)
	if j5.Action != "installed" || !j5.Mandatory || !j5.Held || f.current(t) != "releases/4" {
		t.Fatalf("mandatory release not installed over a hold: %+v, current %s", j5, f.current(t))
	}
	sameTree(t, f.tree1, filepath.Join(f.root, "current"))
	mustRun(t, "bundle", "unhold", "svc", "--state-dir", f.state)
	st := decode[map[string]any](t, mustRun(t, "bundle", "status", "--root", f.root, "--state-dir", f.state, "--json"))
	if st["current"].(float64) != 4 || st["previous"].(float64) != 2 || st["held"].(bool) {
		t.Fatalf("status %v", st)
	}
	// Only the current and the previous release are kept.
	if inst := fmt.Sprint(st["installed"]); inst != "[2 4]" {
		t.Fatalf("installed %s, want [2 4]", inst)
	}

	// A file changed behind imgctl's back: --verify says so (exit 3).
	victim := filepath.Join(f.root, "current", "lib", "mod-020.txt")
	os.Chmod(victim, 0644)
	if err := os.WriteFile(victim, []byte("tampered"), 0644); err != nil {
		t.Fatal(err)
	}
	if r := imgctl(t, nil, "bundle", "status", "--root", f.root, "--state-dir", f.state, "--verify"); r.code != 3 {
		t.Fatalf("status --verify of a tampered release: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// Publishing the same tree twice gives the same manifest content; --mtime
// makes trees that differ only in timestamps publish alike.
func TestBundlePublishDeterministic(t *testing.T) {
	f := newBundleFixture(t)
	other := filepath.Join(f.dir, "tree1-copy")
	makeTree(t, other, 1)
	now := time.Now()
	os.Chtimes(filepath.Join(other, "data", "big.bin"), now, now)
	content := func(rev int) string {
		v := decode[map[string]any](t, mustRun(t, "manifest", "show", "--store", f.store, fmt.Sprintf("svc@%d", rev), "--json", "--full"))
		for _, k := range []string{"id", "revision", "created", "torrents", "signed_by"} {
			delete(v, k)
		}
		return fmt.Sprint(v)
	}
	f.publish(t, f.tree1)
	f.publish(t, f.tree1)
	if content(1) != content(2) {
		t.Fatal("the same tree published twice gave different manifests")
	}
	f.publish(t, other)
	if content(3) == content(1) {
		t.Fatal("a changed timestamp did not show in the manifest (the test cannot fail)")
	}
	f.publish(t, f.tree1, "--mtime", "1700000000")
	f.publish(t, other, "--mtime", "1700000000")
	if content(4) != content(5) {
		t.Fatal("--mtime did not make trees that differ only in timestamps publish alike")
	}
	p := f.publish(t, other, "--mtime", "1700000000")
	if p["new_chunks"].(float64) != 0 {
		t.Fatalf("republishing stored %v new chunks", p["new_chunks"])
	}
}

func TestBundlePublishRefusals(t *testing.T) {
	f := newBundleFixture(t)
	cases := map[string]func(dir string) error{
		"fifo":               func(dir string) error { return syscall.Mkfifo(filepath.Join(dir, "lib", "pipe"), 0644) },
		"absolute symlink":   func(dir string) error { return os.Symlink("/etc/passwd", filepath.Join(dir, "lib", "passwd")) },
		"symlink climbs out": func(dir string) error { return os.Symlink("../../outside", filepath.Join(dir, "lib", "up")) },
		"socket": func(dir string) error {
			fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
			if err != nil {
				return err
			}
			defer syscall.Close(fd)
			return syscall.Bind(fd, &syscall.SockaddrUnix{Name: filepath.Join(dir, "lib", "sock")})
		},
	}
	if os.Geteuid() == 0 {
		cases["device node"] = func(dir string) error {
			return syscall.Mknod(filepath.Join(dir, "lib", "null"), syscall.S_IFCHR|0666, 1<<8|3)
		}
	}
	for name, mk := range cases {
		dir := filepath.Join(f.dir, strings.ReplaceAll(name, " ", "-"))
		makeTree(t, dir, 1)
		if err := mk(dir); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r := imgctl(t, nil, "publish", "--store", f.store, "--key", f.key, "--name", "svc", "--kind", "bundle", dir, "-q")
		if r.code == 0 {
			t.Fatalf("%s: published", name)
		}
		t.Logf("%s: exit %d: %s", name, r.code, strings.TrimSpace(r.stderr))
	}
	if _, err := os.Stat(filepath.Join(f.store, "manifests", "svc")); err == nil {
		ents, _ := os.ReadDir(filepath.Join(f.store, "manifests", "svc", "stable"))
		if len(ents) > 0 {
			t.Fatalf("a refused bundle left a release: %v", ents)
		}
	}
}

// Restart policies with hooks: all-at-once stops every instance before the
// switch; rolling restarts one at a time and, when an instance's health
// check fails, switches back and restarts the instances already moved.
func TestBundleRestartPolicies(t *testing.T) {
	f := newBundleFixture(t)
	// The bundle ships its own post-start hook (used when the config has
	// none).
	for _, tree := range []string{f.tree1, f.tree2} {
		hook := filepath.Join(tree, ".imgctl", "hooks", "post-start")
		os.MkdirAll(filepath.Dir(hook), 0755)
		if err := os.WriteFile(hook, []byte("#!/bin/sh\necho \"shipped post-start $IMGCTL_INSTANCE $IMGCTL_REVISION\" >> \"$IMGCTL_ROOT/hooks.log\"\n"), 0755); err != nil {
			t.Fatal(err)
		}
	}
	f.publish(t, f.tree1)
	f.publish(t, f.tree2)
	logf := filepath.Join(f.root, "hooks.log")
	hook := func(name string) string {
		return fmt.Sprintf(`%s = 'echo "%s $IMGCTL_INSTANCE $IMGCTL_REVISION $(readlink "$IMGCTL_ROOT/current")" >> "$IMGCTL_ROOT/hooks.log"'`, name, name)
	}
	config := func(policy, health string) string {
		p := filepath.Join(f.dir, policy+".toml")
		s := fmt.Sprintf("policy = %q\ninstances = [\"1\", \"2\", \"3\"]\nhealth_timeout = \"2s\"\nhealth_interval = \"100ms\"\n[hooks]\n%s\n%s\n%s\nhealth = %q\n",
			policy, hook("stop"), hook("start"), hook("pre-stop"), health)
		if err := os.WriteFile(p, []byte(s), 0644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	readLog := func() []string {
		b, _ := os.ReadFile(logf)
		os.Remove(logf)
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}

	// First install with all-at-once: nothing runs yet, so nothing stops.
	f.mustApply(t, f.store, "--revision", "1", "--config", config("all-at-once", "true"))
	want := []string{
		"start 1 1 releases/1", "shipped post-start 1 1", "start 2 1 releases/1", "shipped post-start 2 1",
		"start 3 1 releases/1", "shipped post-start 3 1",
	}
	if got := readLog(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("all-at-once first install hooks:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Rolling to 2, instance 2 never healthy on revision 2: instance 1 is
	// moved, instance 2 fails, both go back to 1, instance 3 is untouched.
	health := `test "$IMGCTL_INSTANCE" != 2 -o "$IMGCTL_REVISION" != 2`
	_, r := f.apply(t, f.store, "--config", config("rolling", health))
	if r.code != 1 || !strings.Contains(r.stderr, "rolled back") {
		t.Fatalf("rolling update with a failing health check: exit %d\n%s", r.code, r.stderr)
	}
	if f.current(t) != "releases/1" {
		t.Fatalf("after a failed rolling update current -> %s", f.current(t))
	}
	want = []string{
		"pre-stop 1 2 releases/2", "stop 1 2 releases/2", "start 1 2 releases/2", "shipped post-start 1 2",
		"pre-stop 2 2 releases/2", "stop 2 2 releases/2", "start 2 2 releases/2", "shipped post-start 2 2",
		// rollback: the moved instances stop on 2 and start on 1
		"pre-stop 1 1 releases/2", "stop 1 1 releases/2", "pre-stop 2 1 releases/2", "stop 2 1 releases/2",
		"start 1 1 releases/1", "shipped post-start 1 1", "start 2 1 releases/1", "shipped post-start 2 1",
	}
	if got := readLog(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("rolling update hooks:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	mustRun(t, "bundle", "status", "--root", f.root, "--state-dir", f.state, "--verify")

	// all-at-once to 2 with every instance healthy: stop all, switch, start all.
	f.mustApply(t, f.store, "--config", config("all-at-once", "true"))
	want = []string{
		"pre-stop 1 2 releases/1", "stop 1 2 releases/1", "pre-stop 2 2 releases/1", "stop 2 2 releases/1",
		"pre-stop 3 2 releases/1", "stop 3 2 releases/1",
		"start 1 2 releases/2", "shipped post-start 1 2", "start 2 2 releases/2", "shipped post-start 2 2",
		"start 3 2 releases/2", "shipped post-start 3 2",
	}
	if got := readLog(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("all-at-once update hooks:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if f.current(t) != "releases/2" {
		t.Fatalf("current -> %s", f.current(t))
	}
}

// kill -9 at random points of an apply: current always names a complete,
// verified release (the old or the new one), and the same apply run again
// completes. Bounded: at most 30 kills or 60 s.
func TestBundleKillAnywhere(t *testing.T) {
	f := newBundleFixture(t)
	f.publish(t, f.tree1)
	f.mustApply(t, f.store)
	pristine := filepath.Join(f.dir, "pristine")
	if out, err := exec.Command("cp", "-a", f.root, pristine).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	f.publish(t, f.tree2)
	args := []string{"bundle", "apply", "--from", f.store, "--trust", f.pub, "--name", "svc", "--root", f.root,
		"--cache", f.cache, "--state-dir", f.state, "-q"}
	reset := func() {
		os.RemoveAll(f.cache)
		exec.Command("rm", "-rf", f.root).Run()
		if out, err := exec.Command("cp", "-a", pristine, f.root).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	reset()
	t0 := time.Now()
	mustRun(t, args...)
	full := time.Since(t0)

	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 2))
	t.Logf("kill points drawn with seed %d; an undisturbed apply takes %v", seed, full)
	deadline := time.Now().Add(60 * time.Second)
	kills, newer := 0, 0
	for kills < 30 && time.Now().Before(deadline) {
		reset()
		cmd := exec.Command(imgctlBin, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Int64N(int64(full)*11/10 + 1)))
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		kills++
		cur := f.current(t)
		if cur != "releases/1" && cur != "releases/2" {
			t.Fatalf("kill %d: current -> %s", kills, cur)
		}
		if cur == "releases/2" {
			newer++
		}
		if r := imgctl(t, nil, "bundle", "status", "--root", f.root, "--state-dir", f.state, "--verify"); r.code != 0 {
			t.Fatalf("kill %d: current (%s) does not verify: %s%s", kills, cur, r.stdout, r.stderr)
		}
		mustRun(t, args...)
		if f.current(t) != "releases/2" {
			t.Fatalf("kill %d: the apply run again did not finish: current -> %s", kills, f.current(t))
		}
	}
	sameTree(t, f.tree2, filepath.Join(f.root, "current"))
	t.Logf("%d kills, %d after the switch", kills, newer)
	if kills < 10 {
		t.Fatalf("only %d kills in the time allowed", kills)
	}
}

// diff of two bundles names exactly the files that changed, even small
// ones that share chunks with their neighbours.
func TestBundleDiff(t *testing.T) {
	f := newBundleFixture(t)
	f.publish(t, f.tree1)
	f.publish(t, f.tree2)
	type fileChange struct {
		Path, Change string
		NewBytes     int64 `json:"new_bytes"`
	}
	d := decode[struct {
		FetchBytes int64 `json:"fetch_bytes"`
		Files      struct {
			Added, Removed, Changed, Unchanged int
			Files                              []fileChange
		}
	}](t, mustRun(t, "diff", "--store", f.store, "svc@1", "svc@2", "--format", "json"))
	got := map[string]string{}
	for _, c := range d.Files.Files {
		got[c.Path] = c.Change
	}
	want := map[string]string{"bin/svc": "changed", "data/big.bin": "changed", "data/conf.txt": "changed",
		"lib/mod-007.txt": "changed", "lib/mod-010.txt": "removed", "lib/new-module.txt": "added"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("diff files %v, want %v", got, want)
	}
	if d.Files.Unchanged < 150 || d.FetchBytes == 0 {
		t.Fatalf("diff %+v", d)
	}
	text := mustRun(t, "diff", "--store", f.store, "svc@1", "svc@2")
	if !strings.Contains(text, "1 added") || !strings.Contains(text, "lib/new-module.txt") {
		t.Fatalf("text report:\n%s", text)
	}
}

// bundle apply --p2p takes the missing chunks from the swarm (the origin
// seeds them), with the installed release as seed as over HTTP.
func TestBundleApplyP2P(t *testing.T) {
	f := newBundleFixture(t)
	f.publish(t, f.tree1)
	f.publish(t, f.tree2)
	url := serve(t, f.store, "--seed-torrents", "--tracker", "--tracker-interval", "2s")
	p2p := []string{"--p2p", "--listen", "127.0.0.30:0", "--p2p-stall", "30s"}
	j1 := f.mustApply(t, url, append([]string{"--revision", "1"}, p2p...)...)
	sameTree(t, f.tree1, filepath.Join(f.root, "current"))
	type p2pJSON struct {
		Peers    int64 `json:"bytes_from_peers"`
		WebSeeds int64 `json:"bytes_from_webseeds"`
		Fetched  int64 `json:"bytes_fetched"`
		Seed     int64 `json:"bytes_from_seed"`
	}
	r := imgctl(t, nil, append([]string{"bundle", "apply", "--from", url, "--trust", f.pub, "--name", "svc", "--root", f.root,
		"--cache", f.cache, "--state-dir", f.state, "--json", "-q"}, p2p...)...)
	if r.code != 0 {
		t.Fatalf("apply --p2p: exit %d\n%s", r.code, r.stderr)
	}
	j2 := decode[p2pJSON](t, r.stdout)
	sameTree(t, f.tree2, filepath.Join(f.root, "current"))
	if j2.Peers == 0 || j2.Seed == 0 {
		t.Fatalf("delta apply over the swarm: %+v (first apply %+v)", j2, j1)
	}
	t.Logf("delta over the swarm: %+v", j2)
}

// A chunk shared by an image and a bundle is stored once and fetched once:
// a terminal that pulled the image into its cache fetches none of the
// bundle's chunks that the image holds.
func TestBundleSharesChunksWithImages(t *testing.T) {
	f := newBundleFixture(t)
	big := filepath.Join(f.tree1, "data", "big.bin")
	pi := decode[map[string]any](t, mustRun(t, "publish", "--store", f.store, "--key", f.key, "--name", "os", big, "--json", "-q"))
	pb := f.publish(t, f.tree1)
	if pb["new_chunks"].(float64) >= pb["chunks"].(float64) {
		t.Fatalf("the bundle stored all its chunks again: %v (image: %v chunks)", pb, pi["chunks"])
	}
	mustRun(t, "pull", "--from", f.store, "--trust", f.pub, "--name", "os", "--cache", f.cache, "--out", filepath.Join(f.dir, "os.img"), "-q")
	j := f.mustApply(t, f.store)
	full := newBundleFixture(t)
	full.store, full.pub = f.store, f.pub
	jFull := full.mustApply(t, f.store)
	if j.BytesFromCache == 0 || j.ChunksFetched+int(pi["chunks"].(float64)) > jFull.ChunksFetched+1 {
		t.Fatalf("apply with the image's chunks in the cache: %+v; without: %+v", j, jFull)
	}
	t.Logf("image %v chunks; bundle apply fetched %d chunks with them in the cache, %d without", pi["chunks"], j.ChunksFetched, jFull.ChunksFetched)
}

// bundle apply --p2p --seed-for keeps seeding the release it installed,
// the chunks it took from the installed release reproduced from the new
// tree: a terminal with nothing installed gets the release from it.
func TestBundleApplySeeds(t *testing.T) {
	f := newBundleFixture(t)
	f.publish(t, f.tree1)
	f.publish(t, f.tree2)
	url := serve(t, f.store, "--tracker", "--tracker-interval", "1s") // the origin does not seed
	apply := func(who string, extra ...string) []string {
		d := filepath.Join(f.dir, who)
		return append([]string{"bundle", "apply", "--from", url, "--trust", f.pub, "--name", "svc", "--root", filepath.Join(d, "root"),
			"--cache", filepath.Join(d, "cache"), "--state-dir", filepath.Join(d, "state"), "--json"}, extra...)
	}
	mustRun(t, apply("a", "--revision", "1", "-q")...)
	a := exec.Command(imgctlBin, apply("a", "--p2p", "--listen", "127.0.0.31:0", "--announce", url+"/announce", "--seed-for", "90s")...)
	startSeeding(t, a)
	r := imgctl(t, nil, apply("b", "-q", "--p2p", "--listen", "127.0.0.32:0", "--announce", url+"/announce", "--p2p-stall", "20s")...)
	if r.code != 0 {
		t.Fatalf("apply B: exit %d\n%s", r.code, r.stderr)
	}
	sameTree(t, f.tree2, filepath.Join(f.dir, "b", "root", "current"))
	peers, web := mostlyFromPeers(t, r.stdout, "apply B, terminal A seeding")
	t.Logf("B: %d bytes from terminal A, %d over HTTP", peers, web)
}
