#!/usr/bin/env bash
# Guest-to-guest TCP throughput across Drover's VXLAN overlay, beside the same two
# endpoints on one bridge.
#
# Two network namespaces play two hosts joined by an underlay veth; two more play the
# guests, each plugged into its host's bridge by a veth (where a VM's tap would be), with
# the guest MTU Drover gives (1450). On one bridge both guests sit on host A's bridge; over
# the overlay guest 2 sits on host B's, and each host's bridge joins a VXLAN device made as
# `hostd/src/tap.rs::overlay` makes it (VNI, local address, UDP 4789, MTU 1450, one
# all-zeros FDB entry per peer). A Python sender in guest 1 writes SIZE MiB to a receiver
# in guest 2, RUNS times per layout; the receiver's first-byte-to-EOF time is the figure.
# Everything lives in namespaces this script makes and removes; nothing leaves them.
#
# Usage: bench/overlay_net.sh [RUNS] [SIZE_MIB]   (root; iproute2, python3)
set -euo pipefail
runs="${1:-5}"
size_mib="${2:-1024}"
p=drvbench
ns() { ip netns exec "$p-$1" "${@:2}"; }

cleanup() {
    for n in ha hb g1 g2; do ip netns del "$p-$n" 2>/dev/null || true; done
}
trap cleanup EXIT
cleanup

layout() { # one-bridge | overlay
    cleanup
    for n in ha hb g1 g2; do ip netns add "$p-$n"; ns "$n" ip link set lo up; done
    # Underlay between the hosts.
    ip link add ula netns "$p-ha" type veth peer name ulb netns "$p-hb"
    ns ha ip addr add 192.168.250.1/24 dev ula
    ns hb ip addr add 192.168.250.2/24 dev ulb
    ns ha ip link set ula up
    ns hb ip link set ulb up
    for h in ha hb; do
        ns "$h" ip link add br0 type bridge
        ns "$h" ip link set br0 up
    done
    local host2=ha
    if [ "$1" = overlay ]; then
        host2=hb
        ns ha ip link add vx42 mtu 1450 type vxlan id 42 local 192.168.250.1 dstport 4789
        ns hb ip link add vx42 mtu 1450 type vxlan id 42 local 192.168.250.2 dstport 4789
        for h in ha hb; do
            ns "$h" ip link set vx42 master br0
            ns "$h" ip link set vx42 up
        done
        ns ha bridge fdb append 00:00:00:00:00:00 dev vx42 dst 192.168.250.2
        ns hb bridge fdb append 00:00:00:00:00:00 dev vx42 dst 192.168.250.1
    fi
    # The guests: a veth where the tap would be, the guest MTU.
    ip link add eth0 netns "$p-g1" type veth peer name g1 netns "$p-ha"
    ip link add eth0 netns "$p-g2" type veth peer name g2 netns "$p-$host2"
    ns ha ip link set g1 master br0
    ns "$host2" ip link set g2 master br0
    ns ha ip link set g1 up
    ns "$host2" ip link set g2 up
    for g in 1 2; do
        ns "g$g" ip link set eth0 mtu 1450
        ns "g$g" ip addr add "10.250.0.$g/24" dev eth0
        ns "g$g" ip link set eth0 up
    done
    # (The sender retries its connection for up to 5 s while the layout settles.)
}

receiver='
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.250.0.2", 5201)); s.listen(1); s.settimeout(60)
c, _ = s.accept(); c.settimeout(60)
n, first = 0, None
while True:
    b = c.recv(1 << 20)
    if not b: break
    if first is None: first = time.monotonic()
    n += len(b)
print(f"{n} {time.monotonic() - first:.6f}")
'
sender='
import socket, sys, time
size = int(sys.argv[1]) << 20
for _ in range(100):
    try:
        c = socket.create_connection(("10.250.0.2", 5201), timeout=5); break
    except OSError: time.sleep(0.05)
else:
    sys.exit("guest 2 unreachable")
buf = b"\xa5" * (256 << 10)
left = size
while left > 0:
    c.sendall(buf[: min(left, len(buf))]); left -= min(left, len(buf))
c.close()
'

measure() { # layout -> MiB/s for each run, one per line
    layout "$1"
    for _ in $(seq 1 "$runs"); do
        out="$(mktemp)"
        ns g2 timeout 120 python3 -c "$receiver" >"$out" &
        rpid=$!
        ns g1 timeout 120 python3 -c "$sender" "$size_mib"
        wait "$rpid"
        read -r bytes secs <"$out"
        rm -f "$out"
        python3 -c "print(f'{$bytes / $secs / 1048576:.1f}')"
    done
}

p50() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

echo "guest-to-guest TCP, ${size_mib} MiB per run, p50 of ${runs} runs (MiB/s):"
bridge=$(measure one-bridge | p50)
overlay=$(measure overlay | p50)
echo "| layout | MiB/s | Gbit/s |"
echo "|---|---|---|"
for row in "one bridge:$bridge" "VXLAN overlay across two hosts:$overlay"; do
    name="${row%%:*}"; v="${row##*:}"
    echo "| $name | $v | $(python3 -c "print(f'{$v * 8 * 1048576 / 1e9:.2f}')") |"
done
echo "overlay / one bridge: $(python3 -c "print(f'{$overlay / $bridge:.2f}')")"
