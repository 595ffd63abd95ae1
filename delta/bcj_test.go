package delta

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// The x86 filter is undone exactly, whatever the bytes: random ones, and
// ones dense with E8/E9 and 0x00/0xFF, where conversions crowd each other.
func TestBCJRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte{0xe8, 0xe9, 0x00, 0xff, 0x12}
	converted := 0
	for n := 0; n < 2000; n++ {
		b := make([]byte, r.IntN(300))
		for i := range b {
			if n%2 == 0 {
				b[i] = byte(r.Uint32())
			} else {
				b[i] = alphabet[r.IntN(len(alphabet))]
			}
		}
		enc := bytes.Clone(b)
		bcjX86(enc, true)
		if !bytes.Equal(enc, b) {
			converted++
		}
		dec := bytes.Clone(enc)
		bcjX86(dec, false)
		if !bytes.Equal(dec, b) {
			t.Fatalf("round trip of % x:\nencoded % x\ndecoded % x", b, enc, dec)
		}
	}
	if converted < 500 {
		t.Fatalf("only %d of 2000 buffers changed: the filter converts nothing", converted)
	}
	// A call's displacement becomes its target: the same target from two
	// places gives the same bytes.
	code := []byte{0xe8, 0xfb, 0xff, 0xff, 0xff, 0x90, 0x90, 0x90, 0x90, 0x90, 0xe8, 0xf1, 0xff, 0xff, 0xff}
	bcjX86(code, true)
	if !bytes.Equal(code[1:5], code[11:15]) {
		t.Fatalf("calls to one target filtered to % x and % x", code[1:5], code[11:15])
	}
}
