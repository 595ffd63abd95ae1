package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"github.com/spf13/cobra"
)

type fsckReport struct {
	*chunkstore.CheckReport
	Releases     int      `json:"releases"`
	BadReleases  []string `json:"bad_releases,omitempty"`
	DeltaPacks   int      `json:"delta_packs"`
	BadPacks     []string `json:"bad_delta_packs,omitempty"`
	Unreferenced int      `json:"unreferenced_chunks"`
	Repaired     bool     `json:"repaired"`
}

func newFsckCommand(g *globalOptions) *cobra.Command {
	var store string
	var repair, asJSON bool
	cmd := &cobra.Command{
		Use:   "fsck --store S",
		Short: "Check a store: every chunk re-hashed, index against packs, manifests against chunks",
		Long: `fsck re-reads and re-hashes every indexed chunk, compares the index with the
packs' own index files, and checks that every stored manifest decodes and
names only chunks the store holds. It exits 3 when a chunk is corrupt or
missing, a pack's index is bad, or a manifest is bad. With --repair, corrupt
and missing chunks are dropped from the index (a later publish or pull
stores them again) and stray files in packs/ are removed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if store == "" {
				return usagef("fsck: --store is required")
			}
			return runFsck(cmd.Context(), g, store, repair, asJSON)
		},
	}
	cmd.Flags().StringVar(&store, "store", "", "chunk store directory")
	cmd.Flags().BoolVar(&repair, "repair", false, "drop what is broken so that it can be restored")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func runFsck(ctx context.Context, g *globalOptions, root string, repair, asJSON bool) error {
	if _, err := os.Stat(filepath.Join(root, "index.db")); err != nil {
		return fmt.Errorf("%s is not a store: %w", root, err)
	}
	s, err := chunkstore.Open(root, chunkstore.Options{Logger: g.log})
	if err != nil {
		return err
	}
	defer s.Close()
	prog := newCountProgress(g, "fsck chunks")
	check, err := s.Check(ctx, func(done, total int) {
		if done == 1 {
			prog.Start(int64(total))
		}
		prog.Add(1)
	})
	prog.Done()
	if err != nil {
		return err
	}
	rep := fsckReport{CheckReport: check}
	relStore := manifest.OpenReleases(root)
	rels, err := relStore.List()
	if err != nil {
		return err
	}
	referenced := map[chunkstore.ID]bool{}
	for _, r := range rels {
		rep.Releases++
		b, err := os.ReadFile(r.Path)
		var m *manifest.Manifest
		if err == nil {
			m, err = manifest.Open(b)
		}
		if err == nil && (m.Name != r.Name || m.Channel != r.Channel || m.Revision != r.Revision) {
			err = fmt.Errorf("file name says %s/%s@%d, manifest says %s/%s@%d", r.Name, r.Channel, r.Revision, m.Name, m.Channel, m.Revision)
		}
		if err == nil {
			for _, c := range m.Chunks {
				referenced[c.ID] = true
				if ok, _ := s.Has(ctx, c.ID); !ok && err == nil {
					err = fmt.Errorf("names chunk %s the store lacks", c.ID.Short())
				}
			}
		}
		if err != nil {
			rep.BadReleases = append(rep.BadReleases, fmt.Sprintf("%s/%s@%d: %v", r.Name, r.Channel, r.Revision, err))
		}
		for _, from := range relStore.PackFroms(r.Name, r.Channel, r.Revision) {
			rep.DeltaPacks++
			if err := checkDeltaPack(root, relStore, r, from); err != nil {
				rep.BadPacks = append(rep.BadPacks, fmt.Sprintf("%s/%s %d→%d: %v", r.Name, r.Channel, from, r.Revision, err))
			}
		}
	}
	if len(rels) > 0 {
		s.Walk(func(i chunkstore.Info) error {
			if !referenced[i.ID] {
				rep.Unreferenced++
			}
			return nil
		})
	}
	if repair {
		if err := s.Unindex(append(append([]chunkstore.ID{}, check.Corrupt...), check.Missing...)); err != nil {
			return err
		}
		if err := s.RemoveStray(check.Stray); err != nil {
			return err
		}
		rep.Repaired = true
	}
	if asJSON {
		if err := writeJSON(g.stdout, rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(g.stdout, "%d chunks in %d packs checked: %d corrupt, %d missing, %d bad packs, %d stray files; %d releases, %d bad; %d chunks referenced by no release, %d awaiting compaction\n",
			check.Chunks, check.Packs, len(check.Corrupt), len(check.Missing), len(check.BadPacks), len(check.Stray),
			rep.Releases, len(rep.BadReleases), rep.Unreferenced, check.Unindexed)
		for _, c := range check.Corrupt {
			fmt.Fprintf(g.stdout, "corrupt  %s\n", c)
		}
		for _, c := range check.Missing {
			fmt.Fprintf(g.stdout, "missing  %s\n", c)
		}
		for _, p := range check.BadPacks {
			fmt.Fprintf(g.stdout, "bad pack %s\n", p)
		}
		for _, r := range rep.BadReleases {
			fmt.Fprintf(g.stdout, "bad      %s\n", r)
		}
		if rep.DeltaPacks > 0 {
			fmt.Fprintf(g.stdout, "%d delta packs checked, %d bad\n", rep.DeltaPacks, len(rep.BadPacks))
		}
		for _, p := range rep.BadPacks {
			fmt.Fprintf(g.stdout, "bad delta pack %s\n", p)
		}
	}
	if !check.OK() || len(rep.BadReleases) > 0 || len(rep.BadPacks) > 0 {
		if repair {
			g.logf("fsck: dropped what was broken; publish or pull again to restore it")
		}
		return fmt.Errorf("fsck: store %s has problems: %w", root, chunkstore.ErrCorrupt)
	}
	return nil
}

// checkDeltaPack re-hashes the packs a release's record names.
func checkDeltaPack(root string, rels *manifest.Releases, r manifest.Release, from uint64) error {
	env, err := rels.ReadSide(r.Name, r.Channel, r.Revision, manifest.SidePack(from))
	if err != nil {
		return err
	}
	rec, err := manifest.OpenPackRecord(env)
	if err != nil {
		return err
	}
	for _, o := range rec.Objects() {
		if err := checkPackObject(root, o); err != nil {
			return err
		}
	}
	return nil
}

func checkPackObject(root string, o manifest.PackObject) error {
	f, err := os.Open(manifest.PackPath(root, o.Pack))
	if err != nil {
		return err
	}
	defer f.Close()
	got, n, err := chunkstore.SumReader(f)
	if err != nil {
		return err
	}
	if got != o.Pack || n != o.Size {
		return fmt.Errorf("pack %s: %d bytes hashing to %s", o.Pack.Short(), n, got.Short())
	}
	return nil
}
