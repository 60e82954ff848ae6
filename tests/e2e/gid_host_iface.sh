#!/usr/bin/env bash
# gid_test on a port over a host interface (net_af_packet on one end of a veth pair made
# here): ibv_query_gid_ex's ndev_ifindex names that interface, as a RoCE NIC's GID names
# its netdev.
#
#   gid_host_iface.sh DVERBS_RUN GID_TEST
#
# Exit status: gid_test's (0 pass), 77 skip (no root or no veth). Runs under timeout(1).
set -u
run=$1 prog=$2
. "$(dirname "$0")/pair_env.sh"
pair_begin dverbs-gid
pair_veth "dvg$$"
echo "=== gid_test on $port_a"
timeout -k 5 120 "$run" --port "${port_a/net_af_xdp0/net_af_packet0}" --ip 10.0.0.1/24 \
  --lcores 0 -- "$prog" --gtest_filter='GidEx.*:GidTable.*'
