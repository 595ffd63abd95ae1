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
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
)

// ErrPeerUnavailable: the server could not be reached or kept failing.
var ErrPeerUnavailable = errors.New("server unavailable")

// ClientOptions configure NewClient. The zero value is usable.
type ClientOptions struct {
	HTTP        *http.Client  // nil: a client with sane timeouts
	Concurrency int           // requests in flight; 0 means 4
	Retries     int           // attempts after the first for one batch; 0 means 4
	Backoff     time.Duration // first retry delay, doubled each time; 0 means 200 ms
	BatchBytes  int           // plain bytes per batch request; 0 means 2 MiB
	// MaxManifest caps a manifest body; 0 means manifest.MaxEnvelope.
	MaxManifest int64
	// DownloadLimit caps response body bytes per second (0: unlimited).
	DownloadLimit int64
	Logger        *slog.Logger
	// Sleep waits between retries (tests inject a fake); nil: real timer.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Client fetches manifests and chunks from an imgctl origin or branch
// cache. It trusts nothing it receives: bodies are capped to what the
// request can legitimately return and every chunk is verified against its
// ID before it is handed on.
type Client struct {
	base     *url.URL
	opts     ClientOptions
	received atomic.Int64
	batchOK  atomic.Int32  // 0 unknown, 1 yes, -1 no
	rate     atomic.Uint64 // bytes/s of the last document of rateMin bytes or more (float64 bits)
}

// rateMin is the smallest body a rate is measured on.
const rateMin = 16 << 10

// LinkRate returns the bytes per second at which the last document of 16
// KiB or more (a release's manifest) came in, from its first byte to its
// last, or 0 if none did: a terminal's view of its link, for choices such
// as which of a delta pack's forms to take.
func (c *Client) LinkRate() float64 { return math.Float64frombits(c.rate.Load()) }

// NewClient returns a client for the server at base (http://host:port).
func NewClient(base string, opts ClientOptions) (*Client, error) {
	u, err := url.Parse(strings.TrimSuffix(base, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server URL %q: want http(s)://host[:port]", base)
	}
	if opts.HTTP == nil {
		opts.HTTP = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: 60 * time.Second,
		}}
	}
	if l := NewLimiter(opts.DownloadLimit); l != nil {
		base := opts.HTTP.Transport
		if base == nil {
			base = http.DefaultTransport
		}
		hc := *opts.HTTP
		hc.Transport = limitedTransport{base, l}
		opts.HTTP = &hc
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	if opts.Retries <= 0 {
		opts.Retries = 4
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 200 * time.Millisecond
	}
	if opts.BatchBytes <= 0 {
		opts.BatchBytes = 2 << 20
	}
	if opts.MaxManifest <= 0 {
		opts.MaxManifest = manifest.MaxEnvelope
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Sleep == nil {
		opts.Sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return &Client{base: u, opts: opts}, nil
}

// Received returns the response body bytes received so far.
func (c *Client) Received() int64 { return c.received.Load() }

func (c *Client) url(p string) string { return c.base.String() + p }

// statusText reads a failed response's body and returns its status with
// the first line of the server's explanation (a branch cache says why it
// could not serve). The body counts as received, so that what clients
// received is what servers sent.
func (c *Client) statusText(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	c.received.Add(int64(len(b)))
	line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if line == "" || len(line) > 300 {
		return resp.Status
	}
	return resp.Status + ": " + line
}

// permanent marks errors that retrying cannot fix.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

func (c *Client) retry(ctx context.Context, what string, fn func() error) error {
	delay := c.opts.Backoff
	var err error
	for attempt := 0; ; attempt++ {
		err = fn()
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) || ctx.Err() != nil || attempt >= c.opts.Retries {
			break
		}
		c.opts.Logger.Warn("retrying", "what", what, "attempt", attempt+1, "err", err)
		if serr := c.opts.Sleep(ctx, delay); serr != nil {
			return serr
		}
		delay = min(delay*2, 5*time.Second)
	}
	var p permanent
	if errors.As(err, &p) {
		return p.error
	}
	return err
}

func (c *Client) do(ctx context.Context, req *http.Request) (*http.Response, error) {
	resp, err := c.opts.HTTP.Do(req.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPeerUnavailable, err)
	}
	return resp, nil
}

// maxErrorBody bounds what is read of an error response.
const maxErrorBody = 64 << 10

// Manifest fetches the signed manifest of name/channel at rev (0: latest).
// The body is capped; nothing is verified here (manifest.Verify does that).
func (c *Client) Manifest(ctx context.Context, name, channel string, rev uint64) ([]byte, error) {
	return c.release(ctx, "/v1/manifests/", "", name, channel, rev, c.opts.MaxManifest)
}

// TorrentFile fetches a release's .torrent (info bytes, the server's
// trackers and webseed), capped at max bytes; the caller checks the info
// against the signed manifest.
func (c *Client) TorrentFile(ctx context.Context, name, channel string, rev uint64, max int64) ([]byte, error) {
	return c.release(ctx, "/v1/torrents/", "", name, channel, rev, max)
}

// TorrentCompact fetches a release's torrent in compact form (trackers,
// and info without the chunk IDs its manifest lists; swarm.ExpandTorrent),
// capped at max bytes. Servers without it answer 404.
func (c *Client) TorrentCompact(ctx context.Context, name, channel string, rev uint64, max int64) ([]byte, error) {
	return c.release(ctx, "/v1/torrents/", "/compact", name, channel, rev, max)
}

// TorrentManifest fetches the manifest a release's torrent carries as its
// first file (through the webseed route), capped at max bytes; the caller
// verifies it.
func (c *Client) TorrentManifest(ctx context.Context, name, channel string, rev uint64, max int64) ([]byte, error) {
	p := "/ws/" + url.PathEscape(manifest.TorrentName(name, channel, rev)) + "/" + manifest.TorrentManifestFile
	return c.small(ctx, p, name, channel, strconv.FormatUint(rev, 10), max)
}

// release GETs a small per-release document, its body capped at max.
func (c *Client) release(ctx context.Context, prefix, suffix, name, channel string, rev uint64, max int64) ([]byte, error) {
	r := "latest"
	if rev > 0 {
		r = strconv.FormatUint(rev, 10)
	}
	p := prefix + url.PathEscape(name) + "/" + url.PathEscape(channel) + "/" + r + suffix
	return c.small(ctx, p, name, channel, r, max)
}

// small GETs p, its body capped at max; a 404 is ErrNoRelease.
func (c *Client) small(ctx context.Context, p, name, channel, r string, max int64) ([]byte, error) {
	var body []byte
	err := c.retry(ctx, p, func() error {
		req, _ := http.NewRequest(http.MethodGet, c.url(p), nil)
		b, _, err := c.get(ctx, req, name, channel, r, max)
		body = b
		return err
	})
	return body, err
}

// get does one GET of a small document, its body capped at max; a 404 is
// ErrNoRelease.
func (c *Client) get(ctx context.Context, req *http.Request, name, channel, r string, max int64) ([]byte, http.Header, error) {
	p := req.URL.Path
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		text := c.statusText(resp) // asking for a pack or torrent that does not exist is routine
		if resp.StatusCode == http.StatusNotFound {
			return nil, nil, permanent{fmt.Errorf("%s/%s@%s: %w", name, channel, r, manifest.ErrNoRelease)}
		}
		return nil, nil, fmt.Errorf("%w: GET %s: %s", ErrPeerUnavailable, p, text)
	}
	if resp.ContentLength > max {
		return nil, nil, permanent{&manifest.VerifyError{Err: manifest.ErrTooLarge, Detail: fmt.Sprintf("GET %s: server declares %d bytes", p, resp.ContentLength)}}
	}
	t0 := time.Now()
	b, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	c.received.Add(int64(len(b)))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrPeerUnavailable, err)
	}
	if dt := time.Since(t0).Seconds(); len(b) >= rateMin && dt > 0 {
		c.rate.Store(math.Float64bits(float64(len(b)) / dt))
	}
	if int64(len(b)) > max {
		return nil, nil, permanent{&manifest.VerifyError{Err: manifest.ErrTooLarge, Detail: fmt.Sprintf("GET %s: more than %d bytes", p, max)}}
	}
	return b, resp.Header, nil
}

// Fetch retrieves chunks, verifies each against its ID and size (a ref of
// size 0 against its ID alone), and calls fn for each (from several
// goroutines). A chunk that fails verification is
// requested again; if it keeps failing Fetch returns a
// *chunkstore.IntegrityError (ErrCorrupt). fn's error stops the fetch.
// Fetch has the shape of delta.Fetcher.
func (c *Client) Fetch(ctx context.Context, refs []manifest.ChunkRef, fn func(chunkstore.Chunk) error) error {
	return c.FetchBatches(ctx, refs, func() (func(chunkstore.Chunk) error, func() error) { return fn, nil })
}

// FetchBatches is Fetch that says where its batches begin and end (the
// shape of delta.BatchFetcher): for each batch it calls open, from the
// goroutine that receives the batch, and hands that batch's chunks to the
// put it returned, in the order asked for; done (if not nil) follows the
// batch's last chunk, and its error stops the fetch like put's.
func (c *Client) FetchBatches(ctx context.Context, refs []manifest.ChunkRef, open func() (put func(chunkstore.Chunk) error, done func() error)) error {
	return c.FetchBatchesInto(ctx, refs, noInto(open))
}

// noInto is a FetchBatches receiver as a FetchBatchesInto one that gives
// no buffers.
func noInto(open func() (func(chunkstore.Chunk) error, func() error)) func() (func(chunkstore.ID, int) []byte, func(chunkstore.Chunk) error, func() error) {
	return func() (func(chunkstore.ID, int) []byte, func(chunkstore.Chunk) error, func() error) {
		put, done := open()
		return nil, put, done
	}
}

// sink is where a batch's chunks go: put receives each verified chunk;
// into, if set, says where to decode a chunk of known size first
// (delta.BatchInto).
type sink struct {
	put  func(chunkstore.Chunk) error
	into func(id chunkstore.ID, size int) []byte
}

// verify checks stored bytes of r and decodes them where into says (or
// into a buffer of their own).
func (s sink) verify(r manifest.ChunkRef, stored []byte) (chunkstore.Chunk, error) {
	if s.into != nil && r.Size > 0 {
		if dst := s.into(r.ID, int(r.Size)); dst != nil {
			return chunkstore.VerifyInto(dst, r.ID, stored, int(r.Size))
		}
	}
	return chunkstore.Verify(r.ID, stored, plainSize(r))
}

// FetchBatchesInto is FetchBatches that decodes each chunk of known size
// into the buffer into returns, past its length (nil: a buffer of its
// own), before put receives it (the shape of delta.BatchInto).
func (c *Client) FetchBatchesInto(ctx context.Context, refs []manifest.ChunkRef, open func() (into func(chunkstore.ID, int) []byte, put func(chunkstore.Chunk) error, done func() error)) error {
	if len(refs) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan []manifest.ChunkRef)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	fail := func(err error) { once.Do(func() { first = err; cancel() }) }
	for w := 0; w < c.opts.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				err := inBatch(open, func(s sink) error { return c.fetchBatch(ctx, b, s, false) })
				if err != nil {
					fail(err)
				}
			}
		}()
	}
	var cur []manifest.ChunkRef
	size := 0
	send := func() bool {
		if len(cur) == 0 {
			return true
		}
		select {
		case batches <- cur:
			cur, size = nil, 0
			return true
		case <-ctx.Done():
			return false
		}
	}
	for _, r := range refs {
		cur = append(cur, r)
		size += int(r.Size)
		if size >= c.opts.BatchBytes || len(cur) >= BatchMax {
			if !send() {
				break
			}
		}
	}
	send()
	close(batches)
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// inBatch delivers one batch: fetch hands its chunks to the sink that open
// returns, and done (if any) follows; the first error wins.
func inBatch(open func() (func(chunkstore.ID, int) []byte, func(chunkstore.Chunk) error, func() error), fetch func(sink) error) error {
	into, put, done := open()
	err := fetch(sink{put: put, into: into})
	if done != nil {
		if e := done(); err == nil {
			err = e
		}
	}
	return err
}

// fetchBatch fetches one batch with retries; only the chunks not yet
// delivered are asked for again. single asks with one GET per chunk.
func (c *Client) fetchBatch(ctx context.Context, refs []manifest.ChunkRef, fn sink, single bool) error {
	pending := refs
	corrupt := map[chunkstore.ID]int{}
	return c.retry(ctx, "chunks", func() error {
		var rest []manifest.ChunkRef
		var err error
		if !single && c.batchOK.Load() >= 0 {
			rest, err = c.postBatch(ctx, pending, fn, corrupt)
			if errors.Is(err, errNoBatch) {
				c.batchOK.Store(-1)
			}
		}
		if single || c.batchOK.Load() < 0 {
			rest, err = c.getEach(ctx, pending, fn, corrupt)
		}
		pending = rest
		return err
	})
}

var errNoBatch = errors.New("server has no batch route")

// plainSize is r's plain size for chunkstore.Verify: a ref without a size
// (0: a branch asked for a chunk by ID alone) is checked by its ID only.
func plainSize(r manifest.ChunkRef) int {
	if r.Size == 0 {
		return -1
	}
	return int(r.Size)
}

// maxStored is the most stored bytes r may take.
func maxStored(r manifest.ChunkRef) int64 {
	if r.Size == 0 {
		return int64(chunkstore.MaxStoredSize(chunkstore.MaxChunkSize))
	}
	return int64(chunkstore.MaxStoredSize(int(r.Size)))
}

// deliver verifies one received chunk and hands it on. A corrupt chunk is
// retried up to Retries times in total before it is a permanent error.
func (c *Client) deliver(r manifest.ChunkRef, stored []byte, fn sink, corrupt map[chunkstore.ID]int) (retry bool, err error) {
	ch, err := fn.verify(r, stored)
	if err != nil {
		corrupt[r.ID]++
		c.opts.Logger.Warn("server sent a corrupt chunk", "id", r.ID, "err", err)
		if corrupt[r.ID] > c.opts.Retries {
			return false, permanent{err}
		}
		return true, nil
	}
	if err := fn.put(ch); err != nil {
		return false, permanent{err}
	}
	return false, nil
}

func (c *Client) postBatch(ctx context.Context, refs []manifest.ChunkRef, fn sink, corrupt map[chunkstore.ID]int) ([]manifest.ChunkRef, error) {
	var body bytes.Buffer
	limit := int64(0)
	for _, r := range refs {
		body.WriteString(r.ID.String())
		body.WriteByte('\n')
		limit += 36 + maxStored(r)
	}
	req, _ := http.NewRequest(http.MethodPost, c.url("/v1/chunks/batch"), &body)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := c.do(ctx, req)
	if err != nil {
		return refs, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		return refs, errNoBatch
	case resp.StatusCode != http.StatusOK:
		return refs, fmt.Errorf("%w: POST batch: %s", ErrPeerUnavailable, c.statusText(resp))
	}
	c.batchOK.Store(1)
	// A body longer than the batch can hold is cut off here.
	br := bufio.NewReaderSize(&countReader{r: io.LimitReader(resp.Body, limit), n: &c.received}, 256<<10)
	var hdr [36]byte
	var again []manifest.ChunkRef
	for i, r := range refs {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return append(again, refs[i:]...), fmt.Errorf("%w: batch cut short: %v", ErrPeerUnavailable, err)
		}
		if chunkstore.ID(hdr[:32]) != r.ID {
			return append(again, refs[i:]...), fmt.Errorf("%w: batch out of order", ErrPeerUnavailable)
		}
		n := binary.BigEndian.Uint32(hdr[32:])
		if n == missingChunk {
			return append(again, refs[i:]...), permanent{fmt.Errorf("chunk %s: server: %w", r.ID.Short(), chunkstore.ErrNotFound)}
		}
		if int64(n) > maxStored(r) {
			corrupt[r.ID] = c.opts.Retries
			return nil, permanent{&chunkstore.IntegrityError{ID: r.ID, Reason: fmt.Sprintf("server declares %d stored bytes for %d plain bytes", n, r.Size)}}
		}
		stored := make([]byte, n)
		if _, err := io.ReadFull(br, stored); err != nil {
			return append(again, refs[i:]...), fmt.Errorf("%w: batch cut short: %v", ErrPeerUnavailable, err)
		}
		retry, err := c.deliver(r, stored, fn, corrupt)
		if err != nil {
			return nil, err
		}
		if retry {
			again = append(again, r)
		}
	}
	if len(again) > 0 {
		return again, fmt.Errorf("%d corrupt chunks from server", len(again))
	}
	return nil, nil
}

func (c *Client) getEach(ctx context.Context, refs []manifest.ChunkRef, fn sink, corrupt map[chunkstore.ID]int) ([]manifest.ChunkRef, error) {
	for i, r := range refs {
		req, _ := http.NewRequest(http.MethodGet, c.url("/v1/chunks/"+r.ID.String()), nil)
		resp, err := c.do(ctx, req)
		if err != nil {
			return refs[i:], err
		}
		if resp.StatusCode == http.StatusNotFound {
			resp.Body.Close()
			return refs[i:], permanent{fmt.Errorf("chunk %s: server: %w", r.ID.Short(), chunkstore.ErrNotFound)}
		}
		if resp.StatusCode != http.StatusOK {
			text := c.statusText(resp)
			resp.Body.Close()
			return refs[i:], fmt.Errorf("%w: GET chunk: %s", ErrPeerUnavailable, text)
		}
		limit := maxStored(r)
		stored, err := io.ReadAll(&countReader{r: io.LimitReader(resp.Body, limit+1), n: &c.received})
		resp.Body.Close()
		if err != nil {
			return refs[i:], fmt.Errorf("%w: %v", ErrPeerUnavailable, err)
		}
		if int64(len(stored)) > limit {
			stored = stored[:limit+1] // verification fails on the cut-off body
		}
		retry, err := c.deliver(r, stored, fn, corrupt)
		if err != nil {
			return nil, err
		}
		if retry {
			return refs[i:], fmt.Errorf("corrupt chunk %s from server", r.ID.Short())
		}
	}
	return nil, nil
}

// CountReader returns r counting the bytes read from it into n.
func CountReader(r io.Reader, n *atomic.Int64) io.Reader { return &countReader{r: r, n: n} }

type countReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
