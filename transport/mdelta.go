package transport

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"sync"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
)

// Manifest deltas: a terminal that holds an earlier manifest of the same
// name and channel (its running slot's, its installed release's) names it
// in the request; the server answers with the new manifest compressed with
// the old one as a zstd raw dictionary. Consecutive manifests share most
// chunk IDs and paths, so the answer is a fraction of the manifest (which is
// 0.4 MB for a 1 GiB image and for the Go toolchain as a bundle). The
// client rebuilds the exact envelope and verifies it as always: the
// encoding changes nothing about trust.
const (
	headerBase     = "X-Imgctl-Base"     // request: hex ID of a manifest the client holds
	headerEncoding = "X-Imgctl-Encoding" // response: "zstd-base" when the body is a delta
	encodingDelta  = "zstd-base"
	maxDeltaBases  = 16 // revisions searched for the base
)

// deltaCache remembers manifests by ID (the bases servers look up) and
// recent deltas (many terminals ask for the same pair).
type deltaCache struct {
	mu     sync.Mutex
	deltas map[[2]chunkstore.ID][]byte
	order  [][2]chunkstore.ID
}

func (s *Server) manifestDelta(name, channel string, env []byte, baseHex string) ([]byte, bool) {
	b, err := hex.DecodeString(baseHex)
	if err != nil || len(b) != len(chunkstore.ID{}) {
		return nil, false
	}
	var base chunkstore.ID
	copy(base[:], b)
	target, err := manifest.ID(env)
	if err != nil || target == base {
		return nil, false
	}
	key := [2]chunkstore.ID{base, target}
	s.deltas.mu.Lock()
	if d, ok := s.deltas.deltas[key]; ok {
		s.deltas.mu.Unlock()
		return d, true
	}
	s.deltas.mu.Unlock()
	// Find the base among the recent revisions of the same name/channel.
	revs, err := s.rel.Revisions(name, channel)
	if err != nil {
		return nil, false
	}
	var baseEnv []byte
	for i := len(revs) - 1; i >= 0 && i >= len(revs)-maxDeltaBases; i-- {
		e, _, err := s.rel.Read(name, channel, revs[i])
		if err != nil {
			continue
		}
		if id, err := manifest.ID(e); err == nil && id == base {
			baseEnv = e
			break
		}
	}
	if baseEnv == nil {
		return nil, false
	}
	d, err := chunkstore.EncodeWithDict(env, baseEnv, chunkstore.LevelBetter)
	if err != nil || len(d) >= len(env) {
		return nil, false
	}
	s.deltas.mu.Lock()
	if s.deltas.deltas == nil {
		s.deltas.deltas = map[[2]chunkstore.ID][]byte{}
	}
	if len(s.deltas.order) >= 64 {
		delete(s.deltas.deltas, s.deltas.order[0])
		s.deltas.order = s.deltas.order[1:]
	}
	s.deltas.deltas[key] = d
	s.deltas.order = append(s.deltas.order, key)
	s.deltas.mu.Unlock()
	return d, true
}

// ManifestFrom is Manifest for a client that holds base, an earlier signed
// manifest of the same release name: the server may send the new one as a
// delta against it. The result is the exact envelope, to verify as usual.
func (c *Client) ManifestFrom(ctx context.Context, name, channel string, rev uint64, base []byte) ([]byte, error) {
	id, err := manifest.ID(base)
	if err != nil || len(base) == 0 {
		return c.Manifest(ctx, name, channel, rev)
	}
	r := "latest"
	if rev > 0 {
		r = fmt.Sprint(rev)
	}
	p := "/v1/manifests/" + url.PathEscape(name) + "/" + url.PathEscape(channel) + "/" + r
	var env []byte
	err = c.retry(ctx, p, func() error {
		req, _ := http.NewRequest(http.MethodGet, c.url(p), nil)
		req.Header.Set(headerBase, id.String())
		b, hdr, err := c.get(ctx, req, name, channel, r, c.opts.MaxManifest)
		if err != nil {
			return err
		}
		if hdr.Get(headerEncoding) != encodingDelta {
			env = b
			return nil
		}
		full, err := chunkstore.DecodeWithDict(b, base, manifest.MaxEnvelope)
		if err != nil {
			return permanent{&manifest.VerifyError{Err: manifest.ErrMalformed, Detail: "manifest delta: " + err.Error()}}
		}
		env = full
		return nil
	})
	return env, err
}
