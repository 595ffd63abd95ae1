package main

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// grubPrimary reads the primary slot as GRUB (and RAUC) decide it, through
// imgctl's GRUB backend.
func grubPrimary(t *testing.T, s *slotFixture) string {
	p, err := s.grub().Primary(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// kill -9 at random points of pull+write+flip: after every kill the system
// boots the old slot or a fully verified new one, the running slot is
// untouched, and the same pull run again completes. Bounded: at most 60
// kills or 100 s.
func TestSlotsKillAnywhere(t *testing.T) {
	s := newSlotFixture(t)
	s.publish(t, s.img2)
	want := sum(t, s.img2)
	running := sum(t, s.slotA)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("kill points drawn with seed %d", seed)

	reset := func() {
		os.WriteFile(s.slotB, nil, 0o644)
		os.RemoveAll(s.state)
		if err := s.grub().Init(context.Background(), "A"); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"pull", "--from", s.store, "--trust", s.pub, "--name", "os", "--slots", s.cfg, "-q", "--json"}
	// How long an undisturbed pull takes, to spread the kills over it.
	reset()
	t0 := time.Now()
	mustRun(t, args...)
	full := time.Since(t0)

	deadline := time.Now().Add(100 * time.Second)
	kills, newPrimary, resumed := 0, 0, 0
	for kills < 60 && time.Now().Before(deadline) {
		reset()
		cmd := exec.Command(imgctlBin, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Int64N(int64(full)*11/10 + 1))) // a little past the end: the flip window too
		cmd.Process.Kill()
		cmd.Wait()
		kills++

		// Invariants right after the kill.
		if sum(t, s.slotA) != running {
			t.Fatalf("kill %d: the running slot changed", kills)
		}
		switch p := grubPrimary(t, s); p {
		case "A":
		case "B":
			newPrimary++
			rec, err := os.ReadFile(filepath.Join(s.state, "slot-B.json"))
			if err != nil || !strings.Contains(string(rec), `"verified": true`) {
				t.Fatalf("kill %d: primary B is not recorded as verified (%v)", kills, err)
			}
			if sum(t, s.slotB) != want {
				t.Fatalf("kill %d: primary B does not hold the release", kills)
			}
		default:
			t.Fatalf("kill %d: no bootable slot (primary %q)", kills, p)
		}

		// What the killed pull had already kept in its cache.
		cached := 0
		if fr := imgctl(t, nil, "fsck", "--store", filepath.Join(s.state, "cache"), "--json", "-q"); fr.code == 0 {
			var fj struct {
				Chunks int `json:"chunks"`
			}
			json.Unmarshal([]byte(fr.stdout), &fj)
			cached = fj.Chunks
		}

		// The same pull again finishes the job, fetching none of that.
		r := imgctl(t, nil, args...)
		if r.code != 0 {
			t.Fatalf("kill %d: rerun failed: %s", kills, r.stderr)
		}
		var res struct {
			ChunksFetched int `json:"chunks_fetched"`
			Chunks        int `json:"chunks"`
		}
		json.Unmarshal([]byte(r.stdout), &res)
		if res.ChunksFetched > res.Chunks-cached {
			t.Fatalf("kill %d: rerun fetched %d chunks, but %d of %d were in the cache", kills, res.ChunksFetched, cached, res.Chunks)
		}
		if cached > 0 {
			resumed++
		}
		if sum(t, s.slotB) != want || grubPrimary(t, s) != "B" {
			t.Fatalf("kill %d: rerun did not leave B verified and primary", kills)
		}
	}
	if kills < 50 {
		t.Fatalf("only %d kills within the time bound", kills)
	}
	t.Logf("%d kills: %d left B primary and verified; %d reruns resumed from chunks the killed pull had kept", kills, newPrimary, resumed)
	if resumed == 0 {
		t.Fatal("no kill happened after chunks were kept: the kill points do not cover the pull")
	}
}

// A full state directory: the pull fails clearly before the slot is
// touched, the system still boots the running slot, and with room the same
// pull completes.
func TestSlotsFullStateDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (CI runs as root)")
	}
	s := newSlotFixture(t)
	s.publish(t, s.img2)
	small := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", small).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", small).Run() })
	os.WriteFile(filepath.Join(small, "filler"), make([]byte, 60<<10), 0o644)
	cfg, _ := os.ReadFile(s.cfg)
	os.WriteFile(s.cfg, []byte(strings.Replace(string(cfg), s.state, filepath.Join(small, "state"), 1)), 0o644)
	r := imgctl(t, nil, "pull", "--from", s.store, "--trust", s.pub, "--name", "os", "--slots", s.cfg, "-q")
	if r.code == 0 || !strings.Contains(r.stderr, "no space left") {
		t.Fatalf("pull with a full state dir: exit %d %s", r.code, r.stderr)
	}
	if p := grubPrimary(t, s); p != "A" {
		t.Fatalf("primary %q after the failed pull", p)
	}
	os.Remove(filepath.Join(small, "filler"))
	exec.Command("umount", small).Run()
	os.WriteFile(s.cfg, cfg, 0o644)
	if r := imgctl(t, nil, "pull", "--from", s.store, "--trust", s.pub, "--name", "os", "--slots", s.cfg, "-q"); r.code != 0 {
		t.Fatalf("pull with room: %s", r.stderr)
	}
	sameFile(t, s.slotB, s.img2)
}
