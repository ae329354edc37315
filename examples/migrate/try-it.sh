#!/usr/bin/env bash
# Live migration between two network namespaces, as a user would try it (run as root from the
# workspace root). Builds a client host and hosts A and B on one bridge, starts the counter
# service on A, a client streaming numbered lines to it, then moves the service address and
# every connection from A to B mid-stream. The client checks every answer and exits 0 only if
# nothing was lost, repeated or reset. Everything lives in namespaces named cttm-try-*; they
# are deleted on every exit path.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces, TCP_REPAIR)" >&2; exit 1; }
cargo build -q -p cttm-migrate
BIN=$PWD/target/debug/cttm-migrate
P=cttm-try-$$
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    for n in client a b sw; do ip netns del "$P-$n" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

ip netns add "$P-sw"
ip -n "$P-sw" link add br0 type bridge
ip -n "$P-sw" link set br0 up
for h in client a b; do
    ip netns add "$P-$h"
    ip -n "$P-sw" link add "v-$h" type veth peer name eth0 netns "$P-$h"
    ip -n "$P-sw" link set "v-$h" master br0 up
    ip -n "$P-$h" link set lo up
    ip -n "$P-$h" link set eth0 up
done
ip -n "$P-client" addr add 198.18.0.1/24 dev eth0
ip -n "$P-a" addr add 198.18.0.2/24 dev eth0
ip -n "$P-a" addr add 198.18.0.10/24 dev eth0     # the service address, on A for now
ip -n "$P-b" addr add 198.18.0.3/24 dev eth0

ip netns exec "$P-b" "$BIN" receive --control 198.18.0.3:9100 --interface eth0 --address 198.18.0.10/24 &
sleep 0.3
ip netns exec "$P-a" "$BIN" serve --listen 198.18.0.10:9000 --handoff 198.18.0.3:9100 &
A=$!
sleep 0.3
ip netns exec "$P-client" "$BIN" client --connect 198.18.0.10:9000 --lines 60 --interval-ms 50 &
CLIENT=$!
sleep 1.5
echo "--- migrating from A to B (SIGUSR1 to the service on A)"
kill -USR1 "$A"
wait "$CLIENT"
echo "--- the service address is now on B:"
ip -n "$P-b" -br addr show eth0
