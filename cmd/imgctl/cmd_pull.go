package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/partition"
	"github.com/imgctl/imgctl/transport"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

type pullOptions struct {
	from, name, channel, cache, out string
	trust, seeds                    []string
	revision                        uint64
	concurrency, workers            int
	json                            bool
	lockTimeout                     time.Duration
	slots                           string
	noFlip                          bool
	noPacks                         bool
	p2p                             p2pOptions

	// Hooks for slot pulls (cmd_slot.go): before anything is written to
	// out, and after out verified against the manifest.
	beforeWrite func(m *manifest.Manifest, env []byte) error
	afterVerify func(m *manifest.Manifest, env []byte) error
	// slot and booted name the slots of a slot pull (in the result).
	slot, booted string
}

// baseManifest is a signed manifest of the release name this terminal
// holds (a seed given as FILE:MANIFEST, as slot pulls give the running
// slot), which lets the origin send the new manifest as a delta.
func (o *pullOptions) baseManifest() []byte {
	for _, arg := range o.seeds {
		if _, man := parseSeed(arg); man != "" {
			if b, err := os.ReadFile(man); err == nil && len(b) <= manifest.MaxEnvelope {
				return b
			}
		}
	}
	return nil
}

func (o *pullOptions) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&o.from, "from", "", "origin or branch cache URL (http://10.0.0.1:8420), or a store directory (a USB stick, an NFS mount)")
	f.StringSliceVar(&o.trust, "trust", nil, "trusted public key or trust file (repeatable)")
	f.StringVar(&o.name, "name", "", "release name")
	f.StringVar(&o.channel, "channel", "stable", "release channel")
	f.Uint64Var(&o.revision, "revision", 0, "pull this revision instead of the latest")
	f.StringArrayVar(&o.seeds, "seed", nil, "FILE or FILE:MANIFEST holding chunks to reuse, e.g. the running slot (repeatable)")
	f.StringVar(&o.cache, "cache", "", "local chunk cache and pull state (default /var/cache/imgctl as root, else ~/.cache/imgctl)")
	f.StringVar(&o.out, "out", "", "file or block device to write the image into, in place")
	f.IntVar(&o.concurrency, "concurrency", 4, "HTTP requests in flight")
	f.IntVar(&o.workers, "workers", 0, "local copy workers (0: one per CPU)")
	f.BoolVar(&o.json, "json", false, "print the result as JSON")
	f.DurationVar(&o.lockTimeout, "lock-timeout", 30*time.Second, "how long to wait for another pull holding the cache")
	f.StringVar(&o.slots, "slots", "", "slot config (e.g. "+partition.DefaultConfigPath+"): write the inactive slot instead of --out, with the running slot as seed, then flip")
	f.BoolVar(&o.noFlip, "no-flip", false, "with --slots: write and verify the inactive slot, do not make it primary")
	f.BoolVar(&o.noPacks, "no-packs", false, "never use a delta pack, fetch chunks only")
	o.p2p.AddFlags(f)
}

func newPullCommand(g *globalOptions) *cobra.Command {
	o := &pullOptions{}
	cmd := &cobra.Command{
		Use:   "pull --from URL --trust K.pub --name N --out FILE [--seed FILE]...",
		Short: "Verify a release and write it, fetching only the chunks not held locally",
		Long: `pull fetches the signed manifest of NAME on CHANNEL, verifies it (signature,
expiry, name/channel, no revision older than one already pulled into the
cache), plans where every chunk comes from (already in place in --out, a
seed, the cache, or the network), fetches the missing chunks with every one
verified before use, writes --out in place, and checks the whole image
against the manifest's BLAKE3. A seed written by an earlier pull is used by
offset; any other seed is cut with the release's chunker to find chunks.
Every chunk taken from a seed is re-hashed first. An interrupted pull run
again fetches only what it still lacks.`,
		Example: `  imgctl pull --from http://origin:8420 --trust keys/release.pub --name terminal-os \
      --seed /dev/mmcblk0p2 --out /dev/mmcblk0p3 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.p2p.check(); err != nil {
				return err
			}
			if o.slots != "" {
				_, err := runPullSlots(cmd.Context(), g, o)
				return err
			}
			_, err := runPull(cmd.Context(), g, o)
			return err
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

type pullResult struct {
	Name           string        `json:"name"`
	Channel        string        `json:"channel"`
	Revision       uint64        `json:"revision"`
	ID             chunkstore.ID `json:"id"`
	Size           int64         `json:"size"`
	Out            string        `json:"out"`
	BytesFetched   int64         `json:"bytes_fetched"`
	ManifestBytes  int           `json:"manifest_bytes"`
	BytesFromSeed  int64         `json:"bytes_from_seed"`
	BytesFromCache int64         `json:"bytes_from_cache"`
	// BytesFromPacks is what was read of a delta pack (also counted in
	// bytes_fetched); its chunks count as fetched.
	BytesFromPacks int64 `json:"bytes_from_packs"`
	// PackLean: the pack was the lean form of its record (gzip streams
	// kept as they are), taken because the link is fast.
	PackLean      bool         `json:"pack_lean,omitempty"`
	BytesInPlace  int64        `json:"bytes_in_place"`
	ChunksFetched int          `json:"chunks_fetched"`
	PlainFetched  int64        `json:"plain_bytes_fetched"`
	Chunks        int          `json:"chunks"`
	ZeroBytes     int64        `json:"zero_bytes"`
	Fallbacks     int          `json:"fallbacks"`
	Plan          delta.Report `json:"plan"`
	Verified      bool         `json:"verified"`
	Seconds       float64      `json:"seconds"`
	// Phases are wall-clock milliseconds per step, for diagnosis.
	Phases map[string]int64 `json:"phases_ms"`
	// Slot pulls: the slot written and the slot running.
	Slot   string `json:"slot,omitempty"`
	Booted string `json:"booted,omitempty"`
	// P2P pulls: payload from peers and from webseeds, i.e. chunks that
	// came over HTTP from the origin or a branch cache when the swarm
	// stalled (both also counted in bytes_fetched), and the torrent.
	BytesFromPeers    *int64 `json:"bytes_from_peers,omitempty"`
	BytesFromWebSeeds *int64 `json:"bytes_from_webseeds,omitempty"`
	InfoHash          string `json:"infohash,omitempty"`
}

// fileRecord is the cache's memory of what a file holds.
type fileRecord struct {
	Manifest chunkstore.ID `json:"manifest"`
	Complete bool          `json:"complete"`
	Size     int64         `json:"size"`
	ModTime  int64         `json:"mtime_ns"`
}

func defaultCacheDir() string {
	if os.Geteuid() == 0 {
		return "/var/cache/imgctl"
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "imgctl")
	}
	return filepath.Join(os.TempDir(), "imgctl-cache")
}

func revKey(name, channel string) string { return "rev/" + name + "/" + channel }

// highestRevision is the highest revision of name/channel this cache has
// taken: a manifest below it is a rollback attack (or a deliberate
// downgrade, which the caller must allow explicitly).
func highestRevision(cache *chunkstore.Local, name, channel string) uint64 {
	if b, _ := cache.GetMeta(revKey(name, channel)); len(b) == 8 {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// recordRevision raises the cache's highest revision of m's name/channel
// to m's.
func recordRevision(cache *chunkstore.Local, m *manifest.Manifest) error {
	if m.Revision <= highestRevision(cache, m.Name, m.Channel) {
		return nil
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], m.Revision)
	return cache.PutMeta(revKey(m.Name, m.Channel), b[:])
}

// openFetch opens what a pull and a bundle apply start from: the source
// (origin URL or store directory) and the local cache (*cacheDir, the
// default when empty). Fetched chunks are committed at least every second:
// a crash loses at most that much fetching.
func openFetch(g *globalOptions, from string, concurrency int, cacheDir *string, lockTimeout time.Duration) (source, *chunkstore.Local, func(), error) {
	client, closeSource, err := openSource(g, from, concurrency)
	if err != nil {
		return nil, nil, nil, err
	}
	if *cacheDir == "" {
		*cacheDir = defaultCacheDir()
	}
	cache, err := chunkstore.Open(*cacheDir, chunkstore.Options{Timeout: lockTimeout, FlushEvery: time.Second, Now: g.now})
	if err != nil {
		closeSource()
		return nil, nil, nil, err
	}
	return client, cache, func() { cache.Close(); closeSource() }, nil
}

func manifestKey(id chunkstore.ID) string { return "manifest/" + id.String() }

func fileKey(path string) string { return "file/" + path }

func loadFileRecord(c *chunkstore.Local, path string) (*fileRecord, []byte) {
	b, err := c.GetMeta(fileKey(path))
	if err != nil || b == nil {
		return nil, nil
	}
	var r fileRecord
	if json.Unmarshal(b, &r) != nil {
		return nil, nil
	}
	env, err := c.GetMeta(manifestKey(r.Manifest))
	if err != nil || env == nil {
		return nil, nil
	}
	return &r, env
}

func saveFileRecord(c *chunkstore.Local, path string, r fileRecord) error {
	if st, err := os.Stat(path); err == nil {
		r.Size, r.ModTime = st.Size(), st.ModTime().UnixNano()
	}
	b, _ := json.Marshal(r)
	return c.PutMeta(fileKey(path), b)
}

// source is where a pull gets manifests and chunks: an HTTP origin or a
// store directory.
type source interface {
	Manifest(ctx context.Context, name, channel string, rev uint64) ([]byte, error)
	Fetch(ctx context.Context, refs []manifest.ChunkRef, fn func(chunkstore.Chunk) error) error
	// FetchBatches is Fetch that says where its batches begin and end
	// (delta.BatchFetcher).
	FetchBatches(ctx context.Context, refs []manifest.ChunkRef, open func() (func(chunkstore.Chunk) error, func() error)) error
	Received() int64
}

func openSource(g *globalOptions, from string, concurrency int) (source, func(), error) {
	if from == "" {
		return noSource{}, func() {}, nil
	}
	if strings.HasPrefix(from, "http://") || strings.HasPrefix(from, "https://") {
		c, err := transport.NewClient(from, transport.ClientOptions{Concurrency: concurrency, Logger: g.log})
		if err != nil {
			return nil, nil, usageError{err}
		}
		return c, func() {}, nil
	}
	if st, err := os.Stat(filepath.Join(strings.TrimPrefix(from, "file://"), "manifests")); err != nil || !st.IsDir() {
		return nil, nil, usagef("--from %q: neither an http(s) URL nor a store directory", from)
	}
	d, err := transport.OpenDirSource(strings.TrimPrefix(from, "file://"))
	if err != nil {
		return nil, nil, err
	}
	return d, func() { d.Close() }, nil
}

// noSource is the source of a magnet pull without --from: everything
// comes from the swarm.
type noSource struct{}

var errNoOrigin = errors.New("no --from origin to fetch from (the swarm did not deliver everything)")

func (noSource) Manifest(context.Context, string, string, uint64) ([]byte, error) {
	return nil, errNoOrigin
}
func (noSource) Fetch(context.Context, []manifest.ChunkRef, func(chunkstore.Chunk) error) error {
	return errNoOrigin
}
func (noSource) FetchBatches(context.Context, []manifest.ChunkRef, func() (func(chunkstore.Chunk) error, func() error)) error {
	return errNoOrigin
}
func (noSource) Received() int64 { return 0 }

// storingFetcher fetches from the source and keeps every chunk in the cache
// (canonical stored bytes) before it is written out, so an interrupted pull
// does not fetch it again.
type storingFetcher struct {
	client source
	cache  *chunkstore.Local
}

func (f storingFetcher) Fetch(ctx context.Context, refs []manifest.ChunkRef, fn func(chunkstore.Chunk) error) error {
	return f.client.Fetch(ctx, refs, f.storing(ctx, fn))
}

func (f storingFetcher) storing(ctx context.Context, fn func(chunkstore.Chunk) error) func(chunkstore.Chunk) error {
	return func(c chunkstore.Chunk) error {
		// Only chunks the plan found missing are fetched (chunkstore.Held).
		if _, err := f.cache.PutNew(ctx, c); err != nil {
			return err
		}
		return fn(c)
	}
}

// FetchBatches passes the source's batches on (delta.BatchFetcher).
func (f storingFetcher) FetchBatches(ctx context.Context, refs []manifest.ChunkRef, open func() (func(chunkstore.Chunk) error, func() error)) error {
	return f.client.FetchBatches(ctx, refs, func() (func(chunkstore.Chunk) error, func() error) {
		put, done := open()
		return f.storing(ctx, put), done
	})
}

// FetchBatchesInto passes the source's batches on, decoding into the
// receiver's buffers where the source can (delta.BatchInto).
func (f storingFetcher) FetchBatchesInto(ctx context.Context, refs []manifest.ChunkRef, open func() (func(chunkstore.ID, int) []byte, func(chunkstore.Chunk) error, func() error)) error {
	return delta.AsBatchInto(f.client).FetchBatchesInto(ctx, refs, func() (func(chunkstore.ID, int) []byte, func(chunkstore.Chunk) error, func() error) {
		into, put, done := open()
		return into, f.storing(ctx, put), done
	})
}

// inCache looks up which of m's chunks cache holds, and where: the
// assembler reads those chunks there, without an index lookup each
// (chunkstore.Held). A failed lookup only means "fetch it".
func inCache(cache *chunkstore.Local, m *manifest.Manifest) chunkstore.Held {
	ids := make([]chunkstore.ID, len(m.Chunks))
	for i, c := range m.Chunks {
		ids[i] = c.ID
	}
	h, _ := cache.Holds(ids)
	return h
}

// parseSeed splits FILE[:MANIFEST].
func parseSeed(arg string) (file, man string) {
	if _, err := os.Stat(arg); err == nil {
		return arg, ""
	}
	if i := strings.LastIndex(arg, ":"); i > 0 {
		return arg[:i], arg[i+1:]
	}
	return arg, ""
}

func runPull(ctx context.Context, g *globalOptions, o *pullOptions) (*pullResult, error) {
	start := g.now()
	timer := newPhases(g.now)
	phase := timer.done
	if (o.from == "" && o.p2p.magnet == "") || o.name == "" || o.out == "" || len(o.trust) == 0 {
		return nil, usagef("pull: --from (or --magnet), --trust, --name and --out (or --slots) are required")
	}
	trust, err := manifest.LoadTrust(o.trust...)
	if err != nil {
		return nil, err
	}
	client, cache, closeFetch, err := openFetch(g, o.from, o.concurrency, &o.cache, o.lockTimeout)
	if err != nil {
		return nil, err
	}
	defer closeFetch()
	outPath, err := filepath.Abs(o.out)
	if err != nil {
		return nil, err
	}

	// 1-2: manifest, verified before anything else looks at it.
	var sw *pullSwarm
	defer func() { sw.close() }()
	var env []byte
	if o.p2p.magnet != "" {
		sw, env, err = joinMagnet(ctx, g, &o.p2p, cache)
	} else {
		env, err = fetchManifest(ctx, client, o.name, o.channel, o.revision, o.baseManifest())
	}
	if err != nil {
		return nil, err
	}
	policy := manifest.Policy{Trust: trust, Now: g.now, Name: o.name, Channel: o.channel,
		MinRevision: highestRevision(cache, o.name, o.channel), Kind: manifest.KindImage}
	m, err := manifest.Verify(env, policy)
	if err != nil {
		return nil, err
	}
	id, _ := manifest.ID(env)
	if err := cache.PutMeta(manifestKey(id), env); err != nil {
		return nil, err
	}
	if sw != nil {
		sw.h.State().SetManifest(m)
	} else if o.p2p.enabled {
		// The swarm is an accelerator: without it the pull goes on over HTTP.
		if sw, err = joinRelease(ctx, g, &o.p2p, m, policy, client, cache); err != nil {
			if errors.Is(err, manifest.ErrVerification) {
				return nil, err
			}
			g.log.Warn("not using the swarm", "err", err)
		}
	}
	httpBefore := client.Received() // manifest and .torrent
	phase("manifest")
	g.logf("pull %s/%s@%d: %s, %d chunks", m.Name, m.Channel, m.Revision, human(m.Size), len(m.Chunks))

	// Which chunks the cache holds (an index lookup per chunk) is asked
	// while the seeds are opened and the target is prepared.
	cached := make(chan chunkstore.Held, 1)
	go func() { cached <- inCache(cache, m) }()

	// 3: seeds, what --out holds, and the hook that takes a slot out before
	// it is written (a bootloader tool and an fsynced record, ~7 ms), all
	// at once: each waits on files or processes. A seed that cannot be
	// opened fails the pull after the hook ran: the target slot is then
	// marked bad without having been written, as after a failed write.
	want := map[uint32]bool{}
	for _, c := range m.Chunks {
		want[c.Size] = true
	}
	outSt, outErr := os.Stat(outPath)
	type seedArg struct{ file, man string }
	seeds := make([]seedArg, len(o.seeds))
	for i, arg := range o.seeds {
		file, man := parseSeed(arg)
		if st, err := os.Stat(file); err == nil && outErr == nil && os.SameFile(st, outSt) {
			return nil, usagef("--seed %s is the --out file: a pull never reads what it overwrites (the slot being written is found in place anyway)", file)
		}
		seeds[i] = seedArg{file, man}
	}
	before := make(chan error, 1)
	if o.beforeWrite != nil {
		go func() { before <- o.beforeWrite(m, env) }()
	} else {
		before <- nil
	}
	// What --out already holds, if the cache remembers it (not asked for
	// an output that is new or empty).
	inPlacec := make(chan *manifest.Manifest, 1)
	go func() {
		if outErr != nil || (outSt.Mode().IsRegular() && outSt.Size() == 0) {
			inPlacec <- nil
		} else if rec, renv := loadFileRecord(cache, outPath); rec == nil {
			inPlacec <- nil
		} else if pm, err := manifest.Open(renv); err != nil {
			inPlacec <- nil
		} else {
			inPlacec <- pm
		}
	}()
	var seedIdx []delta.SeedIndex
	var seedFiles []io.ReaderAt
	var held []heldRelease // seeds whose exact content is known
	var seedErr error
	for _, sa := range seeds {
		idx, f, h, err := openSeed(ctx, g, cache, sa.file, sa.man, m, want)
		if err != nil {
			seedErr = fmt.Errorf("seed %s: %w", sa.file, err)
			break
		}
		defer f.Close()
		seedIdx = append(seedIdx, idx)
		seedFiles = append(seedFiles, f)
		if h != nil {
			held = append(held, *h)
		}
	}
	inPlace := <-inPlacec
	if err := errors.Join(seedErr, <-before); err != nil {
		return nil, err
	}
	out, err := openTarget(outPath, m.Size)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	if out.fresh {
		inPlace = nil
	}
	// From here on --out holds a mix; remember that it is becoming m (every
	// chunk found in place is re-hashed, so a stale belief costs nothing).
	if err := saveFileRecord(cache, outPath, fileRecord{Manifest: id}); err != nil {
		return nil, err
	}

	phase("seeds")
	// 4: plan.
	inc := <-cached
	plan := delta.NewPlan(delta.Inputs{Target: m, InPlace: inPlace, Seeds: seedIdx, Have: inc.Has})
	g.logf("plan: %s in place, %s from seeds, %s from cache, %s to fetch (%d chunks), %s zero",
		human(plan.Report.InPlaceBytes), human(plan.Report.SeedBytes), human(plan.Report.CacheBytes),
		human(plan.Report.FetchBytes), plan.Report.FetchChunks, human(plan.Report.ZeroBytes))

	// 5-6: fetch and assemble.
	var fetch delta.Fetcher = storingFetcher{client: client, cache: cache}
	if sw != nil {
		fetch = swarmFetcher{s: sw, o: &o.p2p, g: g, cache: cache, http: fetch}
	}
	// A delta pack from a release a seed holds exactly, when one is offered
	// and pays: its chunks stream in while seeds are copied; whatever it
	// does not yield comes from the fetcher above.
	var pack *packFetcher
	if !o.noPacks {
		if pack, err = usePack(ctx, g, client, trust, held, env, m, plan, fetch, sw, &o.p2p, o.cache); err != nil {
			g.log.Warn("not using a delta pack", "err", err)
		} else if pack != nil {
			fetch = pack
		}
	}
	asm := &delta.Assembler{
		Out: out, Seeds: seedFiles, Cache: inc, Fetch: fetch,
		ZeroFill: !out.fresh, Digest: true, TrustCache: true, Workers: o.workers, Progress: newProgress(g, "write"), Logger: g.log,
	}
	phase("plan")
	st, err := asm.Run(ctx, plan)
	phase("assemble")
	// The cache's new chunks and the output reach the disk together (two
	// fsyncs at once instead of one after the other).
	flushed := make(chan error, 1)
	go func() { flushed <- cache.Flush(context.Background()) }()
	var syncErr error
	if err == nil {
		syncErr = out.Sync()
	}
	if ferr := <-flushed; err == nil {
		err = ferr
	}
	if err != nil {
		return nil, err
	}
	if syncErr != nil {
		return nil, fmt.Errorf("sync %s: %w", outPath, syncErr)
	}
	phase("sync")
	// The digest was computed from what was read back while writing; it is
	// compared only now that the output is synced.
	if err := delta.CheckDigest(out, m, st.Digest); err != nil {
		return nil, err
	}
	if err := saveFileRecord(cache, outPath, fileRecord{Manifest: id, Complete: true}); err != nil {
		return nil, err
	}
	if o.afterVerify != nil {
		if err := o.afterVerify(m, env); err != nil {
			return nil, err
		}
	}
	if err := recordRevision(cache, m); err != nil {
		return nil, err
	}
	phase("record")
	res := &pullResult{
		Name: m.Name, Channel: m.Channel, Revision: m.Revision, ID: id, Size: m.Size, Out: outPath,
		BytesFetched: client.Received(), ManifestBytes: len(env), BytesFromSeed: st.SeedBytes,
		BytesFromCache: st.CacheBytes, BytesFromPacks: pack.used(), PackLean: pack.leanUsed(), BytesInPlace: st.InPlaceBytes, ChunksFetched: st.FetchChunks,
		PlainFetched: st.FetchBytes, Chunks: len(m.Chunks), ZeroBytes: plan.Report.ZeroBytes,
		Fallbacks: st.Fallbacks, Plan: plan.Report, Verified: true, Seconds: g.now().Sub(start).Seconds(), Phases: timer.ms,
		Slot: o.slot, Booted: o.booted,
	}
	if sw != nil {
		sw.written, sw.m, sw.seeds = writtenFile(outPath), m, seedIdx
		st := sw.h.Stats()
		// Webseeds are the HTTP origin and branch caches: imgctl fetches
		// from them itself (transport/swarm: DisableWebseeds).
		web := st.FromWebSeeds + client.Received() - httpBefore
		peers := st.FromPeers + pack.fromPeers()
		res.BytesFromPeers, res.BytesFromWebSeeds = &peers, &web
		res.BytesFetched += peers + st.FromWebSeeds
		res.InfoHash = sw.h.InfoHash().HexString()
	}
	defer func() {
		if err := sw.seed(ctx, g, &o.p2p); err != nil {
			g.log.Warn("seeding", "err", err)
		}
		pack.remove() // seeded (or not): the release is written, the pack is spent
	}()
	if o.json {
		return res, writeJSON(g.stdout, res)
	}
	fmt.Fprintf(g.stdout, "pulled %s/%s@%d into %s: %s verified; fetched %s (%d chunks) of %s; %s from seeds, %s from cache, %s in place; %.2fs\n",
		m.Name, m.Channel, m.Revision, o.out, human(m.Size), human(res.BytesFetched), res.ChunksFetched,
		human(m.Size), human(res.BytesFromSeed), human(res.BytesFromCache), human(res.BytesInPlace), res.Seconds)
	return res, nil
}

// openSeed opens a seed and indexes it: by a given manifest, by the cache's
// record of the file (if the file is unchanged since), or by cutting it.
//
// The held release (its signed manifest, decoded, and the file) is
// returned when the layout is known from a manifest (a slot record, an
// earlier complete pull, FILE:MANIFEST), else nil.
func openSeed(ctx context.Context, g *globalOptions, cache *chunkstore.Local, file, manPath string, target *manifest.Manifest, want map[uint32]bool) (delta.SeedIndex, *os.File, *heldRelease, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, nil, nil, err
	}
	f, err := os.Open(abs)
	if err != nil {
		return nil, nil, nil, err
	}
	known := func(env []byte, sm *manifest.Manifest) (delta.SeedIndex, *os.File, *heldRelease, error) {
		return delta.IndexManifest(sm), f, &heldRelease{env: env, m: sm, content: f}, nil
	}
	if manPath != "" {
		b, err := os.ReadFile(manPath)
		if err != nil {
			f.Close()
			return nil, nil, nil, err
		}
		sm, err := manifest.Open(b)
		if err != nil {
			f.Close()
			return nil, nil, nil, err
		}
		return known(b, sm)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, nil, err
	}
	if rec, env := loadFileRecord(cache, abs); rec != nil && rec.Complete &&
		(st.Mode()&fs.ModeDevice != 0 || (rec.Size == st.Size() && rec.ModTime == st.ModTime().UnixNano())) {
		if sm, err := manifest.Open(env); err == nil {
			g.log.Info("seed layout known from an earlier pull", "seed", abs, "revision", sm.Revision)
			return known(env, sm)
		}
	}
	size, err := imageSize(f)
	if err != nil {
		f.Close()
		return nil, nil, nil, err
	}
	g.logf("seed %s: layout unknown, cutting it to find chunks", file)
	idx, err := delta.IndexSeed(ctx, f, size, target.Chunker, want, 0)
	if err != nil {
		f.Close()
		return nil, nil, nil, err
	}
	return idx, f, nil, nil
}
