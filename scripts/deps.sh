#!/usr/bin/env bash
# Installs the Debian packages the tests use, if any of their tools is
# missing (a no-op otherwise). `make test` runs it first, so the README's
# test command works on a fresh machine; .ci/run goes through it too.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
need=()
for pair in mkfs.ext4:e2fsprogs gcc:gcc grub-editenv:grub-common grub-script-check:grub-common \
	mkenvimage:u-boot-tools fw_setenv:libubootenv-tool rauc:rauc dbus-daemon:dbus-daemon \
	losetup:mount unshare:util-linux opentracker:opentracker transmission-daemon:transmission-daemon \
	transmission-remote:transmission-cli zstd:zstd; do
	tool=${pair%%:*} pkg=${pair#*:}
	command -v "$tool" >/dev/null || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "the tests need Debian packages: ${need[*]} (apt-get install ${need[*]})" >&2
	exit 1
fi
echo "installing test tools: ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" libc6-dev ca-certificates >/dev/null
