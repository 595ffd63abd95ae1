package partition

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rauc runs Debian's RAUC 1.8 against a grubenv: a private D-Bus daemon and
// a `rauc service` on it, both stopped by PID when the test ends.
type rauc struct {
	conf string
	env  []string
}

func startRauc(t *testing.T, grubenv string) *rauc {
	return startRaucWith(t, "bootloader=grub\ngrubenv="+grubenv+"\n", nil)
}

// startRaucWith starts RAUC with the given [system] bootloader lines; wrap,
// if set, is a command prefix for the service (e.g. a mount namespace).
func startRaucWith(t *testing.T, bootloader string, wrap []string) *rauc {
	t.Helper()
	needTool(t, "rauc", "dbus-daemon")
	dir := t.TempDir()
	sock := filepath.Join(dir, "bus.sock")
	busConf := filepath.Join(dir, "bus.conf")
	must(t, os.WriteFile(busConf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path=`+sock+`</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/><allow user="*"/></policy></busconfig>
`), 0o644))
	for _, s := range []string{"slotA.img", "slotB.img"} {
		must(t, os.WriteFile(filepath.Join(dir, s), nil, 0o644))
	}
	conf := filepath.Join(dir, "system.conf")
	must(t, os.WriteFile(conf, []byte(fmt.Sprintf(`[system]
compatible=imgctl-test
%sdata-directory=%s

[slot.rootfs.0]
device=%s
type=raw
bootname=A

[slot.rootfs.1]
device=%s
type=raw
bootname=B
`, bootloader, filepath.Join(dir, "data"), filepath.Join(dir, "slotA.img"), filepath.Join(dir, "slotB.img"))), 0o644))
	start := func(name string, env []string, args ...string) {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), env...)
		var se bytes.Buffer
		cmd.Stderr = &se
		must(t, cmd.Start())
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
	}
	start("dbus-daemon", nil, "--config-file="+busConf, "--nofork")
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := &rauc{conf: conf, env: []string{"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + sock}}
	svc := append(append([]string{}, wrap...), "rauc", "-c", conf, "service", "--override-boot-slot=A")
	start(svc[0], r.env, svc[1:]...)
	for i := 0; i < 100; i++ {
		if _, err := r.run("status"); err == nil {
			return r
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("rauc service did not come up")
	return nil
}

func (r *rauc) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return runEnv(ctx, r.env, "rauc", append([]string{"-c", r.conf}, args...)...)
}

// status returns RAUC's primary boot name and each boot name's status.
func (r *rauc) status(t *testing.T) (string, map[string]string) {
	t.Helper()
	out, err := r.run("status", "--output-format=json")
	must(t, err)
	var st struct {
		Primary string                         `json:"boot_primary"`
		Slots   []map[string]map[string]string `json:"slots"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	byName := map[string]string{}
	primary := ""
	for _, m := range st.Slots {
		for name, s := range m {
			byName[s["bootname"]] = s["boot_status"]
			if name == st.Primary {
				primary = s["bootname"]
			}
		}
	}
	return primary, byName
}

// After every change, made by imgctl or by RAUC, both read the same primary
// and the same good/bad state of every slot.
func TestRaucReadsTheSameGrubEnv(t *testing.T) {
	ctx := context.Background()
	g := &Grub{Env: filepath.Join(t.TempDir(), "grubenv"), Slots: []string{"A", "B"}, MaxTries: 3}
	must(t, g.Init(ctx, "A"))
	r := startRauc(t, g.Env)
	sim := grubSim{g}
	steps := []step{
		{"init", func() error { return nil }},
		{"imgctl activates B", func() error { return g.SetPrimary(ctx, "B") }},
		{"GRUB boots B (on trial)", func() error { sim.Boot(t); return nil }},
		{"imgctl marks B good", func() error { return g.SetState(ctx, "B", Good) }},
		{"imgctl marks B bad", func() error { return g.SetState(ctx, "B", Bad) }},
		{"rauc marks rootfs.1 active", func() error { _, err := r.run("status", "mark-active", "rootfs.1"); return err }},
		{"rauc marks rootfs.1 bad", func() error { _, err := r.run("status", "mark-bad", "rootfs.1"); return err }},
		{"rauc marks rootfs.1 good", func() error { _, err := r.run("status", "mark-good", "rootfs.1"); return err }},
		{"imgctl activates A", func() error { return g.SetPrimary(ctx, "A") }},
	}
	agreeWithRauc(t, r, g, g.Slots, steps)
	out, err := r.run("status")
	if err != nil || !strings.Contains(out, "imgctl-test") {
		t.Fatalf("rauc status after the sequence: %v\n%s", err, out)
	}
}

// The same for U-Boot: RAUC runs fw_printenv/fw_setenv with the default
// /etc/fw_env.config, so its service runs in a private mount namespace where
// the test's config is bind-mounted there (the host's /etc is untouched but
// for an empty mount point created if missing, and removed again).
func TestRaucReadsTheSameUBootEnv(t *testing.T) {
	ctx := context.Background()
	needTool(t, "unshare", "mount", "fw_printenv", "fw_setenv", "mkenvimage")
	const etc = "/etc/fw_env.config"
	if _, err := os.Stat(etc); os.IsNotExist(err) {
		must(t, os.WriteFile(etc, nil, 0o644))
		t.Cleanup(func() { os.Remove(etc) })
	}
	cfg, err := InitUBootEnv(ctx, t.TempDir(), []string{"A", "B"}, "A", 3, 0x4000)
	must(t, err)
	u := &UBoot{Config: cfg, Slots: []string{"A", "B"}, MaxTries: 3}
	r := startRaucWith(t, "bootloader=uboot\nboot-attempts=3\nboot-attempts-primary=3\n",
		[]string{"unshare", "-m", "sh", "-c", "mount --bind " + cfg + " " + etc + " && exec \"$0\" \"$@\""})
	sim := ubootSim{u}
	steps := []step{
		{"init", func() error { return nil }},
		{"imgctl activates B", func() error { return u.SetPrimary(ctx, "B") }},
		{"U-Boot boots B", func() error { sim.Boot(t); return nil }},
		{"imgctl marks B good", func() error { return u.SetState(ctx, "B", Good) }},
		{"imgctl marks B bad", func() error { return u.SetState(ctx, "B", Bad) }},
		{"rauc marks rootfs.1 active", func() error { _, err := r.run("status", "mark-active", "rootfs.1"); return err }},
		{"rauc marks rootfs.1 bad", func() error { _, err := r.run("status", "mark-bad", "rootfs.1"); return err }},
		{"rauc marks rootfs.1 good", func() error { _, err := r.run("status", "mark-good", "rootfs.1"); return err }},
		{"imgctl activates A", func() error { return u.SetPrimary(ctx, "A") }},
	}
	agreeWithRauc(t, r, u, u.Slots, steps)
}

type step struct {
	what string
	do   func() error
}

// agreeWithRauc applies each step, then requires rauc status and bl to read
// the same primary slot and the same state of every slot.
func agreeWithRauc(t *testing.T, r *rauc, bl Bootloader, slots []string, steps []step) {
	t.Helper()
	ctx := context.Background()
	for _, s := range steps {
		must(t, s.do())
		rp, rs := r.status(t)
		p, err := bl.Primary(ctx)
		must(t, err)
		if rp != p {
			t.Fatalf("after %s: rauc says primary %q, imgctl %q", s.what, rp, p)
		}
		for _, slot := range slots {
			st, err := bl.State(ctx, slot)
			must(t, err)
			if rs[slot] != string(st) {
				t.Fatalf("after %s: slot %s is %q for rauc, %q for imgctl", s.what, slot, rs[slot], st)
			}
		}
		if testing.Verbose() {
			t.Logf("%-28s primary %s, %v", s.what, p, rs)
		}
	}
}
