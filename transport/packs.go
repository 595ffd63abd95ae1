package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
)

// Delta packs (delta.BuildPack): the signed record of the pack from one
// revision to another is a side file of the newer release; the pack itself
// is a content-addressed object of the store.
//
//	GET /v1/packs/{name}/{channel}/{rev}/from/{from}   the signed pack record
//	GET /v1/packs/{name}/{channel}/{rev}/from/{from}/info   its torrent's info bytes
//	GET /v1/packs/{name}/{channel}/{rev}/from/{from}/lean-info   its lean twin's
//	GET /v1/packs/{id}                                 the pack (Range supported)

// packSide serves a side file of the pack from revision {from} to the
// release in the path: its record, or a torrent's info bytes. A branch
// cache fetches them from upstream first (Upstream.PackRecord).
//
// object, for an info route, names the pack object of that torrent: a
// terminal asks for the info because it is about to download that object
// from the swarm, and a branch that does not hold it yet then fetches it
// from upstream at once, in the background, so that it seeds it (serve
// --seed-torrents) while the terminal looks for peers. Without that the
// first terminal behind a branch found no seeder, waited out its
// --p2p-stall and fetched the pack over HTTP.
func (s *Server) packSide(kind func(from uint64) string, contentType string, object func(*manifest.PackRecord) *manifest.PackObject) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		from, err := strconv.ParseUint(r.PathValue("from"), 10, 64)
		if err != nil || from == 0 {
			http.Error(w, "bad revision", http.StatusBadRequest)
			return
		}
		if s.up != nil {
			name, channel := r.PathValue("name"), r.PathValue("channel")
			rev, _ := strconv.ParseUint(r.PathValue("rev"), 10, 64)
			rec, err := s.up.PackRecord(r.Context(), name, channel, rev, from)
			if err != nil && !errors.Is(err, manifest.ErrNoRelease) {
				s.log.Warn("upstream pack record", "err", err)
			} else if err == nil && object != nil {
				s.prefetchPack(object(rec))
			}
		}
		b, ok := s.releaseSide(w, r, kind(from))
		if !ok {
			return
		}
		w.Header().Set("Content-Type", contentType)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	}
}

// prefetchPack starts fetching pack object o (if any) from upstream (see
// packSide).
func (s *Server) prefetchPack(o *manifest.PackObject) {
	if o == nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), packPrefetchTimeout)
		defer cancel()
		if err := s.up.Pack(ctx, o.Pack, o.Size); err != nil {
			s.log.Warn("upstream pack", "pack", o.Pack.Short(), "err", err)
		}
	}()
}

// packPrefetchTimeout bounds a branch's background fetch of a pack.
const packPrefetchTimeout = 30 * time.Minute

// mainPack and leanPack pick a record's pack objects for packSide.
func mainPack(r *manifest.PackRecord) *manifest.PackObject {
	return &manifest.PackObject{Pack: r.Pack, Size: r.Size}
}

func leanPack(r *manifest.PackRecord) *manifest.PackObject { return r.Lean }

func (s *Server) handlePack(w http.ResponseWriter, r *http.Request) {
	id, err := chunkstore.ParseID(r.PathValue("id"))
	if err != nil {
		http.Error(w, "bad pack id", http.StatusBadRequest)
		return
	}
	if s.up != nil {
		// The size a terminal may ask for is bounded by the records this
		// branch holds; fetch at most what the largest pack can be.
		if err := s.up.Pack(r.Context(), id, maxPackObject); err != nil {
			s.log.Warn("upstream pack", "pack", id.Short(), "err", err)
		}
	}
	f, err := os.Open(manifest.PackPath(s.root, id))
	if err != nil {
		http.Error(w, "no such pack", http.StatusNotFound)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, f)
}

// PackInfo fetches the info bytes of a pack's torrent, or of its lean
// twin's (the caller checks them against the record).
func (c *Client) PackInfo(ctx context.Context, name, channel string, rev, from uint64, lean bool, max int64) ([]byte, error) {
	suffix := "/info"
	if lean {
		suffix = "/lean-info"
	}
	return c.release(ctx, "/v1/packs/", "/from/"+strconv.FormatUint(from, 10)+suffix, name, channel, rev, max)
}

// maxPackObject bounds a pack a branch cache fetches for its terminals.
const maxPackObject = 4 << 30

// PackRecord fetches the signed record of the pack from revision from to
// release rev (a 404 is ErrNoRelease: no such pack).
func (c *Client) PackRecord(ctx context.Context, name, channel string, rev, from uint64) ([]byte, error) {
	return c.release(ctx, "/v1/packs/", "/from/"+strconv.FormatUint(from, 10), name, channel, rev, manifest.MaxPackRecord)
}

// Pack opens the pack id for reading from byte off (a Range request when
// off > 0); at most size bytes of the pack are read (the record's size). A
// body that breaks off is asked for again from where it broke, under the
// client's retry policy (Retries breaks, Backoff doubling). Bytes read
// count as received.
func (c *Client) Pack(ctx context.Context, id chunkstore.ID, off, size int64) (io.ReadCloser, error) {
	r := &packReader{c: c, ctx: ctx, id: id, off: off, size: size}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

// packReader is a pack body that resumes (Range) where it broke off.
type packReader struct {
	c         *Client
	ctx       context.Context
	id        chunkstore.ID
	off, size int64
	body      io.ReadCloser
	breaks    int
}

// open requests the pack from r.off, retrying as the client does.
func (r *packReader) open() error {
	return r.c.retry(r.ctx, "pack "+r.id.Short(), func() error {
		body, err := r.c.packBody(r.ctx, r.id, r.off)
		if err == nil {
			r.body = body
		}
		return err
	})
}

func (r *packReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.size-r.off)]
	for {
		n, err := r.body.Read(p)
		r.off += int64(n)
		r.c.received.Add(int64(n))
		if n > 0 || err == nil {
			return n, nil
		}
		if err == io.EOF {
			// All the server declared (net/http reports a body cut short
			// of its Content-Length as io.ErrUnexpectedEOF): size is a cap.
			return 0, io.EOF
		}
		// Broken off: ask again from r.off.
		r.body.Close()
		r.body = nil
		if r.ctx.Err() != nil {
			return 0, r.ctx.Err()
		}
		if r.breaks >= r.c.opts.Retries {
			return 0, fmt.Errorf("%w: pack %s at byte %d: %v", ErrPeerUnavailable, r.id.Short(), r.off, err)
		}
		r.breaks++
		r.c.opts.Logger.Warn("the pack's download broke off; resuming", "pack", r.id.Short(), "at", r.off, "err", err)
		if err := r.open(); err != nil {
			return 0, err
		}
	}
}

func (r *packReader) Close() error {
	if r.body == nil {
		return nil
	}
	return r.body.Close()
}

// packBody is one GET of the pack from byte off.
func (c *Client) packBody(ctx context.Context, id chunkstore.ID, off int64) (io.ReadCloser, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/v1/packs/"+url.PathEscape(id.String())), nil)
	if off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	switch {
	case off > 0 && resp.StatusCode == http.StatusPartialContent:
		var start int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &start); err != nil || start != off {
			resp.Body.Close()
			return nil, permanent{fmt.Errorf("%w: GET pack %s from %d: Content-Range %q", ErrPeerUnavailable, id.Short(), off, resp.Header.Get("Content-Range"))}
		}
	case resp.StatusCode == http.StatusOK:
		if off > 0 { // no ranges here: skip what the caller holds
			if _, err := io.CopyN(io.Discard, &countReader{r: resp.Body, n: &c.received}, off); err != nil {
				resp.Body.Close()
				return nil, fmt.Errorf("%w: GET pack %s: %v", ErrPeerUnavailable, id.Short(), err)
			}
		}
	case resp.StatusCode == http.StatusNotFound:
		resp.Body.Close()
		return nil, permanent{fmt.Errorf("%w: GET pack %s: %s", ErrPeerUnavailable, id.Short(), resp.Status)}
	default:
		resp.Body.Close()
		return nil, fmt.Errorf("%w: GET pack %s: %s", ErrPeerUnavailable, id.Short(), resp.Status)
	}
	return resp.Body, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// PackRecord reads the record of the pack from revision from to rev.
func (s *DirSource) PackRecord(_ context.Context, name, channel string, rev, from uint64) ([]byte, error) {
	b, err := s.rel.ReadSide(name, channel, rev, manifest.SidePack(from))
	if err != nil {
		return nil, fmt.Errorf("%w: no pack %s/%s %d→%d", manifest.ErrNoRelease, name, channel, from, rev)
	}
	s.received.Add(int64(len(b)))
	return b, nil
}

// Pack opens the pack id from byte off.
func (s *DirSource) Pack(_ context.Context, id chunkstore.ID, off, size int64) (io.ReadCloser, error) {
	f, err := os.Open(manifest.PackPath(s.root, id))
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return readCloser{Reader: &countReader{r: io.LimitReader(f, size-off), n: &s.received}, Closer: f}, nil
}
