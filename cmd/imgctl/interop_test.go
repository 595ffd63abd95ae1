package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/transport"
)

// freePort returns a TCP port free on ip right now.
func freePort(t *testing.T, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp4", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startProc starts a foreign program and stops it by PID when the test
// ends (SIGTERM, then SIGKILL).
func startProc(t *testing.T, logFile string, name string, args ...string) *exec.Cmd {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (scripts/deps.sh installs it): %v", name, err)
	}
	cmd := exec.Command(path, args...)
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopProcess(cmd, os.Interrupt, 5*time.Second)
		lf.Close()
	})
	return cmd
}

// opentracker starts Debian's opentracker on 127.0.0.1 with infohashes
// whitelisted (its Debian build serves nothing else) and returns its
// announce URL.
func opentracker(t *testing.T, infohashes ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "whitelist.txt"), []byte(strings.Join(infohashes, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// It chroots into -d: the whitelist path is inside it.
	os.WriteFile(filepath.Join(dir, "ot.conf"), []byte("access.whitelist /whitelist.txt\n"), 0o644)
	port := freePort(t, "127.0.0.1")
	p := strconv.Itoa(port)
	startProc(t, filepath.Join(t.TempDir(), "opentracker.log"), "opentracker", "-f", filepath.Join(dir, "ot.conf"),
		"-i", "127.0.0.1", "-p", p, "-P", p, "-d", dir)
	url := "http://127.0.0.1:" + p + "/announce"
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp4", "127.0.0.1:"+p); err == nil {
			c.Close()
			return url
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("opentracker did not start")
	return ""
}

// An imgctl origin and terminals find each other through Debian's
// opentracker (the origin's --announce, which the .torrent carries to the
// terminals): the second terminal gets chunks from the first.
func TestOpentrackerInterop(t *testing.T) {
	f := newFixture(t, 6<<20)
	p := f.publish(t, f.img1)
	ih := p["infohash"].(string)
	tracker := opentracker(t, ih)
	url := serve(t, f.store, "--seed-torrents", "--announce", tracker, "--upload-limit", "1MB/s")
	pull := func(n int, extra ...string) map[string]any {
		args := append([]string{"pull", "-q", "--json", "--from", url, "--trust", f.pub, "--name", "os",
			"--cache", filepath.Join(f.dir, fmt.Sprintf("c%d", n)), "--out", filepath.Join(f.dir, fmt.Sprintf("t%d.img", n)),
			"--p2p", "--listen", fmt.Sprintf("127.0.0.%d:0", 60+n), "--p2p-stall", "30s"}, extra...)
		r := imgctl(t, nil, args...)
		if r.code != 0 {
			t.Fatalf("terminal %d: exit %d\n%s", n, r.code, r.stderr)
		}
		sameFile(t, filepath.Join(f.dir, fmt.Sprintf("t%d.img", n)), f.img1)
		return decode[map[string]any](t, r.stdout)
	}
	// Terminal 1 seeds afterwards; terminal 2 starts while it does.
	done := make(chan map[string]any, 1)
	go func() { done <- pull(1, "--seed-for", "8s") }()
	time.Sleep(4 * time.Second)
	r2 := pull(2)
	if r2["bytes_from_peers"].(float64) == 0 || r2["bytes_from_webseeds"].(float64) != 0 {
		t.Fatalf("terminal 2 through opentracker: %v", r2)
	}
	r1 := <-done
	t.Logf("terminal 1: %v from peers; terminal 2: %v from peers", r1["bytes_from_peers"], r2["bytes_from_peers"])
}

// transmissionDaemon starts Debian's transmission-daemon on ip with
// discovery off and returns its RPC address and peer address.
func transmissionDaemon(t *testing.T, ip, downloads string) (rpc, peer string) {
	t.Helper()
	cfg := t.TempDir()
	peerPort, rpcPort := freePort(t, ip), freePort(t, "127.0.0.1")
	settings := map[string]any{
		"bind-address-ipv4": ip, "peer-port": peerPort, "rpc-bind-address": "127.0.0.1", "rpc-port": rpcPort,
		"rpc-authentication-required": false, "rpc-whitelist-enabled": false, "rpc-host-whitelist-enabled": false,
		"dht-enabled": false, "lpd-enabled": false, "utp-enabled": false, "pex-enabled": false,
		"port-forwarding-enabled": false, "download-dir": downloads, "incomplete-dir-enabled": false,
		"ratio-limit-enabled": false, "idle-seeding-limit-enabled": false, "peer-port-random-on-start": false,
		"start-added-torrents": true, "message-level": 2,
	}
	b, _ := json.Marshal(settings)
	os.WriteFile(filepath.Join(cfg, "settings.json"), b, 0o644)
	startProc(t, filepath.Join(t.TempDir(), "transmission.log"), "transmission-daemon", "-f", "-g", cfg)
	rpc = "127.0.0.1:" + strconv.Itoa(rpcPort)
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp4", rpc); err == nil {
			c.Close()
			return rpc, ip + ":" + strconv.Itoa(peerPort)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("transmission-daemon did not start")
	return "", ""
}

// Debian's transmission-daemon downloads a release from an imgctl seeder
// over BitTorrent (no tracker, no webseed: the seeder dials it), and the
// files it writes are the manifest and the stored chunks byte for byte.
// Then an imgctl terminal downloads the release with transmission as its
// only peer, past the 16,744,448 bytes where anacrolix used to stall
// against it.
func TestTransmissionInterop(t *testing.T) {
	f := newFixture(t, 24<<20)
	updateImage(t, f.img1, f.img1, 0, 20<<20, 5) // > 16.7 MB of incompressible chunks
	p := f.publish(t, f.img1)
	url := serve(t, f.store) // HTTP only: the swarm is imgctl terminal 1 and transmission
	downloads := t.TempDir()
	rpc, trPeer := transmissionDaemon(t, "127.0.0.70", downloads)

	// The .torrent as published, without trackers or webseeds.
	info, err := os.ReadFile(filepath.Join(f.store, "manifests", "os", "stable", "1.torrent-info"))
	if err != nil {
		t.Fatal(err)
	}
	tf := filepath.Join(f.dir, "os.torrent")
	os.WriteFile(tf, transport.MetaInfo(info, nil, nil), 0o644)
	if out, err := exec.Command("transmission-remote", rpc, "-a", tf).CombinedOutput(); err != nil {
		t.Fatalf("transmission-remote -a: %v %s", err, out)
	}
	// Terminal 1 pulls over HTTP (no peers yet), then seeds and dials
	// transmission.
	t1 := exec.Command(imgctlBin, "pull", "-q", "--from", url, "--trust", f.pub, "--name", "os",
		"--cache", filepath.Join(f.dir, "c1"), "--out", filepath.Join(f.dir, "t1.img"), "--p2p", "--p2p-stall", "1s",
		"--listen", "127.0.0.71:0", "--peer", trPeer, "--seed-for", "90s")
	if err := t1.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { t1.Process.Kill(); t1.Wait() }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, _ := exec.Command("transmission-remote", rpc, "-t", "1", "-i").CombinedOutput()
		if bytes.Contains(out, []byte("Percent Done: 100%")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("transmission did not complete the download:\n%s", out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// What transmission wrote is the torrent's content.
	root := filepath.Join(downloads, "os-stable-1")
	env, _ := os.ReadFile(filepath.Join(f.store, "manifests", "os", "stable", "1.torrent-manifest"))
	got, err := os.ReadFile(filepath.Join(root, "manifest.imgm"))
	if err != nil || !bytes.Equal(got, env) {
		t.Fatalf("transmission's manifest.imgm differs (%v)", err)
	}
	ents, _ := os.ReadDir(root)
	checked := 0
	for _, e := range ents {
		if _, err := hex.DecodeString(e.Name()); err != nil || len(e.Name()) != 64 {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(root, e.Name()))
		resp, err := http.Get(url + "/v1/chunks/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		want.ReadFrom(resp.Body)
		resp.Body.Close()
		if !bytes.Equal(b, want.Bytes()) {
			t.Fatalf("transmission's %s differs from the stored chunk", e.Name())
		}
		checked++
	}
	if checked != int(p["chunks"].(float64)) {
		t.Fatalf("transmission wrote %d chunk files, the release has %v", checked, p["chunks"])
	}
	t1.Process.Kill()
	t1.Wait()

	// Terminal 2: transmission is its only peer, and HTTP fallback is far
	// away (--p2p-stall 60s): every byte must come from transmission.
	r := imgctl(t, nil, "pull", "-q", "--json", "--from", url, "--trust", f.pub, "--name", "os",
		"--cache", filepath.Join(f.dir, "c2"), "--out", filepath.Join(f.dir, "t2.img"), "--p2p", "--p2p-stall", "60s",
		"--listen", "127.0.0.72:0", "--peer", trPeer)
	if r.code != 0 {
		t.Fatalf("pull from transmission: exit %d\n%s", r.code, r.stderr)
	}
	sameFile(t, filepath.Join(f.dir, "t2.img"), f.img1)
	res := decode[map[string]any](t, r.stdout)
	if res["bytes_from_webseeds"].(float64) != 0 || res["bytes_from_peers"].(float64) < 16744448 {
		t.Fatalf("pull from transmission: %v", res)
	}
	t.Logf("from transmission: %v bytes; %d chunk files checked", res["bytes_from_peers"], checked)
}
