#!/usr/bin/env bash
# Delta bytes and overhead per chunker setting, on the real images and tars
# of bench/images.sh: for each min:avg:max (KiB), publish v1 and v2 into a
# fresh store and report what a terminal on v1 fetches (stored bytes of the
# chunks v1 lacks, plus the manifest), the manifest size and the chunk count.
#   bash bench/chunker-params.sh
PARAMS=${PARAMS:-"2:8:32 4:16:64 8:32:128 16:64:256 64:256:1024"}
W=params
. "$(dirname "$0")/lib.sh"
printf '%-12s %-5s %10s %10s %10s %9s %8s\n' params data "fetch MB" "manifest" "chunks v2" "new chks" "pub v2 s"
for p in $PARAMS; do
	for kind in img tar; do
		rm -rf "$W/s"
		"$I" publish -q --store "$W/s" --key "$W/k.key" --name os --chunk-size "$p" "$OUT/v1.$kind" --json >/dev/null
		"$I" publish -q --store "$W/s" --key "$W/k.key" --name os --chunk-size "$p" "$OUT/v2.$kind" --json >"$W/p2.json"
		python3 - "$W/p2.json" "$p" "$kind" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
prev = d["previous"]
fetch = prev["fetch_bytes"] + d["manifest_bytes"]
print(f'{sys.argv[2]:<12} {sys.argv[3]:<5} {fetch/1e6:10.1f} {d["manifest_bytes"]/1e3:8.0f} KB {d["chunks"]:10d} {prev["new_chunks"]:9d} {d["seconds"]:8.2f}')
PY
	done
done
