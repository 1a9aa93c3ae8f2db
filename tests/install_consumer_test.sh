#!/usr/bin/env bash
# Packaging as an embedder meets it (docs/DESIGN.md §2, "Public API and stability"):
# `cmake --install` into a temporary prefix, then
#  - exactly the public headers are installed (no internal or testbed header), and each
#    compiles on its own with only the prefix and its component's dependencies;
#  - a selector-only consumer (tests/consumer_selector) configures, builds and runs with
#    every optional package disabled: hiredis, liburing, c-ares (pkg-config), prometheus-cpp,
#    civetweb, nlohmann-json; `pkg-config --libs mxsched` names none of them;
#  - a consumer of every component (tests/consumer: README's snippets) builds with
#    find_package(... COMPONENTS io cluster admin) and with pkg-config, and runs;
#  - connector.h (io) pulls in no hiredis: `pkg-config --libs mxsched-io` names none;
#  - a version the package does not satisfy is refused; the CLI says its version.
#   install_consumer_test.sh BUILD_DIR SOURCE_DIR CXX [EXTRA_FLAGS]
# EXTRA_FLAGS: the build's sanitizer flags, which the installed static libraries need.
set -u
build=$1 src=$2 cxx=$3 flags=${4:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >"$work/install.log" || { cat "$work/install.log"; fail "cmake --install"; }

# --- exactly the public headers ---------------------------------------------------------
installed=$(cd "$prefix/include" && find . -type f | sed 's|^\./||' | sort)
expected=$( (cd "$src/include" && find mxsched -name '*.h'; echo mxsched/version.h) | sort)
if [ "$installed" != "$expected" ]; then
  diff <(echo "$expected") <(echo "$installed")
  fail "installed headers differ from include/ (left: expected, right: installed)"
fi
for internal in domain_table.h epoch.h slot_waiters.h route_interner.h route_planner.h \
                server_credit.h selector_impl.h host_registry.h redis_async.h farm.h load.h; do
  ! grep -q "/$internal$" <<<"$installed" || fail "internal header $internal installed"
done
# Each public header compiles alone against the prefix (it includes nothing uninstalled).
inc=(-I"$prefix/include" $(pkg-config --cflags liburing libcares prometheus-cpp-core 2>/dev/null))
while read -r h; do
  printf '#include "%s"\n#include "%s"\n' "$h" "$h" >"$work/one.cc"
  # shellcheck disable=SC2086
  "$cxx" -std=c++20 -fsyntax-only $flags "${inc[@]}" "$work/one.cc" 2>"$work/one.log" \
    || { cat "$work/one.log"; fail "public header $h does not compile on its own"; }
done <<<"$installed"
# The connector's header (component io) pulls in nothing of Redis.
printf '#include "mxsched/io/connector.h"\n' >"$work/one.cc"
deps=$("$cxx" -std=c++20 -M "${inc[@]}" "$work/one.cc") || fail "connector.h dependencies"
! grep -qiE "hiredis|redis_async|cluster_limits" <<<"$deps" || fail "connector.h includes Redis headers"

if [ -x "$build/mxsched" ]; then
  v=$("$prefix/bin/mxsched" --version) || fail "installed CLI --version"
  grep -q "^mxsched 0\.3\." <<<"$v" || fail "CLI version: $v"
fi
printf 'routes = ( "smtp://127.0.0.1?port=1" )\nprohibited_hosts = ( )\nconnect_timeout = 5\n' >"$work/mx.conf"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

# --- the selector alone, with no optional package to be found ---------------------------
no_optional=(-DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON -DCMAKE_DISABLE_FIND_PACKAGE_hiredis=ON
             -DCMAKE_DISABLE_FIND_PACKAGE_prometheus-cpp=ON -DCMAKE_DISABLE_FIND_PACKAGE_civetweb=ON
             -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON -DCMAKE_DISABLE_FIND_PACKAGE_CURL=ON)
PKG_CONFIG_LIBDIR=/nonexistent cmake -S "$src/tests/consumer_selector" -B "$work/sel" -G Ninja \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="$flags" "${no_optional[@]}" "${launcher[@]}" >"$work/sel.log" 2>&1 \
  || { cat "$work/sel.log"; fail "selector-only find_package(mxsched 0.3) without optional packages"; }
cmake --build "$work/sel" >>"$work/sel.log" 2>&1 || { cat "$work/sel.log"; fail "selector-only build"; }
out=$("$work/sel/selector_consumer" "$work/mx.conf") || fail "selector consumer exited $?: $out"
grep -q "^lease 127.0.0.1:1$" <<<"$out" && grep -q "^done$" <<<"$out" || fail "selector consumer: $out"
! ldd "$work/sel/selector_consumer" | grep -E "uring|cares|hiredis|prometheus|civetweb" \
  || fail "the selector-only consumer links an optional library"
# Asking for a component its dependencies cannot serve fails at configure time, naming it.
PKG_CONFIG_LIBDIR=/nonexistent cmake -S "$src/tests/consumer" -B "$work/nodeps" -G Ninja \
  -DCMAKE_PREFIX_PATH="$prefix" "${no_optional[@]}" >"$work/nodeps.log" 2>&1 \
  && fail "COMPONENTS io cluster admin configured without liburing, c-ares, hiredis or prometheus-cpp"

pcdir=$(dirname "$(find "$prefix" -name mxsched.pc | head -1)")
[ -n "$pcdir" ] || fail "mxsched.pc installed"
for pc in mxsched mxsched-io mxsched-cluster mxsched-admin; do
  [ -f "$pcdir/$pc.pc" ] || fail "$pc.pc installed"
done
core_libs=$(PKG_CONFIG_PATH="$pcdir" pkg-config --libs mxsched) || fail "pkg-config mxsched"
! grep -qE "uring|cares|hiredis|prometheus|civetweb" <<<"$core_libs" \
  || fail "pkg-config --libs mxsched names an optional library: $core_libs"
[ "$(PKG_CONFIG_PATH="$pcdir" pkg-config --modversion mxsched)" = 0.3.0 ] || fail "pkg-config version"

# --- every component --------------------------------------------------------------------
check_run() {  # BINARY LABEL
  out=$("$1" "$work/mx.conf") || fail "$2: consumer exited $?: $out"
  echo "$2: $out" | head -5
  grep -q "^mxsched 0\.3\." <<<"$out" || fail "$2: version macro"
  grep -q "^lease 127.0.0.1:1$" <<<"$out" || fail "$2: selector lease"
  grep -q "^admin on port 1$" <<<"$out" || fail "$2: admin endpoint"
  grep -q "^fleet off$" <<<"$out" || fail "$2: cluster component"
  grep -q "^stopped$" <<<"$out" || fail "$2: README reuse snippet: Stop, then parked connections closed"
  grep -q "^done$" <<<"$out" || fail "$2: connector finished"
  err=$("$1" "$work/missing.conf" 2>&1); rc=$?
  [ $rc -eq 2 ] && grep -q "missing.conf" <<<"$err" || fail "$2: unchecked LoadConfigFile ($rc): $err"
}
cmake -S "$src/tests/consumer" -B "$work/cmake" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" \
  "${launcher[@]}" >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; fail "find_package(mxsched 0.3 COMPONENTS io cluster admin)"; }
cmake --build "$work/cmake" >>"$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; fail "CMake consumer build"; }
check_run "$work/cmake/consumer" find_package
# A version the package does not satisfy is refused (0.x: the minor version must match).
mkdir -p "$work/v9"
printf 'cmake_minimum_required(VERSION 3.22)\nproject(v LANGUAGES CXX)\nfind_package(mxsched 0.2 REQUIRED)\n' >"$work/v9/CMakeLists.txt"
cmake -S "$work/v9" -B "$work/v9/b" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null 2>&1 && fail "find_package(mxsched 0.2) accepted 0.3"

io_libs=$(PKG_CONFIG_PATH="$pcdir" pkg-config --libs mxsched-io) || fail "pkg-config mxsched-io"
! grep -q "hiredis" <<<"$io_libs" || fail "pkg-config --libs mxsched-io names hiredis: $io_libs"
pc=$(PKG_CONFIG_PATH="$pcdir" pkg-config --static --cflags --libs mxsched-cluster mxsched-admin) \
  || fail "pkg-config mxsched-cluster mxsched-admin"
# shellcheck disable=SC2086
${CCACHE:-} "$cxx" -std=c++20 $flags "$src/tests/consumer/main.cc" -o "$work/pc_consumer" $pc \
  || fail "pkg-config consumer build ($pc)"
check_run "$work/pc_consumer" pkg-config
echo "install_consumer_test: all checks passed"
