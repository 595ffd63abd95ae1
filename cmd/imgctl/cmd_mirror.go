package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/transport"
)

type mirrorOptions struct {
	store, from, name, channel string
	revision                   uint64
	concurrency                int
	downloadLimit              string
	json                       bool
}

type mirrorResult struct {
	Name          string `json:"name"`
	Channel       string `json:"channel"`
	Revision      uint64 `json:"revision"`
	Chunks        int    `json:"chunks"`
	ChunksFetched int    `json:"chunks_fetched"`
	Packs         int    `json:"delta_packs"`
	BytesFetched  int64  `json:"bytes_fetched"`
}

func newMirrorCommand(g *globalOptions) *cobra.Command {
	o := &mirrorOptions{}
	cmd := &cobra.Command{
		Use:   "mirror --store S --from URL --name N",
		Short: "Copy a whole release (manifest, torrent, every chunk) from an origin into a store, e.g. a branch cache's",
		Long: `mirror fetches a release and every chunk of it that the store lacks from --from,
checking each chunk against its ID, as a branch cache (serve --upstream) does on
demand; run it before a rollout so that terminals never wait on the uplink. A
running branch cache serves what mirror adds at once (stop it first: the store
allows one writer).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMirror(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.store, "store", "", "store to fill (created if missing)")
	f.StringVar(&o.from, "from", "", "origin or upstream branch URL")
	f.StringVar(&o.name, "name", "", "release name")
	f.StringVar(&o.channel, "channel", "stable", "release channel")
	f.Uint64Var(&o.revision, "revision", 0, "revision (0: the latest)")
	f.IntVar(&o.concurrency, "concurrency", 4, "batch requests to upstream in flight")
	f.StringVar(&o.downloadLimit, "download-limit", "0", "cap on download from --from, e.g. 2MB/s (0: none)")
	f.BoolVar(&o.json, "json", false, "print the result as JSON")
	return cmd
}

// mirrorGroup is how many chunks a mirror asks upstream for between two
// progress updates.
const mirrorGroup = 1024

func runMirror(ctx context.Context, g *globalOptions, o *mirrorOptions) error {
	if o.store == "" || o.from == "" || o.name == "" {
		return usagef("mirror: --store, --from and --name are required")
	}
	limit, err := transport.ParseRate(o.downloadLimit)
	if err != nil {
		return usageError{err}
	}
	if err := os.MkdirAll(o.store, 0o755); err != nil {
		return err
	}
	store, err := chunkstore.Open(o.store, chunkstore.Options{Logger: g.log})
	if err != nil {
		return err
	}
	defer store.Close()
	up, err := transport.NewUpstream(o.from, store, transport.UpstreamOptions{DownloadLimit: limit, Concurrency: o.concurrency, Logger: g.log})
	if err != nil {
		return usageError{err}
	}
	up.DeferFlush = true
	// The release is stored only after its chunks: a mirror cut short
	// never offers a release it cannot serve.
	pending, err := up.FetchRelease(ctx, o.name, o.channel, o.revision)
	if err != nil {
		return err
	}
	m := pending.Manifest()
	rev := m.Revision
	res := mirrorResult{Name: m.Name, Channel: m.Channel, Revision: rev, Chunks: len(m.Chunks)}
	prog := newProgress(g, "mirror "+o.name)
	prog.Start(int64(len(m.Chunks)))
	var lack []manifest.ChunkRef
	for _, c := range m.Chunks {
		if ok, _ := store.Has(ctx, c.ID); ok {
			prog.Add(1)
			continue
		}
		lack = append(lack, c)
	}
	res.ChunksFetched = len(lack)
	// In groups, for progress: each group goes upstream as batch
	// requests, several at a time (one request per chunk made a mirror
	// over a long link latency-bound).
	for len(lack) > 0 && err == nil {
		n := min(len(lack), mirrorGroup)
		err = up.Chunks(ctx, lack[:n])
		prog.Add(int64(n))
		lack = lack[n:]
	}
	prog.Done()
	if ferr := store.Flush(ctx); err == nil {
		err = ferr
	}
	if err != nil {
		return err
	}
	if err := pending.Commit(); err != nil {
		return err
	}
	// Delta packs to this release from the revisions before it, when
	// upstream has them.
	for from := rev - 1; from >= 1 && from+3 >= rev; from-- {
		rec, err := up.PackRecord(ctx, m.Name, m.Channel, rev, from)
		if err != nil {
			if !errors.Is(err, manifest.ErrNoRelease) {
				g.log.Warn("mirroring a pack", "from", from, "err", err)
			}
			continue
		}
		for _, po := range rec.Objects() {
			if err := up.Pack(ctx, po.Pack, po.Size); err != nil {
				return err
			}
			res.Packs++
		}
	}
	res.BytesFetched = up.Received()
	if o.json {
		return writeJSON(g.stdout, res)
	}
	fmt.Fprintf(g.stdout, "mirrored %s/%s@%d: %d chunks, %d fetched, %d delta packs, %s received\n", m.Name, m.Channel, rev,
		res.Chunks, res.ChunksFetched, res.Packs, human(res.BytesFetched))
	return nil
}
