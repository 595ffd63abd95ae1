#!/usr/bin/env python3
# decisions/0004: what a terminal on the previous revision downloads under three
# torrent layouts, from two release torrents (side files of a store):
#   python3 bench/torrent-layout.py S/manifests/os/stable/2.torrent-info S/manifests/os/stable/1.torrent-info
import sys, random
def bdec(b, i=0):
    c = b[i:i+1]
    if c == b'i':
        j = b.index(b'e', i); return int(b[i+1:j]), j+1
    if c == b'l':
        i += 1; out = []
        while b[i:i+1] != b'e':
            v, i = bdec(b, i); out.append(v)
        return out, i+1
    if c == b'd':
        i += 1; out = {}
        while b[i:i+1] != b'e':
            k, i = bdec(b, i); v, i = bdec(b, i); out[k] = v
        return out, i+1
    j = b.index(b':', i); n = int(b[i:j]); return b[j+1:j+1+n], j+1+n
info, _ = bdec(open(sys.argv[1], 'rb').read())
prev, _ = bdec(open(sys.argv[2], 'rb').read())
held = set(f[b'path'][0] for f in prev[b'files'][1:])
files = [(f[b'path'][0], f[b'length']) for f in info[b'files'][1:]]
man = info[b'files'][0][b'length']
missing = sum(n for p, n in files if p not in held)
def spanning(order, pl):
    off = man; need = set()
    for p, n in order:
        if p not in held and n:
            for q in range(off // pl, (off + n - 1) // pl + 1): need.add(q)
        off += n
    total = off
    return sum(min(pl, total - q*pl) for q in need)
def padded(pl):
    return sum(((n + pl - 1)//pl)*pl for p, n in files if p not in held)
print("chunks", len(files), "missing stored bytes", missing, "avg stored", sum(n for _,n in files)//len(files))
for pl in (16384, 32768, 65536):
    byid = sorted(files)
    print(f"pl {pl//1024:4d} KiB: prefix order {spanning(files, pl)/missing-1:+.2%}  by-ID order {spanning(byid, pl)/missing-1:+.2%}  BEP47 padded {padded(pl)/missing-1:+.2%}")
