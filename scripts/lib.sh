# Shared by scripts/test, scripts/demo and scripts/bench: install what is missing (Debian
# packages only), then configure and build into build/ (or the directory given).

DVERBS_PKGS=(build-essential g++ pkg-config meson ninja-build python3
  libdpdk-dev dpdk libibverbs-dev ibverbs-utils perftest
  libtbb-dev libisal-dev libgtest-dev libbenchmark-dev
  tshark iproute2 procps passwd util-linux)

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
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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
