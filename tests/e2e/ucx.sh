#!/usr/bin/env bash
# UCX (Debian ucx-utils, 1.13) on dverbs, through the libibverbs drop-in.
#
#   ucx.sh DVERBS_RUN MODE info
#       ucx_info -d lists the dverbs0 memory domain with rc_verbs and ud_verbs on dverbs0:1.
#   ucx.sh DVERBS_RUN MODE perftest TL [ITERS]
#       ucx_perftest -d dverbs0:1 -x TL -t am_lat between two processes over memif: the
#       client's "Final:" line must count ITERS (default 1000) iterations.
#
#   MODE  embedded  each process drives its memif port itself (DVERBS_LCORES=0)
#         daemon    each process is a client of a dverbsd of its own that owns the port
#
# ucx_perftest's server (no host name) and client (the server's host name) exchange their
# addresses over TCP first (-p PORT), and only then open the device. In embedded mode the
# memif connection is therefore made while both processes start their ports: the TCP
# client, which goes on first, is the memif server (see docs/UCX.md for what dverbs does
# when the memif client is refused because the server's port is not started yet). If the
# memif client still finds no listener at all (it started its port first), the memif PMD
# gives up at once ("Failed to connect socket"): that run gets one more attempt.
#
# UCX lists a verbs device only when /dev/infiniband/uverbsN exists; dverbs-run publishes
# it in a mount namespace of the program's own when run as root (apps/dev_nodes.cc).
#
# Exit status: 0 pass, 1 fail, 77 skip. Every process runs under timeout(1).
set -u

run=$1 mode=$2 check=$3
tl=${4:-rc_verbs} iters=${5:-1000}
limit=90

for prog in ucx_info ucx_perftest; do
  if ! command -v "$prog" >/dev/null 2>&1; then
    echo "SKIP: $prog is not installed (scripts/test installs ucx-utils)"
    exit 77
  fi
done
if [ ! -c /dev/infiniband/uverbs0 ] && [ "$(id -u)" != 0 ]; then
  echo "SKIP: UCX lists a verbs device only if /dev/infiniband/uverbs0 exists, and" \
    "dverbs-run publishes it only as root"
  exit 77
fi

# A sanitizer build's dverbs-run preloads the runtime; UCX's memory-event hooks (UCM patches
# mmap/munmap/brk) then crash in it: `LD_PRELOAD=libtsan.so.2 ucx_info -d` segfaults
# without dverbs at all. Those hooks only invalidate UCX's registration cache.
drop_in="$(dirname "$run")/../lib/verbs/ibverbs/libibverbs.so.1"
if ldd "$drop_in" 2>/dev/null | grep -qE 'lib(a|t|ub)san'; then
  export UCX_MEM_EVENTS=no
fi

. "$(dirname "$0")/pair_env.sh"
pair_begin dverbs-ucx
dvd="$(dirname "$run")/dverbsd"

# start_daemon SIDE DEVARGS IP: a dverbsd serving $work/dvd.SIDE on that port.
start_daemon() {
  local dir="$work/dvd.$1"
  mkdir -p "$dir"
  DVERBS_PORT="$2" DVERBS_IP="$3/24" DVERBS_LCORES=0 timeout -k 5 "$limit" "$dvd" \
    --dir "$dir" >"$work/dvd.$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 400); do
    grep -q '^dverbsd: ready' "$work/dvd.$1.log" && return 0
    kill -0 "$!" 2>/dev/null || break
    sleep 0.05
  done
  echo "FAIL: dverbsd $1 did not start"; cat "$work/dvd.$1.log"
  return 1
}

# side NAME DEVARGS IP CMD...: runs CMD through dverbs-run, embedded or as a client of
# the side's daemon, output in $work/NAME.out.
side() {
  local name=$1 dev=$2 ip=$3
  shift 3
  if [ "$mode" = daemon ]; then
    DVERBS_DAEMON="$work/dvd.$name" timeout -k 5 "$limit" "$run" -- "$@" \
      >"$work/$name.out" 2>&1
  else
    timeout -k 5 "$limit" "$run" --port "$dev" --ip "$ip/24" --lcores 0 -- "$@" \
      >"$work/$name.out" 2>&1
  fi
}

# expect FILE REGEX...: every REGEX matches a line of FILE.
expect() {
  local f=$1 e ok=0
  shift
  for e in "$@"; do
    grep -Eq -- "$e" "$f" || { echo "FAIL: $(basename "$f") lacks /$e/"; ok=1; }
  done
  return $ok
}

check_info() {
  if [ "$mode" = daemon ]; then
    start_daemon i "" 10.0.0.1 || return 1
  fi
  side i "" 10.0.0.1 ucx_info -d
  local rc=$?
  echo "=== ucx_info -d ($mode): exit $rc"
  grep -E '^# *(Memory domain|Transport|Device):' "$work/i.out"
  [ $rc = 0 ] || { cat "$work/i.out"; echo "FAIL: ucx_info exited with $rc"; return 1; }
  # The dverbs0 block: its MD line, then the transports until the next MD.
  awk '/^# Memory domain:/ {on = ($4 == "dverbs0")} on' "$work/i.out" >"$work/md.out"
  expect "$work/md.out" '^# Memory domain: dverbs0$' '^# +Component: ib$' \
    '^# +Transport: rc_verbs$' '^# +Transport: ud_verbs$' '^# +Device: dverbs0:1$' \
    '^# +am_short: <= [1-9]' || return 1
  echo PASS
}

free_port() {  # a TCP port nobody uses, below the ephemeral range
  local p
  for _ in $(seq 50); do
    p=$((10000 + RANDOM % 22000))
    ss -Htan "sport = :$p" 2>/dev/null | grep -q . || { port=$p; return 0; }
  done
  echo "FAIL: no free TCP port"
  return 1
}

perftest_once() {
  local sock="$work/memif.$1.sock"
  free_port || return 1
  local srv="net_memif0,role=server,socket=$sock" cli="net_memif0,role=client,socket=$sock"
  local args=(ucx_perftest -d dverbs0:1 -x "$tl" -t am_lat -n "$iters" -p "$port")
  if [ "$mode" = daemon ]; then
    start_daemon a "$srv" 10.0.0.2 && start_daemon b "$cli" 10.0.0.1 || return 1
  fi
  # B: the TCP server, the memif client. A: the TCP client, the memif server.
  side b "$cli" 10.0.0.1 "${args[@]}" &
  local pid_b=$!
  for _ in $(seq 400); do
    ss -Htln "sport = :$port" 2>/dev/null | grep -q . && break
    kill -0 "$pid_b" 2>/dev/null || break
    sleep 0.05
  done
  side a "$srv" 10.0.0.2 "${args[@]}" 127.0.0.1
  local rc_a=$?
  wait "$pid_b"
  local rc_b=$?
  echo "=== ucx_perftest -x $tl -t am_lat -n $iters over memif ($mode)"
  echo "--- A (client): exit $rc_a"; cat "$work/a.out"
  echo "--- B (server): exit $rc_b"; cat "$work/b.out"
  status=0
  [ $rc_a = 0 ] || { echo "FAIL: client exited with $rc_a"; status=1; }
  [ $rc_b = 0 ] || { echo "FAIL: server exited with $rc_b"; status=1; }
  # Iterations and the median latency (the average columns of a last, empty report
  # interval can read "inf").
  expect "$work/a.out" "^Final: +$iters +[0-9]+\.[0-9]+ " || status=1
  expect "$work/b.out" '^Accepted connection from 127\.0\.0\.1' || status=1
  return $status
}

check_perftest() {
  local try
  for try in 1 2; do
    perftest_once "$try" && { echo PASS; return 0; }
    grep -qs 'Failed to connect socket' "$work/a.out" "$work/b.out" || return 1
    [ "$mode" = embedded ] && [ "$try" = 1 ] || return 1
    echo "=== the memif client started its port before the server listened: one more attempt"
  done
  return 1
}

case "$check" in
  info) check_info ;;
  perftest) check_perftest ;;
  *) echo "ucx.sh: unknown check $check" >&2; exit 1 ;;
esac
