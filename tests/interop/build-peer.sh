#!/bin/sh
# Builds tests/interop/peer.c against the system's libibverbs, with no meson:
#
#   tests/interop/build-peer.sh OUT      e.g. build-peer.sh /tmp/peer
#
# Needs a C compiler and libibverbs-dev (Debian: apt-get install gcc libibverbs-dev). The
# same binary runs on a host with Linux rxe and under dverbs-run (which swaps in dverbs'
# libibverbs.so.1). CC and CFLAGS override the compiler and flags.
set -eu
if [ $# -ne 1 ]; then
  echo "usage: $0 OUT" >&2
  exit 2
fi
src=$(dirname "$0")/peer.c
${CC:-cc} ${CFLAGS:--O2 -Wall} -o "$1" "$src" -libverbs
