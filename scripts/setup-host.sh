#!/bin/sh
# Prepares a Debian 12 machine to run ebb's demo and its real-guest tests:
# installs the virtualization packages, starts virtlogd and libvirtd by hand
# (these machines have no systemd) and waits until libvirt answers.
# Idempotent: a rerun on a prepared host only checks and returns in a second.
set -eu

# qemu-guest-agent: its qemu-ga goes into the test guest image (the host never runs it).
# nftables: the surrogate's kernel path for awake VMs (`[surrogate] awake_path`) runs nft.
# apache2-utils: ab, a standard load tool the surrogate's crowd test runs; iproute2 and
# util-linux (ip netns, nsenter, unshare, prlimit): the tests' network namespace.
# libnss3-tools: certutil, which makes the CA and upsd's certificate database for the NUT-over-TLS tests.
# etcd-server, etcd-client: the farm's store (the farm tests start their own etcd on loopback);
# protobuf-compiler, libprotobuf-dev: protoc and its well-known protos, which the etcd-client
# crate's build needs (protoc alone fails on google/protobuf/descriptor.proto).
# ipmitool: the coordinator wakes a host by IPMI with it; python3-venv and python3-libvirt: the
# venv of the BMC emulators the wake tests run (virtualbmc for IPMI, sushy-tools for Redfish);
# openssl makes the self-signed certificate of their Redfish over https.
# systemd and man-db: the unit file's test checks it with systemd-analyze verify (which reads its man: page).
# chromium: the headless browser the web view's tests drive (ebb_lab::browser); fonts-dejavu-core
# so that text renders in their screenshots (chromium only recommends a font).
PACKAGES="qemu-system-x86 qemu-utils qemu-guest-agent nut-server nut-client libvirt-daemon-system libvirt-clients libvirt-dev \
busybox-static linux-image-amd64 cpio zstd kmod pkg-config sqlite3 curl nftables apache2-utils iproute2 util-linux libnss3-tools \
etcd-server etcd-client protobuf-compiler libprotobuf-dev ipmitool python3-venv python3-libvirt openssl systemd man-db \
chromium fonts-dejavu-core"
URI="qemu:///system"

step() { printf 'setup-host: %s\n' "$*"; }
die() { printf 'setup-host: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run me as root (I install packages and start libvirtd)"

missing=""
for p in $PACKAGES; do
    if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    step "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null \
        || die "apt-get install failed for:$missing"
else
    step "packages already installed ($(echo $PACKAGES | wc -w) checked)"
fi

if pgrep -x virtlogd >/dev/null; then
    step "virtlogd already running"
else
    step "starting virtlogd"
    virtlogd -d || die "virtlogd did not start"
fi

if pgrep -x libvirtd >/dev/null; then
    step "libvirtd already running"
else
    step "starting libvirtd"
    libvirtd -d || die "libvirtd did not start"
fi

i=0
until virsh -c "$URI" version >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -le 60 ] || die "libvirt at $URI did not answer within 30 s (see /var/log/libvirt/libvirtd.log)"
    sleep 0.5
done
step "libvirt at $URI answers: $(virsh -c "$URI" version 2>/dev/null | grep -i 'running hypervisor' | sed 's/^ *//')"

# The BMC emulators of the wake tests, from PyPI (Debian has neither) in a venv on Debian's
# python3, whose site packages give them python3-libvirt (a pip-built libvirt-python would
# need libvirt-dev and a compiler). Checked by running them, so a broken venv is remade.
BMC_VENV=/var/lib/ebb-lab/bmc-venv
if "$BMC_VENV/bin/vbmc" --version >/dev/null 2>&1 && "$BMC_VENV/bin/sushy-emulator" --help >/dev/null 2>&1; then
    step "BMC emulators already in $BMC_VENV"
else
    step "installing virtualbmc and sushy-tools into $BMC_VENV"
    rm -rf "$BMC_VENV"; mkdir -p "$(dirname "$BMC_VENV")"
    /usr/bin/python3 -m venv --system-site-packages "$BMC_VENV" || die "cannot make the venv $BMC_VENV (python3-venv)"
    "$BMC_VENV/bin/pip" install -q --disable-pip-version-check virtualbmc sushy-tools >/dev/null \
        || die "pip install virtualbmc sushy-tools failed (PyPI reachable?)"
fi

# ebb itself is built from source: a Rust toolchain must be there already.
command -v cargo >/dev/null || die "cargo is missing: install a Rust toolchain (rustup, Rust ≥ 1.85) first"
step "cargo: $(cargo --version)"
