package swarm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
)

// A release torrent's info bytes are mostly its file list: every chunk's
// ID in hex (64 bytes) and stored length, ~95 bytes a chunk, 1.1 MB for
// the 1 GiB bench image. A terminal that has verified the manifest knows
// the IDs already, so the compact form carries only what it lacks: each
// file's chunk (an index into the manifest's chunks; the torrent orders
// them newest first) and stored length, and the piece hashes: ~110 KB
// for that image. ExpandTorrent rebuilds the info bytes exactly; the
// caller checks them against the manifest's torrent record (infohash,
// size, BLAKE3) as it would info bytes fetched whole.
//
// Format (version 1):
//
//	"IMGTORC\x01"
//	uvarint trackers; trackers × (uvarint length, URL)
//	uvarint name length, name
//	uvarint piece length
//	uvarint manifest file length
//	uvarint chunk files; per file: uvarint index into the manifest's chunks, uvarint stored length
//	20 × pieces bytes of SHA-1 piece hashes (the piece count follows from the lengths)
var compactMagic = []byte("IMGTORC\x01")

// CompactTorrent writes the compact form of a release torrent's info
// bytes, for terminals holding m, with the server's trackers.
func CompactTorrent(infoBytes []byte, m *manifest.Manifest, trackers []string) ([]byte, error) {
	info, mi, err := parseInfo(infoBytes)
	if err != nil {
		return nil, err
	}
	idx := m.ChunkIndex()
	b := append([]byte(nil), compactMagic...)
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, uint64(len(trackers)))
	for _, t := range trackers {
		str(t)
	}
	str(mi.Name)
	b = binary.AppendUvarint(b, uint64(mi.PieceLength))
	b = binary.AppendUvarint(b, uint64(mi.offs[1]))
	b = binary.AppendUvarint(b, uint64(len(mi.Chunks)))
	for _, c := range mi.Chunks {
		i, ok := idx[c.ID]
		if !ok {
			return nil, fmt.Errorf("torrent %q carries chunk %s, which the manifest lacks", mi.Name, c.ID.Short())
		}
		b = binary.AppendUvarint(b, uint64(i))
		b = binary.AppendUvarint(b, uint64(c.Stored))
	}
	return append(b, info.Pieces...), nil
}

// ExpandTorrent rebuilds the info bytes and reads the trackers of a
// compact torrent for manifest m. The result is unverified: compare it
// with m's torrent record.
func ExpandTorrent(compact []byte, m *manifest.Manifest) (info []byte, trackers []string, err error) {
	r := bytes.NewReader(compact)
	bad := func(what string, err error) error { return fmt.Errorf("compact torrent: %s: %v", what, err) }
	magic := make([]byte, len(compactMagic))
	if _, err := io.ReadFull(r, magic); err != nil || !bytes.Equal(magic, compactMagic) {
		return nil, nil, errors.New("compact torrent: not version 1")
	}
	uv := func(max uint64, what string) (uint64, error) {
		v, err := binary.ReadUvarint(r)
		if err == nil && v > max {
			err = fmt.Errorf("%d exceeds %d", v, max)
		}
		if err != nil {
			return 0, bad(what, err)
		}
		return v, nil
	}
	str := func(what string) (string, error) {
		n, err := uv(4096, what)
		if err != nil {
			return "", err
		}
		s := make([]byte, n)
		if _, err := io.ReadFull(r, s); err != nil {
			return "", bad(what, err)
		}
		return string(s), nil
	}
	nt, err := uv(64, "trackers")
	if err != nil {
		return nil, nil, err
	}
	for range nt {
		t, err := str("tracker")
		if err != nil {
			return nil, nil, err
		}
		trackers = append(trackers, t)
	}
	name, err := str("name")
	if err != nil {
		return nil, nil, err
	}
	pl, err := uv(64<<20, "piece length")
	if err != nil {
		return nil, nil, err
	}
	ml, err := uv(manifest.MaxEnvelope, "manifest length")
	if err != nil {
		return nil, nil, err
	}
	nf, err := uv(uint64(len(m.Chunks)), "chunk files")
	if err != nil {
		return nil, nil, err
	}
	maxStored := uint64(chunkstore.MaxStoredSize(chunkstore.MaxChunkSize))
	chunks := make([]Entry, nf)
	for i := range chunks {
		k, err := uv(uint64(len(m.Chunks)-1), "chunk index")
		if err != nil {
			return nil, nil, err
		}
		n, err := uv(maxStored, "stored length")
		if err != nil {
			return nil, nil, err
		}
		chunks[i] = Entry{ID: m.Chunks[k].ID, Stored: int64(n)}
	}
	if pl < 16<<10 || ml == 0 {
		return nil, nil, fmt.Errorf("compact torrent: piece length %d or manifest length %d", pl, ml)
	}
	l := NewLayout(name, int64(ml), chunks, int64(pl))
	// What is left must be the piece hashes, exactly: checked before
	// anything is allocated for them.
	if int64(r.Len()) != 20*int64(l.NumPieces()) {
		return nil, nil, fmt.Errorf("compact torrent: %d bytes of piece hashes for %d pieces", r.Len(), l.NumPieces())
	}
	pieces := make([]byte, r.Len())
	if _, err := io.ReadFull(r, pieces); err != nil {
		return nil, nil, bad("piece hashes", err)
	}
	_, info, err = l.info(pieces)
	return info, trackers, err
}
