package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"github.com/spf13/cobra"
)

type gcReport struct {
	KeptReleases    int   `json:"kept_releases"`
	RemovedReleases int   `json:"removed_releases"`
	RemovedChunks   int   `json:"removed_chunks"`
	FreedBytes      int64 `json:"freed_bytes"`
	RemovedFiles    int   `json:"removed_unindexed_files"`
	DryRun          bool  `json:"dry_run"`
}

func newGCCommand(g *globalOptions) *cobra.Command {
	var store string
	var keep int
	var dryRun, asJSON bool
	cmd := &cobra.Command{
		Use:   "gc --store S [--keep N]",
		Short: "Remove old releases and the chunks no kept release needs",
		Long: `gc keeps the newest N revisions of every name and channel, plus any release a
file record of a pull cache names (the slot images on this machine), removes
the other manifests, then removes every chunk that no kept release names and
any unindexed chunk file. Chunks of kept releases are never removed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if store == "" {
				return usagef("gc: --store is required")
			}
			if keep < 1 {
				return usagef("gc: --keep must be at least 1")
			}
			return runGC(cmd.Context(), g, store, keep, dryRun, asJSON)
		},
	}
	cmd.Flags().StringVar(&store, "store", "", "chunk store directory")
	cmd.Flags().IntVar(&keep, "keep", 3, "revisions to keep per name and channel")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "report what would be removed")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func runGC(ctx context.Context, g *globalOptions, root string, keep int, dryRun, asJSON bool) error {
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
	indexed := map[chunkstore.ID]bool{}
	err = s.Walk(func(i chunkstore.Info) error {
		indexed[i.ID] = true
		if !referenced[i.ID] {
			drop = append(drop, i.ID)
			rep.FreedBytes += int64(i.Stored)
		}
		return nil
	})
	if err != nil {
		return err
	}
	rep.RemovedChunks = len(drop)
	var stray []string
	err = filepath.WalkDir(filepath.Join(root, "chunks"), func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		id, perr := chunkstore.ParseID(strings.TrimSuffix(e.Name(), ".zst"))
		if perr != nil || !indexed[id] {
			stray = append(stray, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	rep.RemovedFiles = len(stray)
	if !dryRun {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.Delete(drop); err != nil {
			return err
		}
		for _, p := range stray {
			if err := os.Remove(p); err != nil {
				return err
			}
		}
	}
	if asJSON {
		return writeJSON(g.stdout, rep)
	}
	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	fmt.Fprintf(g.stdout, "kept %d releases; %s %d releases, %d chunks (%s), %d unindexed files\n",
		rep.KeptReleases, verb, rep.RemovedReleases, rep.RemovedChunks, human(rep.FreedBytes), rep.RemovedFiles)
	return nil
}
