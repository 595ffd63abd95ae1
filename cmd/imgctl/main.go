// Command imgctl publishes OS images as signed, chunked releases and pulls
// them onto terminals fetching only what they lack.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
	"github.com/spf13/cobra"
)

// Exit codes (documented in README.md).
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitVerify      = 3
	exitInterrupted = 130
)

// globalOptions are shared by every command. No package-level state: tests
// build their own.
type globalOptions struct {
	quiet    bool
	logLevel string
	cpuProf  string
	stopProf func()
	stdout   io.Writer
	stderr   io.Writer
	now      func() time.Time // the clock; time.Now only in main
	isTTY    bool
	log      *slog.Logger
}

type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func usagef(f string, a ...any) error { return usageError{fmt.Errorf(f, a...)} }

func newRootCommand(g *globalOptions) *cobra.Command {
	root := &cobra.Command{
		Use:   "imgctl",
		Short: "Publish OS images as signed chunked releases; pull them fetching only what is missing",
		Long: `imgctl cuts OS images into content-defined chunks, stores them compressed and
describes each release by a signed manifest. Terminals pull a release by
verifying its manifest, reusing every chunk they already hold (local cache,
seed images such as the running slot) and fetching only the rest.

Exit status: 0 success, 1 error, 2 usage error, 3 verification failure
(bad or unknown signature, expired, rollback, wrong name/channel, corrupt
chunk from the server, content digest mismatch), 130 interrupted.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			lv := slog.LevelWarn
			if err := lv.UnmarshalText([]byte(g.logLevel)); err != nil {
				return usagef("--log-level %q: %v", g.logLevel, err)
			}
			g.log = slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: lv}))
			if terminalCommand(cmd) && os.Getenv("GOMEMLIMIT") == "" {
				// Terminals are small: keep the heap near what a pull
				// needs (a delta pack's segment and reference are
				// garbage soon after use) instead of letting it double.
				debug.SetMemoryLimit(terminalMemoryLimit)
			}
			if g.cpuProf != "" {
				f, err := os.Create(g.cpuProf)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				g.stopProf = func() { pprof.StopCPUProfile(); f.Close() }
			}
			return nil
		},
		PersistentPostRun: func(cmd *cobra.Command, args []string) {
			if g.stopProf != nil {
				g.stopProf()
			}
		},
	}
	root.SetOut(g.stdout)
	root.SetErr(g.stderr)
	root.PersistentFlags().BoolVarP(&g.quiet, "quiet", "q", false, "no progress output")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "warn", "debug, info, warn or error (logs go to stderr)")
	root.PersistentFlags().StringVar(&g.cpuProf, "cpuprofile", "", "write a Go CPU profile to this file")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newKeyCommand(g),
		newPublishCommand(g),
		newServeCommand(g),
		newMirrorCommand(g),
		newPullCommand(g),
		newDiffCommand(g),
		newTorrentCommand(g),
		newManifestCommand(g),
		newVerifyCommand(g),
		newFsckCommand(g),
		newGCCommand(g),
		newSlotCommand(g),
		newBundleCommand(g),
		newPackCommand(g),
		newDemoCommand(g),
	)
	return root
}

// terminalMemoryLimit is the Go soft memory limit of commands that run on
// terminals (pull, bundle apply); GOMEMLIMIT overrides it.
const terminalMemoryLimit = 96 << 20

func terminalCommand(cmd *cobra.Command) bool {
	switch cmd.CommandPath() {
	case "imgctl pull", "imgctl bundle apply":
		return true
	}
	return false
}

// exitCode maps an error to the process exit status. It is the only place
// that does.
func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.As(err, new(usageError)):
		return exitUsage
	case errors.Is(err, manifest.ErrVerification),
		errors.Is(err, chunkstore.ErrCorrupt),
		errors.Is(err, delta.ErrDigestMismatch):
		return exitVerify
	}
	return exitError
}

func run(ctx context.Context, args []string, g *globalOptions) int {
	root := newRootCommand(g)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintf(g.stderr, "imgctl: %v\n", err)
		if errors.As(err, new(usageError)) {
			fmt.Fprintln(g.stderr, "run 'imgctl --help' for usage")
		}
	}
	return exitCode(err)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	now, err := clockFromEnv(os.Getenv("IMGCTL_NOW"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "imgctl: %v\n", err)
		os.Exit(exitUsage)
	}
	g := &globalOptions{stdout: os.Stdout, stderr: os.Stderr, now: now, isTTY: isTerminal(os.Stderr)}
	os.Exit(run(ctx, os.Args[1:], g))
}

// clockFromEnv returns the clock: the real one, or, when IMGCTL_NOW holds an
// RFC 3339 time, a clock that starts there and runs on (for tests and for
// checking how a fleet will treat expiring manifests).
func clockFromEnv(v string) (func() time.Time, error) {
	if v == "" {
		return time.Now, nil
	}
	t0, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return nil, fmt.Errorf("IMGCTL_NOW=%q: want an RFC 3339 time: %v", v, err)
	}
	start := time.Now()
	return func() time.Time { return t0.Add(time.Since(start)) }, nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
