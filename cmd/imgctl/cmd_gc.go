package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"github.com/spf13/cobra"
)

type gcReport struct {
	KeptReleases    int   `json:"kept_releases"`
	RemovedReleases int   `json:"removed_releases"`
	RemovedChunks   int   `json:"removed_chunks"`
	FreedBytes      int64 `json:"freed_bytes"`
	PacksRemoved    int   `json:"packs_removed"`
	PacksRewritten  int   `json:"packs_rewritten"`
	// DeltaPacksRemoved counts delta packs (deltas/) no kept release has a
	// record of.
	DeltaPacksRemoved int  `json:"delta_packs_removed"`
	DryRun            bool `json:"dry_run"`
}

func newGCCommand(g *globalOptions) *cobra.Command {
	var store string
	var keep int
	var dryRun, asJSON bool
	var packGrace time.Duration
	cmd := &cobra.Command{
		Use:   "gc --store S [--keep N]",
		Short: "Remove old releases and the chunks no kept release needs",
		Long: `gc keeps the newest N revisions of every name and channel, plus any release a
file record of a pull cache names (the slot images on this machine), removes
the other manifests, then removes every chunk that no kept release names and
compacts the packs (a pack with nothing live is deleted, one less than half
live is rewritten). Chunks of kept releases are never removed. Delta packs go
with the last release that has a record of them; packs younger than
--pack-grace are left alone (pack build runs without the store lock and writes
its record just after its pack).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if store == "" {
				return usagef("gc: --store is required")
			}
			if keep < 1 {
				return usagef("gc: --keep must be at least 1")
			}
			return runGC(cmd.Context(), g, store, keep, dryRun, asJSON, packGrace)
		},
	}
	cmd.Flags().StringVar(&store, "store", "", "chunk store directory")
	cmd.Flags().IntVar(&keep, "keep", 3, "revisions to keep per name and channel")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "report what would be removed")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().DurationVar(&packGrace, "pack-grace", time.Hour, "leave delta packs (and unfinished pack builds) younger than this")
	return cmd
}

func runGC(ctx context.Context, g *globalOptions, root string, keep int, dryRun, asJSON bool, packGrace time.Duration) error {
	if _, err := os.Stat(filepath.Join(root, "index.db")); err != nil {
		return fmt.Errorf("%s is not a store: %w", root, err)
	}
	s, err := chunkstore.Open(root, chunkstore.Options{})
	if err != nil {
		return err
	}
	defer s.Close()
	rels := manifest.OpenReleases(root)
	list, err := rels.List()
	if err != nil {
		return err
	}
	// Releases named by file records (what this machine's slots hold).
	pinned := map[chunkstore.ID]bool{}
	err = s.MetaPrefix("file/", func(_ string, v []byte) error {
		var r fileRecord
		if json.Unmarshal(v, &r) == nil {
			pinned[r.Manifest] = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	rep := gcReport{DryRun: dryRun}
	referenced := map[chunkstore.ID]bool{}
	keptPacks := map[chunkstore.ID]bool{}
	count := map[string]int{}
	for i := len(list) - 1; i >= 0; i-- { // newest first within each name/channel
		r := list[i]
		b, err := os.ReadFile(r.Path)
		if err != nil {
			return err
		}
		m, err := manifest.Open(b)
		if err != nil {
			return fmt.Errorf("%s: %w (run imgctl fsck)", r.Path, err)
		}
		id, _ := manifest.ID(b)
		k := r.Name + "/" + r.Channel
		count[k]++
		if count[k] > keep && !pinned[id] {
			rep.RemovedReleases++
			if !dryRun {
				if err := rels.Remove(r); err != nil {
					return err
				}
			}
			continue
		}
		rep.KeptReleases++
		for _, c := range m.Chunks {
			referenced[c.ID] = true
		}
		for _, from := range rels.PackFroms(r.Name, r.Channel, r.Revision) {
			if env, err := rels.ReadSide(r.Name, r.Channel, r.Revision, manifest.SidePack(from)); err == nil {
				if rec, err := manifest.OpenPackRecord(env); err == nil {
					for _, o := range rec.Objects() {
						keptPacks[o.Pack] = true
					}
				}
			}
		}
	}
	// Delta packs no kept release names (their TO was removed), and what
	// builds that died left behind. pack build runs without the lock and
	// writes its record just after the pack: anything younger than
	// packGrace may be a build in progress.
	ddir := filepath.Dir(manifest.PackPath(root, chunkstore.ID{}))
	dpacks, _ := filepath.Glob(filepath.Join(ddir, "*.dpack"))
	temps, _ := filepath.Glob(filepath.Join(ddir, ".tmp-*"))
	for _, p := range append(dpacks, temps...) {
		if st, err := os.Stat(p); err != nil || time.Since(st.ModTime()) < packGrace {
			continue
		}
		id, err := chunkstore.ParseID(strings.TrimSuffix(filepath.Base(p), ".dpack"))
		if strings.HasSuffix(p, ".dpack") && (err != nil || keptPacks[id]) {
			continue
		}
		rep.DeltaPacksRemoved++
		if !dryRun {
			if err := os.Remove(p); err != nil {
				return err
			}
		}
	}
	// Manifests of pinned files that are not stored as releases.
	for id := range pinned {
		if env, err := s.GetMeta(manifestKey(id)); err == nil && env != nil {
			if m, err := manifest.Open(env); err == nil {
				for _, c := range m.Chunks {
					referenced[c.ID] = true
				}
			}
		}
	}
	var drop []chunkstore.ID
	err = s.Walk(func(i chunkstore.Info) error {
		if !referenced[i.ID] {
			drop = append(drop, i.ID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	rep.RemovedChunks = len(drop)
	if !dryRun {
		if err := ctx.Err(); err != nil {
			return err
		}
		st, err := s.Delete(drop)
		if err != nil {
			return err
		}
		rep.FreedBytes = st.BytesFreed
		rep.PacksRemoved, rep.PacksRewritten = st.PacksRemoved, st.PacksRewritten
	}
	if asJSON {
		return writeJSON(g.stdout, rep)
	}
	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	fmt.Fprintf(g.stdout, "kept %d releases; %s %d releases, %d chunks and %d delta packs; %d packs removed, %d rewritten, %s freed\n",
		rep.KeptReleases, verb, rep.RemovedReleases, rep.RemovedChunks, rep.DeltaPacksRemoved, rep.PacksRemoved, rep.PacksRewritten, human(rep.FreedBytes))
	return nil
}
