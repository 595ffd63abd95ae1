package manifest

import (
	"bytes"
	"testing"
	"time"
)

// FuzzDecode: Decode never panics, and whatever it accepts re-encodes to
// the same bytes (the encoding is canonical).
func FuzzDecode(f *testing.F) {
	p, _ := Encode(sample())
	f.Add(p)
	m := sample()
	m.Hints = nil
	m.Expires = time.Time{}
	p2, _ := Encode(m)
	f.Add(p2)
	f.Add([]byte{1})
	if bm, _, err := sampleBundleManifest(); err == nil { // the file table's decoder too
		p3, _ := Encode(bm)
		f.Add(p3)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		again, err := Encode(m)
		if err != nil {
			t.Fatalf("accepted payload does not re-encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("non-canonical payload accepted")
		}
	})
}

// FuzzVerify: Verify never panics and never accepts bytes that were not
// signed by the trusted key.
func FuzzVerify(f *testing.F) {
	k := testKey(1)
	env, _ := Sign(sample(), k)
	f.Add(env)
	f.Add(env[:20])
	trust := trustOf(k)
	now := func() time.Time { return created }
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Verify(b, Policy{Trust: trust, Now: now})
		if err != nil {
			return
		}
		// Accepted: the payload must be exactly the signed one.
		p, _ := Encode(m)
		orig, _ := Encode(sample())
		if !bytes.Equal(p, orig) {
			t.Fatalf("verified a payload that was never signed")
		}
	})
}
