#!/bin/bash
# The VM side of the rxe interop suite. vm-init (PID 1) execs it from the host's 9p share
# (/host). It configures eth0 and rxe0, writes /host/vm-info and /host/ready, then runs
# the jobs the host drops into /host/jobs:
#
#   jobs/N.sh      written by the host (atomically, by rename); run once, in its own session
#                  and process group, with cwd /tmp
#   jobs/N.pid     its process group id, written before it starts
#   jobs/N.out     its stdout and stderr
#   jobs/N.rc      its exit status, written (by rename) when it ends
#
# Job scripts may use $H (the share); rxe.sh's case jobs also leave N.prog (the program's
# output), N.progpid, N.listening (a server's TCP port is listening) and N.tcpdump there.
# A job that runs "echo o >/proc/sysrq-trigger" powers the VM off. The agent logs on the
# console.
set -u
H=/host
export H PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
# shellcheck source=/dev/null
. "$H/config"  # VM_IP (ADDR/PREFIX), VM_MAC, RXE_NAME

log() { echo "agent: $*"; }
fail_boot() {
  log "setup failed: $*"
  echo "$*" >"$H/setup-failed"
  sync
  echo o >/proc/sysrq-trigger
  sleep 30
}

hostname dverbs-rxe
ip link set lo up
modprobe virtio_net  # no udev here: nothing loads modules by itself
dev=""
for _ in $(seq 50); do
  for d in /sys/class/net/*; do
    [ "$(cat "$d/address" 2>/dev/null)" = "$VM_MAC" ] && dev=${d##*/}
  done
  [ -n "$dev" ] && break
  sleep 0.1
done
[ -n "$dev" ] || fail_boot "no interface with MAC $VM_MAC"
[ "$dev" = eth0 ] || ip link set "$dev" name eth0 || fail_boot "cannot rename $dev to eth0"
ip link set eth0 up || fail_boot "eth0 up"
ip addr add "$VM_IP" dev eth0 || fail_boot "ip addr add $VM_IP"
modprobe rdma_rxe || fail_boot "modprobe rdma_rxe"
modprobe ib_uverbs || fail_boot "modprobe ib_uverbs"
# rdma_cm for the cm cases (rping, ucmatose, udaddy): rdma_ucm pulls in rdma_cm and ib_cm
# and makes /dev/infiniband/rdma_cm (devtmpfs). Without it only those cases are skipped.
rdma_cm=yes
modprobe rdma_ucm || { rdma_cm="no: modprobe rdma_ucm failed"; log "modprobe rdma_ucm failed"; }
rdma link add "$RXE_NAME" type rxe netdev eth0 || fail_boot "rdma link add $RXE_NAME"

# The RoCE v2 GID of the IPv4 address: the GID table fills in asynchronously.
ip4=${VM_IP%/*}
want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' ${ip4//./ })
port=/sys/class/infiniband/$RXE_NAME/ports/1
# Builtins only (read, not cat): a fork costs tens of ms under TCG and the table has 1024
# entries, the first few of which are used.
gid_index=""
for _ in $(seq 100); do
  for i in $(seq 0 15); do
    read -r g <"$port/gids/$i" 2>/dev/null || continue
    read -r t <"$port/gid_attrs/types/$i" 2>/dev/null || continue
    if [ "$g" = "$want" ] && [ "$t" = "RoCE v2" ]; then gid_index=$i; break 2; fi
  done
  sleep 0.1
done
[ -n "$gid_index" ] || fail_boot "no RoCE v2 GID $want on $RXE_NAME"

{
  echo "VM_KERNEL=$(uname -r)"
  echo "VM_KERNEL_VERSION='$(cat /proc/version)'"
  echo "GID_INDEX=$gid_index"
  echo "RXE_ACTIVE_MTU=$(ibv_devinfo -d "$RXE_NAME" | awk '/active_mtu/ { print $2; exit }')"
  [ "$rdma_cm" = yes ] && [ ! -c /dev/infiniband/rdma_cm ] && rdma_cm="no: no /dev/infiniband/rdma_cm"
  echo "VM_RDMA_CM='$rdma_cm'"
} >"$H/vm-info.tmp"
{
  echo "== uname -a"; uname -a
  echo "== ip addr"; ip addr show eth0
  echo "== rdma link"; rdma link show
  echo "== GIDs of $RXE_NAME"
  for i in $(seq 0 15); do
    read -r v <"$port/gids/$i" 2>/dev/null || continue
    [ "$v" = 0000:0000:0000:0000:0000:0000:0000:0000 ] && continue
    read -r t <"$port/gid_attrs/types/$i" 2>/dev/null
    read -r nd <"$port/gid_attrs/ndevs/$i" 2>/dev/null
    echo "$i $v $t $nd"
  done
  echo "== ibv_devinfo -v"; ibv_devinfo -v -d "$RXE_NAME"
  echo "== rdma_cm: $rdma_cm"; ls -l /dev/infiniband
  echo "== modules"; grep -E '^(rdma_rxe|ib_uverbs|rdma_ucm|rdma_cm|ib_cm|ib_core|iw_cm) ' /proc/modules
  echo "== dmesg (boot)"; dmesg -c  # cleared: each run's job saves the messages of its run
  echo "== packages"; dpkg-query -W -f '${Package} ${Version}\n' rdma-core ibverbs-providers \
    ibverbs-utils perftest rdmacm-utils iproute2 tcpdump 'linux-image-*'
} >"$H/vm-details.txt" 2>&1
mv "$H/vm-info.tmp" "$H/vm-info"
mkdir -p "$H/jobs"
: >"$H/ready"
log "ready: $RXE_NAME on eth0 $VM_IP, GID index $gid_index, kernel $(uname -r)"

# Run jobs. Bash, as PID 1 here, also reaps the orphans that get reparented to it.
declare -A seen
while :; do
  for f in "$H"/jobs/*.sh; do
    [ -e "$f" ] || continue
    n=${f%.sh}
    [ -n "${seen[$n]:-}" ] && continue
    seen[$n]=1
    (
      cd /tmp || exit 1
      exec setsid bash -c 'echo $$ >"$1.pid"; bash "$1.sh" >"$1.out" 2>&1; rc=$?
                           echo $rc >"$1.rc.tmp"; mv "$1.rc.tmp" "$1.rc"' job "$n"
    ) </dev/null &
  done
  sleep 0.2
done
