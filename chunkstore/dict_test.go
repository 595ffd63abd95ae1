package chunkstore

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// A frame decodes to exactly its content, and the result holds no room
// for the decoder's limit: a manifest delta, decoded with a 64 MiB limit,
// is kept with the manifest for a whole pull.
func TestDecodeWithDictSize(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	dict := make([]byte, 36000)
	for i := range dict {
		dict[i] = byte(r.IntN(256))
	}
	plain := append(bytes.Clone(dict[1000:21000]), []byte("and what changed")...)
	frame, err := EncodeWithDict(plain, dict, LevelBetter)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeWithDict(frame, dict, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, plain) {
		t.Fatal("round trip differs")
	}
	if cap(got) > 2*len(plain)+64<<10 {
		t.Fatalf("a %d-byte result holds %d bytes of room", len(got), cap(got))
	}
	if _, err := DecodeWithDict(frame, dict, len(plain)-1); err == nil {
		t.Fatal("a frame larger than max decoded")
	}
	other := bytes.Clone(dict)
	other[5000] ^= 1
	if b, err := DecodeWithDict(frame, other, 64<<20); err == nil && bytes.Equal(b, plain) {
		t.Fatal("decoded against another dictionary to the same content")
	}
}
