#!/usr/bin/env bash
# docs/VERBS.md and verbs_surface_test agree: every Surface.* test the table quotes exists
# in the program, and every test of the program is quoted in the table.
#
#   verbs_surface_doc.sh VERBS_MD PROG
#
# Listing the tests runs no verb (GoogleTest's --gtest_list_tests), so the program runs
# without dverbs-run.
set -u
doc=$1 prog=$2
[ -r "$doc" ] || { echo "FAIL: $doc not readable"; exit 1; }
listed=$("$prog" --gtest_list_tests | awk '/^[^ ]/ {suite = $1} /^  / {print suite $1}' | sort -u)
[ -n "$listed" ] || { echo "FAIL: $prog lists no tests"; exit 1; }
quoted=$(grep -o 'Surface\.[A-Za-z0-9_]\+' "$doc" | sort -u)
status=0
missing=$(comm -23 <(echo "$quoted") <(echo "$listed"))
unquoted=$(comm -13 <(echo "$quoted") <(echo "$listed"))
if [ -n "$missing" ]; then
  echo "FAIL: quoted in $(basename "$doc") but not a test of $(basename "$prog"):"
  echo "$missing"
  status=1
fi
if [ -n "$unquoted" ]; then
  echo "FAIL: tests of $(basename "$prog") that $(basename "$doc") does not quote:"
  echo "$unquoted"
  status=1
fi
[ $status = 0 ] && echo "ok: $(echo "$listed" | wc -l) tests, each quoted in $(basename "$doc")"
exit $status
