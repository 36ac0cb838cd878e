#!/bin/sh
# lab-netns.sh up NS DIR — a network of its own for real-guest tests (the lab
# runs it; shared/farm-lab/host-libvirtd.sh is where it was verified):
#   netns NS with a bridge ebb-br0 at 10.77.0.1/24, and a privileged libvirtd +
#   virtlogd whose QEMUs run in NS, so a guest's virtio-net sits on a tap on
#   that bridge, and ebb and its clients reach it over real TCP, not QEMU's
#   user-mode forward. The daemons run in a private mount namespace with
#   libvirt's fixed folders bound to DIR/root/*; their URI is
#   qemu+unix:///system?socket=DIR/root/run/libvirt-sock (printed).
# Idempotent: when that libvirtd answers already, nothing is done. Kept up for
# later runs, as the system libvirtd is (its first start costs ~8 s).
# Why nsenter --net and not `ip netns exec`: the latter remounts /sys, hiding
# the cgroups. Only *.conf is copied from /etc/libvirt, so the system daemon's
# domains stay its own. Traffic never leaves NS: no route, no uplink.
set -eu
cmd=${1:-}; ns=${2:-}; d=${3:-}
[ "$cmd" = up ] && [ -n "$ns" ] && [ -n "$d" ] || { echo "usage: $0 up NS DIR" >&2; exit 2; }
R=$d/root
U="qemu+unix:///system?socket=$R/run/libvirt-sock"
if virsh -c "$U" version >/dev/null 2>&1; then echo "$U"; exit 0; fi
ip netns list | grep -qw "$ns" || ip netns add "$ns"
ip -n "$ns" link set lo up
if ! ip -n "$ns" link show ebb-br0 >/dev/null 2>&1; then
    ip -n "$ns" link add ebb-br0 type bridge
    ip -n "$ns" addr add 10.77.0.1/24 dev ebb-br0
fi
ip -n "$ns" link set ebb-br0 up
mkdir -p "$R/run" "$R/lib" "$R/log" "$R/cache" "$R/etc/qemu"
cp /etc/libvirt/*.conf "$R/etc/"
for p in libvirtd virtlogd; do
    [ -f "$R/run/$p.pid" ] && kill "$(cat "$R/run/$p.pid")" 2>/dev/null || true
done
nsenter --net="/var/run/netns/$ns" unshare --mount --propagation private sh -ec "
    mount --bind '$R/run' /run/libvirt
    mount --bind '$R/lib' /var/lib/libvirt
    mount --bind '$R/etc' /etc/libvirt
    mount --bind '$R/log' /var/log/libvirt
    mount --bind '$R/cache' /var/cache/libvirt
    virtlogd -d --pid-file '$R/run/virtlogd.pid'
    libvirtd -d --pid-file '$R/run/libvirtd.pid'"
i=0
until virsh -c "$U" version >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -le 120 ] || { echo "the libvirtd of $ns did not answer within 30 s" >&2; exit 1; }
    sleep 0.25
done
echo "$U"
