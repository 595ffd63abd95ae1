package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/partition"
	"github.com/imgctl/imgctl/transport/swarm"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

type publishOptions struct {
	store, key, name, channel string
	expires                   time.Duration
	chunkSizes                string
	level                     string
	workers                   int
	json                      bool
	lockTimeout               time.Duration
	noTorrent                 bool
	pieceLength               int64
	kind                      string
	mandatory                 bool
	mtime                     string
	owner                     string
	packsFrom                 int
	packEncoder               string
}

func (o *publishOptions) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&o.store, "store", "", "chunk store directory (created if missing)")
	f.StringVar(&o.key, "key", "", "private key file (imgctl key gen)")
	f.StringVar(&o.name, "name", "", "release name, e.g. terminal-os")
	f.StringVar(&o.channel, "channel", "stable", "release channel")
	f.DurationVar(&o.expires, "expires", 0, "manifest lifetime (e.g. 720h); 0 never expires")
	f.StringVar(&o.chunkSizes, "chunk-size", "", "chunker min:avg:max in KiB (default 8:32:128)")
	f.StringVar(&o.level, "compression", "default", "zstd effort for new chunks: fastest, default, better, best")
	f.IntVar(&o.workers, "workers", 0, "worker goroutines (0: one per CPU)")
	f.BoolVar(&o.json, "json", false, "print the result as JSON")
	f.DurationVar(&o.lockTimeout, "lock-timeout", 30*time.Second, "how long to wait for another process's lock on the store")
	f.BoolVar(&o.noTorrent, "no-torrent", false, "do not make the release's BitTorrent torrent (HTTP only)")
	f.Int64Var(&o.pieceLength, "piece-length", swarm.DefaultPieceLength, "torrent piece length in bytes (a power of two, at least 16384)")
	f.StringVar(&o.kind, "kind", "image", "what INPUT is: image (a file or block device) or bundle (a directory tree)")
	f.BoolVar(&o.mandatory, "mandatory", false, "mark the release mandatory: terminals install it even where an operator holds the bundle back")
	f.StringVar(&o.mtime, "mtime", "", "bundles: set every timestamp to this (RFC 3339, or Unix seconds; e.g. $SOURCE_DATE_EPOCH) for reproducible manifests")
	f.StringVar(&o.owner, "owner", "", "bundles: record every file as owned by UID:GID (e.g. 0:0) instead of its owner on disk")
	f.IntVar(&o.packsFrom, "packs-from", 0, "then build delta packs to this release from the last N revisions (imgctl pack build)")
	f.StringVar(&o.packEncoder, "pack-encoder", "go", "encoder of those packs: go or zstd (see imgctl pack build)")
}

func newPublishCommand(g *globalOptions) *cobra.Command {
	o := &publishOptions{}
	cmd := &cobra.Command{
		Use:   "publish --store S --key K.key --name N [--channel C] [--kind bundle] IMAGE|DIR",
		Short: "Chunk an image or a directory tree into the store and sign a new release of it",
		Long: `publish cuts IMAGE (a file or block device) into content-defined chunks, stores
the chunks the store lacks (zstd), and writes a signed manifest as the next
revision of NAME on CHANNEL. A server reading the store serves it at once.

With --kind bundle, INPUT is a directory tree (a service bundle): the manifest
carries its file table (paths, types, modes, owners, timestamps, symlink
targets, hard links, empty directories) and the files' bytes are chunked with
the same chunker, every file of at least the chunker's minimum size on its
own, so an unchanged file is never fetched again. Device nodes, FIFOs,
sockets and symlinks leading out of the tree are refused.`,
		Example: `  imgctl publish --store /srv/imgctl --key keys/release.key --name terminal-os os.img --json
  imgctl publish --store /srv/imgctl --key keys/release.key --name pos-svc --kind bundle \
      --mtime "$SOURCE_DATE_EPOCH" --owner 0:0 build/pos-svc/`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := runPublish(cmd.Context(), g, o, args[0])
			return err
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

type publishResult struct {
	Name             string        `json:"name"`
	Channel          string        `json:"channel"`
	Revision         uint64        `json:"revision"`
	ID               chunkstore.ID `json:"id"`
	Size             int64         `json:"size"`
	Chunks           int           `json:"chunks"`
	Extents          int           `json:"extents"`
	ZeroBytes        int64         `json:"zero_bytes"`
	NewChunks        int           `json:"new_chunks"`
	StoredBytesAdded int64         `json:"stored_bytes_added"`
	ManifestBytes    int           `json:"manifest_bytes"`
	Digest           chunkstore.ID `json:"blake3"`
	Seconds          float64       `json:"seconds"`
	Previous         *delta.Diff   `json:"previous,omitempty"`
	InfoHash         string        `json:"infohash,omitempty"`
	Magnet           string        `json:"magnet,omitempty"`
	Packs            []*packResult `json:"packs,omitempty"`
}

func parseChunkSizes(s string) (chunkstore.Params, error) {
	p := chunkstore.DefaultParams()
	if s == "" {
		return p, nil
	}
	f := strings.Split(s, ":")
	if len(f) != 3 {
		return p, usagef("--chunk-size %q: want min:avg:max in KiB", s)
	}
	var v [3]uint64
	for i, x := range f {
		n, err := strconv.ParseUint(x, 10, 32)
		if err != nil {
			return p, usagef("--chunk-size %q: %v", s, err)
		}
		v[i] = n << 10
	}
	bits := 0
	for 1<<bits < v[1] {
		bits++
	}
	if 1<<bits != v[1] {
		return p, usagef("--chunk-size: the average must be a power of two")
	}
	p.MinSize, p.AvgBits, p.MaxSize = uint32(v[0]), uint8(bits), uint32(v[2])
	return p, p.Validate()
}

func parseLevel(s string) (chunkstore.Level, error) {
	switch s {
	case "default", "":
		return chunkstore.LevelDefault, nil
	case "fastest":
		return chunkstore.LevelFastest, nil
	case "better":
		return chunkstore.LevelBetter, nil
	case "best":
		return chunkstore.LevelBest, nil
	}
	return 0, usagef("--compression %q: want fastest, default, better or best", s)
}

func runPublish(ctx context.Context, g *globalOptions, o *publishOptions, image string) (*publishResult, error) {
	start := g.now()
	if o.store == "" || o.key == "" || o.name == "" {
		return nil, usagef("publish: --store, --key and --name are required")
	}
	if !manifest.ValidName(o.name) || !manifest.ValidName(o.channel) {
		return nil, usagef("publish: name and channel must be 1-128 of [a-z0-9._-]")
	}
	params, err := parseChunkSizes(o.chunkSizes)
	if err != nil {
		return nil, err
	}
	level, err := parseLevel(o.level)
	if err != nil {
		return nil, err
	}
	key, err := manifest.LoadPrivateKey(o.key)
	if err != nil {
		return nil, err
	}
	in, err := openPublishInput(o, image, params)
	if err != nil {
		return nil, err
	}
	defer in.close()
	size := in.size
	// The index lock serialises publishers, so revisions stay monotonic.
	store, err := chunkstore.Open(o.store, chunkstore.Options{Timeout: o.lockTimeout})
	if err != nil {
		return nil, err
	}
	defer store.Close()
	rels := manifest.OpenReleases(o.store)
	revs, err := rels.Revisions(o.name, o.channel)
	if err != nil {
		return nil, err
	}
	rev := uint64(1)
	if len(revs) > 0 {
		rev = revs[len(revs)-1] + 1
	}

	prog := newProgress(g, "publish "+o.name)
	prog.Start(size)
	res, err := chunkstore.Ingest(ctx, in.r, size, params, store, chunkstore.IngestOptions{Workers: o.workers, Level: level, Progress: prog.Add, Segments: in.segments})
	prog.Done()
	if err != nil {
		return nil, err
	}
	// Chunks and the whole-image digest are read in separate passes: an
	// input that changed meanwhile would give a manifest no terminal can
	// verify. Refuse it (nothing names the chunks already stored; gc
	// removes them).
	if err := in.unchanged(); err != nil {
		return nil, err
	}
	b := manifest.NewBuilder()
	for _, p := range res.Pieces {
		if p.Zero {
			b.AddZero(p.Size)
		} else {
			b.AddChunk(p.ID, uint32(p.Size))
		}
	}
	m := &manifest.Manifest{
		Kind: manifest.KindImage, Name: o.name, Channel: o.channel, Revision: rev,
		Created: g.now().UTC().Truncate(time.Second), Chunker: params, Compression: manifest.CompressionZstd,
		Size: size, Digest: res.Digest,
	}
	if o.expires > 0 {
		m.Expires = m.Created.Add(o.expires)
	}
	m.Chunks, m.Runs = b.Result()
	if in.files != nil {
		m.Kind = manifest.KindBundle
		if _, err := m.SetFileTable(in.files); err != nil {
			return nil, err
		}
	}
	m.SetMandatory(o.mandatory)
	env, err := manifest.Sign(m, key)
	if err != nil {
		return nil, err
	}
	// Chunks durable first, then the torrent and the manifest that name them.
	if err := store.Flush(ctx); err != nil {
		return nil, err
	}
	var torrent *swarm.Built
	var sides []manifest.Side
	if !o.noTorrent {
		if torrent, err = publishTorrent(ctx, o, m, env, revs, rels, store); err != nil {
			return nil, err
		}
		sides = []manifest.Side{{Kind: manifest.SideTorrentManifest, Data: env}, {Kind: manifest.SideTorrentInfo, Data: torrent.Info}}
		m.SetTorrents([]manifest.TorrentRef{torrent.Ref})
		if env, err = manifest.Sign(m, key); err != nil {
			return nil, err
		}
	}
	if err := rels.Put(env, m, sides...); err != nil {
		return nil, err
	}
	id, _ := manifest.ID(env)
	st := m.Stats()
	out := publishResult{
		Name: m.Name, Channel: m.Channel, Revision: rev, ID: id, Size: size, Chunks: len(m.Chunks),
		Extents: st.Extents, ZeroBytes: st.ZeroBytes, NewChunks: res.NewChunks, StoredBytesAdded: res.StoredAdded,
		ManifestBytes: len(env), Digest: res.Digest, Seconds: g.now().Sub(start).Seconds(),
	}
	if torrent != nil {
		out.InfoHash = hex.EncodeToString(torrent.Ref.InfoHash[:])
		out.Magnet = swarm.Magnet(torrent.Ref.InfoHash, torrent.Layout.Name, nil, nil)
	}
	if len(revs) > 0 {
		if prevEnv, _, err := rels.Read(o.name, o.channel, revs[len(revs)-1]); err == nil {
			if prev, err := manifest.Open(prevEnv); err == nil {
				out.Previous = delta.Compare(ctx, prev, m, func(id chunkstore.ID) (int64, bool) {
					i, err := store.Stat(ctx, id)
					return int64(i.Stored), err == nil
				}, store)
				out.Previous.Regions = nil
				if out.Previous.Files != nil {
					out.Previous.Files.Files = nil // counts only; imgctl diff lists them
				}
			}
		}
	}
	for _, from := range lastRevisions(revs, o.packsFrom) {
		fromEnv, _, err := rels.Read(o.name, o.channel, from)
		if err != nil {
			return nil, err
		}
		fm, err := manifest.Open(fromEnv)
		if err != nil {
			return nil, err
		}
		po := &packBuildOptions{store: o.store, channel: o.channel, encoder: o.packEncoder, refMiB: 16}
		pr, err := buildPack(ctx, g, po, key, fromEnv, fm, env, m)
		if err != nil {
			return nil, fmt.Errorf("published %s/%s@%d, but the pack from %d failed: %w", m.Name, m.Channel, rev, from, err)
		}
		out.Packs = append(out.Packs, pr)
	}
	if o.json {
		return &out, writeJSON(g.stdout, out)
	}
	fmt.Fprintf(g.stdout, "published %s/%s@%d  %s  %d chunks, %s zero, %d new chunks (%s stored), manifest %s, %.2fs\n",
		m.Name, m.Channel, rev, human(size), len(m.Chunks), human(st.ZeroBytes), res.NewChunks,
		human(res.StoredAdded), human(int64(len(env))), out.Seconds)
	if out.Previous != nil {
		fmt.Fprintf(g.stdout, "vs revision %d: %d new chunks, a terminal on it fetches %s\n",
			out.Previous.Old.Revision, out.Previous.NewChunks, human(out.Previous.FetchBytes))
	}
	for _, p := range out.Packs {
		printPack(g.stdout, p)
	}
	return &out, nil
}

// publishTorrent makes the release torrent of m (whose envelope without a
// torrent record is env, the torrent's first file); its info bytes and
// that envelope become side files of the release, written with it.
func publishTorrent(ctx context.Context, o *publishOptions, m *manifest.Manifest, env []byte, revs []uint64, rels *manifest.Releases, store *chunkstore.Local) (*swarm.Built, error) {
	if o.pieceLength == 0 {
		o.pieceLength = swarm.DefaultPieceLength
	}
	if o.pieceLength < 16<<10 || o.pieceLength&(o.pieceLength-1) != 0 {
		return nil, usagef("--piece-length %d: want a power of two of at least 16384", o.pieceLength)
	}
	var prev []*manifest.Manifest
	for i := len(revs) - 1; i >= 0 && len(prev) < 8; i-- {
		var pm *manifest.Manifest
		if b, _, err := rels.Read(m.Name, m.Channel, revs[i]); err == nil {
			pm, _ = manifest.Open(b)
		}
		prev = append(prev, pm)
	}
	built, err := swarm.Build(m, env, prev, func(id chunkstore.ID) (int64, error) {
		i, err := store.Stat(ctx, id)
		return int64(i.Stored), err
	}, func(id chunkstore.ID) ([]byte, error) {
		b, _, err := store.ReadStored(id)
		return b, err
	}, o.pieceLength)
	if err != nil {
		return nil, err
	}
	return built, nil
}

// publishInput is what publish reads: an image, or the content of a
// directory tree (bundle) with its file table.
type publishInput struct {
	r         io.ReaderAt
	size      int64
	files     []manifest.File // bundles
	segments  []int64         // bundles: chunker segments
	unchanged func() error    // nil if the input is as it was when opened
	close     func()
}

func openPublishInput(o *publishOptions, path string, params chunkstore.Params) (*publishInput, error) {
	switch o.kind {
	case "image", "":
		if o.mtime != "" || o.owner != "" {
			return nil, usagef("--mtime and --owner are for --kind bundle")
		}
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		size, err := imageSize(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		st0, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		return &publishInput{r: f, size: size, close: func() { f.Close() }, unchanged: func() error {
			if st1, err := f.Stat(); err != nil || st1.Size() != st0.Size() || !st1.ModTime().Equal(st0.ModTime()) {
				return fmt.Errorf("%s changed while it was being published: publish a file nobody writes to (a copy or a snapshot)", path)
			}
			return nil
		}}, nil
	case "bundle":
	default:
		return nil, usagef("--kind %q: want image or bundle", o.kind)
	}
	var opts partition.ScanOptions
	if o.mtime != "" {
		t, err := parseMTime(o.mtime)
		if err != nil {
			return nil, err
		}
		opts.MTime = &t
	}
	if o.owner != "" {
		var u, g uint32
		if _, err := fmt.Sscanf(o.owner, "%d:%d", &u, &g); err != nil {
			return nil, usagef("--owner %q: want UID:GID", o.owner)
		}
		opts.Owner = &[2]uint32{u, g}
	}
	raw, err := partition.ScanTree(path)
	if err != nil {
		return nil, err
	}
	files := opts.Apply(raw)
	t := partition.OpenTree(path, files, false)
	return &publishInput{
		r: t, size: t.Size(), files: files, segments: manifest.SegmentStarts(files, params.MinSize),
		close: func() { t.Close() },
		unchanged: func() error {
			now, err := partition.ScanTree(path)
			if err != nil {
				return err
			}
			if !reflect.DeepEqual(now, raw) {
				return fmt.Errorf("%s changed while it was being published: publish a tree nobody writes to (a copy or a snapshot)", path)
			}
			return nil
		},
	}, nil
}

// parseMTime reads --mtime: RFC 3339 or Unix seconds.
func parseMTime(s string) (time.Time, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return t, usagef("--mtime %q: want RFC 3339 (2026-01-02T15:04:05Z) or Unix seconds", s)
	}
	return t, nil
}
