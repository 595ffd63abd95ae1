#!/usr/bin/env bash
# imgctl vs casync on the same real images, side by side in one run.
# Prints medians of RUNS runs and the ratios; see docs/performance.md.
#   bash bench/compare.sh            (RUNS=3 by default)
#   DESYNC=/path/to/desync           also time `desync extract --seed` (not in
#                                    Debian; `go build github.com/folbricht/desync/cmd/desync`
#                                    in a scratch module builds v0.9.6 here)
# Needs root (debootstrap), debootstrap, e2fsprogs, casync, GNU time.
RUNS=${RUNS:-3}
W=run
. "$(dirname "$0")/lib.sh"

ratio() { echo "scale=2; $1 / $2" | bc; }
mb() { echo "scale=1; $1 / 1000000" | bc; }

declare -A T
for r in $(seq "$RUNS"); do
	for what in v1.img v2.tar; do
		rm -rf "$W/s" "$W/c" "$W"/*.caibx "$W"/*.caidx
		sync
		T[imgctl-$what]+="$(secs "$I" publish -q --store "$W/s" --key "$W/k.key" --name os "$OUT/$what") "
		sync
		T[casync-$what]+="$(secs casync make --store="$W/c" "$W/x.caibx" "$OUT/$what") "
	done
done

# Bytes for the v1 → v2 update.
rm -rf "$W/s" "$W/c1" "$W/c2"
"$I" publish -q --store "$W/s" --key "$W/k.key" --name os "$OUT/v1.img"
"$I" publish -q --store "$W/s" --key "$W/k.key" --name os "$OUT/v2.img"
casync make --store="$W/c1" "$W/v1.caibx" "$OUT/v1.img" >/dev/null
cp -a "$W/c1" "$W/c2"
casync make --store="$W/c2" "$W/v2.caibx" "$OUT/v2.img" >/dev/null
casync_delta=$( (cd "$W/c2" && find . -name '*.cacnk' | sort) >"$W/l2"; (cd "$W/c1" && find . -name '*.cacnk' | sort) >"$W/l1"
	comm -23 "$W/l2" "$W/l1" | (cd "$W/c2" && xargs -r stat -c %s) | awk '{s+=$1} END {print s+0}')
casync_index=$(stat -c %s "$W/v2.caibx")
DESYNC=${DESYNC:-$(command -v desync || true)}
if [ -n "$DESYNC" ]; then
	rm -rf "$W/d1" "$W/d2" && mkdir -p "$W/d1" "$W/d2"
	"$DESYNC" make -s "$W/d1" "$W/dv1.caibx" "$OUT/v1.img" >/dev/null 2>&1
	"$DESYNC" make -s "$W/d2" "$W/dv2.caibx" "$OUT/v2.img" >/dev/null 2>&1
fi

# Pulls: a terminal holding v1 (pulled by imgctl, so its layout is known)
# pulls v2 into the other slot.
"$I" serve -q --store "$W/s" --listen 127.0.0.1:0 --addr-file "$W/addr" &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$W/addr" ] && break; sleep 0.05; done
URL=http://$(cat "$W/addr")
"$I" pull -q --from "$URL" --trust "$W/k.pub" --name os --revision 1 --cache "$W/cache1" --out "$W/slotA" --json >"$W/pull1.json"
for r in $(seq "$RUNS"); do
	rm -rf "$W/cache" "$W/slotB" "$W/casync-out.img"
	cp -a "$W/cache1" "$W/cache"
	sync
	T[imgctl-pull]+="$(secs "$I" pull -q --from "$URL" --trust "$W/k.pub" --name os --seed "$W/slotA" --cache "$W/cache" --out "$W/slotB") "
	cmp "$W/slotB" "$OUT/v2.img"
	rm -rf "$W/cache" "$W/slotB"
	cp -a "$W/cache1" "$W/cache"
	sync
	T[imgctl-pulldir]+="$(secs "$I" pull -q --from "$W/s" --trust "$W/k.pub" --name os --seed "$W/slotA" --cache "$W/cache" --out "$W/slotB") "
	cmp "$W/slotB" "$OUT/v2.img"
	sync
	T[casync-pull]+="$(secs casync extract --seed="$OUT/v1.img" --store="$W/c2" "$W/v2.caibx" "$W/casync-out.img") "
	cmp "$W/casync-out.img" "$OUT/v2.img"
	if [ -n "$DESYNC" ]; then
		rm -f "$W/desync-out.img"
		sync
		T[desync-pull]+="$(secs "$DESYNC" extract --seed "$W/dv1.caibx:$OUT/v1.img" -s "$W/d2" "$W/dv2.caibx" "$W/desync-out.img") "
		cmp "$W/desync-out.img" "$OUT/v2.img"
		rm -f "$W/desync-out.img"
	fi
done
rm -rf "$W/cache" "$W/slotB" && cp -a "$W/cache1" "$W/cache"
/usr/bin/time -f %M -o "$W/rss" "$I" pull -q --from "$URL" --trust "$W/k.pub" --name os --seed "$W/slotA" --cache "$W/cache" --out "$W/slotB" --json >"$W/pull2.json"
rm -rf "$W/cache9" "$W/slot9"
/usr/bin/time -f %M -o "$W/rss-full" "$I" pull -q --from "$URL" --trust "$W/k.pub" --name os --cache "$W/cache9" --out "$W/slot9" --json >/dev/null
kill $SERVE; wait $SERVE 2>/dev/null || true; trap - EXIT

j() { python3 -c "import json,sys; print(json.load(open('$1'))['$2'])"; }
fetched=$(j "$W/pull2.json" bytes_fetched)
manifest=$(j "$W/pull2.json" manifest_bytes)
size=$(stat -c %s "$OUT/v2.img")
tarsize=$(stat -c %s "$OUT/v2.tar")

m() { echo "${T[$1]}" | tr ' ' '\n' | grep . | median; }
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; runs: $RUNS (medians)"
printf '%-44s %10s %10s %8s\n' "" imgctl casync ratio
pi=$(m imgctl-v1.img); pc=$(m casync-v1.img)
printf '%-44s %9.2fs %9.2fs %7sx\n' "publish 1 GiB image v1 (s)" "$pi" "$pc" "$(ratio "$pc" "$pi")"
printf '%-44s %9.0f %9.0f\n' "  MB/s" "$(echo "$size/$pi/1000000" | bc -l)" "$(echo "$size/$pc/1000000" | bc -l)"
ti=$(m imgctl-v2.tar); tc=$(m casync-v2.tar)
printf '%-44s %9.2fs %9.2fs %7sx\n' "publish dense tar $(mb "$tarsize") MB (s)" "$ti" "$tc" "$(ratio "$tc" "$ti")"
printf '%-44s %9.0f %9.0f\n' "  MB/s" "$(echo "$tarsize/$ti/1000000" | bc -l)" "$(echo "$tarsize/$tc/1000000" | bc -l)"
li=$(m imgctl-pull); lc=$(m casync-pull); ld=$(m imgctl-pulldir)
printf '%-44s %9.2fs %9.2fs %7sx\n' "pull v2, v1 as seed, from a store directory" "$ld" "$lc" "$(ratio "$lc" "$ld")"
printf '%-44s %9.2fs %9.2fs %7sx\n' "  the same from an HTTP origin on loopback" "$li" "$lc" "$(ratio "$lc" "$li")"
if [ -n "$DESYNC" ]; then
	lz=$(m desync-pull)
	printf '%-44s %9.2fs %9.2fs %7sx  (second column: desync, which validates the whole seed first)\n' "  store-dir pull against desync extract --seed" "$ld" "$lz" "$(ratio "$lz" "$ld")"
fi
printf '%-44s %8s MB %7s MB %7sx\n' "bytes for v1→v2 (imgctl: fetched; casync: new chunks + index)" "$(mb "$fetched")" "$(mb $((casync_delta + casync_index)))" "$(ratio $((casync_delta + casync_index)) "$fetched")"
printf '%-44s %9s %%\n' "manifest size / image size" "$(echo "scale=4; 100*$manifest/$size" | bc)"
printf '%-44s %7s MiB\n' "peak RSS, delta pull of 1 GiB" "$(( $(cat "$W/rss") / 1024 ))"
printf '%-44s %7s MiB\n' "peak RSS, full pull of 1 GiB" "$(( $(cat "$W/rss-full") / 1024 ))"
