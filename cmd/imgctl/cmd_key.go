package main

import (
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"github.com/spf13/cobra"
)

func newKeyCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Manage signing keys"}
	var out string
	var force bool
	gen := &cobra.Command{
		Use:   "gen --out DIR/NAME",
		Short: "Generate an ed25519 signing key: DIR/NAME.key (0600) and DIR/NAME.pub",
		Example: `  imgctl key gen --out keys/release
  # keep keys/release.key on the publisher; copy keys/release.pub to terminals (--trust)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usagef("key gen: --out is required")
			}
			return runKeyGen(g, out, force)
		},
	}
	gen.Flags().StringVar(&out, "out", "", "path prefix of the key files")
	gen.Flags().BoolVar(&force, "force", false, "overwrite existing key files")
	cmd.AddCommand(gen)
	return cmd
}

func runKeyGen(g *globalOptions, out string, force bool) error {
	priv, pub := out+".key", out+".pub"
	if !force {
		for _, p := range []string{priv, pub} {
			if _, err := os.Stat(p); err == nil {
				return usagef("%s exists (use --force to overwrite)", p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	k, err := manifest.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	pk, _ := k.MarshalText()
	if err := chunkstore.WriteFileAtomic(priv, pk, 0o600); err != nil {
		return err
	}
	pb, _ := k.Public().MarshalText()
	if err := chunkstore.WriteFileAtomic(pub, pb, 0o644); err != nil {
		return err
	}
	g.logf("wrote %s (secret) and %s; key id %s", priv, pub, k.ID)
	return nil
}
