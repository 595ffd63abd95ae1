#!/usr/bin/env bash
# Build the benchmark data once (cached in $OUT, default bench/out):
#   v1.img  1 GiB ext4 of `debootstrap --variant=minbase bookworm`
#   v2.img  the same tree after security upgrades and ~30 more packages
#   v1.tar / v2.tar  deterministic tars of the two trees (dense data)
# Needs root, debootstrap, e2fsprogs and a Debian mirror (MIRROR).
set -euo pipefail
OUT=${OUT:-$(cd "$(dirname "$0")" && pwd)/out}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
SIZE=${SIZE:-1G}
EXTRA=${EXTRA:-"curl ca-certificates openssh-client less vim-tiny iproute2 iputils-ping procps psmisc rsync cron logrotate chrony sudo jq netcat-openbsd tcpdump lsof strace htop file gnupg dirmngr bzip2 xz-utils unzip zstd"}
mkdir -p "$OUT"
cd "$OUT"

mkfs() { # tree image
	rm -f "$2"
	E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -t ext4 -L rootfs \
		-U 5e1f0c6a-1d9b-4c3e-9b1a-2f4d6e8a0b1c -E root_owner=0:0,hash_seed=5e1f0c6a-1d9b-4c3e-9b1a-2f4d6e8a0b1c \
		-d "$1" "$2" "$SIZE"
}

mktar() { # tree tar
	tar --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
		-C "$1" -cf "$2" .
}

if [ ! -f v1.img ]; then
	rm -rf root1
	debootstrap --variant=minbase "$SUITE" root1 "$MIRROR" >debootstrap.log 2>&1
	rm -rf root1/var/cache/apt/archives/*.deb
	mkfs root1 v1.img
	mktar root1 v1.tar
fi
if [ ! -f v2.img ]; then
	rm -rf root2
	cp -a root1 root2
	cat >root2/etc/apt/sources.list <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
SRC
	mount -t proc proc root2/proc
	trap 'umount root2/proc 2>/dev/null || true' EXIT
	cp /etc/resolv.conf root2/etc/resolv.conf 2>/dev/null || true
	chroot root2 /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
		"apt-get update -qq && apt-get -y -qq upgrade && apt-get install -y -qq --no-install-recommends $EXTRA && apt-get clean" >v2-apt.log 2>&1
	umount root2/proc
	trap - EXIT
	rm -rf root2/var/lib/apt/lists/*
	mkfs root2 v2.img
	mktar root2 v2.tar
fi
ls -l "$OUT"/v1.img "$OUT"/v2.img "$OUT"/v1.tar "$OUT"/v2.tar
