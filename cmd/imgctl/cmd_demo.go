package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/delta"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/partition"
	"github.com/imgctl/imgctl/transport"
	"github.com/imgctl/imgctl/transport/swarm"
	"github.com/spf13/cobra"
)

func newDemoCommand(g *globalOptions) *cobra.Command {
	var keep string
	var sizeMiB int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Publish two releases of a sample image; pull the second into the other slot as a delta and flip",
		Long: `demo needs no setup: it builds two releases of a sample ext4 image (mkfs.ext4 -d
on generated files), publishes both, starts an origin on 127.0.0.1, pulls
release 1 into slot A (a file), pulls release 2 into slot B with the running
slot A as seed, verifies it and flips the boot slot in a real grubenv (with
grub-editenv installed), has a second terminal pull release 2 over BitTorrent
from the first, installs the two trees as releases of a service bundle,
prints the diff report and the bytes fetched against the image size, stops
the origin and removes its files (unless --keep DIR).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDemo(cmd.Context(), g, keep, sizeMiB)
		},
	}
	cmd.Flags().StringVar(&keep, "keep", "", "work in DIR and keep it (default: a temporary directory, removed)")
	cmd.Flags().IntVar(&sizeMiB, "size", 128, "image size in MiB")
	return cmd
}

func runDemo(ctx context.Context, g *globalOptions, keep string, sizeMiB int) error {
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return errors.New("demo needs mkfs.ext4 (Debian package e2fsprogs)")
	}
	dir := keep
	if dir == "" {
		if dir, err = os.MkdirTemp("", "imgctl-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	out := g.stdout
	inner := *g
	inner.quiet = true
	inner.stdout = io.Discard
	p := func(s string) string { return filepath.Join(dir, s) }

	fmt.Fprintf(out, "== imgctl demo in %s\n", dir)
	for rel := 1; rel <= 2; rel++ {
		tree := p(fmt.Sprintf("tree%d", rel))
		if err := demoTree(tree, rel); err != nil {
			return err
		}
		img := p(fmt.Sprintf("release%d.img", rel))
		if err := demoImage(ctx, mkfs, tree, img, sizeMiB); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "built two %d MiB ext4 images (release 2: one library patched, one binary rebuilt, one file added, config edited)\n", sizeMiB)

	if err := runKeyGen(&inner, p("keys/release"), true); err != nil {
		return err
	}
	store := p("origin-store")
	for i := 0; i < 2; i++ {
		// Release 2 also gets a delta pack from release 1.
		o := &publishOptions{store: store, key: p("keys/release.key"), name: "terminal-os", channel: "stable", lockTimeout: 10 * time.Second,
			packsFrom: i, packEncoder: "go"}
		r, err := runPublish(ctx, &inner, o, p(fmt.Sprintf("release%d.img", i+1)))
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "published terminal-os@%d: %d chunks, %s stored (%d new chunks), manifest %s, %.2fs\n",
			r.Revision, r.Chunks, human(r.StoredBytesAdded), r.NewChunks, human(int64(r.ManifestBytes)), r.Seconds)
		for _, pk := range r.Packs {
			fmt.Fprintf(out, "delta pack %d→%d: %s instead of %s of chunks\n", pk.From, pk.To, human(pk.Size), human(pk.ChunkBytes))
		}
	}

	srv, err := transport.NewServer(store, transport.ServerOptions{Logger: g.log, CompactTorrent: serveCompactTorrent})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	defer hs.Close()
	url := "http://" + ln.Addr().String()
	fmt.Fprintf(out, "origin serving on %s\n", url)

	pull := func(rev uint64, slot string, seeds ...string) (*pullResult, error) {
		o := &pullOptions{from: url, trust: []string{p("keys/release.pub")}, name: "terminal-os", channel: "stable",
			revision: rev, cache: p("terminal-cache"), out: p(slot), seeds: seeds, concurrency: 4, lockTimeout: 10 * time.Second}
		return runPull(ctx, &inner, o)
	}
	r1, err := pull(1, "slotA.img")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "pull @1 into slotA.img: fetched %s (%d chunks) for a %s image; digest verified\n",
		human(r1.BytesFetched), r1.ChunksFetched, human(r1.Size))
	var r2 *pullResult
	if _, err := exec.LookPath("grub-editenv"); err == nil {
		// A terminal: slot A runs release 1; pull release 2 into slot B with
		// A as the seed (no --seed: the slot config says which slot runs),
		// verify, flip.
		env := p("grubenv")
		if err := (&partition.Grub{Env: env, Slots: []string{"A", "B"}}).Init(ctx, "A"); err != nil {
			return err
		}
		if err := os.WriteFile(p("booted"), []byte("A\n"), 0o644); err != nil {
			return err
		}
		conf := fmt.Sprintf("state_dir = %q\nbooted = %q\n[bootloader]\ntype = \"grub\"\nenv = %q\n[slots.A]\ndevice = %q\n[slots.B]\ndevice = %q\n",
			p("state"), "file:"+p("booted"), env, p("slotA.img"), p("slotB.img"))
		if err := os.WriteFile(p("slots.toml"), []byte(conf), 0o644); err != nil {
			return err
		}
		o := &pullOptions{from: url, trust: []string{p("keys/release.pub")}, name: "terminal-os", channel: "stable",
			revision: 2, cache: p("terminal-cache"), slots: p("slots.toml"), concurrency: 4, lockTimeout: 10 * time.Second}
		if r2, err = runPullSlots(ctx, &inner, o); err != nil {
			return err
		}
		fmt.Fprintf(out, "pull @2 into slot B (running slot A is the seed): fetched %s (%s of it the delta pack), %s reused from slot A; digest verified; slot B boots next\n",
			human(r2.BytesFetched), human(r2.BytesFromPacks), human(r2.BytesFromSeed))
		s, err := loadSlots(p("slots.toml"))
		if err != nil {
			return err
		}
		primary, _ := s.bl.Primary(ctx)
		left, _ := s.bl.TriesLeft(ctx, "B")
		fmt.Fprintf(out, "boot environment (%s): primary %s, %d tries before falling back to A unless it calls imgctl slot mark-good\n", env, primary, left)
	} else {
		r2, err = pull(2, "slotB.img", p("slotA.img"))
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "pull @2 into slotB.img, seed slotA.img: fetched %s (%d chunks), %s reused from the seed; digest verified\n",
			human(r2.BytesFetched), r2.ChunksFetched, human(r2.BytesFromSeed))
		fmt.Fprintln(out, "(install grub-common for the A/B slot flip part of the demo)")
	}

	// A second terminal takes release 2 over BitTorrent from the first one
	// (which seeds its cache); the origin does not seed.
	if err := demoP2P(ctx, &inner, out, p, url); err != nil {
		return err
	}
	// The same trees as a service bundle, installed side by side.
	if err := demoBundle(ctx, &inner, out, p, url); err != nil {
		return err
	}

	_, om, err := loadRelease(store, "stable", "terminal-os@1")
	if err != nil {
		return err
	}
	_, nm, err := loadRelease(store, "stable", "terminal-os@2")
	if err != nil {
		return err
	}
	fmt.Fprintln(out)
	sdir, err := chunkstore.OpenDir(store)
	if err != nil {
		return err
	}
	defer sdir.Close()
	d := delta.Compare(ctx, om, nm, sdir.StoredSize, nil)
	if err := d.WriteText(out, 8); err != nil {
		return err
	}
	var full int64 // what a terminal with nothing fetches for release 2
	for _, c := range nm.Chunks {
		n, _ := sdir.StoredSize(c.ID)
		full += n
	}
	fmt.Fprintf(out, "\nupdate 1 → 2 fetched %s: %.2f %% of the %s image, %.1f %% of its %s compressed chunks\n",
		human(r2.BytesFetched), 100*float64(r2.BytesFetched)/float64(r2.Size), human(r2.Size),
		100*float64(r2.BytesFetched)/float64(max(full, 1)), human(full))
	return nil
}

// demoImage packs tree into a fresh ext4 image of sizeMiB.
func demoImage(ctx context.Context, mkfs, tree, img string, sizeMiB int) error {
	os.Remove(img)
	cmd := exec.CommandContext(ctx, mkfs, "-q", "-F", "-t", "ext4", "-L", "demo",
		"-U", "5e1f0c6a-1d9b-4c3e-9b1a-2f4d6e8a0b1c", "-E", "root_owner=0:0,hash_seed=5e1f0c6a-1d9b-4c3e-9b1a-2f4d6e8a0b1c",
		"-d", tree, img, fmt.Sprintf("%dM", sizeMiB))
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1700000000", "MKE2FS_DETERMINISTIC=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %v: %s", err, strings.TrimSpace(string(b)))
	}
	return nil
}

// demoTree writes a sample root file system; release 2 differs from 1 the
// way a small OS update does.
func demoTree(root string, rel int) error {
	os.RemoveAll(root)
	files := map[string][]byte{}
	binary := func(n int, seed uint64) []byte {
		r := rand.New(rand.NewPCG(seed, seed^0x9e3779b9))
		b := make([]byte, n)
		for i := 0; i < n; {
			// code-like data: runs of random bytes and repeated patterns
			run := 16 + r.IntN(256)
			if r.IntN(3) == 0 {
				pat := byte(r.IntN(256))
				for j := 0; j < run && i < n; j++ {
					b[i] = pat
					i++
				}
				continue
			}
			for j := 0; j < run && i < n; j++ {
				b[i] = byte(r.IntN(64))
				i++
			}
		}
		return b
	}
	words := strings.Fields("terminal update release chunk slot verify seed branch origin kiosk payment receipt printer network config service log")
	text := func(n int, seed uint64) []byte {
		r := rand.New(rand.NewPCG(seed, 7))
		var sb strings.Builder
		for sb.Len() < n {
			sb.WriteString(words[r.IntN(len(words))])
			if r.IntN(12) == 0 {
				sb.WriteString(".\n")
			} else {
				sb.WriteByte(' ')
			}
		}
		return []byte(sb.String()[:n])
	}
	for i := 0; i < 8; i++ {
		files[fmt.Sprintf("usr/bin/app-%d", i)] = binary(512<<10, uint64(100+i))
	}
	files["usr/lib/libcore.so"] = binary(3<<20, 7)
	files["var/lib/pos/data.bin"] = binary(2<<20, 8)
	for i := 0; i < 40; i++ {
		files[fmt.Sprintf("usr/share/doc/file-%d.txt", i)] = text(20<<10, uint64(200+i))
	}
	files["etc/pos/app.conf"] = []byte("endpoint = https://hq.example/pos\nprinter = /dev/usb/lp0\nversion = 1\n")
	if rel == 2 {
		lib := files["usr/lib/libcore.so"]
		copy(lib[1<<20:], binary(64<<10, 9)) // patched in the middle
		files["usr/lib/libcore.so"] = append(lib, binary(100<<10, 10)...)
		files["usr/bin/app-3"] = binary(512<<10, 11) // rebuilt
		files["usr/lib/libnew.so"] = binary(1<<20, 12)
		files["etc/pos/app.conf"] = []byte("endpoint = https://hq.example/pos\nprinter = /dev/usb/lp0\nversion = 2\nreceipts = digital\n")
		delete(files, "usr/share/doc/file-7.txt")
	}
	stamp := time.Unix(1700000000, 0)
	for name, data := range files {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return err
		}
		if err := os.Chtimes(path, stamp, stamp); err != nil {
			return err
		}
	}
	return nil
}

// demoP2P: terminal 1 seeds release 2 — the chunks it fetched (release 1's
// in its cache), and those it took from the delta pack, reproduced from
// slot B and vouched for by the torrent's piece hashes; terminal 2, with
// nothing, pulls it with --p2p and terminal 1 as its peer.
func demoP2P(ctx context.Context, g *globalOptions, out io.Writer, p func(string) string, url string) error {
	cache, err := chunkstore.Open(p("terminal-cache"), chunkstore.Options{Timeout: 10 * time.Second})
	if err != nil {
		return err
	}
	defer cache.Close()
	rels := manifest.OpenReleases(p("origin-store"))
	info, err := rels.ReadSide("terminal-os", "stable", 2, manifest.SideTorrentInfo)
	if err != nil {
		return err
	}
	env0, err := rels.ReadSide("terminal-os", "stable", 2, manifest.SideTorrentManifest)
	if err != nil {
		return err
	}
	_, m, err := loadRelease(p("origin-store"), "stable", "terminal-os@2")
	if err != nil {
		return err
	}
	seeder, err := swarm.New(swarm.Config{Listen: "127.0.0.1:0", Staging: p("terminal-cache/torrent-staging")}, cache, cache)
	if err != nil {
		return err
	}
	defer seeder.Close()
	h, err := seeder.Add(ctx, info, env0)
	if err != nil {
		return err
	}
	_, m1, err := loadRelease(p("origin-store"), "stable", "terminal-os@1")
	if err != nil {
		return err
	}
	n, err := (&pullSwarm{h: h, written: writtenFile(p("slotB.img")), m: m, seeds: []delta.SeedIndex{delta.IndexManifest(m1)}}).reproduce(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "terminal 1 seeds release 2: the chunks it fetched, and the %d it took from the delta pack, reproduced from slot B and checked against the torrent's piece hashes\n", n)
	o := &pullOptions{from: url, trust: []string{p("keys/release.pub")}, name: "terminal-os", channel: "stable",
		revision: 2, cache: p("terminal2-cache"), out: p("terminal2.img"), concurrency: 4, lockTimeout: 10 * time.Second,
		p2p: p2pOptions{enabled: true, peers: []string{seeder.Addr()}, listen: "127.0.0.1:0", stall: time.Second,
			timeout: time.Minute, uploadLimit: "0", downloadLimit: "0"}}
	quiet := *g // the stall is expected here; the line below explains it
	quiet.log = slog.New(slog.DiscardHandler)
	r, err := runPull(ctx, &quiet, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "terminal 2 pulled @2 over BitTorrent with terminal 1 as its peer: %s from the peer, %s over HTTP (manifest and torrent info); digest verified\n",
		human(*r.BytesFromPeers), human(r.BytesFetched-*r.BytesFromPeers))
	return nil
}

// demoBundle publishes the demo's two trees as releases of a service
// bundle and applies them into a bundle root with a rolling restart of two
// instances whose hooks only log.
func demoBundle(ctx context.Context, g *globalOptions, out io.Writer, p func(string) string, url string) error {
	for rel := 1; rel <= 2; rel++ {
		o := &publishOptions{store: p("origin-store"), key: p("keys/release.key"), name: "pos-svc", channel: "stable",
			lockTimeout: 10 * time.Second, kind: "bundle", mtime: "1700000000", owner: "0:0", noTorrent: true}
		if _, err := runPublish(ctx, g, o, p(fmt.Sprintf("tree%d", rel))); err != nil {
			return err
		}
	}
	root := p("opt/pos-svc")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	hook := `echo "$IMGCTL_HOOK instance $IMGCTL_INSTANCE revision $IMGCTL_REVISION" >> "$IMGCTL_ROOT/hooks.log"`
	conf := fmt.Sprintf("policy = \"rolling\"\ninstances = [\"1\", \"2\"]\n[hooks]\nstop = '%s'\nstart = '%s'\nhealth = 'true'\n", hook, hook)
	if err := os.WriteFile(filepath.Join(root, "service.toml"), []byte(conf), 0o644); err != nil {
		return err
	}
	var res [2]*bundleResult
	for rev := uint64(1); rev <= 2; rev++ {
		o := &bundleApplyOptions{from: url, trust: []string{p("keys/release.pub")}, name: "pos-svc", channel: "stable",
			revision: rev, root: root, stateDir: p("state"), cache: p("terminal-cache"), concurrency: 4, keep: 2,
			lockTimeout: 10 * time.Second}
		r, err := runBundleApply(ctx, g, o)
		if err != nil {
			return err
		}
		res[rev-1] = r
	}
	cur, _ := os.Readlink(filepath.Join(root, "current"))
	fmt.Fprintf(out, "bundle pos-svc (the same trees as directories): @1 installed %d files, fetched %s, %s were chunks the image pulls had cached; @2 fetched %s, %s reused from the installed release; every file verified; current -> %s, 2 instances restarted one at a time\n",
		res[0].Files, human(res[0].BytesFetched), human(res[0].BytesFromCache), human(res[1].BytesFetched), human(res[1].BytesFromSeed), cur)
	return nil
}
