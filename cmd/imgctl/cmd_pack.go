package main

import (
	"context"
	"crypto/sha1"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/transport/swarm"
	"github.com/spf13/cobra"
	"github.com/zeebo/blake3"
)

func newPackCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pack",
		Short: "Delta packs: the chunks one release lacks, compressed against its content",
		Long: `A delta pack from FROM to TO holds the chunks of TO that FROM lacks,
compressed with ranges of FROM's content as zstd dictionaries (docs/decisions/0006).
A terminal that holds FROM exactly (its running slot or installed bundle
release) fetches the pack instead of the chunks; every chunk it yields is
verified, and any failure falls back to the chunks.`,
	}
	cmd.AddCommand(newPackBuildCommand(g), newPackLsCommand(g))
	return cmd
}

type packBuildOptions struct {
	store, key, channel, encoder string
	segmentMiB, refMiB           int
	keepGzip                     bool
	json                         bool
}

func newPackBuildCommand(g *globalOptions) *cobra.Command {
	o := &packBuildOptions{}
	cmd := &cobra.Command{
		Use:   "build --store S --key K.key N@FROM N@TO",
		Short: "Build and sign the pack from one release to a later one",
		Long: `build writes the pack object into the store (deltas/<id>.dpack) and its signed
record beside release TO, where serve offers both. Encoding runs once per pair
on the publisher: about 1 s per 10 MB of chunks with the built-in encoder, or
6-7x that with --encoder zstd (the zstd command at -19: ~9 % smaller packs);
it takes no lock on the store (it reads committed chunks as serve does and
only adds files), so it can run in the background while releases are
published and served: nice -n 19 imgctl pack build ... &, or
systemd-run --nice=19 -p IOSchedulingClass=idle imgctl pack build ....
Gzip streams in the new chunks (Debian's changelogs and manual pages) that
GNU gzip's or zlib's encoder reproduces are carried inflated and deflated
again by the terminal, bit for bit, and segments of machine code may go
through an x86 branch filter (pack format 3; --keep-gzip writes format 2 for
terminals that predate it). Such a pack gets a lean twin that keeps the gzip
streams, which terminals on fast links take.
'publish --packs-from N' builds them before publish returns instead.
Terminals decode either in pure Go.`,
		Example: `  imgctl pack build --store /srv/imgctl --key keys/release.key terminal-os@41 terminal-os@42 --json`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.store == "" || o.key == "" {
				return usagef("pack build: --store and --key are required")
			}
			key, err := manifest.LoadPrivateKey(o.key)
			if err != nil {
				return err
			}
			fromEnv, from, err := loadRelease(o.store, o.channel, args[0])
			if err != nil {
				return err
			}
			toEnv, to, err := loadRelease(o.store, o.channel, args[1])
			if err != nil {
				return err
			}
			r, err := buildPack(cmd.Context(), g, o, key, fromEnv, from, toEnv, to)
			if err != nil {
				return err
			}
			if o.json {
				return writeJSON(g.stdout, r)
			}
			printPack(g.stdout, r)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.store, "store", "", "store holding both releases")
	f.StringVar(&o.key, "key", "", "private key to sign the pack record")
	f.StringVar(&o.channel, "channel", "stable", "channel for NAME@REV arguments without /CHANNEL")
	f.StringVar(&o.encoder, "encoder", "go", "go (built in) or zstd (the zstd command, -19: smaller, slower; terminals need nothing)")
	f.IntVar(&o.segmentMiB, "segment", 0, "MiB of chunks per segment (default 8 for images, 4 for bundles; terminal memory grows with segment + reference)")
	f.IntVar(&o.refMiB, "reference", 16, "MiB of FROM referenced per segment")
	f.BoolVar(&o.keepGzip, "keep-gzip", false, "carry gzip streams as they are instead of inflated (pack format 2, which terminals before format 3 read)")
	f.BoolVar(&o.json, "json", false, "print the result as JSON")
	return cmd
}

type packResult struct {
	Name       string        `json:"name"`
	Channel    string        `json:"channel"`
	From       uint64        `json:"from"`
	To         uint64        `json:"to"`
	Pack       chunkstore.ID `json:"pack"`
	Size       int64         `json:"size"`
	Chunks     int           `json:"chunks"`
	PlainBytes int64         `json:"plain_bytes"`
	// ChunkBytes is what the same chunks cost fetched one by one (stored).
	ChunkBytes int64   `json:"chunk_bytes"`
	Ratio      float64 `json:"ratio"`
	Segments   int     `json:"segments,omitempty"` // known when built
	RefBytes   int64   `json:"reference_bytes,omitempty"`
	// Regzipped counts the gzip streams the pack carries inflated (and
	// the terminal deflates again), and their compressed bytes.
	Regzipped      int   `json:"regzipped,omitempty"`
	RegzippedBytes int64 `json:"regzipped_bytes,omitempty"`
	// Filtered counts segments encoded through the x86 filter.
	Filtered int `json:"filtered,omitempty"`
	// Lean is the twin pack that keeps them compressed, for fast links.
	Lean    *manifest.PackObject `json:"lean,omitempty"`
	Encoder string               `json:"encoder,omitempty"`
	Seconds float64              `json:"seconds,omitempty"`
}

func printPack(w io.Writer, r *packResult) {
	fmt.Fprintf(w, "pack %s/%s %d→%d: %s for %d chunks (%s one by one, %.0f %%), %d segments, %s of %d referenced; %s\n",
		r.Name, r.Channel, r.From, r.To, human(r.Size), r.Chunks, human(r.ChunkBytes), 100*r.Ratio, r.Segments,
		human(r.RefBytes), r.From, r.Pack.Short())
	if r.Lean != nil {
		fmt.Fprintf(w, "  %d gzip streams (%s) carried inflated; lean twin for fast links: %s, %s\n",
			r.Regzipped, human(r.RegzippedBytes), human(r.Lean.Size), r.Lean.Pack.Short())
	}
}

// buildPack builds, stores and signs the pack from→to.
// It reads the store as servers do (chunkstore.Dir: committed chunks, no
// lock) and writes only new files (the pack, its side records), so it runs
// beside publishes, serves and other builds.
func buildPack(ctx context.Context, g *globalOptions, o *packBuildOptions, key manifest.PrivateKey,
	fromEnv []byte, from *manifest.Manifest, toEnv []byte, to *manifest.Manifest) (*packResult, error) {
	start := g.now()
	store, err := chunkstore.OpenDir(o.store)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	if from.Name != to.Name || from.Channel != to.Channel || from.Kind != to.Kind || from.Revision >= to.Revision {
		return nil, usagef("pack: from %s/%s@%d to %s/%s@%d: want two releases of one name and channel, the older first",
			from.Name, from.Channel, from.Revision, to.Name, to.Channel, to.Revision)
	}
	seg := o.segmentMiB
	if seg <= 0 {
		// Measured (decisions/0006): bundles gain from small segments (a
		// changed binary's reference is its old version, and fewer of them
		// share a budget), images slightly from larger ones.
		seg = 8
		if to.Kind == manifest.KindBundle {
			seg = 4
		}
	}
	opts := delta.PackOptions{SegmentSize: seg << 20, RefBudget: o.refMiB << 20, KeepGzip: o.keepGzip}
	switch o.encoder {
	case "go", "":
	case "zstd":
		if _, err := exec.LookPath("zstd"); err != nil {
			return nil, usagef("--encoder zstd needs the zstd command (Debian package zstd)")
		}
		opts.Encode = zstdCommandEncoder(ctx)
	default:
		return nil, usagef("--encoder %q: want go or zstd", o.encoder)
	}
	prog := newProgress(g, fmt.Sprintf("pack %d→%d", from.Revision, to.Revision))
	missing := delta.PackChunks(from, to)
	var plain int64
	for _, c := range missing {
		plain += int64(c.Size)
	}
	prog.Start(plain)
	opts.Progress = prog.Add
	content := delta.StoreReader(ctx, store, from)
	id, st, err := writePack(ctx, o.store, from, to, content, store, opts)
	prog.Done()
	if err != nil {
		return nil, err
	}
	// A pack with gzip streams to rebuild comes with a lean twin that
	// keeps them: terminals on a fast link take that one (decisions/0006).
	var lean *manifest.PackObject
	if st.Regzipped > 0 {
		lopts := opts
		lopts.KeepGzip, lopts.Progress = true, nil
		lid, lst, err := writePack(ctx, o.store, from, to, content, store, lopts)
		if err != nil {
			return nil, err
		}
		lean = &manifest.PackObject{Pack: lid, Size: lst.Size}
	}
	// The pack's own torrent, and the lean twin's: terminals with --p2p
	// take either from peers.
	info, tref, err := packTorrent(o.store, id)
	if err != nil {
		return nil, err
	}
	var leanInfo []byte
	var leanTorrent *manifest.TorrentRef
	if lean != nil {
		if leanInfo, leanTorrent, err = packTorrent(o.store, lean.Pack); err != nil {
			return nil, err
		}
	}
	fid, _ := manifest.ID(fromEnv)
	tid, _ := manifest.ID(toEnv)
	var chunkBytes int64
	for _, c := range missing {
		if n, ok := store.StoredSize(c.ID); ok {
			chunkBytes += n
		}
	}
	rec := &manifest.PackRecord{Name: to.Name, Channel: to.Channel, From: from.Revision, To: to.Revision, FromID: fid, ToID: tid,
		FromDigest: from.Digest, Pack: id, Size: st.Size, Chunks: st.Chunks, PlainBytes: st.PlainBytes,
		ChunksDigest: manifest.ChunkListDigest(missing), ChunkBytes: chunkBytes, Created: g.now().UTC().Truncate(time.Second),
		Torrent: tref, Regzip: st.RegzipInflated, Lean: lean, LeanTorrent: leanTorrent, Format: st.Format}
	env, err := manifest.SignPackRecord(rec, key)
	if err != nil {
		return nil, err
	}
	rels := manifest.OpenReleases(o.store)
	if err := rels.PutSide(to.Name, to.Channel, to.Revision, manifest.SidePackInfo(from.Revision), info); err != nil {
		return nil, err
	}
	if leanInfo != nil {
		if err := rels.PutSide(to.Name, to.Channel, to.Revision, manifest.SidePackLeanInfo(from.Revision), leanInfo); err != nil {
			return nil, err
		}
	}
	if err := rels.PutSide(to.Name, to.Channel, to.Revision, manifest.SidePack(from.Revision), env); err != nil {
		return nil, err
	}
	r := &packResult{Name: to.Name, Channel: to.Channel, From: from.Revision, To: to.Revision, Pack: id, Size: st.Size,
		Chunks: st.Chunks, PlainBytes: st.PlainBytes, ChunkBytes: chunkBytes, Segments: st.Segments, RefBytes: st.RefBytes,
		Regzipped: st.Regzipped, RegzippedBytes: st.RegzippedBytes, Filtered: st.Filtered, Lean: lean,
		Encoder: o.encoder, Seconds: g.now().Sub(start).Seconds()}
	if chunkBytes > 0 {
		r.Ratio = float64(st.Size) / float64(chunkBytes)
	}
	return r, nil
}

// packTorrent builds the single-file torrent of the pack object id in the
// store and returns its info bytes and their reference.
func packTorrent(root string, id chunkstore.ID) ([]byte, *manifest.TorrentRef, error) {
	info, err := swarm.BuildFile(manifest.PackPath(root, id))
	if err != nil {
		return nil, nil, err
	}
	return info, &manifest.TorrentRef{InfoHash: sha1.Sum(info), InfoSize: len(info), InfoDigest: chunkstore.Sum(info)}, nil
}

// writePack builds the pack from→to into the store's deltas/ directory (a
// temporary file, synced and renamed to its BLAKE3) and returns its ID.
func writePack(ctx context.Context, root string, from, to *manifest.Manifest, content io.ReaderAt, chunks chunkstore.Getter,
	opts delta.PackOptions) (chunkstore.ID, delta.PackStats, error) {
	var id chunkstore.ID
	dir := filepath.Dir(manifest.PackPath(root, chunkstore.ID{}))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return id, delta.PackStats{}, err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return id, delta.PackStats{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := blake3.New()
	st, err := delta.BuildPack(ctx, io.MultiWriter(tmp, h), from, to, content, chunks, opts)
	if err != nil {
		return id, st, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return id, st, err
	}
	if err := tmp.Sync(); err != nil {
		return id, st, err
	}
	copy(id[:], h.Sum(nil))
	if err := os.Rename(tmp.Name(), manifest.PackPath(root, id)); err != nil {
		return id, st, err
	}
	return id, st, chunkstore.SyncDir(dir)
}

// zstdCommandEncoder encodes a segment with the zstd command against its
// reference (`zstd -19 --patch-from`), whose frames the built-in decoder
// reads (decisions/0006).
func zstdCommandEncoder(ctx context.Context) func(plain, ref []byte) ([]byte, error) {
	return func(plain, ref []byte) ([]byte, error) {
		d, err := os.MkdirTemp("", "imgctl-pack-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		in, refPath, out := filepath.Join(d, "in"), filepath.Join(d, "ref"), filepath.Join(d, "out")
		if err := os.WriteFile(in, plain, 0o600); err != nil {
			return nil, err
		}
		args := []string{"-q", "-f", "-19", "--single-thread", "--no-check", "-o", out}
		if len(ref) > 0 {
			if err := os.WriteFile(refPath, ref, 0o600); err != nil {
				return nil, err
			}
			args = append(args, "--patch-from="+refPath)
		}
		if b, err := exec.CommandContext(ctx, "zstd", append(args, in)...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("zstd: %v: %s", err, b)
		}
		return os.ReadFile(out)
	}
}

func newPackLsCommand(g *globalOptions) *cobra.Command {
	var store, channel string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls --store S NAME",
		Short: "List the packs of a release name: from, to, size against the chunks they replace",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if store == "" {
				return usagef("pack ls: --store is required")
			}
			rels := manifest.OpenReleases(store)
			revs, err := rels.Revisions(args[0], channel)
			if err != nil {
				return err
			}
			var out []*packResult
			for _, to := range revs {
				for _, from := range rels.PackFroms(args[0], channel, to) {
					env, err := rels.ReadSide(args[0], channel, to, manifest.SidePack(from))
					if err != nil {
						continue
					}
					rec, err := manifest.OpenPackRecord(env)
					if err != nil {
						continue
					}
					r := &packResult{Name: rec.Name, Channel: rec.Channel, From: rec.From, To: rec.To, Pack: rec.Pack,
						Size: rec.Size, Chunks: rec.Chunks, PlainBytes: rec.PlainBytes, ChunkBytes: rec.ChunkBytes, Lean: rec.Lean}
					if rec.ChunkBytes > 0 {
						r.Ratio = float64(rec.Size) / float64(rec.ChunkBytes)
					}
					out = append(out, r)
				}
			}
			if asJSON {
				if out == nil {
					out = []*packResult{}
				}
				return writeJSON(g.stdout, out)
			}
			for _, r := range out {
				fmt.Fprintf(g.stdout, "%s/%s %d→%d  %s  %d chunks (%s plain, %s as chunks: %.0f %%)  %s\n", r.Name, r.Channel, r.From, r.To,
					human(r.Size), r.Chunks, human(r.PlainBytes), human(r.ChunkBytes), 100*r.Ratio, r.Pack.Short())
				if r.Lean != nil {
					fmt.Fprintf(g.stdout, "  lean twin (gzip streams kept, for fast links)  %s  %s\n", human(r.Lean.Size), r.Lean.Pack.Short())
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&store, "store", "", "store")
	cmd.Flags().StringVar(&channel, "channel", "stable", "channel")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// lastRevisions returns the newest n of revs, newest first (publish
// --packs-from: the revisions a new release gets packs from).
func lastRevisions(revs []uint64, n int) []uint64 {
	var out []uint64
	for i := len(revs) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, revs[i])
	}
	return out
}
