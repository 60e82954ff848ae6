#!/bin/sh
# run_fuzz.sh FUZZER SEED_CORPUS WORK_DIR SECONDS [libFuzzer options...]
# ($DVERBS_FUZZ_SECONDS, when set, replaces SECONDS: longer runs by hand.)
#
# Fuzzes for a bounded time (meson suite `fuzz`). New inputs go to WORK_DIR/corpus (the
# seed corpus in the source tree is only read); a crash leaves WORK_DIR/crash-<sha1> and
# fails the test. Turn every crash into a regression input: fixed bugs go to
# tests/fuzz/corpus/<harness>/, unfixed lib bugs to tests/fuzz/crashes/<harness>/ (each
# listed in tests/fuzz/meson.build, replayed by the suite).
set -u
fuzzer=$1 seeds=$2 work=$3 seconds=$4
shift 4
seconds=${DVERBS_FUZZ_SECONDS:-$seconds}
mkdir -p "$work/corpus"
# -error_exitcode: libFuzzer's default, 77, is meson's "skipped": a crash must fail.
"$fuzzer" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -max_len=8192 \
  -error_exitcode=1 -timeout_exitcode=1 \
  -print_final_stats=1 -artifact_prefix="$work/" "$@" "$work/corpus" "$seeds"
rc=$?
if [ $rc -ne 0 ]; then
  for f in "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*; do
    [ -e "$f" ] && echo "run_fuzz: reproduce with: $fuzzer $f" >&2
  done
fi
exit $rc
