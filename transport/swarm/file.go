package swarm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
)

// Single-file torrents carry objects that are not chunks: delta packs
// (delta.BuildPack), one torrent each, named by the pack's file name. The
// infohash is in the pack's signed record; the file's BLAKE3 is checked by
// the caller once it is complete.

// FilePieceLength is the piece length of a file torrent.
const FilePieceLength = 256 << 10

// BuildFile returns the info bytes of a v1 single-file torrent of path.
func BuildFile(path string) ([]byte, error) {
	info := metainfo.Info{PieceLength: FilePieceLength}
	if err := info.BuildFromFilePath(path); err != nil {
		return nil, err
	}
	if len(info.Files) != 0 {
		return nil, fmt.Errorf("%s: not a single file", path)
	}
	return bencode.Marshal(info)
}

// FileHandle is one file torrent in a client.
type FileHandle struct {
	t      *torrent.Torrent
	path   string
	failed chan error // the first block the storage could not write
}

// AddFile adds the file torrent infoBytes (authenticated by the caller)
// with its data at dir/<name>: seeded if complete there, else downloaded by
// Download (as dir/<name>.part until complete).
func (c *Client) AddFile(infoBytes []byte, dir string) (*FileHandle, error) {
	mi := metainfo.MetaInfo{InfoBytes: infoBytes}
	info, err := mi.UnmarshalInfo()
	if err != nil {
		return nil, fmt.Errorf("torrent info: %w", err)
	}
	if len(info.Files) != 0 || info.Name == "" || strings.ContainsAny(info.Name, `/\`) || info.Name == "." || info.Name == ".." {
		return nil, errors.New("torrent info: not a single file with a plain name")
	}
	st := storage.NewFileOpts(storage.NewFileClientOpts{ClientBaseDir: dir, PieceCompletion: storage.NewMapPieceCompletion(), Logger: c.log})
	t, _ := c.cl.AddTorrentOpt(torrent.AddTorrentOpts{InfoHash: mi.HashInfoBytes(), InfoBytes: infoBytes, Storage: st})
	h := &FileHandle{t: t, path: filepath.Join(dir, info.Name), failed: make(chan error, 1)}
	failOnWriteErrors(t, func(err error) {
		select {
		case h.failed <- err:
		default:
		}
	})
	c.addSources(t, nil)
	return h, nil
}

// Path is where the file is (complete after Download).
func (h *FileHandle) Path() string { return h.path }

// Download fetches the whole file, waiting until it is complete, ctx ends,
// or no byte arrived for stall (0: no limit).
func (h *FileHandle) Download(ctx context.Context, stall time.Duration) error {
	h.t.DownloadAll()
	done := h.t.Complete().On()
	last, lastAt := h.t.BytesMissing(), time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			// The storage renames the part file when the last piece is
			// verified; wait for the file to appear under its name.
			for i := 0; i < 50; i++ {
				if _, err := os.Stat(h.path); err == nil {
					return nil
				}
				time.Sleep(20 * time.Millisecond)
			}
			return fmt.Errorf("%s: complete, but the file is not there", h.path)
		case <-ctx.Done():
			return context.Cause(ctx)
		case err := <-h.failed:
			return fmt.Errorf("%s: %w", filepath.Base(h.path), err)
		case <-tick.C:
			if m := h.t.BytesMissing(); m != last {
				last, lastAt = m, time.Now()
			} else if stall > 0 && time.Since(lastAt) > stall {
				return fmt.Errorf("%d bytes still missing: %w", m, ErrStalled)
			}
		}
	}
}

// FromPeers is the payload received from peers.
func (h *FileHandle) FromPeers() int64 {
	s := h.t.Stats()
	return s.PeerConns.BytesReadData.Int64()
}

// Drop removes the torrent from the client (the file stays).
func (h *FileHandle) Drop() { h.t.Drop() }
