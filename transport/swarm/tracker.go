package swarm

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/anacrolix/generics"
	"github.com/anacrolix/torrent/tracker"
	httpTrackerServer "github.com/anacrolix/torrent/tracker/http/server"
	trackerServer "github.com/anacrolix/torrent/tracker/server"
	"github.com/anacrolix/torrent/tracker/udp"
)

// Tracker is a small in-memory BitTorrent HTTP tracker (BEP 3 announce,
// compact peer lists), for `imgctl serve --tracker`: a branch server is
// tracker, seeder and webseed in one process. It tracks any infohash (a
// closed network has no strangers to keep out; opentracker with a
// whitelist is the alternative) and forgets a peer that has not announced
// for three intervals, and at least ten minutes.
type Tracker struct {
	Interval time.Duration
	now      func() time.Time

	mu    sync.Mutex
	peers map[trackerServer.InfoHash]map[trackerServer.AnnounceAddr]peerState
}

type peerState struct {
	seen time.Time
	left int64
}

// NewTracker returns a tracker asking peers to announce every interval.
func NewTracker(interval time.Duration) *Tracker {
	return &Tracker{Interval: interval, now: time.Now, peers: map[trackerServer.InfoHash]map[trackerServer.AnnounceAddr]peerState{}}
}

// Handler is the tracker's announce endpoint (mount it at /announce).
func (t *Tracker) Handler() http.Handler {
	return httpTrackerServer.Handler{Announce: &trackerServer.AnnounceHandler{AnnounceTracker: t}}
}

// TrackAnnounce implements trackerServer.AnnounceTracker.
func (t *Tracker) TrackAnnounce(_ context.Context, req udp.AnnounceRequest, addr trackerServer.AnnounceAddr) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.peers[req.InfoHash]
	if ps == nil {
		ps = map[trackerServer.AnnounceAddr]peerState{}
		t.peers[req.InfoHash] = ps
	}
	if req.Event == tracker.Stopped {
		delete(ps, addr)
		return nil
	}
	ps[addr] = peerState{seen: t.now(), left: req.Left}
	return nil
}

// expireLocked drops peers not heard from for three intervals.
func (t *Tracker) expireLocked(ih trackerServer.InfoHash) map[trackerServer.AnnounceAddr]peerState {
	ps := t.peers[ih]
	// Clients do not keep to short intervals (anacrolix re-announces a
	// complete torrent far less often than asked: an origin seeder vanished
	// from a 2 s tracker), so a peer is kept for at least ten minutes.
	cut := t.now().Add(-max(3*t.Interval, 10*time.Minute))
	for a, p := range ps {
		if p.seen.Before(cut) {
			delete(ps, a)
		}
	}
	return ps
}

// Scrape implements trackerServer.AnnounceTracker.
func (t *Tracker) Scrape(_ context.Context, ihs []trackerServer.InfoHash) ([]udp.ScrapeInfohashResult, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]udp.ScrapeInfohashResult, len(ihs))
	for i, ih := range ihs {
		for _, p := range t.expireLocked(ih) {
			if p.left == 0 {
				out[i].Seeders++
			} else {
				out[i].Leechers++
			}
		}
	}
	return out, nil
}

// GetPeers implements trackerServer.AnnounceTracker: every other peer of
// the torrent, seeders counted apart.
func (t *Tracker) GetPeers(_ context.Context, ih trackerServer.InfoHash, opts trackerServer.GetPeersOpts, remote trackerServer.AnnounceAddr) trackerServer.ServerAnnounceResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	var res trackerServer.ServerAnnounceResult
	var seeders, leechers int32
	limit := opts.MaxCount.UnwrapOr(200)
	for a, p := range t.expireLocked(ih) {
		if p.left == 0 {
			seeders++
		} else {
			leechers++
		}
		if a == remote || uint(len(res.Peers)) >= limit {
			continue
		}
		res.Peers = append(res.Peers, trackerServer.PeerInfo{AnnounceAddr: a})
	}
	res.Seeders, res.Leechers = generics.Some(seeders), generics.Some(leechers)
	res.Interval = generics.Some(int32(t.Interval / time.Second))
	return res
}
