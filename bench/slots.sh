#!/usr/bin/env bash
# Issue 3 target: writing the inactive slot from local chunks + the running
# slot as seed, against `cp` of the same image file (both followed by sync),
# side by side. The terminal runs v1 in slot B (pulled and verified by
# imgctl) and has already fetched v2's missing chunks (an earlier --no-flip
# pull); each timed pull rewrites slot A from seed + cache with no network.
#   bash bench/slots.sh          (RUNS=3)
RUNS=${RUNS:-3}
W=slots
. "$(dirname "$0")/lib.sh"

"$I" publish -q --store "$W/s" --key "$W/k.key" --name os "$OUT/v1.img"
"$I" publish -q --store "$W/s" --key "$W/k.key" --name os "$OUT/v2.img"
cp "$OUT/v1.img" "$W/slotA"
: >"$W/slotB"
echo A >"$W/booted"
grub-editenv "$W/grubenv" create
grub-editenv "$W/grubenv" set "ORDER=A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
cat >"$W/slots.toml" <<CONF
state_dir = "$W/state"
booted    = "file:$W/booted"
[bootloader]
type = "grub"
env  = "$W/grubenv"
[slots.A]
device = "$W/slotA"
[slots.B]
device = "$W/slotB"
CONF
P=("$I" pull -q --from "$W/s" --trust "$W/k.pub" --name os --slots "$W/slots.toml")
"${P[@]}" --revision 1            # B := v1, verified, primary
echo B >"$W/booted"
"$I" slot mark-good -q --slots "$W/slots.toml"
"${P[@]}" --revision 2 --no-flip  # A := v2; v2's new chunks now in the cache

tp="" tc="" tn="" cpu=""
for _ in $(seq "$RUNS"); do
	rm -f "$W/slotA" "$W/state/slot-A.json" && : >"$W/slotA"
	sync
	read -r w c < <(wallcpu sh -c "\"\${0}\" \"\$@\" --revision 2 --no-flip --json > $W/last.json" "${P[@]}")
	tp+="$w " cpu+="$c "
	cmp "$W/slotA" "$OUT/v2.img"
	rm -f "$W/copy.img"
	sync
	tc+="$(secs sh -c "cp '$OUT/v2.img' '$W/copy.img' && sync")"" "
	rm -f "$W/copy.img"
	sync
	tn+="$(secs sh -c "cp --sparse=never '$OUT/v2.img' '$W/copy.img' && sync")"" "
	rm -f "$W/copy.img"
done
mp=$(echo "$tp" | tr ' ' '\n' | grep . | median)
mcpu=$(echo "$cpu" | tr ' ' '\n' | grep . | median)
mc=$(echo "$tc" | tr ' ' '\n' | grep . | median)
mn=$(echo "$tn" | tr ' ' '\n' | grep . | median)
echo "machine: $(nproc) cores; runs: $RUNS (medians)"
printf 'write inactive slot (1 GiB, seed + cache, verified)  %6.2fs\n' "$mp"
printf '  its CPU (user + system)                            %6.2fs\n' "$mcpu"
printf 'cp of the same image + sync                          %6.2fs\n' "$mc"
printf 'cp --sparse=never + sync (what a partition costs)    %6.2fs\n' "$mn"
printf 'ratio imgctl / cp                                    %6.2f  (target ≤ 1.5)\n' "$(echo "$mp / $mc" | bc -l)"
printf 'ratio imgctl / cp --sparse=never                     %6.2f\n' "$(echo "$mp / $mn" | bc -l)"
python3 -c "import json; d=json.load(open('$W/last.json')); print('from seed', d['bytes_from_seed'], 'from cache', d['bytes_from_cache'], 'fetched chunks', d['chunks_fetched'])"
