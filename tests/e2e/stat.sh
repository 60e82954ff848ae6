#!/usr/bin/env bash
# Telemetry (issue 19): dverbs-stat and `dverbsd --stat` read the counters of running
# processes from their DPDK telemetry endpoints (lib/pmd/hca/stats.cc).
#
#   stat.sh DVERBS_RUN
#
#   1. ibv_rc_pingpong between two embedded processes over memif, DVERBS_TELEMETRY=on:
#      while it runs, dverbs-stat (every process, --json) sees both, each with an RC QP
#      that has received packets, and dverbs-stat PID prints the table of one of them.
#   2. A dverbsd (telemetry on by itself) serving a client's ibv_rc_pingpong to a second
#      client: dverbsd --stat prints the object and transport counters, dverbs-stat
#      --daemon DIR the table.
#   3. Bad input: a PID that is no dverbs process, a socket directory without a daemon, and
#      DVERBS_TELEMETRY=maybe each get exit status 1 (2 for usage) and one readable line.
# Exit status: 0 pass, 1 fail, 77 skip.
set -u
run=$1
bin=$(dirname "$run")
command -v ibv_rc_pingpong >/dev/null || { echo "SKIP: ibv_rc_pingpong is not installed"; exit 77; }
. "$(dirname "$0")/pair_env.sh"
pair_begin dverbs-stat
status=0
fail() { echo "FAIL: $*"; status=1; }

# ---- 1. embedded
sock="$work/memif.sock"
port=$((10000 + RANDOM % 20000))
DVERBS_TELEMETRY=on timeout -k 5 120 "$run" --port "net_memif0,role=server,socket=$sock" \
  --ip 10.0.0.1/24 --lcores 0 -- ibv_rc_pingpong -g 0 -n 100000000 -p "$port" >"$work/b.out" 2>&1 &
pids+=($!)
pair_wait_memif "$!" "$sock" || { cat "$work/b.out"; exit 1; }
DVERBS_TELEMETRY=on timeout -k 5 120 "$run" --port "net_memif0,role=client,socket=$sock" \
  --ip 10.0.0.2/24 --lcores 0 -- ibv_rc_pingpong -g 0 -n 100000000 -p "$port" 127.0.0.1 \
  >"$work/a.out" 2>&1 &
pids+=($!)
ok=0
for _ in $(seq 100); do
  sleep 0.2
  "$bin/dverbs-stat" --json >"$work/all.json" 2>"$work/all.err" || continue
  if python3 - "$work/all.json" <<'PY'
import json, sys
procs = json.load(open(sys.argv[1]))["processes"]
busy = [p for p in procs for d in p["devices"] for q in d.get("qps", [])
        if q["type"] == "RC" and q["rx_packets"] > 0 and d["port"]["rx_packets"] > 0]
sys.exit(0 if len(busy) >= 2 else 1)
PY
  then ok=1; break; fi
done
echo "=== dverbs-stat --json (both pingpong processes)"; head -c 1500 "$work/all.json"; echo
[ $ok = 1 ] || { fail "dverbs-stat did not show two processes with a busy RC QP"; cat "$work/all.err"; }
# The server's program (timeout's child: dverbs-run executes it in its place); other dverbs
# processes on the machine may be in the list too.
pid=$(pgrep -P "${pids[0]}" | head -1)
if [ -n "$pid" ]; then
  "$bin/dverbs-stat" "$pid" >"$work/one.out" 2>&1 || fail "dverbs-stat $pid failed"
  echo "=== dverbs-stat $pid"; cat "$work/one.out"
  grep -Eq "^pid $pid +dverbs0 " "$work/one.out" || fail "no device line for pid $pid"
  grep -Eq '^ +[0-9]+ +RC ' "$work/one.out" || fail "no RC QP row for pid $pid"
fi
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
wait 2>/dev/null
pids=()

# ---- 2. daemon
mkdir "$work/d"
DVERBS_LCORES=0 timeout -k 5 120 "$bin/dverbsd" --dir "$work/d" >"$work/d.log" 2>&1 &
pids+=($!)
for _ in $(seq 400); do grep -q '^dverbsd: ready' "$work/d.log" && break; sleep 0.05; done
grep -q '^dverbsd: ready' "$work/d.log" || { cat "$work/d.log"; fail "dverbsd did not start"; exit 1; }
port=$((10000 + RANDOM % 20000))
DVERBS_DAEMON="$work/d" timeout -k 5 60 "$run" -- ibv_rc_pingpong -g 0 -n 300 -p "$port" \
  >"$work/db.out" 2>&1 &
pids+=($!)
sleep 1
DVERBS_DAEMON="$work/d" timeout -k 5 60 "$run" -- ibv_rc_pingpong -g 0 -n 300 -p "$port" \
  127.0.0.1 >"$work/da.out" 2>&1 || fail "the daemon clients' ibv_rc_pingpong failed"
wait "${pids[-1]}" 2>/dev/null
"$bin/dverbsd" --stat "$work/d/uverbs0" >"$work/dstat.out" 2>&1 || fail "dverbsd --stat failed"
echo "=== dverbsd --stat"; cat "$work/dstat.out"
grep -q '^clients=' "$work/dstat.out" || fail "dverbsd --stat lacks the object counters"
grep -Eq '^rx_packets=[1-9]' "$work/dstat.out" || fail "dverbsd --stat lacks rx_packets > 0"
"$bin/dverbs-stat" --daemon "$work/d" >"$work/dtab.out" 2>&1 || fail "dverbs-stat --daemon failed"
echo "=== dverbs-stat --daemon"; cat "$work/dtab.out"
grep -Eq '^pid [0-9]+ +dverbs0 ' "$work/dtab.out" || fail "dverbs-stat --daemon: no device line"

# ---- 3. bad input
expect_error() {  # expect_error RC REGEX CMD...
  local want=$1 re=$2
  shift 2
  "$@" >"$work/err.out" 2>&1
  local rc=$?
  echo "=== $* -> exit $rc: $(head -1 "$work/err.out")"
  [ $rc = "$want" ] || fail "$*: exit $rc, expected $want"
  grep -Eq -- "$re" "$work/err.out" || fail "$*: no line matching /$re/"
}
expect_error 1 'process 1 has no dverbs telemetry socket' "$bin/dverbs-stat" 1
expect_error 1 'dverbs-stat: --daemon /nonexistent: .*No such file' "$bin/dverbs-stat" --daemon /nonexistent
expect_error 2 "'x1' is neither a PID nor an option" "$bin/dverbs-stat" x1
expect_error 2 "DVERBS_TELEMETRY.*maybe.*neither on nor off" env DVERBS_TELEMETRY=maybe \
  "$run" --lcores 0 -- ibv_devinfo
[ $status = 0 ] && echo PASS
exit $status
