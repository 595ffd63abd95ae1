package partition

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// bootSim is a simulated bootloader: Boot applies the boot-side rules of
// docs/boot.md to the environment and returns the slot it boots ("" if it
// would boot none).
type bootSim interface {
	Boot(t *testing.T) string
}

// grubSim follows the GRUB script of docs/boot.md.
type grubSim struct{ g *Grub }

var stripX = regexp.MustCompile(`^x(.*)$`) // what GRUB's regexp --set=1:LEFT does

func (s grubSim) Boot(t *testing.T) string {
	ctx := context.Background()
	env, err := s.g.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	order := strings.Fields(env["ORDER"])
	for _, slot := range order {
		ok, try, left := env[slot+"_OK"], env[slot+"_TRY"], env[slot+"_LEFT"]
		if ok == "1" && try == "0" {
			must(t, s.g.set(ctx, map[string]string{slot + "_TRY": "1"}))
			return slot
		}
		if ok == "1" && left != "" {
			m := stripX.FindStringSubmatch(left)
			must(t, s.g.set(ctx, map[string]string{slot + "_LEFT": m[1]}))
			return slot
		}
	}
	// No slot left: every OK slot gets one more try rather than no boot.
	kv := map[string]string{}
	first := ""
	for _, slot := range order {
		if env[slot+"_OK"] == "1" {
			kv[slot+"_TRY"] = "0"
			if first == "" {
				first = slot
			}
		}
	}
	if first == "" {
		return ""
	}
	kv[first+"_TRY"] = "1"
	must(t, s.g.set(ctx, kv))
	return first
}

// ubootSim follows the U-Boot boot script of docs/boot.md (RAUC's).
type ubootSim struct{ u *UBoot }

func (s ubootSim) Boot(t *testing.T) string {
	ctx := context.Background()
	env, err := s.u.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, slot := range strings.Fields(env["BOOT_ORDER"]) {
		if left := leftOf(env, slot); left > 0 {
			must(t, s.u.set(ctx, map[string]string{"BOOT_" + slot + "_LEFT": strconv.FormatUint(uint64(left-1), 16)}))
			return slot
		}
	}
	// No valid slot: reset the tries of every slot in BOOT_ORDER, boot the first.
	kv := map[string]string{}
	order := strings.Fields(env["BOOT_ORDER"])
	if len(order) == 0 {
		return ""
	}
	for _, slot := range order {
		kv["BOOT_"+slot+"_LEFT"] = strconv.FormatUint(uint64(s.u.tries()), 16)
	}
	kv["BOOT_"+order[0]+"_LEFT"] = strconv.FormatUint(uint64(s.u.tries()-1), 16)
	must(t, s.u.set(ctx, kv))
	return order[0]
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func needTool(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: .ci/run installs grub-common, u-boot-tools and libubootenv-tool", tool)
		}
	}
}

type backend struct {
	name string
	bl   Bootloader
	sim  bootSim
}

func backends(t *testing.T, tries int) []backend {
	needTool(t, "grub-editenv", "fw_printenv", "fw_setenv", "mkenvimage")
	ctx := context.Background()
	slots := []string{"A", "B"}
	g := &Grub{Env: filepath.Join(t.TempDir(), "grubenv"), Slots: slots, MaxTries: tries}
	must(t, g.Init(ctx, "A"))
	cfg, err := InitUBootEnv(ctx, t.TempDir(), slots, "A", tries, 0x4000)
	must(t, err)
	u := &UBoot{Config: cfg, Slots: slots, MaxTries: tries}
	bs := []backend{{"grub", g, grubSim{g}}, {"uboot", u, ubootSim{u}}}
	// The POSIX switch script drives its own copies of both environments;
	// the same simulators boot them, so the script must have the same
	// semantics as the Go backends.
	script, err := filepath.Abs("imgctl-bootslot")
	must(t, err)
	g2 := &Grub{Env: filepath.Join(t.TempDir(), "grubenv"), Slots: slots, MaxTries: tries}
	must(t, g2.Init(ctx, "A"))
	cfg2, err := InitUBootEnv(ctx, t.TempDir(), slots, "A", tries, 0x4000)
	must(t, err)
	u2 := &UBoot{Config: cfg2, Slots: slots, MaxTries: tries}
	common := []string{"IMGCTL_BOOTSLOT_CONF=/nonexistent", "IMGCTL_SLOTS=A B", "IMGCTL_MAX_TRIES=" + strconv.Itoa(tries)}
	bs = append(bs,
		backend{"script-grub", &Script{Path: script, Slots: slots, Env: append(common, "IMGCTL_BOOTLOADER=grub", "IMGCTL_GRUBENV="+g2.Env)}, grubSim{g2}},
		backend{"script-uboot", &Script{Path: script, Slots: slots, Env: append(common, "IMGCTL_BOOTLOADER=uboot", "IMGCTL_FW_CONFIG="+cfg2)}, ubootSim{u2}})
	return bs
}

// boots simulates n boots; healthy(slot) decides whether the booted system
// confirms itself (the mark-good unit runs and succeeds).
func boots(t *testing.T, b backend, n int, healthy func(string) bool) []string {
	var seq []string
	for i := 0; i < n; i++ {
		slot := b.sim.Boot(t)
		if slot == "" {
			t.Fatalf("%s: boot %d found no slot to boot (sequence %v)", b.name, i, seq)
		}
		seq = append(seq, slot)
		if healthy(slot) {
			must(t, b.bl.SetState(context.Background(), slot, Good))
		}
	}
	return seq
}

func count(seq []string, slot string) int {
	n := 0
	for _, s := range seq {
		if s == slot {
			n++
		}
	}
	return n
}

// A new slot that never confirms itself is tried exactly MaxTries times,
// then the old good slot boots and the failed one is never tried again.
func TestBootFallbackAfterMaxTries(t *testing.T) {
	ctx := context.Background()
	for _, tries := range []int{1, 3} {
		for _, b := range backends(t, tries) {
			must(t, b.bl.SetPrimary(ctx, "B"))
			if p, _ := b.bl.Primary(ctx); p != "B" {
				t.Fatalf("%s: primary %q after SetPrimary(B)", b.name, p)
			}
			seq := boots(t, b, 20, func(s string) bool { return s == "A" })
			want := strings.Repeat("B", tries) + strings.Repeat("A", 20-tries)
			if got := strings.Join(seq, ""); got != want {
				t.Fatalf("%s tries=%d: boots %s, want %s", b.name, tries, got, want)
			}
			if st, _ := b.bl.State(ctx, "B"); st != Bad {
				t.Fatalf("%s: failed slot B is %s", b.name, st)
			}
			if st, _ := b.bl.State(ctx, "A"); st != Good {
				t.Fatalf("%s: fallback slot A is %s", b.name, st)
			}
			if p, _ := b.bl.Primary(ctx); p != "A" {
				t.Fatalf("%s: primary %q after fallback", b.name, p)
			}
			if n, _ := b.bl.TriesLeft(ctx, "B"); n != 0 {
				t.Fatalf("%s: failed slot has %d tries left", b.name, n)
			}
		}
	}
}

// A new slot that confirms itself keeps booting: mark-good stops the
// counting, and the old slot stays good for a later rollback.
func TestBootMarkGoodStopsCounting(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends(t, 3) {
		must(t, b.bl.SetPrimary(ctx, "B"))
		seq := boots(t, b, 15, func(string) bool { return true })
		if count(seq, "B") != 15 {
			t.Fatalf("%s: boots %v, want B every time", b.name, seq)
		}
		for _, s := range []string{"A", "B"} {
			if st, _ := b.bl.State(ctx, s); st != Good {
				t.Fatalf("%s: slot %s is %s", b.name, s, st)
			}
		}
		// Rollback: make A primary again; it boots.
		must(t, b.bl.SetPrimary(ctx, "A"))
		if seq := boots(t, b, 3, func(string) bool { return true }); count(seq, "A") != 3 {
			t.Fatalf("%s: after rollback boots %v", b.name, seq)
		}
	}
}

// Even if neither slot ever confirms itself, the bootloader always boots
// something, and a failed new slot is not retried before the old one.
func TestBootNeverNoSlot(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends(t, 2) {
		must(t, b.bl.SetPrimary(ctx, "B"))
		seq := boots(t, b, 30, func(string) bool { return false })
		if seq[0] != "B" || seq[1] != "B" || seq[2] != "A" {
			t.Fatalf("%s: boots %v: want B twice, then A", b.name, seq)
		}
	}
}

// mark-bad takes a slot out; the other slot boots.
func TestBootMarkBad(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends(t, 3) {
		must(t, b.bl.SetPrimary(ctx, "B"))
		boots(t, b, 1, func(string) bool { return true })
		must(t, b.bl.SetState(ctx, "B", Bad))
		if p, _ := b.bl.Primary(ctx); p != "A" {
			t.Fatalf("%s: primary %q after marking B bad", b.name, p)
		}
		if seq := boots(t, b, 5, func(string) bool { return true }); count(seq, "A") != 5 {
			t.Fatalf("%s: boots %v after mark-bad", b.name, seq)
		}
		if err := b.bl.SetPrimary(ctx, "C"); err == nil {
			t.Fatalf("%s: unknown slot accepted", b.name)
		}
	}
}

// The environment written by the backends is the real tools' format: the
// U-Boot LEFT counters are hex as RAUC writes them, GRUB's file stays 1 KiB.
func TestEnvFormats(t *testing.T) {
	ctx := context.Background()
	bs := backends(t, 12)
	g, u := bs[0].bl.(*Grub), bs[1].bl.(*UBoot)
	must(t, g.SetPrimary(ctx, "B"))
	must(t, u.SetPrimary(ctx, "B"))
	out, err := exec.Command("fw_printenv", "-c", u.Config, "-n", "BOOT_B_LEFT").Output()
	if err != nil || strings.TrimSpace(string(out)) != "c" {
		t.Fatalf("BOOT_B_LEFT = %q (%v), want hex c", out, err)
	}
	out, _ = exec.Command("fw_printenv", "-c", u.Config, "-n", "BOOT_ORDER").Output()
	if strings.TrimSpace(string(out)) != "B A" {
		t.Fatalf("BOOT_ORDER = %q", out)
	}
	out, _ = exec.Command("grub-editenv", g.Env, "list").Output()
	for _, want := range []string{"ORDER=B A", "B_OK=1", "B_TRY=0", "B_LEFT=xxxxxxxxxxx"} {
		if !strings.Contains(string(out), want+"\n") {
			t.Fatalf("grubenv lacks %s:\n%s", want, out)
		}
	}
	if st, err := fileSize(g.Env); err != nil || st != 1024 {
		t.Fatalf("grubenv is %d bytes, want 1024 (%v)", st, err)
	}
	if _, err := (&Grub{Env: filepath.Join(t.TempDir(), "missing"), Slots: []string{"A"}}).Primary(ctx); err == nil {
		t.Fatal("missing grubenv accepted (grub-editenv list would have created it)")
	}
}

// The recovery verbs of the switch script: status, switch, mark-good of the
// booted slot, rollback, and refusing to mark the last good slot bad.
func TestBootslotScriptVerbs(t *testing.T) {
	needTool(t, "grub-editenv", "fw_printenv", "fw_setenv", "mkenvimage")
	ctx := context.Background()
	script, _ := filepath.Abs("imgctl-bootslot")
	for _, bl := range []string{"grub", "uboot"} {
		dir := t.TempDir()
		env := []string{"IMGCTL_BOOTSLOT_CONF=/nonexistent", "IMGCTL_BOOTLOADER=" + bl, "IMGCTL_BOOTED=" + filepath.Join(dir, "booted")}
		if bl == "grub" {
			g := &Grub{Env: filepath.Join(dir, "grubenv"), Slots: []string{"A", "B"}}
			must(t, g.Init(ctx, "A"))
			env = append(env, "IMGCTL_GRUBENV="+g.Env)
		} else {
			cfg, err := InitUBootEnv(ctx, dir, []string{"A", "B"}, "A", 3, 0x4000)
			must(t, err)
			env = append(env, "IMGCTL_FW_CONFIG="+cfg)
		}
		sh := func(args ...string) (string, error) { return runEnv(ctx, env, script, args...) }
		must(t, writeFile(filepath.Join(dir, "booted"), "A\n"))
		if _, err := sh("mark-bad"); err == nil {
			t.Fatalf("%s: the last good slot was marked bad", bl)
		}
		out, err := sh("switch", "B")
		must(t, err)
		if p, _ := sh("get-primary"); strings.TrimSpace(p) != "B" {
			t.Fatalf("%s: after switch: %q %q", bl, out, p)
		}
		// B boots and confirms itself.
		must(t, writeFile(filepath.Join(dir, "booted"), "B\n"))
		if _, err := sh("mark-good"); err != nil {
			t.Fatal(err)
		}
		st, err := sh("status")
		must(t, err)
		for _, want := range []string{"primary: B", "booted: B", "slot A: good", "slot B: good"} {
			if !strings.Contains(st, want) {
				t.Fatalf("%s: status lacks %q:\n%s", bl, want, st)
			}
		}
		if _, err := sh("rollback"); err != nil {
			t.Fatal(err)
		}
		if p, _ := sh("get-primary"); strings.TrimSpace(p) != "A" {
			t.Fatalf("%s: rollback left primary %q", bl, p)
		}
		if _, err := sh("switch", "C"); err == nil {
			t.Fatalf("%s: unknown slot accepted", bl)
		}
	}
}

// The shipped boot scripts are what docs/boot.md describes and the
// simulators apply: GRUB's parses (grub-script-check), U-Boot's packs into a
// boot.scr (mkimage), and both use the variables the backends write.
func TestShippedBootScripts(t *testing.T) {
	needTool(t, "grub-script-check", "mkimage")
	if out, err := exec.Command("grub-script-check", "boot/grub.cfg").CombinedOutput(); err != nil {
		t.Fatalf("grub-script-check: %v %s", err, out)
	}
	broken := filepath.Join(t.TempDir(), "broken.cfg")
	must(t, writeFile(broken, "if [ x ]; then\n"))
	if err := exec.Command("grub-script-check", broken).Run(); err == nil {
		t.Fatal("grub-script-check accepted a broken script: it checks nothing")
	}
	if out, err := exec.Command("mkimage", "-A", "arm64", "-T", "script", "-C", "none", "-d", "boot/boot.cmd",
		filepath.Join(t.TempDir(), "boot.scr")).CombinedOutput(); err != nil {
		t.Fatalf("mkimage: %v %s", err, out)
	}
	g, _ := os.ReadFile("boot/grub.cfg")
	for _, v := range []string{"ORDER", "A_OK", "A_TRY", "A_LEFT", "B_OK", "B_TRY", "B_LEFT", "save_env", "imgctl.slot="} {
		if !strings.Contains(string(g), v) {
			t.Errorf("grub.cfg does not use %s", v)
		}
	}
	u, _ := os.ReadFile("boot/boot.cmd")
	for _, v := range []string{"BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT", "saveenv", "imgctl.slot="} {
		if !strings.Contains(string(u), v) {
			t.Errorf("boot.cmd does not use %s", v)
		}
	}
}

// grub-editenv rewrites its file in place. One that dies after truncating
// it (a kill -9 or a power cut mid-write) must leave the old block intact:
// the backend and the switch script edit a copy and rename it over the
// file. Without that, GRUB would find no valid block and boot with no
// variables at all.
func TestGrubSetSurvivesDyingEditor(t *testing.T) {
	needTool(t, "grub-editenv")
	ctx := context.Background()
	dir := t.TempDir()
	g := &Grub{Env: filepath.Join(dir, "grubenv"), Slots: []string{"A", "B"}}
	must(t, g.Init(ctx, "A"))
	before, err := os.ReadFile(g.Env)
	must(t, err)
	// An editor whose "set" truncates the file it is given, then dies
	// ("list" is the real one's).
	real, err := exec.LookPath("grub-editenv")
	must(t, err)
	bin := filepath.Join(dir, "bin")
	must(t, os.MkdirAll(bin, 0o755))
	dying := filepath.Join(bin, "grub-editenv")
	must(t, os.WriteFile(dying, []byte("#!/bin/sh\nif [ \"$2\" = set ]; then : > \"$1\"; kill -9 $$; fi\nexec "+real+" \"$@\"\n"), 0o755))
	bad := &Grub{Env: g.Env, Slots: g.Slots, Tool: dying}
	if err := bad.SetPrimary(ctx, "B"); err == nil {
		t.Fatal("a dying grub-editenv reported success")
	}
	after, err := os.ReadFile(g.Env)
	must(t, err)
	if string(after) != string(before) {
		t.Fatal("the environment block changed")
	}
	if p, err := g.Primary(ctx); err != nil || p != "A" {
		t.Fatalf("after the dying editor: primary %q, %v", p, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".grubenv-imgctl-*"))
	if len(left) != 0 {
		t.Fatalf("temporary copies left: %v", left)
	}
	// A killed run's copy goes at the next write once it is old; a
	// recent one may still be some editor's.
	oldCopy, newCopy := filepath.Join(dir, ".grubenv-imgctl-1"), filepath.Join(dir, ".grubenv-imgctl-2")
	must(t, os.WriteFile(oldCopy, before, 0o644))
	must(t, os.WriteFile(newCopy, before, 0o644))
	must(t, os.Chtimes(oldCopy, time.Now().Add(-time.Hour), time.Now().Add(-time.Hour)))
	must(t, g.SetPrimary(ctx, "A"))
	if _, err := os.Stat(oldCopy); err == nil {
		t.Error("an hour-old copy was left")
	}
	if _, err := os.Stat(newCopy); err != nil {
		t.Error("a fresh copy was removed")
	}
	os.Remove(newCopy)
	before, err = os.ReadFile(g.Env)
	must(t, err)

	// The switch script, with the dying editor first in PATH.
	script, _ := filepath.Abs("imgctl-bootslot")
	must(t, writeFile(filepath.Join(dir, "booted"), "A\n"))
	env := []string{"PATH=" + bin + ":" + os.Getenv("PATH"), "IMGCTL_BOOTSLOT_CONF=/nonexistent", "IMGCTL_BOOTLOADER=grub",
		"IMGCTL_BOOTED=" + filepath.Join(dir, "booted"), "IMGCTL_GRUBENV=" + g.Env}
	if _, err := runEnv(ctx, env, script, "switch", "B"); err == nil {
		t.Fatal("the script reported success with a dying grub-editenv")
	}
	after, err = os.ReadFile(g.Env)
	must(t, err)
	if string(after) != string(before) {
		t.Fatal("the script's dying editor changed the environment block")
	}
}

// With a redundant U-Boot environment, a flip whose write is cut short
// (the copy being written torn) leaves the previous state readable, and
// imgctl's backend reads and writes both copies through the real tools.
func TestUBootRedundantEnvSurvivesTornWrite(t *testing.T) {
	needTool(t, "fw_printenv", "fw_setenv", "mkenvimage")
	ctx := context.Background()
	dir := t.TempDir()
	cfg, err := InitUBootEnvRedundant(ctx, dir, []string{"A", "B"}, "A", 3, 0x4000)
	must(t, err)
	u := &UBoot{Config: cfg, Slots: []string{"A", "B"}, MaxTries: 3}
	if p, err := u.Primary(ctx); err != nil || p != "A" {
		t.Fatalf("fresh env: primary %q, %v", p, err)
	}
	// Which file a write goes to: the one whose content changes.
	files := []string{filepath.Join(dir, "uboot.env"), filepath.Join(dir, "uboot.env.redund")}
	read := func() [2]string {
		var b [2]string
		for i, f := range files {
			c, err := os.ReadFile(f)
			must(t, err)
			b[i] = string(c)
		}
		return b
	}
	before := read()
	must(t, u.SetPrimary(ctx, "B"))
	after := read()
	written := -1
	for i := range files {
		if before[i] != after[i] {
			if written >= 0 {
				t.Fatal("one flip wrote both copies")
			}
			written = i
		}
	}
	if written < 0 {
		t.Fatal("the flip wrote neither copy")
	}
	if p, _ := u.Primary(ctx); p != "B" {
		t.Fatalf("after the flip: primary %q", p)
	}
	// Tear the copy the flip wrote, as a power cut in the middle of that
	// write would: the other copy, the state before the flip, is read.
	torn := []byte(after[written])
	copy(torn[100:], bytes.Repeat([]byte{0xA5}, 200))
	must(t, os.WriteFile(files[written], torn, 0o644))
	if p, err := u.Primary(ctx); err != nil || p != "A" {
		t.Fatalf("after a torn flip: primary %q, %v; want the previous state, A", p, err)
	}
}
