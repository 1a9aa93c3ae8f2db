# Sourced by the CLI tests that run dnsmasq beside the farm (cli_farm_load, cli_output), with
# $dns_net set (the third octet of the test's addresses): exits 77 (skip) when dnsmasq is
# missing, sources harness.sh, and gives $DNSMASQ (the binary), $port (for the farm) and
# $dport (for dnsmasq), free ports, $net ("$test_net.$dns_net", a 127.N no other running
# test uses: tests/test_net.sh), and start_dnsmasq RECORDS... (dnsmasq in the background on
# 127.0.0.1:$dport, answering for /test/ alone from RECORDS, e.g. --mx-host=... and
# --host-record=..., TTL 300, no negative cache; its stderr in $work/dnsmasq.err, its PID in
# $pids).
DNSMASQ=$(command -v dnsmasq || ls /usr/sbin/dnsmasq 2>/dev/null)
[ -n "$DNSMASQ" ] || { echo "SKIP: dnsmasq not installed (Debian dnsmasq-base)"; exit 77; }
. "$(dirname "${BASH_SOURCE[0]}")/harness.sh"  # $work, $pids, cleanup, fail, free_port, claim_test_net
port=$(free_port); dport=$(free_port)
claim_test_net
net="$test_net.$dns_net"
start_dnsmasq() {
  "$DNSMASQ" --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-negcache \
    --listen-address=127.0.0.1 --bind-interfaces --user=root --pid-file= --port="$dport" \
    --local-ttl=300 --local=/test/ "$@" 2>"$work/dnsmasq.err" &
  pids+=($!)
}
