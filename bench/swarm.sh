#!/usr/bin/env bash
# Issue 4 target: one upload-limited origin and N terminals (separate
# processes, each on its own 127.0.0.x) update v1 -> v2 at once, over
# BitTorrent (pull --p2p, terminals seed each other) and, in the same run,
# over plain HTTP. Reports origin egress (from its /metrics) in deltas and
# the time until all are done against one terminal alone.
#   bash bench/swarm.sh            (N=20, LIMIT=4MB/s, SIZE_MB=64, CHANGE_MB=8)
#   ORIGIN_FLAGS="--max-peers 4"   extra flags for the origin's serve
#   BRANCH=1 bash bench/swarm.sh   terminals pull from a branch cache
#                                  (serve --upstream) that the origin feeds
#   TERMS=/dev/shm/swarm           where the terminals' files go (default: under
#                                  the work dir). On tmpfs the 20 terminals do
#                                  not share one disk's writeback, as real ones
#                                  do not.
N=${N:-20}
LIMIT=${LIMIT:-4MB/s}
SIZE_MB=${SIZE_MB:-64}
CHANGE_MB=${CHANGE_MB:-8}
W=swarm
. "$(dirname "$0")/lib.sh"
T=${TERMS:-$W}
mkdir -p "$T"

# v1: compressible text and random blocks; v2: CHANGE_MB of it rewritten.
python3 - "$W" "$SIZE_MB" "$CHANGE_MB" <<'PY'
import os, random, sys
w, size, change = sys.argv[1], int(sys.argv[2]) << 20, int(sys.argv[3]) << 20
r = random.Random(1)
b = bytearray()
while len(b) < size:
    n = 4096 * r.randint(1, 64)
    b += (bytes(r.choice(b"abcdefgh \n") for _ in range(4096)) * (n // 4096)) if r.random() < 0.5 else r.randbytes(n)
b = b[:size]
open(f"{w}/v1.img", "wb").write(b)
off = size // 3
b[off:off + change] = r.randbytes(change)
open(f"{w}/v2.img", "wb").write(b)
PY
"$I" publish -q --store "$W/s" --key "$W/k.key" --name os "$W/v1.img" ${PUBLISH_FLAGS:-}
delta=$("$I" publish -q --json --store "$W/s" --key "$W/k.key" --name os "$W/v2.img" ${PUBLISH_FLAGS:-} |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["previous"]["fetch_bytes"])')

"$I" serve -q --store "$W/s" --listen 127.0.0.1:0 --addr-file "$W/addr" --seed-torrents --tracker \
	--tracker-interval 2s --upload-limit "$LIMIT" ${ORIGIN_FLAGS:-} &
spid=$!
trap 'kill $spid 2>/dev/null' EXIT
for _ in $(seq 100); do [ -s "$W/addr" ] && break; sleep 0.1; done
URL=http://$(cat "$W/addr")
ORIGIN=$URL
STALL=${STALL:-20s}
bpid=""
trap 'kill $spid $bpid 2>/dev/null' EXIT
branch() { # a fresh branch cache for each run, so that none starts warm
	[ -n "$bpid" ] && kill "$bpid" && wait "$bpid" 2>/dev/null
	rm -rf "$W/branch" "$W/baddr"
	"$I" serve -q --store "$W/branch" --listen 127.0.0.2:0 --addr-file "$W/baddr" --upstream "$ORIGIN" \
		--seed-torrents --tracker --tracker-interval 2s &
	bpid=$!
	for _ in $(seq 100); do [ -s "$W/baddr" ] && break; sleep 0.1; done
	URL=http://$(cat "$W/baddr")
}
[ "${BRANCH:-0}" = 1 ] && STALL=${STALL_BRANCH:-3s}
egress() {
	curl -s "$ORIGIN/metrics" | awk '/^imgctl_(served|torrent_uploaded)_bytes_total /{s+=$2} END{printf "%d\n", s}'
}
terminal() { # terminal DIR IP EXTRA...: a terminal running v1 pulls v2
	# (its running slot with the manifest it was written from, as a slot
	# record gives it: chunks are found by offset and re-hashed, not cut)
	local d=$1 ip=$2
	shift 2
	"$I" pull -q --json --from "$URL" --trust "$W/k.pub" --name os --cache "$d/cache" \
		--seed "$d/running.img:$W/s/manifests/os/stable/1.imgm" --out "$d/new.img" "$@" >"$d/out.json" 2>"$d/err.log"
	cmp -s "$d/new.img" "$W/v2.img" || echo "MISMATCH $d" >&2
}
run() { # run MODE COUNT: prints seconds and origin egress
	local mode=$1 n=$2 e0 s e pids=()
	[ "${BRANCH:-0}" = 1 ] && branch
	# Each terminal already runs v1 (copying it is not part of the update).
	for i in $(seq "$n"); do rm -rf "$T/t$i" && mkdir -p "$T/t$i" && cp "$W/v1.img" "$T/t$i/running.img"; done
	sync
	e0=$(egress)
	s=$(date +%s.%N)
	for i in $(seq "$n"); do
		if [ "$mode" = p2p ]; then
			terminal "$T/t$i" "127.0.1.$i" --p2p --listen "127.0.1.$i:0" --p2p-stall "$STALL" --seed-for 15s ${P2P_EXTRA:-} &
		else
			terminal "$T/t$i" "127.0.1.$i" &
		fi
		pids+=($!)
	done
	# Done = every terminal printed its result (p2p ones then keep seeding).
	for i in $(seq "$n"); do
		until [ -s "$T/t$i/out.json" ] || ! kill -0 "${pids[$((i - 1))]}" 2>/dev/null; do sleep 0.05; done
	done
	e=$(date +%s.%N)
	wait "${pids[@]}"
	echo "$(echo "$e - $s" | bc) $(($(egress) - e0))"
	if [ -n "$bpid" ]; then kill "$bpid"; wait "$bpid" 2>/dev/null; fi # (run is a subshell)
}
read -r t1 e1 < <(run http 1)
read -r th eh < <(run http "$N")
read -r tp ep < <(run p2p "$N")
echo "machine: $(nproc) cores; origin upload limit $LIMIT; image ${SIZE_MB} MiB, delta $delta bytes; $N terminals; branch cache: ${BRANCH:-0}; terminal files: $(df --output=fstype "$T" | tail -1)"
printf 'one terminal alone (HTTP)          %6.2fs  origin egress %5.2f deltas\n' "$t1" "$(echo "$e1 / $delta" | bc -l)"
printf '%2d terminals over HTTP             %6.2fs  origin egress %5.2f deltas  (%.1fx one alone)\n' "$N" "$th" "$(echo "$eh / $delta" | bc -l)" "$(echo "$th / $t1" | bc -l)"
printf '%2d terminals over BitTorrent       %6.2fs  origin egress %5.2f deltas  (%.1fx one alone)  targets: <= 1.2 deltas, <= 2x\n' "$N" "$tp" "$(echo "$ep / $delta" | bc -l)" "$(echo "$tp / $t1" | bc -l)"
