package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"github.com/spf13/cobra"
)

type fsckReport struct {
	Chunks       int      `json:"chunks"`
	Corrupt      []string `json:"corrupt,omitempty"`
	Missing      []string `json:"missing,omitempty"`
	Orphans      []string `json:"orphans,omitempty"`
	TempFiles    []string `json:"temp_files,omitempty"`
	Releases     int      `json:"releases"`
	BadReleases  []string `json:"bad_releases,omitempty"`
	Unreferenced int      `json:"unreferenced_chunks"`
	Repaired     bool     `json:"repaired"`
}

func newFsckCommand(g *globalOptions) *cobra.Command {
	var store string
	var repair, asJSON bool
	cmd := &cobra.Command{
		Use:   "fsck --store S",
		Short: "Check a store: every chunk re-hashed, index against files, manifests against chunks",
		Long: `fsck re-reads and re-hashes every indexed chunk, compares the index with the
chunk files, and checks that every stored manifest decodes and names only
chunks the store holds. It exits 3 when a chunk is corrupt or missing or a
manifest is bad. With --repair, corrupt files move to <store>/quarantine,
their index records and those of missing files are dropped (a later publish or
pull restores them), and unindexed and temporary files are removed.`,
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
	s, err := chunkstore.Open(root, chunkstore.Options{})
	if err != nil {
		return err
	}
	defer s.Close()
	var rep fsckReport
	var infos []chunkstore.Info
	indexed := map[chunkstore.ID]bool{}
	if err := s.Walk(func(i chunkstore.Info) error {
		infos = append(infos, i)
		indexed[i.ID] = true
		return nil
	}); err != nil {
		return err
	}
	rep.Chunks = len(infos)
	prog := newCountProgress(g, "fsck chunks")
	prog.Start(int64(len(infos)))
	var mu sync.Mutex
	var bad, gone []chunkstore.ID
	jobs := make(chan chunkstore.Info)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				b, err := s.ReadStored(i.ID)
				if err == nil {
					_, err = chunkstore.Verify(i.ID, b, int(i.Size))
				}
				mu.Lock()
				switch {
				case errors.Is(err, chunkstore.ErrNotFound):
					gone = append(gone, i.ID)
				case err != nil:
					bad = append(bad, i.ID)
					g.log.Error("corrupt chunk", "id", i.ID, "err", err)
				}
				mu.Unlock()
				prog.Add(1)
			}
		}()
	}
	for _, i := range infos {
		if ctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	prog.Done()
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, id := range bad {
		rep.Corrupt = append(rep.Corrupt, id.String())
	}
	for _, id := range gone {
		rep.Missing = append(rep.Missing, id.String())
	}
	var orphans []string
	err = filepath.WalkDir(filepath.Join(root, "chunks"), func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		name := e.Name()
		if strings.HasPrefix(name, ".tmp-") {
			rep.TempFiles = append(rep.TempFiles, p)
			return nil
		}
		id, perr := chunkstore.ParseID(strings.TrimSuffix(name, ".zst"))
		if perr != nil || !strings.HasSuffix(name, ".zst") || !indexed[id] {
			orphans = append(orphans, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	rep.Orphans = orphans
	rels, err := manifest.OpenReleases(root).List()
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
				if !indexed[c.ID] {
					err = fmt.Errorf("names chunk %s the store lacks", c.ID.Short())
				}
			}
		}
		if err != nil {
			rep.BadReleases = append(rep.BadReleases, fmt.Sprintf("%s/%s@%d: %v", r.Name, r.Channel, r.Revision, err))
		}
	}
	for id := range indexed {
		if !referenced[id] {
			rep.Unreferenced++
		}
	}
	if repair {
		if err := s.Unindex(append(append([]chunkstore.ID{}, bad...), gone...)); err != nil {
			return err
		}
		q := filepath.Join(root, "quarantine")
		if len(bad) > 0 {
			if err := os.MkdirAll(q, 0o755); err != nil {
				return err
			}
		}
		for _, id := range bad {
			if err := os.Rename(s.Path(id), filepath.Join(q, id.String()+".zst")); err != nil {
				return err
			}
		}
		for _, p := range append(append([]string{}, orphans...), rep.TempFiles...) {
			if err := os.Remove(p); err != nil {
				return err
			}
		}
		rep.Repaired = true
	}
	if asJSON {
		if err := writeJSON(g.stdout, rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(g.stdout, "%d chunks checked: %d corrupt, %d missing; %d unindexed files, %d temporary files; %d releases, %d bad; %d chunks referenced by no release\n",
			rep.Chunks, len(rep.Corrupt), len(rep.Missing), len(rep.Orphans), len(rep.TempFiles), rep.Releases, len(rep.BadReleases), rep.Unreferenced)
		for _, c := range rep.Corrupt {
			fmt.Fprintf(g.stdout, "corrupt  %s\n", c)
		}
		for _, c := range rep.Missing {
			fmt.Fprintf(g.stdout, "missing  %s\n", c)
		}
		for _, r := range rep.BadReleases {
			fmt.Fprintf(g.stdout, "bad      %s\n", r)
		}
	}
	if len(rep.Corrupt)+len(rep.Missing)+len(rep.BadReleases) > 0 {
		return fmt.Errorf("fsck: store %s has problems: %w", root, chunkstore.ErrCorrupt)
	}
	return nil
}
