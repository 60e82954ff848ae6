#!/usr/bin/env bash
# The drop-in's ABI against the installed rdma-core library:
# 1. libibverbs.so.1's SONAME, version definitions (names and parents) and every exported
#    symbol with its version, default (@@) or compatibility (@), equal those of
#    /usr/lib/.../libibverbs.so.1 (so lib/verbs/ibverbs/libibverbs.map is in step);
# 2. every binary and provider Debian's verbs programs load (ibverbs-utils, perftest,
#    libmlx5, libefa, librdmacm: all BIND_NOW) resolves every symbol against the drop-in
#    (ldd -r with the drop-in first on LD_LIBRARY_PATH).
#
#   ibverbs_abi.sh DROPIN_DIR
set -u
dir=$1
mine="$dir/libibverbs.so.1"
real=""
for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib; do
  [ -e "$d/libibverbs.so.1" ] && { real="$d/libibverbs.so.1"; break; }
done
[ -n "$real" ] || { echo "SKIP: rdma-core's libibverbs.so.1 is not installed"; exit 77; }
command -v readelf >/dev/null || { echo "SKIP: readelf (binutils) missing"; exit 77; }
[ -e "$mine" ] || { echo "FAIL: $mine not built"; exit 1; }

status=0
soname() { readelf -d "$1" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p'; }
[ "$(soname "$mine")" = "libibverbs.so.1" ] || { echo "FAIL: SONAME is '$(soname "$mine")'"; status=1; }

# Exported (defined) symbols as name@VER / name@@VER.
# dverbs' own extension node (DVERBS_*, e.g. dverbs_add_port) is not part of rdma-core's ABI.
exports() { readelf --dyn-syms -W "$1" |
  awk '$7 != "UND" && $8 ~ /@/ && $8 !~ /^IBVERBS/ && $8 !~ /@DVERBS_/ {print $8}' | sort; }
# Version definitions: "NAME" or "NAME<-PARENT".
verdefs() {
  readelf -V -W "$1" | sed -n '/Version definition/,/Version needs/p' |
    awk '/Name:/ {for (i = 1; i <= NF; i++) if ($i == "Name:") n = $(i + 1); print n; next}
         /Parent 1:/ {print n "<-" $NF}' | grep -v '^DVERBS_'
}
if ! diff <(exports "$real") <(exports "$mine") >/tmp/ibverbs_abi.$$; then
  echo "FAIL: exported symbols differ from $real (< rdma-core, > drop-in):"
  cat /tmp/ibverbs_abi.$$
  status=1
fi
if ! diff <(verdefs "$real") <(verdefs "$mine") >/tmp/ibverbs_abi.$$; then
  echo "FAIL: version definitions differ from $real:"
  cat /tmp/ibverbs_abi.$$
  status=1
fi
rm -f /tmp/ibverbs_abi.$$
echo "exports: $(exports "$mine" | wc -l) symbols, versions: $(verdefs "$mine" | grep -vc '<-') nodes"

# Binding: every importer resolves against the drop-in.
checked=0
for f in /usr/bin/ibv_devices /usr/bin/ibv_devinfo /usr/bin/ibv_rc_pingpong /usr/bin/ibv_ud_pingpong \
         /usr/bin/ibv_uc_pingpong /usr/bin/ibv_srq_pingpong /usr/bin/ibv_asyncwatch \
         /usr/bin/ib_send_lat /usr/bin/ib_send_bw /usr/bin/ib_write_lat /usr/bin/ib_write_bw \
         /usr/bin/ib_read_lat /usr/bin/ib_read_bw /usr/bin/ib_atomic_lat /usr/bin/ib_atomic_bw \
         "$(dirname "$real")"/libmlx5.so.1 "$(dirname "$real")"/libefa.so.1 \
         "$(dirname "$real")"/librdmacm.so.1; do
  [ -e "$f" ] || continue
  out=$(LD_LIBRARY_PATH="$dir" LD_BIND_NOW=1 ldd -r "$f" 2>&1)
  if ! grep -q "libibverbs.so.1 => $dir/libibverbs.so.1" <<<"$out"; then
    echo "FAIL: $f does not load the drop-in:"; echo "$out" | grep libibverbs; status=1
  fi
  if grep -E "undefined symbol|version .* not found" <<<"$out"; then
    echo "FAIL: $f has unresolved symbols against the drop-in"; status=1
  fi
  checked=$((checked + 1))
done
echo "binding: $checked binaries and providers checked"
[ $checked -gt 0 ] || { echo "SKIP: no verbs binaries installed"; exit 77; }
[ $status = 0 ] && echo PASS
exit $status
