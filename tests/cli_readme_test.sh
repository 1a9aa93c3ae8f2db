#!/usr/bin/env bash
# README.md against the code (issue 24 items 1, 3, 5): the first screen's two set-up
# commands, the plain CMake recipe, the embedding names, a CLI list with every subcommand and
# every flag `--help` shows, and the "testing on loopback" block run as written — in a
# private network namespace (unshare -n), so its fixed addresses and ports meet no other test.
#   cli_readme_test.sh SOURCE_DIR MXSCHED_BINARY
# The loopback block is skipped (the rest still checked) without dnsmasq or unshare rights.
set -u
src=$(realpath "$1")
bin=$(realpath "$2")
readme="$src/README.md"
. "$(dirname "$0")/harness.sh"  # $work, $pids, cleanup, fail, free_port, claim_test_net

# The first code block: exactly the two set-up commands.
first=$(awk '/^```/{n++; next} n==1' "$readme")
[ "$(cut -c1-17 <<<"$first")" = $'tools/dev.sh demo\ntools/dev.sh test' ] || fail "first block: $first"
grep -qF 'cmake -S . -B build && cmake --build build' "$readme" || fail "plain CMake recipe"
# Every package tools/dev.sh installs is in the dependency list.
for p in $("$src/tools/dev.sh" print-packages test); do
  grep -qF "\`$p\`" "$readme" || fail "README's dependencies lack $p"
done
grep -q 'mxsched::AdminServer' "$readme" && fail "README names mxsched::AdminServer"
grep -qF 'mxsched::admin::AdminServer::Start(' "$readme" || fail "AdminServer example"
grep -q '^namespace mxsched::admin {' "$src/include/mxsched/admin/admin_server.h" &&
  grep -q '^class AdminServer {' "$src/include/mxsched/admin/admin_server.h" || fail "AdminServer moved?"

# The CLI list: a line "mxsched SUB ..." and its indented continuation lines per subcommand.
python3 - "$readme" "$bin" <<'PY' || fail "README's CLI list"
import re, subprocess, sys
text = open(sys.argv[1]).read()
block = text[text.index("```\nmxsched help"):]
block = block[4:block.index("```", 4)]
lines = {}
sub = None
for line in block.splitlines():
    if line.startswith("mxsched "):
        sub = line.split()[1]
        lines[sub] = line
    elif sub and line.startswith(" "):
        lines[sub] += " " + line
top = subprocess.run([sys.argv[2], "--help"], capture_output=True, text=True).stdout
subs = re.findall(r"^  ([a-z]+) {2,}", top[top.index("Subcommands:"):], re.M)
assert len(subs) >= 6, top
bad = []
for s in subs:
    if s not in lines:
        bad.append(f"{s}: not listed")
        continue
    out = subprocess.run([sys.argv[2], s, "--help"], capture_output=True, text=True).stdout
    for flag in re.findall(r"^\s+(?:-\w,)?(--?[a-z][a-z-]*)", out, re.M):
        if flag in ("-h", "--help"):
            continue
        if not re.search(re.escape(flag) + r"(?![a-z-])", lines[s]):
            bad.append(f"{s} {flag}")
assert not bad, "missing from README's CLI list: " + ", ".join(bad)
PY

# The loopback block, as written, with this build's binary and this test's scratch directory.
DNSMASQ=$(command -v dnsmasq || ls /usr/sbin/dnsmasq 2>/dev/null)
if [ -z "$DNSMASQ" ] || ! unshare -n true 2>/dev/null; then
  echo "SKIP (loopback block): needs dnsmasq and unshare -n (root)"
  echo "cli_readme_test: all checks passed"
  exit 0
fi
awk '/^### Testing on loopback/{f=1} f && /^```sh/{g=1; next} g && /^```/{exit} g' "$readme" |
  sed -e "s|build/mxsched|$bin|g" -e "s|/usr/sbin/dnsmasq|$DNSMASQ|" -e "s|/tmp/|$work/|g" \
  >"$work/block.sh"
grep -q "route --config" "$work/block.sh" || fail "loopback block not found"
timeout 60 unshare -n bash -c 'ip link set lo up && exec bash -e "$0"' "$work/block.sh" \
  >"$work/block.out" 2>"$work/block.err"; rc=$?
[ $rc -eq 0 ] || fail "loopback block exit $rc: $(tail -5 "$work/block.err") $(tail -5 "$work/block.out")"
grep -q "^a.test: ready, 1 tier(s), 2 host(s)" "$work/block.out" || fail "route: $(cat "$work/block.out")"
grep -Eq "^sessions 1,?000: connected 1,?000, deferred 0, failed 0" "$work/block.out" ||
  fail "load: $(grep -m3 -E '^(sessions|deferred|failed)' "$work/block.out")"
echo "cli_readme_test: all checks passed"
