#!/usr/bin/env bash
# dverbsd end to end: unprivileged processes share one soft HCA through the daemon, with
# stock rdma-core programs and the libibverbs.so.1 drop-in, as issue 8 asks.
#
#   daemon.sh DVERBSD DROPIN_DIR SCENARIO [HELPER]
#
#   share    one daemon; two non-root users of the socket's group run ibv_rc_pingpong
#            (polling and -e events), ibv_srq_pingpong, ibv_ud_pingpong and ib_write_bw
#            against each other; a user outside the group is refused with EACCES and a
#            readable line; HELPER (tests/daemon/fork_check) forks with registered memory
#   memif    two daemons whose ports are the two ends of a memif link; a client of each
#            runs ibv_rc_pingpong and ib_write_bw across
#   kill     kill -9 of a client in the middle of a transfer: the daemon's counters return
#            to what they were before it started, and another pair's ib_write_bw, running
#            throughout, finishes normally
#   limits   RLIMIT_MEMLOCK is charged by the daemon to the client (ENOMEM past it, the
#            daemon names the limit); per-client object limits give ENOMEM
#   cm       two daemons over memif, each owning its port's QP1 and CM: rping between a
#            client of each (rdma_cm through DIR/rdma_cm), data verified; then kill -9 of
#            the client in the middle of a run: its daemon tears the connection down with
#            a DREQ, and the server sees RDMA_CM_EVENT_DISCONNECTED and ends
#   hostile  HELPER (tests/daemon/malformed) sends forged handles, bad sizes, bad fds
#            and corrupt rings as a non-root client, and runs into --max-conns and a
#            per-process --max-mw; the daemon and another pair keep going
#
# perftest runs with -u 18 (a 1 s transport timer instead of 67 ms): under a sanitizer five
# processes share two CPUs, and an ACK may come later than 67 ms x 7 retries.
#
# Needs root (it creates the test users and group, and starts the daemons). Users:
# dvtest1 and dvtest2 in group dvtest, dvtest3 outside it. The drop-in is copied to a
# world-readable directory so the test users can load it whatever the clone's permissions.
#
# Exit status: 0 pass, 1 fail, 77 skip. Every process runs under timeout(1).
set -u

dverbsd=$1 dropin=$2 scenario=$3 helper=${4:-}

if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root (creates test users)"; exit 77; fi
for p in ibv_rc_pingpong ibv_devinfo ib_write_bw setpriv useradd groupadd ss; do
  command -v "$p" >/dev/null 2>&1 ||
    { echo "SKIP: $p is not installed (scripts/test installs it)"; exit 77; }
done

work=$(mktemp -d /tmp/dverbsd-e2e.XXXXXX)
chmod 755 "$work"
mkdir "$work/lib"
cp -L "$dropin/libibverbs.so.1" "$work/lib/"
# The librdmacm drop-in (scenario cm) is built beside it, in ../rdmacm.
[ -e "$dropin/../rdmacm/librdmacm.so.1" ] && cp -L "$dropin/../rdmacm/librdmacm.so.1" "$work/lib/"
chmod -R a+rX "$work/lib"
pids=()
daemons=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${daemons[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${daemons[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT
status=0
fail() { echo "FAIL: $*"; status=1; }

getent group dvtest >/dev/null || groupadd dvtest
for u in dvtest1 dvtest2 dvtest3; do
  id -u "$u" >/dev/null 2>&1 || useradd -M -N -g nogroup -s /usr/sbin/nologin "$u"
done
usermod -a -G dvtest dvtest1
usermod -a -G dvtest dvtest2

# A sanitizer build's drop-in needs its runtimes preloaded into the uninstrumented
# programs (as dverbs-run does); their own leaks at exit are not dverbs'.
preload=$(ldd "$work/lib/libibverbs.so.1" | grep -oE '/[^ ]*lib(a|t|ub)san[^ ]*' | paste -sd:)
# The suppression files are copied where the test users can read them.
user_opts() {
  local opts=$1 f
  f=$(printf '%s' "$opts" | grep -oE 'suppressions=[^:]+' | head -1 | cut -d= -f2)
  if [ -n "$f" ] && [ -f "$f" ]; then
    cp "$f" "$work/lib/" && chmod a+r "$work/lib/$(basename "$f")"
    opts=${opts//$f/$work/lib/$(basename "$f")}
  fi
  printf '%s' "$opts"
}
san_env=()
if [ -n "$preload" ]; then
  # report_signal_unsafe=0: perftest's -D mode ends from a SIGALRM handler that calls
  # fopen(), perftest's own signal-safety bug, which TSan reports once it is preloaded.
  san_env=(LD_PRELOAD="$preload" ASAN_OPTIONS=detect_leaks=0
           "TSAN_OPTIONS=$(user_opts "${TSAN_OPTIONS:-}"):report_signal_unsafe=0"
           "UBSAN_OPTIONS=$(user_opts "${UBSAN_OPTIONS:-}")")
fi

# as USER DIR CMD...: runs CMD as USER (no capabilities), a client of the daemon in DIR;
# with AS_MEMLOCK=BYTES set, under that RLIMIT_MEMLOCK (soft and hard).
as() {
  local u=$1 dir=$2 lim=()
  shift 2
  [ -n "${AS_MEMLOCK:-}" ] && lim=(prlimit "--memlock=$AS_MEMLOCK:$AS_MEMLOCK" --)
  "${lim[@]}" setpriv --reuid="$u" --regid="$(id -g "$u")" --init-groups --inh-caps=-all -- \
    env -i PATH="$PATH" HOME=/ LD_LIBRARY_PATH="$work/lib" DVERBS_DAEMON="$dir" \
    "${san_env[@]}" "$@"
}

# start_daemon NAME ENV...: a dverbsd serving $work/NAME, group dvtest, mode 0660.
# start_daemon NAME [VAR=VALUE...]; dverbsd options in $dargs.
dargs=
start_daemon() {
  local name=$1
  shift
  mkdir -p "$work/$name"
  # shellcheck disable=SC2086
  env "$@" timeout -k 5 600 "$dverbsd" --dir "$work/$name" --group dvtest --mode 0660 $dargs \
    >"$work/$name.log" 2>&1 &
  daemons+=($!)
  for _ in $(seq 600); do
    grep -q '^dverbsd: ready' "$work/$name.log" && return 0
    kill -0 "$!" 2>/dev/null || break
    sleep 0.05
  done
  fail "dverbsd $name did not become ready"; cat "$work/$name.log"; return 1
}

stat_of() { "$dverbsd" --stat "$work/$1/uverbs0"; }
# The object counters and the pinned bytes: what must come back after a client dies.
objects_of() { stat_of "$1" | grep -E '^(clients|pds|mrs|cqs|qps|srqs|ahs|mws|pinned_bytes)=' | tr '\n' ' '; }
stat_val() { stat_of "$1" | sed -n "s/^$2=//p"; }

pick_port() {
  for _ in $(seq 50); do
    local p=$((10000 + RANDOM % 22000))  # below the ephemeral range
    ss -Htan "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return 0; }
  done
  return 1
}

# pair TAG SERVER_USER SERVER_DIR CLIENT_USER CLIENT_DIR EXPECT PROG ARGS...: starts the
# server, then the client against 127.0.0.1; waits for both unless TAG ends in '&' (then
# sets pid_s/pid_c and returns at once).
pair() {
  local tag=$1 us=$2 ds=$3 uc=$4 dc=$5 expect=$6
  shift 6
  local bg=0
  [ "${tag%&}" != "$tag" ] && { bg=1; tag=${tag%&}; }
  local port
  port=$(pick_port) || { fail "no free TCP port"; return 1; }
  as "$us" "$work/$ds" timeout -k 5 240 "$@" -p "$port" >"$work/$tag.s.out" 2>&1 &
  pid_s=$!
  pids+=($pid_s)
  for _ in $(seq 600); do
    ss -Htln "sport = :$port" 2>/dev/null | grep -q . && break
    kill -0 "$pid_s" 2>/dev/null || break
    sleep 0.05
  done
  as "$uc" "$work/$dc" timeout -k 5 240 "$@" -p "$port" 127.0.0.1 >"$work/$tag.c.out" 2>&1 &
  pid_c=$!
  pids+=($pid_c)
  [ $bg = 1 ] && return 0
  check_pair "$tag" "$expect" "$*"
}

check_pair() {
  local tag=$1 expect=$2 what=$3 rc_s rc_c ok=0
  wait "$pid_c"; rc_c=$?
  wait "$pid_s"; rc_s=$?
  echo "=== $tag: $what"
  echo "--- client (exit $rc_c)"; cat "$work/$tag.c.out"
  echo "--- server (exit $rc_s)"; cat "$work/$tag.s.out"
  [ "$rc_c" = 0 ] && [ "$rc_s" = 0 ] || { fail "$tag: exit $rc_c/$rc_s"; ok=1; }
  for side in c s; do
    grep -Eq -- "$expect" "$work/$tag.$side.out" || { fail "$tag: $side output lacks /$expect/"; ok=1; }
  done
  return $ok
}

wait_active() {  # the daemon's port is up (memif needs its peer)
  for _ in $(seq 400); do
    as dvtest1 "$work/$1" ibv_devinfo 2>/dev/null | grep -q PORT_ACTIVE && return 0
    sleep 0.05
  done
  fail "$1: port never became active"; as dvtest1 "$work/$1" ibv_devinfo; return 1
}

wait_stat() {  # wait_stat DIR KEY VALUE: up to 20 s
  for _ in $(seq 400); do
    [ "$(stat_val "$1" "$2")" = "$3" ] && return 0
    sleep 0.05
  done
  return 1
}

# memif_daemons: daemons a (10.0.0.1) and b (10.0.0.2) on the two ends of a memif link,
# both ports up.
memif_daemons() {
  local sock="$work/memif.sock"
  start_daemon a DVERBS_LCORES=0 DVERBS_IP=10.0.0.1/24 \
    "DVERBS_PORT=net_memif0,role=server,socket=$sock,socket-abstract=no" || return 1
  start_daemon b DVERBS_LCORES=0 DVERBS_IP=10.0.0.2/24 \
    "DVERBS_PORT=net_memif0,role=client,socket=$sock,socket-abstract=no" || return 1
  wait_active a && wait_active b
}

case "$scenario" in
  share)
    start_daemon d DVERBS_LCORES=0 || exit 1
    echo "=== daemon: $(head -1 "$work/d.log")"
    ls -l "$work/d/uverbs0"
    pair rc dvtest1 d dvtest2 d '1000 iters in' ibv_rc_pingpong -g 0
    pair rc_events dvtest1 d dvtest2 d '1000 iters in' ibv_rc_pingpong -g 0 -e -c
    pair srq dvtest2 d dvtest1 d '1000 iters in' ibv_srq_pingpong -g 0 -q 4 -e
    pair ud dvtest1 d dvtest2 d '1000 iters in' ibv_ud_pingpong -g 0 -c
    pair write_bw dvtest1 d dvtest2 d '^ 65536 +200 ' ib_write_bw -d dverbs0 -x 0 -u 18 -n 200
    # Outside the group: connect() is refused by the socket's mode, and the drop-in says so.
    as dvtest3 "$work/d" ibv_devinfo >"$work/refused.out" 2>&1
    rc=$?
    echo "=== dvtest3 (not in group dvtest): ibv_devinfo exit $rc"; cat "$work/refused.out"
    [ $rc != 0 ] || fail "a user outside the group opened the device"
    grep -qi 'permission denied' "$work/refused.out" ||
      fail "the refusal does not say 'permission denied'"
    grep -q 'dvtest' "$work/refused.out" || fail "the refusal does not name the group"
    if [ -n "$helper" ]; then
      cp "$helper" "$work/lib/fork_check" && chmod 755 "$work/lib/fork_check"
      as dvtest1 "$work/d" timeout -k 5 60 "$work/lib/fork_check" >"$work/fork.out" 2>&1
      rc=$?
      echo "=== fork with registered memory: exit $rc"; cat "$work/fork.out"
      [ $rc = 0 ] || fail "fork_check failed"
    fi
    ;;
  memif)
    memif_daemons || exit 1
    pair rc dvtest1 a dvtest2 b '1000 iters in' ibv_rc_pingpong -g 0 -c
    pair write_bw dvtest2 b dvtest1 a '^ 65536 +200 ' ib_write_bw -d dverbs0 -x 0 -u 18 -n 200
    ;;
  cm)
    command -v rping >/dev/null || { echo "SKIP: rping (rdmacm-utils) is not installed"; exit 77; }
    memif_daemons || exit 1
    ls -l "$work/a/rdma_cm"
    # rping -p is the rdma_cm port: no TCP listener to wait for; the client retries once
    # when it came before the server listened (REJ "invalid service ID").
    port=$(pick_port)
    as dvtest1 "$work/a" timeout -k 5 120 rping -s -v -V -a 10.0.0.1 -p "$port" -C 1000 \
      >"$work/rping.s.out" 2>&1 &
    pid_s=$!
    pids+=($pid_s)
    sleep 1
    for attempt in 1 2; do
      as dvtest2 "$work/b" timeout -k 5 120 rping -c -v -V -a 10.0.0.1 -p "$port" -C 1000 \
        >"$work/rping.c.out" 2>&1
      rc_c=$?
      [ $rc_c = 0 ] && break
      grep -q REJECTED "$work/rping.c.out" || break
      sleep 1
    done
    wait "$pid_s"; rc_s=$?
    echo "=== rping -C 1000 -V through two daemons"
    echo "--- client (exit $rc_c)"; tail -n 3 "$work/rping.c.out"
    echo "--- server (exit $rc_s)"; tail -n 3 "$work/rping.s.out"
    [ "$rc_c" = 0 ] && [ "$rc_s" = 0 ] || fail "rping: exit $rc_c/$rc_s"
    for side in c s; do
      grep -q 'ping data: rdma-ping-999' "$work/rping.$side.out" ||
        fail "rping: $side output lacks the 1000th verified ping"
    done
    # kill -9 of a connected client: -C 100000003 marks its command line for pkill.
    port=$(pick_port)
    as dvtest1 "$work/a" timeout -k 5 120 rping -s -v -a 10.0.0.1 -p "$port" -C 100000003 \
      >"$work/victim.s.out" 2>&1 &
    pid_s=$!
    pids+=($pid_s)
    sleep 1
    as dvtest2 "$work/b" timeout -k 5 120 rping -c -v -a 10.0.0.1 -p "$port" -C 100000003 \
      >"$work/victim.c.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do grep -q 'ping data' "$work/victim.c.out" && break; sleep 0.05; done
    grep -q 'ping data' "$work/victim.c.out" || fail "the victim never transferred"
    pkill -KILL -f -- 'rping -c -v -a 10.0.0.1 -p [0-9]+ -C 100000003' ||
      fail "no victim client to kill"
    echo "=== killed the rping client with SIGKILL"
    for _ in $(seq 200); do kill -0 "$pid_s" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$pid_s" 2>/dev/null && fail "the server did not end after its peer was killed"
    wait "$pid_s"; echo "=== server exit $?"; tail -n 2 "$work/victim.s.out"
    grep -q 'DISCONNECT EVENT' "$work/victim.s.out" ||
      fail "the server never saw RDMA_CM_EVENT_DISCONNECTED"
    ;;
  kill)
    start_daemon d DVERBS_LCORES=0 || exit 1
    before=$(objects_of d)
    echo "=== idle daemon: $before"
    # The bystander pair runs for a fixed time across the whole experiment.
    pair 'bystander&' dvtest1 d dvtest2 d '' ib_write_bw -d dverbs0 -x 0 -u 18 -D 20 -s 4096
    by_s=$pid_s by_c=$pid_c
    wait_stat d clients 2 && wait_stat d qps 2 || fail "bystander never had its QPs"
    sleep 0.5
    with_bystander=$(objects_of d)
    echo "=== with the bystander: $with_bystander"
    # -n 100000003 marks the victim's command lines for pkill (the program runs under
    # setpriv and timeout, so $! is not its pid).
    pair 'victim&' dvtest2 d dvtest1 d '' ibv_rc_pingpong -g 0 -s 65536 -n 100000003
    v_s=$pid_s v_c=$pid_c
    wait_stat d qps 4 || fail "victim pair never had its QPs"
    sleep 1
    echo "=== during the transfer: $(objects_of d)"
    pkill -KILL -f -- '-n 100000003 -p [0-9]+ 127[.]0[.]0[.]1' ||
      fail "no victim client to kill"
    echo "=== killed the victim client with SIGKILL"
    # ibv_rc_pingpong's server may be waiting for a receive that never comes (it has no
    # timeout of its own, on hardware either); if so it is killed too after 5 s.
    for _ in $(seq 100); do kill -0 "$v_s" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$v_s" 2>/dev/null; then
      echo "=== the victim server still waits for its dead peer: killed too"
      pkill -KILL -f -- '-n 100000003 -p [0-9]+$'
    fi
    wait "$v_s"; echo "=== victim server exit $?"; tail -3 "$work/victim.s.out"
    after=""
    for _ in $(seq 200); do
      after=$(objects_of d)
      [ "$after" = "$with_bystander" ] && break
      sleep 0.05
    done
    echo "=== after the kill: $after"
    [ "$after" = "$with_bystander" ] || fail "counters did not return: '$with_bystander' -> '$after'"
    kill -0 "$by_c" 2>/dev/null || fail "the bystander ended before the kill was checked"
    pid_s=$by_s pid_c=$by_c
    check_pair bystander '^ 4096 ' 'ib_write_bw -D 20 running throughout'
    wait_stat d clients 0 || fail "clients remain after every program exited"
    end=$(objects_of d)
    echo "=== idle again: $end"
    [ "$end" = "$before" ] || fail "counters not back to the idle values: '$before' -> '$end'"
    ;;
  limits)
    start_daemon d DVERBS_LCORES=0 || exit 1
    # 64 KiB of RLIMIT_MEMLOCK, a 1 MiB buffer: the daemon refuses the registration.
    AS_MEMLOCK=65536 as dvtest1 "$work/d" timeout 60 ibv_rc_pingpong -g 0 -s 1048576 -p 1 \
      >"$work/memlock.out" 2>&1
    rc=$?
    echo "=== ibv_rc_pingpong -s 1 MiB under ulimit -l 64: exit $rc"; cat "$work/memlock.out"
    [ $rc != 0 ] || fail "a 1 MiB registration passed a 64 KiB RLIMIT_MEMLOCK"
    grep -q "Couldn't register MR" "$work/memlock.out" || fail "not refused at ibv_reg_mr"
    grep -q 'RLIMIT_MEMLOCK' "$work/d.log" || fail "the daemon did not name RLIMIT_MEMLOCK"
    grep 'RLIMIT_MEMLOCK' "$work/d.log"
    wait_stat d pinned_bytes 0 || fail "pinned bytes not returned"
    # Under the limit the same program works.
    AS_MEMLOCK=65536 pair small dvtest1 d dvtest2 d '1000 iters in' ibv_rc_pingpong -g 0 -s 16384
    ;;
  hostile)
    [ -n "$helper" ] || { echo "SKIP: no malformed-input client given"; exit 77; }
    # Small limits so the helper can reach them: 6 connections per uid, 2 windows per process.
    dargs="--max-conns 6 --max-mw 2" start_daemon d DVERBS_LCORES=0 || exit 1
    cp "$helper" "$work/lib/malformed" && chmod 755 "$work/lib/malformed"
    as dvtest1 "$work/d" timeout -k 5 120 "$work/lib/malformed" "$work/d/uverbs0" 6 \
      >"$work/malformed.out" 2>&1
    rc=$?
    echo "=== malformed client: exit $rc"; cat "$work/malformed.out"
    [ $rc = 0 ] || fail "malformed-input checks failed"
    kill -0 "${daemons[0]}" 2>/dev/null || fail "the daemon died"
    pair after dvtest1 d dvtest2 d '1000 iters in' ibv_rc_pingpong -g 0 -c
    wait_stat d clients 0 || fail "clients remain"
    echo "=== daemon counters: $(stat_of d | tr '\n' ' ')"
    ;;
  *) echo "daemon.sh: unknown scenario $scenario" >&2; exit 1 ;;
esac

echo "--- daemon logs"
for f in "$work"/*.log; do echo "[$f]"; cat "$f"; done
# Clean shutdown on SIGTERM.
for p in "${daemons[@]}"; do
  kill -TERM "$p"
  wait "$p"; rc=$?
  [ $rc = 0 ] || fail "dverbsd exited $rc on SIGTERM"
done
daemons=()
[ $status = 0 ] && echo PASS
exit $status
