#!/usr/bin/env bash
# Packaging as an embedder meets it: `cmake --install` into a temporary prefix, then build
# tests/consumer (README's embedding snippets) out of tree twice — with find_package(mxsched
# 0.2) + mxsched::io, and with pkg-config mxsched-io — and run both against a config with a
# literal route. Also: headers only under include/mxsched/, the CLI installed with --version.
#   install_consumer_test.sh BUILD_DIR SOURCE_DIR CXX [EXTRA_FLAGS]
# EXTRA_FLAGS: the build's sanitizer flags, which the installed static libraries need.
set -u
build=$1 src=$2 cxx=$3 flags=${4:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >"$work/install.log" || { cat "$work/install.log"; fail "cmake --install"; }
[ -f "$prefix/include/mxsched/scheduler/selector.h" ] || fail "headers under include/mxsched/"
[ -f "$prefix/include/mxsched/version.h" ] || fail "version.h installed"
[ ! -e "$prefix/include/scheduler" ] && [ ! -e "$prefix/include/io" ] || fail "headers outside include/mxsched/"
if [ -x "$build/mxsched" ]; then
  v=$("$prefix/bin/mxsched" --version) || fail "installed CLI --version"
  grep -q "^mxsched 0\.2\." <<<"$v" || fail "CLI version: $v"
fi
printf 'routes = ( "smtp://127.0.0.1?port=1" )\nprohibited_hosts = ( )\nconnect_timeout = 5\n' >"$work/mx.conf"
check_run() {  # BINARY LABEL
  out=$("$1" "$work/mx.conf") || fail "$2: consumer exited $?: $out"
  echo "$2: $out" | head -4
  grep -q "^mxsched 0\.2\." <<<"$out" || fail "$2: version macro"
  grep -q "^lease 127.0.0.1:1$" <<<"$out" || fail "$2: selector lease"
  grep -q "^done$" <<<"$out" || fail "$2: connector finished"
  err=$("$1" "$work/missing.conf" 2>&1); rc=$?
  [ $rc -eq 2 ] && grep -q "missing.conf" <<<"$err" || fail "$2: unchecked LoadConfigFile ($rc): $err"
}
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$src/tests/consumer" -B "$work/cmake" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" \
  "${launcher[@]}" >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; fail "find_package(mxsched 0.2)"; }
cmake --build "$work/cmake" >>"$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; fail "CMake consumer build"; }
check_run "$work/cmake/consumer" find_package
# A version the package does not satisfy is refused.
mkdir -p "$work/v9"
printf 'cmake_minimum_required(VERSION 3.22)\nproject(v LANGUAGES CXX)\nfind_package(mxsched 9.0 REQUIRED)\n' >"$work/v9/CMakeLists.txt"
cmake -S "$work/v9" -B "$work/v9/b" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null 2>&1 && fail "find_package(mxsched 9.0) accepted 0.2"

pcdir=$(dirname "$(find "$prefix" -name mxsched-io.pc | head -1)")
[ -n "$pcdir" ] || fail "mxsched-io.pc installed"
pc=$(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs mxsched-io) || fail "pkg-config mxsched-io"
[ "$(PKG_CONFIG_PATH="$pcdir" pkg-config --modversion mxsched)" = 0.2.0 ] || fail "pkg-config version"
# shellcheck disable=SC2086
${CCACHE:-} "$cxx" -std=c++20 $flags "$src/tests/consumer/main.cc" -o "$work/pc_consumer" $pc \
  || fail "pkg-config consumer build ($pc)"
check_run "$work/pc_consumer" pkg-config
echo "install_consumer_test: all checks passed"
