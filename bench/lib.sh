# Shared setup of the bench scripts: sourced, not run.
#   W=<work dir name>; . "$(dirname "$0")/lib.sh"
# Builds the data (bench/images.sh), a fresh $W under $OUT, imgctl as $I and
# a signing key $W/k.key. IMGCTL_BIN=path uses that binary instead of
# building the tree's (for runs of two builds alternating).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
OUT=${OUT:-$HERE/out}
export OUT
mkdir -p "$OUT"
# A module of its own, so that the Go sources among the bench data (the Go
# toolchain trees of bench/bundle.sh) are not packages of imgctl's ./...
[ -f "$OUT/go.mod" ] || echo 'module imgctl.invalid/benchdata' >"$OUT/go.mod"
bash "$HERE/images.sh" >/dev/null
W=$OUT/$W
rm -rf "$W" && mkdir -p "$W"
if [ -n "${IMGCTL_BIN:-}" ]; then
	cp "$IMGCTL_BIN" "$W/imgctl"
else
	(cd "$HERE/.." && CGO_ENABLED=0 go build -o "$W/imgctl" ./cmd/imgctl)
fi
I=$W/imgctl
"$I" key gen --out "$W/k" -q

# secs COMMAND...: run it quietly, print the elapsed seconds.
secs() {
	local s e
	s=$(date +%s.%N)
	"$@" >/dev/null 2>&1
	e=$(date +%s.%N)
	echo "$e - $s" | bc
}

# wallcpu COMMAND...: run it quietly, print its elapsed seconds and the CPU
# seconds (user + system) it and its children used: on this noisy 2-core
# machine the CPU is a steadier measure of a CPU-bound command.
wallcpu() {
	local TIMEFORMAT='%3R %3U %3S' t
	t=$( { time "$@" >/dev/null 2>&1; } 2>&1)
	echo "$t" | awk '{print $1, $2 + $3}'
}

# median: the median of the numbers on standard input.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
