package partition

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
)

// Grub keeps boot state in a GRUB environment block through the real
// grub-editenv, with the variables RAUC uses, so that `rauc status` reads
// the same thing:
//
//	ORDER="A B"   boot names, first is tried first
//	X_OK=0|1      slot may be booted
//	X_TRY=0|1     GRUB sets it to 1 when it boots X; mark-good resets it to 0
//
// and one variable of its own for boot counting beyond RAUC's single try
// (GRUB script has no arithmetic, so the count is a string GRUB shortens
// with regexp):
//
//	X_LEFT="xx"   further boots of an unconfirmed X (one x each)
//
// A slot is good when it is in ORDER with X_OK=1 and X_TRY=0; primary is
// the first good slot of ORDER (RAUC's definition). The boot-side script
// is docs/boot.md.
type Grub struct {
	Env      string   // grubenv file
	Slots    []string // boot names
	MaxTries int      // boots of a new slot before fallback; 0 means 3
	Tool     string   // grub-editenv; "" means from PATH
}

var _ Bootloader = (*Grub)(nil)

func (g *Grub) tool() string {
	if g.Tool != "" {
		return g.Tool
	}
	return "grub-editenv"
}

func (g *Grub) tries() int {
	if g.MaxTries <= 0 {
		return 3
	}
	return g.MaxTries
}

// Read returns every variable of the environment.
func (g *Grub) Read(ctx context.Context) (map[string]string, error) {
	// grub-editenv list creates a missing file: refuse instead.
	if _, err := os.Stat(g.Env); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", g.Env, ErrNoEnv)
	}
	out, err := run(ctx, g.tool(), g.Env, "list")
	if err != nil {
		return nil, err
	}
	return parseEnv(out), nil
}

// set writes all pairs in ONE grub-editenv call. grub-editenv rewrites
// its file in place (open with O_TRUNC, write, fsync): killed or cut off
// in between, it leaves no valid block, and GRUB then boots with no
// variables at all (the kill -9 test caught a truncated block). So it
// edits a copy beside the file, which then replaces the file by rename:
// whatever happens, the block is the old one or the new one.
func (g *Grub) set(ctx context.Context, kv map[string]string) error {
	old, err := os.ReadFile(g.Env)
	if err != nil {
		return err
	}
	st, err := os.Stat(g.Env)
	if err != nil {
		return err
	}
	dir := filepath.Dir(g.Env)
	// Copies left by a killed run (its editor may still have been
	// writing one a moment ago: only old ones go).
	if stale, _ := filepath.Glob(filepath.Join(dir, ".grubenv-imgctl-*")); len(stale) > 0 {
		for _, p := range stale {
			if fi, err := os.Stat(p); err == nil && time.Since(fi.ModTime()) > time.Minute {
				os.Remove(p)
			}
		}
	}
	f, err := os.CreateTemp(dir, ".grubenv-imgctl-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after the rename: no such file
	_, err = f.Write(old)
	if err == nil {
		err = f.Chmod(st.Mode().Perm())
	}
	if e := f.Close(); err == nil {
		err = e
	}
	if err != nil {
		return err
	}
	args := []string{tmp, "set"}
	for _, k := range sortedKeys(kv) {
		args = append(args, k+"="+kv[k])
	}
	if _, err := run(ctx, g.tool(), args...); err != nil {
		return err
	}
	// grub-editenv fsyncs what it writes; once more, in case a tool
	// given as Tool does not.
	if f, err = os.Open(tmp); err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, g.Env); err != nil {
		return err
	}
	return chunkstore.SyncDir(dir)
}

// Init creates the environment with primary as the only good slot (the
// state of a freshly installed device running primary).
func (g *Grub) Init(ctx context.Context, primary string) error {
	if err := checkSlot(g.Slots, primary); err != nil {
		return err
	}
	if _, err := run(ctx, g.tool(), g.Env, "create"); err != nil {
		return err
	}
	kv := map[string]string{"ORDER": strings.Join(reorder(nil, g.Slots, primary), " ")}
	for _, s := range g.Slots {
		kv[s+"_OK"], kv[s+"_TRY"], kv[s+"_LEFT"] = "0", "0", ""
	}
	kv[primary+"_OK"] = "1"
	return g.set(ctx, kv)
}

func (g *Grub) good(env map[string]string, slot string) bool {
	in := false
	for _, s := range strings.Fields(env["ORDER"]) {
		in = in || s == slot
	}
	return in && env[slot+"_OK"] == "1" && env[slot+"_TRY"] == "0"
}

// Primary returns the first good slot of ORDER.
func (g *Grub) Primary(ctx context.Context) (string, error) {
	env, err := g.Read(ctx)
	if err != nil {
		return "", err
	}
	for _, s := range strings.Fields(env["ORDER"]) {
		if checkSlot(g.Slots, s) == nil && g.good(env, s) {
			return s, nil
		}
	}
	return "", nil
}

// SetPrimary writes X_OK=1 X_TRY=0 X_LEFT=<tries-1> ORDER="X …" at once.
func (g *Grub) SetPrimary(ctx context.Context, slot string) error {
	if err := checkSlot(g.Slots, slot); err != nil {
		return err
	}
	env, err := g.Read(ctx)
	if err != nil {
		return err
	}
	return g.set(ctx, map[string]string{
		"ORDER":        strings.Join(reorder(strings.Fields(env["ORDER"]), g.Slots, slot), " "),
		slot + "_OK":   "1",
		slot + "_TRY":  "0",
		slot + "_LEFT": strings.Repeat("x", g.tries()-1),
	})
}

// State reports good (in ORDER, OK, not on trial) or bad.
func (g *Grub) State(ctx context.Context, slot string) (State, error) {
	if err := checkSlot(g.Slots, slot); err != nil {
		return "", err
	}
	env, err := g.Read(ctx)
	if err != nil {
		return "", err
	}
	if g.good(env, slot) {
		return Good, nil
	}
	return Bad, nil
}

// SetState: good writes X_OK=1 X_TRY=0 X_LEFT= (confirmed), bad writes
// X_OK=0 X_TRY=0 X_LEFT= (RAUC's mark-good and mark-bad), at once.
func (g *Grub) SetState(ctx context.Context, slot string, s State) error {
	if err := checkSlot(g.Slots, slot); err != nil {
		return err
	}
	ok := "1"
	if s == Bad {
		ok = "0"
	}
	return g.set(ctx, map[string]string{slot + "_OK": ok, slot + "_TRY": "0", slot + "_LEFT": ""})
}

// TriesLeft: a good slot has one more try (GRUB marks it on trial when it
// boots it) plus one per x of X_LEFT; a slot on trial has one per x.
func (g *Grub) TriesLeft(ctx context.Context, slot string) (int, error) {
	if err := checkSlot(g.Slots, slot); err != nil {
		return 0, err
	}
	env, err := g.Read(ctx)
	if err != nil {
		return 0, err
	}
	if env[slot+"_OK"] != "1" {
		return 0, nil
	}
	n := strings.Count(env[slot+"_LEFT"], "x")
	if env[slot+"_TRY"] == "0" {
		n++
	}
	return n, nil
}
