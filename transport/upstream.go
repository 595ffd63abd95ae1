package transport

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
)

// Upstream makes a server a branch cache: a release or chunk the store
// lacks is fetched from the upstream server (the origin, or another
// branch) once, checked, and kept, then served like any other. Manifests
// are relayed as signed (terminals verify them); their name, channel and
// revision must be the ones asked for. A chunk is admitted only after it
// decodes to its BLAKE3 ID.
type Upstream struct {
	c     *Client
	store *chunkstore.Local
	rels  *manifest.Releases
	log   *slog.Logger
	// OnRelease is called after a release was mirrored, OnPack after a
	// delta pack object was (to seed them).
	OnRelease func(manifest.Release)
	OnPack    func(chunkstore.ID)
	// DeferFlush leaves flushing the store to the caller (a mirror that
	// fetches thousands of chunks commits once; a server must not, since
	// its readers see only flushed chunks).
	DeferFlush bool

	mu       sync.Mutex
	inflight map[string]*flight
	latest   map[string]time.Time // name/channel → last asked upstream for latest
}

type flight struct {
	done chan struct{}
	err  error
}

// UpstreamOptions configure NewUpstream.
type UpstreamOptions struct {
	// DownloadLimit caps bytes per second received from upstream: a
	// branch's uplink is often the thin part (0: unlimited).
	DownloadLimit int64
	// Concurrency is how many batch requests go upstream at once (0: the
	// client's default, 4).
	Concurrency int
	Logger      *slog.Logger
}

// NewUpstream returns an upstream for a branch store, open for writing.
func NewUpstream(url string, store *chunkstore.Local, opts UpstreamOptions) (*Upstream, error) {
	log := opts.Logger
	c, err := NewClient(url, ClientOptions{Logger: log, DownloadLimit: opts.DownloadLimit, Concurrency: opts.Concurrency})
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Upstream{c: c, store: store, rels: manifest.OpenReleases(store.Root()), log: log,
		inflight: map[string]*flight{}, latest: map[string]time.Time{}}, nil
}

// Received counts bytes received from upstream.
func (u *Upstream) Received() int64 { return u.c.Received() }

// once runs fn for key unless a run is in flight, in which case it waits
// for that one: concurrent misses fetch once.
func (u *Upstream) once(ctx context.Context, key string, fn func() error) error {
	u.mu.Lock()
	if f, ok := u.inflight[key]; ok {
		u.mu.Unlock()
		select {
		case <-f.done:
			return f.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	u.inflight[key] = f
	u.mu.Unlock()
	f.err = fn()
	u.mu.Lock()
	delete(u.inflight, key)
	u.mu.Unlock()
	close(f.done)
	return f.err
}

// Chunk makes sure the store holds id, flushed (readers of the store's
// files see it), fetching it from upstream.
func (u *Upstream) Chunk(ctx context.Context, id chunkstore.ID) error {
	return u.Chunks(ctx, []manifest.ChunkRef{{ID: id}})
}

// Chunks makes sure the store holds every chunk of refs, flushed, fetching
// the ones it lacks from upstream in batch requests (a ref of size 0 is
// checked by its ID alone). Chunks another call is fetching already are
// waited for, not fetched twice. A batch costs one round trip to upstream
// and one flush however many chunks it holds; one request and one flush
// per chunk made a branch's fill latency-bound (8 chunks per round trip:
// ~1 MB/s over a 50 ms uplink whatever its bandwidth). When a batch stops
// at a chunk upstream lacks (or sends corrupt), the chunks it did not
// deliver are fetched one by one, so that the others do not fail with it.
func (u *Upstream) Chunks(ctx context.Context, refs []manifest.ChunkRef) error {
	var (
		mine    []manifest.ChunkRef
		flights []*flight
		theirs  []*flight
		held    bool
	)
	u.mu.Lock()
	for _, r := range refs {
		key := "chunk/" + r.ID.String()
		if f, ok := u.inflight[key]; ok {
			theirs = append(theirs, f)
			continue
		}
		if ok, _ := u.store.Has(ctx, r.ID); ok {
			held = true
			continue
		}
		f := &flight{done: make(chan struct{})}
		u.inflight[key] = f
		mine = append(mine, r)
		flights = append(flights, f)
	}
	u.mu.Unlock()

	// errs[i] is what became of mine[i]: nil once it is stored.
	errs := make([]error, len(mine))
	if len(mine) > 0 {
		got := make(map[chunkstore.ID]bool, len(mine))
		var gmu sync.Mutex
		put := func(c chunkstore.Chunk) error {
			if _, err := u.store.Put(ctx, c); err != nil {
				return err
			}
			gmu.Lock()
			got[c.ID()] = true
			gmu.Unlock()
			return nil
		}
		ferr := u.c.Fetch(ctx, mine, put)
		// A chunk upstream lacks or sends corrupt stops a batch: the
		// others are asked for one by one. Upstream unreachable (after
		// the client's retries) fails them all at once.
		single := errors.Is(ferr, chunkstore.ErrNotFound) || errors.Is(ferr, chunkstore.ErrCorrupt)
		if ferr != nil {
			u.log.Debug("upstream batch failed", "err", ferr, "one by one", single)
		}
		for i, r := range mine {
			switch {
			case got[r.ID]:
			case ctx.Err() != nil:
				errs[i] = ctx.Err()
			case single:
				errs[i] = u.c.fetchBatch(ctx, []manifest.ChunkRef{r}, sink{put: put}, true)
			default:
				errs[i] = ferr
			}
		}
	}
	// Flushed even after an error, so that what did arrive is served; and
	// when a chunk was held already, it may be one that a fetch whose
	// flight has ended put and did not flush (a deferred-flush mirror).
	var flushErr error
	if (len(mine) > 0 || held) && !u.DeferFlush {
		flushErr = u.store.Flush(ctx)
	}
	err := flushErr
	if len(mine) > 0 {
		u.mu.Lock()
		for _, r := range mine {
			delete(u.inflight, "chunk/"+r.ID.String())
		}
		u.mu.Unlock()
		for i, f := range flights {
			f.err = cmp.Or(errs[i], flushErr)
			if err == nil {
				err = f.err
			}
			close(f.done)
		}
	}
	for _, f := range theirs {
		select {
		case <-f.done:
			if f.err != nil && err == nil {
				err = f.err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

// Release makes sure the store holds name/channel at rev (0: the newest
// upstream has, asked at most every few seconds) with its torrent side
// files, and returns the revision.
func (u *Upstream) Release(ctx context.Context, name, channel string, rev uint64) (uint64, error) {
	key := name + "/" + channel
	if rev == 0 {
		u.mu.Lock()
		fresh := time.Since(u.latest[key]) < 5*time.Second
		u.mu.Unlock()
		if fresh {
			if _, got, err := u.rels.Read(name, channel, 0); err == nil {
				return got, nil
			}
		}
	} else if _, _, err := u.rels.Read(name, channel, rev); err == nil {
		return rev, nil
	}
	var got uint64
	err := u.once(ctx, "release/"+key+"/"+strconv.FormatUint(rev, 10), func() error {
		p, err := u.FetchRelease(ctx, name, channel, rev)
		if err != nil {
			return err
		}
		got = p.Revision()
		if rev == 0 {
			u.mu.Lock()
			u.latest[key] = time.Now()
			u.mu.Unlock()
		}
		return p.Commit()
	})
	if err != nil && rev == 0 {
		// Upstream unreachable: serve the newest we have.
		if _, have, err2 := u.rels.Read(name, channel, 0); err2 == nil {
			u.log.Warn("upstream unavailable, serving the newest local release", "release", key, "err", err)
			return have, nil
		}
	}
	if rev != 0 {
		got = rev
	} else if err == nil && got == 0 { // waited for another request's fetch
		_, got, err = u.rels.Read(name, channel, 0)
	}
	return got, err
}

// PendingRelease is a release fetched from upstream and checked, not yet
// stored: a mirror stores it only after its chunks (FetchRelease).
type PendingRelease struct {
	u     *Upstream
	env   []byte
	m     *manifest.Manifest
	sides []manifest.Side
}

// Manifest is the fetched release's manifest.
func (p *PendingRelease) Manifest() *manifest.Manifest { return p.m }

// Revision is the fetched release's revision.
func (p *PendingRelease) Revision() uint64 { return p.m.Revision }

// Commit stores the release (if it is not already) with its side files.
func (p *PendingRelease) Commit() error {
	u, m := p.u, p.m
	if _, _, err := u.rels.Read(m.Name, m.Channel, m.Revision); err == nil {
		return nil // had it already
	}
	if err := u.rels.Put(p.env, m, p.sides...); err != nil {
		return err
	}
	if u.OnRelease != nil {
		u.OnRelease(manifest.Release{Name: m.Name, Channel: m.Channel, Revision: m.Revision})
	}
	return nil
}

// FetchRelease fetches a release's manifest (rev 0: the latest) and its
// torrent side files from upstream, checked, without storing them.
func (u *Upstream) FetchRelease(ctx context.Context, name, channel string, rev uint64) (*PendingRelease, error) {
	key := name + "/" + channel
	env, err := u.c.Manifest(ctx, name, channel, rev)
	if err != nil {
		return nil, err
	}
	m, err := manifest.Open(env)
	if err != nil {
		return nil, err
	}
	if m.Name != name || m.Channel != channel || (rev != 0 && m.Revision != rev) {
		return nil, fmt.Errorf("%w: upstream answered %s/%s@%d for %s@%d", manifest.ErrVerification, m.Name, m.Channel, m.Revision, key, rev)
	}
	p := &PendingRelease{u: u, env: env, m: m}
	if _, _, err := u.rels.Read(name, channel, m.Revision); err == nil {
		return p, nil // held already: Commit does nothing
	}
	if refs, _ := m.Torrents(); len(refs) > 0 {
		info, err1 := u.c.release(ctx, "/v1/torrents/", "/info", name, channel, m.Revision, int64(refs[0].InfoSize))
		env0, err2 := u.c.TorrentManifest(ctx, name, channel, m.Revision, manifest.MaxEnvelope)
		if err := errors.Join(err1, err2); err != nil {
			u.log.Warn("mirroring a release without its torrent", "release", key, "err", err)
		} else if err := refs[0].Check(info); err != nil {
			return nil, err
		} else {
			p.sides = []manifest.Side{{Kind: manifest.SideTorrentInfo, Data: info}, {Kind: manifest.SideTorrentManifest, Data: env0}}
		}
	}
	return p, nil
}

// PackRecord makes sure the branch holds the record of the pack from
// revision from to release rev (the release itself first), fetching it
// from upstream, and returns it decoded. A missing pack is ErrNoRelease.
// The record is relayed as signed: terminals verify it.
func (u *Upstream) PackRecord(ctx context.Context, name, channel string, rev, from uint64) (*manifest.PackRecord, error) {
	held := func() (*manifest.PackRecord, error) {
		env, err := u.rels.ReadSide(name, channel, rev, manifest.SidePack(from))
		if err != nil {
			return nil, err
		}
		return manifest.OpenPackRecord(env)
	}
	if rec, err := held(); err == nil {
		return rec, nil
	}
	if _, err := u.Release(ctx, name, channel, rev); err != nil {
		return nil, err
	}
	err := u.once(ctx, fmt.Sprintf("pack-record/%s/%s/%d/%d", name, channel, rev, from), func() error {
		env, err := u.c.PackRecord(ctx, name, channel, rev, from)
		if err != nil {
			return err
		}
		rec, err := manifest.OpenPackRecord(env)
		if err != nil {
			return err
		}
		if rec.Name != name || rec.Channel != channel || rec.To != rev || rec.From != from {
			return fmt.Errorf("%w: upstream answered pack %s/%s %d→%d for %d→%d", manifest.ErrVerification, rec.Name, rec.Channel, rec.From, rec.To, from, rev)
		}
		// The torrents' info bytes, the main pack's and the lean twin's,
		// before the record that names them.
		for _, f := range rec.Forms() {
			if f.Torrent == nil {
				continue
			}
			info, err := u.c.PackInfo(ctx, name, channel, rev, from, f.Lean, int64(f.Torrent.InfoSize))
			if err == nil {
				err = f.Torrent.Check(info)
			}
			if err == nil {
				err = u.rels.PutSide(name, channel, rev, f.InfoKind(from), info)
			}
			if err != nil {
				u.log.Warn("mirroring a pack without its torrent", "lean", f.Lean, "err", err)
			}
		}
		return u.rels.PutSide(name, channel, rev, manifest.SidePack(from), env)
	})
	if err != nil {
		return nil, err
	}
	return held()
}

// Pack makes sure the branch holds pack id (at most size bytes), fetching
// it from upstream; it is kept only if its bytes hash to id.
func (u *Upstream) Pack(ctx context.Context, id chunkstore.ID, size int64) error {
	path := manifest.PackPath(u.store.Root(), id)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return u.once(ctx, "pack/"+id.String(), func() error {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		body, err := u.c.Pack(ctx, id, 0, size)
		if err != nil {
			return err
		}
		defer body.Close()
		tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		got, _, err := chunkstore.SumReader(io.TeeReader(body, tmp))
		if err != nil {
			return fmt.Errorf("%w: pack %s: %v", ErrPeerUnavailable, id.Short(), err)
		}
		if got != id {
			return &chunkstore.IntegrityError{ID: id, Reason: "upstream pack does not hash to its ID"}
		}
		if err := tmp.Chmod(0o644); err != nil {
			return err
		}
		if err := tmp.Sync(); err != nil {
			return err
		}
		if err := os.Rename(tmp.Name(), path); err != nil {
			return err
		}
		if u.OnPack != nil {
			u.OnPack(id)
		}
		return nil
	})
}
