package chunkstore

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Chunk is a verified chunk: Plain hashes to ID and Stored is the canonical
// stored form (one zstd frame) that decodes to Plain. A Chunk can only be
// made by Encode or Verify, so holding one proves the check was done.
type Chunk struct {
	id     ID
	plain  []byte
	stored []byte
}

// ID returns the chunk's ID.
func (c Chunk) ID() ID { return c.id }

// Plain returns the uncompressed bytes. Callers must not modify them.
func (c Chunk) Plain() []byte { return c.plain }

// Stored returns the canonical stored bytes (a zstd frame). Callers must not
// modify them.
func (c Chunk) Stored() []byte { return c.stored }

// Size returns len(Plain()).
func (c Chunk) Size() int { return len(c.plain) }

// IsZero reports whether c holds no chunk.
func (c Chunk) IsZero() bool { return c.plain == nil && c.stored == nil }

var (
	encOnce sync.Once
	encs    [4]*zstd.Encoder
	encErr  error
	decOnce sync.Once
	dec     *zstd.Decoder
	decErr  error
)

// Level chooses the zstd effort for new chunks. Stored bytes of existing
// chunks are never recompressed, whatever the level.
type Level int

// Compression levels.
const (
	LevelDefault Level = iota // zstd level 3: 5-6 % smaller than LevelFastest
	LevelFastest              // zstd level 1
	LevelBetter               // zstd level ~7
	LevelBest                 // zstd level ~11: slow, for archival publishes
)

func encoder(l Level) (*zstd.Encoder, error) {
	encOnce.Do(func() {
		levels := [4]zstd.EncoderLevel{zstd.SpeedDefault, zstd.SpeedFastest, zstd.SpeedBetterCompression, zstd.SpeedBestCompression}
		for i, lv := range levels {
			// CRC off: every chunk is already checked by its BLAKE3 ID.
			// Concurrency: EncodeAll borrows one of this many internal
			// encoders, so it bounds how many chunks compress at once.
			encs[i], encErr = zstd.NewWriter(nil, zstd.WithEncoderLevel(lv), zstd.WithEncoderCRC(false),
				zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithZeroFrames(true))
			if encErr != nil {
				return
			}
		}
	})
	if encErr != nil {
		return nil, encErr
	}
	if l < 0 || int(l) >= len(encs) {
		l = LevelDefault
	}
	return encs[l], nil
}

func decoder() (*zstd.Decoder, error) {
	decOnce.Do(func() {
		dec, decErr = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(MaxChunkSize+1), zstd.IgnoreChecksum(true))
	})
	return dec, decErr
}

// Encode compresses plain into its canonical stored form and returns the
// verified chunk. plain is retained; do not modify it afterwards.
func Encode(plain []byte, l Level) (Chunk, error) {
	enc, err := encoder(l)
	if err != nil {
		return Chunk{}, err
	}
	stored := enc.EncodeAll(plain, make([]byte, 0, len(plain)/2+64))
	return Chunk{id: Sum(plain), plain: plain, stored: stored}, nil
}

// MaxStoredSize bounds the stored size of a chunk of size plain bytes: a
// zstd frame of raw blocks plus headers. Transports cut bodies off there.
func MaxStoredSize(size int) int {
	return size + size>>7 + 64
}

// DecodeSlack is klauspost/compress/zstd's compressedBlockOverAlloc: the
// spare capacity past a chunk's end its sequence decoder needs to copy in
// whole 16-byte blocks (VerifyAppend's dst should have it).
const DecodeSlack = 16

// Verify decodes stored, checks that it yields exactly size bytes hashing to
// id, and returns the verified chunk. size < 0 means "not known" (the
// decoder is still capped at MaxChunkSize). Errors are *IntegrityError.
func Verify(id ID, stored []byte, size int) (Chunk, error) {
	capHint := 0
	if size >= 0 && size <= MaxChunkSize {
		// DecodeSlack bytes past the end let klauspost's decoder use its
		// 16-byte block copies for the last block too, instead of the
		// bounds-exact ones: ~17 % faster decoding (chunks of a real image).
		capHint = size + DecodeSlack
	}
	plain, err := VerifyAppend(make([]byte, 0, capHint), id, stored, size)
	if err != nil {
		return Chunk{}, err
	}
	return Chunk{id: id, plain: plain, stored: stored}, nil
}

// VerifyInto is Verify that decodes into dst's spare capacity, as
// VerifyAppend: the chunk's plain bytes are then the size bytes past
// len(dst) in dst's array (unless that was too small and the decoder grew
// it). A fetch decodes straight into its receiver's write buffer this way.
func VerifyInto(dst []byte, id ID, stored []byte, size int) (Chunk, error) {
	out, err := VerifyAppend(dst, id, stored, size)
	if err != nil {
		return Chunk{}, err
	}
	return Chunk{id: id, plain: out[len(dst):len(out):len(out)], stored: stored}, nil
}

// VerifyAppend is Verify that decodes into dst's spare capacity (growing
// it only if that is too small) and returns dst extended by the chunk's
// plain bytes; on error dst's contents past len(dst) are undefined. The
// assembler decodes straight into its write buffer this way.
func VerifyAppend(dst []byte, id ID, stored []byte, size int) ([]byte, error) {
	out, err := DecodeAppend(dst, id, stored, size)
	if err != nil {
		return dst, err
	}
	if Sum(out[len(dst):]) != id {
		return dst, &IntegrityError{ID: id, Reason: "hash mismatch"}
	}
	return out, nil
}

// DecodeAppend is VerifyAppend without the hash check: the bytes decode
// and have the declared size, nothing more. Only for callers that check
// the result otherwise (the assembler's whole-image digest).
func DecodeAppend(dst []byte, id ID, stored []byte, size int) ([]byte, error) {
	if size > MaxChunkSize {
		return dst, &IntegrityError{ID: id, Reason: fmt.Sprintf("declared size %d exceeds %d", size, MaxChunkSize)}
	}
	if size >= 0 && len(stored) > MaxStoredSize(size) {
		return dst, &IntegrityError{ID: id, Reason: fmt.Sprintf("stored size %d too large for %d plain bytes", len(stored), size)}
	}
	d, err := decoder()
	if err != nil {
		return dst, err
	}
	n := len(dst)
	out, err := d.DecodeAll(stored, dst)
	if err != nil {
		return dst, &IntegrityError{ID: id, Reason: "decode: " + err.Error()}
	}
	if size >= 0 && len(out)-n != size {
		return dst, &IntegrityError{ID: id, Reason: fmt.Sprintf("size %d, want %d", len(out)-n, size)}
	}
	return out, nil
}

// VerifyPlain checks that plain hashes to id and returns the chunk without a
// stored form (use Encode to get one).
func VerifyPlain(id ID, plain []byte) (Chunk, error) {
	if Sum(plain) != id {
		return Chunk{}, &IntegrityError{ID: id, Reason: "hash mismatch"}
	}
	return Chunk{id: id, plain: plain}, nil
}

// IsZeros reports whether b is all zero bytes.
func IsZeros(b []byte) bool {
	for len(b) >= len(zeroBuf) {
		if !bytes.Equal(b[:len(zeroBuf)], zeroBuf[:]) {
			return false
		}
		b = b[len(zeroBuf):]
	}
	return bytes.Equal(b, zeroBuf[:len(b)])
}

var zeroBuf [64 << 10]byte

// Zeros returns a read-only slice of n ≤ 64 KiB zero bytes.
func Zeros(n int) []byte { return zeroBuf[:n] }
