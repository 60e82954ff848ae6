# Sourced by the two-process pair runners (tests/e2e/ibverbs_pair.sh,
# tests/interop/peer_pair.sh): a work directory, every child killed on exit, and the af_xdp
# transport's veth pair.

# pair_begin PREFIX: makes $work (/tmp/PREFIX.XXXXXX) and arms the clean-up; children the
# script starts go into pids.
pair_begin() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  pids=()
  veth=""
  trap pair_cleanup EXIT
}

pair_cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 0.2
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  [ -n "$veth" ] && ip link del "$veth" 2>/dev/null
  rm -rf "$work"
}

# pair_veth NAME [MTU_A]: a veth pair NAMEa/NAMEb, up (NAMEa at MTU_A when given); sets
# port_a and port_b to net_af_xdp on its ends. Exits 77 (skip) when it cannot be made.
pair_veth() {
  if [ "$(id -u)" != 0 ]; then echo "SKIP: af_xdp on a veth pair needs root"; exit 77; fi
  veth="$1a"
  if ! ip link add "$veth" type veth peer name "$1b" 2>"$work/ip.err"; then
    echo "SKIP: cannot create a veth pair: $(cat "$work/ip.err")"; veth=""; exit 77
  fi
  if [ -n "${2:-}" ]; then
    ip link set "$veth" mtu "$2" || { echo "FAIL: cannot set MTU $2 on $veth"; exit 1; }
  fi
  ip link set "$veth" up && ip link set "$1b" up || { echo "FAIL: veth up"; exit 1; }
  port_a="net_af_xdp0,iface=$veth"
  port_b="net_af_xdp0,iface=$1b"
}

# pair_wait_memif PID SOCK: waits (20 s at most) until process PID, the memif server,
# listens on SOCK (net_memif uses an abstract socket by default: ss shows it). Returns 1,
# saying so, when it never did.
pair_wait_memif() {
  local pid=$1 sock=$2
  for _ in $(seq 400); do
    ss -Hxl 2>/dev/null | grep -qF "$sock" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  ss -Hxl 2>/dev/null | grep -qF "$sock" && return 0
  echo "FAIL: process B never listened on $sock"
  return 1
}

# pair_report RC_A RC_B EXPECT_BOTH_NAME EXPECT_A_NAME: prints both outputs ($work/a.out,
# $work/b.out), checks both exit codes and the expected lines (the names of two arrays of
# regular expressions: one for both outputs, one for A's). Sets status (0 or 1).
pair_report() {
  local rc_a=$1 rc_b=$2
  local -n both=$3 only_a=$4
  status=0
  echo "--- A (client, $port_a): exit $rc_a"; cat "$work/a.out"
  echo "--- B (server, $port_b): exit $rc_b"; cat "$work/b.out"
  [ "$rc_a" = 0 ] || { echo "FAIL: client exited with $rc_a"; status=1; }
  [ "$rc_b" = 0 ] || { echo "FAIL: server exited with $rc_b"; status=1; }
  local e side
  for e in "${both[@]}"; do
    for side in a b; do
      grep -Eq -- "$e" "$work/$side.out" || { echo "FAIL: $side output lacks /$e/"; status=1; }
    done
  done
  for e in "${only_a[@]}"; do
    grep -Eq -- "$e" "$work/a.out" || { echo "FAIL: a output lacks /$e/"; status=1; }
  done
}
