package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/transport"
)

// packSource is a source that also offers delta packs (HTTP origins and
// branch caches, store directories).
type packSource interface {
	PackRecord(ctx context.Context, name, channel string, rev, from uint64) ([]byte, error)
	Pack(ctx context.Context, id chunkstore.ID, off, size int64) (io.ReadCloser, error)
}

// heldRelease is content a terminal holds exactly: a running slot or an
// installed bundle release, with the signed manifest it was verified
// against when it was written.
type heldRelease struct {
	env     []byte
	m       *manifest.Manifest
	content io.ReaderAt
}

// usePack looks for a pack from one of held to m (signed record verified
// against both manifests) and returns a fetcher that takes the plan's
// missing chunks from it, decoded against the held content, and the rest
// from next — only if the pack is smaller than the share of the chunks it
// replaces that the plan would fetch. An error means no pack is used.
//
// With sw (a --p2p pull's swarm), the pack comes from its own torrent when
// it has one, into cacheDir/deltas, and over HTTP when the swarm fails.
func usePack(ctx context.Context, g *globalOptions, src source, trust *manifest.Trust,
	held []heldRelease, env []byte, m *manifest.Manifest, plan *delta.Plan, next delta.Fetcher,
	sw *pullSwarm, p2p *p2pOptions, cacheDir string) (*packFetcher, error) {
	ps, ok := src.(packSource)
	if !ok {
		return nil, nil
	}
	// What the plan fetches, and what it fetches if an interrupted pull's
	// output does not hold it after all (a pull killed while its pack came
	// in wrote little: the rerun takes the rest of the pack).
	missing := map[chunkstore.ID]bool{}
	for _, c := range append(plan.Missing(), plan.InPlaceOnly()...) {
		missing[c.ID] = true
	}
	if len(missing) == 0 {
		return nil, nil
	}
	for _, h := range held {
		if h.m.Name != m.Name || h.m.Channel != m.Channel || h.m.Revision >= m.Revision {
			continue
		}
		recEnv, err := ps.PackRecord(ctx, m.Name, m.Channel, m.Revision, h.m.Revision)
		if errors.Is(err, manifest.ErrNoRelease) {
			continue
		}
		if err != nil {
			return nil, err
		}
		rec, err := manifest.VerifyPackRecord(recEnv, trust, h.env, env)
		if err != nil {
			return nil, err
		}
		if rec.FromDigest != h.m.Digest {
			return nil, fmt.Errorf("pack %d→%d is for other content", rec.From, rec.To)
		}
		refs := delta.PackChunks(h.m, m)
		if manifest.ChunkListDigest(refs) != rec.ChunksDigest {
			return nil, fmt.Errorf("pack %d→%d: its chunk list is not the one of these releases", rec.From, rec.To)
		}
		// Worth it? Compare with what fetching those chunks would cost.
		var needed []manifest.ChunkRef
		for _, c := range refs {
			if missing[c.ID] {
				needed = append(needed, c)
			}
		}
		lean, err := takeLean(rec, src, sw, p2p)
		if err != nil {
			return nil, err
		}
		if lean {
			g.logf("pack %d→%d: the lean form (%s; rebuilding %s of gzip streams would take longer than the %s it saves)",
				rec.From, rec.To, human(rec.Lean.Size), human(rec.Regzip), human(rec.Lean.Size-rec.Size))
			r := *rec
			r.Pack, r.Size, r.Torrent = rec.Lean.Pack, rec.Lean.Size, rec.LeanTorrent
			rec = &r
		}
		f := &packFetcher{g: g, ps: ps, rec: rec, lean: lean, chunks: refs, held: h, next: next, sw: sw, p2p: p2p, cacheDir: cacheDir}
		if len(needed) == 0 || !f.pays(needed) {
			g.logf("pack %d→%d (%s) is not smaller than the chunks it would replace here", rec.From, rec.To, human(rec.Size))
			continue
		}
		return f, nil
	}
	return nil, nil
}

// regzipSpeed is the rate (inflated bytes a second) at which a terminal
// deflates a pack's gzip streams again: zdeflate at -9 on Debian's text
// runs at ~15-30 MB/s a core; two cores, taken low.
const regzipSpeed = 20e6

// takeLean tells whether a terminal takes a record's lean pack (gzip
// streams kept) rather than its smallest one: when rebuilding the streams
// would take longer than the whole lean pack takes to arrive (the rebuild
// runs while the pack streams in, so only the longer of the two counts).
// The link's rate is what the source measured on the release's manifest;
// a store directory is local (lean), an unknown rate means a slow link,
// and a --p2p pull keeps the pack that has a torrent when the lean one has
// none (records before version 3).
func takeLean(rec *manifest.PackRecord, src source, sw *pullSwarm, o *p2pOptions) (bool, error) {
	if rec.Lean == nil || rec.Regzip <= 0 || (sw != nil && rec.Torrent != nil && rec.LeanTorrent == nil) {
		return false, nil
	}
	rate := math.Inf(1)
	if r, err := o.rate(); err != nil {
		return false, err
	} else if r > 0 {
		rate = r
	} else if hc, ok := src.(*transport.Client); ok {
		if rate = hc.LinkRate(); rate <= 0 {
			return false, nil
		}
	}
	return float64(rec.Regzip)/regzipSpeed > float64(rec.Lean.Size)/rate, nil
}

// packWorkers is how many pack segments a terminal decodes at once: two
// keep up with a loopback origin; each holds a segment and its reference.
var packWorkers = min(runtime.GOMAXPROCS(0), 2)

// packFetcher delivers chunks from a delta pack decoded against content
// the terminal holds, as the pack streams in, and fetches from next
// whatever the pack did not yield (all of it if the pack fails midway).
type packFetcher struct {
	g   *globalOptions
	ps  packSource
	rec *manifest.PackRecord
	// chunks is what the pack yields, in order (PackChunks of the two
	// manifests; the record's ChunksDigest was checked against it).
	chunks []manifest.ChunkRef
	held   heldRelease
	next   delta.Fetcher
	lean   bool // rec names the record's lean pack
	// bytes is how much of the pack was read.
	bytes atomic.Int64
	// failed is set when the pack could not be used to the end.
	failed atomic.Bool
	// tried: the pack is read once; later calls (chunks whose local copy
	// failed) go to next.
	tried atomic.Bool
	// The swarm of a --p2p pull, and what came from its peers.
	sw       *pullSwarm
	p2p      *p2pOptions
	cacheDir string
	peers    atomic.Int64
	file     string // the pack as downloaded from the swarm, if it was
}

// remove deletes the pack a swarm download left in the cache (and its part
// file), once the pull no longer needs it.
func (f *packFetcher) remove() {
	if f == nil || f.file == "" {
		return
	}
	os.Remove(f.file)
	os.Remove(f.file + ".part")
}

// open returns the pack's bytes: from its torrent when the pull has a
// swarm (checked against the record's BLAKE3 once complete), else, or
// when that fails, over HTTP.
func (f *packFetcher) open(ctx context.Context) (io.ReadCloser, error) {
	if hc, ok := f.ps.(*transport.Client); ok && f.sw != nil && f.rec.Torrent != nil {
		rc, err := f.viaSwarm(ctx, hc)
		if err == nil {
			return rc, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		f.g.log.Warn("the pack's torrent did not deliver; fetching the pack over HTTP", "err", err)
	}
	if _, ok := f.ps.(*transport.Client); ok {
		return f.viaHTTP(ctx)
	}
	return f.ps.Pack(ctx, f.rec.Pack, 0, f.rec.Size)
}

// viaHTTP streams the pack to the decoder and into cacheDir/deltas as it
// comes: a pull killed midway leaves <id>.dpack.http there, and the next
// one reads that back and asks only for the rest (the client resumes a
// connection that breaks off itself). The bytes kept are trusted no more
// than the network's: every chunk is verified, and a pack that fails is
// removed.
func (f *packFetcher) viaHTTP(ctx context.Context) (io.ReadCloser, error) {
	dir := filepath.Join(f.cacheDir, "deltas")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := f.httpPart()
	// Parts of other packs belong to pulls that will not resume.
	old, _ := filepath.Glob(filepath.Join(dir, "*.dpack.http"))
	for _, o := range old {
		if o != path {
			os.Remove(o)
		}
	}
	file, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	st, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, err
	}
	f.file = path
	have := min(st.Size(), f.rec.Size)
	if have > 0 {
		f.g.logf("pack %d→%d: resuming after the %s an earlier pull received", f.rec.From, f.rec.To, human(have))
	}
	return &keptReader{ctx: ctx, f: f, file: file, have: have}, nil
}

// keptReader reads a pack from the bytes an earlier pull kept (file, up to
// have), then from the source from there on, keeping what it reads.
type keptReader struct {
	ctx  context.Context
	f    *packFetcher
	file *os.File // nil once a write failed: the pull goes on, unkept
	have int64    // bytes of the pack in file
	off  int64    // bytes delivered
	body io.ReadCloser
}

func (r *keptReader) Read(p []byte) (int, error) {
	if r.off < r.have {
		n, err := r.file.ReadAt(p[:min(int64(len(p)), r.have-r.off)], r.off)
		r.off += int64(n)
		if n > 0 {
			return n, nil
		}
		return 0, err
	}
	if r.body == nil {
		body, err := r.f.ps.Pack(r.ctx, r.f.rec.Pack, r.off, r.f.rec.Size)
		if err != nil {
			return 0, err
		}
		r.body = body
	}
	n, err := r.body.Read(p)
	if n > 0 && r.file != nil {
		if _, werr := r.file.WriteAt(p[:n], r.off); werr != nil {
			// A full cache costs the resume, not the pull.
			r.f.g.log.Warn("not keeping the pack for a resume", "err", werr)
			r.file.Close()
			r.file = nil
		}
	}
	r.off += int64(n)
	return n, err
}

// Authenticate reads the rest of the pack into the kept file and checks
// the whole of it against the record's hash (delta.PackAuthenticator): the
// decoder asks before a segment would take more memory than a pack of the
// default options needs, so that a forged header cannot make it allocate
// what it claims. Reads then come from the checked file.
func (r *keptReader) Authenticate() error {
	if r.file == nil {
		return errors.New("the pack could not be kept to check it first")
	}
	size := r.f.rec.Size
	if pos := max(r.off, r.have); pos < size { // the file holds [0, pos)
		if r.body == nil {
			body, err := r.f.ps.Pack(r.ctx, r.f.rec.Pack, pos, size)
			if err != nil {
				return err
			}
			r.body = body
		}
		n, err := io.Copy(io.NewOffsetWriter(r.file, pos), io.LimitReader(r.body, size-pos))
		if err == nil && pos+n < size {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return fmt.Errorf("reading the pack to check it: %w", err)
		}
	}
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
	r.have = size
	got, n, err := chunkstore.SumReader(io.NewSectionReader(r.file, 0, size))
	if err != nil {
		return err
	}
	if n != size || got != r.f.rec.Pack {
		return fmt.Errorf("%w: the pack does not hash to its record's %s", delta.ErrPack, r.f.rec.Pack.Short())
	}
	r.f.g.logf("pack %d→%d: checked whole before decoding (a segment needs more memory than usual)", r.f.rec.From, r.f.rec.To)
	return nil
}

func (r *keptReader) Close() error {
	if r.body != nil {
		r.body.Close()
	}
	if r.file != nil {
		return r.file.Close()
	}
	return nil
}

func (f *packFetcher) viaSwarm(ctx context.Context, hc *transport.Client) (io.ReadCloser, error) {
	r := f.rec
	info, err := hc.PackInfo(ctx, r.Name, r.Channel, r.To, r.From, f.lean, int64(r.Torrent.InfoSize))
	if err != nil {
		return nil, err
	}
	if err := r.Torrent.Check(info); err != nil {
		return nil, err
	}
	dir := filepath.Join(f.cacheDir, "deltas")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	fh, err := f.sw.c.AddFile(info, dir)
	if err != nil {
		return nil, err
	}
	f.file = fh.Path()
	dctx, cancel := context.WithTimeout(ctx, f.p2p.timeout)
	err = fh.Download(dctx, f.p2p.stall)
	cancel()
	f.peers.Store(fh.FromPeers())
	if err != nil {
		fh.Drop()
		return nil, err
	}
	file, err := os.Open(fh.Path())
	if err != nil {
		return nil, err
	}
	got, _, err := chunkstore.SumReader(file)
	if err != nil {
		file.Close()
		return nil, err
	}
	if got != r.Pack {
		file.Close()
		fh.Drop()
		os.Remove(fh.Path())
		return nil, fmt.Errorf("the pack from the swarm does not hash to %s", r.Pack.Short())
	}
	if _, err := file.Seek(0, io.SeekStart); err != nil {
		file.Close()
		return nil, err
	}
	return file, nil
}

// authenticating is a counted pack reader that keeps its source's
// delta.PackAuthenticator.
type authenticating struct {
	io.Reader
	delta.PackAuthenticator
}

// fromPeers is the pack payload received from peers (0 without a pack).
func (f *packFetcher) fromPeers() int64 {
	if f == nil {
		return 0
	}
	return f.peers.Load()
}

func (f *packFetcher) Fetch(ctx context.Context, refs []manifest.ChunkRef, fn func(chunkstore.Chunk) error) error {
	return f.FetchBatches(ctx, refs, func() (func(chunkstore.Chunk) error, func() error) { return fn, nil })
}

// FetchBatches is Fetch that hands out each pack segment's chunks as a
// batch (delta.BatchFetcher), so the assembler writes them in runs.
func (f *packFetcher) FetchBatches(ctx context.Context, refs []manifest.ChunkRef, open func() (func(chunkstore.Chunk) error, func() error)) error {
	if f.tried.Swap(true) {
		return fetchNext(ctx, f.next, refs, open)
	}
	if !f.pays(refs) {
		f.g.logf("pack %d→%d: not worth it for the %d chunks asked for", f.rec.From, f.rec.To, len(refs))
		return fetchNext(ctx, f.next, refs, open)
	}
	want := make(map[chunkstore.ID]bool, len(refs))
	for _, r := range refs {
		want[r.ID] = true
	}
	done := map[chunkstore.ID]bool{}
	var mu sync.Mutex
	var outErr error // from the output: it failed, not the pack
	err := func() error {
		body, err := f.open(ctx)
		if err != nil {
			return err
		}
		defer body.Close()
		var counted io.Reader = transport.CountReader(body, &f.bytes)
		if a, ok := body.(delta.PackAuthenticator); ok {
			counted = authenticating{counted, a}
		}
		return delta.DecodePackBatches(ctx, counted, f.held.content, f.held.m.Size, f.chunks,
			func() (func(chunkstore.Chunk) error, func() error) {
				put, end := open()
				keep := func(err error) error {
					if err != nil {
						mu.Lock()
						outErr = err
						mu.Unlock()
					}
					return err
				}
				return func(c chunkstore.Chunk) error {
						mu.Lock()
						if !want[c.ID()] || done[c.ID()] {
							mu.Unlock()
							return nil // held elsewhere (cache, seeds): the plan does not need it from here
						}
						done[c.ID()] = true
						mu.Unlock()
						return keep(put(c))
					}, func() error {
						if end == nil {
							return nil
						}
						return keep(end())
					}
			}, f.workers())
	}()
	if outErr != nil {
		return outErr
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		f.failed.Store(true)
		f.remove() // damaged, or the source is gone: not worth resuming
		f.g.log.Warn("the delta pack failed; fetching the chunks it did not yield", "from", f.rec.From, "to", f.rec.To, "err", err)
	} else {
		f.g.logf("pack %d→%d: %s read, %d chunks from it", f.rec.From, f.rec.To, human(f.bytes.Load()), len(done))
	}
	var rest []manifest.ChunkRef
	for _, r := range refs {
		if !done[r.ID] {
			rest = append(rest, r)
		}
	}
	if len(rest) == 0 {
		return nil
	}
	return fetchNext(ctx, f.next, rest, open)
}

// fetchNext fetches refs from next in batches when it can, else as one.
func fetchNext(ctx context.Context, next delta.Fetcher, refs []manifest.ChunkRef, open func() (func(chunkstore.Chunk) error, func() error)) error {
	if bf, ok := next.(delta.BatchFetcher); ok {
		return bf.FetchBatches(ctx, refs, open)
	}
	// One batch, fed from the fetcher's goroutines one chunk at a time.
	put, end := open()
	var mu sync.Mutex
	err := next.Fetch(ctx, refs, func(c chunkstore.Chunk) error {
		mu.Lock()
		defer mu.Unlock()
		return put(c)
	})
	if end != nil {
		if e := end(); err == nil {
			err = e
		}
	}
	return err
}

// pays reports whether what is left to download of the pack (less what an
// earlier pull kept) costs less than fetching refs as chunks, estimated
// from the record: the pack's chunks' stored bytes per plain byte. Both the
// choice of a pack and each fetch from it go by this one rule.
func (f *packFetcher) pays(refs []manifest.ChunkRef) bool {
	if f.rec.PlainBytes <= 0 {
		return false
	}
	var plain int64
	for _, r := range refs {
		plain += int64(r.Size)
	}
	left := f.rec.Size
	if st, err := os.Stat(f.httpPart()); err == nil {
		left -= min(st.Size(), f.rec.Size)
	}
	return float64(left) < float64(plain)*float64(f.rec.ChunkBytes)/float64(f.rec.PlainBytes)
}

// httpPart is where an HTTP download of the pack is kept for a resume.
func (f *packFetcher) httpPart() string {
	return filepath.Join(f.cacheDir, "deltas", f.rec.Pack.String()+".dpack.http")
}

// used returns the pack bytes read (0 without a pack).
// workers is how many segments to decode at once: one when the pack has
// gzip streams to rebuild (a segment's rebuild runs on all cores by
// itself, and a second segment in flight would hold another ~40 MB).
func (f *packFetcher) workers() int {
	if f.rec.Regzip > 0 && !f.lean {
		return 1
	}
	return packWorkers
}

// leanUsed tells whether the pull took a record's lean pack.
func (f *packFetcher) leanUsed() bool { return f != nil && f.lean && f.used() > 0 }

func (f *packFetcher) used() int64 {
	if f == nil {
		return 0
	}
	return f.bytes.Load()
}

// fetchManifest fetches a signed manifest; with base (a manifest of the same
// name the terminal holds) an HTTP origin may send it as a delta against
// base. The envelope is verified by the caller either way.
func fetchManifest(ctx context.Context, src source, name, channel string, rev uint64, base []byte) ([]byte, error) {
	type deltaSource interface {
		ManifestFrom(ctx context.Context, name, channel string, rev uint64, base []byte) ([]byte, error)
	}
	if ds, ok := src.(deltaSource); ok && len(base) > 0 {
		return ds.ManifestFrom(ctx, name, channel, rev, base)
	}
	return src.Manifest(ctx, name, channel, rev)
}
