package manifest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/imgctl/imgctl/chunkstore"
)

// Releases keeps signed manifests as files under
// <root>/manifests/<name>/<channel>/<revision>.imgm. Files are written
// atomically, after the chunks they name, so a reader (a server) that sees
// a manifest can serve all of it. Reading needs no lock.
type Releases struct{ root string }

// ErrNoRelease: no such release.
var ErrNoRelease = errors.New("no such release")

// OpenReleases returns the release directory of the store at root.
func OpenReleases(root string) *Releases { return &Releases{root: filepath.Join(root, "manifests")} }

// Release names one stored manifest.
type Release struct {
	Name     string
	Channel  string
	Revision uint64
	Path     string
}

func (r *Releases) path(name, channel string, rev uint64) string {
	return filepath.Join(r.root, name, channel, strconv.FormatUint(rev, 10)+".imgm")
}

// Put stores env, which must encode m, after its side files (kind →
// content), with one directory sync for all. It refuses to
// replace a release.
func (r *Releases) Put(env []byte, m *Manifest, sides ...Side) error {
	p := r.path(m.Name, m.Channel, m.Revision)
	if _, err := os.Stat(p); err == nil {
		return fmt.Errorf("release %s/%s@%d exists", m.Name, m.Channel, m.Revision)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	var paths []string
	var data [][]byte
	for _, s := range sides {
		paths = append(paths, r.sidePath(m.Name, m.Channel, m.Revision, s.Kind))
		data = append(data, s.Data)
	}
	return chunkstore.WriteFilesAtomic(append(paths, p), append(data, env), 0o644)
}

// Side is a side file given to Put.
type Side struct {
	Kind string
	Data []byte
}

// Read returns the envelope of a release; rev 0 means the latest.
func (r *Releases) Read(name, channel string, rev uint64) ([]byte, uint64, error) {
	if !ValidName(name) || !ValidName(channel) {
		return nil, 0, fmt.Errorf("%w: invalid name or channel", ErrNoRelease)
	}
	if rev == 0 {
		revs, err := r.Revisions(name, channel)
		if err != nil {
			return nil, 0, err
		}
		if len(revs) == 0 {
			return nil, 0, fmt.Errorf("%w: %s/%s", ErrNoRelease, name, channel)
		}
		rev = revs[len(revs)-1]
	}
	b, err := os.ReadFile(r.path(name, channel, rev))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("%w: %s/%s@%d", ErrNoRelease, name, channel, rev)
	}
	return b, rev, err
}

// Revisions lists the stored revisions of name/channel in ascending order.
func (r *Releases) Revisions(name, channel string) ([]uint64, error) {
	ents, err := os.ReadDir(filepath.Join(r.root, name, channel))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var revs []uint64
	for _, e := range ents {
		s, ok := strings.CutSuffix(e.Name(), ".imgm")
		if !ok {
			continue
		}
		if v, err := strconv.ParseUint(s, 10, 64); err == nil && v > 0 {
			revs = append(revs, v)
		}
	}
	sort.Slice(revs, func(i, j int) bool { return revs[i] < revs[j] })
	return revs, nil
}

// List returns every stored release, sorted by name, channel, revision.
func (r *Releases) List() ([]Release, error) {
	var out []Release
	names, err := os.ReadDir(r.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if !n.IsDir() || !ValidName(n.Name()) {
			continue
		}
		chans, err := os.ReadDir(filepath.Join(r.root, n.Name()))
		if err != nil {
			return nil, err
		}
		for _, c := range chans {
			if !c.IsDir() || !ValidName(c.Name()) {
				continue
			}
			revs, err := r.Revisions(n.Name(), c.Name())
			if err != nil {
				return nil, err
			}
			for _, v := range revs {
				out = append(out, Release{Name: n.Name(), Channel: c.Name(), Revision: v, Path: r.path(n.Name(), c.Name(), v)})
			}
		}
	}
	return out, nil
}

// Remove deletes a stored release and its side files.
func (r *Releases) Remove(rel Release) error {
	if err := os.Remove(r.path(rel.Name, rel.Channel, rel.Revision)); err != nil {
		return err
	}
	side, _ := filepath.Glob(r.sidePath(rel.Name, rel.Channel, rel.Revision, "*"))
	for _, p := range side {
		os.Remove(p)
	}
	return nil
}

// Side files of a release, <revision>.<kind> beside its manifest: data
// derived from the release that servers hand out with it (a torrent's info
// bytes, the manifest the torrent carries). Put them before the manifest;
// Remove takes them along.
const (
	SideTorrentInfo     = "torrent-info"
	SideTorrentManifest = "torrent-manifest"
)

func (r *Releases) sidePath(name, channel string, rev uint64, kind string) string {
	return filepath.Join(r.root, name, channel, strconv.FormatUint(rev, 10)+"."+kind)
}

// ReadSide returns a side file of a release; a missing one wraps
// fs.ErrNotExist.
func (r *Releases) ReadSide(name, channel string, rev uint64, kind string) ([]byte, error) {
	if !ValidName(name) || !ValidName(channel) {
		return nil, fmt.Errorf("%w: invalid name or channel", ErrNoRelease)
	}
	return os.ReadFile(r.sidePath(name, channel, rev, kind))
}

// PutSide adds a side file to a stored release (a pack record made after
// the release was published), atomically.
func (r *Releases) PutSide(name, channel string, rev uint64, kind string, data []byte) error {
	if _, err := os.Stat(r.path(name, channel, rev)); err != nil {
		return fmt.Errorf("%w: %s/%s@%d", ErrNoRelease, name, channel, rev)
	}
	return chunkstore.WriteFileAtomic(r.sidePath(name, channel, rev, kind), data, 0o644)
}

// sideKinds lists the kinds of a release's side files.
func (r *Releases) sideKinds(name, channel string, rev uint64) []string {
	prefix := r.sidePath(name, channel, rev, "")
	paths, _ := filepath.Glob(prefix + "*")
	var out []string
	for _, p := range paths {
		out = append(out, strings.TrimPrefix(p, prefix))
	}
	return out
}
