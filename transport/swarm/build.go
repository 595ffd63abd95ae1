package swarm

import (
	"bytes"
	"crypto/sha1"
	"fmt"
	"net/url"

	"github.com/anacrolix/torrent/metainfo"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
)

// Built is a release torrent made by Build.
type Built struct {
	Ref    manifest.TorrentRef
	Info   []byte // bencoded info dictionary
	Layout *Layout
}

// Build lays out and hashes the torrent of release m, whose signed
// envelope without torrent record is env (the torrent's first file).
// prev are earlier revisions of the same name and channel, newest first
// (they only order the files). storedSize and read give the chunks' stored
// bytes (a publisher reads what it has just written and checked).
func Build(m *manifest.Manifest, env []byte, prev []*manifest.Manifest, storedSize func(chunkstore.ID) (int64, error), read func(chunkstore.ID) ([]byte, error), pieceLength int64) (*Built, error) {
	if pieceLength <= 0 {
		pieceLength = DefaultPieceLength
	}
	order := Order(m, prev)
	entries := make([]Entry, len(order))
	for k, i := range order {
		id := m.Chunks[i].ID
		n, err := storedSize(id)
		if err != nil {
			return nil, fmt.Errorf("torrent of %s@%d: chunk %s: %w", m.Name, m.Revision, id.Short(), err)
		}
		entries[k] = Entry{ID: id, Stored: n}
	}
	l := NewLayout(manifest.TorrentName(m.Name, m.Channel, m.Revision), int64(len(env)), entries, pieceLength)
	_, info, err := l.Info(func(f int) ([]byte, error) {
		if f == 0 {
			return env, nil
		}
		return read(l.Chunks[f-1].ID)
	})
	if err != nil {
		return nil, fmt.Errorf("torrent of %s@%d: %w", m.Name, m.Revision, err)
	}
	if len(info) > manifest.MaxInfoSize {
		return nil, fmt.Errorf("torrent of %s@%d: info of %d bytes exceeds %d", m.Name, m.Revision, len(info), manifest.MaxInfoSize)
	}
	ref := manifest.TorrentRef{InfoHash: sha1.Sum(info), InfoSize: len(info), InfoDigest: chunkstore.Sum(info)}
	return &Built{Ref: ref, Info: info, Layout: l}, nil
}

// Magnet returns a v1 magnet link: xt, dn, tr for each tracker, ws for each
// webseed base URL.
func Magnet(ih [20]byte, name string, trackers, webseeds []string) string {
	m := metainfo.Magnet{InfoHash: ih, DisplayName: name, Trackers: trackers, Params: url.Values{}}
	for _, w := range webseeds {
		m.Params.Add("ws", w)
	}
	return m.String()
}

// ParseTorrentFile returns the info bytes (exactly as encoded) and the
// trackers of a .torrent.
func ParseTorrentFile(b []byte) (info []byte, trackers []string, err error) {
	mi, err := metainfo.Load(bytes.NewReader(b))
	if err != nil {
		return nil, nil, fmt.Errorf(".torrent: %w", err)
	}
	for _, tier := range mi.UpvertedAnnounceList() {
		trackers = append(trackers, tier...)
	}
	return mi.InfoBytes, trackers, nil
}
