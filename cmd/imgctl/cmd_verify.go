package main

import (
	"fmt"
	"os"

	"github.com/imgctl/imgctl/manifest"
	"github.com/spf13/cobra"
)

func newVerifyCommand(g *globalOptions) *cobra.Command {
	var trust []string
	var name, channel string
	var minRev uint64
	cmd := &cobra.Command{
		Use:   "verify --trust K.pub FILE",
		Short: "Verify a manifest file: signature, expiry, and optionally name, channel, revision",
		Long:  `verify exits 0 if FILE is a manifest signed by the trusted keys and not expired, 3 if not.`,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(trust) == 0 {
				return usagef("verify: --trust is required")
			}
			t, err := manifest.LoadTrust(trust...)
			if err != nil {
				return err
			}
			env, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			m, err := manifest.Verify(env, manifest.Policy{Trust: t, Now: g.now, Name: name, Channel: channel, MinRevision: minRev})
			if err != nil {
				return err
			}
			id, _ := manifest.ID(env)
			fmt.Fprintf(g.stdout, "OK %s/%s@%d %s %s\n", m.Name, m.Channel, m.Revision, m.Kind, id)
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&trust, "trust", nil, "trusted public key or trust file (repeatable)")
	cmd.Flags().StringVar(&name, "name", "", "require this name")
	cmd.Flags().StringVar(&channel, "channel", "", "require this channel")
	cmd.Flags().Uint64Var(&minRev, "min-revision", 0, "refuse lower revisions")
	return cmd
}
