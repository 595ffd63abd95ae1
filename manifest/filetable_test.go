package manifest

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// sampleBundle is sample() as a bundle whose files hold its content.
func sampleBundle(t *testing.T) (*Manifest, []File) {
	t.Helper()
	m, files, err := sampleBundleManifest()
	if err != nil {
		t.Fatal(err)
	}
	return m, files
}

func sampleBundleManifest() (*Manifest, []File, error) {
	m := sample()
	m.Kind = KindBundle
	files := []File{
		{Path: "bin", Type: TypeDir, Mode: 0755},
		{Path: "bin/svc", Type: TypeRegular, Mode: 04755, Size: 100000, MTime: 1700000000123456789},
		{Path: "bin/svc-link", Type: TypeHardlink, Mode: 04755, Link: "bin/svc"},
		{Path: "bin/tool", Type: TypeSymlink, Mode: 0777, Link: "svc"},
		{Path: "empty", Type: TypeDir, Mode: 0700, UID: 1000, GID: 1000},
		{Path: "etc", Type: TypeDir, Mode: 0755},
		{Path: "etc/conf", Type: TypeSymlink, Mode: 0777, Link: "../share/conf"},
		{Path: "etc/zero", Type: TypeRegular, Mode: 0644},
		{Path: "share", Type: TypeDir, Mode: 0755},
		{Path: "share/conf", Type: TypeRegular, Mode: 0644, Size: m.Size - 100000},
	}
	_, err := m.SetFileTable(files)
	return m, files, err
}

func TestFileTableRoundTrip(t *testing.T) {
	m, files := sampleBundle(t)
	k := testKey(1)
	env, err := Sign(m, k)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Verify(env, Policy{Trust: trustOf(k), Now: func() time.Time { return created }})
	if err != nil {
		t.Fatal(err)
	}
	gf, err := got.FileTable()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gf, files) {
		t.Fatalf("file table changed in a round trip:\n%+v\n%+v", gf, files)
	}
	if gf[9].Offset != 100000 || gf[1].Offset != 0 {
		t.Fatalf("offsets: %d %d", gf[1].Offset, gf[9].Offset)
	}
	if got.Mandatory() {
		t.Fatal("mandatory without the flag")
	}
	m.SetMandatory(true)
	env, _ = Sign(m, k)
	if got, _ := Verify(env, Policy{Trust: trustOf(k), Now: func() time.Time { return created }}); !got.Mandatory() {
		t.Fatal("mandatory flag lost")
	}
}

func TestSegmentStarts(t *testing.T) {
	files := []File{
		{Path: "a", Type: TypeRegular, Size: 10},
		{Path: "b", Type: TypeRegular, Size: 20},
		{Path: "c", Type: TypeRegular, Size: 100},
		{Path: "d", Type: TypeRegular, Size: 0},
		{Path: "e", Type: TypeRegular, Size: 5},
		{Path: "f", Type: TypeRegular, Size: 7},
		{Path: "g", Type: TypeRegular, Size: 200},
		{Path: "h", Type: TypeRegular, Size: 300},
	}
	if _, err := ValidateFiles(files); err != nil {
		t.Fatal(err)
	}
	got := SegmentStarts(files, 100)
	// a (first), c (large), e (small after large), g, h (large)
	want := []int64{0, 30, 130, 142, 342}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("segments %v, want %v", got, want)
	}
}

func TestFileTableRefusals(t *testing.T) {
	reg := func(p string, n int64) File { return File{Path: p, Type: TypeRegular, Mode: 0644, Size: n} }
	dir := func(p string) File { return File{Path: p, Type: TypeDir, Mode: 0755} }
	sym := func(p, to string) File { return File{Path: p, Type: TypeSymlink, Mode: 0777, Link: to} }
	cases := map[string][]File{
		"dot-dot":               {reg("../etc/passwd", 1)},
		"inner dot-dot":         {dir("a"), reg("a/../../x", 1)},
		"absolute":              {reg("/etc/passwd", 1)},
		"dot":                   {reg(".", 1)},
		"not clean":             {dir("a"), reg("a//b", 1)},
		"duplicate":             {reg("a", 1), reg("a", 1)},
		"unsorted":              {reg("b", 1), reg("a", 1)},
		"parent missing":        {reg("a/b", 1)},
		"parent is a file":      {reg("a", 1), reg("a/b", 1)},
		"parent is a symlink":   {sym("a", "."), reg("a/b", 1)},
		"symlink absolute":      {sym("l", "/etc/shadow")},
		"symlink climbs out":    {dir("a"), sym("a/l", "../../x")},
		"symlink up after name": {dir("a"), dir("a/b"), sym("a/b/s", "../.."), sym("a/b/l", "s/../..")},
		"hardlink outside":      {File{Path: "h", Type: TypeHardlink, Mode: 0644, Link: "../x"}},
		"hardlink to later":     {File{Path: "a", Type: TypeHardlink, Mode: 0644, Link: "b"}, reg("b", 1)},
		"hardlink to dir":       {dir("d"), File{Path: "h", Type: TypeHardlink, Mode: 0644, Link: "d"}},
		"mode out of range":     {File{Path: "a", Type: TypeRegular, Mode: 010000}},
		"device node":           {File{Path: "dev", Type: 9}},
	}
	for name, files := range cases {
		if _, err := ValidateFiles(files); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	ok := [][]File{
		{dir("a"), dir("a/b"), sym("a/b/l", "../../x")},
		{dir("a"), sym("a/l", "b/c/../d"[:3])},
		{dir("a"), reg("a/x", 1), reg("a-b", 1)}, // "a/x" sorts before "a-b"
	}
	for i, files := range ok {
		if _, err := ValidateFiles(files); err != nil {
			t.Errorf("ok %d refused: %v", i, err)
		}
	}
}

func TestFileTableSizeMustMatch(t *testing.T) {
	m, files := sampleBundle(t)
	files[1].Size++ // the table claims one byte more than the content
	if _, err := m.SetFileTable(files); err != nil {
		t.Fatal(err)
	}
	k := testKey(1)
	if _, err := Sign(m, k); err == nil || !strings.Contains(err.Error(), "declares") {
		t.Fatalf("signed a bundle whose file table exceeds its content: %v", err)
	}
	// And a decoder refuses such a payload even if someone signed it.
	m2, _ := sampleBundle(t)
	m2.Ext[ExtFileTable] = m.Ext[ExtFileTable]
	if _, err := m2.FileTable(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("FileTable: %v", err)
	}
}
