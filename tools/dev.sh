#!/usr/bin/env bash
# One set-up script behind both README commands.
#   tools/dev.sh demo    install what is missing, build, run the demo
#   tools/dev.sh test    install what is missing, build, run every test (ctest)
#   tools/dev.sh build   install what is missing, build
#   tools/dev.sh bench   build and run the benchmarks (see bench/README.md)
# Debian 12 packages only. Installing needs root (or sudo); nothing is installed when all
# packages are already present.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake ninja-build pkg-config python3
          liburing-dev libabsl-dev libc-ares-dev libgtest-dev libgmock-dev libbenchmark-dev
          dnsmasq-base postfix gnuplot-nox)

install_deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "dev.sh: installing ${missing[*]}" >&2
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -q
  # Postfix is only here for smtp-sink/smtp-source (test peers): no mail system configured.
  echo "postfix postfix/main_mailer_type select No configuration" | "${sudo[@]}" debconf-set-selections
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

build() {
  local werror=OFF
  [ "${CI:-}" = "true" ] && werror=ON
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMXSCHED_WERROR=$werror >/dev/null
  cmake --build build -j"$(nproc)"
}

case "${1:-}" in
  build) install_deps; build ;;
  test)
    install_deps; build
    ctest --test-dir build --output-on-failure -j2 --timeout 600
    ;;
  demo)
    install_deps; build
    ./build/mxsched demo "${@:2}"
    ;;
  bench)
    install_deps; build
    ./build/selector_bench --benchmark_min_time=0.2 "${@:2}"
    ;;
  *) echo "usage: tools/dev.sh demo|test|build|bench" >&2; exit 2 ;;
esac
