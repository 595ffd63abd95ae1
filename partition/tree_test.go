package partition

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/manifest"
)

// A tree's content reads and writes across file boundaries, with the files
// in table order; empty files take no content.
func TestTreeContentAcrossFiles(t *testing.T) {
	src := t.TempDir()
	files := map[string]string{"a/x": "hello ", "a/y": "", "b": "world", "a-c": "!"}
	for p, c := range files {
		os.MkdirAll(filepath.Join(src, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(src, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(src, "b"), filepath.Join(src, "b2")); err != nil {
		t.Fatal(err)
	}
	table, err := ScanTree(src)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, f := range table {
		order = append(order, f.Path+":"+f.Type.String())
	}
	// depth-first: a/ and its files before a-c; b2 names b.
	want := "a:dir a/x:file a/y:file a-c:file b:file b2:hardlink"
	if got := strings.Join(order, " "); got != want {
		t.Fatalf("table %s, want %s", got, want)
	}
	r := OpenTree(src, table, false)
	defer r.Close()
	content := make([]byte, r.Size())
	if _, err := r.ReadAt(content, 0); err != nil {
		t.Fatal(err)
	}
	if string(content) != "hello !world" {
		t.Fatalf("content %q", content)
	}

	// Write the same content into a fresh skeleton in odd pieces.
	dst := filepath.Join(t.TempDir(), "new")
	if err := CreateTree(context.Background(), dst, table); err != nil {
		t.Fatal(err)
	}
	w := OpenTree(dst, table, true)
	for _, cut := range [][2]int{{3, 9}, {0, 3}, {9, 12}} {
		if _, err := w.WriteAt(content[cut[0]:cut[1]], int64(cut[0])); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.WriteAt([]byte("x"), r.Size()); err == nil {
		t.Fatal("wrote beyond the content")
	}
	w.Close()
	if err := FinishTree(context.Background(), dst, table); err != nil {
		t.Fatal(err)
	}
	if err := CheckTree(context.Background(), dst, table); err != nil {
		t.Fatal(err)
	}
	for p, c := range files {
		if b, _ := os.ReadFile(filepath.Join(dst, p)); !bytes.Equal(b, []byte(c)) {
			t.Fatalf("%s: %q, want %q", p, b, c)
		}
	}
	// CheckTree notices a changed mode and a replaced entry.
	os.Chmod(filepath.Join(dst, "a/x"), 0o600)
	if err := CheckTree(context.Background(), dst, table); err == nil {
		t.Fatal("CheckTree missed a mode change")
	}
	os.Chmod(filepath.Join(dst, "a/x"), 0o644)
	os.Remove(filepath.Join(dst, "b2"))
	os.WriteFile(filepath.Join(dst, "b2"), []byte("world"), 0o644)
	if err := CheckTree(context.Background(), dst, table); err == nil {
		t.Fatal("CheckTree missed a broken hard link")
	}
}

// A file that shrank after the scan is an error, not short content.
func TestTreeShortFile(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("0123456789"), 0o644)
	table, err := ScanTree(src)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(src, "f"), []byte("01234"), 0o644)
	r := OpenTree(src, table, false)
	defer r.Close()
	if _, err := r.ReadAt(make([]byte, 10), 0); err == nil || !strings.Contains(err.Error(), "shorter") {
		t.Fatalf("read of a shrunk file: %v", err)
	}
}

func TestServiceConfig(t *testing.T) {
	d := t.TempDir()
	c, err := LoadServiceConfig(filepath.Join(d, "missing.toml"))
	if err != nil || c.Policy != PolicyAllAtOnce || len(c.Instances) != 1 || c.HookTimeout.Duration != 5*time.Minute {
		t.Fatalf("default config %+v, %v", c, err)
	}
	for name, body := range map[string]string{
		"bad policy":  `policy = "sometimes"`,
		"bad hook":    "[hooks]\npre-start = \"true\"",
		"unknown key": `polcy = "rolling"`,
		"bad timeout": `health_timeout = "soon"`,
	} {
		p := filepath.Join(d, "c.toml")
		os.WriteFile(p, []byte(body), 0o644)
		if _, err := LoadServiceConfig(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// current only ever names a committed release; Switch refuses anything else.
func TestBundleRootSwitch(t *testing.T) {
	r, err := OpenBundleRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Switch(1, "svc", "stable"); err == nil {
		t.Fatal("switched to a release that is not installed")
	}
	stage, err := r.Stage(1)
	if err != nil {
		t.Fatal(err)
	}
	table := []manifest.File{{Path: "f", Type: manifest.TypeRegular, Mode: 0o644}}
	if err := CreateTree(context.Background(), stage, table); err != nil {
		t.Fatal(err)
	}
	if err := r.Switch(1, "svc", "stable"); err == nil {
		t.Fatal("switched to a staging tree")
	}
	// Commit killed after writing the manifest, before the rename: the
	// manifest alone is no installed release (a rerun installs it again).
	if err := os.WriteFile(r.manifestPath(1), []byte("manifest"), 0o644); err != nil {
		t.Fatal(err)
	}
	if env, err := r.Manifest(1); err == nil {
		t.Fatalf("manifest %q of a release whose tree is still staged", env)
	}
	if revs, _ := r.Installed(); len(revs) != 0 {
		t.Fatalf("installed %v", revs)
	}
	if err := r.Commit(1, []byte("manifest")); err != nil {
		t.Fatal(err)
	}
	if err := r.Switch(1, "svc", "stable"); err != nil {
		t.Fatal(err)
	}
	if cur, _ := r.Current(); cur != 1 {
		t.Fatalf("current %d", cur)
	}
	if _, err := r.Stage(1); err == nil {
		t.Fatal("staged over an installed release")
	}
}

// A hook that hangs is stopped at hook_timeout and fails the step.
func TestHookTimeout(t *testing.T) {
	d := t.TempDir()
	p := filepath.Join(d, "s.toml")
	os.WriteFile(p, []byte("hook_timeout = \"300ms\"\n[hooks]\nstop = \"sleep 30\"\n"), 0o644)
	c, err := LoadServiceConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	switched := false
	r := &Restart{Config: c, Root: d, Name: "svc", From: 1, To: 2, SwitchTo: func() error { switched = true; return nil }}
	start := time.Now()
	if err := r.Run(context.Background()); err == nil || switched {
		t.Fatalf("a hung stop hook: err %v, switched %v", err, switched)
	}
	if time.Since(start) > 20*time.Second {
		t.Fatal("the hook was not stopped at its timeout")
	}
}
