package partition

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/imgctl/imgctl/chunkstore"
)

// Hold is an operator's hold on a bundle: optional releases of it are not
// installed until it is lifted; mandatory ones are, and say so.
type Hold struct {
	Since  time.Time `json:"since"`
	Reason string    `json:"reason,omitempty"`
}

const holdsFile = "holds.json"

// ReadHolds returns the holds recorded in stateDir.
func ReadHolds(stateDir string) (map[string]Hold, error) {
	h := map[string]Hold{}
	b, err := os.ReadFile(filepath.Join(stateDir, holdsFile))
	if errors.Is(err, os.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(stateDir, holdsFile), err)
	}
	return h, nil
}

// SetHold holds (on) or releases a bundle by name, atomically.
func SetHold(stateDir, name string, on bool, reason string, now time.Time) error {
	h, err := ReadHolds(stateDir)
	if err != nil {
		return err
	}
	if on {
		h[name] = Hold{Since: now.UTC().Truncate(time.Second), Reason: reason}
	} else {
		delete(h, name)
	}
	if err := os.MkdirAll(stateDir, 0755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(h, "", "  ")
	return chunkstore.WriteFileAtomic(filepath.Join(stateDir, holdsFile), append(b, '\n'), 0644)
}

// Restart policies of a service bundle.
const (
	PolicyAllAtOnce = "all-at-once" // stop every instance, switch, start every instance
	PolicyRolling   = "rolling"     // switch, then restart one instance at a time with a health check between
)

// Hook names, in the order an instance meets them.
var HookNames = []string{"pre-stop", "stop", "start", "post-start", "health"}

// ServiceConfig is how a bundle's service is restarted (TOML, default
// ROOT/service.toml):
//
//	policy    = "rolling"             # or "all-at-once" (default)
//	instances = ["1", "2", "3"]       # $IMGCTL_INSTANCE of each hook run; default one instance ""
//	health_timeout  = "30s"           # per instance
//	health_interval = "1s"
//	hook_timeout    = "5m"            # any single hook run
//	[hooks]                           # sh -c commands; each optional
//	pre-stop   = "curl -fsS -X POST localhost:808$IMGCTL_INSTANCE/drain"
//	stop       = "systemctl stop svc@$IMGCTL_INSTANCE"
//	start      = "systemctl start svc@$IMGCTL_INSTANCE"
//	post-start = "logger svc@$IMGCTL_INSTANCE started $IMGCTL_REVISION"
//	health     = "curl -fsS localhost:808$IMGCTL_INSTANCE/health"
//
// A hook missing from the config is taken from the release itself, as the
// executable .imgctl/hooks/<name> in its tree (pre-stop and stop from the
// release that is running, the others from the one that starts), so a
// bundle can ship its own.
type ServiceConfig struct {
	Policy         string   `toml:"policy"`
	Instances      []string `toml:"instances"`
	HealthTimeout  duration `toml:"health_timeout"`
	HealthInterval duration `toml:"health_interval"`
	// HookTimeout bounds every hook run (default 5m): a hung stop script
	// must not hold the update forever.
	HookTimeout duration          `toml:"hook_timeout"`
	Hooks       map[string]string `toml:"hooks"`
}

type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	d.Duration = v
	return err
}

// LoadServiceConfig reads a service config; a missing file gives the
// default (all-at-once, one instance, only the bundle's own hooks).
func LoadServiceConfig(path string) (*ServiceConfig, error) {
	c := &ServiceConfig{}
	md, err := toml.DecodeFile(path, c)
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	} else if err == nil {
		if und := md.Undecoded(); len(und) > 0 {
			return nil, fmt.Errorf("%s: unknown key %s", path, und[0])
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.Policy == "" {
		c.Policy = PolicyAllAtOnce
	}
	if c.Policy != PolicyAllAtOnce && c.Policy != PolicyRolling {
		return nil, fmt.Errorf("%s: policy %q: want %s or %s", path, c.Policy, PolicyAllAtOnce, PolicyRolling)
	}
	if len(c.Instances) == 0 {
		c.Instances = []string{""}
	}
	if c.HealthTimeout.Duration <= 0 {
		c.HealthTimeout.Duration = 30 * time.Second
	}
	if c.HealthInterval.Duration <= 0 {
		c.HealthInterval.Duration = time.Second
	}
	if c.HookTimeout.Duration <= 0 {
		c.HookTimeout.Duration = 5 * time.Minute
	}
	known := map[string]bool{}
	for _, h := range HookNames {
		known[h] = true
	}
	keys := make([]string, 0, len(c.Hooks))
	for k := range c.Hooks {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !known[k] {
			return nil, fmt.Errorf("%s: unknown hook %q (hooks: %v)", path, k, HookNames)
		}
	}
	return c, nil
}

// Restart is one service update: from the running release to the new one.
type Restart struct {
	Config *ServiceConfig
	Root   string // bundle root (IMGCTL_ROOT)
	Name   string
	// From and To are the releases (0: none running); FromDir and ToDir
	// their directories.
	From, To       uint64
	FromDir, ToDir string
	// SwitchTo makes To current; SwitchBack makes From current again.
	SwitchTo, SwitchBack func() error
	Logger               *slog.Logger
	// Output receives the hooks' standard output and error (nil: discard).
	Output io.Writer
}

// ErrRolledBack says a restart failed its health check and the previous
// release was made current again.
var ErrRolledBack = errors.New("health check failed: rolled back to the previous release")

// Run carries out the configured policy. all-at-once stops every
// instance, switches, starts every instance and checks each one's health;
// rolling switches, then restarts one instance at a time and checks its
// health before the next. If a health check fails (and a previous release
// exists), the previous release is made current again, every instance that
// was restarted is restarted on it, and the error wraps ErrRolledBack.
func (r *Restart) Run(ctx context.Context) error {
	c := r.Config
	var restarted []string
	fail := func(inst string, err error) error {
		if r.From == 0 || r.SwitchBack == nil {
			return fmt.Errorf("instance %q: %w (no previous release to go back to)", inst, err)
		}
		r.logf("instance %q failed (%v): rolling back to %d", inst, err, r.From)
		back := &Restart{Config: c, Root: r.Root, Name: r.Name, From: r.To, To: r.From, FromDir: r.ToDir, ToDir: r.FromDir, Logger: r.Logger, Output: r.Output}
		if c.Policy == PolicyAllAtOnce {
			restarted = c.Instances
		}
		for _, in := range restarted {
			if err := back.hook(ctx, "pre-stop", in, r.ToDir); err != nil {
				r.logf("rollback: %v", err)
			}
			if err := back.hook(ctx, "stop", in, r.ToDir); err != nil {
				r.logf("rollback: %v", err)
			}
		}
		if serr := r.SwitchBack(); serr != nil {
			return fmt.Errorf("instance %q: %v; switching back failed too: %w", inst, err, serr)
		}
		for _, in := range restarted {
			if err := back.hook(ctx, "start", in, r.FromDir); err != nil {
				r.logf("rollback: %v", err)
			}
			if err := back.hook(ctx, "post-start", in, r.FromDir); err != nil {
				r.logf("rollback: %v", err)
			}
		}
		return fmt.Errorf("instance %q: %v: %w", inst, err, ErrRolledBack)
	}
	stop := func(inst string) error {
		if r.From == 0 {
			return nil
		}
		if err := r.hook(ctx, "pre-stop", inst, r.FromDir); err != nil {
			return err
		}
		return r.hook(ctx, "stop", inst, r.FromDir)
	}
	start := func(inst string) error {
		if err := r.hook(ctx, "start", inst, r.ToDir); err != nil {
			return err
		}
		return r.hook(ctx, "post-start", inst, r.ToDir)
	}
	switch c.Policy {
	case PolicyRolling:
		if err := r.SwitchTo(); err != nil {
			return err
		}
		for _, inst := range c.Instances {
			if err := stop(inst); err != nil {
				return fail(inst, err)
			}
			restarted = append(restarted, inst)
			if err := start(inst); err != nil {
				return fail(inst, err)
			}
			if err := r.health(ctx, inst); err != nil {
				return fail(inst, err)
			}
		}
	default:
		for _, inst := range c.Instances {
			if err := stop(inst); err != nil {
				return fmt.Errorf("instance %q: %w (nothing switched)", inst, err)
			}
		}
		if err := r.SwitchTo(); err != nil {
			return err
		}
		for _, inst := range c.Instances {
			if err := start(inst); err != nil {
				return fail(inst, err)
			}
		}
		for _, inst := range c.Instances {
			if err := r.health(ctx, inst); err != nil {
				return fail(inst, err)
			}
		}
	}
	return nil
}

// health runs the health hook until it succeeds or HealthTimeout passes.
func (r *Restart) health(ctx context.Context, inst string) error {
	c := r.Config
	ctx, cancel := context.WithTimeout(ctx, c.HealthTimeout.Duration)
	defer cancel()
	var last error
	for try := 0; ; try++ {
		last = r.hook(ctx, "health", inst, r.ToDir)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not healthy after %s (%d tries): %w", c.HealthTimeout.Duration, try+1, last)
		case <-time.After(c.HealthInterval.Duration):
		}
	}
}

// hook runs one hook for one instance; a hook that is not configured and
// not shipped in dir succeeds.
func (r *Restart) hook(ctx context.Context, name, inst, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, r.Config.HookTimeout.Duration)
	defer cancel()
	var cmd *exec.Cmd
	if s, ok := r.Config.Hooks[name]; ok {
		cmd = exec.CommandContext(ctx, "/bin/sh", "-c", s)
	} else if dir != "" {
		p := filepath.Join(dir, ".imgctl", "hooks", name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0111 != 0 {
			cmd = exec.CommandContext(ctx, p)
		}
	}
	if cmd == nil {
		return nil
	}
	cmd.Env = append(os.Environ(),
		"IMGCTL_HOOK="+name, "IMGCTL_INSTANCE="+inst, "IMGCTL_ROOT="+r.Root, "IMGCTL_NAME="+r.Name,
		fmt.Sprintf("IMGCTL_REVISION=%d", r.To), fmt.Sprintf("IMGCTL_PREVIOUS_REVISION=%d", r.From),
		"IMGCTL_RELEASE_DIR="+r.ToDir, "IMGCTL_PREVIOUS_DIR="+r.FromDir)
	cmd.Dir = r.Root
	cmd.WaitDelay = 5 * time.Second
	if r.Output != nil {
		cmd.Stdout, cmd.Stderr = r.Output, r.Output
	}
	r.logf("hook %s instance %q (revision %d)", name, inst, r.To)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("hook %s: %w", name, err)
	}
	return nil
}

func (r *Restart) logf(f string, a ...any) {
	if r.Logger != nil {
		r.Logger.Info(fmt.Sprintf(f, a...))
	}
}
