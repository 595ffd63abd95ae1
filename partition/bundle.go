package partition

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
)

// BundleRoot is where a service bundle is installed: the directory-tree
// counterpart of an A/B pair of slots.
//
//	ROOT/releases/<rev>/       an installed, verified release (read-only by convention)
//	ROOT/releases/<rev>.imgm   its signed manifest: the layout that makes it a seed
//	ROOT/releases/.new-<rev>/  a release being written (never pointed at)
//	ROOT/current               symlink to releases/<rev>, replaced by rename (the flip)
//	ROOT/state.json            name, current and previous revision (atomic)
//
// A release directory appears under its final name only after every file
// verified and the file system was synced, and current is switched only to
// such a directory, so a kill -9 at any point leaves current on a complete
// release.
type BundleRoot struct {
	Dir string
}

// BundleState is what ROOT/state.json records.
type BundleState struct {
	Name     string    `json:"name"`
	Channel  string    `json:"channel"`
	Current  uint64    `json:"current"`
	Previous uint64    `json:"previous,omitempty"`
	Switched time.Time `json:"switched"`
}

const (
	bundleStateFile = "state.json"
	releasesDir     = "releases"
	currentLink     = "current"
	stagingPrefix   = ".new-"
)

// OpenBundleRoot opens (creating if needed) the bundle root at dir.
func OpenBundleRoot(dir string) (*BundleRoot, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(abs, releasesDir), 0755); err != nil {
		return nil, err
	}
	return &BundleRoot{Dir: abs}, nil
}

// ReleaseDir is the directory of revision rev.
func (r *BundleRoot) ReleaseDir(rev uint64) string {
	return filepath.Join(r.Dir, releasesDir, strconv.FormatUint(rev, 10))
}

// stagingDir is where revision rev is written before it is complete.
func (r *BundleRoot) stagingDir(rev uint64) string {
	return filepath.Join(r.Dir, releasesDir, stagingPrefix+strconv.FormatUint(rev, 10))
}

func (r *BundleRoot) manifestPath(rev uint64) string { return r.ReleaseDir(rev) + ".imgm" }

// State reads state.json (the zero state when nothing is installed).
func (r *BundleRoot) State() (BundleState, error) {
	var s BundleState
	b, err := os.ReadFile(filepath.Join(r.Dir, bundleStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", filepath.Join(r.Dir, bundleStateFile), err)
	}
	return s, nil
}

// Current returns the revision current points at (0: none).
func (r *BundleRoot) Current() (uint64, error) {
	t, err := os.Readlink(filepath.Join(r.Dir, currentLink))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	rev, err := strconv.ParseUint(filepath.Base(t), 10, 64)
	if err != nil || filepath.Dir(t) != releasesDir {
		return 0, fmt.Errorf("%s points at %q, not at a release", filepath.Join(r.Dir, currentLink), t)
	}
	return rev, nil
}

// Manifest returns the signed manifest an installed revision was verified
// against. A manifest without its release directory (Commit killed between
// writing the one and renaming the other) is no installed release.
func (r *BundleRoot) Manifest(rev uint64) ([]byte, error) {
	if !r.installed(rev) {
		return nil, fmt.Errorf("release %d is not installed", rev)
	}
	return os.ReadFile(r.manifestPath(rev))
}

// installed reports whether rev is a complete release: its tree and its
// manifest, which Commit writes first, are both in place.
func (r *BundleRoot) installed(rev uint64) bool {
	fi, err := os.Stat(r.ReleaseDir(rev))
	if err != nil || !fi.IsDir() {
		return false
	}
	_, err = os.Stat(r.manifestPath(rev))
	return err == nil
}

// Installed lists the complete releases, ascending.
func (r *BundleRoot) Installed() ([]uint64, error) {
	ents, err := os.ReadDir(filepath.Join(r.Dir, releasesDir))
	if err != nil {
		return nil, err
	}
	var revs []uint64
	for _, e := range ents {
		rev, err := strconv.ParseUint(e.Name(), 10, 64)
		if err == nil && r.installed(rev) {
			revs = append(revs, rev)
		}
	}
	sort.Slice(revs, func(a, b int) bool { return revs[a] < revs[b] })
	return revs, nil
}

// Stage prepares revision rev for writing: any earlier attempt is removed
// (its chunks are in the cache) and the staging path returned. It refuses
// a revision that is already installed.
func (r *BundleRoot) Stage(rev uint64) (string, error) {
	if _, err := os.Stat(r.ReleaseDir(rev)); err == nil {
		return "", fmt.Errorf("release %d is already installed in %s", rev, r.ReleaseDir(rev))
	}
	dir := r.stagingDir(rev)
	if err := removeTree(dir); err != nil {
		return "", err
	}
	return dir, nil
}

// Commit makes the verified staging tree of rev an installed release: its
// manifest is written, then the tree renamed to its final name, each step
// synced. The tree's content must already be on disk (SyncFS).
func (r *BundleRoot) Commit(rev uint64, env []byte) error {
	if err := chunkstore.WriteFileAtomic(r.manifestPath(rev), env, 0644); err != nil {
		return err
	}
	if err := os.Rename(r.stagingDir(rev), r.ReleaseDir(rev)); err != nil {
		return err
	}
	return chunkstore.SyncDir(filepath.Join(r.Dir, releasesDir))
}

// Switch points current at installed revision rev (one rename: the old or
// the new target, never neither) and records the state; name and channel
// are the release's.
func (r *BundleRoot) Switch(rev uint64, name, channel string) error {
	if !r.installed(rev) {
		return fmt.Errorf("release %d is not installed", rev)
	}
	old, err := r.Current()
	if err != nil {
		return err
	}
	tmp := filepath.Join(r.Dir, currentLink+".tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Join(releasesDir, strconv.FormatUint(rev, 10)), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(r.Dir, currentLink)); err != nil {
		return err
	}
	if err := chunkstore.SyncDir(r.Dir); err != nil {
		return err
	}
	s, err := r.State()
	if err != nil {
		s = BundleState{}
	}
	if old != rev {
		s.Previous = old
	}
	s.Name, s.Channel, s.Current, s.Switched = name, channel, rev, time.Now().UTC().Truncate(time.Second)
	b, _ := json.MarshalIndent(s, "", "  ")
	return chunkstore.WriteFileAtomic(filepath.Join(r.Dir, bundleStateFile), append(b, '\n'), 0644)
}

// Prune removes installed releases other than keep, and leftover staging
// trees other than those of keep.
func (r *BundleRoot) Prune(keep ...uint64) error {
	kept := map[string]bool{}
	for _, k := range keep {
		kept[strconv.FormatUint(k, 10)] = true
	}
	ents, err := os.ReadDir(filepath.Join(r.Dir, releasesDir))
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := strings.TrimSuffix(strings.TrimPrefix(e.Name(), stagingPrefix), ".imgm")
		if _, err := strconv.ParseUint(name, 10, 64); err != nil || kept[name] {
			continue
		}
		p := filepath.Join(r.Dir, releasesDir, e.Name())
		if e.IsDir() {
			err = removeTree(p)
		} else {
			err = os.Remove(p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// removeTree removes dir and everything in it, making read-only
// directories writable first.
func removeTree(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0700)
		}
		return nil
	})
	return os.RemoveAll(dir)
}
