# Shared by scripts/test, scripts/demo and scripts/bench: install what is missing (Debian
# packages only), then configure and build into build/ (or the directory given).

DVERBS_PKGS=(build-essential g++ pkg-config meson ninja-build python3
  libdpdk-dev dpdk libibverbs-dev librdmacm-dev rdmacm-utils ibverbs-utils perftest
  libtbb-dev libisal-dev libgtest-dev libbenchmark-dev
  tshark iproute2 procps passwd util-linux ucx-utils libfabric-bin)

dverbs_install_deps() {
  local missing=()
  for p in "${DVERBS_PKGS[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing Debian packages: ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      echo "dverbs: need root (or sudo) to install: ${missing[*]}" >&2; return 1; fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  dverbs_wait_for_apt_lists
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  dverbs_say_lock_holder
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# Who holds one of these lock files, as "PID (name)"; nothing when none is held. dpkg and
# apt take POSIX record locks, which /proc/locks lists with the owner's pid and the file's
# inode for every user (no fuser, lsof or root needed). Waiters ("->" lines) are skipped.
dverbs_lock_holder() {
  local f ino pid
  for f in "$@"; do
    ino=$(stat -c %i "$f" 2>/dev/null) || continue
    pid=$(awk -v ino="$ino" '$2 != "->" { n = split($6, d, ":"); if (d[n] == ino) { print $5; exit } }' \
      /proc/locks 2>/dev/null)
    [ -n "$pid" ] || continue
    local name
    name=$(cat "/proc/$pid/comm" 2>/dev/null) || name=""
    if [ "$pid" != 0 ] && [ -n "$name" ]; then echo "process $pid ($name)"; else
      echo "another package manager"; fi
    return 0
  done
}

# Says once per run that apt-get is about to wait for dpkg's lock, and for whom. On a fresh
# VM unattended-upgrades holds it for minutes; apt-get then waits (DPkg::Lock::Timeout)
# instead of failing.
dverbs_say_lock_holder() {
  [ -n "${DVERBS_APT_LOCK_SAID:-}" ] && return 0
  local holder
  holder=$(dverbs_lock_holder /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock)
  [ -n "$holder" ] || return 0
  echo "==> waiting (up to 10 minutes) for the dpkg lock, held by $holder"
  DVERBS_APT_LOCK_SAID=1
}

# apt-get update does not wait for the lists lock (DPkg::Lock::Timeout covers dpkg's locks
# only): wait for it here, at most 10 minutes, then let apt-get report what it finds.
dverbs_wait_for_apt_lists() {
  local lock=/var/lib/apt/lists/lock holder i
  dverbs_say_lock_holder
  for ((i = 0; i < 300; i++)); do
    holder=$(dverbs_lock_holder "$lock")
    [ -n "$holder" ] || return 0
    if [ -z "${DVERBS_APT_LOCK_SAID:-}" ]; then
      echo "==> waiting (up to 10 minutes) for the apt lists lock, held by $holder"
      DVERBS_APT_LOCK_SAID=1
    fi
    sleep 2
  done
}

# dverbs_configure DIR [meson options...]: meson setup, once.
dverbs_configure() {
  local dir=$1; shift
  [ -f "$dir/build.ninja" ] && return 0
  echo "==> configuring $dir"
  local log
  log=$(mktemp)
  if ! meson setup "$dir" "$@" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

# dverbs_build DIR [meson options...]   ($DVERBS_BUILD_TARGETS: build only these targets)
dverbs_build() {
  local dir=$1; shift
  dverbs_configure "$dir" "$@"
  echo "==> building $dir"
  # shellcheck disable=SC2086
  ninja -C "$dir" ${DVERBS_BUILD_TARGETS:-} >/dev/null || ninja -C "$dir" ${DVERBS_BUILD_TARGETS:-}
}

# dverbs_suite_targets DIR SUITE...: the build targets (paths relative to DIR) that the
# tests of these meson suites run or depend on.
dverbs_suite_targets() {
  local dir=$1; shift
  meson introspect "$dir" --tests --targets | python3 -c '
import json, os, sys
dir, suites = sys.argv[1], set("dverbs:" + s for s in sys.argv[2:])
info = json.load(sys.stdin)
files = {t["id"]: t["filename"] for t in info["targets"]}
out = set()
for t in info["tests"]:
    if suites & set(t["suite"]):
        for d in t["depends"]:
            for f in files.get(d, []):
                out.add(os.path.relpath(f, os.path.abspath(dir)))
print(" ".join(sorted(out)))
' "$dir" "$@"
}
