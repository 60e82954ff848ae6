#!/usr/bin/env bash
# Runs the interop conformance peer (tests/interop/peer.c) as a dverbs-against-dverbs pair:
# two processes, each with its own EAL and port (net_memif, or af_xdp on a veth pair), the
# peer's TCP side channel on 127.0.0.1, and checks that both ends pass.
#
#   peer_pair.sh DVERBS_RUN CASE [options]
#
#   CASE       rnr | rkey | vanish | vanish-exit | data | all (each case in turn)
#   options    --peer BIN      the peer binary (default: built here from peer.c with
#                              build-peer.sh; skip if that is impossible)
#              --lcores N      DVERBS_LCORES of both processes (default 0, inline progress)
#              --swap          run the peer's server (the responder) in the memif client
#                              process instead of the memif server process
#              --transport T   memif (default): a shared memif socket, 4096 B path MTU;
#                              af_xdp: the two ends of a veth pair made here (root), whose
#                              1500 B MTU gives the 1024 B path MTU Linux rxe has on a
#                              1500 B netdev
#              --mtu-a BYTES   af_xdp: the MTU of process A's veth end (e.g. 3000: a 2048 B
#                              active MTU against B's 1024, so the path MTU is the smaller)
#              --timeout S     per-process limit (default 240)
#              --pcap DIR      keep each side's frames as DIR/CASE.{server,client}.pcapng
#              --fault SPEC    DVERBS_FAULT of both processes
#              -- ARGS         more peer options (e.g. -t 30000 -D 150)
#
# Process B (10.0.0.1) starts first; with memif it is the memif server and its
# ibv_open_device waits for the link; process A (10.0.0.2) starts once B listens on the
# memif socket. The peer's server runs in B unless --swap. The peer's client retries its TCP
# connect, so the order of the side channel does not matter.
#
# Exit status: 0 pass, 1 fail, 77 skip (meson's convention). Children are killed on any
# exit; every process runs under timeout(1), so the script never hangs.
set -u

here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 2 ]; then
  echo "usage: $0 DVERBS_RUN CASE [--peer BIN] [--lcores N] [--swap] [--timeout S] [--pcap DIR] [--fault SPEC] [-- ARGS]" >&2
  exit 1
fi
run=$1 case=$2
shift 2
peer="" lcores=0 swap=0 limit=240 pcapdir="" fault=off transport=memif mtu_a=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --peer) peer=$2; shift 2 ;;
    --lcores) lcores=$2; shift 2 ;;
    --swap) swap=1; shift ;;
    --transport) transport=$2; shift 2 ;;
    --mtu-a) mtu_a=$2; shift 2 ;;
    --timeout) limit=$2; shift 2 ;;
    --pcap) pcapdir=$2; shift 2 ;;
    --fault) fault=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "peer_pair.sh: unknown option $1" >&2; exit 1 ;;
  esac
done
case "$case" in
  all) cases=(data rnr rkey vanish vanish-exit) ;;
  rnr|rkey|vanish|vanish-exit|data) cases=("$case") ;;
  *) echo "peer_pair.sh: unknown case $case" >&2; exit 1 ;;
esac
[ -x "$run" ] || { echo "FAIL: $run is not an executable dverbs-run"; exit 1; }

. "$here/../e2e/pair_env.sh"
pair_begin dverbs-peer

case "$transport" in
  memif) ;;  # a socket per case, in run_case
  af_xdp) pair_veth "dvp$$" "$mtu_a" ;;
  *) echo "peer_pair.sh: unknown transport $transport" >&2; exit 1 ;;
esac

if [ -z "$peer" ]; then
  peer="$work/peer"
  if ! "$here/build-peer.sh" "$peer" >"$work/build.log" 2>&1; then
    echo "SKIP: cannot build the peer (needs cc and libibverbs-dev):"
    cat "$work/build.log"
    exit 77
  fi
fi
[ -x "$peer" ] || { echo "FAIL: $peer is not executable"; exit 1; }
[ -n "$pcapdir" ] && mkdir -p "$pcapdir"

pick_port() {  # a free TCP port for the side channel
  port=""
  for _ in $(seq 50); do
    local p=$((10000 + RANDOM % 22000))  # below the ephemeral range
    if ! ss -Htan "sport = :$p" 2>/dev/null | grep -q .; then port=$p; return 0; fi
  done
  echo "FAIL: no free TCP port"
  return 1
}

# start NAME PORT IP PEER_ARGS... : one dverbs process; sets $pid_last
start() {
  local name=$1 devargs=$2 ip=$3
  shift 3
  local pcap=()
  if [ -n "$pcapdir" ]; then
    local side=server
    case "$*" in *127.0.0.1) side=client ;; esac
    pcap=(--pcap "$pcapdir/$c.$side.pcapng")
  fi
  timeout -k 5 "$limit" "$run" --port "$devargs" --ip "$ip" \
    --lcores "$lcores" --fault "$fault" "${pcap[@]}" -- \
    "$peer" -d dverbs0 -g 0 -p "$port" "${extra[@]}" "$@" >"$work/$name.out" 2>&1 &
  pid_last=$!
  pids+=("$pid_last")
}

run_case() {
  c=$1
  pick_port || return 1
  if [ "$transport" = memif ]; then
    sock="$work/memif.$c.sock"
    port_a="net_memif0,role=client,socket=$sock"
    port_b="net_memif0,role=server,socket=$sock"
  fi
  local b_args=("$c") a_args=("$c" 127.0.0.1) srv=B
  if [ "$swap" = 1 ]; then b_args=("$c" 127.0.0.1); a_args=("$c"); srv=A; fi
  start b "$port_b" 10.0.0.1/24 "${b_args[@]}"
  local pid_b=$pid_last
  if [ "$transport" = memif ]; then
    # net_memif listens on an abstract socket by default: look for it with ss.
    listening() { ss -Hxl 2>/dev/null | grep -qF "$sock"; }
    for _ in $(seq 400); do
      listening && break
      kill -0 "$pid_b" 2>/dev/null || break
      sleep 0.05
    done
    if ! listening; then
      echo "FAIL: process B never listened on $sock"
      cat "$work/b.out"
      return 1
    fi
  fi
  start a "$port_a" 10.0.0.2/24 "${a_args[@]}"
  local pid_a=$pid_last
  wait "$pid_a"; local rc_a=$?
  wait "$pid_b"; local rc_b=$?
  local status=0
  local role_b=server role_a=client
  [ "$swap" = 1 ] && { role_b=client; role_a=server; }
  echo "=== peer $c over $transport (lcores $lcores, faults $fault, peer server in process $srv)"
  echo "--- A ($port_a, 10.0.0.2, peer $role_a): exit $rc_a"; cat "$work/a.out"
  echo "--- B ($port_b, 10.0.0.1, peer $role_b): exit $rc_b"; cat "$work/b.out"
  for side in a b; do
    local rc=$rc_a
    [ $side = b ] && rc=$rc_b
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      echo "FAIL: $side was killed by timeout(1) after $limit s (a hang)"; status=1
    elif [ "$rc" != 0 ]; then
      echo "FAIL: $side exited with $rc"; status=1
    fi
    grep -q "^RESULT $c .*: PASS" "$work/$side.out" ||
      { echo "FAIL: $side printed no passing RESULT line"; status=1; }
    if grep -q "^FAIL" "$work/$side.out"; then
      echo "FAIL: $side reported failed checks:"; grep "^FAIL" "$work/$side.out" | sed 's/^/  /'
      status=1
    fi
  done
  [ -n "$pcapdir" ] && echo "frames: $pcapdir/$c.{server,client}.pcapng" \
    "(tshark -r FILE -d udp.port==4791,infiniband)"
  if [ $status = 0 ]; then echo "PASS: $c"; else echo "FAIL: $c"; fi
  return $status
}

# A memif link that never comes up (seen rarely on a heavily loaded machine) is not a
# conformance result: such a case gets one more attempt, which says so.
overall=0
failed=()
for c in "${cases[@]}"; do
  if ! run_case "$c"; then
    if grep -qs "link still down after" "$work/a.out" "$work/b.out"; then
      echo "=== the link never came up (not a conformance result): one more attempt of $c"
      run_case "$c" && continue
    fi
    overall=1
    failed+=("$c")
  fi
done
if [ ${#cases[@]} -gt 1 ]; then
  if [ $overall = 0 ]; then echo "=== all ${#cases[@]} cases passed"
  else echo "=== failed: ${failed[*]}"; fi
fi
exit $overall
