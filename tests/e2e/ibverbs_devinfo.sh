#!/usr/bin/env bash
# ibverbs-utils' ibv_devices and ibv_devinfo -v, unmodified, through dverbs-run: dverbs0 as
# a RoCEv2 channel adapter with the attributes the device reports; and misconfiguration as
# one line naming the DVERBS_* variable with an empty device list (no crash, no hang).
#
#   ibverbs_devinfo.sh DVERBS_RUN DROPIN_DIR
set -u
run=$1 dropin=$2
for p in ibv_devices ibv_devinfo; do
  command -v $p >/dev/null || { echo "SKIP: $p is not installed (ibverbs-utils)"; exit 77; }
done
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
check() {  # check DESCRIPTION REGEX: the last output contains a line matching REGEX
  if grep -Eq -- "$2" "$out"; then echo "ok   $1"; else echo "FAIL $1: no line matching /$2/"; status=1; fi
}
absent() {
  if grep -Eq -- "$2" "$out"; then echo "FAIL $1: unexpected /$2/"; status=1; else echo "ok   $1"; fi
}
runs() {  # runs EXPECTED_RC CMD...: runs CMD (bounded), keeps its output in $out
  local want=$1
  shift
  timeout -k 5 60 "$@" >"$out" 2>&1
  local rc=$?
  if [ "$want" = any ] || [ "$rc" = "$want" ]; then echo "ok   '$*' exited $rc"; else
    echo "FAIL '$*' exited $rc, expected $want"; status=1; fi
  sed 's/^/    | /' "$out"
}

# MAC 02:00:0a:00:00:01 is derived from the IP on the built-in loopback port, and the node
# GUID is its EUI-64.
runs 0 "$run" --ip 10.0.0.1/24 --lcores 0 -- ibv_devices
check "ibv_devices lists dverbs0 with its node GUID" '^\s+dverbs0\s+00000afffe000001$'

runs 0 "$run" --ip 10.0.0.1/24 --lcores 0 -- ibv_devinfo -v
check "hca_id" '^hca_id:\s+dverbs0$'
check "transport IB" 'transport:\s+InfiniBand \(0\)'
check "fw_ver" 'fw_ver:\s+dverbs-'
check "node_guid" 'node_guid:\s+0000:0aff:fe00:0001'
check "one port" 'phys_port_cnt:\s+1$'
check "max_qp" 'max_qp:\s+[1-9][0-9]*$'
check "max_qp_wr" 'max_qp_wr:\s+[1-9][0-9]*$'
check "max_sge" 'max_sge:\s+[1-9][0-9]*$'
check "max_cqe" 'max_cqe:\s+[1-9][0-9]*$'
check "max_qp_rd_atom" 'max_qp_rd_atom:\s+[0-9]+$'
check "atomic_cap" 'atomic_cap:\s+ATOMIC_(NONE|HCA|GLOB)'
check "RNR NAK generation" 'RC_RNR_NAK_GEN'
check "port active" 'state:\s+PORT_ACTIVE \(4\)'
check "active_mtu from the port" 'active_mtu:\s+(256|512|1024|2048|4096) \([1-5]\)'
check "link layer" 'link_layer:\s+Ethernet'
check "physical state" 'phys_state:\s+LINK_UP \(5\)'
check "GID 0 is the IPv4-mapped address, RoCE v2" 'GID\[\s*0\]:\s+::ffff:10\.0\.0\.1, RoCE v2'

runs 0 "$run" --ip 192.168.7.9/16 --lcores 0 -- ibv_devinfo -v
check "GID follows DVERBS_IP" 'GID\[\s*0\]:\s+::ffff:192\.168\.7\.9, RoCE v2'

runs 0 "$run" --lcores 0 -- ibv_devinfo -l
check "ibv_devinfo -l" '^\s*dverbs0$'

# Misconfiguration, bypassing dverbs-run's own checks (a program started with the drop-in
# on LD_LIBRARY_PATH and a bad environment): one line naming the variable, no device.
# A sanitizer build's drop-in needs its runtimes preloaded, as dverbs-run does.
preload=$(ldd "$dropin/libibverbs.so.1" | grep -oE '/[^ ]*lib(asan|ubsan|tsan)\.so[^ ]*' | paste -sd:)
if [ -n "$preload" ]; then
  export LD_PRELOAD="$preload${LD_PRELOAD:+:$LD_PRELOAD}" ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
fi
runs any env LD_LIBRARY_PATH="$dropin" DVERBS_IP=10.0.0.300/24 ibv_devices
check "bad DVERBS_IP named" '^dverbs: DVERBS_IP: '
absent "no device with a bad DVERBS_IP" 'dverbs0'
absent "no DPDK trace" 'EAL:|PANIC|Segmentation|Aborted'

runs any env LD_LIBRARY_PATH="$dropin" DVERBS_LCORES=-3 ibv_devinfo
check "bad DVERBS_LCORES named" '^dverbs: DVERBS_LCORES: '
check "ibv_devinfo finds no device" 'No IB devices found'

runs any env LD_LIBRARY_PATH="$dropin" DVERBS_PORT="net_memif0,role=client,socket=/tmp/dverbs-no-peer-$$.sock" ibv_devices
check "memif client without a peer: DVERBS_PORT named" '^dverbs: DVERBS_PORT: '
absent "no device without a memif peer" 'dverbs0'

runs any env LD_LIBRARY_PATH="$dropin" DVERBS_PORT="net_bogus0" ibv_devices
check "unknown driver: DVERBS_PORT named" '^dverbs: DVERBS_PORT: '
absent "no device with an unknown driver" 'dverbs0'

runs 2 "$run" --ip not-an-ip -- ibv_devices
check "dverbs-run rejects a bad option value" 'DVERBS_IP'
runs 2 "$run" --link-wait soon -- ibv_devices
check "dverbs-run rejects a bad link wait" 'DVERBS_LINK_WAIT'

# A memif server whose peer never comes: ibv_open_device waits (bounded) for the link, says
# so in one line, and the port is honestly reported down.
runs 0 "$run" --port "net_memif0,role=server,socket=/tmp/dverbs-lonely-$$.sock" --link-wait 1 \
  --lcores 0 -- ibv_devinfo
check "the wait names its variable" 'link still down after 1 s.*DVERBS_PORT'
check "port down without a peer" 'state:\s+PORT_DOWN \(1\)'

[ $status = 0 ] && echo PASS
exit $status
