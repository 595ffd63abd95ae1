package main

import (
	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
	"github.com/spf13/cobra"
)

func newDiffCommand(g *globalOptions) *cobra.Command {
	var store, channel, format string
	var maxRegions int
	cmd := &cobra.Command{
		Use:   "diff [--store S] OLD NEW",
		Short: "Explain what changed between two releases",
		Long: `diff compares two releases, each given as NAME[/CHANNEL]@REV (looked up in
--store) or as a manifest file: chunks and bytes new, shared and removed; the
bytes a terminal on OLD fetches to reach NEW with its image as seed (exact
stored sizes when the store holds the chunks); and the changed regions of the
image. --format html writes one self-contained page with an SVG map.`,
		Example: `  imgctl diff --store /srv/imgctl terminal-os@41 terminal-os@42
  imgctl diff --store /srv/imgctl terminal-os@41 terminal-os@42 --format html > diff.html`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, om, err := loadRelease(store, channel, args[0])
			if err != nil {
				return err
			}
			_, nm, err := loadRelease(store, channel, args[1])
			if err != nil {
				return err
			}
			var stored func(chunkstore.ID) (int64, bool)
			var getter chunkstore.Getter
			if store != "" {
				d, err := chunkstore.OpenDir(store)
				if err != nil {
					return err
				}
				defer d.Close()
				stored, getter = d.StoredSize, d
			}
			d := delta.Compare(cmd.Context(), om, nm, stored, getter)
			if store != "" && om.Name == nm.Name && om.Channel == nm.Channel {
				if env, err := manifest.OpenReleases(store).ReadSide(nm.Name, nm.Channel, nm.Revision, manifest.SidePack(om.Revision)); err == nil {
					if rec, err := manifest.OpenPackRecord(env); err == nil {
						d.PackBytes = rec.Size
					}
				}
			}
			switch format {
			case "text":
				return d.WriteText(g.stdout, maxRegions)
			case "json":
				return writeJSON(g.stdout, d)
			case "html":
				return d.WriteHTML(g.stdout)
			}
			return usagef("--format %q: want text, json or html", format)
		},
	}
	cmd.Flags().StringVar(&store, "store", "", "chunk store holding the releases")
	cmd.Flags().StringVar(&channel, "channel", "stable", "channel for NAME@REV arguments without /CHANNEL")
	cmd.Flags().StringVar(&format, "format", "text", "text, json or html")
	cmd.Flags().IntVar(&maxRegions, "regions", 20, "changed regions listed in text (0: all)")
	return cmd
}
