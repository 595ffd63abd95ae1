package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/transport"
	"github.com/imgctl/imgctl/transport/swarm"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

type serveOptions struct {
	store, listen, addrFile, uploadLimit string

	seedTorrents    bool
	tracker         bool
	trackerInterval time.Duration
	announce        []string
	torrentListen   string
	maxPeers        int
	upstream        string
	upstreamLimit   string
}

func (o *serveOptions) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&o.store, "store", "", "chunk store directory to serve")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8420", "address to listen on (port 0 picks a free port)")
	f.StringVar(&o.addrFile, "addr-file", "", "write the listening address (host:port) to this file once ready")
	f.StringVar(&o.uploadLimit, "upload-limit", "0", "cap on egress per second, HTTP and BitTorrent together, e.g. 10MB/s (0: none)")
	f.BoolVar(&o.seedTorrents, "seed-torrents", false, "seed every release's torrent over BitTorrent (and pick up new releases)")
	f.BoolVar(&o.tracker, "tracker", false, "run a BitTorrent tracker at /announce on the HTTP port, announced in served torrents")
	f.DurationVar(&o.trackerInterval, "tracker-interval", time.Minute, "how often peers re-announce to the embedded tracker")
	f.StringArrayVar(&o.announce, "announce", nil, "tracker announce URL for the seeder and served torrents (repeatable)")
	f.StringVar(&o.torrentListen, "torrent-listen", "", "BitTorrent listen address (default: the HTTP host, any port)")
	f.IntVar(&o.maxPeers, "max-peers", 0, "BitTorrent connections per torrent (0: 50)")
	f.StringVar(&o.upstream, "upstream", "", "branch cache: fetch releases and chunks the store lacks from this server (the origin), once")
	f.StringVar(&o.upstreamLimit, "upstream-limit", "0", "branch cache: cap on download from --upstream, e.g. 2MB/s (0: none)")
}

func newServeCommand(g *globalOptions) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve --store S --listen ADDR",
		Short: "Serve a store's releases and chunks over HTTP (origin or branch cache)",
		Long: `serve answers GET /v1/manifests/{name}/{channel}/{latest|rev}, GET /v1/chunks/{id},
POST /v1/chunks/batch, GET /v1/torrents/{name}/{channel}/{rev}[/info] (the release's
.torrent), GET /ws/{torrent}/{file} (BEP 19 webseed), GET /metrics (Prometheus;
imgctl_served_bytes_total counts response body bytes, imgctl_torrent_uploaded_bytes_total
BitTorrent payload) and GET /healthz. It reads the store without locking it:
releases published while it runs are served at once.

--seed-torrents seeds every release over BitTorrent, --tracker runs a tracker at
/announce, and --upload-limit caps HTTP and BitTorrent egress together. With
--upstream it is a branch cache: what its store lacks is fetched from upstream
once, checked, kept and seeded. Stops on SIGINT/SIGTERM.`,
		Example: `  imgctl serve --store /srv/imgctl --listen 0.0.0.0:8420 --upload-limit 50MB/s --seed-torrents --tracker
  imgctl serve --store /srv/branch --listen 0.0.0.0:8420 --upstream http://hq:8420 --seed-torrents --tracker`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), g, o)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func runServe(ctx context.Context, g *globalOptions, o *serveOptions) error {
	if o.store == "" {
		return usagef("serve: --store is required")
	}
	if o.upstream != "" {
		if err := os.MkdirAll(o.store, 0o755); err != nil {
			return err
		}
	}
	if _, err := os.Stat(o.store); err != nil {
		return err
	}
	limit, err := transport.ParseRate(o.uploadLimit)
	if err != nil {
		return usageError{err}
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	addr := ln.Addr().String()
	announce := o.announce
	if o.tracker {
		announce = append([]string{"http://" + addr + "/announce"}, announce...)
	}
	var up *transport.Upstream
	if o.upstream != "" {
		// A branch cache writes its store: fetched releases and chunks.
		store, err := chunkstore.Open(o.store, chunkstore.Options{Logger: g.log})
		if err != nil {
			return err
		}
		defer store.Close()
		down, err := transport.ParseRate(o.upstreamLimit)
		if err != nil {
			return usageError{err}
		}
		if up, err = transport.NewUpstream(o.upstream, store, transport.UpstreamOptions{DownloadLimit: down, Logger: g.log}); err != nil {
			return usageError{err}
		}
		g.logf("branch cache of %s", o.upstream)
	}
	srv, err := transport.NewServer(o.store, transport.ServerOptions{UploadLimit: limit, Logger: g.log, Announce: announce, Upstream: up,
		CompactTorrent: serveCompactTorrent})
	if err != nil {
		return err
	}
	defer srv.Close()
	if o.tracker {
		srv.Handle("GET /announce", "announce", swarm.NewTracker(o.trackerInterval).Handler())
	}
	if o.seedTorrents {
		stop, err := seedTorrents(ctx, g, o, srv, addr, announce, up)
		if err != nil {
			return err
		}
		defer stop()
	}
	if o.addrFile != "" {
		if err := chunkstore.WriteFileAtomic(o.addrFile, []byte(addr+"\n"), 0o644); err != nil {
			ln.Close()
			return err
		}
	}
	g.logf("serving %s on http://%s", o.store, addr)
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: nil}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	g.logf("stopped")
	return nil
}

// seedTorrents seeds every release of the store that has a torrent, from
// the store itself, and adds releases published later (polled every few
// seconds). The seeder shares the HTTP server's upload limiter, so the
// cap covers the whole egress.
func seedTorrents(ctx context.Context, g *globalOptions, o *serveOptions, srv *transport.Server, httpAddr string, announce []string, up *transport.Upstream) (func(), error) {
	listen := o.torrentListen
	if listen == "" {
		host, _, _ := net.SplitHostPort(httpAddr)
		listen = net.JoinHostPort(host, "0")
	}
	dir, err := chunkstore.OpenDir(o.store)
	if err != nil {
		return nil, err
	}
	cfg := swarm.Config{Listen: listen, Staging: filepath.Join(o.store, "tmp", "torrent-staging"), Trackers: announce,
		UploadLimiter: srv.Limiter(), MaxConns: o.maxPeers, Logger: g.log}
	if up != nil {
		// A branch offers every piece of the releases it knows and fetches
		// a piece's chunks from upstream (once, verified, one request)
		// when a peer first asks for the piece.
		cfg.Fill = func(ctx context.Context, ids []chunkstore.ID) error {
			refs := make([]manifest.ChunkRef, len(ids))
			for i, id := range ids {
				refs[i].ID = id
			}
			if err := up.Chunks(ctx, refs); err != nil {
				return err
			}
			return dir.Refresh()
		}
	}
	c, err := swarm.New(cfg, dir, nil)
	if err != nil {
		dir.Close()
		return nil, err
	}
	if err := srv.Registry().Register(torrentUploadedMetric(c)); err != nil {
		c.Close()
		dir.Close()
		return nil, err
	}
	g.logf("seeding torrents on %s", c.Addr())
	rels := manifest.OpenReleases(o.store)
	seeded := map[manifest.Release]bool{}
	seededPacks := map[string]bool{}
	var mu sync.Mutex // scan runs from the ticker and from the upstream hook
	scan := func() {
		mu.Lock()
		defer mu.Unlock()
		list, err := rels.List()
		if err != nil {
			g.log.Warn("list releases", "err", err)
			return
		}
		for _, rel := range list {
			if seeded[rel] {
				continue
			}
			info, err1 := rels.ReadSide(rel.Name, rel.Channel, rel.Revision, manifest.SideTorrentInfo)
			env, err2 := rels.ReadSide(rel.Name, rel.Channel, rel.Revision, manifest.SideTorrentManifest)
			if err1 != nil || err2 != nil {
				seeded[rel] = true // published without a torrent
				continue
			}
			dir.Refresh()
			h, err := c.Add(ctx, info, env)
			if err != nil {
				g.log.Warn("cannot seed", "release", fmt.Sprintf("%s/%s@%d", rel.Name, rel.Channel, rel.Revision), "err", err)
				continue
			}
			seeded[rel] = true
			g.log.Info("seeding", "release", fmt.Sprintf("%s/%s@%d", rel.Name, rel.Channel, rel.Revision), "infohash", h.InfoHash().HexString())
		}
		// Delta packs and their lean twins, each its own torrent, once the
		// pack is here (a branch holds it only after a terminal asked).
		// seededPacks holds a record's key once all its forms are settled,
		// and each form's key once it is.
		for _, rel := range list {
			for _, from := range rels.PackFroms(rel.Name, rel.Channel, rel.Revision) {
				key := fmt.Sprintf("%s/%s/%d/%d", rel.Name, rel.Channel, rel.Revision, from)
				if seededPacks[key] {
					continue
				}
				renv, err := rels.ReadSide(rel.Name, rel.Channel, rel.Revision, manifest.SidePack(from))
				if err != nil {
					continue
				}
				rec, err := manifest.OpenPackRecord(renv)
				if err != nil {
					seededPacks[key] = true // not seedable
					continue
				}
				settled := true
				for _, f := range rec.Forms() {
					fkey := key + "/" + f.Pack.String()
					if seededPacks[fkey] {
						continue
					}
					info, err := rels.ReadSide(rel.Name, rel.Channel, rel.Revision, f.InfoKind(from))
					if f.Torrent == nil || (err == nil && f.Torrent.Check(info) != nil) {
						seededPacks[fkey] = true // without a torrent, or not seedable
						continue
					}
					path := manifest.PackPath(o.store, f.Pack)
					if _, serr := os.Stat(path); err != nil || serr != nil {
						settled = false // not here yet
						continue
					}
					if _, err := c.AddFile(info, filepath.Dir(path)); err != nil {
						g.log.Warn("cannot seed pack", "pack", fkey, "err", err)
						settled = false
						continue
					}
					seededPacks[fkey] = true
					g.log.Info("seeding pack", "pack", fkey)
				}
				seededPacks[key] = settled
			}
		}
	}
	scan()
	if up != nil {
		up.OnRelease = func(manifest.Release) { go scan() }
		up.OnPack = func(chunkstore.ID) { go scan() }
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				scan()
			case <-done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
		c.Close()
		dir.Close()
	}, nil
}

// serveCompactTorrent is the server's CompactTorrent: a release torrent for
// terminals that hold its manifest (swarm.CompactTorrent).
func serveCompactTorrent(info, env []byte, trackers []string) ([]byte, error) {
	m, err := manifest.Open(env)
	if err != nil {
		return nil, err
	}
	return swarm.CompactTorrent(info, m, trackers)
}
