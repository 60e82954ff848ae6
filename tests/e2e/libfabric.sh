#!/usr/bin/env bash
# libfabric's verbs provider (Debian libfabric-bin, 1.17) lists dverbs0's RC domain.
#
#   libfabric.sh DVERBS_RUN MODE      MODE: embedded | daemon
#
# The verbs provider offers FI_EP_MSG (RC through rdma_cm) only on devices that own the
# IPv4 address of a kernel interface that is up and not loopback (vrb_getifaddrs in
# prov/verbs/src/verbs_info.c: getifaddrs(), then rdma_bind_addr on each address), as
# a RoCE NIC owns its netdev's. The test gives it one: a network namespace with a veth
# pair holding 10.77.0.1, and dverbs' port (the built-in loopback) on that address.
# Without it only the datagram domain (dverbs0-dgram) is listed.
#
# Exit status: 0 pass, 1 fail, 77 skip. Every process runs under timeout(1).
set -u

run=$1 mode=$2
limit=60

if ! command -v fi_info >/dev/null 2>&1; then
  echo "SKIP: fi_info is not installed (scripts/test installs libfabric-bin)"
  exit 77
fi
if [ "$(id -u)" != 0 ]; then
  echo "SKIP: the interface address the verbs provider needs is made in a network namespace, which needs root"
  exit 77
fi

ns="dvfab$$"
work=$(mktemp -d /tmp/dverbs-fabric.XXXXXX)
dpid=""
cleanup() {
  [ -n "$dpid" ] && kill -TERM "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
if ! ip netns add "$ns" 2>"$work/ip.err"; then
  echo "SKIP: cannot create a network namespace: $(cat "$work/ip.err")"; exit 77
fi
in_ns() { ip netns exec "$ns" "$@"; }
# ip netns exec makes / a slave mount first: not possible where / is not a mount point (a
# plain chroot). An environment limit, said in one line.
if ! in_ns true 2>"$work/ip.err"; then
  echo "SKIP: cannot enter a network namespace: $(cat "$work/ip.err")"; exit 77
fi
in_ns ip link set lo up &&
  in_ns ip link add v0 type veth peer name v1 &&
  in_ns ip link set v0 up && in_ns ip link set v1 up &&
  in_ns ip addr add 10.77.0.1/24 dev v0 || { echo "FAIL: cannot set up the veth pair"; exit 1; }

if [ "$mode" = daemon ]; then
  mkdir -p "$work/dvd"
  in_ns env DVERBS_IP=10.77.0.1/24 DVERBS_LCORES=0 timeout -k 5 "$limit" \
    "$(dirname "$run")/dverbsd" --dir "$work/dvd" >"$work/dvd.log" 2>&1 &
  dpid=$!
  for _ in $(seq 400); do
    grep -q '^dverbsd: ready' "$work/dvd.log" && break
    kill -0 "$dpid" 2>/dev/null || break
    sleep 0.05
  done
  grep -q '^dverbsd: ready' "$work/dvd.log" || { echo "FAIL: dverbsd did not start"; cat "$work/dvd.log"; exit 1; }
  in_ns env DVERBS_DAEMON="$work/dvd" timeout -k 5 "$limit" "$run" -- fi_info -p verbs \
    >"$work/out" 2>&1
else
  in_ns timeout -k 5 "$limit" "$run" --ip 10.77.0.1/24 --lcores 0 -- fi_info -p verbs \
    >"$work/out" 2>&1
fi
rc=$?
echo "=== fi_info -p verbs ($mode): exit $rc"
cat "$work/out"
[ $rc = 0 ] || { echo "FAIL: fi_info exited with $rc"; exit 1; }
# One record per "provider:" line; the dverbs0 domain's must be FI_EP_MSG over rdma_cm.
awk '/^provider:/ {if (rec) print rec; rec = ""} {rec = rec $0 " "} END {print rec}' \
  "$work/out" >"$work/records"
status=0
grep -Eq 'provider: verbs .*domain: dverbs0 .*type: FI_EP_MSG .*protocol: FI_PROTO_RDMA_CM_IB_RC' \
  "$work/records" || { echo "FAIL: no FI_EP_MSG record for domain dverbs0"; status=1; }
grep -Eq 'provider: verbs .*domain: dverbs0-dgram .*type: FI_EP_DGRAM' "$work/records" ||
  { echo "FAIL: no FI_EP_DGRAM record for domain dverbs0-dgram"; status=1; }
[ $status = 0 ] && echo PASS
exit $status
