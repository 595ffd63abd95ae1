package manifest

import (
	"errors"
	"testing"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
)

func TestPackRecord(t *testing.T) {
	k := testKey(1)
	from := sample()
	to := sample()
	to.Revision = 43
	fromEnv, _ := Sign(from, k)
	toEnv, _ := Sign(to, k)
	fid, _ := ID(fromEnv)
	tid, _ := ID(toEnv)
	rec := &PackRecord{Name: "terminal-os", Channel: "stable", From: 42, To: 43, FromID: fid, ToID: tid,
		FromDigest: from.Digest, Pack: chunkstore.Sum([]byte("pack")), Size: 12345, Chunks: 7, PlainBytes: 99999,
		ChunksDigest: ChunkListDigest(to.Chunks), Created: created,
		Torrent: &TorrentRef{InfoHash: [20]byte{1, 2, 3}, InfoSize: 345, InfoDigest: chunkstore.Sum([]byte("info"))}}
	// roundTrip signs r, verifies it, and returns it decoded, its envelope
	// and the version it was written as.
	roundTrip := func(r *PackRecord) (*PackRecord, []byte, byte) {
		t.Helper()
		env, err := SignPackRecord(r, k)
		if err != nil {
			t.Fatal(err)
		}
		got, err := VerifyPackRecord(env, trustOf(k), fromEnv, toEnv)
		if err != nil {
			t.Fatal(err)
		}
		payload, _, _ := splitAs(packMagic, env)
		return got, env, payload[0]
	}
	got, env, v1 := roundTrip(rec)
	if *got.Torrent != *rec.Torrent {
		t.Fatalf("torrent ref: %+v, want %+v", got.Torrent, rec.Torrent)
	}
	got.Torrent = rec.Torrent
	if *got != *rec {
		t.Fatalf("round trip:\n%+v\n%+v", got, rec)
	}
	// Version 1 is what a record without gzip rebuilds is written as
	// (terminals before version 2 read it); with them, version 2 keeps
	// the rebuild size and the lean pack.
	if v1 != 1 {
		t.Errorf("a record without Regzip and Lean is not version 1")
	}
	rec2 := *rec
	rec2.Regzip, rec2.Lean, rec2.Format = 31_000_000, &PackObject{Pack: chunkstore.Sum([]byte("lean")), Size: 23456}, 3
	got2, _, v2 := roundTrip(&rec2)
	if got2.Regzip != rec2.Regzip || got2.Lean == nil || *got2.Lean != *rec2.Lean || got2.Format != 3 {
		t.Fatalf("version 2 round trip: regzip %d, lean %+v", got2.Regzip, got2.Lean)
	}
	if objs := got2.Objects(); len(objs) != 2 || objs[0].Pack != rec.Pack || objs[1] != *rec2.Lean {
		t.Errorf("objects %+v", objs)
	}
	if v2 != 2 || got2.LeanTorrent != nil {
		t.Errorf("a lean twin without a torrent is not version 2")
	}
	// A lean twin with a torrent of its own: version 3.
	rec4 := rec2
	rec4.LeanTorrent = &TorrentRef{InfoHash: [20]byte{4, 5, 6}, InfoSize: 321, InfoDigest: chunkstore.Sum([]byte("lean info"))}
	got4, _, v4 := roundTrip(&rec4)
	if v4 != 3 {
		t.Errorf("a lean twin with a torrent is not version 3")
	}
	if got4.LeanTorrent == nil || *got4.LeanTorrent != *rec4.LeanTorrent || *got4.Lean != *rec4.Lean || *got4.Torrent != *rec.Torrent {
		t.Fatalf("version 3 round trip: lean %+v, its torrent %+v", got4.Lean, got4.LeanTorrent)
	}
	// A format 3 pack alone also makes a version 2 record: terminals that
	// cannot read the pack must refuse the record, not download the pack.
	rec3 := *rec
	rec3.Format = 3
	if _, _, v3 := roundTrip(&rec3); v3 != 2 {
		t.Errorf("a record of a format 3 pack is not version 2")
	}
	// Another key, other releases, a manifest signature passed off as a
	// pack record, a flipped byte: all refused.
	if _, err := VerifyPackRecord(env, trustOf(testKey(2)), fromEnv, toEnv); !errors.Is(err, ErrVerification) {
		t.Errorf("untrusted key: %v", err)
	}
	if _, err := VerifyPackRecord(env, trustOf(k), toEnv, toEnv); !errors.Is(err, ErrVerification) {
		t.Errorf("other releases: %v", err)
	}
	if _, err := VerifyPackRecord(fromEnv, trustOf(k), fromEnv, toEnv); !errors.Is(err, ErrVerification) {
		t.Errorf("a manifest as a pack record: %v", err)
	}
	bad := append([]byte{}, env...)
	bad[20] ^= 1
	if _, err := VerifyPackRecord(bad, trustOf(k), fromEnv, toEnv); !errors.Is(err, ErrVerification) {
		t.Errorf("flipped byte: %v", err)
	}
	if _, err := SignPackRecord(&PackRecord{Name: "x", Channel: "y", From: 3, To: 3, Created: time.Now()}, k); err == nil {
		t.Error("signed a pack from a release to itself")
	}
}
