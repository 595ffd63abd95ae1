package main

import (
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/partition"
)

type slotFixture struct {
	*fixture
	cfg, env, booted, slotA, slotB, state string
}

func newSlotFixture(t *testing.T) *slotFixture {
	t.Helper()
	if _, err := exec.LookPath("grub-editenv"); err != nil {
		t.Fatal("grub-editenv missing: .ci/run installs grub-common")
	}
	f := newFixture(t, 16<<20)
	s := &slotFixture{fixture: f, env: filepath.Join(f.dir, "grubenv"), booted: filepath.Join(f.dir, "booted"),
		slotA: filepath.Join(f.dir, "slotA"), slotB: filepath.Join(f.dir, "slotB"), state: filepath.Join(f.dir, "state"),
		cfg: filepath.Join(f.dir, "slots.toml")}
	// Factory state: slot A holds release 1 (installed without imgctl), B is empty.
	b, _ := os.ReadFile(f.img1)
	os.WriteFile(s.slotA, b, 0o644)
	os.WriteFile(s.slotB, nil, 0o644)
	os.WriteFile(s.booted, []byte("A\n"), 0o644)
	if err := s.grub().Init(context.Background(), "A"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(s.cfg, []byte(`state_dir = "`+s.state+`"
booted    = "file:`+s.booted+`"
max_tries = 3
[bootloader]
type = "grub"
env  = "`+s.env+`"
[slots.A]
device = "`+s.slotA+`"
[slots.B]
device = "`+s.slotB+`"
`), 0o644)
	return s
}

// grub is the fixture's boot environment as imgctl's GRUB backend sees it.
func (s *slotFixture) grub() *partition.Grub {
	return &partition.Grub{Env: s.env, Slots: []string{"A", "B"}, MaxTries: 3}
}

func (s *slotFixture) pullSlots(t *testing.T, url string, extra ...string) (map[string]any, result) {
	t.Helper()
	r := imgctl(t, nil, append([]string{"pull", "--from", url, "--trust", s.pub, "--name", "os", "--slots", s.cfg, "--json", "-q"}, extra...)...)
	if r.code != 0 {
		return nil, r
	}
	return decode[map[string]any](t, r.stdout), r
}

type statusJSON struct {
	Booted  string `json:"booted"`
	Primary string `json:"primary"`
	Slots   []struct {
		Slot      string `json:"slot"`
		State     string `json:"state"`
		TriesLeft int    `json:"tries_left"`
		Release   *struct {
			Revision uint64 `json:"revision"`
			Verified bool   `json:"verified"`
		} `json:"release"`
	} `json:"slots"`
}

func (s *slotFixture) status(t *testing.T) statusJSON {
	t.Helper()
	return decode[statusJSON](t, mustRun(t, "slot", "status", "--slots", s.cfg, "--json"))
}

func sum(t *testing.T, p string) [32]byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// The whole A/B cycle on file-backed slots and a real grubenv: pull into the
// inactive slot (running slot as seed, never written), flip, boot, confirm,
// next release into the other slot with the recorded manifest as seed,
// rollback, and the refusals that keep one slot bootable.
func TestSlotsEndToEnd(t *testing.T) {
	s := newSlotFixture(t)
	s.publish(t, s.img1)
	s.publish(t, s.img2)
	url := serve(t, s.store)
	before := sum(t, s.slotA)

	// 1. Running A (factory, no record): pull release 2 into B.
	res, r := s.pullSlots(t, url)
	if r.code != 0 {
		t.Fatalf("pull --slots: %d %s", r.code, r.stderr)
	}
	if res["slot"] != "B" || res["booted"] != "A" || res["bytes_from_seed"].(float64) == 0 {
		t.Fatalf("pull --slots: %v", res)
	}
	sameFile(t, s.slotB, s.img2)
	if sum(t, s.slotA) != before {
		t.Fatal("the running slot was modified")
	}
	st := s.status(t)
	if st.Primary != "B" || st.Booted != "A" || st.Slots[1].Release == nil || !st.Slots[1].Release.Verified || st.Slots[1].Release.Revision != 2 {
		t.Fatalf("status after pull: %+v", st)
	}

	// 2. Reboot into B: GRUB marks it on trial; it confirms itself.
	exec.Command("grub-editenv", s.env, "set", "B_TRY=1").Run()
	os.WriteFile(s.booted, []byte("B\n"), 0o644)
	if st := s.status(t); st.Primary != "A" || st.Slots[1].State != "bad" {
		t.Fatalf("B on trial before mark-good: %+v", st)
	}
	sumA := sum(t, s.slotA)
	if r := imgctl(t, nil, "pull", "--from", url, "--trust", s.pub, "--name", "os", "--slots", s.cfg, "-q"); r.code == 0 || !strings.Contains(r.stderr, "not confirmed good") {
		t.Fatalf("pull while the running slot is on trial: exit %d %s", r.code, r.stderr)
	}
	// The refusal comes before anything is written: A, the fallback, is
	// still good and unchanged.
	if st := s.status(t); st.Slots[0].Slot != "A" || st.Slots[0].State != "good" || sum(t, s.slotA) != sumA {
		t.Fatalf("the refused pull touched slot A: %+v", st)
	}
	mustRun(t, "slot", "mark-good", "--slots", s.cfg)
	if st := s.status(t); st.Primary != "B" || st.Slots[1].State != "good" {
		t.Fatalf("after mark-good: %+v", st)
	}

	// 3. Release 3 into A, with B and its recorded manifest as the seed.
	makeImage(t, filepath.Join(s.dir, "v3.img"), 16<<20, 3)
	s.publish(t, filepath.Join(s.dir, "v3.img"))
	beforeB := sum(t, s.slotB)
	res, r = s.pullSlots(t, url)
	if r.code != 0 || res["slot"] != "A" || res["bytes_from_seed"].(float64) < res["size"].(float64)/2 {
		t.Fatalf("second slot pull: %v %s", res, r.stderr)
	}
	sameFile(t, s.slotA, filepath.Join(s.dir, "v3.img"))
	if sum(t, s.slotB) != beforeB {
		t.Fatal("the running slot was modified")
	}
	if st := s.status(t); st.Primary != "A" {
		t.Fatalf("not flipped to A: %+v", st)
	}

	// 4. Rollback before rebooting: B is primary again.
	mustRun(t, "slot", "rollback", "--slots", s.cfg)
	if st := s.status(t); st.Primary != "B" {
		t.Fatalf("after rollback: %+v", st)
	}

	// 5. One slot always stays bootable.
	mustRun(t, "slot", "mark-bad", "A", "--slots", s.cfg)
	if r := imgctl(t, nil, "slot", "mark-bad", "B", "--slots", s.cfg); r.code == 0 {
		t.Fatal("marked the last good slot bad")
	}

	// 6. An unverified slot is not switched to without --force.
	rec := filepath.Join(s.state, "slot-A.json")
	b, _ := os.ReadFile(rec)
	os.WriteFile(rec, []byte(strings.Replace(string(b), `"verified": true`, `"verified": false`, 1)), 0o644)
	if r := imgctl(t, nil, "slot", "switch", "A", "--slots", s.cfg); r.code == 0 || !strings.Contains(r.stderr, "unverified") {
		t.Fatalf("switch to an unverified slot: exit %d %s", r.code, r.stderr)
	}
	mustRun(t, "slot", "switch", "A", "--force", "--slots", s.cfg)
	if st := s.status(t); st.Primary != "A" {
		t.Fatalf("after forced switch: %+v", st)
	}

	// 7. Usage: --out with --slots.
	if r := imgctl(t, nil, "pull", "--from", url, "--trust", s.pub, "--name", "os", "--slots", s.cfg, "--out", s.slotA); r.code != 2 {
		t.Fatalf("--out with --slots: exit %d", r.code)
	}
}

// --no-flip writes and verifies the inactive slot but leaves the primary;
// switch then flips. The same for every bootloader type: GRUB, U-Boot
// (fw_setenv) and a script (the shipped imgctl-bootslot on a U-Boot env).
func TestSlotsNoFlipEveryBootloader(t *testing.T) {
	for _, bl := range []string{"grub", "uboot", "script"} {
		t.Run(bl, func(t *testing.T) {
			s := newSlotFixture(t)
			if bl != "grub" {
				useUBoot(t, s, bl == "script")
			}
			s.publish(t, s.img2)
			if _, r := s.pullSlots(t, s.store, "--no-flip"); r.code != 0 {
				t.Fatalf("pull --no-flip: %s", r.stderr)
			}
			sameFile(t, s.slotB, s.img2)
			st := s.status(t)
			if st.Primary != "A" || st.Slots[1].State != "bad" || !st.Slots[1].Release.Verified {
				t.Fatalf("after --no-flip: %+v", st)
			}
			mustRun(t, "slot", "switch", "B", "--slots", s.cfg)
			if st := s.status(t); st.Primary != "B" || st.Slots[1].TriesLeft != 3 {
				t.Fatalf("switch after --no-flip: %+v", st)
			}
			mustRun(t, "slot", "rollback", "--slots", s.cfg)
			if st := s.status(t); st.Primary != "A" {
				t.Fatalf("rollback: %+v", st)
			}
		})
	}
}

// useUBoot switches a slot fixture to a U-Boot environment (mkenvimage),
// driven by fw_setenv directly or through the imgctl-bootslot script.
func useUBoot(t *testing.T, s *slotFixture, viaScript bool) {
	t.Helper()
	for _, tool := range []string{"mkenvimage", "fw_printenv", "fw_setenv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: .ci/run installs u-boot-tools and libubootenv-tool", tool)
		}
	}
	fwcfg, err := partition.InitUBootEnv(context.Background(), s.dir, []string{"A", "B"}, "A", 3, 0x4000)
	if err != nil {
		t.Fatal(err)
	}
	bl := "[bootloader]\ntype = \"uboot\"\nconfig = \"" + fwcfg + "\"\n"
	if viaScript {
		script, _ := filepath.Abs("../../partition/imgctl-bootslot")
		conf := filepath.Join(s.dir, "bootslot.conf")
		os.WriteFile(conf, []byte("IMGCTL_BOOTLOADER=uboot\nIMGCTL_FW_CONFIG="+fwcfg+"\nIMGCTL_SLOTS=\"A B\"\nIMGCTL_MAX_TRIES=3\n"), 0o644)
		t.Setenv("IMGCTL_BOOTSLOT_CONF", conf)
		bl = "[bootloader]\ntype = \"script\"\npath = \"" + script + "\"\n"
	}
	cfg, _ := os.ReadFile(s.cfg)
	c := string(cfg)
	i := strings.Index(c, "[bootloader]")
	j := strings.Index(c, "[slots.A]")
	os.WriteFile(s.cfg, []byte(c[:i]+bl+c[j:]), 0o644)
}

// Slots on real block devices (loop devices backed by files): the inactive
// device is written (zero extents by BLKZEROOUT), verified and flipped to;
// the running device is not written; old content in the target is
// overwritten, zeros included.
func TestSlotsOnBlockDevices(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices (CI runs as root)")
	}
	s := newSlotFixture(t)
	s.publish(t, s.img2)
	loop := func(backing string) string {
		out, err := exec.Command("losetup", "-f", "--show", backing).Output()
		if err != nil {
			t.Fatalf("losetup: %v", err)
		}
		dev := strings.TrimSpace(string(out))
		t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
		return dev
	}
	// B's backing file holds junk everywhere, so every zero extent must be
	// written as zeros.
	junk := make([]byte, 16<<20)
	for i := range junk {
		junk[i] = byte(i*7 + 1)
	}
	os.WriteFile(s.slotB, junk, 0o644)
	devA, devB := loop(s.slotA), loop(s.slotB)
	cfg, _ := os.ReadFile(s.cfg)
	c := strings.Replace(string(cfg), `device = "`+s.slotA+`"`, `device = "`+devA+`"`, 1)
	c = strings.Replace(c, `device = "`+s.slotB+`"`, `device = "`+devB+`"`, 1)
	os.WriteFile(s.cfg, []byte(c), 0o644)
	before := sum(t, devA)
	res, r := s.pullSlots(t, s.store)
	if r.code != 0 {
		t.Fatalf("pull onto block devices: %s", r.stderr)
	}
	if res["slot"] != "B" {
		t.Fatalf("pull: %v", res)
	}
	if sum(t, devB) != sum(t, s.img2) {
		t.Fatal("slot B device does not hold the release")
	}
	if sum(t, devA) != before {
		t.Fatal("the running slot's device was written")
	}
	if st := s.status(t); st.Primary != "B" {
		t.Fatalf("not flipped: %+v", st)
	}
}
