package manifest

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func testKey(seed byte) PrivateKey {
	s := bytes.Repeat([]byte{seed}, ed25519.SeedSize)
	priv := ed25519.NewKeyFromSeed(s)
	return PrivateKey{Key: priv, ID: KeyIDOf(priv.Public().(ed25519.PublicKey))}
}

func trustOf(keys ...PrivateKey) *Trust {
	t := &Trust{Keys: map[KeyID]PublicKey{}}
	for _, k := range keys {
		t.Keys[k.ID] = k.Public()
	}
	return t
}

var created = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// sample builds a manifest with every run kind and a hint.
func sample() *Manifest {
	b := NewBuilder()
	id := func(s string) chunkstore.ID { return chunkstore.Sum([]byte(s)) }
	b.AddChunk(id("a"), 8192)
	b.AddChunk(id("b"), 30000)
	b.AddZero(65536)
	b.AddChunk(id("c"), 131072)
	b.AddChunk(id("c"), 131072)
	b.AddChunk(id("c"), 131072)
	b.AddChunk(id("a"), 8192)
	b.AddZero(4096 * 100)
	b.AddChunk(id("d"), 777)
	m := &Manifest{Kind: KindImage, Name: "terminal-os", Channel: "stable", Revision: 42, Created: created,
		Expires: created.Add(30 * 24 * time.Hour), Chunker: chunkstore.DefaultParams(), Compression: CompressionZstd,
		Size: b.Size(), Digest: id("whole"), Hints: map[string]string{"btih": "00ff"}}
	m.Chunks, m.Runs = b.Result()
	return m
}

func TestBuilderRuns(t *testing.T) {
	m := sample()
	kinds := ""
	for _, r := range m.Runs {
		kinds += string("NRZ"[r.Kind])
	}
	if kinds != "NZNRRZN" {
		t.Fatalf("runs %q, want NZNRRZN", kinds)
	}
	if len(m.Chunks) != 4 {
		t.Fatalf("%d distinct chunks, want 4", len(m.Chunks))
	}
	var n, off int64
	m.Walk(func(o, size int64, c int) bool {
		if o != off {
			t.Fatalf("walk offset %d, want %d", o, off)
		}
		off += size
		n++
		return true
	})
	if n != 9 || off != m.Size {
		t.Fatalf("walk: %d extents to %d, want 9 to %d", n, off, m.Size)
	}
	occ := m.Occurrences()
	if len(occ[2]) != 2 || occ[2][1].Count != 2 || len(occ[0]) != 2 {
		t.Fatalf("occurrences: %+v", occ)
	}
}

// TestGoldenEnvelope pins the exact bytes of a signed manifest. Changing
// them breaks every deployed verifier: bump FormatVersion instead.
func TestGoldenEnvelope(t *testing.T) {
	env, err := Sign(sample(), testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "sample.imgm.hex")
	got := hex.EncodeToString(env)
	if *update {
		os.MkdirAll("testdata", 0o755)
		os.WriteFile(path, []byte(got+"\n"), 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update once)", err)
	}
	if got != strings.TrimSpace(string(want)) {
		t.Fatalf("envelope bytes changed:\n got  %s\n want %s", got, want)
	}
	m, err := Verify(env, Policy{Trust: trustOf(testKey(1)), Now: func() time.Time { return created }})
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Encode(m)
	orig, _ := Encode(sample())
	if !bytes.Equal(again, orig) {
		t.Fatal("decode/encode round trip changed the payload")
	}
}

func TestVerifyRefusals(t *testing.T) {
	k1, k2, k3 := testKey(1), testKey(2), testKey(3)
	env, _ := Sign(sample(), k1)
	now := func() time.Time { return created.Add(time.Hour) }
	ok := Policy{Trust: trustOf(k1), Now: now, Name: "terminal-os", Channel: "stable", MinRevision: 42}
	if _, err := Verify(env, ok); err != nil {
		t.Fatalf("valid manifest refused: %v", err)
	}
	tampered := append([]byte{}, env...)
	tampered[40] ^= 1
	twoSigs, _ := Sign(sample(), k1, k2)
	noExpiry := sample()
	noExpiry.Expires = time.Time{}
	noExpEnv, _ := Sign(noExpiry, k1)

	cases := []struct {
		name string
		env  []byte
		p    func(p Policy) Policy
		want error
	}{
		{"tampered payload", tampered, nil, ErrBadSignature},
		{"unknown key", env, func(p Policy) Policy { p.Trust = trustOf(k2); return p }, ErrUnknownKey},
		{"expired", env, func(p Policy) Policy {
			p.Now = func() time.Time { return created.Add(31 * 24 * time.Hour) }
			return p
		}, ErrExpired},
		{"rollback", env, func(p Policy) Policy { p.MinRevision = 43; return p }, ErrRollback},
		{"wrong name", env, func(p Policy) Policy { p.Name = "other"; return p }, ErrWrongTarget},
		{"wrong channel", env, func(p Policy) Policy { p.Channel = "beta"; return p }, ErrWrongTarget},
		{"wrong kind", env, func(p Policy) Policy { p.Kind = KindBundle; return p }, ErrWrongTarget},
		{"threshold not met", env, func(p Policy) Policy {
			p.Trust = trustOf(k1, k2)
			p.Trust.Threshold = 2
			return p
		}, ErrUnknownKey},
		{"truncated", env[:len(env)-1], nil, ErrMalformed},
		{"not a manifest", []byte("hello world, this is not it"), nil, ErrMalformed},
		{"future envelope", append(append([]byte{}, env[:7]...), append([]byte{2}, env[8:]...)...), nil, ErrUnknownVersion},
		{"too large", make([]byte, MaxEnvelope+1), nil, ErrTooLarge},
	}
	for _, tc := range cases {
		p := ok
		if tc.p != nil {
			p = tc.p(p)
		}
		_, err := Verify(tc.env, p)
		if !errors.Is(err, tc.want) || !errors.Is(err, ErrVerification) {
			t.Errorf("%s: %v, want %v (and ErrVerification)", tc.name, err, tc.want)
		}
	}
	// Threshold met by two signatures; an untrusted extra signature is ignored.
	p := ok
	p.Trust = trustOf(k1, k2, k3)
	p.Trust.Threshold = 2
	if _, err := Verify(twoSigs, p); err != nil {
		t.Fatalf("two of three: %v", err)
	}
	p.Trust = trustOf(k2)
	if _, err := Verify(twoSigs, p); err != nil {
		t.Fatalf("one trusted of two signers: %v", err)
	}
	// No expiry: valid forever.
	p = ok
	p.Now = func() time.Time { return created.Add(100 * 365 * 24 * time.Hour) }
	if _, err := Verify(noExpEnv, p); err != nil {
		t.Fatalf("non-expiring manifest refused: %v", err)
	}
}

func TestDecodeRefusesNonCanonical(t *testing.T) {
	payload, _ := Encode(sample())
	// A trailing byte.
	if _, err := Decode(append(append([]byte{}, payload...), 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte: %v", err)
	}
	// A non-minimal varint for the format version: 0x81 0x00 is 1.
	bad := append([]byte{0x81, 0x00}, payload[1:]...)
	if _, err := Decode(bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("non-minimal varint: %v", err)
	}
	// Unknown format version.
	bad = append([]byte{2}, payload[1:]...)
	if _, err := Decode(bad); !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("version 2: %v", err)
	}
	// Two adjacent zero runs are not canonical.
	m := sample()
	m.Runs = append(m.Runs, Run{Kind: RunZero, Offset: m.Size, Size: 10}, Run{Kind: RunZero, Offset: m.Size + 10, Size: 10})
	m.Size += 20
	if _, err := Encode(m); err == nil {
		t.Fatal("adjacent zero runs encoded")
	}
	// Unknown critical extension.
	m = sample()
	m.Ext = map[uint64][]byte{101: {1}}
	if _, err := Encode(m); err == nil {
		t.Fatal("unknown critical extension encoded")
	}
	// Unknown optional extension survives a round trip.
	m = sample()
	m.Ext = map[uint64][]byte{100: {1, 2, 3}}
	b, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Decode(b)
	if err != nil || !bytes.Equal(d.Ext[100], []byte{1, 2, 3}) {
		t.Fatalf("optional extension lost: %v", err)
	}
}

func TestKeyFilesRoundTrip(t *testing.T) {
	k := testKey(9)
	kt, _ := k.MarshalText()
	k2, err := ParsePrivateKey(kt)
	if err != nil || !k2.Key.Equal(k.Key) || k2.ID != k.ID {
		t.Fatalf("private key round trip: %v", err)
	}
	pt, _ := k.Public().MarshalText()
	var tr Trust
	if err := tr.Parse(append(pt, []byte("threshold 1\n")...)); err != nil {
		t.Fatal(err)
	}
	if _, ok := tr.Keys[k.ID]; !ok || tr.Threshold != 1 {
		t.Fatalf("trust parse: %+v", tr)
	}
}

func TestReleases(t *testing.T) {
	dir := t.TempDir()
	r := OpenReleases(dir)
	for rev := uint64(1); rev <= 3; rev++ {
		m := sample()
		m.Revision = rev
		env, _ := Sign(m, testKey(1))
		if err := r.Put(env, m); err != nil {
			t.Fatal(err)
		}
		if err := r.Put(env, m); err == nil {
			t.Fatal("release replaced")
		}
	}
	env, rev, err := r.Read("terminal-os", "stable", 0)
	if err != nil || rev != 3 {
		t.Fatalf("latest: %d %v", rev, err)
	}
	if m, _ := Open(env); m.Revision != 3 {
		t.Fatal("latest is not revision 3")
	}
	if _, _, err := r.Read("terminal-os", "stable", 9); !errors.Is(err, ErrNoRelease) {
		t.Fatalf("missing: %v", err)
	}
	if _, _, err := r.Read("../etc", "stable", 0); !errors.Is(err, ErrNoRelease) {
		t.Fatalf("path traversal: %v", err)
	}
	l, _ := r.List()
	if len(l) != 3 {
		t.Fatalf("list: %d", len(l))
	}
}
