#!/usr/bin/env bash
# A dverbs port on a host interface (net_af_packet, net_af_xdp) leaves the interface as it
# found it: same MAC, MTU, flags and promiscuity after the program exits, normally or by
# SIGKILL. DVERBS_MAC different from the interface's is served without changing it (a
# promiscuous membership the kernel drops with the process). An XDP program left behind
# by a killed AF_XDP process is named by the next start, which replaces it.
#
#   host_iface.sh DVERBS_RUN
#
# Runs in a network namespace of its own on a veth pair. Exit 0 pass, 1 fail, 77 skip.
set -u
run=$1
if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root (network namespace, veth)"; exit 77; fi
for p in ibv_rc_pingpong ip; do
  command -v "$p" >/dev/null || { echo "SKIP: $p is not installed"; exit 77; }
done

ns="dvhost$$"
work=$(mktemp -d /tmp/dverbs-host.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns" || { echo "SKIP: cannot create a network namespace"; exit 77; }
nx() { ip netns exec "$ns" "$@"; }
nx ip link set lo up
nx ip link add va type veth peer name vb || { echo "SKIP: cannot create a veth pair"; exit 77; }
nx ip link set va up
nx ip link set vb up

fail=0
check() {  # NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then echo "ok: $1"; else echo "FAIL: $1: expected '$2', got '$3'"; fail=1; fi
}
# MAC, MTU, flags and promiscuity count of an interface, one line.
state() {
  nx ip -d -o link show "$1" | sed -E 's/.*<([^>]*)> mtu ([0-9]+).* link\/ether ([0-9a-f:]+).* promiscuity ([0-9]+).*/flags=\1 mtu=\2 mac=\3 promiscuity=\4/'
}
has_xdp() { nx ip -o link show "$1" | grep -qw xdp && echo yes || echo no; }
wait_listen() {  # until a server in the namespace listens on $port (at most 10 s)
  for _ in $(seq 200); do
    nx ss -Htln "sport = :$port" | grep -q . && return 0
    sleep 0.05
  done
}

before_a=$(state va)
before_b=$(state vb)
echo "before: va $before_a; vb $before_b"

# 1. A ping-pong between two processes, each with a MAC that is not its interface's.
port=$((20000 + $$ % 30000))
nx timeout -k 5 60 "$run" --port net_af_packet0,iface=vb --mac 02:00:00:00:aa:01 \
  --ip 10.0.0.1/24 --lcores 0 -- ibv_rc_pingpong -g 0 -p $port -n 200 >"$work/b.out" 2>&1 &
pids+=($!)
pid_b=$!
wait_listen
during=$(state vb)
nx timeout -k 5 60 "$run" --port net_af_packet0,iface=va --mac 02:00:00:00:aa:02 \
  --ip 10.0.0.2/24 --lcores 0 -- ibv_rc_pingpong -g 0 -p $port -n 200 127.0.0.1 \
  >"$work/a.out" 2>&1
rc_a=$?
wait "$pid_b"
rc_b=$?
check "ping-pong client (exit $rc_a)" 1 "$(grep -c '200 iters in' "$work/a.out")"
check "ping-pong server (exit $rc_b)" 1 "$(grep -c '200 iters in' "$work/b.out")"
[ "$rc_a$rc_b" = 00 ] || { echo "--- a:"; cat "$work/a.out"; echo "--- b:"; cat "$work/b.out"; }
check "while open: vb's MAC is its own, promiscuous by membership" \
  "${before_b/promiscuity=0/promiscuity=1}" "$during"
check "after exit: va unchanged" "$before_a" "$(state va)"
check "after exit: vb unchanged" "$before_b" "$(state vb)"

# 2. Killed while open: nothing is left for anyone to restore.
nx timeout -k 5 60 "$run" --port net_af_packet0,iface=vb --mac 02:00:00:00:aa:01 \
  --ip 10.0.0.1/24 --lcores 0 -- ibv_rc_pingpong -g 0 -p $port >"$work/k.out" 2>&1 &
pids+=($!)
wait_listen
pkill -KILL -f "ibv_rc_pingpong -g 0 -p $port" 
sleep 0.5
check "after SIGKILL (af_packet): vb unchanged" "$before_b" "$(state vb)"

# 3. AF_XDP: the kernel keeps a killed process's XDP program; the next start names it.
if nx timeout -k 5 60 "$run" --port net_af_xdp0,iface=vb --ip 10.0.0.1/24 --lcores 0 -- \
    ibv_devinfo >"$work/x0.out" 2>&1; then
  nx timeout -k 5 60 "$run" --port net_af_xdp0,iface=vb --ip 10.0.0.1/24 --lcores 0 -- \
    ibv_rc_pingpong -g 0 -p $port >"$work/x1.out" 2>&1 &
  pids+=($!)
  wait_listen
  pkill -KILL -f "ibv_rc_pingpong -g 0 -p $port"
  sleep 0.5
  check "after SIGKILL (af_xdp): the kernel kept the XDP program" yes "$(has_xdp vb)"
  nx timeout -k 5 60 "$run" --port net_af_xdp0,iface=vb --ip 10.0.0.1/24 --lcores 0 -- \
    ibv_devinfo >"$work/x2.out" 2>&1
  check "the next start names what it found" 1 \
    "$(grep -c 'vb already has XDP program [0-9]* attached' "$work/x2.out")"
  check "after that start: no XDP program, vb unchanged" "no $before_b" \
    "$(has_xdp vb) $(state vb)"
else
  echo "note: net_af_xdp cannot open here ($(head -n1 "$work/x0.out")); AF_XDP part skipped"
fi

[ $fail = 0 ] && echo "PASS" || echo "FAIL"
exit $fail
