package partition

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// UBoot keeps boot state in a U-Boot environment through the real
// fw_printenv/fw_setenv (libubootenv), with RAUC's variables:
//
//	BOOT_ORDER="A B"   boot names, first is tried first
//	BOOT_X_LEFT=3      boots left for X, in hexadecimal as RAUC writes it
//
// A slot is good when it is in BOOT_ORDER with BOOT_X_LEFT > 0; the boot
// script decrements BOOT_X_LEFT before booting X, and mark-good restores
// it. Every change is one `fw_setenv -s` of all variables. The boot-side
// script is docs/boot.md.
type UBoot struct {
	Config   string   // fw_env.config
	Slots    []string // boot names
	MaxTries int      // 0 means 3
	Printenv string   // "" means fw_printenv from PATH
	Setenv   string   // "" means fw_setenv from PATH
}

var _ Bootloader = (*UBoot)(nil)

func (u *UBoot) tries() int {
	if u.MaxTries <= 0 {
		return 3
	}
	return u.MaxTries
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Read returns every variable of the environment.
func (u *UBoot) Read(ctx context.Context) (map[string]string, error) {
	out, err := run(ctx, orDefault(u.Printenv, "fw_printenv"), "-c", u.Config)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoEnv, err)
	}
	return parseEnv(out), nil
}

// set writes all pairs in ONE fw_setenv -s call (script lines NAME=VALUE;
// libubootenv silently ignores any other form).
func (u *UBoot) set(ctx context.Context, kv map[string]string) error {
	var b strings.Builder
	for _, k := range sortedKeys(kv) {
		if strings.ContainsAny(kv[k], "\n") {
			return fmt.Errorf("u-boot variable %s: newline in value", k)
		}
		b.WriteString(k + "=" + kv[k] + "\n")
	}
	f, err := os.CreateTemp("", "imgctl-fw_setenv-*.txt")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	_, err = run(ctx, orDefault(u.Setenv, "fw_setenv"), "-c", u.Config, "-s", f.Name())
	return err
}

func leftOf(env map[string]string, slot string) int {
	v, err := strconv.ParseUint(env["BOOT_"+slot+"_LEFT"], 16, 16)
	if err != nil {
		return 0
	}
	return int(v)
}

func (u *UBoot) inOrder(env map[string]string, slot string) bool {
	for _, s := range strings.Fields(env["BOOT_ORDER"]) {
		if s == slot {
			return true
		}
	}
	return false
}

// Primary returns the first slot of BOOT_ORDER with boots left.
func (u *UBoot) Primary(ctx context.Context) (string, error) {
	env, err := u.Read(ctx)
	if err != nil {
		return "", err
	}
	for _, s := range strings.Fields(env["BOOT_ORDER"]) {
		if checkSlot(u.Slots, s) == nil && leftOf(env, s) > 0 {
			return s, nil
		}
	}
	return "", nil
}

// SetPrimary writes BOOT_X_LEFT=<tries> BOOT_ORDER="X …" at once.
func (u *UBoot) SetPrimary(ctx context.Context, slot string) error {
	if err := checkSlot(u.Slots, slot); err != nil {
		return err
	}
	env, err := u.Read(ctx)
	if err != nil {
		return err
	}
	return u.set(ctx, map[string]string{
		"BOOT_ORDER":             strings.Join(reorder(strings.Fields(env["BOOT_ORDER"]), u.Slots, slot), " "),
		"BOOT_" + slot + "_LEFT": strconv.FormatUint(uint64(u.tries()), 16),
	})
}

// State reports good (in BOOT_ORDER with boots left) or bad.
func (u *UBoot) State(ctx context.Context, slot string) (State, error) {
	if err := checkSlot(u.Slots, slot); err != nil {
		return "", err
	}
	env, err := u.Read(ctx)
	if err != nil {
		return "", err
	}
	if u.inOrder(env, slot) && leftOf(env, slot) > 0 {
		return Good, nil
	}
	return Bad, nil
}

// SetState: good restores BOOT_X_LEFT (and puts X back in BOOT_ORDER,
// last, if it was removed); bad removes X from BOOT_ORDER and sets
// BOOT_X_LEFT=0 (RAUC's mark-bad). One write.
func (u *UBoot) SetState(ctx context.Context, slot string, s State) error {
	if err := checkSlot(u.Slots, slot); err != nil {
		return err
	}
	env, err := u.Read(ctx)
	if err != nil {
		return err
	}
	order := strings.Fields(env["BOOT_ORDER"])
	kv := map[string]string{}
	if s == Good {
		if !u.inOrder(env, slot) {
			order = append(order, slot)
		}
		kv["BOOT_"+slot+"_LEFT"] = strconv.FormatUint(uint64(u.tries()), 16)
	} else {
		var kept []string
		for _, o := range order {
			if o != slot {
				kept = append(kept, o)
			}
		}
		order = kept
		kv["BOOT_"+slot+"_LEFT"] = "0"
	}
	kv["BOOT_ORDER"] = strings.Join(order, " ")
	return u.set(ctx, kv)
}

// TriesLeft returns BOOT_X_LEFT (0 if X is not in BOOT_ORDER).
func (u *UBoot) TriesLeft(ctx context.Context, slot string) (int, error) {
	if err := checkSlot(u.Slots, slot); err != nil {
		return 0, err
	}
	env, err := u.Read(ctx)
	if err != nil {
		return 0, err
	}
	if !u.inOrder(env, slot) {
		return 0, nil
	}
	return leftOf(env, slot), nil
}

// InitUBootEnv creates a redundant-free U-Boot environment file of size
// bytes at path with primary as the only good slot, using mkenvimage, and
// writes a fw_env.config for it next to it. For tests and new devices.
func InitUBootEnv(ctx context.Context, dir string, slots []string, primary string, tries int, size int) (config string, err error) {
	return initUBootEnv(ctx, dir, slots, primary, tries, size, 1)
}

// InitUBootEnvRedundant is InitUBootEnv with two copies of the environment
// (uboot.env and uboot.env.redund, flag byte included, both lines in
// fw_env.config), as U-Boot's CONFIG_ENV_OFFSET_REDUND lays them out:
// fw_setenv writes the copy not in use and switches by the flag, so a write
// cut short leaves the previous state readable (docs/boot.md).
func InitUBootEnvRedundant(ctx context.Context, dir string, slots []string, primary string, tries int, size int) (config string, err error) {
	return initUBootEnv(ctx, dir, slots, primary, tries, size, 2)
}

func initUBootEnv(ctx context.Context, dir string, slots []string, primary string, tries, size, copies int) (config string, err error) {
	if err := checkSlot(slots, primary); err != nil {
		return "", err
	}
	config = filepath.Join(dir, "fw_env.config")
	var b strings.Builder
	b.WriteString("BOOT_ORDER=" + strings.Join(reorder(nil, slots, primary), " ") + "\n")
	for _, s := range slots {
		left := "0"
		if s == primary {
			left = strconv.FormatUint(uint64(tries), 16)
		}
		b.WriteString("BOOT_" + s + "_LEFT=" + left + "\n")
	}
	txt := filepath.Join(dir, "uboot-env.txt")
	if err := os.WriteFile(txt, []byte(b.String()), 0o644); err != nil {
		return "", err
	}
	var conf strings.Builder
	for i := 0; i < copies; i++ {
		env := filepath.Join(dir, "uboot.env")
		args := []string{"-s", fmt.Sprintf("%#x", size), "-o", env, txt}
		if copies > 1 {
			if i > 0 {
				env += ".redund"
			}
			args = []string{"-r", "-s", fmt.Sprintf("%#x", size), "-o", env, txt}
		}
		if _, err := run(ctx, "mkenvimage", args...); err != nil {
			return "", err
		}
		fmt.Fprintf(&conf, "%s 0x0000 %#x\n", env, size)
	}
	if err := os.WriteFile(config, []byte(conf.String()), 0o644); err != nil {
		return "", err
	}
	return config, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
