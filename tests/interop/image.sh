#!/usr/bin/env bash
# Builds, once, the Debian 12 VM image of the rxe interoperation suite and prints the
# directory that holds it:
#
#   image.sh [CACHE]      CACHE defaults to $DVERBS_INTEROP_CACHE or /var/cache/dverbs-interop
#
# CACHE/img-KEY/{vmlinuz,initrd.img,root.ext4,versions} where KEY hashes this recipe (this
# file and vm-init): a changed recipe builds a new image, and older ones are removed once it
# is built. CACHE/debs keeps the downloaded packages, so a rebuild downloads little.
# Builds are serialised with flock(CACHE/lock). Needs root, debootstrap and e2fsprogs.
#
# The recipe: debootstrap --variant=minbase bookworm, then apt-get install (no
# recommends) of PACKAGES below in the chroot, Debian's kernel with an initramfs that
# holds only what it takes to mount a virtio disk, and /sbin/dverbs-init (vm-init) as PID
# 1. The mirror is the one the host's apt uses (its bookworm* entries), or
# $DVERBS_INTEROP_MIRROR. Progress goes to stderr and CACHE/build.log.
set -euo pipefail

PACKAGES=(
  linux-image-amd64 initramfs-tools zstd
  rdma-core ibverbs-providers ibverbs-utils perftest rdmacm-utils
  iproute2 kmod iputils-ping procps tcpdump ethtool
)
# Modules the initramfs carries (MODULES=list): the rest load from the root file system.
INITRD_MODULES=(virtio_pci virtio_blk ext4 crc32c_generic)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${1:-${DVERBS_INTEROP_CACHE:-/var/cache/dverbs-interop}}
key=$(cat "$here/image.sh" "$here/vm-init" | sha256sum | cut -c1-16)
img=$cache/img-$key

say() { echo "image.sh: $*" >&2; }

if [ -f "$img/ok" ]; then echo "$img"; exit 0; fi
[ "$(id -u)" = 0 ] || { say "building the image needs root"; exit 1; }
for t in debootstrap mkfs.ext4 unshare chroot flock; do
  command -v "$t" >/dev/null || { say "$t is not installed"; exit 1; }
done
mkdir -p "$cache/debs"
exec 9>"$cache/lock"
flock 9
if [ -f "$img/ok" ]; then echo "$img"; exit 0; fi  # built by another run meanwhile

# The host's bookworm* apt entries ("deb URI SUITE main"), http only (the image has no CA
# certificates); the first one's URI is debootstrap's mirror.
host_sources() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
      { types = uris = suites = comps = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^#/) continue
          split($i, kv, ":[ \t]*"); k = tolower(kv[1]); v = substr($i, length(kv[1]) + 2)
          sub(/^[ \t]+/, "", v)
          if (k == "types") types = v; else if (k == "uris") uris = v
          else if (k == "suites") suites = v; else if (k == "components") comps = v
          else if (k == "enabled") enabled = v
        }
        if (enabled == "no" || types !~ /(^| )deb( |$)/ || comps !~ /(^| )main( |$)/) next
        nu = split(uris, U, " "); ns = split(suites, S, " ")
        for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++)
          if (U[a] ~ /^http:/ && S[b] ~ /^bookworm/) print "deb " U[a] " " S[b] " main"
      }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++
                       if ($i ~ /^http:/ && $(i + 1) ~ /^bookworm/) print "deb " $i " " $(i + 1) " main" }' "$f"
  done
}
if [ -n "${DVERBS_INTEROP_MIRROR:-}" ]; then
  sources=$(printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' \
    "$DVERBS_INTEROP_MIRROR" "$DVERBS_INTEROP_MIRROR")
else
  sources=$(host_sources | awk '!seen[$0]++')
  [ -n "$sources" ] || sources="deb http://deb.debian.org/debian bookworm main"
fi
mirror=$(echo "$sources" | awk '$3 == "bookworm" { print $2; exit }')
[ -n "$mirror" ] || mirror=$(echo "$sources" | awk '{ print $2; exit }')

work=$cache/build-$key.$$
cleanup() {
  local rc=$?
  [ -d "$work" ] && rm -rf --one-file-system "$work"
  [ $rc = 0 ] || say "FAILED (exit $rc); see $cache/build.log"
}
trap cleanup EXIT
rm -rf --one-file-system "$cache"/build-* 2>/dev/null || true
mkdir -p "$work"
root=$work/root
log=$cache/build.log
: >"$log"
t0=$(date +%s)

say "building $img from $mirror (log: $log)"
debootstrap --variant=minbase --cache-dir="$cache/debs" bookworm "$root" "$mirror" >>"$log" 2>&1
say "debootstrap done in $(( $(date +%s) - t0 )) s"

echo "$sources" >"$root/etc/apt/sources.list"
cat >"$root/etc/dpkg/dpkg.cfg.d/01-dverbs-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
EOF
mkdir -p "$root/etc/initramfs-tools/conf.d"
echo "MODULES=list" >"$root/etc/initramfs-tools/conf.d/dverbs"
printf '%s\n' "${INITRD_MODULES[@]}" >>"$root/etc/initramfs-tools/modules"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"

# apt in the chroot, in a private mount namespace: its /proc and the package cache bind
# vanish with it, whatever happens. The packages stay in CACHE/debs (debootstrap's too) for
# the next build; none of them end up in the image.
unshare --mount --propagation private --fork -- bash -euo pipefail -c '
  root=$1; debs=$2; shift 2
  mount -t proc proc "$root/proc"
  mount --bind "$debs" "$root/var/cache/apt/archives"
  export DEBIAN_FRONTEND=noninteractive LC_ALL=C
  chroot "$root" apt-get -q update
  chroot "$root" apt-get -q -y -o Dpkg::Options::=--force-confdef \
    -o APT::Keep-Downloaded-Packages=true --no-install-recommends install "$@"
' bash "$root" "$cache/debs" "${PACKAGES[@]}" >>"$log" 2>&1
say "packages installed in $(( $(date +%s) - t0 )) s"

install -m 0755 "$here/vm-init" "$root/sbin/dverbs-init"
echo dverbs-rxe >"$root/etc/hostname"
echo "127.0.0.1 localhost dverbs-rxe" >"$root/etc/hosts"
ln -sf /proc/self/mounts "$root/etc/mtab"
rm -f "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin

mkdir -p "$work/img"
kver=$(ls "$root/lib/modules" | sort -V | tail -1)
cp "$root/boot/vmlinuz-$kver" "$work/img/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/img/initrd.img"
{
  echo "kernel $kver"
  chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' \
    "linux-image-$kver" rdma-core ibverbs-providers ibverbs-utils perftest rdmacm-utils \
    iproute2 tcpdump
  echo "mirror $mirror"
} >"$work/img/versions"
rm -f "$root/boot/initrd.img-$kver"  # the VM boots the copy above
mb=$(du -sm "$root" | cut -f1)
size=$(( mb + mb / 3 + 256 ))
mkfs.ext4 -q -F -L dverbs-rxe -d "$root" "$work/img/root.ext4" "${size}M" >>"$log" 2>&1
touch "$work/img/ok"
rm -rf --one-file-system "$img"
mv "$work/img" "$img"
for old in "$cache"/img-*; do [ "$old" = "$img" ] || rm -rf --one-file-system "$old"; done
say "image ready in $(( $(date +%s) - t0 )) s: $img ($(cat "$img/versions" | head -1))"
echo "$img"
