#!/usr/bin/env bash
# Issue 5 targets, side by side in one run, on two real releases of a
# service bundle: the Go toolchain go1.22.0 and go1.22.1 (linux-amd64,
# ~211 MB and ~10.6k files each, from the Go module proxy).
#   - bytes a terminal on go1.22.0 fetches to reach go1.22.1: imgctl
#     (bundle apply over HTTP, manifest included) vs casync on deterministic
#     tars of the same trees (new chunks + index) vs xdelta3 on those tars;
#   - apply time (from a store directory, the installed release as seed,
#     every file verified, synced) vs `cp -a` of the new tree + sync.
#   bash bench/bundle.sh          (RUNS=3)
RUNS=${RUNS:-3}
W=bundle
. "$(dirname "$0")/lib.sh"
command -v xdelta3 >/dev/null || { apt-get update -qq && apt-get install -y -qq xdelta3 >/dev/null; }
command -v casync >/dev/null || { apt-get update -qq && apt-get install -y -qq casync >/dev/null; }

GOTC=$OUT/gotc
tc() { echo "$GOTC/golang.org/toolchain@v0.0.1-go1.22.$1.linux-amd64"; }
for v in 0 1; do
	[ -d "$(tc $v)" ] || (cd "$HERE/.." && GOMODCACHE=$GOTC GOFLAGS=-modcacherw go mod download "golang.org/toolchain@v0.0.1-go1.22.$v.linux-amd64")
done
A=$(tc 0) B=$(tc 1)

# imgctl: publish both, serve, apply A, then measure the delta to B.
"$I" publish -q --store "$W/s" --key "$W/k.key" --name go --kind bundle --mtime 0 --owner 0:0 "$A" >/dev/null
"$I" publish -q --store "$W/s" --key "$W/k.key" --name go --kind bundle --mtime 0 --owner 0:0 "$B" --json >"$W/pub2.json"
"$I" serve -q --store "$W/s" --listen 127.0.0.1:0 --addr-file "$W/addr" &
SERVE=$!
trap 'kill $SERVE 2>/dev/null; wait $SERVE 2>/dev/null' EXIT
for _ in $(seq 100); do [ -s "$W/addr" ] && break; sleep 0.1; done
URL="http://$(cat "$W/addr")"
APPLY=(bundle apply -q --trust "$W/k.pub" --name go --state-dir "$W/state" --json)
"$I" "${APPLY[@]}" --from "$URL" --root "$W/pristine" --cache "$W/cache0" --revision 1 >/dev/null
rm -rf "$W/root" && cp -a "$W/pristine" "$W/root"
"$I" "${APPLY[@]}" --from "$URL" --root "$W/root" --cache "$W/cache1" >"$W/http.json"
diff -r "$B" "$W/root/current" >/dev/null
fetched=$(python3 -c "import json; print(json.load(open('$W/http.json'))['bytes_fetched'])")

# Fresh directories each run, removed only at the end: ext4 avoids reusing
# inodes freed in the last minute and scans past them (recently_deleted),
# so creating 10k files right after removing 20k costs seconds. Neither
# side of the comparison may pay that when the other does not.
ta="" tc=""
for r in $(seq "$RUNS"); do
	cp -a "$W/pristine" "$W/root$r" && sync
	ta+="$(secs "$I" "${APPLY[@]}" --from "$W/s" --root "$W/root$r" --cache "$W/cache$r") "
	[ "$(readlink "$W/root$r/current")" = releases/2 ]
	sync
	tc+="$(secs sh -c "cp -a '$B' '$W/copy$r' && sync") "
done
diff -r "$B" "$W/root1/current" >/dev/null
rm -rf "$W"/root? "$W"/cache? "$W"/copy?
ma=$(echo "$ta" | tr ' ' '\n' | grep . | median)
mc=$(echo "$tc" | tr ' ' '\n' | grep . | median)

# casync and xdelta3 on deterministic tars of the same trees.
for v in 0 1; do
	tar -C "$(tc $v)" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$W/go$v.tar" .
done
casync make --store="$W/c1" "$W/go0.caibx" "$W/go0.tar" >/dev/null
cp -a "$W/c1" "$W/c2"
casync make --store="$W/c2" "$W/go1.caibx" "$W/go1.tar" >/dev/null
(cd "$W/c2" && find . -name '*.cacnk' | sort) >"$W/l2"
(cd "$W/c1" && find . -name '*.cacnk' | sort) >"$W/l1"
casync_delta=$(comm -23 "$W/l2" "$W/l1" | (cd "$W/c2" && xargs -r stat -c %s) | awk '{s+=$1} END {print s+0}')
casync_total=$((casync_delta + $(stat -c %s "$W/go1.caibx")))
xdelta3 -e -f -s "$W/go0.tar" "$W/go1.tar" "$W/go.vcdiff"
xd=$(stat -c %s "$W/go.vcdiff")

mb() { echo "scale=1; $1 / 1000000" | bc; }
echo "machine: $(nproc) cores; runs: $RUNS (medians)"
printf 'bytes go1.22.0 -> go1.22.1: imgctl %s MB, casync (tar) %s MB, xdelta3 (tar) %s MB\n' "$(mb "$fetched")" "$(mb $casync_total)" "$(mb "$xd")"
printf 'ratio imgctl / casync   %6.2f  (target < 1)\n' "$(echo "$fetched / $casync_total" | bc -l)"
printf 'ratio imgctl / xdelta3  %6.2f  (the next bar)\n' "$(echo "$fetched / $xd" | bc -l)"
printf 'apply go1.22.1 over go1.22.0 (verified, synced)  %6.2fs\n' "$ma"
printf 'cp -a of the go1.22.1 tree + sync                 %6.2fs\n' "$mc"
printf 'ratio apply / cp -a     %6.2f  (target <= 2)\n' "$(echo "$ma / $mc" | bc -l)"
python3 -c "import json; d=json.load(open('$W/http.json')); print('apply:', {k: d[k] for k in ('bytes_fetched','bytes_from_seed','bytes_from_cache','chunks_fetched','files')})"
