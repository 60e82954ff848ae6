# Shared by scripts/test, scripts/demo and scripts/bench: install what is missing (Debian
# packages only), then configure and build into build/ (or the directory given).

DVERBS_PKGS=(build-essential g++ pkg-config meson ninja-build python3
  libdpdk-dev dpdk libibverbs-dev ibverbs-utils perftest
  libtbb-dev libisal-dev libgtest-dev libbenchmark-dev
  tshark iproute2 procps)

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

# dverbs_build DIR [meson options...]   ($DVERBS_BUILD_TARGETS: build only these targets)
dverbs_build() {
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    echo "==> configuring $dir"
    local log
    log=$(mktemp)
    if ! meson setup "$dir" "$@" >"$log" 2>&1; then
      tail -n 20 "$log" >&2
      rm -f "$log"
      return 1
    fi
    rm -f "$log"
  fi
  echo "==> building $dir"
  # shellcheck disable=SC2086
  ninja -C "$dir" ${DVERBS_BUILD_TARGETS:-} >/dev/null || ninja -C "$dir" ${DVERBS_BUILD_TARGETS:-}
}
