package swarm

import (
	"context"
	"errors"
	"fmt"
	"github.com/imgctl/imgctl/internal/pace"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"

	alog "github.com/anacrolix/log"
	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/metainfo"
	pp "github.com/anacrolix/torrent/peer_protocol"
	"golang.org/x/time/rate"

	"github.com/imgctl/imgctl/chunkstore"
)

// Config configures a swarm client for any role (origin, branch,
// terminal). The network is closed by default: no DHT, no UPnP, no PEX, no
// uTP; peers come from trackers and Peers only.
type Config struct {
	// Listen is where peers connect, host:port. A specific IP also becomes
	// the source address of outgoing connections (so peers see one address
	// per node, which bans rely on). Empty: 127.0.0.1:0.
	Listen  string
	Staging string // directory for staged pieces beyond StagingMemory
	// StagingMemory is how many bytes of downloaded pieces are staged in
	// memory instead of Staging (0: none; Storage.SetStagingMemory).
	StagingMemory int64
	Trackers      []string // announce URLs
	Peers         []string // host:port dialled directly
	UploadRate    int64    // bytes per second, 0: unlimited
	// UploadLimiter, if set, replaces UploadRate: share one with the HTTP
	// server so that a role's whole egress stays under one cap.
	UploadLimiter *rate.Limiter
	DownloadRate  int64 // bytes per second, 0: unlimited
	MaxConns      int   // established connections per torrent, 0: library default (50)
	PEX           bool
	Logger        *slog.Logger
	// Fill, for a node that only seeds (a branch cache), makes its store
	// hold chunks it lacks (fetched from upstream, verified). With it the
	// node offers every piece of its torrents and fills a piece's chunks
	// when a peer first asks for the piece, as it does for HTTP requests:
	// terminals behind a branch get the release from the swarm at once
	// instead of waiting until the branch happens to hold it.
	Fill func(ctx context.Context, ids []chunkstore.ID) error
}

// Client is one BitTorrent node over a chunk store.
type Client struct {
	cl  *torrent.Client
	st  *Storage
	cfg Config
	log *slog.Logger
}

// New starts a client. src holds the chunks this node has; downloaded
// chunks are verified and put into put (nil: a node that only seeds).
func New(cfg Config, src Source, put chunkstore.Putter) (*Client, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w", cfg.Listen, err)
	}
	tc := torrent.NewDefaultClientConfig()
	tc.NoDHT = true
	tc.NoDefaultPortForwarding = true
	tc.DisablePEX = !cfg.PEX
	tc.DisableUTP = true
	tc.DisableIPv6 = true
	tc.DisableWebtorrent = true
	// Plain BitTorrent handshakes first: header obfuscation (MSE/PE)
	// hides traffic from ISPs, which a closed fleet network has no use
	// for, and costs a Diffie-Hellman exchange and a round trip per
	// connection (~2 % of a terminal's CPU in a 20-terminal swarm, in
	// math/big). Peers that insist on it are still answered, and dialled
	// again with it when a plain handshake fails.
	tc.HeaderObfuscationPolicy = torrent.HeaderObfuscationPolicy{Preferred: false, RequirePreferred: false}
	// anacrolix v1.61.0 copies the whole file list for every file a webseed
	// request touches (webseed.newRequest and urlForFileIndex call
	// Info.UpvertedFiles), quadratic in a release's ~10k files: a terminal
	// received nothing for a minute while both cores ran that copy. imgctl
	// serves webseeds (/ws/) for other clients and falls back to HTTP
	// itself (docs/decisions/0004).
	tc.DisableWebseeds = true
	tc.Seed = true
	tc.Slogger = slog.New(quietHandler{log.Handler()}).With("component", "torrent")
	tc.Logger = alog.Default.WithFilterLevel(alog.Critical)
	tc.DefaultStorage = nil
	if cfg.MaxConns > 0 {
		tc.EstablishedConnsPerTorrent = cfg.MaxConns
	}
	// Upload is limited on the peer connections themselves (limitedConn),
	// not with the library's UploadRateLimiter: its reserve-then-cancel
	// loop starved every peer once ~10 terminals shared one limiter (an
	// origin at 4 MB/s sent them nothing for 20 s; 5 were fine).
	up := cfg.UploadLimiter
	if up == nil && cfg.UploadRate > 0 {
		up = rate.NewLimiter(rate.Limit(cfg.UploadRate), max(64<<10, int(cfg.UploadRate/10)))
	}
	if cfg.DownloadRate > 0 {
		tc.DownloadRateLimiter = rate.NewLimiter(rate.Limit(cfg.DownloadRate), max(64<<10, int(cfg.DownloadRate/10)))
	}
	// Our own listener and dialer, so that a node on 127.0.0.7 also dials
	// from 127.0.0.7 (the library's dialer would use 127.0.0.1).
	ip, ipErr := netip.ParseAddr(host)
	bind := ipErr == nil && !ip.IsUnspecified()
	tc.DisableTCP = true
	tc.ListenPort = 0
	if bind {
		// Trackers see the announcing address: announce from the listen
		// IP too, or the tracker hands out an address nobody listens on.
		local := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IP(ip.AsSlice())}, Timeout: 10 * time.Second}
		tc.TrackerDialContext = local.DialContext
		tc.HTTPDialContext = local.DialContext
	}
	// Transmission 3 advertises reqq=512 but refuses a request once 511
	// are pending; anacrolix then waits forever for the answers to its
	// 512-request round (research-p2p.md: the stall after exactly
	// 16,744,448 bytes). Taking every peer's advertised queue as one
	// shorter costs nothing and keeps imgctl below such limits.
	tc.Callbacks.ReadExtendedHandshake = func(_ *torrent.PeerConn, m *pp.ExtendedHandshakeMessage) {
		if m.Reqq > 1 {
			m.Reqq--
		}
	}
	st := NewStorage(src, put, cfg.Staging, log)
	st.SetStagingMemory(cfg.StagingMemory)
	if put == nil {
		st.fill = cfg.Fill
	}
	tc.DefaultStorage = st
	cl, err := torrent.NewClient(tc)
	if err != nil {
		return nil, fmt.Errorf("torrent client: %w", err)
	}
	c := &Client{cl: cl, st: st, cfg: cfg, log: log}
	l, err := net.Listen("tcp4", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		cl.Close()
		return nil, fmt.Errorf("listen for peers: %w", err)
	}
	cl.AddListener(limitedListener{l, up})
	d := &net.Dialer{Timeout: 5 * time.Second}
	if bind {
		d.LocalAddr = &net.TCPAddr{IP: net.IP(ip.AsSlice())}
	}
	cl.AddDialer(limitedDialer{d, up})
	return c, nil
}

// Addr is the address peers connect to.
func (c *Client) Addr() string {
	for _, l := range c.cl.Listeners() {
		return l.Addr().String()
	}
	return ""
}

// Close stops the client and drops every torrent.
func (c *Client) Close() error {
	return errors.Join(c.cl.Close()...)
}

// Handle is one release torrent in a client.
type Handle struct {
	c *Client
	t *torrent.Torrent
	s *Torrent // nil until the info is known (magnet)
}

// Add adds a release torrent whose info bytes are known (authenticated by
// the manifest); env is the manifest file's content if held.
func (c *Client) Add(ctx context.Context, infoBytes, env []byte) (*Handle, error) {
	ih := metainfo.HashBytes(infoBytes)
	_, l, err := parseInfo(infoBytes)
	if err != nil {
		return nil, err
	}
	s, err := c.st.Register(ctx, ih, l, env)
	if err != nil {
		return nil, err
	}
	// No initial check: pieces no fetch asks for have an unknown
	// completion (piece.Completion), and anacrolix would hash each of them
	// from storage that does not hold them.
	t, _ := c.cl.AddTorrentOpt(torrent.AddTorrentOpts{InfoHash: ih, InfoBytes: infoBytes, DisableInitialPieceCheck: true})
	h := &Handle{c: c, t: t, s: s}
	failOnWriteErrors(t, s.fail)
	h.sources(nil)
	return h, nil
}

// failOnWriteErrors hands t's block write errors to fail, which ends the
// torrent's fetches (ErrStorage). Anacrolix's own answer to a block its
// storage could not write is to disallow data download, and that breaks
// its request order's invariants: the next priority change panics
// (checkPendingPiecesMatchesRequestOrder) while it holds the client's
// lock, which hung a pull on a full disk.
func failOnWriteErrors(t *torrent.Torrent, fail func(error)) {
	t.SetOnWriteChunkError(func(err error) { fail(fmt.Errorf("%w: writing a block: %w", ErrStorage, err)) })
}

// AddMagnet adds a torrent from a magnet link (xt, tr, ws, x.pe); its info
// comes from peers (BEP 9) and must have the shape of a release torrent.
func (c *Client) AddMagnet(ctx context.Context, uri string) (*Handle, error) {
	spec, err := torrent.TorrentSpecFromMagnetUri(uri)
	if err != nil {
		return nil, fmt.Errorf("magnet: %w", err)
	}
	spec.Webseeds = nil                  // see DisableWebseeds; the caller fetches from them
	spec.DisableInitialPieceCheck = true // see Add
	if spec.InfoHash == (metainfo.Hash{}) {
		return nil, errors.New("magnet: no v1 infohash (xt=urn:btih:...); v2-only magnets are not supported")
	}
	t, _, err := c.cl.AddTorrentSpec(spec)
	if err != nil {
		return nil, err
	}
	h := &Handle{c: c, t: t}
	h.sources(nil)
	select {
	case <-t.GotInfo():
	case <-ctx.Done():
		t.Drop()
		return nil, fmt.Errorf("magnet %s: no peer sent the torrent's info: %w", spec.InfoHash.HexString(), context.Cause(ctx))
	}
	s, ok := c.st.Torrent(spec.InfoHash)
	if !ok {
		t.Drop()
		return nil, fmt.Errorf("magnet %s: not an imgctl release torrent", spec.InfoHash.HexString())
	}
	failOnWriteErrors(t, s.fail)
	h.s = s
	return h, nil
}

// sources adds the configured trackers and peers, and extra.
func (h *Handle) sources(extraPeers []string) { h.c.addSources(h.t, extraPeers) }

// addSources gives t the client's trackers and peers, and extraPeers.
func (c *Client) addSources(t *torrent.Torrent, extraPeers []string) {
	if len(c.cfg.Trackers) > 0 {
		t.AddTrackers([][]string{c.cfg.Trackers})
	}
	addPeers(t, append(append([]string(nil), c.cfg.Peers...), extraPeers...))
}

// AddPeers dials peers directly (host:port).
func (h *Handle) AddPeers(addrs []string) { addPeers(h.t, addrs) }

func addPeers(t *torrent.Torrent, addrs []string) {
	var ps []torrent.PeerInfo
	for _, a := range addrs {
		ps = append(ps, torrent.PeerInfo{Addr: torrent.StringAddr(a), Source: torrent.PeerSourceDirect})
	}
	if len(ps) > 0 {
		t.AddPeers(ps)
	}
}

// InfoHash is the torrent's v1 infohash.
func (h *Handle) InfoHash() metainfo.Hash { return h.t.InfoHash() }

// State is the storage state of the torrent.
func (h *Handle) State() *Torrent { return h.s }

// Manifest downloads the manifest file (if not held) and returns it.
func (h *Handle) Manifest(ctx context.Context) ([]byte, error) {
	if err := h.Fetch(ctx, []int{0}, 0); err != nil {
		return nil, err
	}
	env, _ := h.s.Manifest()
	return env, nil
}

// ErrStalled: no file arrived from the swarm for the stall time.
var ErrStalled = errors.New("the swarm stalled")

// FetchChunks downloads the chunks ids (those not held), waiting until all
// are in the store, ctx ends, or nothing arrives for stall (0: no limit);
// chunks the torrent does not carry are an error.
func (h *Handle) FetchChunks(ctx context.Context, ids []chunkstore.ID, stall time.Duration) error {
	return h.FetchChunksTo(ctx, ids, stall, nil)
}

// FetchChunksTo is FetchChunks that hands each chunk to fn as soon as it
// is in the store (held ones first), from one goroutine. A chunk this
// process downloaded comes checked, as admitted; a zero Chunk means read
// it from the store. An error from fn ends the fetch with that error.
func (h *Handle) FetchChunksTo(ctx context.Context, ids []chunkstore.ID, stall time.Duration, fn func(chunkstore.ID, chunkstore.Chunk) error) error {
	idx := make(map[chunkstore.ID]int, len(h.s.L.Chunks))
	for i, c := range h.s.L.Chunks {
		idx[c.ID] = i + 1
	}
	files := make([]int, 0, len(ids))
	for _, id := range ids {
		f, ok := idx[id]
		if !ok {
			return fmt.Errorf("torrent %s does not carry chunk %s", h.InfoHash().HexString(), id.Short())
		}
		files = append(files, f)
	}
	var deliver func(int, chunkstore.Chunk) error
	if fn != nil {
		deliver = func(f int, c chunkstore.Chunk) error { return fn(h.s.L.Chunks[f-1].ID, c) }
	}
	return h.fetch(ctx, files, stall, deliver)
}

// Fetch downloads files (indexes into the layout) and waits for them, as
// FetchChunks.
func (h *Handle) Fetch(ctx context.Context, files []int, stall time.Duration) error {
	return h.fetch(ctx, files, stall, nil)
}

func (h *Handle) fetch(ctx context.Context, files []int, stall time.Duration, deliver func(int, chunkstore.Chunk) error) error {
	// Open the watch first: a file that arrives while the held ones are
	// listed is then in its queue.
	w := h.s.openWatch()
	defer h.s.closeWatch(w)
	tf := h.t.Files()
	missing := make(map[int]bool, len(files))
	var asked []int
	for _, f := range files {
		if missing[f] {
			continue
		}
		if h.s.Have(f) {
			if deliver != nil {
				if err := deliver(f, chunkstore.Chunk{}); err != nil {
					return err
				}
			}
			continue
		}
		missing[f] = true
		asked = append(asked, f)
	}
	// The storage tells anacrolix the completion of the pieces asked for
	// (piece.Completion); then their files are given a priority.
	h.updateCompletion(h.s.Want(asked, true))
	defer func() {
		if p := recover(); p != nil {
			// From inside anacrolix, which may hold its client's lock:
			// waiting for it here would hang, so go on panicking.
			panic(p)
		}
		h.updateCompletion(h.s.Want(asked, false))
	}()
	for _, f := range asked {
		tf[f].SetPriority(torrent.PiecePriorityNormal)
	}
	var timer *time.Timer
	var stalled <-chan time.Time
	if stall > 0 {
		timer = time.NewTimer(stall)
		defer timer.Stop()
		stalled = timer.C
	}
	// Configured peers are dialled once by anacrolix; one that failed (not
	// up yet, restarted, a handshake lost under load) is dropped for good.
	// Without a tracker to name it again, dial them again while no peer is
	// connected. A connection can also stay up while nothing comes over
	// it: a peer that keeps us choked, or a request state neither side
	// leaves (once in CI a leech got nothing from its only, connected
	// seeder for 60 s); anacrolix keeps such a connection as long as
	// keep-alives arrive. When no useful byte has come from any
	// connection for stuckAfter, they are closed and the configured peers
	// dialled afresh. Both apply only to a fetch with configured peers;
	// peers from a tracker are left to anacrolix and the tracker.
	redial := time.NewTicker(redialEvery)
	defer redial.Stop()
	useful, since := h.usefulBytes(), time.Now()
	for len(missing) > 0 {
		ch := h.s.Changed()
		for _, a := range h.s.take(w) {
			if !missing[a.f] {
				continue
			}
			delete(missing, a.f)
			if deliver != nil {
				if err := deliver(a.f, a.c); err != nil {
					return err
				}
			}
		}
		if len(missing) == 0 {
			break
		}
		// A storage failure (fail wakes ch) ends the fetch at once.
		cause := h.s.Failed()
		if cause == nil {
			select {
			case <-ch:
				if timer != nil {
					timer.Reset(stall)
				}
				continue
			case <-redial.C:
				if len(h.c.cfg.Peers) == 0 {
					continue
				}
				if n := h.usefulBytes(); n != useful {
					useful, since = n, time.Now()
				}
				switch {
				case h.t.Stats().ActivePeers == 0:
					addPeers(h.t, h.c.cfg.Peers)
				case time.Since(since) >= stuckAfter:
					for _, pc := range h.t.PeerConns() {
						pc.Close()
					}
					addPeers(h.t, h.c.cfg.Peers)
					since = time.Now()
				}
				continue
			case <-ctx.Done():
				cause = context.Cause(ctx)
			case <-stalled:
				cause = ErrStalled
			}
		}
		for f := range missing {
			tf[f].SetPriority(torrent.PiecePriorityNone)
		}
		return fmt.Errorf("%d of %d files still missing: %w", len(missing), len(files), cause)
	}
	return nil
}

// updateCompletion has anacrolix read the completion of pieces again.
func (h *Handle) updateCompletion(pieces []int) {
	for _, p := range pieces {
		h.t.Piece(p).UpdateCompletion()
	}
}

// redialEvery is how often Fetch dials the configured peers again while
// it has no peer; stuckAfter is how long its connections may bring nothing
// before they are replaced (variables for tests).
var (
	redialEvery = 3 * time.Second
	stuckAfter  = 15 * time.Second
)

// usefulBytes counts the piece data that peers (not web seeds) sent.
func (h *Handle) usefulBytes() int64 {
	s := h.t.Stats()
	return s.PeerConns.BytesReadUsefulData.Int64()
}

// Stats are a torrent's transfer counters.
type Stats struct {
	FromPeers    int64 `json:"bytes_from_peers"`
	FromWebSeeds int64 `json:"bytes_from_webseeds"`
	Uploaded     int64 `json:"bytes_uploaded"`
	BadPieces    int64 `json:"bad_pieces"`
	Peers        int   `json:"peers"`
}

// Stats returns the torrent's counters: bytes received from peers and from
// webseeds (payload), uploaded payload, pieces that failed their check.
func (h *Handle) Stats() Stats {
	s := h.t.Stats()
	return Stats{FromPeers: s.PeerConns.BytesReadData.Int64(), FromWebSeeds: s.WebSeeds.BytesReadData.Int64(),
		Uploaded: s.BytesWrittenData.Int64(), BadPieces: s.PiecesDirtiedBad.Int64(), Peers: s.ActivePeers}
}

// Uploaded is the payload this client has sent to peers, all torrents.
func (c *Client) Uploaded() int64 {
	s := c.cl.Stats()
	return s.BytesWrittenData.Int64()
}

// BannedIPs lists peers banned for sending bad data (IPv4 as a.b.c.d).
func (c *Client) BannedIPs() []string {
	var ips []string
	for _, s := range c.cl.BadPeerIPs() {
		if a, err := netip.ParseAddr(s); err == nil {
			s = a.Unmap().String()
		}
		if !slices.Contains(ips, s) {
			ips = append(ips, s)
		}
	}
	return ips
}

// Refresh looks for chunks that reached the store another way (a branch
// cache's HTTP misses, a terminal's HTTP fallback) and takes env as the
// manifest file if it is not held, then has the client check the pieces now
// complete, so that they are offered to peers. It returns how many files
// arrived.
func (h *Handle) Refresh(ctx context.Context, env []byte) int {
	files := h.s.Refresh(ctx)
	if h.s.setManifestFile(env) {
		files = append(files, 0)
	}
	seen := map[int]bool{}
	for _, f := range files {
		a, z := h.s.L.PiecesOf(f)
		for p := a; p <= z; p++ {
			if !seen[p] && (piece{h.s, p}).Completion().Complete {
				seen[p] = true
				h.t.Piece(p).VerifyDataContext(ctx)
			}
		}
	}
	return len(files)
}

// limitedConn paces writes through a limiter shared by all connections
// (and, on an origin, by the HTTP server): the role's egress cap.
type limitedConn struct {
	net.Conn
	l *rate.Limiter
}

func (c limitedConn) Write(p []byte) (int, error) {
	return pace.Write(context.Background(), c.Conn, c.l, p)
}

type limitedListener struct {
	net.Listener
	l *rate.Limiter
}

func (l limitedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return limitedConn{c, l.l}, nil
}

type limitedDialer struct {
	d *net.Dialer
	l *rate.Limiter
}

func (d limitedDialer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := d.d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return nil, err
	}
	return limitedConn{c, d.l}, nil
}

func (d limitedDialer) DialerNetwork() string { return "tcp4" }

// quietHandler demotes anacrolix's scheduling diagnostic ("client unlock
// handlers took a long time": a busy machine, nothing a user can act on,
// printed many times a second by a loaded terminal) to debug.
type quietHandler struct{ slog.Handler }

const unlockDiagnostic = "client unlock handlers took a long time"

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn && r.Message == unlockDiagnostic {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(a)}
}
func (h quietHandler) WithGroup(n string) slog.Handler { return quietHandler{h.Handler.WithGroup(n)} }
