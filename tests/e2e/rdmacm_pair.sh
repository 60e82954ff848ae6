#!/usr/bin/env bash
# Runs an unmodified rdma_cm program (rping, ucmatose, udaddy, rdma_server/rdma_client,
# rstream, perftest -R…) as a server and a client process over dverbs, each with its own
# EAL and port, both loading dverbs' librdmacm.so.1 and libibverbs.so.1 (dverbs-run), and
# checks both ends. Connection set-up is the IB CM on QP1 between the two processes.
#
#   rdmacm_pair.sh DVERBS_RUN TRANSPORT [options] --server ARGS... --client ARGS...
#
#   TRANSPORT  memif | af_xdp (a veth pair made here, needs root)
#   options    --lcores N         DVERBS_LCORES of both processes (default 0)
#              --expect REGEX     a line both outputs must contain (repeatable)
#              --expect-c REGEX   a line the client's output must contain (repeatable)
#              --timeout S        per-process limit (default 120)
#              --file BYTES       make @IN@ a file of that many random bytes and, after the
#                                 run, compare @OUT@ with it (rcopy)
#              --attempts N       run the pair up to N times until it passes (default 1)
#              --server-until REGEX  for a server that never exits (rcopy loops on
#                                 raccept): once the client has exited, wait (10 s at
#                                 most) for a line of the server's output matching REGEX,
#                                 then stop it (SIGTERM); it passes if the line came
#              --daemon           each side is a client of its own dverbsd (the daemons own
#                                 the ports, QP1 and the CM; the programs reach them
#                                 through DVERBS_DAEMON), started here
#              --capture          the server captures its port (DVERBS_PCAP); tshark must
#                                 decode REQ, REP, RTU, DREQ and DREP as CM MADs, and no
#                                 frame as malformed (skipped when tshark is missing)
#
# In ARGS, @S@ is the server's address (10.0.0.1), @C@ the client's (10.0.0.2), @PORT@ a
# port number chosen for the run, @IN@/@OUT@ the files of --file. The server (B) starts
# first: with memif it is the memif server and waits for the link; the client (A) starts
# once B's memif socket listens (memif) or after B has had a second to listen (af_xdp).
# A client that finds no listener yet is rejected (REJ, "invalid service ID"), which
# --attempts covers.
#
# Exit status: 0 pass, 1 fail, 77 skip. Every process runs under timeout(1).
set -u

run=$(realpath "$1") transport=$2
shift 2
lcores=0 limit=120 attempts=1 filesize="" server_until="" capture=0 daemon=0
dpids=()
expects=()
expects_c=()
server=()
client=()
while [ $# -gt 0 ]; do
  case "$1" in
    --lcores) lcores=$2; shift 2 ;;
    --expect) expects+=("$2"); shift 2 ;;
    --expect-c) expects_c+=("$2"); shift 2 ;;
    --timeout) limit=$2; shift 2 ;;
    --attempts) attempts=$2; shift 2 ;;
    --file) filesize=$2; shift 2 ;;
    --server-until) server_until=$2; shift 2 ;;
    --capture) capture=1; shift ;;
    --daemon) daemon=1; shift ;;
    --server) shift; while [ $# -gt 0 ] && [ "$1" != --client ]; do server+=("$1"); shift; done ;;
    --client) shift; while [ $# -gt 0 ]; do client+=("$1"); shift; done ;;
    *) echo "rdmacm_pair.sh: unknown option $1" >&2; exit 1 ;;
  esac
done
prog=${server[0]:-}
[ -n "$prog" ] && [ ${#client[@]} -gt 0 ] || { echo "rdmacm_pair.sh: --server and --client needed" >&2; exit 1; }
for p in "${server[0]}" "${client[0]}"; do
  if ! command -v "$p" >/dev/null 2>&1; then
    echo "SKIP: $p is not installed (scripts/test installs rdmacm-utils and perftest)"
    exit 77
  fi
done

. "$(dirname "$0")/pair_env.sh"
pair_begin dverbs-cm

case "$transport" in
  memif) ;;
  af_xdp) pair_veth "dvc$$" ;;
  *) echo "rdmacm_pair.sh: unknown transport $transport" >&2; exit 1 ;;
esac

subst() {  # ARGS with the placeholders filled in, one per line
  for a in "$@"; do
    a=${a//@S@/10.0.0.1}
    a=${a//@C@/10.0.0.2}
    a=${a//@PORT@/$port}
    a=${a//@IN@/$work/in}
    a=${a//@OUT@/$work/out}
    printf '%s\n' "$a"
  done
}

start() {  # start SIDE DEVARGS IP ARGS...
  local side=$1 dev=$2 ip=$3
  shift 3
  local args=()
  mapfile -t args < <(subst "$@")
  local pcap=()
  [ "$capture" = 1 ] && [ "$side" = b ] && pcap=(--pcap "$work/b.pcapng")
  if [ "$daemon" = 1 ]; then
    (cd "$work" && DVERBS_DAEMON="$work/dvd.$side" exec timeout -k 5 "$limit" "$run" \
       -- "${args[@]}") >"$work/$side.out" 2>&1 &
  else
    (cd "$work" && exec timeout -k 5 "$limit" "$run" --port "$dev" --ip "$ip/24" \
       --lcores "$lcores" "${pcap[@]}" -- "${args[@]}") >"$work/$side.out" 2>&1 &
  fi
  pids+=($!)
  eval "pid_$side=$!"
}

# start_daemon SIDE DEVARGS IP: a dverbsd serving $work/dvd.SIDE on that port.
start_daemon() {
  local side=$1 dir="$work/dvd.$1"
  rm -rf "$dir"
  mkdir -p "$dir"
  DVERBS_PORT=$2 DVERBS_IP=$3/24 DVERBS_LCORES=$lcores \
    timeout -k 5 "$limit" "$(dirname "$run")/dverbsd" --dir "$dir" >"$work/dvd.$side.log" 2>&1 &
  pids+=($!)
  dpids+=($!)
  for _ in $(seq 400); do
    grep -q '^dverbsd: ready' "$work/dvd.$side.log" && return 0
    sleep 0.05
  done
  echo "FAIL: dverbsd $side did not start"; cat "$work/dvd.$side.log"
  return 1
}

run_pair() {
  rc_b=""
  port=$((20000 + RANDOM % 40000))
  if [ "$transport" = memif ]; then
    sock="$work/memif.$1.sock"
    port_a="net_memif0,role=client,socket=$sock"
    port_b="net_memif0,role=server,socket=$sock"
  fi
  rm -f "$work/out"
  if [ "$daemon" = 1 ]; then
    start_daemon b "$port_b" 10.0.0.1 && start_daemon a "$port_a" 10.0.0.2 || return 1
    sleep 1  # both ports up (memif connects as soon as both daemons run)
    start b "$port_b" 10.0.0.1 "${server[@]}"
    sleep 1
  else
  start b "$port_b" 10.0.0.1 "${server[@]}"
  if [ "$transport" = memif ]; then
    pair_wait_memif "$pid_b" "$sock" || { cat "$work/b.out"; return 1; }
  else
    sleep 1
  fi
  fi
  start a "$port_a" 10.0.0.2 "${client[@]}"
  # A side that fails (a sanitizer's report, a crash) leaves its peer waiting for messages
  # that never come: give the peer 10 s to finish, then stop it, rather than let it run
  # into its timeout.
  while kill -0 "$pid_a" 2>/dev/null; do
    if [ -z "$server_until" ] && ! kill -0 "$pid_b" 2>/dev/null; then
      wait "$pid_b"; rc_b=$?
      if [ $rc_b != 0 ]; then
        for _ in $(seq 100); do kill -0 "$pid_a" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$pid_a" 2>/dev/null && echo "FAIL: the server failed ($rc_b); client stopped"
      fi
      break
    fi
    sleep 0.1
  done
  wait "$pid_a"; rc_a=$?
  if [ -n "$server_until" ]; then
    rc_b=1
    for _ in $(seq 200); do
      grep -Eq -- "$server_until" "$work/b.out" && { rc_b=0; break; }
      kill -0 "$pid_b" 2>/dev/null || break
      sleep 0.05
    done
    kill -TERM "$pid_b" 2>/dev/null
    wait "$pid_b"
    [ $rc_b = 0 ] || echo "FAIL: the server's output never matched /$server_until/"
  elif [ -z "${rc_b:-}" ]; then
    if [ $rc_a != 0 ]; then
      for _ in $(seq 100); do kill -0 "$pid_b" 2>/dev/null || break; sleep 0.1; done
      kill -TERM "$pid_b" 2>/dev/null && echo "FAIL: the client failed ($rc_a); server stopped"
    fi
    wait "$pid_b"; rc_b=$?
  fi
  echo "=== ${server[*]} / ${client[*]} over $transport (lcores $lcores)"
  pair_report "$rc_a" "$rc_b" expects expects_c
  if [ -n "$filesize" ]; then
    if cmp "$work/in" "$work/out"; then
      echo "copied $filesize bytes, identical (cmp)"
    else
      echo "FAIL: the copy differs from the original"; status=1
    fi
  fi
  for d in "${dpids[@]}"; do kill -TERM "$d" 2>/dev/null; wait "$d" 2>/dev/null; done
  dpids=()
  if [ $status != 0 ] && [ "$daemon" = 1 ]; then
    for side in b a; do echo "--- dverbsd $side"; tail -n 40 "$work/dvd.$side.log"; done
  fi
  [ "$capture" = 1 ] && check_capture "$work/b.pcapng"
  [ $status = 0 ] && echo "PASS"
  return $status
}

# The CM MADs of the capture, as tshark decodes them, and no malformed frame.
check_capture() {
  if ! command -v tshark >/dev/null; then echo "(tshark missing: capture not checked)"; return; fi
  local mads
  mads=$(tshark -r "$1" -Y infiniband.mad -T fields -e infiniband.mad.attributeid 2>/dev/null |
         sort -u | paste -sd' ')
  echo "capture: CM attribute ids $mads"
  for a in 0x0010 0x0013 0x0014 0x0015 0x0016; do
    case " $mads " in *" $a "*) ;; *) echo "FAIL: the capture lacks CM attribute $a"; status=1 ;; esac
  done
  local bad
  bad=$(tshark -r "$1" 2>/dev/null | grep -ci malformed)
  [ "$bad" = 0 ] || { echo "FAIL: $bad malformed frames in the capture"; status=1; }
  echo "capture: $(tshark -r "$1" 2>/dev/null | wc -l) frames, $bad malformed"
}

[ -n "$filesize" ] && head -c "$filesize" /dev/urandom >"$work/in"
try=0
while [ "$try" -lt "$attempts" ]; do
  try=$((try + 1))
  [ "$try" -gt 1 ] && echo "=== attempt $try of $attempts"
  run_pair "$try" && exit 0
done
exit 1
