#!/usr/bin/env bash
# Runs one program built against the system's <infiniband/verbs.h> (a GoogleTest binary of
# tests/e2e) through the drop-in, in one of dverbs' two modes, on the built-in loopback
# port: the program's QPs talk to each other in one process.
#
#   verbs_modes.sh DVERBS_RUN MODE PROG [ARGS...]
#
#   MODE  embedded  dverbs-run --lcores 0 (inline progress, the HCA in the process)
#         daemon    a dverbsd of its own (DVERBS_LCORES=0) owns the port; the program is its
#                   client (DVERBS_DAEMON)
#
# Exit status: the program's (0 pass, 77 skip); 1 when the daemon does not start. Every
# process runs under timeout(1).
set -u
run=$1 mode=$2
shift 2
limit=${DVERBS_TEST_TIMEOUT:-240}
case "$mode" in
  embedded) exec timeout -k 5 "$limit" "$run" --lcores 0 -- "$@" ;;
  daemon) ;;
  *) echo "verbs_modes.sh: unknown mode $mode" >&2; exit 2 ;;
esac

work=$(mktemp -d /tmp/dverbs-modes.XXXXXX)
dpid=""
cleanup() {
  if [ -n "$dpid" ]; then
    kill -TERM "$dpid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$dpid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
mkdir "$work/d"
DVERBS_LCORES=0 timeout -k 5 "$limit" "$(dirname "$run")/dverbsd" --dir "$work/d" \
  >"$work/dverbsd.log" 2>&1 &
dpid=$!
for _ in $(seq 600); do
  grep -q '^dverbsd: ready' "$work/dverbsd.log" && break
  kill -0 "$dpid" 2>/dev/null || break
  sleep 0.05
done
if ! grep -q '^dverbsd: ready' "$work/dverbsd.log"; then
  echo "FAIL: dverbsd did not start"; cat "$work/dverbsd.log"; exit 1
fi
DVERBS_DAEMON="$work/d" timeout -k 5 "$limit" "$run" -- "$@"
rc=$?
if [ $rc != 0 ] && [ $rc != 77 ]; then echo "--- dverbsd"; tail -n 40 "$work/dverbsd.log"; fi
exit $rc
