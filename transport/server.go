package transport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"
)

// Routes (all under /v1):
//
//	GET  /v1/manifests/{name}/{channel}/latest   newest signed manifest
//	GET  /v1/manifests/{name}/{channel}/{rev}    one revision
//	GET  /v1/chunks/{id}                         stored bytes (zstd frame), Range supported
//	POST /v1/chunks/batch                        many chunks in one response (see batch.go)
//	GET  /v1/torrents/{name}/{channel}/{rev}     the release's .torrent (info, trackers, webseed)
//	GET  /v1/torrents/{name}/{channel}/{rev}/info  its info bytes (checked against the manifest)
//	GET  /v1/torrents/{name}/{channel}/{rev}/compact  trackers and info without what the manifest says
//	GET  /v1/packs/{name}/{channel}/{rev}/from/{from}  signed record of a delta pack (packs.go)
//	GET  /v1/packs/{id}                          a delta pack, Range supported
//	GET  /ws/{torrent}/{file}                    BEP 19 webseed: a release torrent's files
//	GET  /metrics                                Prometheus metrics
//	GET  /healthz                                "ok"
const (
	MediaManifest = "application/vnd.imgctl.manifest"
	MediaChunk    = "application/zstd"
	MediaBatch    = "application/vnd.imgctl.chunks"
)

// BatchMax is the most chunks one batch request may ask for.
const BatchMax = 4096

// ServerOptions configure NewServer. The zero value serves without limits.
type ServerOptions struct {
	// UploadLimit caps response body bytes per second over all clients
	// (0: unlimited).
	UploadLimit int64
	Logger      *slog.Logger
	// Registry receives the server's metrics; nil makes a new one.
	Registry *prometheus.Registry
	// Announce lists tracker URLs written into served .torrent files.
	Announce []string
	// Upstream, if set, makes the server a branch cache (upstream.go).
	Upstream *Upstream
	// CompactTorrent, if set, serves release torrents in compact form at
	// /v1/torrents/{name}/{channel}/{rev}/compact: it gets the info bytes,
	// the release's manifest and the announce URLs (swarm.CompactTorrent,
	// which this package does not link).
	CompactTorrent func(info, env []byte, trackers []string) ([]byte, error)
}

// Server serves a store's manifests and chunks over HTTP. It reads the
// store's files directly (chunkstore.Dir, manifest.Releases), takes no
// lock, and so sees releases published while it runs. Every chunk is
// verified against its ID before it is sent; a corrupt file is answered
// with 500 and counted, never sent.
type Server struct {
	root     string
	deltas   deltaCache
	dir      *chunkstore.Dir
	rel      *manifest.Releases
	log      *slog.Logger
	limit    *rate.Limiter
	reg      *prometheus.Registry
	served   prometheus.Counter
	requests *prometheus.CounterVec
	corrupt  prometheus.Counter
	mux      *http.ServeMux
	announce []string
	compact  *compactCache
	up       *Upstream

	namesMu sync.Mutex
	names   map[string]manifest.Release // torrent name → release
}

// NewServer returns a server for the store at root. Close releases the
// store's open files.
func NewServer(root string, opts ServerOptions) (*Server, error) {
	dir, err := chunkstore.OpenDir(root)
	if err != nil {
		return nil, err
	}
	s := &Server{root: root, dir: dir, rel: manifest.OpenReleases(root), log: opts.Logger, limit: NewLimiter(opts.UploadLimit), reg: opts.Registry,
		announce: opts.Announce, up: opts.Upstream}
	if opts.CompactTorrent != nil {
		s.compact = &compactCache{build: opts.CompactTorrent}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
	}
	s.served = prometheus.NewCounter(prometheus.CounterOpts{Name: "imgctl_served_bytes_total", Help: "Response body bytes sent."})
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imgctl_http_requests_total", Help: "HTTP requests by route and status code."}, []string{"route", "code"})
	s.corrupt = prometheus.NewCounter(prometheus.CounterOpts{Name: "imgctl_chunk_verify_failures_total", Help: "Stored chunks that failed verification when read for serving."})
	for _, c := range []prometheus.Collector{s.served, s.requests, s.corrupt} {
		if err := s.reg.Register(c); err != nil {
			return nil, err
		}
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("GET /v1/manifests/{name}/{channel}/{rev}", s.wrap("manifest", s.handleManifest))
	s.mux.HandleFunc("GET /v1/chunks/{id}", s.wrap("chunk", s.handleChunk))
	s.mux.HandleFunc("POST /v1/chunks/batch", s.wrap("batch", s.handleBatch))
	s.mux.HandleFunc("GET /v1/torrents/{name}/{channel}/{rev}", s.wrap("torrent", s.handleTorrent))
	s.mux.HandleFunc("GET /v1/torrents/{name}/{channel}/{rev}/info", s.wrap("torrent-info", s.handleTorrentInfo))
	s.mux.HandleFunc("GET /v1/torrents/{name}/{channel}/{rev}/compact", s.wrap("torrent-compact", s.handleTorrentCompact))
	s.mux.HandleFunc("GET /ws/{torrent}/{file}", s.wrap("webseed", s.handleWebSeed))
	s.mux.HandleFunc("GET /v1/packs/{name}/{channel}/{rev}/from/{from}", s.wrap("pack-record", s.packSide(manifest.SidePack, "application/octet-stream", nil)))
	s.mux.HandleFunc("GET /v1/packs/{name}/{channel}/{rev}/from/{from}/info", s.wrap("pack-info", s.packSide(manifest.SidePackInfo, "application/x-bittorrent-info", mainPack)))
	s.mux.HandleFunc("GET /v1/packs/{name}/{channel}/{rev}/from/{from}/lean-info", s.wrap("pack-info", s.packSide(manifest.SidePackLeanInfo, "application/x-bittorrent-info", leanPack)))
	s.mux.HandleFunc("GET /v1/packs/{id}", s.wrap("pack", s.handlePack))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	return s, nil
}

// Close closes the store's open pack files.
func (s *Server) Close() error { return s.dir.Close() }

// Limiter returns the upload limiter (nil: unlimited), to share with a
// swarm client.
func (s *Server) Limiter() *rate.Limiter { return s.limit }

// Registry returns the metrics registry.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Handle adds a route (a tracker, say) served beside the store's; its
// response bytes count in imgctl_served_bytes_total too.
func (s *Server) Handle(pattern, route string, h http.Handler) {
	s.mux.HandleFunc(pattern, s.wrap(route, h.ServeHTTP))
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

type countingWriter struct {
	http.ResponseWriter
	body   io.Writer
	n      int64
	status int
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.body.Write(p)
	c.n += int64(n)
	return n, err
}

func (s *Server) wrap(route string, h func(http.ResponseWriter, *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cw := &countingWriter{ResponseWriter: w, body: w}
		if s.limit != nil {
			cw.body = limitedWriter{ctx: r.Context(), w: w, l: s.limit}
		}
		h(cw, r)
		if cw.status == 0 {
			cw.status = http.StatusOK
		}
		s.served.Add(float64(cw.n))
		s.requests.WithLabelValues(route, strconv.Itoa(cw.status)).Inc()
	}
}

func (s *Server) handleManifest(w http.ResponseWriter, r *http.Request) {
	name, channel, revs := r.PathValue("name"), r.PathValue("channel"), r.PathValue("rev")
	var rev uint64
	if revs != "latest" {
		v, err := strconv.ParseUint(revs, 10, 64)
		if err != nil || v == 0 {
			http.Error(w, "bad revision", http.StatusBadRequest)
			return
		}
		rev = v
	}
	if s.up != nil {
		if _, err := s.up.Release(r.Context(), name, channel, rev); err != nil {
			s.log.Warn("upstream release", "name", name, "channel", channel, "rev", rev, "err", err)
		}
	}
	env, got, err := s.rel.Read(name, channel, rev)
	if errors.Is(err, manifest.ErrNoRelease) {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	if err != nil {
		s.log.Error("read manifest", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", MediaManifest)
	w.Header().Set("X-Imgctl-Revision", strconv.FormatUint(got, 10))
	if rev == 0 {
		w.Header().Set("Cache-Control", "no-cache")
	} else {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	}
	if base := r.Header.Get(headerBase); base != "" {
		w.Header().Add("Vary", headerBase)
		if d, ok := s.manifestDelta(name, channel, env, base); ok {
			w.Header().Set(headerEncoding, encodingDelta)
			w.Header().Set("Content-Length", strconv.Itoa(len(d)))
			w.Write(d)
			return
		}
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(env))
}

// readVerified reads id and checks its stored bytes against the pack
// index's checksum, counting corruption. (Clients verify the plain bytes
// against the ID; this check keeps a server from sending rotten bytes.)
// With fill, a branch cache asks upstream for a chunk it lacks.
func (s *Server) readVerified(id chunkstore.ID, fill bool) ([]byte, error) {
	b, _, err := s.dir.ReadStoredChecked(id)
	if errors.Is(err, chunkstore.ErrNotFound) && s.up != nil && fill {
		if err = s.up.Chunk(context.Background(), id); err == nil {
			s.dir.Refresh()
			b, _, err = s.dir.ReadStoredChecked(id)
		}
	}
	if errors.Is(err, chunkstore.ErrCorrupt) {
		s.corrupt.Inc()
		s.log.Error("refusing to serve corrupt chunk", "id", id, "err", err)
		return nil, err
	}
	return b, err
}

// fillFailed reports whether a branch's fill failed otherwise than by
// upstream lacking a chunk or sending it corrupt: the uplink or this
// cache's store failed. The client is told so (503, with the reason),
// not that the chunk is missing, which it takes as final.
func fillFailed(err error) bool {
	return err != nil && !errors.Is(err, chunkstore.ErrNotFound) && !errors.Is(err, chunkstore.ErrCorrupt)
}

func (s *Server) handleChunk(w http.ResponseWriter, r *http.Request) {
	id, err := chunkstore.ParseID(strings.TrimSuffix(r.PathValue("id"), ".zst"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	b, err := s.readVerified(id, true)
	switch {
	case errors.Is(err, chunkstore.ErrNotFound):
		http.Error(w, "no such chunk", http.StatusNotFound)
		return
	case s.up != nil && fillFailed(err):
		http.Error(w, "branch cache: "+err.Error(), http.StatusServiceUnavailable)
		return
	case err != nil:
		http.Error(w, "chunk unavailable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", MediaChunk)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Header().Set("ETag", `"`+id.String()+`"`)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
}

// Batch wire format. Request body: chunk IDs in hex, one per line, at most
// BatchMax. Response body, for each requested ID in order:
//
//	id      [32]byte
//	length  uint32 big-endian; missingChunk if the server lacks the chunk
//	stored  length bytes
const missingChunk = 0xFFFFFFFF

func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request) {
	var ids []chunkstore.ID
	sc := bufio.NewScanner(io.LimitReader(r.Body, int64(BatchMax)*66+1024))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		id, err := chunkstore.ParseID(line)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ids = append(ids, id)
		if len(ids) > BatchMax {
			http.Error(w, fmt.Sprintf("more than %d chunks", BatchMax), http.StatusRequestEntityTooLarge)
			return
		}
	}
	if err := sc.Err(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if s.up != nil {
		// A branch cache fetches what it lacks first, in one batch
		// upstream; what upstream cannot give is reported missing below.
		var lack []manifest.ChunkRef
		for _, id := range ids {
			if ok, _ := s.dir.Has(r.Context(), id); !ok {
				lack = append(lack, manifest.ChunkRef{ID: id})
			}
		}
		if len(lack) > 0 {
			if err := s.up.Chunks(r.Context(), lack); err != nil {
				s.log.Warn("upstream chunks", "chunks", len(lack), "err", err)
				if fillFailed(err) && r.Context().Err() == nil {
					http.Error(w, "branch cache: "+err.Error(), http.StatusServiceUnavailable)
					return
				}
			}
			s.dir.Refresh()
		}
	}
	w.Header().Set("Content-Type", MediaBatch)
	bw := bufio.NewWriterSize(w, 256<<10)
	var hdr [36]byte
	for _, id := range ids {
		b, err := s.readVerified(id, false) // a branch asked upstream above
		copy(hdr[:32], id[:])
		if err != nil {
			binary.BigEndian.PutUint32(hdr[32:], missingChunk)
			b = nil
		} else {
			binary.BigEndian.PutUint32(hdr[32:], uint32(len(b)))
		}
		if _, err := bw.Write(hdr[:]); err != nil {
			return
		}
		if _, err := bw.Write(b); err != nil {
			return
		}
	}
	bw.Flush()
}
