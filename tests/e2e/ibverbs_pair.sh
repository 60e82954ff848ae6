#!/usr/bin/env bash
# Runs an unmodified two-sided verbs program (ibv_*_pingpong, perftest) as two processes
# over dverbs, each with its own EAL and port, and checks both ends.
#
#   ibverbs_pair.sh DVERBS_RUN TRANSPORT [options] -- PROG ARGS...
#
#   TRANSPORT  memif   the two processes share a memif socket
#              af_xdp  the two ends of a veth pair created here (needs root)
#   options    --lcores N       DVERBS_LCORES of both processes (default 0); "default"
#                               leaves it unset (dverbs chooses: DVERBS_LCORES=auto)
#              --expect REGEX   a line both outputs must contain (repeatable)
#              --expect-a REGEX a line the client's output must contain (repeatable)
#              --memlock KIB    the program pins this much: raise RLIMIT_MEMLOCK to it if
#                               needed; skip if the hard limit is lower and the process
#                               lacks CAP_IPC_LOCK (which, as in uverbs, lifts the limit)
#              --timeout S      per-process limit (default 120)
#              --fault SPEC     DVERBS_FAULT of both processes (receive-side faults)
#              --daemon         each side is a client of its own dverbsd, which owns the
#                               port (DVERBS_LCORES of the daemons from --lcores)
#              --attempts N     run the pair up to N times until it passes (default 1); for
#                               runs with loss only: ibv_rc_pingpong ends without a final
#                               handshake, so when the last ACK is lost after the peer has
#                               exited, the retransmission finds no QP (no linger in IBA)
#
# PROG runs with "ARGS -p PORT" as the out-of-band (TCP) server in process B and with
# "ARGS -p PORT 127.0.0.1" as the client in process A. B starts first; with memif it is the
# memif server, and its ibv_open_device waits for the link, i.e. for A; A, the memif
# client, starts once B listens on the memif socket and lets B settle before it opens its
# context (lib/verbs/ibverbs/device.cc, wait_for_link), so B listens on TCP when A
# connects. With af_xdp the links are up at once: A starts once B's TCP port listens.
#
# Exit status: 0 pass, 1 fail, 77 skip (meson's convention). Children are killed on any
# exit; every process runs under timeout(1), so the script never hangs.
set -u

run=$1 transport=$2
shift 2
lcores=0 memlock="" limit=120 fault=off attempts=1 daemon=0
expects=()
expects_a=()
while [ $# -gt 0 ]; do
  case "$1" in
    --lcores) lcores=$2; shift 2 ;;
    --expect) expects+=("$2"); shift 2 ;;
    --expect-a) expects_a+=("$2"); shift 2 ;;
    --memlock) memlock=$2; shift 2 ;;
    --timeout) limit=$2; shift 2 ;;
    --fault) fault=$2; shift 2 ;;
    --attempts) attempts=$2; shift 2 ;;
    --daemon) daemon=1; shift ;;
    --) shift; break ;;
    *) echo "ibverbs_pair.sh: unknown option $1" >&2; exit 1 ;;
  esac
done
prog=$1
shift

if ! command -v "$prog" >/dev/null 2>&1; then
  echo "SKIP: $prog is not installed (scripts/test installs ibverbs-utils and perftest)"
  exit 77
fi
if [ -n "$memlock" ]; then
  ipc_lock() {  # CAP_IPC_LOCK (bit 14) in the effective set
    local eff
    eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
    [ -n "$eff" ] && [ $(( (0x$eff >> 14) & 1 )) -eq 1 ]
  }
  enough() { ipc_lock || [ "$(ulimit -l)" = unlimited ] || [ "$(ulimit -l)" -ge "$memlock" ]; }
  enough || ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null
  if ! enough; then
    echo "SKIP: $prog $* pins ${memlock} KiB but RLIMIT_MEMLOCK is $(ulimit -l) KiB" \
      "(hard limit $(ulimit -H -l)) and it lacks CAP_IPC_LOCK; run with a higher limit"
    exit 77
  fi
fi

. "$(dirname "$0")/pair_env.sh"
pair_begin dverbs-pair

case "$transport" in
  memif) ;;  # a socket per attempt, in run_pair
  af_xdp) pair_veth "dvx$$" ;;
  *) echo "ibverbs_pair.sh: unknown transport $transport" >&2; exit 1 ;;
esac

lc=(--lcores "$lcores")
[ "$lcores" = default ] && lc=()
dpids=()
# start_daemon SIDE DEVARGS IP: a dverbsd serving $work/dvd.SIDE on that port.
start_daemon() {
  local side=$1 dir="$work/dvd.$1"
  rm -rf "$dir"
  mkdir -p "$dir"
  local env=(DVERBS_PORT="$2" DVERBS_IP="$3/24" DVERBS_FAULT="$fault")
  [ "$lcores" = default ] || env+=(DVERBS_LCORES="$lcores")
  env "${env[@]}" timeout -k 5 "$limit" "$(dirname "$run")/dverbsd" --dir "$dir" \
    >"$work/dvd.$side.log" 2>&1 &
  pids+=($!)
  dpids+=($!)
  for _ in $(seq 400); do
    grep -q '^dverbsd: ready' "$work/dvd.$side.log" && return 0
    kill -0 "$!" 2>/dev/null || break
    sleep 0.05
  done
  echo "FAIL: dverbsd $side did not start"; cat "$work/dvd.$side.log"
  return 1
}
# start_side SIDE DEVARGS IP ARGS...: the program, embedded or a client of the side's daemon.
start_side() {
  local side=$1 dev=$2 ip=$3
  shift 3
  if [ "$daemon" = 1 ]; then
    DVERBS_DAEMON="$work/dvd.$side" timeout -k 5 "$limit" "$run" -- \
      "$prog" "$@" >"$work/$side.out" 2>&1 &
  else
    timeout -k 5 "$limit" "$run" --port "$dev" --ip "$ip/24" "${lc[@]}" \
      --fault "$fault" -- "$prog" "$@" >"$work/$side.out" 2>&1 &
  fi
  pids+=($!)
}
start_b() { start_side b "$port_b" 10.0.0.1 "$@" -p "$port"; pid_b=$!; }
start_a() { start_side a "$port_a" 10.0.0.2 "$@" -p "$port" 127.0.0.1; pid_a=$!; }

pick_port() {  # a free TCP port for the out-of-band exchange
  # Below the kernel's ephemeral range (32768 and up by default), so that no outgoing
  # connection of a test running beside this one can hold it; no socket in any state on it.
  port=""
  for _ in $(seq 50); do
    local p=$((10000 + RANDOM % 22000))
    if ! ss -Htan "sport = :$p" 2>/dev/null | grep -q .; then port=$p; return 0; fi
  done
  echo "FAIL: no free TCP port"
  return 1
}

run_pair() {
  pick_port || return 1
  if [ "$transport" = memif ]; then
    sock="$work/memif.$1.sock"
    port_a="net_memif0,role=client,socket=$sock"
    port_b="net_memif0,role=server,socket=$sock"
  fi
  shift
  if [ "$daemon" = 1 ]; then
    start_daemon b "$port_b" 10.0.0.1 && start_daemon a "$port_a" 10.0.0.2 || return 1
    sleep 1  # both ports up (memif connects as soon as both daemons run)
  fi
  if [ "$daemon" = 1 ] || [ "$transport" != memif ]; then
    start_b "$@"
    for _ in $(seq 600); do
      ss -Htln "sport = :$port" 2>/dev/null | grep -q . && break
      kill -0 "$pid_b" 2>/dev/null || break
      sleep 0.05
    done
    start_a "$@"
  elif [ "$transport" = memif ]; then
    start_b "$@"
    pair_wait_memif "$pid_b" "$sock" || { cat "$work/b.out"; return 1; }
    start_a "$@"
  fi

  wait "$pid_a"; rc_a=$?
  wait "$pid_b"; rc_b=$?
  echo "=== $prog $* over $transport (lcores $lcores, faults $fault)"
  pair_report "$rc_a" "$rc_b" expects expects_a
  for d in "${dpids[@]}"; do kill -TERM "$d" 2>/dev/null; wait "$d" 2>/dev/null; done
  dpids=()
  if [ $status != 0 ] && [ "$daemon" = 1 ]; then
    for side in b a; do echo "--- dverbsd $side"; tail -n 40 "$work/dvd.$side.log"; done
  fi
  [ $status = 0 ] && echo "PASS"
  return $status
}

# perftest calibrates its cycle counter against gettimeofday with a linear fit and gives up
# ("Can't produce a report") when a loaded machine makes the fit poor: a failure of the
# measuring tool, not of dverbs. Such a run gets one more attempt, as does one whose TCP
# port another process took before the program bound it; any other failure none.
max=$attempts
try=0
while [ "$try" -lt "$max" ]; do
  try=$((try + 1))
  if [ "$try" -gt 1 ]; then
    echo "=== attempt $try of $max"
    # A fault seed fixes which frames are lost; the next attempt draws another pattern
    # (an unlucky one loses the final ACK the program's end cannot recover: --attempts).
    if [[ "$fault" =~ seed=([0-9]+) ]]; then
      fault="${fault/seed=${BASH_REMATCH[1]}/seed=$((BASH_REMATCH[1] + 1))}"
      echo "=== faults now $fault"
    fi
  fi
  run_pair "$try" "$@" && exit 0
  if [ "$max" -eq "$attempts" ] && grep -qs "Can't produce a report" "$work/a.out" "$work/b.out"
  then
    echo "=== perftest could not calibrate its clock (machine busy): one more attempt"
    max=$((max + 1))
  elif [ "$max" -eq "$attempts" ] && grep -qs "Couldn't listen to port" "$work/b.out"; then
    # Another process took the TCP port between pick_port and the program's bind.
    echo "=== the out-of-band TCP port was taken meanwhile: one more attempt on another"
    max=$((max + 1))
  fi
done
exit 1
