#!/usr/bin/env bash
# Issue 4 target: one upload-limited origin and N terminals (separate
# processes, each on its own 127.0.1.x, or in its own network namespace with
# NETNS=1) update v1 -> v2 at once, over
# BitTorrent (pull --p2p, terminals seed each other) and, in the same run,
# over plain HTTP. Reports origin egress (from its /metrics) in deltas and
# the time until all are done against one terminal alone, and the CPU
# the machine spent on each phase.
#   bash bench/swarm.sh            (N=20, LIMIT=4MB/s, SIZE_MB=64, CHANGE_MB=8)
#   ORIGIN_FLAGS="--max-peers 4"   extra flags for the origin's serve
#   BRANCH=1 bash bench/swarm.sh   terminals pull from a branch cache
#                                  (serve --upstream) that the origin feeds
#   TERMS=/dev/shm/swarm           where the terminals' files go (default: under
#                                  the work dir). On tmpfs the 20 terminals do
#                                  not share one disk's writeback, as real ones
#                                  do not.
#   NETNS=1 bash bench/swarm.sh    every role in a network namespace of its own
#                                  on one bridge (root and iproute2 needed), the
#                                  links shaped by the kernel (tc tbf) instead
#                                  of imgctl's --upload-limit: the origin's at
#                                  WAN_RATE (32mbit = 4 MB/s) each way, the
#                                  others at LAN_RATE (100mbit). DELAY=20ms
#                                  adds latency to the origin's link where the
#                                  kernel has netem (this VM's has not).
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

# Addresses, and the command prefix that runs a role where it lives.
NETNS=${NETNS:-0}
OIP=127.0.0.1 BIP=127.0.0.2 TNET=127.0.1 LIMITFLAG=(--upload-limit "$LIMIT")
at() { shift; "$@"; } # at NODE CMD...: run CMD on node NODE (o, b, t1..tN)
# The servers are started as simple commands, so that $! is their PID.
ONS=() BNS=()
NSP=imgsw$$
netns_down() {
	for ns in $(ip netns list | awk -v p="$NSP" 'index($1, p) == 1 {print $1}'); do ip netns del "$ns"; done
}
if [ "$NETNS" = 1 ]; then
	# A switch namespace holds the bridge; each role's namespace has eth0,
	# a veth whose other end is a bridge port. A token bucket shapes both
	# ends (the node's egress on eth0, its ingress on the port), so a
	# link's rate holds each way; bursts of 256 KB let the veth's 64 KB
	# segments through.
	OIP=10.77.0.1 BIP=10.77.0.2 TNET=10.77.1 LIMITFLAG=()
	at() { local n=$1; shift; ip netns exec "$NSP$n" "$@"; }
	ONS=(ip netns exec "${NSP}o") BNS=(ip netns exec "${NSP}b")
	trap netns_down EXIT
	ip netns add "${NSP}sw"
	ip -n "${NSP}sw" link add br0 type bridge
	ip -n "${NSP}sw" link set br0 up
	shape() { # shape NS DEV RATE DELAY
		if [ -n "$4" ]; then
			tc -n "$1" qdisc add dev "$2" root handle 1: netem delay "$4" limit 10000
			tc -n "$1" qdisc add dev "$2" parent 1: handle 2: tbf rate "$3" burst 256kb latency 400ms
		else
			tc -n "$1" qdisc add dev "$2" root tbf rate "$3" burst 256kb latency 400ms
		fi
	}
	node() { # node NAME IP RATE [DELAY]
		ip netns add "$NSP$1"
		ip -n "${NSP}sw" link add "p$1" type veth peer name eth0 netns "$NSP$1"
		ip -n "${NSP}sw" link set "p$1" master br0 up
		ip -n "$NSP$1" addr add "$2/16" dev eth0
		ip -n "$NSP$1" link set eth0 up
		ip -n "$NSP$1" link set lo up
		shape "$NSP$1" eth0 "$3" "${4:-}"
		shape "${NSP}sw" "p$1" "$3" "${4:-}"
	}
	node o "$OIP" "${WAN_RATE:-32mbit}" "${DELAY:-}"
	node b "$BIP" "${LAN_RATE:-100mbit}"
	for i in $(seq "$N"); do node "t$i" "$TNET.$i" "${LAN_RATE:-100mbit}"; done
fi
"${ONS[@]}" "$I" serve -q --store "$W/s" --listen "$OIP:0" --addr-file "$W/addr" --seed-torrents --tracker \
	--tracker-interval 2s "${LIMITFLAG[@]}" ${ORIGIN_FLAGS:-} &
spid=$!
trap 'kill $spid 2>/dev/null; netns_down' EXIT
for _ in $(seq 100); do [ -s "$W/addr" ] && break; sleep 0.1; done
URL=http://$(cat "$W/addr")
ORIGIN=$URL
STALL=${STALL:-20s}
bpid=""
trap 'kill $spid $bpid 2>/dev/null; netns_down' EXIT
branch() { # a fresh branch cache for each run, so that none starts warm
	[ -n "$bpid" ] && kill "$bpid" && wait "$bpid" 2>/dev/null
	rm -rf "$W/branch" "$W/baddr"
	"${BNS[@]}" "$I" serve -q --store "$W/branch" --listen "$BIP:0" --addr-file "$W/baddr" --upstream "$ORIGIN" \
		--seed-torrents --tracker --tracker-interval 2s &
	bpid=$!
	for _ in $(seq 100); do [ -s "$W/baddr" ] && break; sleep 0.1; done
	URL=http://$(cat "$W/baddr")
}
[ "${BRANCH:-0}" = 1 ] && STALL=${STALL_BRANCH:-3s}
egress() {
	at o curl -s "$ORIGIN/metrics" | awk '/^imgctl_(served|torrent_uploaded)_bytes_total /{s+=$2} END{printf "%d\n", s}'
}
terminal() { # terminal DIR NODE EXTRA...: a terminal running v1 pulls v2
	# (its running slot with the manifest it was written from, as a slot
	# record gives it: chunks are found by offset and re-hashed, not cut)
	local d=$1 n=$2
	shift 2
	at "$n" "$I" pull -q --json --from "$URL" --trust "$W/k.pub" --name os --cache "$d/cache" \
		--seed "$d/running.img:$W/s/manifests/os/stable/1.imgm" --out "$d/new.img" "$@" >"$d/out.json" 2>"$d/err.log"
	cmp -s "$d/new.img" "$W/v2.img" || echo "MISMATCH $d" >&2
}
# cpu: CPU seconds the whole machine spent so far (user, nice, system, irq,
# softirq of /proc/stat). The run's share tells CPU-saving changes apart
# better than its wall time, which on 2 cores is CPU-bound and noisy.
cpu() { awk '/^cpu /{printf "%.2f\n", ($2+$3+$4+$7+$8)/100}' /proc/stat; }
run() { # run MODE COUNT: prints seconds, origin egress and machine CPU-s
	local mode=$1 n=$2 e0 s e c0 pids=()
	[ "${BRANCH:-0}" = 1 ] && branch
	# Each terminal already runs v1 (copying it is not part of the update).
	for i in $(seq "$n"); do rm -rf "$T/t$i" && mkdir -p "$T/t$i" && cp "$W/v1.img" "$T/t$i/running.img"; done
	sync
	e0=$(egress)
	c0=$(cpu)
	s=$(date +%s.%N)
	for i in $(seq "$n"); do
		if [ "$mode" = p2p ]; then
			terminal "$T/t$i" "t$i" --p2p --listen "$TNET.$i:0" --p2p-stall "$STALL" --seed-for 15s ${P2P_EXTRA:-} &
		else
			terminal "$T/t$i" "t$i" &
		fi
		pids+=($!)
	done
	# Done = every terminal printed its result (p2p ones then keep seeding).
	for i in $(seq "$n"); do
		until [ -s "$T/t$i/out.json" ] || ! kill -0 "${pids[$((i - 1))]}" 2>/dev/null; do sleep 0.05; done
	done
	e=$(date +%s.%N)
	local c=$(echo "$(cpu) - $c0" | bc)
	wait "${pids[@]}"
	echo "$(echo "$e - $s" | bc) $(($(egress) - e0)) $c"
	if [ -n "$bpid" ]; then kill "$bpid"; wait "$bpid" 2>/dev/null; fi # (run is a subshell)
}
read -r t1 e1 c1 < <(run http 1)
read -r th eh ch < <(run http "$N")
read -r tp ep cp < <(run p2p "$N")
echo "machine: $(nproc) cores; origin upload limit $([ "$NETNS" = 1 ] && echo "${WAN_RATE:-32mbit} (tc)" || echo "$LIMIT"); image ${SIZE_MB} MiB, delta $delta bytes; $N terminals; branch cache: ${BRANCH:-0}; network namespaces: $NETNS; terminal files: $(df --output=fstype "$T" | tail -1)"
printf 'one terminal alone (HTTP)          %6.2fs  origin egress %5.2f deltas  machine CPU %5.2fs\n' "$t1" "$(echo "$e1 / $delta" | bc -l)" "$c1"
printf '%2d terminals over HTTP             %6.2fs  origin egress %5.2f deltas  (%.1fx one alone)\n' "$N" "$th" "$(echo "$eh / $delta" | bc -l)" "$(echo "$th / $t1" | bc -l)"
printf '                                   machine CPU %5.2fs\n' "$ch"
printf '%2d terminals over BitTorrent       %6.2fs  origin egress %5.2f deltas  (%.1fx one alone)  targets: <= 1.2 deltas, <= 2x\n' "$N" "$tp" "$(echo "$ep / $delta" | bc -l)" "$(echo "$tp / $t1" | bc -l)"
printf '                                   machine CPU %5.2fs (until the last is done)\n' "$cp"
