#!/usr/bin/env bash
# One set-up script behind both README commands.
#   tools/dev.sh demo    install what building and running needs, build, run the demo
#   tools/dev.sh test    install that plus the test peers, build, run every test: sanitizer
#                        builds (ASan+UBSan, TSan), the fuzzers for a bounded time, then ctest
#   tools/dev.sh build   install what building needs (no test peer), build with the tests
#                        and benchmarks
#   tools/dev.sh bench   build and run the selector benchmarks (see bench/README.md)
#   tools/dev.sh print-packages demo|build|test   the Debian packages that command installs
# Debian 12 packages only. Installing needs root (or sudo); nothing is installed when all
# packages are already present. MXSCHED_QUICK=1 skips the sanitizer and fuzz stages.
#
# `demo` and `build` install no mail system and no test peer (ctest cli_dev_packages): Postfix
# (smtp-sink/smtp-source) conflicts with a host's own MTA, and redis-server, dnsmasq,
# prometheus, tmux and clang are only what the tests talk to or build with.
set -euo pipefail
cd "$(dirname "$0")/.."

# Compiler, build tools and the -dev libraries of the library and the CLI.
BUILD_PACKAGES=(build-essential cmake ninja-build pkg-config
                liburing-dev libabsl-dev libc-ares-dev nlohmann-json3-dev libcli11-dev
                libhiredis-dev prometheus-cpp-dev libcivetweb-dev libcurl4-openssl-dev)
# What the demo uses at run time besides the build: gnuplot draws demo.png.
DEMO_PACKAGES=(gnuplot-nox)
# The tests' and benchmarks' own libraries and tools: `build` builds them too.
DEV_PACKAGES=(libgtest-dev libgmock-dev libbenchmark-dev python3 ccache)
# The peers the tests run against on loopback: Postfix for smtp-sink/smtp-source, dnsmasq,
# redis-server/redis-sentinel (redis-cli comes with them), promtool (prometheus), tmux
# (`top`), and clang + its runtime for the fuzzers.
PEER_PACKAGES=(dnsmasq-base postfix redis-server redis-sentinel prometheus tmux
               clang libclang-rt-14-dev)
FUZZ_SECONDS=${FUZZ_SECONDS:-30}

# packages_for COMMAND: the packages COMMAND needs, one per line.
packages_for() {
  case "$1" in
    build) printf '%s\n' "${BUILD_PACKAGES[@]}" "${DEV_PACKAGES[@]}" ;;
    demo) printf '%s\n' "${BUILD_PACKAGES[@]}" "${DEMO_PACKAGES[@]}" ;;
    test | bench)
      printf '%s\n' "${BUILD_PACKAGES[@]}" "${DEMO_PACKAGES[@]}" "${DEV_PACKAGES[@]}" \
        "${PEER_PACKAGES[@]}" ;;
    *) echo "dev.sh: print-packages demo|build|test" >&2; return 2 ;;
  esac
}

# install_deps COMMAND
install_deps() {
  local wanted missing=()
  mapfile -t wanted < <(packages_for "$1")
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "dev.sh: installing ${missing[*]}" >&2
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -q
  # Postfix is only here for smtp-sink/smtp-source (test peers): no mail system configured.
  if [[ " ${missing[*]} " == *" postfix "* ]]; then
    echo "postfix postfix/main_mailer_type select No configuration" |
      "${sudo[@]}" debconf-set-selections
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

werror() { [ "${CI:-}" = "true" ] && echo ON || echo OFF; }

# configure_and_build DIR [cmake args...]
configure_and_build() {
  local dir=$1; shift
  local launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMXSCHED_WERROR="$(werror)" \
    "${launcher[@]}" "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)"
}

# build [demo]: the normal build; for the demo without the tests and benchmarks, so their
# libraries (gtest, benchmark) are not needed.
build() {
  if [ "${1:-}" = demo ]; then
    configure_and_build build -DMXSCHED_BUILD_TESTS=OFF -DMXSCHED_BUILD_BENCHMARKS=OFF
  else
    configure_and_build build -DMXSCHED_BUILD_TESTS=ON -DMXSCHED_BUILD_BENCHMARKS=ON
  fi
}

sanitizers() {
  echo "== AddressSanitizer + UndefinedBehaviorSanitizer: unit and integration tests"
  configure_and_build build-asan -DMXSCHED_SANITIZE=address,undefined -DMXSCHED_BUILD_BENCHMARKS=OFF
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j2 --timeout 600 -E 'cli_demo'
  echo "== ThreadSanitizer: selector, epoch, connector, resolver and load tests"
  configure_and_build build-tsan -DMXSCHED_SANITIZE=thread -DMXSCHED_BUILD_BENCHMARKS=OFF \
    -DMXSCHED_BUILD_TOOLS=OFF
  TSAN_OPTIONS=halt_on_error=1 build-tsan/mxsched_unit_tests --gtest_brief=1
  TSAN_OPTIONS=halt_on_error=1 build-tsan/mxsched_io_tests --gtest_brief=1
}

fuzz() {
  if ! command -v clang++ >/dev/null; then
    echo "== fuzzers skipped: clang++ not installed"
    return 0
  fi
  echo "== libFuzzer: ${FUZZ_SECONDS} s per parser (config, route, dns, greeting)"
  configure_and_build build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DMXSCHED_BUILD_FUZZERS=ON \
    -DMXSCHED_SANITIZE=address,undefined -DMXSCHED_BUILD_TESTS=OFF \
    -DMXSCHED_BUILD_BENCHMARKS=OFF -DMXSCHED_BUILD_TOOLS=OFF
  for target in config route dns greeting; do
    local work="build-fuzz/corpus-$target"
    mkdir -p "$work"
    # New inputs go to the scratch corpus; the seeds in fuzz/corpus stay as committed.
    # A crash writes build-fuzz/crash-* and fails the run: add it as a regression test.
    local rc=0
    build-fuzz/${target}_fuzzer -max_total_time="$FUZZ_SECONDS" -max_len=4096 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix=build-fuzz/ "$work" "fuzz/corpus/$target" \
      >"build-fuzz/$target.log" 2>&1 || rc=$?
    echo "$target: $(grep -E '^stat::number_of_executed_units' "build-fuzz/$target.log" | tr -d ' ')"
    if [ $rc -ne 0 ]; then
      grep -E "ERROR|SUMMARY|Test unit written|==" "build-fuzz/$target.log" | head -40
      echo "fuzzer $target failed (exit $rc)"
      exit 1
    fi
  done
}

case "${1:-}" in
  print-packages) packages_for "${2:-}" ;;
  build) install_deps build; build ;;
  test)
    install_deps test; build
    if [ "${MXSCHED_QUICK:-0}" != 1 ]; then
      sanitizers
      fuzz
    fi
    echo "== tests (ctest)"
    ctest --test-dir build --output-on-failure -j2 --timeout 600
    ;;
  demo)
    install_deps demo; build demo
    ./build/mxsched demo "${@:2}"
    ;;
  bench)
    install_deps bench; build
    python3 bench/ratios.py build
    ;;
  *) echo "usage: tools/dev.sh demo|test|build|bench|print-packages COMMAND" >&2; exit 2 ;;
esac
