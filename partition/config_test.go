package partition

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "slots.toml")
	must(t, os.WriteFile(p, []byte(body), 0o644))
	return p
}

const baseConfig = `
[bootloader]
type = "grub"
env  = "/tmp/grubenv"
[slots.A]
device = "/dev/a"
[slots.B]
device = "/dev/b"
`

func TestConfigBootedFromCmdline(t *testing.T) {
	dir := t.TempDir()
	cmdline := filepath.Join(dir, "cmdline")
	c, err := LoadConfig(writeConfig(t, `cmdline_file = "`+cmdline+`"`+baseConfig))
	must(t, err)
	if c.StateDir != "/var/lib/imgctl" || c.MaxTries != 3 || c.Booted != "cmdline" {
		t.Fatalf("defaults: %+v", c)
	}
	for line, want := range map[string]string{
		"quiet root=/dev/a imgctl.slot=A":       "A",
		"rauc.slot=B quiet":                     "B",
		"rauc.slot=A imgctl.slot=B console=tty": "B", // imgctl.slot wins
	} {
		must(t, os.WriteFile(cmdline, []byte(line+"\n"), 0o644))
		got, err := c.BootedSlot()
		if err != nil || got != want {
			t.Fatalf("%q: %q %v, want %s", line, got, err, want)
		}
	}
	must(t, os.WriteFile(cmdline, []byte("imgctl.slot=C"), 0o644))
	if _, err := c.BootedSlot(); !errors.Is(err, ErrBootedUnknown) {
		t.Fatalf("unknown slot on the command line: %v", err)
	}
	if c.Other("A") != "B" || c.Other("B") != "A" {
		t.Fatal("Other")
	}
}

func TestConfigBootedFromFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "booted")
	must(t, os.WriteFile(f, []byte(" B\n"), 0o644))
	c, err := LoadConfig(writeConfig(t, `booted = "file:`+f+`"`+baseConfig))
	must(t, err)
	if got, err := c.BootedSlot(); err != nil || got != "B" {
		t.Fatalf("%q %v", got, err)
	}
}

func TestConfigRefusals(t *testing.T) {
	for name, body := range map[string]string{
		"unknown key":    "max_trys = 3\n" + baseConfig,
		"one slot":       "[bootloader]\ntype = \"grub\"\n[slots.A]\ndevice = \"/dev/a\"\n",
		"shared device":  strings.Replace(baseConfig, "/dev/b", "/dev/a", 1),
		"bad bootloader": strings.Replace(baseConfig, `"grub"`, `"lilo"`, 1),
		"script no path": strings.Replace(baseConfig, `type = "grub"`, `type = "script"`, 1),
		"max tries":      "max_tries = 12\n" + baseConfig,
		"booted form":    `booted = "efi"` + "\n" + baseConfig,
	} {
		if _, err := LoadConfig(writeConfig(t, body)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
