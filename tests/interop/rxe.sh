#!/usr/bin/env bash
# Interoperation suite: dverbs against Linux rxe (the kernel's soft RoCE) in a Debian 12 VM.
#
#   tests/interop/rxe.sh [--quick] [--case NAME]... [--keep] [--list] [--out DIR]
#
#   --quick       the CI-sized subset (cases tagged q in --list)
#   --case NAME   run only NAME (both roles) or NAME/ROLE (ROLE: dverbs-server, rxe-server);
#                 repeatable
#   --keep        keep the VM up after the cases, until Ctrl-C; prints how to reach it
#   --list        list the cases and exit
#   --out DIR     where logs, captures and results go (default: a new /tmp/dverbs-interop.*)
#
# Environment: DVERBS_INTEROP_CACHE (image cache, default /var/cache/dverbs-interop),
# DVERBS_INTEROP_MIRROR (Debian mirror for the image, default the host's apt one),
# DVERBS_RUN (default build/apps/dverbs-run of this checkout), DVERBS_INTEROP_NICE,
# DVERBS_INTEROP_TAP_QLEN, DVERBS_INTEROP_VM_NICE (see below and docs/INTEROP.md).
#
# How it works (docs/INTEROP.md has more):
# - image.sh builds and caches a Debian 12 image (debootstrap minbase, the distribution
#   kernel, rdma-core, perftest, tcpdump) keyed by a hash of its recipe.
# - A network namespace made here holds everything: a tap, the host kernel's address on it
#   (10.99.0.1, for the programs' TCP side channel), and qemu (TCG) whose virtio-net is the
#   tap. No traffic leaves the namespace. The VM (10.99.0.2) runs rxe0 on eth0.
# - dverbs runs in the namespace on the same tap through net_af_packet, with its own IP
#   (10.99.0.3) and MAC, --lcores 0. The host kernel and dverbs share the tap.
# - The VM runs agent.sh from a 9p share; the host hands it jobs as files there.
# - Each case runs in both roles: dverbs-server (dverbs is the program's server, rxe the
#   client) and rxe-server (the other way round). For perftest the client is the
#   requester: READ and atomics issued by the client. Both exit statuses and the expected
#   output lines are checked, and both sides capture frames (dverbs --pcap, tcpdump in the
#   VM). After the VM is down, every capture is checked with tshark (RoCEv2 dissected as
#   InfiniBand, nothing malformed, no expert error) and roce_check.py (ICRC, checksums).
# - The tap's MAC, MTU, flags and addresses are recorded before, during and after every
#   dverbs run; a change left behind fails the host_interfaces check.
# - The peer_* cases run tests/interop/peer.c (built here with build-peer.sh, the same
#   binary in the VM); they are skipped, saying why, if it cannot be built.
# - The cm cases (rping, ucmatose, udaddy) connect through rdma_cm: the VM's kernel
#   rdma_cm (rdma_ucm) over rxe0, dverbs' librdmacm.so.1 drop-in (put first by dverbs-run)
#   on the host; connection set-up is the IB CM on QP1 (SIDR for udaddy), and the captures
#   must hold CM MADs. They are skipped, saying why, if dverbs-run provides no
#   librdmacm.so.1 or the VM has no /dev/infiniband/rdma_cm.
#
# Output: one line per run, a results table, then "N passed, N failed, N skipped". Exit
# status 0 if nothing failed, 1 otherwise, 77 (one line saying why) if the VM cannot be run:
# not root, no qemu, no image, or the VM did not boot.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
DVERBS_RUN=${DVERBS_RUN:-$repo/build/apps/dverbs-run}
CACHE=${DVERBS_INTEROP_CACHE:-/var/cache/dverbs-interop}

# Addresses: inside the namespace only.
NS=dverbs-interop-$$
TAP=dvtap0
HOST_IP=10.99.0.1 VM_IP=10.99.0.2 DV_IP=10.99.0.3 PREFIX=24
VM_MAC=52:54:00:63:00:02 DV_MAC=02:00:0a:63:00:03
DV_PORT="net_af_packet0,iface=$TAP"
TCP_PORT=18515          # pingpong's and perftest's default side-channel port
BOOT_LIMIT=300          # seconds for the VM to boot and set up rxe0
# qemu and the dverbs side run at this nice level: on 2 cores shared with builds, a starved
# TCG guest answers so late that the peer's retry timer (ibv_rc_pingpong and perftest:
# timeout 14, 67 ms, 7 retries) runs out, which measures the machine, not the transport.
NICE=${DVERBS_INTEROP_NICE:--10}
# The tap's queue toward the VM (txqueuelen, frames); see docs/INTEROP.md.
TAP_QLEN=${DVERBS_INTEROP_TAP_QLEN:-64}
# Nice level of the programs in the VM (see docs/INTEROP.md).
VM_NICE=${DVERBS_INTEROP_VM_NICE:-0}

# ------------------------------------------------------------------------------------------
# Cases. NAME|TAGS|TIMEOUT|PROGRAM AND ARGUMENTS|EXPECT (both sides)|EXPECT (client only)
#        |CLIENT PROGRAM
# @DEV@ and @GID@ become dverbs0/0 on the dverbs side and rxe0/the VM's RoCE v2 IPv4 GID
# index on the rxe side; the client also gets the server's address. Tags: q = in --quick,
# loss = 2 % loss both ways (see run_loss_setup), peer = tests/interop/peer.c (built here
# if present), cm = an rdma_cm program (the server listens on an rdma_cm port, not a TCP
# one; the captures must hold CM MADs). The defaults of the programs are kept apart from
# -d/-g/-x, -n (small for TCG), -c (check the data) and, for UD, -s 1024 (its default 2048
# exceeds a 1500-byte MTU). With a CLIENT PROGRAM, PROGRAM is the server's command and
# CLIENT PROGRAM the client's; @SERVER@ in either is the server's RoCE address (dverbs'
# 10.99.0.3 or the VM's 10.99.0.2) and nothing is appended.
CASES=(
  "rc_pingpong|q|120|ibv_rc_pingpong -d @DEV@ -g @GID@ -c -n 200|^200 iters in|"
  "uc_pingpong||120|ibv_uc_pingpong -d @DEV@ -g @GID@ -c -n 200|^200 iters in|"
  "ud_pingpong|q|120|ibv_ud_pingpong -d @DEV@ -g @GID@ -c -s 1024 -n 200|^200 iters in|"
  "srq_pingpong||120|ibv_srq_pingpong -d @DEV@ -g @GID@ -c -n 20|^20 iters in|"
  "ib_send_lat|q|120|ib_send_lat -d @DEV@ -x @GID@ -n 200|^ 2 +200 |"
  "ib_send_bw|q|120|ib_send_bw -d @DEV@ -x @GID@ -n 100|^ 65536 +100 |"
  "ib_write_lat||120|ib_write_lat -d @DEV@ -x @GID@ -n 200|^ 2 +200 |"
  "ib_write_bw|q|120|ib_write_bw -d @DEV@ -x @GID@ -n 100|^ 65536 +100 |"
  "ib_read_lat||120|ib_read_lat -d @DEV@ -x @GID@ -n 200||^ 2 +200 "
  "ib_read_bw|q|120|ib_read_bw -d @DEV@ -x @GID@ -n 100||^ 65536 +100 "
  "ib_atomic_lat|q|120|ib_atomic_lat -d @DEV@ -x @GID@ -n 200||^ 8 +200 "
  "ib_atomic_bw||120|ib_atomic_bw -d @DEV@ -x @GID@ -n 100||^ 8 +100 "
  "rc_pingpong_loss|q,loss|240|ibv_rc_pingpong -d @DEV@ -g @GID@ -c -n 200|^200 iters in|"
  "ib_write_bw_loss|loss|240|ib_write_bw -d @DEV@ -x @GID@ -n 100|^ 65536 +100 |"
  "ib_read_bw_loss|loss|240|ib_read_bw -d @DEV@ -x @GID@ -n 100||^ 65536 +100 "
  "peer_data|peer|240|@PEER@ -d @DEV@ -g @GID@ -T 200 data|^RESULT data .*: PASS|"
  "peer_rnr|q,peer|240|@PEER@ -d @DEV@ -g @GID@ -T 200 rnr|^RESULT rnr .*: PASS|"
  "peer_rkey|q,peer|240|@PEER@ -d @DEV@ -g @GID@ -T 200 @RXE_A@ rkey|^RESULT rkey .*: PASS|"
  "peer_vanish|peer|240|@PEER@ -d @DEV@ -g @GID@ -T 200 vanish|^RESULT vanish .*: PASS|"
  "peer_vanish-exit|peer|240|@PEER@ -d @DEV@ -g @GID@ -T 200 vanish-exit|^RESULT vanish-exit .*: PASS|"
  "rping|q,cm|60|rping -s -a @SERVER@ -p 7174 -C 100 -V -v|ping data: rdma-ping-99: ||rping -c -a @SERVER@ -p 7174 -C 100 -V -v"
  "ucmatose|q,cm|60|ucmatose -c 4|^data transfers complete||ucmatose -c 4 -s @SERVER@"
  "udaddy|cm|60|udaddy|^data transfers complete||udaddy -s @SERVER@"
)
ROLES=(dverbs-server rxe-server)

# Failures seen and analysed (docs/INTEROP.md, "Known not to work"): printed next to a
# failure as a hint only; they still count as failures. ROLE-GLOB|CASE-GLOB|NOTE
KNOWN=(
  "rxe-server|ib_send_bw|dverbs' bulk SENDs outrun the TCG guest: ACKs come back after ~0.5 s of queueing, past 8 x 67 ms, RETRY_EXC_ERR (environment-limited)"
  "rxe-server|peer_data|dverbs' 1 MiB SEND outruns the TCG guest: RETRY_EXC_ERR (environment-limited)"
  "dverbs-server|peer_rkey|dverbs responder loses the remote-access NAK when the requester's MAC is not yet resolved; rxe then retries forever (retry_cnt 7 = infinite in rxe)"
  "rxe-server|peer_rkey|rxe 6.1 raises no IBV_EVENT_QP_ACCESS_ERR on the responder"
  "dverbs-server|peer_vanish*|rxe's retransmit timer fires early (not restarted when an ACK arrives)"
)

field() { local IFS='|'; local -a f; read -r -a f <<<"$1"; echo "${f[$2]:-}"; }
join() { local r="" x; for x in "$@"; do r="${r:+$r; }$x"; done; echo "$r"; }

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

quick=0 keep=0 list=0 out=""
selected=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --case) [ $# -ge 2 ] || { usage >&2; exit 2; }; selected+=("$2"); shift 2 ;;
    --keep) keep=1; shift ;;
    --list) list=1; shift ;;
    --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; out=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "rxe.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [ "$list" = 1 ]; then
  printf '%-18s %-8s %s\n' CASE TAGS PROGRAM
  for c in "${CASES[@]}"; do
    cl=$(field "$c" 6)
    printf '%-18s %-8s %s\n' "$(field "$c" 0)" "$(field "$c" 1)" "$(field "$c" 3)${cl:+ / client: $cl}"
  done
  echo "roles: ${ROLES[*]} (NAME runs both, NAME/ROLE one)"
  exit 0
fi

# The runs to do: "CASE ROLE" pairs.
runs=()
for c in "${CASES[@]}"; do
  name=$(field "$c" 0) tags=$(field "$c" 1)
  for r in "${ROLES[@]}"; do
    if [ ${#selected[@]} -gt 0 ]; then
      hit=0
      for s in "${selected[@]}"; do [ "$s" = "$name" ] || [ "$s" = "$name/$r" ] && hit=1; done
      [ $hit = 1 ] || continue
    elif [ "$quick" = 1 ]; then
      case ",$tags," in *,q,*) ;; *) continue ;; esac
    fi
    runs+=("$name $r")
  done
done
if [ ${#selected[@]} -gt 0 ]; then
  for s in "${selected[@]}"; do
    ok=0
    for x in "${runs[@]}"; do
      set -- $x
      [ "$s" = "$1" ] || [ "$s" = "$1/$2" ] && ok=1
    done
    [ $ok = 1 ] || { echo "rxe.sh: no case $s (see --list)" >&2; exit 2; }
  done
fi

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "the rxe interop suite needs root (network namespace, tap, qemu)"
for t in qemu-system-x86_64 ip timeout; do
  command -v "$t" >/dev/null || skip "$t is not installed (apt-get install qemu-system-x86 iproute2)"
done
[ -x "$DVERBS_RUN" ] || skip "$DVERBS_RUN is not built (meson compile -C build)"
[ -e /dev/net/tun ] || skip "/dev/net/tun is missing: no tap for the VM"

t_start=$SECONDS
if [ -n "$out" ]; then mkdir -p "$out" || exit 2; out=$(cd "$out" && pwd)
else out=$(mktemp -d /tmp/dverbs-interop.XXXXXX); fi
SHARE=$out/share
mkdir -p "$SHARE/jobs" "$SHARE/out" "$out/runs"
LOG=$out/suite.log
: >"$LOG"
note() { echo "$*" >>"$LOG"; }
say() { echo "$*"; echo "$*" >>"$LOG"; }

# ------------------------------------------------------------------------------------------
# Teardown: everything this script started, by pid, then the namespace (and the tap in it).
QEMU_PID="" HOST_PIDS=() NS_MADE=0 DONE_TEARDOWN=0
teardown() {
  [ "$DONE_TEARDOWN" = 1 ] && return
  DONE_TEARDOWN=1
  local p
  for p in "${HOST_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill -TERM "$QEMU_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$QEMU_PID" 2>/dev/null
  fi
  for p in "${HOST_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  if [ "$NS_MADE" = 1 ]; then
    # Anything still in our namespace was started by this script.
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    sleep 0.2
    ip -n "$NS" link del "$TAP" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    NS_MADE=0
  fi
  [ -n "$QEMU_PID" ] && wait "$QEMU_PID" 2>/dev/null
  QEMU_PID=""
}
trap teardown EXIT
trap 'echo "rxe.sh: interrupted" >&2; exit 130' INT TERM HUP

root_links() { ip -o link show | sed -E 's/^[0-9]+: //; s/ +/ /g' | sort; }
ROOT_LINKS_BEFORE=$(root_links)

# ------------------------------------------------------------------------------------------
# Image.
t0=$SECONDS
img=$("$here/image.sh" "$CACHE" 2>>"$LOG") || skip "cannot build the VM image (see $LOG and $CACHE/build.log)"
T_IMAGE=$((SECONDS - t0))
for f in vmlinuz initrd.img root.ext4; do
  [ -f "$img/$f" ] || skip "the image in $img lacks $f"
done
note "image $img ($(head -1 "$img/versions")), ready in $T_IMAGE s"

# ------------------------------------------------------------------------------------------
# Namespace, tap, VM.
ip netns add "$NS" || skip "cannot create network namespace $NS"
NS_MADE=1
nsx() { ip netns exec "$NS" "$@"; }
nsx sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$NS" link set lo up
ip -n "$NS" tuntap add dev "$TAP" mode tap || skip "cannot create a tap in $NS"
ip -n "$NS" link set "$TAP" txqueuelen "$TAP_QLEN" up
ip -n "$NS" addr add "$HOST_IP/$PREFIX" dev "$TAP"

cp "$here/agent.sh" "$SHARE/agent.sh"
printf 'VM_IP=%s\nVM_MAC=%s\nRXE_NAME=rxe0\n' "$VM_IP/$PREFIX" "$VM_MAC" >"$SHARE/config"

t0=$SECONDS
nsx nice -n "$NICE" qemu-system-x86_64 -name dverbs-interop -accel tcg -m 1024 -smp 1 \
  -display none -monitor none -no-reboot -nodefaults \
  -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
  -append "console=ttyS0 root=/dev/vda rw init=/sbin/dverbs-init panic=-1 quiet loglevel=4" \
  -drive "file=$img/root.ext4,format=raw,if=virtio,snapshot=on,cache=unsafe" \
  -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" \
  -device "virtio-net-pci,netdev=n0,mac=$VM_MAC" \
  -virtfs "local,path=$SHARE,mount_tag=host,security_model=none,id=h0" \
  -serial "file:$out/console.log" >"$out/qemu.out" 2>&1 </dev/null &
QEMU_PID=$!
vm_alive() { kill -0 "$QEMU_PID" 2>/dev/null; }

for _ in $(seq $((BOOT_LIMIT * 5))); do
  [ -e "$SHARE/ready" ] && break
  [ -e "$SHARE/setup-failed" ] && break
  vm_alive || break
  sleep 0.2
done
if [ ! -e "$SHARE/ready" ]; then
  why="did not boot within $BOOT_LIMIT s"
  vm_alive || why="qemu exited: $(tail -1 "$out/qemu.out" 2>/dev/null)"
  [ -e "$SHARE/setup-failed" ] && why="set up failed: $(cat "$SHARE/setup-failed")"
  skip "the rxe VM $why (console: $out/console.log)"
fi
T_BOOT=$((SECONDS - t0))
# shellcheck source=/dev/null
. "$SHARE/vm-info"  # VM_KERNEL, VM_KERNEL_VERSION, GID_INDEX, RXE_ACTIVE_MTU, VM_RDMA_CM
cp "$SHARE/vm-details.txt" "$out/vm-details.txt"
say "rxe VM up in $T_BOOT s: kernel $VM_KERNEL, rxe0 GID index $GID_INDEX (RoCE v2, ::ffff:$VM_IP), active MTU $RXE_ACTIVE_MTU; host $(uname -r)"
say "output: $out"

# ------------------------------------------------------------------------------------------
# VM jobs (agent.sh runs them).
JOBN=0 JOB="" JOB_RC=""
vm_job() {  # vm_job SCRIPT: submit; sets JOB
  JOBN=$((JOBN + 1))
  JOB=j$JOBN
  printf '%s\n' "$1" >"$SHARE/jobs/$JOB.sh.tmp"
  mv "$SHARE/jobs/$JOB.sh.tmp" "$SHARE/jobs/$JOB.sh"
}
vm_wait() {  # vm_wait ID SECONDS: 0 and JOB_RC once it ended; 1 on timeout, 2 if the VM died
  local end=$((SECONDS + $2))
  while [ ! -e "$SHARE/jobs/$1.rc" ]; do
    vm_alive || return 2
    [ $SECONDS -ge "$end" ] && return 1
    sleep 0.1
  done
  JOB_RC=$(cat "$SHARE/jobs/$1.rc")
}
vm_kill() {  # vm_kill ID: end the job's process group
  local pg
  pg=$(cat "$SHARE/jobs/$1.pid" 2>/dev/null) || return 0
  [ -e "$SHARE/jobs/$1.rc" ] && return 0
  vm_job "kill -TERM -- -$pg 2>/dev/null; sleep 3; kill -KILL -- -$pg 2>/dev/null; true"
  vm_wait "$JOB" 30
  vm_wait "$1" 10
}
vm_end_program() {  # vm_end_program ID: SIGTERM the job's program; the job still saves its capture
  local pid
  pid=$(cat "$SHARE/jobs/$1.progpid" 2>/dev/null) || { vm_kill "$1"; return; }
  local saved=$JOB
  vm_job "kill -TERM $pid 2>/dev/null; true"
  vm_wait "$JOB" 30
  JOB=$saved
  vm_wait "$1" 40 || vm_kill "$1"
}
vm_run() {  # vm_run SECONDS SCRIPT: run and wait; output in $SHARE/jobs/$JOB.out
  vm_job "$2"
  vm_wait "$JOB" "$1"
}

# ------------------------------------------------------------------------------------------
# The peer (tests/interop/peer.c): built here when present; the same binary runs in the VM
# (both are Debian 12 with rdma-core 44's libibverbs.so.1).
PEER="" PEER_WHY=""
need_peer=0
for x in "${runs[@]}"; do case "$x" in peer_*) need_peer=1 ;; esac; done
if [ $need_peer = 1 ]; then
  if [ ! -f "$here/peer.c" ]; then PEER_WHY="tests/interop/peer.c does not exist"
  elif ! { if [ -x "$here/build-peer.sh" ]; then "$here/build-peer.sh" "$SHARE/peer"
           else cc -O2 -Wall -o "$SHARE/peer" "$here/peer.c" -libverbs; fi; } >"$out/peer-build.log" 2>&1
  then PEER_WHY="cannot build peer.c (needs cc and libibverbs-dev): $(tail -1 "$out/peer-build.log")"
  else PEER=$SHARE/peer; fi
  [ -n "$PEER_WHY" ] && say "peer cases skipped: $PEER_WHY"
fi

# ------------------------------------------------------------------------------------------
# The cm cases: dverbs-run must put dverbs' librdmacm.so.1 first (or the system's would talk
# to the host kernel's rdma_cm), and the VM needs rdma_ucm (agent.sh, VM_RDMA_CM).
CM_WHY=""
need_cm=0
for x in "${runs[@]}"; do
  for c in "${CASES[@]}"; do
    [ "$(field "$c" 0)" = "${x%% *}" ] && case ",$(field "$c" 1)," in *,cm,*) need_cm=1 ;; esac
  done
done
if [ $need_cm = 1 ]; then
  cm_lib=$("$DVERBS_RUN" -- ldd "$(command -v rping || echo /usr/bin/rping)" 2>&1 |
           awk '$1 == "librdmacm.so.1" { print $3 }')
  if [ "${VM_RDMA_CM:-no}" != yes ]; then CM_WHY="the VM has no rdma_cm (${VM_RDMA_CM:-unknown})"
  elif [ -z "$cm_lib" ]; then CM_WHY="rping is not installed on the host (rdmacm-utils) or links no librdmacm.so.1"
  elif case $(readlink -f "$cm_lib") in /lib/*|/lib64/*|/usr/lib/*|/usr/lib64/*) true ;; *) false ;; esac; then
    CM_WHY="$DVERBS_RUN puts no librdmacm.so.1 drop-in first (rping would load the system's $cm_lib)"
  else note "cm cases: dverbs side loads $cm_lib; VM rdma_cm $VM_RDMA_CM"; fi
  [ -n "$CM_WHY" ] && say "cm cases skipped: $CM_WHY"
fi

# ------------------------------------------------------------------------------------------
# The tap as dverbs may change it.
iface_state() {
  local l a
  l=$(ip -n "$NS" -d -o link show "$TAP" 2>/dev/null) || { echo "missing"; return; }
  a=$(ip -n "$NS" -o -4 addr show dev "$TAP" | awk '{ print $4 }' | sort | tr '\n' ' ')
  echo "$l" | sed -E 's/.*<([^>]*)>.* mtu ([0-9]+).*link\/ether ([0-9a-f:]+).* promiscuity ([0-9]+).* allmulti ([0-9]+).*/flags=\1 mtu=\2 mac=\3 promiscuity=\4 allmulti=\5/' |
    tr '\n' ' '
  echo "addr=${a% }"
}
IFACE_CHANGES=()
restore_iface() {  # restore_iface "STATE": put MAC, MTU, PROMISC back as recorded
  local mac mtu
  mac=$(sed -E 's/.*mac=([0-9a-f:]+).*/\1/' <<<"$1")
  mtu=$(sed -E 's/.*mtu=([0-9]+).*/\1/' <<<"$1")
  ip -n "$NS" link set "$TAP" address "$mac" mtu "$mtu" 2>/dev/null
  case "$1" in *PROMISC*) ip -n "$NS" link set "$TAP" promisc on ;;
               *) ip -n "$NS" link set "$TAP" promisc off ;; esac
}

# ------------------------------------------------------------------------------------------
# One run: CASE in ROLE. Sets RUN_STATUS (PASS/FAIL/SKIP) and RUN_MSG.
# VM side script (a job): optional loss, tcpdump on eth0, the program, the capture back.
# LISTEN: how a server is seen listening, tcp (its side channel, TCP_PORT) or cm (an
# rdma_cm identifier in state LISTEN); APPEND: what the client gets as its last argument
# (the server's address for the side channel), - for nothing.
vm_side_script() {  # ID ROLE(server|client) TIMEOUT LOSS PCAPNAME LISTEN APPEND PROGRAM-AND-ARGS...
  local id=$1 vrole=$2 limit=$3 loss=$4 pcap=$5 listen=$6 append=$7
  shift 7
  [ "$append" = - ] && append=""
  local cmd
  cmd=$(printf '%q ' "$@")
  cat <<EOF
set -u
out=\$H/jobs/$id
tc_off() { tc qdisc del dev eth0 root 2>/dev/null; tc qdisc del dev eth0 ingress 2>/dev/null; }
if [ $loss = 1 ]; then
  tc qdisc add dev eth0 root netem loss 2% ||
    { echo "SETUP: tc qdisc add dev eth0 root netem loss 2% failed"; exit 90; }
  tc qdisc add dev eth0 ingress &&
    tc filter add dev eth0 parent ffff: matchall action gact pass random netrand drop 50 ||
    { echo "SETUP: 2 % ingress drop (matchall + gact) failed"; tc_off; exit 90; }
  tc -s qdisc show dev eth0 >\$out.tc-before 2>&1
fi
tcpdump -i eth0 -n -s 0 -B 32768 -w /tmp/$id.pcap 2>/tmp/$id.td & td=\$!
for _ in \$(seq 100); do grep -q "listening on" /tmp/$id.td && break; sleep 0.1; done
grep -q "listening on" /tmp/$id.td || echo "SETUP: tcpdump did not start"
listening() {  # tcp: TCP port $TCP_PORT in LISTEN (0A), IPv4 or IPv6, without forking
  local f sl l r st rest
  if [ $listen = cm ]; then  # the kernel's rdma_cm: rdma resource show cm_id
    sleep 0.2
    rdma resource show cm_id 2>/dev/null | grep -q 'state LISTEN'
    return
  fi
  for f in /proc/net/tcp /proc/net/tcp6; do
    while read -r sl l r st rest; do
      [ "\$st" = 0A ] && [ "\${l##*:}" = $(printf '%04X' $TCP_PORT) ] && return 0
    done <\$f
  done
  return 1
}
if [ $vrole = server ]; then
  nice -n $VM_NICE timeout -k 5 $limit $cmd >\$out.prog 2>&1 & p=\$!
  echo \$p >\$out.progpid
  while kill -0 \$p 2>/dev/null; do
    if listening; then : >\$out.listening; break; fi
    sleep 0.1
  done
else
  nice -n $VM_NICE timeout -k 5 $limit $cmd $append >\$out.prog 2>&1 & p=\$!
  echo \$p >\$out.progpid
fi
wait \$p; rc=\$?
dmesg -c >\$out.dmesg 2>&1  # the kernel's messages of this run (agent.sh cleared the boot's)
# Under TCG tcpdump lags behind: let it drain the socket (the file stops growing) first.
last=-1
for _ in \$(seq 20); do
  sleep 1
  size=\$(stat -c %s /tmp/$id.pcap 2>/dev/null || echo 0)
  [ "\$size" = "\$last" ] && break
  last=\$size
done
kill -INT \$td; wait \$td
cat /tmp/$id.td >\$out.tcpdump
cp /tmp/$id.pcap \$H/out/$pcap && rm -f /tmp/$id.pcap
if [ $loss = 1 ]; then tc -s qdisc show dev eth0 >\$out.tc 2>&1; tc -s filter show dev eth0 ingress >>\$out.tc 2>&1; tc_off; fi
exit \$rc
EOF
}

first_error() {  # the most telling line of a program's output
  local l
  l=$(grep -m1 '^FAIL' "$1" 2>/dev/null ||
      grep -v '^PASS' "$1" 2>/dev/null |
        grep -m1 -iE "error|fail|couldn't|could not|can't|cannot|unable|timed? ?out|invalid|unexpected|refused|exceed|conflict|abort" ||
      grep -v '^[[:space:]-]*$' "$1" 2>/dev/null | tail -1)
  echo "${l:-(no output)}"
}
# tx_dropped counts transmit attempts the tap refused while its queue was full; AF_PACKET
# keeps such a frame in its TX ring and tries it again at the next send, so it is a measure
# of back-pressure (frames queued in front of the guest), not of frames lost.
tap_stats() {  # "rx_packets rx_dropped tx_packets tx_dropped" of the tap (tx: toward the VM)
  local d=/sys/class/net/$TAP/statistics
  nsx cat $d/rx_packets $d/rx_dropped $d/tx_packets $d/tx_dropped 2>/dev/null | tr '\n' ' '
}

known_note() {  # CASE ROLE
  local k
  for k in "${KNOWN[@]}"; do
    local r c n
    r=$(field "$k" 0) c=$(field "$k" 1) n=$(field "$k" 2)
    # shellcheck disable=SC2053
    [[ $2 == $r ]] && [[ $1 == $c ]] && { echo "$n"; return; }
  done
}

RUN_STATUS="" RUN_MSG=""
run_once() {  # CASE ROLE ATTEMPT-DIR
  local name=$1 role=$2 dir=$3 spec=""
  local c
  for c in "${CASES[@]}"; do [ "$(field "$c" 0)" = "$name" ] && spec=$c; done
  local tags limit prog expect expect_c prog_c
  tags=$(field "$spec" 1) limit=$(field "$spec" 2) prog=$(field "$spec" 3)
  expect=$(field "$spec" 4) expect_c=$(field "$spec" 5) prog_c=$(field "$spec" 6)
  local listen=tcp
  case ",$tags," in *,cm,*) listen=cm ;; esac
  local loss=0 fault=off
  case ",$tags," in *,loss,*) loss=1; fault="loss=0.02,seed=$((RANDOM + 1))" ;; esac
  local dv_cmd vm_cmd
  # @RXE_A@: rxe 6.1 raises no IBV_EVENT_QP_ACCESS_ERR on its responder (docs/INTEROP.md,
  # known (3)), so peer's -A makes that one check a warning on the rxe side only.
  dv_cmd=${prog//@DEV@/dverbs0}; dv_cmd=${dv_cmd//@GID@/0}; dv_cmd=${dv_cmd//@PEER@/$PEER}
  dv_cmd=${dv_cmd//@RXE_A@ /}
  vm_cmd=${prog//@DEV@/rxe0}; vm_cmd=${vm_cmd//@GID@/$GID_INDEX}; vm_cmd=${vm_cmd//@PEER@//host/peer}
  vm_cmd=${vm_cmd//@RXE_A@/-A}
  mkdir -p "$dir"
  local tag=$name.$role.${dir##*/}
  local vrole=client dv_server=1
  [ "$role" = rxe-server ] && { vrole=server; dv_server=0; }
  # With a client program of its own, each side runs its role's command, @SERVER@ is the
  # server's RoCE address, and the client gets nothing appended.
  local dv_append=$VM_IP vm_append=$HOST_IP
  if [ -n "$prog_c" ]; then
    local srv=$DV_IP
    [ $dv_server = 0 ] && srv=$VM_IP
    dv_append="" vm_append=-
    if [ $dv_server = 1 ]; then vm_cmd=${prog_c//@DEV@/rxe0}; vm_cmd=${vm_cmd//@GID@/$GID_INDEX}
    else dv_cmd=${prog_c//@DEV@/dverbs0}; dv_cmd=${dv_cmd//@GID@/0}; fi
    dv_cmd=${dv_cmd//@SERVER@/$srv} vm_cmd=${vm_cmd//@SERVER@/$srv}
  fi
  # rdmacm-utils print with stdio to a file: fully buffered, so a hung program ended by
  # timeout(1) would leave no output. Line-buffered, its output shows where it stopped.
  if [ $listen = cm ]; then dv_cmd="stdbuf -oL $dv_cmd" vm_cmd="stdbuf -oL $vm_cmd"; fi

  local before during="" after stats0 stats1
  before=$(iface_state)
  stats0=$(tap_stats)
  echo "$before" >"$dir/iface.before"
  {
    echo "case $name, role $role: dverbs $([ $dv_server = 1 ] && echo server || echo client)," \
      "rxe $vrole; faults: dverbs $fault, VM $([ $loss = 1 ] && echo 'netem loss 2% egress + 2% ingress drop' || echo none)"
    echo "dverbs: $dv_cmd $([ $dv_server = 0 ] && echo "$dv_append")"
    echo "rxe:    $vm_cmd $([ $dv_server = 1 ] && [ "$vm_append" != - ] && echo "$vm_append")"
  } >"$dir/commands"

  local dv_pid="" vm_job_id rc_dv=255 rc_vm=255 why=()
  # shellcheck disable=SC2086
  start_dverbs() {
    nsx nice -n "$NICE" timeout -k 5 "$limit" "$DVERBS_RUN" --port "$DV_PORT" --ip "$DV_IP/$PREFIX" \
      --mac "$DV_MAC" --lcores 0 --fault "$fault" --pcap "$dir/dverbs.pcapng" -- \
      $dv_cmd "$@" >"$dir/dverbs.out" 2>&1 </dev/null &
    dv_pid=$!
    HOST_PIDS+=("$dv_pid")
  }
  local vm_script
  # shellcheck disable=SC2086
  vm_script=$(vm_side_script "j$((JOBN + 1))" "$vrole" "$limit" "$loss" "$tag.pcap" "$listen" \
    "$vm_append" $vm_cmd)
  if [ $dv_server = 1 ]; then
    start_dverbs
    local i
    if [ $listen = cm ]; then
      # dverbs' rdma_cm listens in user space, out of the kernel's sight. The drop-in opens
      # its device (the tap's promiscuity goes up: dverbs' PACKET_MR_PROMISC) at
      # rdma_create_event_channel, and bind and listen follow without blocking: a second
      # after that, the server listens (a REQ before then gets a REJ, invalid service ID).
      local p0
      p0=$(sed -E 's/.*promiscuity=([0-9]+).*/\1/' <<<"$before")
      for i in $(seq 600); do
        [ "$(sed -E 's/.*promiscuity=([0-9]+).*/\1/' <<<"$(iface_state)")" -gt "$p0" ] 2>/dev/null && break
        [ "$(nsx awk 'NR > 1' /proc/net/packet 2>/dev/null | wc -l)" -gt 0 ] && break
        kill -0 "$dv_pid" 2>/dev/null || break
        sleep 0.1
      done
      sleep 1
    else
      for i in $(seq 600); do
        nsx ss -Htln "sport = :$TCP_PORT" 2>/dev/null | grep -q . && break
        kill -0 "$dv_pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
    during=$(iface_state)
    vm_job "$vm_script"; vm_job_id=$JOB
  else
    vm_job "$vm_script"; vm_job_id=$JOB
    local end=$((SECONDS + 90))
    while [ ! -e "$SHARE/jobs/$vm_job_id.listening" ] && [ ! -e "$SHARE/jobs/$vm_job_id.rc" ] &&
          [ $SECONDS -lt $end ] && vm_alive; do sleep 0.1; done
    if [ -e "$SHARE/jobs/$vm_job_id.listening" ]; then
      # shellcheck disable=SC2086
      start_dverbs $dv_append
      sleep 1
      during=$(iface_state)
    elif [ $listen = cm ]; then
      why+=("rxe server never listened (no rdma_cm identifier in state LISTEN)")
    else
      why+=("rxe server never listened on TCP $TCP_PORT")
    fi
  fi
  # Both ends are bounded by timeout(1). Once one side has failed, the other (typically a
  # server waiting for what will not come) gets GRACE seconds to end, then is ended.
  local grace=20 t_fail="" dv_done=0 vm_done=0 ended_dv=0 ended_vm=0
  local end=$((SECONDS + limit + 60))
  [ -z "$dv_pid" ] && dv_done=1
  while :; do
    if [ $dv_done = 0 ] && ! kill -0 "$dv_pid" 2>/dev/null; then
      wait "$dv_pid"; rc_dv=$?; dv_done=1; HOST_PIDS=()
      [ "$rc_dv" != 0 ] && [ -z "$t_fail" ] && t_fail=$SECONDS
    fi
    if [ $vm_done = 0 ] && [ -e "$SHARE/jobs/$vm_job_id.rc" ]; then
      rc_vm=$(cat "$SHARE/jobs/$vm_job_id.rc"); vm_done=1
      [ "$rc_vm" != 0 ] && [ -z "$t_fail" ] && t_fail=$SECONDS
    fi
    [ $dv_done = 1 ] && [ $vm_done = 1 ] && break
    local give_up=""
    if ! vm_alive; then
      why+=("the VM died (console: $out/console.log)"); give_up=vm
    elif [ $SECONDS -ge $end ]; then
      why+=("not ended within $((limit + 60)) s"); give_up=time
    elif [ -n "$t_fail" ] && [ $((SECONDS - t_fail)) -ge $grace ]; then
      give_up=peer
    fi
    if [ -n "$give_up" ]; then
      if [ $dv_done = 0 ]; then
        kill -TERM "$dv_pid" 2>/dev/null
        wait "$dv_pid"; rc_dv=$?; dv_done=1; HOST_PIDS=(); ended_dv=1
      fi
      if [ $vm_done = 0 ] && [ "$give_up" != vm ]; then
        vm_end_program "$vm_job_id"
        [ -e "$SHARE/jobs/$vm_job_id.rc" ] && rc_vm=$(cat "$SHARE/jobs/$vm_job_id.rc")
        ended_vm=1
      fi
      break
    fi
    sleep 0.2
  done
  after=$(iface_state)
  stats1=$(tap_stats)
  local s0 s1
  read -r -a s0 <<<"$stats0"
  read -r -a s1 <<<"$stats1"
  local tap_to_vm=$((s1[2] - s0[2])) tap_drop=$((s1[3] - s0[3])) tap_from_vm=$((s1[0] - s0[0]))
  echo "frames toward the VM $tap_to_vm, transmit attempts refused by the tap (queue of $TAP_QLEN full) $tap_drop; from the VM $tap_from_vm" >"$dir/tap-stats"
  echo "$during" >"$dir/iface.during"
  echo "$after" >"$dir/iface.after"
  cp "$SHARE/jobs/$vm_job_id.prog" "$dir/rxe.out" 2>/dev/null || : >"$dir/rxe.out"
  cp "$SHARE/jobs/$vm_job_id.out" "$dir/rxe-job.out" 2>/dev/null
  cp "$SHARE/jobs/$vm_job_id.tcpdump" "$dir/rxe-tcpdump.txt" 2>/dev/null
  cp "$SHARE/jobs/$vm_job_id.tc" "$dir/rxe-tc.txt" 2>/dev/null
  [ -s "$SHARE/jobs/$vm_job_id.dmesg" ] && cp "$SHARE/jobs/$vm_job_id.dmesg" "$dir/rxe-dmesg.txt"
  mv "$SHARE/out/$tag.pcap" "$dir/rxe.pcap" 2>/dev/null

  if [ "$before" != "$after" ]; then
    IFACE_CHANGES+=("$name/$role: $TAP was '$before', left '$after'")
    restore_iface "$before"
  fi
  # While it runs, dverbs may hold a PACKET_MR_PROMISC membership (its own MAC differs from
  # the tap's): the promiscuity count is expected to rise then, and nothing else to change.
  if [ -n "$during" ] && [ "$(sed -E 's/ promiscuity=[0-9]+//' <<<"$before")" != \
                           "$(sed -E 's/ promiscuity=[0-9]+//' <<<"$during")" ]; then
    echo "$name/$role: $TAP while dverbs ran: '$during' (before: '$before')" >>"$out/iface-during.txt"
  fi

  local dv_role=server rxe_role=client
  [ $dv_server = 0 ] && { dv_role=client; rxe_role=server; }
  describe_rc() {  # WHO RC FILE [RAN: 1 if its exit status was collected]
    case $2 in
      0) ;;
      124|137) why+=("$1 killed by timeout after $limit s (hang); $(first_error "$3")") ;;
      90) why+=("$1 setup: $(grep -m1 SETUP "$dir/rxe-job.out")") ;;
      255) if [ "${4:-0}" = 1 ]; then why+=("$1 exit 255: $(first_error "$3")")  # rping's -1
           else [ "$1" = "dverbs $dv_role" ] && [ -z "$dv_pid" ] || why+=("$1 did not run"); fi ;;
      *) why+=("$1 exit $2: $(first_error "$3")") ;;
    esac
  }
  if [ $ended_dv = 1 ]; then
    why+=("dverbs $dv_role still running $grace s after the rxe side failed: ended; $(first_error "$dir/dverbs.out")")
  else
    describe_rc "dverbs $dv_role" "$rc_dv" "$dir/dverbs.out" "$([ -n "$dv_pid" ] && echo 1)"
  fi
  if [ $ended_vm = 1 ]; then
    why+=("rxe $rxe_role still running $grace s after the dverbs side failed: ended; $(first_error "$dir/rxe.out")")
  else
    describe_rc "rxe $rxe_role" "$rc_vm" "$dir/rxe.out" "$([ -e "$SHARE/jobs/$vm_job_id.rc" ] && echo 1)"
  fi
  if [ -n "$expect" ]; then
    grep -Eq -- "$expect" "$dir/dverbs.out" || why+=("dverbs output lacks /$expect/")
    grep -Eq -- "$expect" "$dir/rxe.out" || why+=("rxe output lacks /$expect/")
  fi
  if [ -n "$expect_c" ]; then
    local cf=$dir/rxe.out
    [ $dv_server = 0 ] && cf=$dir/dverbs.out
    grep -Eq -- "$expect_c" "$cf" || why+=("client ($([ $dv_server = 0 ] && echo dverbs || echo rxe)) output lacks /$expect_c/")
  fi
  case ",$tags," in *,peer,*)
    local s
    for s in dverbs rxe; do
      grep -q "^FAIL" "$dir/$s.out" && why+=("$s: $(grep -m1 '^FAIL' "$dir/$s.out")")
    done ;;
  esac
  [ ${#why[@]} != 0 ] && [ "$tap_drop" -gt 0 ] &&
    why+=("back-pressure: the tap refused $tap_drop transmit attempts toward the VM, its queue of $TAP_QLEN being full ($tap_to_vm frames passed)")
  if [ ${#why[@]} = 0 ]; then RUN_STATUS=PASS RUN_MSG=""
  else
    RUN_STATUS=FAIL
    RUN_MSG=$(join "${why[@]}")
  fi
  {
    cat "$dir/commands"
    echo "--- dverbs ($dv_role): exit $rc_dv"; cat "$dir/dverbs.out"
    echo "--- rxe ($rxe_role): exit $rc_vm"; cat "$dir/rxe.out"
    echo "--- $RUN_STATUS $RUN_MSG"
  } >"$dir/result.txt"
}

R_NAME=() R_ROLE=() R_STATUS=() R_TIME=() R_MSG=() R_DIR=()
run_case() {  # CASE ROLE
  local name=$1 role=$2 tags="" c t0=$SECONDS
  for c in "${CASES[@]}"; do [ "$(field "$c" 0)" = "$name" ] && tags=$(field "$c" 1); done
  local base=$out/runs/$name/$role
  if ! vm_alive; then
    RUN_STATUS=FAIL RUN_MSG="the VM is down (console: $out/console.log)"
  elif case ",$tags," in *,peer,*) [ -z "$PEER" ] ;; *) false ;; esac; then
    RUN_STATUS=SKIP RUN_MSG=$PEER_WHY
  elif case ",$tags," in *,cm,*) [ -n "$CM_WHY" ] ;; *) false ;; esac; then
    RUN_STATUS=SKIP RUN_MSG=$CM_WHY
  else
    # Loss: ibv_rc_pingpong ends without a final handshake, so a lost last ACK after the
    # peer exited cannot be recovered (tests/e2e/ibverbs_pair.sh --attempts); perftest may
    # fail to calibrate its clock on a loaded machine ("Can't produce a report"). Either
    # earns one more attempt, and the result says so.
    local attempts=1 a=1 dir first_msg="" extra=0
    case ",$tags," in *,loss,*) attempts=2 ;; esac
    while :; do
      dir=$base/attempt$a
      run_once "$name" "$role" "$dir"
      [ "$RUN_STATUS" = PASS ] && break
      if [ $a -eq $attempts ] && [ $extra = 0 ] &&
         grep -qs "Can't produce a report" "$dir/dverbs.out" "$dir/rxe.out"; then
        attempts=$((attempts + 1)) extra=1
      fi
      [ $a -ge $attempts ] && break
      say "  $name/$role attempt $a failed: $RUN_MSG; trying again"
      [ -z "$first_msg" ] && first_msg=${RUN_MSG:0:240}
      a=$((a + 1))
    done
    [ $a -gt 1 ] && RUN_MSG="attempt $a of $attempts${RUN_MSG:+: $RUN_MSG} (attempt 1: $first_msg)"
    ln -sfn "attempt$a" "$base/last"
  fi
  local secs=$((SECONDS - t0))
  R_NAME+=("$name") R_ROLE+=("$role") R_STATUS+=("$RUN_STATUS") R_TIME+=("$secs")
  R_MSG+=("$RUN_MSG") R_DIR+=("$base/last")
  local hint=""
  [ "$RUN_STATUS" = FAIL ] && hint=$(known_note "$name" "$role")
  say "$RUN_STATUS $name/$role (${secs} s)${RUN_MSG:+: $RUN_MSG}${hint:+ [known: $hint]}"
}

say "host load before the cases: $(cut -d' ' -f1-3 /proc/loadavg); qemu and dverbs at nice $NICE"
say "running ${#runs[@]} runs (dverbs $DVERBS_RUN on $DV_PORT, $DV_IP $DV_MAC; rxe0 $VM_IP)"
T_CASES0=$SECONDS
for x in "${runs[@]}"; do
  # shellcheck disable=SC2086
  run_case $x
done
T_CASES=$((SECONDS - T_CASES0))
say "host load after the cases: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$keep" = 1 ]; then
  cat >"$out/vm-exec" <<EOF
#!/bin/bash
# Runs a command in the interop VM and prints its output: $out/vm-exec 'CMD'
n=k\$\$.\$RANDOM
printf '%s\n' "\$*" >"$SHARE/jobs/\$n.sh.tmp"; mv "$SHARE/jobs/\$n.sh.tmp" "$SHARE/jobs/\$n.sh"
while [ ! -e "$SHARE/jobs/\$n.rc" ]; do sleep 0.1; done
cat "$SHARE/jobs/\$n.out"; exit "\$(cat "$SHARE/jobs/\$n.rc")"
EOF
  chmod +x "$out/vm-exec"
  say "--keep: the VM stays up until Ctrl-C (or until it powers off)."
  say "  in the VM:   $out/vm-exec 'ibv_devinfo -v'"
  say "  on the host: ip netns exec $NS $DVERBS_RUN --port $DV_PORT --ip $DV_IP/$PREFIX --mac $DV_MAC --lcores 0 -- ibv_devinfo"
  say "  console:     $out/console.log"
  say "  Ctrl-C ends the wait; the captures are then checked and the results printed."
  keep_stop=0
  trap 'keep_stop=1' INT
  while vm_alive && [ $keep_stop = 0 ]; do sleep 1; done
  trap 'echo "rxe.sh: interrupted" >&2; exit 130' INT
fi

# Power the VM off (it has nothing to save: its disk is a snapshot), then tear down.
vm_job "sync; echo o >/proc/sysrq-trigger"
for _ in $(seq 100); do vm_alive || break; sleep 0.2; done
teardown
ROOT_LINKS_AFTER=$(root_links)

# ------------------------------------------------------------------------------------------
# Captures: every run's two captures must decode as RoCEv2 (InfiniBand) with nothing
# malformed, no expert error, and a correct ICRC and checksums on every RoCEv2 frame.
P_NAME=() P_STATUS=() P_MSG=()
have_tshark=1
command -v tshark >/dev/null || have_tshark=0
PY=$(command -v python3 || true)
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
# The payload of SENDs and WRITEs is application data: Wireshark's heuristic dissectors of
# protocols over InfiniBand (RPC-over-RDMA, EoIB's ethertype guess, SDP, iSER...) take
# random bytes for their headers and flag "malformed" frames whose RoCE framing is fine.
# They are turned off (by the names this tshark knows); the RoCE headers are still checked.
TSHARK_OPTS=()
if [ $have_tshark = 1 ]; then
  for h in eth_over_ib mellanox_eoib fc_infiniband iser_infiniband lnet_ib rpcrdma_infiniband \
           sdp_infiniband smb_direct_infiniband smcr_infiniband nvme_rdma drbd_rdma; do
    tshark -r /dev/null --disable-heuristic "$h" 2>&1 | grep -q "No such" ||
      TSHARK_OPTS+=(--disable-heuristic "$h")
  done
fi
# CM: the run is a cm case, whose captures must also hold CM MADs (management class 7 on
# QP1, dissected by tshark as such); their attributes are counted in CAP_MSG, REJs with
# their reason.
check_capture() {  # FILE [CM] -> CAP_MSG; 0 good, 1 bad, 2 no RoCE frames
  local f=$1 want_cm=${2:-0} tsv err
  tsv=$(mktemp) err=$(mktemp)
  CAP_MSG=""
  if ! tshark -n -r "$f" "${TSHARK_OPTS[@]}" -T fields -e frame.number -e udp.dstport \
        -e infiniband.bth.opcode -e _ws.malformed -e _ws.expert.severity \
        -e infiniband.mad.mgmtclass -e infiniband.mad.attributeid -e infiniband.cm.rej.reason \
        >"$tsv" 2>"$err"; then
    CAP_MSG="tshark cannot read it: $(grep -v 'Running as user' "$err" | head -1)"
    rm -f "$tsv" "$err"; return 1
  fi
  local counts cm_list
  counts=$(awk -F'\t' '
    function num(x,   i, v, d) {  # tshark prints these fields in hex (0x…) or decimal
      if (x !~ /^0[xX]/) return x + 0
      v = 0
      for (i = 3; i <= length(x); i++) {
        d = index("0123456789abcdef", tolower(substr(x, i, 1))) - 1
        v = v * 16 + d
      }
      return v
    }
    BEGIN { split("REQ MRA REJ REP RTU DREQ DREP SIDR_REQ SIDR_REP LAP APR", nm, " ") }
    { sev = 0; n = split($5, s, ","); for (i = 1; i <= n; i++) if (s[i] + 0 > sev) sev = s[i] + 0 }
    $2 ~ /(^|,)4791(,|$)/ { roce++; if ($3 != "") ib++ }
    $4 != "" { mal++; if (!m) m = $1 }
    sev >= 8388608 { errs++; if (!e) e = $1 }
    $6 != "" && num($6) == 7 {
      cm++; a = num($7)
      k = (a >= 16 && a <= 26) ? nm[a - 15] : sprintf("attribute 0x%04x", a)
      if (k == "REJ" && $8 != "") k = "REJ (reason " num($8) ")"
      if (!(k in cnt)) order[++no] = k
      cnt[k]++
    }
    END {
      printf "%d %d %d %d %d %d %d\n", roce, ib, mal, errs, m, e, cm
      for (i = 1; i <= no; i++) printf "%s%d %s", (i > 1 ? ", " : ""), cnt[order[i]], order[i]
      printf "\n"
    }' "$tsv")
  rm -f "$tsv" "$err"
  local roce ib mal errs m e cm
  read -r roce ib mal errs m e cm <<<"$(head -1 <<<"$counts")"
  cm_list=$(sed -n 2p <<<"$counts")
  local icrc=""
  if [ -n "$PY" ]; then
    icrc=$("$PY" "$here/roce_check.py" "$f" 2>&1)
    local icrc_rc=$?
  fi
  CAP_MSG="$roce RoCEv2, $ib InfiniBand, $mal malformed, $errs expert errors"
  [ "$mal" != 0 ] && CAP_MSG="$CAP_MSG (first malformed: frame $m)"
  [ "$errs" != 0 ] && CAP_MSG="$CAP_MSG (first error: frame $e)"
  [ "$want_cm" = 1 ] || [ "$cm" != 0 ] && CAP_MSG="$CAP_MSG, $cm CM MADs${cm_list:+ ($cm_list)}"
  if [ -n "$PY" ]; then
    local bad
    bad=$(head -1 <<<"$icrc" | sed -E 's/.*RoCEv2, //')
    CAP_MSG="$CAP_MSG, $bad"
    [ "$icrc_rc" = 1 ] && [ "$roce" != 0 ] && CAP_MSG="$CAP_MSG; $(sed -n 2p <<<"$icrc" | sed 's/^ *//')"
    [ "$icrc_rc" = 2 ] && { CAP_MSG="$CAP_MSG; roce_check.py: $icrc"; return 1; }
  else
    CAP_MSG="$CAP_MSG, ICRC not checked (no python3)"
  fi
  [ "$roce" = 0 ] && return 2
  [ "$want_cm" = 1 ] && [ "$cm" = 0 ] && { CAP_MSG="$CAP_MSG; no CM MAD"; return 1; }
  [ "$ib" = "$roce" ] && [ "$mal" = 0 ] && [ "$errs" = 0 ] && { [ -z "$PY" ] || [ "$icrc_rc" = 0 ]; } &&
    return 0
  return 1
}
if [ ${#R_NAME[@]} -gt 0 ]; then
  for i in "${!R_NAME[@]}"; do
    pname="pcap ${R_NAME[$i]}/${R_ROLE[$i]}"
    d=${R_DIR[$i]}
    if [ "${R_STATUS[$i]}" = SKIP ]; then continue; fi
    if [ $have_tshark = 0 ]; then
      P_NAME+=("$pname") P_STATUS+=(SKIP) P_MSG+=("tshark is not installed"); continue
    fi
    st=PASS msgs=()
    none=0
    for side in dverbs rxe; do
      f=$d/$side.pcapng
      [ $side = rxe ] && f=$d/rxe.pcap
      if [ ! -s "$f" ]; then
        msgs+=("$side: no capture"); none=$((none + 1)); continue
      fi
      want_cm=0
      for c in "${CASES[@]}"; do
        [ "$(field "$c" 0)" = "${R_NAME[$i]}" ] && case ",$(field "$c" 1)," in *,cm,*) want_cm=1 ;; esac
      done
      check_capture "$f" "$want_cm"
      case $? in
        0) msgs+=("$side: $CAP_MSG") ;;
        1) st=FAIL; msgs+=("$side: $CAP_MSG") ;;
        2) none=$((none + 1)); msgs+=("$side: no RoCEv2 frames") ;;
      esac
    done
    if [ $none -gt 0 ] && [ $st = PASS ]; then
      # No frames is expected only of a run that failed before sending any.
      if [ "${R_STATUS[$i]}" = FAIL ]; then st=SKIP; else st=FAIL; fi
    fi
    m=$(join "${msgs[@]}")
    P_NAME+=("$pname") P_STATUS+=("$st") P_MSG+=("$m")
    say "$st $pname: $m"
  done
fi

# ------------------------------------------------------------------------------------------
# Host interfaces: the tap after every dverbs run, and the root namespace's links after
# the teardown (no tap, namespace or address left behind).
if [ "$ROOT_LINKS_BEFORE" != "$ROOT_LINKS_AFTER" ]; then
  IFACE_CHANGES+=("root namespace links changed: $(diff <(echo "$ROOT_LINKS_BEFORE") <(echo "$ROOT_LINKS_AFTER") | grep '^[<>]' | tr '\n' ' ')")
fi
ip netns list 2>/dev/null | grep -q "^$NS\b" && IFACE_CHANGES+=("namespace $NS still exists")
if [ ${#IFACE_CHANGES[@]} = 0 ]; then
  IF_STATUS=PASS IF_MSG="$TAP unchanged after each of ${#R_NAME[@]} dverbs runs; root namespace unchanged"
else
  IF_STATUS=FAIL
  IF_MSG=$(join "${IFACE_CHANGES[@]}")
fi
[ -s "$out/iface-during.txt" ] &&
  IF_MSG="$IF_MSG (while dverbs ran: $(wc -l <"$out/iface-during.txt") runs changed it, see $out/iface-during.txt)"
say "$IF_STATUS host_interfaces: $IF_MSG"

# ------------------------------------------------------------------------------------------
# Summary.
T_TOTAL=$((SECONDS - t_start))
{
  echo
  echo "rxe interop results: VM kernel $VM_KERNEL (rxe), dverbs $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$(git -C "$repo" diff --quiet 2>/dev/null || echo '+dirty'), host $(uname -r)"
  printf '%-18s %-16s %-16s\n' CASE dverbs-server rxe-server
  declare -A cell
  for i in "${!R_NAME[@]}"; do cell["${R_NAME[$i]}|${R_ROLE[$i]}"]="${R_STATUS[$i]} ${R_TIME[$i]}s"; done
  seen=""
  for i in "${!R_NAME[@]}"; do
    n=${R_NAME[$i]}
    case " $seen " in *" $n "*) continue ;; esac
    seen="$seen $n"
    printf '%-18s %-16s %-16s\n' "$n" "${cell["$n|dverbs-server"]:--}" "${cell["$n|rxe-server"]:--}"
  done
  fails=0
  for i in "${!R_NAME[@]}"; do
    [ "${R_STATUS[$i]}" = FAIL ] && { [ $fails = 0 ] && echo "failures:"; fails=1
      k=$(known_note "${R_NAME[$i]}" "${R_ROLE[$i]}")
      echo "  ${R_NAME[$i]}/${R_ROLE[$i]}: ${R_MSG[$i]}${k:+ [known: $k]}"; }
  done
  for i in "${!P_NAME[@]}"; do
    [ "${P_STATUS[$i]}" = FAIL ] && { [ $fails = 0 ] && echo "failures:"; fails=1
      echo "  ${P_NAME[$i]}: ${P_MSG[$i]}"; }
  done
  [ "$IF_STATUS" = FAIL ] && echo "  host_interfaces: $IF_MSG"
  echo "timings: image $T_IMAGE s (cached unless rebuilt), boot $T_BOOT s, cases $T_CASES s, total $T_TOTAL s"
  echo "logs and captures: $out"
} | tee -a "$LOG"
passed=0 failed=0 skipped=0
for s in "${R_STATUS[@]}" "${P_STATUS[@]}" "$IF_STATUS"; do
  case $s in PASS) passed=$((passed + 1)) ;; FAIL) failed=$((failed + 1)) ;; SKIP) skipped=$((skipped + 1)) ;; esac
done
say "$passed passed, $failed failed, $skipped skipped"
[ $failed = 0 ]
