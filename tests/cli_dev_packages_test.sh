#!/usr/bin/env bash
# tools/dev.sh's package lists (issue 24 item 1): the README's demo command installs what
# building and running needs and no mail system or test peer; the test command (what CI runs,
# .ci/run) installs every peer the tests use.
#   cli_dev_packages_test.sh SOURCE_DIR
set -u
src=$(realpath "$1")
fail() { echo "FAIL: $*"; exit 1; }
demo=$("$src/tools/dev.sh" print-packages demo) || fail "print-packages demo exited $?"
build=$("$src/tools/dev.sh" print-packages build) || fail "print-packages build exited $?"
test=$("$src/tools/dev.sh" print-packages test) || fail "print-packages test exited $?"
"$src/tools/dev.sh" print-packages bogus >/dev/null 2>&1 && fail "print-packages bogus must fail"
has() { grep -qx -- "$2" <<<"$1"; }

# The demo and the build: a compiler, CMake and the build's libraries, nothing else.
for p in build-essential cmake ninja-build pkg-config liburing-dev libabsl-dev libc-ares-dev \
         libhiredis-dev prometheus-cpp-dev libcivetweb-dev libcli11-dev; do
  has "$demo" "$p" || fail "demo does not install $p"
  has "$build" "$p" || fail "build does not install $p"
done
for p in postfix exim4 sendmail dnsmasq dnsmasq-base redis-server redis-sentinel prometheus tmux \
         clang libclang-rt-14-dev; do
  has "$demo" "$p" && fail "demo installs $p (a test peer)"
  has "$build" "$p" && fail "build installs $p (a test peer)"
done
for p in libgtest-dev libbenchmark-dev; do
  has "$demo" "$p" && fail "demo installs $p (the demo builds no tests)"
  has "$build" "$p" || fail "build does not install $p (it builds the tests and benchmarks)"
done

# The test command installs the demo's packages and the peer behind every program the tests
# run: found with dpkg -S where the program is installed here, so the list follows Debian.
while read -r p; do has "$test" "$p" || fail "test does not install $p (demo does)"; done <<<"$demo"
for prog in smtp-sink smtp-source dnsmasq redis-server redis-sentinel promtool tmux clang++; do
  path=$(command -v "$prog") || continue
  # The link's owner first (/usr/bin/redis-server is redis-server's, its target redis-tools').
  pkg=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$(realpath "$path")" 2>/dev/null) || continue
  pkg=${pkg%%:*}
  has "$test" "$pkg" || fail "$prog is in package $pkg, which test does not install"
  has "$demo" "$pkg" && fail "$prog ($pkg) is a test peer but demo installs it"
done
grep -q '^exec tools/dev.sh test$' "$src/.ci/run" || fail ".ci/run does not run tools/dev.sh test"

# What apt would pull in for the demo (Depends, recursively, no Recommends: dev.sh installs
# with --no-install-recommends) holds no MTA and no peer. Needs apt's package lists.
if apt-cache show build-essential >/dev/null 2>&1; then
  closure() {
    # shellcheck disable=SC2046
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances $1 2>/dev/null | grep -E '^[a-z0-9<]' | sort -u
  }
  dc=$(closure "$demo")
  [ "$(wc -l <<<"$dc")" -gt 50 ] || fail "demo closure suspiciously small: $dc"
  bad=$(grep -E '^(postfix|exim4.*|sendmail.*|<mail-transport-agent>|redis-server|dnsmasq.*|prometheus|tmux)$' <<<"$dc")
  [ -z "$bad" ] || fail "demo would install: $bad"
  # The check can fail: the same closure of a list holding a peer flags it.
  grep -qx postfix <<<"$(closure "tmux postfix")" || fail "the closure check cannot see postfix"
else
  echo "apt package lists missing: dependency closure not checked"
fi
echo "cli_dev_packages_test: all checks passed"
