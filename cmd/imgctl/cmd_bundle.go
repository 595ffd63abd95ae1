package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/partition"
	"github.com/spf13/cobra"
)

const defaultStateDir = "/var/lib/imgctl"

func newBundleCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Install service bundles side by side, switch atomically, restart by policy, roll back, hold",
		Long: `A service bundle is a directory tree published with 'publish --kind bundle'.
A terminal installs each release under ROOT/releases/<rev>/ (the installed
releases are the seeds: unchanged files and unchanged parts of changed files
are not fetched), verifies every file, then switches ROOT/current (a symlink
replaced by rename) and restarts the service by its policy (ROOT/service.toml:
all-at-once or rolling, with pre-stop, stop, start, post-start and health
hooks). A failed health check switches back. The previous release stays for
'bundle rollback'. A held bundle is not updated unless a release is mandatory.`,
	}
	cmd.AddCommand(newBundleApplyCommand(g), newBundleStatusCommand(g), newBundleRollbackCommand(g),
		newBundleHoldCommand(g, true), newBundleHoldCommand(g, false))
	return cmd
}

type bundleApplyOptions struct {
	from, name, channel, cache, root, stateDir, config string
	trust                                              []string
	revision                                           uint64
	concurrency, workers, keep                         int
	json, noPacks                                      bool
	lockTimeout                                        time.Duration
	p2p                                                p2pOptions
	// afterCommit runs once the release is installed, before the switch
	// (tests).
	afterCommit func()
}

func newBundleApplyCommand(g *globalOptions) *cobra.Command {
	o := &bundleApplyOptions{}
	cmd := &cobra.Command{
		Use:   "apply --from URL --trust K.pub --name N --root DIR",
		Short: "Install the latest release of a bundle next to the running one, switch to it, restart",
		Example: `  imgctl bundle apply --from http://branch:8420 --trust /etc/imgctl/release.pub \
      --name pos-svc --root /opt/imgctl/pos-svc --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.p2p.check(); err != nil {
				return err
			}
			_, err := runBundleApply(cmd.Context(), g, o)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.from, "from", "", "origin or branch cache URL, or a store directory")
	f.StringSliceVar(&o.trust, "trust", nil, "trusted public key or trust file (repeatable)")
	f.StringVar(&o.name, "name", "", "bundle name")
	f.StringVar(&o.channel, "channel", "stable", "release channel")
	f.Uint64Var(&o.revision, "revision", 0, "install this revision instead of the latest")
	f.StringVar(&o.root, "root", "", "bundle root (e.g. /opt/imgctl/NAME): releases/, current")
	f.StringVar(&o.stateDir, "state-dir", defaultStateDir, "where holds are recorded")
	f.StringVar(&o.config, "config", "", "service config (default ROOT/service.toml): restart policy, instances, hooks")
	f.StringVar(&o.cache, "cache", "", "local chunk cache (default as for pull)")
	f.IntVar(&o.concurrency, "concurrency", 4, "HTTP requests in flight")
	f.IntVar(&o.workers, "workers", 0, "local copy workers (0: one per CPU)")
	f.IntVar(&o.keep, "keep", 2, "installed releases to keep (the current one and the ones before it)")
	f.BoolVar(&o.json, "json", false, "print the result as JSON")
	f.BoolVar(&o.noPacks, "no-packs", false, "never use a delta pack, fetch chunks only")
	f.DurationVar(&o.lockTimeout, "lock-timeout", 30*time.Second, "how long to wait for another pull holding the cache")
	o.p2p.AddFlags(f)
	return cmd
}

type bundleResult struct {
	Name           string        `json:"name"`
	Channel        string        `json:"channel"`
	Revision       uint64        `json:"revision"`
	Previous       uint64        `json:"previous,omitempty"`
	ID             chunkstore.ID `json:"id"`
	Root           string        `json:"root"`
	Size           int64         `json:"size"`
	Files          int           `json:"files"`
	BytesFetched   int64         `json:"bytes_fetched"`
	BytesFromSeed  int64         `json:"bytes_from_seed"`
	BytesFromCache int64         `json:"bytes_from_cache"`
	BytesFromPacks int64         `json:"bytes_from_packs"`
	PackLean       bool          `json:"pack_lean,omitempty"` // as pull's
	ChunksFetched  int           `json:"chunks_fetched"`
	Fallbacks      int           `json:"fallbacks"`
	Mandatory      bool          `json:"mandatory"`
	Held           bool          `json:"held"`
	// Action: installed, switched (already installed, made current),
	// current (nothing to do), held (not installed: held back).
	Action  string           `json:"action"`
	Policy  string           `json:"policy,omitempty"`
	Seconds float64          `json:"seconds"`
	Phases  map[string]int64 `json:"phases_ms,omitempty"`
	// P2P applies, as for pull.
	BytesFromPeers    *int64 `json:"bytes_from_peers,omitempty"`
	BytesFromWebSeeds *int64 `json:"bytes_from_webseeds,omitempty"`
}

func runBundleApply(ctx context.Context, g *globalOptions, o *bundleApplyOptions) (_ *bundleResult, retErr error) {
	start := g.now()
	timer := newPhases(g.now)
	phase := timer.done
	if o.from == "" || o.name == "" || o.root == "" || len(o.trust) == 0 {
		return nil, usagef("bundle apply: --from, --trust, --name and --root are required")
	}
	trust, err := manifest.LoadTrust(o.trust...)
	if err != nil {
		return nil, err
	}
	root, err := partition.OpenBundleRoot(o.root)
	if err != nil {
		return nil, err
	}
	if o.config == "" {
		o.config = filepath.Join(root.Dir, "service.toml")
	}
	svc, err := partition.LoadServiceConfig(o.config)
	if err != nil {
		return nil, usageError{err}
	}
	client, cache, closeFetch, err := openFetch(g, o.from, o.concurrency, &o.cache, o.lockTimeout)
	if err != nil {
		return nil, err
	}
	defer closeFetch()
	cur, err := root.Current()
	if err != nil {
		return nil, err
	}

	var base []byte
	if cur != 0 {
		base, _ = root.Manifest(cur)
	}
	env, err := fetchManifest(ctx, client, o.name, o.channel, o.revision, base)
	if err != nil {
		return nil, err
	}
	floor := highestRevision(cache, o.name, o.channel)
	if _, err := os.Stat(root.ReleaseDir(o.revision)); o.revision != 0 && err == nil {
		// Going back to a release still installed (verified when it was
		// installed, and checked below to be the same manifest) is a
		// deliberate downgrade, as bundle rollback is.
		floor = 0
	}
	policy := manifest.Policy{Trust: trust, Now: g.now, Name: o.name, Channel: o.channel, MinRevision: floor, Kind: manifest.KindBundle}
	m, err := manifest.Verify(env, policy)
	if err != nil {
		return nil, err
	}
	files, err := m.FileTable()
	if err != nil {
		return nil, err
	}
	id, _ := manifest.ID(env)
	res := &bundleResult{Name: m.Name, Channel: m.Channel, Revision: m.Revision, Previous: cur, ID: id, Root: root.Dir,
		Size: m.Size, Files: len(files), Mandatory: m.Mandatory(), Phases: timer.ms}
	finish := func() (*bundleResult, error) {
		res.BytesFetched += client.Received()
		res.Seconds = g.now().Sub(start).Seconds()
		if o.json {
			return res, writeJSON(g.stdout, res)
		}
		switch res.Action {
		case "held":
			fmt.Fprintf(g.stdout, "%s is held: revision %d not installed (still on %d); 'imgctl bundle unhold %s' lifts the hold\n", m.Name, m.Revision, cur, m.Name)
		case "current":
			fmt.Fprintf(g.stdout, "%s/%s@%d is already current in %s\n", m.Name, m.Channel, m.Revision, root.Dir)
		default:
			if res.Held {
				fmt.Fprintf(g.stdout, "%s is held, but revision %d is mandatory: installed anyway\n", m.Name, m.Revision)
			}
			fmt.Fprintf(g.stdout, "%s %s/%s@%d in %s (%d files, %s verified; was %d): fetched %s (%d chunks), %s from installed releases, %s from cache; %.2fs\n",
				res.Action, m.Name, m.Channel, m.Revision, root.Dir, len(files), human(m.Size), cur,
				human(res.BytesFetched), res.ChunksFetched, human(res.BytesFromSeed), human(res.BytesFromCache), res.Seconds)
		}
		return res, nil
	}
	if m.Revision == cur {
		res.Action = "current"
		return finish()
	}
	holds, err := partition.ReadHolds(o.stateDir)
	if err != nil {
		return nil, err
	}
	if _, held := holds[m.Name]; held {
		res.Held = true
		if !m.Mandatory() {
			res.Action = "held"
			return finish()
		}
		g.logf("%s is held, but revision %d is mandatory: installing it anyway", m.Name, m.Revision)
	}
	phase("manifest")

	installedEnv, _ := root.Manifest(m.Revision)
	if iid, err := manifest.ID(installedEnv); err == nil && iid == id {
		res.Action = "switched" // installed before (a rollback away from it): verified then
	} else {
		in, err := installBundle(ctx, g, o, root, cache, client, m, env, files, policy, phase)
		if err != nil {
			return nil, err
		}
		if sw := in.sw; sw != nil {
			// After the switch and the output: seed the release.
			defer func() {
				if retErr == nil {
					if err := sw.seed(ctx, g, &o.p2p); err != nil {
						g.log.Warn("seeding", "err", err)
					}
				}
				sw.close()
			}()
		}
		st := in.stats
		res.BytesFromSeed, res.BytesFromCache, res.ChunksFetched, res.Fallbacks = st.SeedBytes, st.CacheBytes, st.FetchChunks, st.Fallbacks
		res.BytesFromPacks, res.PackLean = in.packBytes, in.packLean
		if in.peers != nil {
			res.BytesFromPeers, res.BytesFromWebSeeds = in.peers, in.webSeeds
			res.BytesFetched += *in.peers + *in.webSeeds
		}
		res.Action = "installed"
	}
	if err := recordRevision(cache, m); err != nil {
		return nil, err
	}
	if o.afterCommit != nil {
		o.afterCommit()
	}

	// Switch and restart by policy.
	res.Policy = svc.Policy
	r := &partition.Restart{
		Config: svc, Root: root.Dir, Name: m.Name, From: cur, To: m.Revision, ToDir: root.ReleaseDir(m.Revision),
		SwitchTo: func() error { return root.Switch(m.Revision, m.Name, m.Channel) },
		Logger:   g.log, Output: g.stderr,
	}
	if cur != 0 {
		r.FromDir = root.ReleaseDir(cur)
		r.SwitchBack = func() error { return root.Switch(cur, m.Name, m.Channel) }
	}
	if err := r.Run(ctx); err != nil {
		return nil, err
	}
	phase("switch")
	if err := pruneBundle(root, o.keep); err != nil {
		g.log.Warn("removing old releases", "err", err)
	}
	return finish()
}

// bundleInstall is what installing a release fetched and reused.
type bundleInstall struct {
	stats     delta.Stats
	packBytes int64 // of a delta pack read
	packLean  bool  // the pack was its record's lean form
	// With --p2p: payload from peers (release torrent and pack) and from
	// webseeds.
	peers, webSeeds *int64
	// sw is the release's swarm, still open and ready to seed the
	// committed release, when the terminal is to keep seeding (--seed-for);
	// the caller seeds and closes it.
	sw *pullSwarm
}

// installBundle writes release m into its staging tree with the installed
// releases as seeds, verifies it, completes it and commits it under its
// final name. Nothing points at it yet.
func installBundle(ctx context.Context, g *globalOptions, o *bundleApplyOptions, root *partition.BundleRoot, cache *chunkstore.Local,
	client source, m *manifest.Manifest, env []byte, files []manifest.File, policy manifest.Policy, phase func(string)) (in bundleInstall, err error) {
	var sw *pullSwarm
	var pack *packFetcher
	if o.p2p.enabled {
		if sw, err = joinRelease(ctx, g, &o.p2p, m, policy, client, cache); err != nil {
			if errors.Is(err, manifest.ErrVerification) {
				return in, err
			}
			g.log.Warn("not using the swarm", "err", err)
		}
	}
	var seedIdx []delta.SeedIndex
	defer func() {
		in.packBytes, in.packLean = pack.used(), pack.leanUsed()
		pack.remove()
		if sw != nil {
			s := sw.h.Stats()
			peers := s.FromPeers + pack.fromPeers()
			in.peers, in.webSeeds = &peers, &s.FromWebSeeds
			if err == nil && o.p2p.seedFor > 0 {
				// Kept for seeding the committed release; chunks taken
				// from a pack are reproduced from its tree.
				sw.m, sw.seeds = m, seedIdx
				sw.written = func() (io.ReaderAt, io.Closer, error) {
					t := partition.OpenTree(root.ReleaseDir(m.Revision), files, false)
					return t, t, nil
				}
				in.sw = sw
			} else {
				sw.close()
			}
		}
	}()
	// Seeds: every installed release, by its recorded (signed) manifest.
	installed, err := root.Installed()
	if err != nil {
		return in, err
	}
	var seeds []io.ReaderAt
	var held []heldRelease
	for i := len(installed) - 1; i >= 0; i-- {
		rev := installed[i]
		senv, err := root.Manifest(rev)
		if err != nil {
			continue
		}
		sm, err := manifest.Open(senv)
		if err != nil {
			g.log.Warn("installed release has an unreadable manifest; not used as a seed", "revision", rev, "err", err)
			continue
		}
		sf, err := sm.FileTable()
		if err != nil {
			continue
		}
		t := partition.OpenTree(root.ReleaseDir(rev), sf, false)
		defer t.Close()
		seedIdx = append(seedIdx, delta.IndexManifest(sm))
		seeds = append(seeds, t)
		held = append(held, heldRelease{env: senv, m: sm, content: t})
	}
	stage, err := root.Stage(m.Revision)
	if err != nil {
		return in, err
	}
	if err := partition.CreateTree(ctx, stage, files); err != nil {
		return in, err
	}
	out := partition.OpenTree(stage, files, true)
	defer out.Close()
	phase("seeds")

	inc := inCache(cache, m)
	plan := delta.NewPlan(delta.Inputs{Target: m, Seeds: seedIdx, Have: inc.Has})
	g.logf("plan: %s from installed releases, %s from cache, %s to fetch (%d chunks)",
		human(plan.Report.SeedBytes), human(plan.Report.CacheBytes), human(plan.Report.FetchBytes), plan.Report.FetchChunks)
	var fetch delta.Fetcher = storingFetcher{client: client, cache: cache}
	if sw != nil {
		fetch = swarmFetcher{s: sw, o: &o.p2p, g: g, cache: cache, http: fetch}
	}
	if !o.noPacks {
		var perr error
		if pack, perr = usePack(ctx, g, client, policy.Trust, held, env, m, plan, fetch, sw, &o.p2p, o.cache); perr != nil {
			g.log.Warn("not using a delta pack", "err", perr)
		} else if pack != nil {
			fetch = pack
		}
	}
	asm := &delta.Assembler{Out: out, Seeds: seeds, Cache: inc, Fetch: fetch, Digest: true, Workers: o.workers,
		Progress: newProgress(g, "apply "+m.Name), Logger: g.log}
	in.stats, err = asm.Run(ctx, plan)
	if ferr := cache.Flush(context.Background()); err == nil {
		err = ferr
	}
	if err != nil {
		return in, err
	}
	phase("assemble")
	if err := partition.SyncFS(stage); err != nil {
		return in, err
	}
	if err := delta.CheckDigest(out, m, in.stats.Digest); err != nil {
		return in, err
	}
	if err := out.Close(); err != nil {
		return in, err
	}
	if err := partition.FinishTree(ctx, stage, files); err != nil {
		return in, err
	}
	if err := partition.SyncFS(stage); err != nil {
		return in, err
	}
	if err := root.Commit(m.Revision, env); err != nil {
		return in, err
	}
	phase("commit")
	return in, nil
}

// pruneBundle keeps the current release and the keep-1 installed before it.
func pruneBundle(root *partition.BundleRoot, keep int) error {
	cur, err := root.Current()
	if err != nil || cur == 0 {
		return err
	}
	s, err := root.State()
	if err != nil {
		return err
	}
	kept := []uint64{cur}
	if s.Previous != 0 && keep > 1 {
		kept = append(kept, s.Previous)
	}
	installed, err := root.Installed()
	if err != nil {
		return err
	}
	for i := len(installed) - 1; i >= 0 && len(kept) < keep; i-- {
		if r := installed[i]; r != cur && r != s.Previous {
			kept = append(kept, r)
		}
	}
	return root.Prune(kept...)
}

type bundleStatus struct {
	Root      string   `json:"root"`
	Name      string   `json:"name,omitempty"`
	Channel   string   `json:"channel,omitempty"`
	Current   uint64   `json:"current"`
	Previous  uint64   `json:"previous,omitempty"`
	Installed []uint64 `json:"installed"`
	Held      bool     `json:"held"`
	HeldSince string   `json:"held_since,omitempty"`
	Mandatory bool     `json:"mandatory"`
	Files     int      `json:"files"`
	Size      int64    `json:"size"`
	Switched  string   `json:"switched,omitempty"`
	// Verified is set by --verify: the current tree re-hashed against its
	// manifest (content, and every entry's type, mode and link).
	Verified *bool  `json:"verified,omitempty"`
	Problem  string `json:"problem,omitempty"`
}

func newBundleStatusCommand(g *globalOptions) *cobra.Command {
	var root, stateDir string
	var asJSON, verify bool
	cmd := &cobra.Command{
		Use:   "status --root DIR",
		Short: "Show the installed releases of a bundle, which is current, holds; --verify re-hashes it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if root == "" {
				return usagef("bundle status: --root is required")
			}
			st, err := readBundleStatus(cmd.Context(), root, stateDir, verify)
			if err != nil {
				return err
			}
			if asJSON {
				if err := writeJSON(g.stdout, st); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(g.stdout, "root:      %s\nbundle:    %s/%s\ncurrent:   %d (%d files, %s)\nprevious:  %d\ninstalled: %v\nheld:      %v\nmandatory: %v\n",
					st.Root, st.Name, st.Channel, st.Current, st.Files, human(st.Size), st.Previous, st.Installed, st.Held, st.Mandatory)
				if st.Verified != nil {
					if *st.Verified {
						fmt.Fprintln(g.stdout, "verified:  yes")
					} else {
						fmt.Fprintf(g.stdout, "verified:  NO: %s\n", st.Problem)
					}
				}
			}
			if st.Verified != nil && !*st.Verified {
				return fmt.Errorf("%w: %s", delta.ErrDigestMismatch, st.Problem)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&root, "root", "", "bundle root")
	cmd.Flags().StringVar(&stateDir, "state-dir", defaultStateDir, "where holds are recorded")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&verify, "verify", false, "re-hash the current release against its manifest (exit 3 if it differs)")
	return cmd
}

func readBundleStatus(ctx context.Context, dir, stateDir string, verify bool) (*bundleStatus, error) {
	if _, err := os.Stat(filepath.Join(dir, "releases")); err != nil {
		return nil, fmt.Errorf("%s: not a bundle root (no releases/)", dir)
	}
	root, err := partition.OpenBundleRoot(dir)
	if err != nil {
		return nil, err
	}
	s, err := root.State()
	if err != nil {
		return nil, err
	}
	st := &bundleStatus{Root: root.Dir, Name: s.Name, Channel: s.Channel, Previous: s.Previous}
	if !s.Switched.IsZero() {
		st.Switched = s.Switched.Format(time.RFC3339)
	}
	if st.Current, err = root.Current(); err != nil {
		return nil, err
	}
	if st.Installed, err = root.Installed(); err != nil {
		return nil, err
	}
	if holds, err := partition.ReadHolds(stateDir); err == nil && s.Name != "" {
		if h, ok := holds[s.Name]; ok {
			st.Held, st.HeldSince = true, h.Since.Format(time.RFC3339)
		}
	}
	if st.Current == 0 {
		return st, nil
	}
	env, err := root.Manifest(st.Current)
	if err != nil {
		return nil, err
	}
	m, err := manifest.Open(env)
	if err != nil {
		return nil, err
	}
	files, err := m.FileTable()
	if err != nil {
		return nil, err
	}
	st.Files, st.Size, st.Mandatory = len(files), m.Size, m.Mandatory()
	if verify {
		problem := partition.CheckTree(ctx, root.ReleaseDir(st.Current), files)
		if problem == nil {
			t := partition.OpenTree(root.ReleaseDir(st.Current), files, false)
			id, err := chunkstore.Digest(ctx, t, m.Size, nil)
			t.Close()
			if err != nil {
				problem = err
			} else if id != m.Digest {
				problem = fmt.Errorf("content BLAKE3 %s, manifest says %s", id.Short(), m.Digest.Short())
			}
		}
		ok := problem == nil
		st.Verified = &ok
		if problem != nil {
			st.Problem = problem.Error()
		}
	}
	return st, nil
}

func newBundleRollbackCommand(g *globalOptions) *cobra.Command {
	var root, config string
	cmd := &cobra.Command{
		Use:   "rollback --root DIR",
		Short: "Make the previous release current again and restart the service by its policy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if root == "" {
				return usagef("bundle rollback: --root is required")
			}
			r, err := partition.OpenBundleRoot(root)
			if err != nil {
				return err
			}
			if config == "" {
				config = filepath.Join(r.Dir, "service.toml")
			}
			svc, err := partition.LoadServiceConfig(config)
			if err != nil {
				return usageError{err}
			}
			s, err := r.State()
			if err != nil {
				return err
			}
			cur, err := r.Current()
			if err != nil {
				return err
			}
			if s.Previous == 0 || s.Previous == cur {
				return fmt.Errorf("%s: no previous release to roll back to", r.Dir)
			}
			if _, err := r.Manifest(s.Previous); err != nil {
				return fmt.Errorf("%s: previous release %d is no longer installed", r.Dir, s.Previous)
			}
			prev := s.Previous
			rs := &partition.Restart{
				Config: svc, Root: r.Dir, Name: s.Name, From: cur, To: prev,
				FromDir: r.ReleaseDir(cur), ToDir: r.ReleaseDir(prev),
				SwitchTo: func() error { return r.Switch(prev, s.Name, s.Channel) },
				Logger:   g.log, Output: g.stderr,
			}
			if err := rs.Run(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: rolled back from %d to %d\n", r.Dir, cur, prev)
			return nil
		},
	}
	cmd.Flags().StringVar(&root, "root", "", "bundle root")
	cmd.Flags().StringVar(&config, "config", "", "service config (default ROOT/service.toml)")
	return cmd
}

func newBundleHoldCommand(g *globalOptions, on bool) *cobra.Command {
	var stateDir, reason string
	use, short := "hold NAME", "Hold a bundle back: apply installs no optional release of it (mandatory ones still go in)"
	if !on {
		use, short = "unhold NAME", "Lift a hold"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !manifest.ValidName(name) {
				return usagef("%q is not a release name", name)
			}
			if err := partition.SetHold(stateDir, name, on, reason, g.now()); err != nil {
				return err
			}
			if on {
				fmt.Fprintf(g.stdout, "%s held: 'bundle apply' installs no optional release of it; mandatory releases are installed anyway\n", name)
			} else {
				fmt.Fprintf(g.stdout, "%s no longer held\n", name)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", defaultStateDir, "where holds are recorded")
	if on {
		cmd.Flags().StringVar(&reason, "reason", "", "why (shown by bundle status)")
	}
	return cmd
}
