package manifest

import (
	"crypto/sha1"
	"encoding/binary"
	"fmt"

	"github.com/imgctl/imgctl/chunkstore"
)

// ExtTorrent carries the release's torrents (optional: a decoder that does
// not know it still pulls over HTTP).
const ExtTorrent uint64 = 4

// TorrentManifestFile is the name of a release torrent's first file: the
// manifest signed before its torrent record was added.
const TorrentManifestFile = "manifest.imgm"

// TorrentName is the info name of a release torrent; BEP 19 webseed URLs
// are <base>/<TorrentName>/<file>.
func TorrentName(name, channel string, rev uint64) string {
	return fmt.Sprintf("%s-%s-%d", name, channel, rev)
}

// TorrentRef names one BitTorrent v1 torrent of a release. The info bytes
// are served beside the manifest; a terminal checks them against InfoHash
// (SHA-1, the swarm's own name for them) and InfoDigest (BLAKE3) before
// use, so the signature covers the torrent's metadata too.
type TorrentRef struct {
	InfoHash   [20]byte
	InfoSize   int
	InfoDigest chunkstore.ID
}

const (
	torrentExtVersion = 1
	maxTorrents       = 64
	// MaxInfoSize bounds a torrent's info bytes (anacrolix refuses
	// metadata larger than 16 MiB from peers; info bytes served beside
	// the manifest are not bound by that, but a terminal still caps them).
	MaxInfoSize = 64 << 20
)

// SetTorrents records refs in m (nil removes the record).
func (m *Manifest) SetTorrents(refs []TorrentRef) {
	if len(refs) == 0 {
		delete(m.Ext, ExtTorrent)
		return
	}
	b := []byte{torrentExtVersion}
	b = binary.AppendUvarint(b, uint64(len(refs)))
	for _, r := range refs {
		b = append(b, r.InfoHash[:]...)
		b = binary.AppendUvarint(b, uint64(r.InfoSize))
		b = append(b, r.InfoDigest[:]...)
	}
	if m.Ext == nil {
		m.Ext = map[uint64][]byte{}
	}
	m.Ext[ExtTorrent] = b
}

// Torrents returns the torrents recorded in m (none: nil).
func (m *Manifest) Torrents() ([]TorrentRef, error) {
	b, ok := m.Ext[ExtTorrent]
	if !ok {
		return nil, nil
	}
	bad := func(what string) error { return malformed("torrent record: %s", what) }
	if len(b) < 1 || b[0] != torrentExtVersion {
		return nil, bad("unknown version")
	}
	b = b[1:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > maxTorrents {
		return nil, bad("count")
	}
	b = b[k:]
	refs := make([]TorrentRef, 0, n)
	for i := uint64(0); i < n; i++ {
		var r TorrentRef
		if len(b) < 20 {
			return nil, bad("short")
		}
		copy(r.InfoHash[:], b)
		b = b[20:]
		size, k := binary.Uvarint(b)
		if k <= 0 || size == 0 || size > MaxInfoSize {
			return nil, bad("info size")
		}
		r.InfoSize = int(size)
		b = b[k:]
		if len(b) < len(r.InfoDigest) {
			return nil, bad("short")
		}
		copy(r.InfoDigest[:], b)
		b = b[len(r.InfoDigest):]
		refs = append(refs, r)
	}
	if len(b) != 0 {
		return nil, bad("trailing bytes")
	}
	return refs, nil
}

// Check reports whether info are the bytes r names.
func (r TorrentRef) Check(info []byte) error {
	if len(info) != r.InfoSize || chunkstore.Sum(info) != r.InfoDigest || sha1.Sum(info) != r.InfoHash {
		return fmt.Errorf("%w: torrent info does not match the signed manifest", ErrVerification)
	}
	return nil
}
