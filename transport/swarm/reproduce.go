package swarm

import (
	"context"
	"crypto/sha1"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/imgctl/imgctl/chunkstore"
)

// levels are tried in this order to reproduce a chunk's stored bytes: the
// publisher's default first.
var levels = [...]chunkstore.Level{chunkstore.LevelDefault, chunkstore.LevelFastest, chunkstore.LevelBetter, chunkstore.LevelBest}

// giveUpAfter: when this many chunks in a row reproduce at no level, the
// origin compressed with something else (another zstd version): stop
// spending CPU on it.
const giveUpAfter = 32

// Reproduce lets the client seed chunks this terminal holds only as plain
// bytes (decoded from a delta pack) and not in its store. plain(id) returns a chunk's verified content (nil:
// not held). Each is compressed the way origins store chunks and staged as
// if a peer had sent it; the pieces those complete are hashed against the
// torrent's info, and only chunks whose pieces all pass enter the store
// (decoded and checked against their BLAKE3 ID like any download) and are
// seeded. A chunk whose compression differs from the origin's fails its
// piece and stays out: a peer never receives bytes the info does not vouch
// for. It returns how many chunks entered the store.
func (h *Handle) Reproduce(ctx context.Context, plain func(id chunkstore.ID) ([]byte, error)) (int, error) {
	t := h.s
	if t == nil {
		return 0, nil
	}
	if t.s.put == nil {
		return 0, fmt.Errorf("this role does not download")
	}
	var (
		mu      sync.Mutex
		staged  = map[int]bool{}
		misses  atomic.Int32
		lastLvl atomic.Int32
	)
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(runtime.GOMAXPROCS(0))
	for f := 1; f <= len(t.L.Chunks); f++ {
		if t.Have(f) {
			continue
		}
		if misses.Load() >= giveUpAfter {
			break
		}
		if ectx.Err() != nil {
			break
		}
		eg.Go(func() error {
			p, err := plain(t.L.Chunks[f-1].ID)
			if err != nil || p == nil {
				return err
			}
			_, n := t.L.FileRange(f)
			first := chunkstore.Level(lastLvl.Load())
			for i, l := range append([]chunkstore.Level{first}, levels[:]...) {
				if i > 0 && l == first {
					continue
				}
				c, err := chunkstore.Encode(p, l)
				if err != nil {
					return err
				}
				if int64(len(c.Stored())) != n {
					continue
				}
				if err := t.stageFile(f, c.Stored()); err != nil {
					return err
				}
				lastLvl.Store(int32(l))
				misses.Store(0)
				mu.Lock()
				staged[f] = true
				mu.Unlock()
				return nil
			}
			misses.Add(1)
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		return 0, err
	}
	// Hash every piece that is now whole (held or staged files only)
	// against the info, and admit what passes; the client then offers it.
	info := h.t.Info()
	buf := make([]byte, t.L.PieceLength)
	checked := map[int]bool{}
	for f := range staged {
		a, z := t.L.PiecesOf(f)
		for p := a; p <= z; p++ {
			if checked[p] {
				continue
			}
			checked[p] = true
			whole := true
			first, last := t.L.FilesOf(p)
			for g := first; g <= last && whole; g++ {
				whole = staged[g] || t.Have(g)
			}
			if !whole || ctx.Err() != nil {
				continue
			}
			_, pn := t.L.PieceRange(p)
			b := buf[:pn]
			if _, err := (piece{t, p}).ReadAt(b, 0); err != nil {
				return 0, err
			}
			if want := info.Piece(p).V1Hash(); !want.Ok || sha1.Sum(b) != want.Value {
				continue
			}
			if err := (piece{t, p}).MarkComplete(); err != nil {
				return 0, err
			}
			h.t.Piece(p).UpdateCompletion()
		}
	}
	n := 0
	for f := range staged {
		if t.Have(f) {
			n++
		}
	}
	if fl, ok := t.s.put.(interface{ Flush(context.Context) error }); ok && n > 0 {
		return n, fl.Flush(ctx)
	}
	return n, nil
}

// stageFile stages file f's bytes, reproduced locally, as a peer's would
// be; nothing trusts them until their pieces pass.
func (t *Torrent) stageFile(f int, b []byte) error {
	off, n := t.L.FileRange(f)
	if int64(len(b)) != n {
		return fmt.Errorf("file %d: %d bytes, the torrent says %d", f, len(b), n)
	}
	return t.writeStaged(b, off)
}
