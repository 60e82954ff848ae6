#!/usr/bin/env bash
# The librdmacm.so.1 drop-in's ABI against the installed rdma-core library:
# 1. SONAME, version definitions (names and parents) and every exported symbol with its
#    version equal those of /usr/lib/.../librdmacm.so.1 (so lib/verbs/rdmacm/librdmacm.map
#    is in step);
# 2. it embeds no HCA: it needs libibverbs.so.1, which resolves to the drop-in, and takes
#    every dvcm_* call from there (version DVERBS_PRIVATE_CM) — one HCA per process;
# 3. every program and library Debian's rdmacm-utils ships (rping, ucmatose, udaddy, mckey,
#    rdma_server/client..., librspreload) resolves every symbol against the drop-ins
#    (ldd -r with both first on LD_LIBRARY_PATH).
#
#   rdmacm_abi.sh RDMACM_DIR IBVERBS_DIR
set -u
dir=$1
ibdir=$2
mine="$dir/librdmacm.so.1"
real=""
for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib; do
  [ -e "$d/librdmacm.so.1" ] && { real="$d/librdmacm.so.1"; break; }
done
[ -n "$real" ] || { echo "SKIP: rdma-core's librdmacm.so.1 is not installed"; exit 77; }
command -v readelf >/dev/null || { echo "SKIP: readelf (binutils) missing"; exit 77; }
[ -e "$mine" ] || { echo "FAIL: $mine not built"; exit 1; }

status=0
soname() { readelf -d "$1" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p'; }
[ "$(soname "$mine")" = "librdmacm.so.1" ] || { echo "FAIL: SONAME is '$(soname "$mine")'"; status=1; }

# Exported (defined) symbols as name@VER / name@@VER, without the version nodes themselves.
exports() { readelf --dyn-syms -W "$1" |
  awk '$7 != "UND" && $8 ~ /@/ && $8 !~ /^RDMACM_/ {print $8}' | sort; }
# Version definitions: "NAME" or "NAME<-PARENT".
verdefs() {
  readelf -V -W "$1" | sed -n '/Version definition/,/Version needs/p' |
    awk '/Name:/ {for (i = 1; i <= NF; i++) if ($i == "Name:") n = $(i + 1); print n; next}
         /Parent 1:/ {print n "<-" $NF}'
}
if ! diff <(exports "$real") <(exports "$mine") >/tmp/rdmacm_abi.$$; then
  echo "FAIL: exported symbols differ from $real (< rdma-core, > drop-in):"
  cat /tmp/rdmacm_abi.$$
  status=1
fi
if ! diff <(verdefs "$real" | grep -v '^librdmacm') <(verdefs "$mine" | grep -v '^librdmacm') \
    >/tmp/rdmacm_abi.$$; then
  echo "FAIL: version definitions differ from $real:"
  cat /tmp/rdmacm_abi.$$
  status=1
fi
rm -f /tmp/rdmacm_abi.$$
echo "exports: $(exports "$mine" | wc -l) symbols, versions: $(verdefs "$mine" | grep -c '^RDMACM_[0-9.]*$') nodes"

# No second HCA: no DPDK, no CM code inside; dvcm_* come from the libibverbs drop-in.
if readelf -d "$mine" | grep -q 'NEEDED.*librte_'; then
  echo "FAIL: $mine needs DPDK: it embeds the HCA"; status=1
fi
if readelf --dyn-syms -W "$mine" | awk '$7 != "UND" && $8 ~ /^dvcm_/' | grep -q .; then
  echo "FAIL: $mine defines dvcm_* itself: it embeds the CM"; status=1
fi
out=$(LD_LIBRARY_PATH="$dir:$ibdir" LD_BIND_NOW=1 ldd -r "$mine" 2>&1)
if ! grep -q "libibverbs.so.1 => $ibdir/libibverbs.so.1" <<<"$out"; then
  echo "FAIL: $mine does not load the libibverbs drop-in:"; echo "$out" | grep libibverbs; status=1
fi
if grep -E "undefined symbol|version .* not found" <<<"$out"; then
  echo "FAIL: $mine has unresolved symbols against the libibverbs drop-in"; status=1
fi

# Binding: every importer resolves against the drop-ins.
checked=0
for f in /usr/bin/rping /usr/bin/ucmatose /usr/bin/udaddy /usr/bin/mckey /usr/bin/cmtime \
         /usr/bin/rdma_server /usr/bin/rdma_client /usr/bin/rdma_xserver /usr/bin/rdma_xclient \
         /usr/bin/rstream /usr/bin/riostream /usr/bin/rcopy /usr/bin/udpong \
         "$(dirname "$real")"/rsocket/librspreload.so.1; do
  [ -e "$f" ] || continue
  out=$(LD_LIBRARY_PATH="$dir:$ibdir" LD_BIND_NOW=1 ldd -r "$f" 2>&1)
  if ! grep -q "librdmacm.so.1 => $dir/librdmacm.so.1" <<<"$out"; then
    echo "FAIL: $f does not load the drop-in:"; echo "$out" | grep librdmacm; status=1
  fi
  if grep -E "undefined symbol|version .* not found" <<<"$out"; then
    echo "FAIL: $f has unresolved symbols against the drop-ins"; status=1
  fi
  checked=$((checked + 1))
done
echo "binding: $checked binaries and libraries checked"
[ $checked -gt 0 ] || echo "note: rdmacm-utils is not installed; only the library was checked"
[ $status = 0 ] && echo PASS
exit $status
