package partition

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// DefaultConfigPath is where the slot configuration lives on a terminal.
const DefaultConfigPath = "/etc/imgctl/slots.toml"

// Config is the slot configuration (TOML):
//
//	state_dir = "/var/lib/imgctl"
//	booted    = "cmdline"             # or "file:/run/imgctl/booted" (holds A or B)
//	max_tries = 3
//	[bootloader]
//	type   = "grub"                   # grub | uboot | script
//	env    = "/boot/grub/grubenv"     # grub
//	config = "/etc/fw_env.config"     # uboot
//	path   = "/usr/lib/imgctl/imgctl-bootslot"   # script
//	[slots.A]
//	device = "/dev/mmcblk0p2"
//	[slots.B]
//	device = "/dev/mmcblk0p3"
//
// Unknown keys are an error, so a typo cannot silently change behaviour.
type Config struct {
	StateDir   string                `toml:"state_dir"`
	Booted     string                `toml:"booted"`
	MaxTries   int                   `toml:"max_tries"`
	Bootloader BootloaderConfig      `toml:"bootloader"`
	Slots      map[string]SlotConfig `toml:"slots"`
	// Cmdline is the kernel command line file (tests point it elsewhere).
	Cmdline string `toml:"cmdline_file"`
}

// BootloaderConfig selects and configures the boot-slot switch.
type BootloaderConfig struct {
	Type   string `toml:"type"`
	Env    string `toml:"env"`
	Config string `toml:"config"`
	Path   string `toml:"path"`
}

// SlotConfig describes one slot.
type SlotConfig struct {
	Device string `toml:"device"`
}

// LoadConfig reads and checks a slot configuration.
func LoadConfig(path string) (*Config, error) {
	var c Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return nil, fmt.Errorf("slot config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		var keys []string
		for _, k := range und {
			keys = append(keys, k.String())
		}
		return nil, fmt.Errorf("slot config %s: unknown keys %s", path, strings.Join(keys, ", "))
	}
	if c.StateDir == "" {
		c.StateDir = "/var/lib/imgctl"
	}
	if c.Booted == "" {
		c.Booted = "cmdline"
	}
	if c.MaxTries == 0 {
		c.MaxTries = 3
	}
	if c.Cmdline == "" {
		c.Cmdline = "/proc/cmdline"
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("slot config %s: %w", path, err)
	}
	return &c, nil
}

func (c *Config) validate() error {
	if len(c.Slots) != 2 {
		return fmt.Errorf("need exactly two slots, got %d", len(c.Slots))
	}
	devs := map[string]string{}
	for name, s := range c.Slots {
		if !slotName.MatchString(name) {
			return fmt.Errorf("slot name %q: want 1-16 of [A-Za-z0-9_]", name)
		}
		if s.Device == "" {
			return fmt.Errorf("slot %s: no device", name)
		}
		abs, err := filepath.Abs(s.Device)
		if err != nil {
			return err
		}
		if other, dup := devs[abs]; dup {
			return fmt.Errorf("slots %s and %s share device %s", other, name, s.Device)
		}
		devs[abs] = name
	}
	if c.MaxTries < 1 || c.MaxTries > 9 {
		return fmt.Errorf("max_tries %d: want 1..9", c.MaxTries)
	}
	if c.Booted != "cmdline" && !strings.HasPrefix(c.Booted, "file:") {
		return fmt.Errorf(`booted %q: want "cmdline" or "file:PATH"`, c.Booted)
	}
	switch c.Bootloader.Type {
	case "grub":
		if c.Bootloader.Env == "" {
			c.Bootloader.Env = "/boot/grub/grubenv"
		}
	case "uboot":
		if c.Bootloader.Config == "" {
			c.Bootloader.Config = "/etc/fw_env.config"
		}
	case "script":
		if c.Bootloader.Path == "" {
			return errors.New("bootloader type script needs path")
		}
	default:
		return fmt.Errorf("bootloader type %q: want grub, uboot or script", c.Bootloader.Type)
	}
	return nil
}

// SlotNames returns the slot names, sorted.
func (c *Config) SlotNames() []string {
	var names []string
	for n := range c.Slots {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Other returns the slot that is not slot.
func (c *Config) Other(slot string) string {
	for _, n := range c.SlotNames() {
		if n != slot {
			return n
		}
	}
	return ""
}

// NewBootloader returns the configured boot-slot switch.
func (c *Config) NewBootloader() Bootloader {
	names := c.SlotNames()
	switch c.Bootloader.Type {
	case "grub":
		return &Grub{Env: c.Bootloader.Env, Slots: names, MaxTries: c.MaxTries}
	case "uboot":
		return &UBoot{Config: c.Bootloader.Config, Slots: names, MaxTries: c.MaxTries}
	}
	return &Script{Path: c.Bootloader.Path, Slots: names}
}

// ErrBootedUnknown: the booted slot cannot be told.
var ErrBootedUnknown = errors.New("booted slot unknown")

// BootedSlot returns the slot the system runs from: imgctl.slot= (or
// rauc.slot=) on the kernel command line, or the content of a file.
func (c *Config) BootedSlot() (string, error) {
	var name string
	if p, ok := strings.CutPrefix(c.Booted, "file:"); ok {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrBootedUnknown, err)
		}
		name = strings.TrimSpace(string(b))
	} else {
		b, err := os.ReadFile(c.Cmdline)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrBootedUnknown, err)
		}
		for _, w := range strings.Fields(string(b)) {
			if v, ok := strings.CutPrefix(w, "imgctl.slot="); ok {
				name = v
				break
			}
			if v, ok := strings.CutPrefix(w, "rauc.slot="); ok && name == "" {
				name = v
			}
		}
	}
	if _, ok := c.Slots[name]; !ok {
		return "", fmt.Errorf("%w: %q is not a configured slot (%s)", ErrBootedUnknown, name, strings.Join(c.SlotNames(), ", "))
	}
	return name, nil
}
