#!/usr/bin/env bash
# Issue 6 targets, side by side in one run: delta packs against the chunk
# path on the bench image (v1 -> v2) and the Go toolchain bundle
# (go1.22.0 -> go1.22.1, fetched by bench/bundle.sh's first lines).
#   - bytes a terminal on the old release fetches, with and without the pack;
#   - time of that pull / apply over HTTP on loopback, and for the image at
#     10 Mbit/s (the origin's own --upload-limit);
#   - peak RSS of the terminal.
#   bash bench/packs.sh          (RUNS=3; ENCODER=zstd for the zstd-command encoder)
RUNS=${RUNS:-3}
ENCODER=${ENCODER:-go}
W=packs
. "$(dirname "$0")/lib.sh"
GOTC=$OUT/gotc
tc() { echo "$GOTC/golang.org/toolchain@v0.0.1-go1.22.$1.linux-amd64"; }
for v in 0 1; do
	[ -d "$(tc $v)" ] || (cd "$HERE/.." && GOMODCACHE=$GOTC GOFLAGS=-modcacherw go mod download "golang.org/toolchain@v0.0.1-go1.22.$v.linux-amd64")
done

# Publish with packs.
"$I" publish -q --store "$W/s" --key "$W/k.key" --name os "$OUT/v1.img" >/dev/null
"$I" publish -q --store "$W/s" --key "$W/k.key" --name os "$OUT/v2.img" --packs-from 1 --pack-encoder "$ENCODER" --json >"$W/pub-os.json"
"$I" publish -q --store "$W/s" --key "$W/k.key" --name go --kind bundle --mtime 0 --owner 0:0 "$(tc 0)" >/dev/null
"$I" publish -q --store "$W/s" --key "$W/k.key" --name go --kind bundle --mtime 0 --owner 0:0 "$(tc 1)" --packs-from 1 --pack-encoder "$ENCODER" --json >"$W/pub-go.json"

serve() { # serve NAME [FLAGS...]: start an origin, URL in $W/NAME.url
	local n=$1
	shift
	"$I" serve -q --store "$W/s" --listen 127.0.0.1:0 --addr-file "$W/$n.addr" "$@" &
	echo $! >>"$W/pids"
	for _ in $(seq 100); do [ -s "$W/$n.addr" ] && break; sleep 0.1; done
	echo "http://$(cat "$W/$n.addr")" >"$W/$n.url"
}
trap 'for p in $(cat "$W/pids" 2>/dev/null); do kill "$p" 2>/dev/null; done; wait' EXIT
serve fast
serve slow --upload-limit 1.25MB/s
FAST=$(cat "$W/fast.url") SLOW=$(cat "$W/slow.url")

# The image: a terminal holding v1 (pulled by imgctl, layout known).
"$I" pull -q --from "$FAST" --trust "$W/k.pub" --name os --revision 1 --cache "$W/c0" --out "$W/v1.img"
SEED="$W/v1.img:$W/s/manifests/os/stable/1.imgm"
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }
pullos() { # pullos URL TAG [FLAGS...]: one timed pull of v2, prints seconds
	local url=$1 tag=$2
	shift 2
	rm -rf "$W/c-$tag" "$W/out-$tag.img"
	sync
	/usr/bin/time -f "%e %M" -o "$W/time-$tag" "$I" pull -q --from "$url" --trust "$W/k.pub" --name os --seed "$SEED" \
		--cache "$W/c-$tag" --out "$W/out-$tag.img" --json "$@" >"$W/$tag.json"
	cmp "$W/out-$tag.img" "$OUT/v2.img"
	cut -d' ' -f1 "$W/time-$tag"
}
tp="" tc_="" rp="" rc=""
for _ in $(seq "$RUNS"); do
	tp+="$(pullos "$FAST" pack) "
	rp+="$(cut -d' ' -f2 "$W/time-pack") "
	tc_+="$(pullos "$FAST" chunks --no-packs) "
	rc+="$(cut -d' ' -f2 "$W/time-chunks") "
done
slowp=$(pullos "$SLOW" slowpack)
slowc=$(pullos "$SLOW" slowchunks --no-packs)

# The bundle: go1.22.0 installed, apply go1.22.1.
APPLY=(bundle apply -q --trust "$W/k.pub" --name go --state-dir "$W/state" --json)
"$I" "${APPLY[@]}" --from "$FAST" --root "$W/pristine" --cache "$W/bc0" --revision 1 >/dev/null
ta="" tb=""
for r in $(seq "$RUNS"); do
	for tag in pack chunks; do
		flags=()
		[ $tag = chunks ] && flags=(--no-packs)
		cp -a "$W/pristine" "$W/root-$tag-$r" && sync
		/usr/bin/time -f "%e %M" -o "$W/btime-$tag" "$I" "${APPLY[@]}" --from "$FAST" --root "$W/root-$tag-$r" --cache "$W/bc-$tag-$r" "${flags[@]}" >"$W/b$tag.json"
		[ $tag = pack ] && ta+="$(cut -d' ' -f1 "$W/btime-pack") " || tb+="$(cut -d' ' -f1 "$W/btime-chunks") "
	done
done
diff -r "$(tc 1)" "$W/root-pack-1/current" >/dev/null
rm -rf "$W"/root-* "$W"/bc-*

med() { echo "$1" | tr ' ' '\n' | grep . | median; }
mb() { echo "scale=2; $1 / 1000000" | bc; }
echo "machine: $(nproc) cores; runs: $RUNS (medians); pack encoder: $ENCODER"
python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
for name in ("os", "go"):
    p = json.load(open(f"{w}/pub-{name}.json"))["packs"][0]
    lean = p.get("lean")
    print(f"{name}: pack {p['size']/1e6:.2f} MB for {p['chunks']} chunks ({p['chunk_bytes']/1e6:.2f} MB one by one, ratio {p['ratio']:.3f}), "
          f"{p['segments']} segments, built in {p['seconds']:.1f} s"
          + (f"; {p['regzipped']} gzip streams inflated, lean twin {lean['Size']/1e6:.2f} MB (ratio {lean['Size']/p['chunk_bytes']:.3f})" if lean else ""))
PY
form() { [ "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('pack_lean', False))" "$1")" = True ] && echo lean || echo smallest; }
printf 'image v1->v2 pull, loopback: pack %s s (%s MB fetched, %s form, RSS %s KB) | chunks %s s (%s MB, RSS %s KB)\n' \
	"$(med "$tp")" "$(mb "$(field "$W/pack.json" bytes_fetched)")" "$(form "$W/pack.json")" "$(med "$rp")" \
	"$(med "$tc_")" "$(mb "$(field "$W/chunks.json" bytes_fetched)")" "$(med "$rc")"
printf 'image v1->v2 pull, 10 Mbit/s: pack %s s (%s MB fetched, %s form, RSS %s KB) | chunks %s s\n' \
	"$slowp" "$(mb "$(field "$W/slowpack.json" bytes_fetched)")" "$(form "$W/slowpack.json")" "$(cut -d' ' -f2 "$W/time-slowpack")" "$slowc"
printf 'bundle go1.22.0->1.22.1 apply, loopback: pack %s s (%s MB fetched) | chunks %s s (%s MB)\n' \
	"$(med "$ta")" "$(mb "$(field "$W/bpack.json" bytes_fetched)")" "$(med "$tb")" "$(mb "$(field "$W/bchunks.json" bytes_fetched)")"
