#!/usr/bin/env bash
# The duplicate-stanza check of the configuration parser is linear (issue 20: a scan of every
# pattern so far made 100,000 `Host "*.pN.example"` stanzas take 13.6 s to `check`, 50,000
# 2.7 s — quadratic). Times `mxsched check` (CPU seconds, user + sys) on N = 25k, 50k, 100k
# pattern stanzas and prints the ratio of each doubling: ~2 is linear (n log n with the sort
# by specificity), ~4 quadratic. A ratio, not a timed test; bounded: three runs of `check`.
#   bench/config_stanzas.sh BUILD_DIR
set -euo pipefail
build=${1:-build}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
prev=""
printf '| stanzas | check CPU s | ratio to half as many |\n|---|---|---|\n'
for n in 25000 50000 100000; do
  python3 -c "
import sys
n = int(sys.argv[1])
with open(sys.argv[2], 'w') as f:
    for i in range(n):
        f.write(f'Host \"*.p{i}.example\" {{ max_outbound_connections = 2 }}\n')
" "$n" "$dir/c$n.conf"
  t=$( { /usr/bin/time -f '%U %S' "$build/mxsched" check --config "$dir/c$n.conf" >/dev/null; } 2>&1 |
       tail -1 | awk '{print $1 + $2}')
  if [ -n "$prev" ]; then
    ratio=$(awk -v a="$t" -v b="$prev" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
  else
    ratio="-"
  fi
  printf '| %d | %s | %s |\n' "$n" "$t" "$ratio"
  prev=$t
done
