# Sourced by the CLI tests that run dnsmasq beside the farm (cli_farm_load, cli_output), with
# $dns_net set (the third octet of the test's addresses): exits 77 (skip) when dnsmasq is
# missing, sources harness.sh, and gives $DNSMASQ (the binary), $port (for the farm) and
# $dport (for dnsmasq), free ports, and $net ("$test_net.$dns_net", a 127.N no other running
# test uses: tests/test_net.sh).
DNSMASQ=$(command -v dnsmasq || ls /usr/sbin/dnsmasq 2>/dev/null)
[ -n "$DNSMASQ" ] || { echo "SKIP: dnsmasq not installed (Debian dnsmasq-base)"; exit 77; }
. "$(dirname "${BASH_SOURCE[0]}")/harness.sh"  # $work, $pids, cleanup, fail, free_port, claim_test_net
port=$(free_port); dport=$(free_port)
claim_test_net
net="$test_net.$dns_net"
