package swarm

import (
	"bytes"
	"slices"
	"testing"

	"github.com/imgctl/imgctl/manifest"
)

// A release torrent's compact form rebuilds the published info bytes
// exactly from a manifest that lists the same chunks (in its own order),
// is a fraction of their size, and a damaged one never yields them.
func TestCompactTorrentRoundTrip(t *testing.T) {
	rel := makeRelease(t, 40, 9, 32<<10)
	m := &manifest.Manifest{}
	for i := len(rel.chunks) - 1; i >= 0; i-- { // not the torrent's order
		m.Chunks = append(m.Chunks, manifest.ChunkRef{ID: rel.chunks[i].ID(), Size: uint32(rel.chunks[i].Size())})
	}
	trackers := []string{"http://127.0.0.1:1/announce", "http://127.0.0.2:2/announce"}
	c, err := CompactTorrent(rel.info, m, trackers)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("info %d bytes, compact %d", len(rel.info), len(c))
	if len(c)*3 > len(rel.info) {
		t.Fatalf("compact form %d bytes for %d bytes of info", len(c), len(rel.info))
	}
	info, tr, err := ExpandTorrent(c, m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(info, rel.info) || !slices.Equal(tr, trackers) {
		t.Fatal("expanded info or trackers differ from the published ones")
	}
	// A manifest without one of the torrent's chunks cannot make one.
	if _, err := CompactTorrent(rel.info, &manifest.Manifest{Chunks: m.Chunks[1:]}, nil); err == nil {
		t.Fatal("compact form made for a manifest that lacks a chunk")
	}
	// Damage: a flipped piece hash expands to other info (which the
	// manifest's record refuses); cut or padded forms are errors.
	flipped := append([]byte(nil), c...)
	flipped[len(flipped)-1] ^= 1
	if info, _, err := ExpandTorrent(flipped, m); err == nil && bytes.Equal(info, rel.info) {
		t.Fatal("a damaged compact form expanded to the published info")
	}
	for name, b := range map[string][]byte{
		"truncated":    c[:len(c)-5],
		"trailing":     append(append([]byte(nil), c...), 0),
		"not compact":  rel.info,
		"fewer chunks": c, // expanded against a manifest whose indexes do not reach
	} {
		mm := m
		if name == "fewer chunks" {
			mm = &manifest.Manifest{Chunks: m.Chunks[:5]}
		}
		if _, _, err := ExpandTorrent(b, mm); err == nil {
			t.Errorf("%s: expanded", name)
		}
	}
}

// FuzzExpandTorrent: compact torrents come from a server not trusted until
// the result matches the manifest; no input panics the decoder or makes it
// allocate more than the input can describe.
func FuzzExpandTorrent(f *testing.F) {
	rel := makeRelease(f, 12, 11, 32<<10)
	m := &manifest.Manifest{}
	for _, c := range rel.chunks {
		m.Chunks = append(m.Chunks, manifest.ChunkRef{ID: c.ID(), Size: uint32(c.Size())})
	}
	c, err := CompactTorrent(rel.info, m, []string{"http://t/announce"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(c)
	f.Add(c[:len(c)/2])
	f.Fuzz(func(t *testing.T, b []byte) {
		info, _, err := ExpandTorrent(b, m)
		if err == nil && len(info) > 64*len(b)+1<<20 {
			t.Fatalf("%d bytes of info from %d bytes", len(info), len(b))
		}
	})
}
