package main

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/transport/swarm"
)

type torrentShowOptions struct {
	store    string
	trackers []string
	webseeds []string
	json     bool
}

type torrentShowResult struct {
	Name        string `json:"name"`
	InfoHash    string `json:"infohash"`
	Magnet      string `json:"magnet"`
	InfoBytes   int    `json:"info_bytes"`
	Files       int    `json:"files"`
	Bytes       int64  `json:"bytes"`
	PieceLength int64  `json:"piece_length"`
	Pieces      int    `json:"pieces"`
	// Padding is 0: chunks follow each other without BEP 47 pad files
	// (decisions/0004). What pieces spanning chunks cost instead is
	// DeltaDownload - DeltaMissing for a terminal on the previous revision.
	PaddingBytes  int64  `json:"padding_bytes"`
	DeltaFrom     uint64 `json:"delta_from,omitempty"`
	DeltaMissing  int64  `json:"delta_missing_bytes,omitempty"`
	DeltaDownload int64  `json:"delta_download_bytes,omitempty"`
}

func newTorrentCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "torrent", Short: "Inspect release torrents"}
	o := &torrentShowOptions{}
	show := &cobra.Command{
		Use:   "show --store S N@REV",
		Short: "Show a release's torrent: infohash, magnet, pieces, and what spanning pieces cost a delta",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTorrentShow(cmd.Context(), g, o, args[0])
		},
	}
	show.Flags().StringVar(&o.store, "store", "", "chunk store directory")
	show.Flags().StringArrayVar(&o.trackers, "tracker", nil, "announce URL to put in the magnet (repeatable)")
	show.Flags().StringArrayVar(&o.webseeds, "webseed", nil, "webseed base URL to put in the magnet, e.g. http://origin:8420/ws/ (repeatable)")
	show.Flags().BoolVar(&o.json, "json", false, "print the result as JSON")
	cmd.AddCommand(show)
	return cmd
}

func runTorrentShow(_ context.Context, g *globalOptions, o *torrentShowOptions, ref string) error {
	if o.store == "" {
		return usagef("torrent show: --store is required")
	}
	_, m, err := loadRelease(o.store, "stable", ref)
	if err != nil {
		return err
	}
	rels := manifest.OpenReleases(o.store)
	rev := m.Revision
	info, err := rels.ReadSide(m.Name, m.Channel, rev, manifest.SideTorrentInfo)
	if err != nil {
		return fmt.Errorf("%s/%s@%d has no torrent (published with --no-torrent?): %w", m.Name, m.Channel, rev, err)
	}
	refs, err := m.Torrents()
	if err != nil || len(refs) == 0 {
		return fmt.Errorf("%s/%s@%d: no torrent record in the manifest", m.Name, m.Channel, rev)
	}
	if err := refs[0].Check(info); err != nil {
		return err
	}
	l, err := swarm.ParseInfo(info)
	if err != nil {
		return err
	}
	res := torrentShowResult{Name: l.Name, InfoHash: hex.EncodeToString(refs[0].InfoHash[:]), InfoBytes: len(info),
		Magnet: swarm.Magnet(refs[0].InfoHash, l.Name, o.trackers, o.webseeds), Files: l.Files(), Bytes: l.Total(),
		PieceLength: l.PieceLength, Pieces: l.NumPieces()}
	if prevEnv, _, err := rels.Read(m.Name, m.Channel, rev-1); rev > 1 && err == nil {
		if prev, err := manifest.Open(prevEnv); err == nil {
			have := map[chunkstore.ID]bool{}
			for _, c := range prev.Chunks {
				have[c.ID] = true
			}
			res.DeltaFrom = rev - 1
			res.DeltaMissing, res.DeltaDownload = l.FetchCost(func(f int) bool { return f == 0 || have[l.Chunks[f-1].ID] })
		}
	}
	if o.json {
		return writeJSON(g.stdout, res)
	}
	fmt.Fprintf(g.stdout, "torrent   %s\ninfohash  %s\nmagnet    %s\nfiles     %d (manifest + chunks), %s, info %s\npieces    %d × %s, padding 0\n",
		res.Name, res.InfoHash, res.Magnet, res.Files, human(res.Bytes), human(int64(res.InfoBytes)), res.Pieces, human(res.PieceLength))
	if res.DeltaFrom > 0 {
		fmt.Fprintf(g.stdout, "from @%d   %s of chunks missing, %s of pieces to download (+%.2f%%)\n", res.DeltaFrom,
			human(res.DeltaMissing), human(res.DeltaDownload), 100*float64(res.DeltaDownload-res.DeltaMissing)/float64(max(res.DeltaMissing, 1)))
	}
	return nil
}
