package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/transport"
	"github.com/imgctl/imgctl/transport/swarm"
)

// p2pOptions configure the BitTorrent side of pull.
type p2pOptions struct {
	enabled       bool
	magnet        string
	listen        string
	announce      []string
	peers         []string
	stall         time.Duration
	seedFor       time.Duration
	metricsListen string
	uploadLimit   string
	downloadLimit string
	memory        string
	maxPeers      int
	timeout       time.Duration
	// linkRate, if set, is the terminal's link rate for choosing a delta
	// pack's form (instead of what the manifest's download measured).
	linkRate string
}

func (o *p2pOptions) AddFlags(f *pflag.FlagSet) {
	f.BoolVar(&o.enabled, "p2p", false, "fetch missing chunks from the release's BitTorrent swarm (peers, branch caches), the rest over HTTP")
	f.StringVar(&o.magnet, "magnet", "", "pull the release a magnet link names (xt, tr, ws, x.pe): manifest and chunks from the swarm; --from optional")
	f.StringVar(&o.listen, "listen", "", "BitTorrent listen address, host:port (default 127.0.0.1:0; give the LAN address to serve other terminals)")
	f.StringArrayVar(&o.announce, "announce", nil, "tracker announce URL (repeatable)")
	f.StringArrayVar(&o.peers, "peer", nil, "peer to dial, host:port (repeatable)")
	f.DurationVar(&o.stall, "p2p-stall", 5*time.Second, "fetch the rest over HTTP when the swarm delivers nothing for this long")
	f.DurationVar(&o.seedFor, "seed-for", 0, "after the pull, keep seeding the release to other terminals this long")
	f.StringVar(&o.metricsListen, "metrics-listen", "", "while seeding: serve /metrics (imgctl_torrent_uploaded_bytes_total) on this address")
	f.StringVar(&o.uploadLimit, "p2p-upload-limit", "0", "cap on BitTorrent upload, e.g. 5MB/s (0: none)")
	f.StringVar(&o.downloadLimit, "p2p-download-limit", "0", "cap on BitTorrent and webseed download (0: none)")
	f.StringVar(&o.memory, "p2p-memory", "0", "stage downloaded pieces in memory up to this size (e.g. 8MiB) instead of in a file under the cache, until their chunks are verified: no staging writes to the cache's disk, for more resident memory")
	f.IntVar(&o.maxPeers, "max-peers", 4, "connections per torrent (0: the library's 50; in a dense LAN swarm each extra connection costs CPU in have and request traffic)")
	f.DurationVar(&o.timeout, "p2p-timeout", 10*time.Minute, "how long the swarm may take before the rest is fetched over HTTP")
	f.StringVar(&o.linkRate, "link-rate", "", "this terminal's download rate, e.g. 1.25MB/s or 50MB/s, for choosing between a delta pack's smallest form and its lean one (default: measured on the manifest)")
}

// check refuses transfer options that do not parse, before anything runs.
func (o *p2pOptions) check() error {
	_, err := o.rate()
	return err
}

// rate is --link-rate in bytes a second (0: not given).
func (o *p2pOptions) rate() (float64, error) {
	if o == nil || o.linkRate == "" {
		return 0, nil
	}
	r, err := transport.ParseRate(o.linkRate)
	if err != nil || r <= 0 {
		return 0, usagef("--link-rate %q: want a rate such as 1.25MB/s or 50MB/s", o.linkRate)
	}
	return float64(r), nil
}

// pullSwarm is a terminal's swarm client for one release.
type pullSwarm struct {
	c *swarm.Client
	h *swarm.Handle
	// torrentManifest fetches and verifies the torrent's first file, for
	// seeding it (nil: held already, or not to be had).
	torrentManifest func(ctx context.Context) ([]byte, error)
	// written opens the verified content the pull wrote (file, slot,
	// bundle tree) and m is its manifest: chunks the pull took from a delta
	// pack are reproduced from it for seeding (nil: not done). Chunks its
	// seeds hold (seeds: the running slot, installed releases) are left
	// out: neighbours on that release hold them too, and recompressing a
	// whole release costs every seeding terminal a CPU-second at the time
	// its neighbours are still pulling.
	written func() (io.ReaderAt, io.Closer, error)
	m       *manifest.Manifest
	seeds   []delta.SeedIndex
}

// writtenFile opens a written image file or slot device.
func writtenFile(path string) func() (io.ReaderAt, io.Closer, error) {
	return func() (io.ReaderAt, io.Closer, error) {
		f, err := os.Open(path)
		return f, f, err
	}
}

func (s *pullSwarm) close() {
	if s != nil {
		s.c.Close()
	}
}

// newSwarmClient starts a terminal's client over its cache.
func newSwarmClient(g *globalOptions, o *p2pOptions, cache *chunkstore.Local) (*swarm.Client, error) {
	up, err := transport.ParseRate(o.uploadLimit)
	if err != nil {
		return nil, usageError{err}
	}
	down, err := transport.ParseRate(o.downloadLimit)
	if err != nil {
		return nil, usageError{err}
	}
	mem, err := transport.ParseSize(o.memory)
	if err != nil {
		return nil, usageError{fmt.Errorf("--p2p-memory: %w", err)}
	}
	return swarm.New(swarm.Config{
		Listen: o.listen, Staging: filepath.Join(cache.Root(), "torrent-staging"), StagingMemory: mem,
		Trackers: o.announce, Peers: o.peers, UploadRate: up, DownloadRate: down,
		MaxConns: o.maxPeers, Logger: g.log,
	}, cache, cache)
}

// releaseTorrent fetches m's torrent from the origin, compact (info
// rebuilt from m and what m does not hold) or as a .torrent, and checks
// its info against m's record.
func releaseTorrent(ctx context.Context, hc *transport.Client, m *manifest.Manifest, ref manifest.TorrentRef, compact bool) (info []byte, trackers []string, err error) {
	max := int64(ref.InfoSize) + 64<<10
	if compact {
		b, err := hc.TorrentCompact(ctx, m.Name, m.Channel, m.Revision, max)
		if err != nil {
			return nil, nil, err
		}
		info, trackers, err = swarm.ExpandTorrent(b, m)
	} else {
		tf, err := hc.TorrentFile(ctx, m.Name, m.Channel, m.Revision, max)
		if err != nil {
			return nil, nil, err
		}
		info, trackers, err = swarm.ParseTorrentFile(tf)
	}
	if err == nil {
		err = ref.Check(info)
	}
	return info, trackers, err
}

// joinRelease joins the swarm of a verified release m, whose torrent info
// comes from the HTTP origin and must match the manifest's record.
func joinRelease(ctx context.Context, g *globalOptions, o *p2pOptions, m *manifest.Manifest, policy manifest.Policy, client source, cache *chunkstore.Local) (*pullSwarm, error) {
	refs, err := m.Torrents()
	if err != nil {
		return nil, err
	}
	if len(refs) == 0 {
		return nil, fmt.Errorf("%s/%s@%d has no torrent (published with --no-torrent)", m.Name, m.Channel, m.Revision)
	}
	hc, ok := client.(*transport.Client)
	if !ok {
		return nil, errors.New("--p2p needs an HTTP --from (the torrent's info comes from it), or --magnet")
	}
	ref := refs[0]
	// The compact form first (a tenth of the info bytes: the manifest
	// names the chunks already), then the whole .torrent.
	info, trackers, err := releaseTorrent(ctx, hc, m, ref, true)
	if err != nil {
		g.log.Debug("no compact torrent", "err", err)
		if info, trackers, err = releaseTorrent(ctx, hc, m, ref, false); err != nil {
			return nil, err
		}
	}
	// The origin's trackers (its own with serve --tracker) join ours.
	oo := *o
	oo.announce = append(append([]string(nil), o.announce...), trackers...)
	c, err := newSwarmClient(g, &oo, cache)
	if err != nil {
		return nil, err
	}
	h, err := c.Add(ctx, info, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	h.State().SetManifest(m)
	return &pullSwarm{c: c, h: h, torrentManifest: func(ctx context.Context) ([]byte, error) {
		env, err := hc.TorrentManifest(ctx, m.Name, m.Channel, m.Revision, manifest.MaxEnvelope)
		if err != nil {
			return nil, err
		}
		// The same release, signed by a key this terminal trusts.
		m0, err := manifest.Verify(env, policy)
		if err != nil {
			return nil, err
		}
		if m0.Revision != m.Revision || m0.Digest != m.Digest || m0.Size != m.Size {
			return nil, fmt.Errorf("%w: the torrent's manifest is not %s/%s@%d", manifest.ErrVerification, m.Name, m.Channel, m.Revision)
		}
		return env, nil
	}}, nil
}

// joinMagnet joins the swarm a magnet names and returns it with the
// manifest it carries (unverified: the caller verifies it).
func joinMagnet(ctx context.Context, g *globalOptions, o *p2pOptions, cache *chunkstore.Local) (*pullSwarm, []byte, error) {
	c, err := newSwarmClient(g, o, cache)
	if err != nil {
		return nil, nil, err
	}
	mctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	h, err := c.AddMagnet(mctx, o.magnet)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	env, err := h.Manifest(mctx)
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("manifest from the swarm: %w", err)
	}
	return &pullSwarm{c: c, h: h}, env, nil
}

// swarmFetcher is the assembler's fetcher in a P2P pull: the chunks go
// through the swarm into the cache while the assembler copies seed chunks,
// and whatever the swarm has not delivered when it stalls or times out
// comes over HTTP.
type swarmFetcher struct {
	s     *pullSwarm
	o     *p2pOptions
	g     *globalOptions
	cache *chunkstore.Local
	http  delta.Fetcher
}

func (f swarmFetcher) Fetch(ctx context.Context, refs []manifest.ChunkRef, fn func(chunkstore.Chunk) error) error {
	ids := make([]chunkstore.ID, len(refs))
	for i, r := range refs {
		ids[i] = r.ID
	}
	// Chunks are written as they arrive; the swarm hands over the ones it
	// downloaded already checked, the others are read from the cache.
	done := make(map[chunkstore.ID]bool, len(refs))
	var fnErr error
	fctx, cancel := context.WithTimeout(ctx, f.o.timeout)
	err := f.s.h.FetchChunksTo(fctx, ids, f.o.stall, func(id chunkstore.ID, c chunkstore.Chunk) error {
		if c.IsZero() {
			var err error
			if c, err = f.cache.Get(ctx, id); err != nil {
				return nil // fetched over HTTP below
			}
		}
		done[id] = true
		if fnErr = fn(c); fnErr != nil {
			return fnErr
		}
		return nil
	})
	cancel()
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, swarm.ErrStorage) {
			return err // a full disk: HTTP would not keep the chunks either
		}
		f.g.log.Warn("the swarm did not deliver every chunk; fetching the rest over HTTP", "err", err)
	}
	var rest []manifest.ChunkRef
	for _, r := range refs {
		if done[r.ID] {
			continue
		}
		c, err := f.cache.Get(ctx, r.ID)
		if err != nil {
			rest = append(rest, r)
			continue
		}
		done[r.ID] = true
		if err := fn(c); err != nil {
			return err
		}
	}
	if len(rest) == 0 {
		return nil
	}
	return f.http.Fetch(ctx, rest, fn)
}

// seed keeps the terminal's client seeding for o.seedFor, with /metrics
// on o.metricsListen.
func (s *pullSwarm) seed(ctx context.Context, g *globalOptions, o *p2pOptions) error {
	if s == nil || o.seedFor <= 0 {
		return nil
	}
	var hs *http.Server
	if o.metricsListen != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(torrentUploadedMetric(s.c))
		ln, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		hs = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(ln)
		defer hs.Close()
	}
	// Chunks that came over HTTP are in the store too: seed them, and the
	// manifest file the torrent starts with (from the origin if need be).
	var env []byte
	if _, ok := s.h.State().Manifest(); !ok && s.torrentManifest != nil {
		var err error
		if env, err = s.torrentManifest(ctx); err != nil {
			g.log.Warn("seeding without the torrent's manifest file", "err", err)
		}
	}
	s.h.Refresh(ctx, env)
	if s.written != nil {
		if n, err := s.reproduce(ctx); err != nil {
			g.log.Warn("seeding only the chunks that came as chunks", "err", err)
		} else if n > 0 {
			g.logf("seeding %d chunks taken from a delta pack too", n)
		}
	}
	g.logf("seeding for %s on %s", o.seedFor, s.c.Addr())
	t := time.NewTimer(o.seedFor)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return nil
}

// reproduce offers the chunks of the release that the pull wrote but did
// not receive as chunks and its seeds do not hold (decoded from a pack):
// their stored form is reproduced and vouched for by the torrent's piece
// hashes before anything is seeded (swarm.Handle.Reproduce).
func (s *pullSwarm) reproduce(ctx context.Context) (int, error) {
	f, c, err := s.written()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	where, index := delta.IndexManifest(s.m), s.m.ChunkIndex()
	return s.h.Reproduce(ctx, func(id chunkstore.ID) ([]byte, error) {
		off, ok := where[id]
		if !ok {
			return nil, nil
		}
		for _, idx := range s.seeds {
			if _, held := idx[id]; held {
				return nil, nil
			}
		}
		b := make([]byte, s.m.Chunks[index[id]].Size)
		if _, err := f.ReadAt(b, off); err != nil {
			return nil, err
		}
		return b, nil
	})
}

// torrentUploadedMetric exports a client's BitTorrent payload upload.
func torrentUploadedMetric(c *swarm.Client) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "imgctl_torrent_uploaded_bytes_total",
		Help: "BitTorrent payload bytes sent to peers."}, func() float64 { return float64(c.Uploaded()) })
}
