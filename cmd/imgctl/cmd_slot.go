package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/partition"
	"github.com/spf13/cobra"
)

// slotEnv is a loaded slot configuration with its bootloader.
type slotEnv struct {
	cfg *partition.Config
	bl  partition.Bootloader
}

func loadSlots(path string) (*slotEnv, error) {
	cfg, err := partition.LoadConfig(path)
	if err != nil {
		return nil, err
	}
	return &slotEnv{cfg: cfg, bl: cfg.NewBootloader()}, nil
}

// resolve turns booted|other|NAME into a slot name.
func (s *slotEnv) resolve(arg string) (string, error) {
	switch arg {
	case "", "booted":
		return s.cfg.BootedSlot()
	case "other":
		b, err := s.cfg.BootedSlot()
		if err != nil {
			return "", err
		}
		return s.cfg.Other(b), nil
	}
	if _, ok := s.cfg.Slots[arg]; !ok {
		return "", usagef("unknown slot %q (slots: %v, or booted, other)", arg, s.cfg.SlotNames())
	}
	return arg, nil
}

// runPullSlots pulls into the slot that is not running, with the running
// slot as seed, and flips to it once it verified.
//
// Order, so that a crash at any point boots the old slot or the fully
// verified new one: (1) the target slot is marked bad in the bootloader and
// recorded as unverified, (2) it is written and verified, (3) it is
// recorded as verified, (4) it is made primary (one env write). A rerun
// after a crash finds every chunk already written in place.
func runPullSlots(ctx context.Context, g *globalOptions, o *pullOptions) (*pullResult, error) {
	if o.out != "" {
		return nil, usagef("pull: --out and --slots exclude each other")
	}
	s, err := loadSlots(o.slots)
	if err != nil {
		return nil, err
	}
	booted, err := s.cfg.BootedSlot()
	if err != nil {
		return nil, err
	}
	target := s.cfg.Other(booted)
	bootedDev, targetDev := s.cfg.Slots[booted].Device, s.cfg.Slots[target].Device
	if a, err1 := os.Stat(bootedDev); err1 == nil {
		if b, err2 := os.Stat(targetDev); err2 == nil && os.SameFile(a, b) {
			return nil, fmt.Errorf("slots %s and %s are the same device: refusing to write the running slot", booted, target)
		}
	}
	// The running slot must be confirmed good before the other is taken
	// out; the bootloader is asked while the manifest is fetched and
	// verified, and nothing is written before the answer (beforeWrite).
	bootedGood := make(chan error, 1)
	go func() {
		if st, err := s.bl.State(ctx, booted); err != nil {
			bootedGood <- err
		} else if st != partition.Good {
			bootedGood <- fmt.Errorf("the running slot %s is not confirmed good (run imgctl slot mark-good first): refusing to take the other slot out", booted)
		} else {
			bootedGood <- nil
		}
	}()
	stateDir := s.cfg.StateDir
	if o.cache == "" {
		o.cache = filepath.Join(stateDir, "cache")
	}
	o.out = targetDev
	// The running slot is the seed: by its recorded manifest when it has a
	// verified one, else as the cache knows it or by cutting it.
	seed := bootedDev
	if rec, err := partition.ReadRecord(stateDir, booted); err == nil && rec != nil && rec.Verified {
		if env, err := partition.ReadEnvelope(stateDir, booted); err == nil && env != nil {
			seed = bootedDev + ":" + partition.EnvelopePath(stateDir, booted)
		}
	}
	o.seeds = append([]string{seed}, o.seeds...)
	record := func(m *manifest.Manifest, env []byte, verified bool) error {
		id, _ := manifest.ID(env)
		return partition.WriteRecord(stateDir, partition.SlotRecord{
			Slot: target, Name: m.Name, Channel: m.Channel, Revision: m.Revision, Manifest: id,
			Digest: m.Digest, Size: m.Size, Verified: verified, Updated: g.now().UTC(),
		}, env)
	}
	o.beforeWrite = func(m *manifest.Manifest, env []byte) error {
		if err := <-bootedGood; err != nil {
			return err
		}
		if err := s.bl.SetState(ctx, target, partition.Bad); err != nil {
			return fmt.Errorf("take slot %s out before writing it: %w", target, err)
		}
		return record(m, env, false)
	}
	flipped := false
	o.afterVerify = func(m *manifest.Manifest, env []byte) error {
		if err := record(m, env, true); err != nil {
			return err
		}
		if o.noFlip {
			return nil
		}
		if err := s.bl.SetPrimary(ctx, target); err != nil {
			return fmt.Errorf("flip to slot %s: %w", target, err)
		}
		flipped = true
		return nil
	}
	o.slot, o.booted = target, booted
	res, err := runPull(ctx, g, o)
	if err != nil {
		return nil, err
	}
	if !o.json {
		if flipped {
			fmt.Fprintf(g.stdout, "slot %s holds %s/%s@%d, verified, and boots next (%d tries; confirm with imgctl slot mark-good)\n",
				target, res.Name, res.Channel, res.Revision, s.cfg.MaxTries)
		} else {
			fmt.Fprintf(g.stdout, "slot %s holds %s/%s@%d, verified; not made primary (--no-flip)\n", target, res.Name, res.Channel, res.Revision)
		}
	}
	return res, nil
}

type slotView struct {
	Slot      string                `json:"slot"`
	Device    string                `json:"device"`
	Booted    bool                  `json:"booted"`
	Primary   bool                  `json:"primary"`
	State     partition.State       `json:"state"`
	TriesLeft int                   `json:"tries_left"`
	Release   *partition.SlotRecord `json:"release,omitempty"`
}

func newSlotCommand(g *globalOptions) *cobra.Command {
	var cfgPath string
	cmd := &cobra.Command{
		Use:   "slot",
		Short: "A/B slots: status, mark-good, mark-bad, switch, rollback",
		Long: `slot manages the two root slots of a terminal through the configured
bootloader (grub-editenv, fw_setenv or a script; see docs/boot.md). Slot
arguments are a slot name, booted (the running slot) or other.`,
	}
	cmd.PersistentFlags().StringVar(&cfgPath, "slots", partition.DefaultConfigPath, "slot config")
	var asJSON bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Slots, booted, primary, good/bad, tries left, release per slot",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := loadSlots(cfgPath)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			booted, berr := s.cfg.BootedSlot()
			primary, err := s.bl.Primary(ctx)
			if err != nil {
				return err
			}
			var views []slotView
			for _, n := range s.cfg.SlotNames() {
				st, err := s.bl.State(ctx, n)
				if err != nil {
					return err
				}
				left, _ := s.bl.TriesLeft(ctx, n)
				rec, err := partition.ReadRecord(s.cfg.StateDir, n)
				if err != nil {
					return err
				}
				views = append(views, slotView{Slot: n, Device: s.cfg.Slots[n].Device, Booted: n == booted,
					Primary: n == primary, State: st, TriesLeft: left, Release: rec})
			}
			if asJSON {
				out := map[string]any{"booted": booted, "primary": primary, "bootloader": s.cfg.Bootloader.Type, "slots": views}
				if berr != nil {
					out["booted_error"] = berr.Error()
				}
				return writeJSON(g.stdout, out)
			}
			fmt.Fprintf(g.stdout, "bootloader %s; booted %s; primary %s\n", s.cfg.Bootloader.Type, orQ(booted), orQ(primary))
			for _, v := range views {
				rel := "no release recorded"
				if v.Release != nil {
					ver := "verified"
					if !v.Release.Verified {
						ver = "NOT verified"
					}
					rel = fmt.Sprintf("%s/%s@%d, %s", v.Release.Name, v.Release.Channel, v.Release.Revision, ver)
				}
				mark := " "
				if v.Booted {
					mark = "*"
				}
				fmt.Fprintf(g.stdout, "%s %s  %-4s  %d tries left  %s  (%s)\n", mark, v.Slot, v.State, v.TriesLeft, v.Device, rel)
			}
			return nil
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	markGood := &cobra.Command{
		Use:   "mark-good [booted|other|SLOT]",
		Short: "Confirm a slot (default: the booted one); stops its boot counting",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, slot, err := slotArg(cfgPath, args)
			if err != nil {
				return err
			}
			if err := s.bl.SetState(cmd.Context(), slot, partition.Good); err != nil {
				return err
			}
			g.logf("marked slot %s good", slot)
			return nil
		},
	}
	markBad := &cobra.Command{
		Use:   "mark-bad [booted|other|SLOT]",
		Short: "Take a slot out (default: the booted one); refused for the last good slot",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, slot, err := slotArg(cfgPath, args)
			if err != nil {
				return err
			}
			other := s.cfg.Other(slot)
			if st, err := s.bl.State(cmd.Context(), other); err != nil {
				return err
			} else if st != partition.Good {
				return fmt.Errorf("refusing to mark %s bad: %s is not good, and one slot must stay bootable", slot, other)
			}
			if err := s.bl.SetState(cmd.Context(), slot, partition.Bad); err != nil {
				return err
			}
			g.logf("marked slot %s bad", slot)
			return nil
		},
	}
	var force bool
	switchCmd := &cobra.Command{
		Use:   "switch SLOT",
		Short: "Make SLOT primary (recovery); refuses a slot whose content is not verified unless --force",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, slot, err := slotArg(cfgPath, args)
			if err != nil {
				return err
			}
			if err := requireVerified(s, slot, force); err != nil {
				return err
			}
			if err := s.bl.SetPrimary(cmd.Context(), slot); err != nil {
				return err
			}
			g.logf("slot %s boots next", slot)
			return nil
		},
	}
	switchCmd.Flags().BoolVar(&force, "force", false, "switch even if the slot's content is not recorded as verified")
	rollback := &cobra.Command{
		Use:   "rollback",
		Short: "Make the other (previous, good) slot primary again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := loadSlots(cfgPath)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			primary, err := s.bl.Primary(ctx)
			if err != nil {
				return err
			}
			if primary == "" {
				if primary, err = s.cfg.BootedSlot(); err != nil {
					return err
				}
			}
			to := s.cfg.Other(primary)
			if st, err := s.bl.State(ctx, to); err != nil {
				return err
			} else if st != partition.Good {
				return fmt.Errorf("cannot roll back: slot %s is not good", to)
			}
			if err := requireVerified(s, to, false); err != nil {
				return err
			}
			if err := s.bl.SetPrimary(ctx, to); err != nil {
				return err
			}
			g.logf("rolled back: slot %s boots next", to)
			return nil
		},
	}
	cmd.AddCommand(status, markGood, markBad, switchCmd, rollback)
	return cmd
}

func orQ(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

func slotArg(cfgPath string, args []string) (*slotEnv, string, error) {
	s, err := loadSlots(cfgPath)
	if err != nil {
		return nil, "", err
	}
	arg := ""
	if len(args) > 0 {
		arg = args[0]
	}
	slot, err := s.resolve(arg)
	return s, slot, err
}

// requireVerified refuses a slot whose recorded content is not verified. A
// slot with no record (installed before imgctl) is accepted.
func requireVerified(s *slotEnv, slot string, force bool) error {
	rec, err := partition.ReadRecord(s.cfg.StateDir, slot)
	if err != nil {
		return err
	}
	if rec != nil && !rec.Verified && !force {
		return errors.New("slot " + slot + " holds an unverified (partly written) release: refusing (use --force)")
	}
	return nil
}
