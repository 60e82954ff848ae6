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
