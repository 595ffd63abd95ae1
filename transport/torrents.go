package transport

import (
	"bytes"
	"errors"
	"io/fs"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/imgctl/imgctl/manifest"
)

// Release torrents are made at publish (transport/swarm) and kept as side
// files of the release: the info bytes and the manifest the torrent
// carries as its first file. The server hands them out; it needs no
// BitTorrent code for that.

// releaseSide reads a side file of the release named in the request path.
func (s *Server) releaseSide(w http.ResponseWriter, r *http.Request, kind string) ([]byte, bool) {
	name, channel, rev, ok := s.releaseRev(w, r)
	if !ok {
		return nil, false
	}
	return s.readSide(w, name, channel, rev, kind)
}

// releaseRev resolves the release named in the request path ("latest", and
// on a branch cache the upstream's, mirrored); rev 0 means none is known.
func (s *Server) releaseRev(w http.ResponseWriter, r *http.Request) (name, channel string, rev uint64, ok bool) {
	name, channel = r.PathValue("name"), r.PathValue("channel")
	if v := r.PathValue("rev"); v != "latest" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			http.Error(w, "bad revision", http.StatusBadRequest)
			return "", "", 0, false
		}
		rev = n
	} else if _, got, err := s.rel.Read(name, channel, 0); err == nil {
		rev = got
	}
	if s.up != nil {
		if got, err := s.up.Release(r.Context(), name, channel, rev); err == nil {
			rev = got
		}
	}
	return name, channel, rev, true
}

// readSide reads a side file of a release, answering 404 or 500 itself.
func (s *Server) readSide(w http.ResponseWriter, name, channel string, rev uint64, kind string) ([]byte, bool) {
	b, err := s.rel.ReadSide(name, channel, rev, kind)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, manifest.ErrNoRelease) || rev == 0 {
		http.Error(w, "no torrent for this release (published with --no-torrent?)", http.StatusNotFound)
		return nil, false
	}
	if err != nil {
		s.log.Error("read torrent", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return nil, false
	}
	return b, true
}

// handleTorrentCompact serves a release torrent in compact form (trackers,
// and info without the chunk IDs the terminal's manifest holds): a tenth
// of the info bytes. Terminals check what they rebuild against the
// manifest and fall back to the .torrent. The info side file (1.1 MB for
// the 1 GiB image) is read only to build an entry of the cache.
func (s *Server) handleTorrentCompact(w http.ResponseWriter, r *http.Request) {
	if s.compact == nil {
		http.Error(w, "compact torrents not served here", http.StatusNotFound)
		return
	}
	name, channel, rev, ok := s.releaseRev(w, r)
	if !ok {
		return
	}
	var failed bool // readSide answered the request
	b, err := s.compact.get(name+"/"+channel+"/"+strconv.FormatUint(rev, 10), func() ([]byte, error) {
		info, ok := s.readSide(w, name, channel, rev, manifest.SideTorrentInfo)
		if !ok {
			failed = true
			return nil, errors.New("no torrent info")
		}
		env, _, err := s.rel.Read(name, channel, rev)
		if err != nil {
			return nil, err
		}
		return s.compact.build(info, env, s.announce)
	})
	if failed {
		return
	}
	if err != nil {
		s.log.Warn("compact torrent", "name", name, "channel", channel, "rev", rev, "err", err)
		http.Error(w, "no compact torrent for this release", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/x-imgctl-torrent-compact")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
}

// compactCache keeps the compact torrents of the last few releases asked
// for: twenty terminals asking at once cost one conversion.
type compactCache struct {
	build func(info, env []byte, trackers []string) ([]byte, error)
	mu    sync.Mutex
	keys  []string
	vals  map[string][]byte
}

func (c *compactCache) get(key string, build func() ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.vals[key]; ok {
		return b, nil
	}
	b, err := build()
	if err != nil {
		return nil, err
	}
	if c.vals == nil {
		c.vals = map[string][]byte{}
	}
	if len(c.keys) == 8 {
		delete(c.vals, c.keys[0])
		c.keys = c.keys[1:]
	}
	c.keys = append(c.keys, key)
	c.vals[key] = b
	return b, nil
}

func (s *Server) handleTorrentInfo(w http.ResponseWriter, r *http.Request) {
	info, ok := s.releaseSide(w, r, manifest.SideTorrentInfo)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/x-bittorrent-info")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(info))
}

// handleTorrent serves a .torrent: the info bytes as published, the
// server's trackers, and the server itself as a webseed (BEP 19), so that
// any BitTorrent client can fetch the release.
func (s *Server) handleTorrent(w http.ResponseWriter, r *http.Request) {
	info, ok := s.releaseSide(w, r, manifest.SideTorrentInfo)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/x-bittorrent")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(MetaInfo(info, s.announce, []string{"http://" + r.Host + "/ws/"})))
}

// MetaInfo bencodes a .torrent around info bytes (kept byte for byte, so
// the infohash is the published one). Keys are in bencode's sorted order.
func MetaInfo(info []byte, announce, webseeds []string) []byte {
	var b bytes.Buffer
	str := func(s string) { b.WriteString(strconv.Itoa(len(s)) + ":" + s) }
	b.WriteString("d")
	if len(announce) > 0 {
		str("announce")
		str(announce[0])
		str("announce-list")
		b.WriteString("ll")
		for _, a := range announce {
			str(a)
		}
		b.WriteString("ee")
	}
	str("info")
	b.Write(info)
	if len(webseeds) > 0 {
		str("url-list")
		b.WriteString("l")
		for _, u := range webseeds {
			str(u)
		}
		b.WriteString("e")
	}
	b.WriteString("e")
	return b.Bytes()
}

// handleWebSeed serves a release torrent's files by the URL any BitTorrent
// client makes of a webseed base: /ws/<torrent name>/<file>. Chunk files
// are the chunk route under another name; the manifest file is the
// envelope the torrent was made with.
func (s *Server) handleWebSeed(w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")
	if file != manifest.TorrentManifestFile {
		r.SetPathValue("id", file)
		s.handleChunk(w, r)
		return
	}
	rel, ok := s.torrentRelease(r.PathValue("torrent"))
	if !ok {
		http.Error(w, "no such torrent", http.StatusNotFound)
		return
	}
	env, err := s.rel.ReadSide(rel.Name, rel.Channel, rel.Revision, manifest.SideTorrentManifest)
	if err != nil {
		http.Error(w, "no such torrent", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", MediaManifest)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(env))
}

// torrentRelease finds the release a torrent name stands for, listing the
// releases again when the name is new (releases appear while serving).
func (s *Server) torrentRelease(tname string) (manifest.Release, bool) {
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	if rel, ok := s.names[tname]; ok {
		return rel, true
	}
	rels, err := s.rel.List()
	if err != nil {
		return manifest.Release{}, false
	}
	s.names = make(map[string]manifest.Release, len(rels))
	for _, rel := range rels {
		s.names[manifest.TorrentName(rel.Name, rel.Channel, rel.Revision)] = rel
	}
	rel, ok := s.names[tname]
	return rel, ok
}
