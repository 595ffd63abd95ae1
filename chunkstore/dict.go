package chunkstore

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Frames compressed against a raw dictionary: delta packs (the old
// release's content as reference) and manifest deltas (the previous
// manifest). The dictionary is plain content placed before the frame's
// data, exactly what `zstd --patch-from=DICT` writes, so frames made by the
// zstd command decode here too.

// dictWindow is the window a frame needs to reach back over all of dict:
// the next power of two of at least n, and at least 1 MiB.
func dictWindow(n int) int {
	w := 1 << 20
	for w < n {
		w <<= 1
	}
	return w
}

// EncodeWithDict compresses plain as one zstd frame against dict (none if
// empty) at level l.
func EncodeWithDict(plain, dict []byte, l Level) ([]byte, error) {
	lv := [...]zstd.EncoderLevel{zstd.SpeedDefault, zstd.SpeedFastest, zstd.SpeedBetterCompression, zstd.SpeedBestCompression}[l]
	opts := []zstd.EOption{zstd.WithEncoderLevel(lv), zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(dictWindow(len(dict) + len(plain)))}
	if len(dict) > 0 {
		opts = append(opts, zstd.WithEncoderDictRaw(0, dict))
	}
	enc, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	return enc.EncodeAll(plain, make([]byte, 0, len(plain)/3)), nil
}

// DecodeWithDict decodes a frame made against dict, refusing more than max
// bytes of output.
func DecodeWithDict(frame, dict []byte, max int) ([]byte, error) {
	opts := []zstd.DOption{zstd.WithDecoderConcurrency(1), zstd.IgnoreChecksum(true),
		zstd.WithDecoderMaxWindow(uint64(dictWindow(len(dict) + max))), zstd.WithDecoderMaxMemory(uint64(max) + 1)}
	if len(dict) > 0 {
		opts = append(opts, zstd.WithDecoderDictRaw(0, dict))
	}
	dec, err := zstd.NewReader(nil, opts...)
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	// Room for what the frame says it holds, not for max: a manifest delta
	// is decoded with max = 64 MiB, and a buffer that size kept with the
	// manifest put a terminal's heap over its soft limit for the whole pull
	// (the GC then ran nonstop: 20 terminals took 50 s instead of 8).
	var h zstd.Header
	var dst []byte
	if h.Decode(frame) == nil && h.HasFCS && h.FrameContentSize <= uint64(max) {
		dst = make([]byte, 0, h.FrameContentSize)
	}
	out, err := dec.DecodeAll(frame, dst)
	if err == nil && len(out) > max {
		return nil, fmt.Errorf("zstd frame of %d bytes, more than %d", len(out), max)
	}
	return out, err
}
