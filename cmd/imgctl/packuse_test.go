package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
)

// packBytes is a pack source that serves one pack's bytes.
type packBytes []byte

func (p packBytes) PackRecord(context.Context, string, string, uint64, uint64) ([]byte, error) {
	return nil, manifest.ErrNoRelease
}

func (p packBytes) Pack(_ context.Context, _ chunkstore.ID, off, size int64) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(p[off:size])), nil
}

// A pack streamed over HTTP can be checked whole in the middle of its
// decoding (the decoder asks before a large segment): the rest is read
// into the kept file and hashed, and reading goes on from the file; a pack
// that does not hash to its record is refused.
func TestKeptReaderAuthenticate(t *testing.T) {
	pack := make([]byte, 300<<10)
	for i := range pack {
		pack[i] = byte(i * 7)
	}
	rec := &manifest.PackRecord{Pack: chunkstore.Sum(pack), Size: int64(len(pack)), From: 1, To: 2}
	g := &globalOptions{stdout: io.Discard, stderr: io.Discard}
	for _, tc := range []struct {
		name   string
		served []byte
		kept   int // bytes an earlier pull kept
		first  int // bytes the decoder read before it asked
	}{
		{"fresh", pack, 0, 1000},
		{"resumed, asked inside the kept part", pack, 100 << 10, 1000},
		{"resumed, asked past the kept part", pack, 100 << 10, 150 << 10},
		{"forged", append(append([]byte{}, pack[:200<<10]...), make([]byte, 100<<10)...), 0, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "p.dpack.http")
			if err := os.WriteFile(path, pack[:tc.kept], 0o644); err != nil {
				t.Fatal(err)
			}
			file, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			f := &packFetcher{g: g, ps: packBytes(tc.served), rec: rec}
			r := &keptReader{ctx: context.Background(), f: f, file: file, have: int64(tc.kept)}
			defer r.Close()
			got := make([]byte, tc.first)
			if _, err := io.ReadFull(r, got); err != nil {
				t.Fatal(err)
			}
			err = r.Authenticate()
			if tc.name == "forged" {
				if !errors.Is(err, delta.ErrPack) {
					t.Fatalf("forged pack: %v, want ErrPack", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			rest, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(append(got, rest...), pack) {
				t.Fatal("the bytes read across the check are not the pack")
			}
			if kept, _ := os.ReadFile(path); !bytes.Equal(kept, pack) {
				t.Fatal("the kept file is not the pack")
			}
		})
	}
}
