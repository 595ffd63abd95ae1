package main

import (
	"fmt"
	"time"

	"github.com/imgctl/imgctl/manifest"
	"github.com/spf13/cobra"
)

func newManifestCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "manifest", Short: "Inspect manifests"}
	var store, channel string
	var asJSON, full bool
	show := &cobra.Command{
		Use:   "show FILE|NAME[/CHANNEL]@REV",
		Short: "Show a manifest (not verified: use imgctl verify for that)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, m, err := loadRelease(store, channel, args[0])
			if err != nil {
				return err
			}
			v := manifest.NewView(env, m, full)
			if asJSON {
				return writeJSON(g.stdout, v)
			}
			exp := "never"
			if v.Expires != nil {
				exp = v.Expires.Format(time.RFC3339)
			}
			fmt.Fprintf(g.stdout, "%s/%s@%d (%s)\n  id        %s\n  created   %s\n  expires   %s\n  size      %s (%d bytes)\n  blake3    %s\n  chunker   %s\n  chunks    %d distinct, %d extents in %d runs\n  data      %s distinct, %s zero in %d extents\n  signed by %v\n",
				m.Name, m.Channel, m.Revision, m.Kind, v.ID, m.Created.Format(time.RFC3339), exp, human(m.Size), m.Size,
				m.Digest, m.Chunker, v.Stats.Chunks, v.Stats.Extents, v.Stats.Runs, human(v.Stats.UniqueBytes),
				human(v.Stats.ZeroBytes), v.Stats.ZeroExtents, v.Signers)
			return nil
		},
	}
	show.Flags().StringVar(&store, "store", "", "chunk store holding the release")
	show.Flags().StringVar(&channel, "channel", "stable", "channel for NAME@REV without /CHANNEL")
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	show.Flags().BoolVar(&full, "full", false, "with --json, include the chunk table and layout")
	cmd.AddCommand(show)
	return cmd
}
