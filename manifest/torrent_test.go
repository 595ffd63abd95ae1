package manifest

import (
	"crypto/sha1"
	"errors"
	"testing"

	"github.com/imgctl/imgctl/chunkstore"
)

// A torrent record survives encoding and signing, and Check accepts only
// the exact info bytes it names.
func TestTorrentRecord(t *testing.T) {
	info := []byte("d4:name4:testee")
	ref := TorrentRef{InfoHash: sha1.Sum(info), InfoSize: len(info), InfoDigest: chunkstore.Sum(info)}
	m := &Manifest{Kind: KindImage, Name: "os", Channel: "stable", Revision: 1, Compression: CompressionZstd}
	m.Chunker = chunkstore.DefaultParams()
	m.SetTorrents([]TorrentRef{ref, ref})
	b, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := m2.Torrents()
	if err != nil || len(refs) != 2 || refs[0] != ref {
		t.Fatalf("refs %v, %v", refs, err)
	}
	if err := refs[0].Check(info); err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), info...)
	bad[3] ^= 1
	if err := refs[0].Check(bad); !errors.Is(err, ErrVerification) {
		t.Fatalf("tampered info: %v", err)
	}
	m2.Ext[ExtTorrent] = append(m2.Ext[ExtTorrent], 0)
	if _, err := m2.Torrents(); err == nil {
		t.Fatal("trailing bytes accepted")
	}
	m.SetTorrents(nil)
	if refs, err := m.Torrents(); refs != nil || err != nil {
		t.Fatal("record not removed")
	}
}

// Side files live and die with their release.
func TestReleaseSideFiles(t *testing.T) {
	root := t.TempDir()
	rels := OpenReleases(root)
	m := &Manifest{Kind: KindImage, Name: "os", Channel: "stable", Revision: 3, Compression: CompressionZstd, Chunker: chunkstore.DefaultParams()}
	env, err := Sign(m, testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := rels.Put(env, m, Side{Kind: SideTorrentInfo, Data: []byte("info")}); err != nil {
		t.Fatal(err)
	}
	if revs, _ := rels.Revisions("os", "stable"); len(revs) != 1 || revs[0] != 3 {
		t.Fatalf("side files taken for revisions: %v", revs)
	}
	if b, err := rels.ReadSide("os", "stable", 3, SideTorrentInfo); err != nil || string(b) != "info" {
		t.Fatalf("side file: %q %v", b, err)
	}
	if err := rels.Remove(Release{Name: "os", Channel: "stable", Revision: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := rels.ReadSide("os", "stable", 3, SideTorrentInfo); err == nil {
		t.Fatal("side file outlived its release")
	}
}
