#!/usr/bin/env bash
# Builds ebb's Debian package (cargo-deb), installs it as an operator would
# (apt-get, so its dependencies resolve), checks what a new operator relies
# on, then purges it and checks that nothing is left, so a rerun starts
# clean. --keep leaves the package installed. Run as root on Debian 12; CI
# runs it after scripts/test.sh, so setup-host.sh has run and libvirtd is up.
# Each step says how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
case "${1:-}" in
    --keep) keep=1 ;;
    "") ;;
    *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
esac

say() { printf 'package: %s\n' "$*"; }
die() { printf 'package: FAILED: %s\n' "$*" >&2; exit 1; }
# timed NAME CMD...: runs CMD, then says how long it took.
timed() {
    local name=$1 start=$SECONDS
    shift
    say "$name ..."
    "$@" || die "$name (exit $?)"
    say "$name: done in $((SECONDS - start)) s"
}

[ "$(id -u)" = 0 ] || die "run me as root (I install and purge the package)"
export DEBIAN_FRONTEND=noninteractive
URI="qemu:///system"
BIN="${CARGO_TARGET_DIR:-target}/release/ebb"
# Where crates/ebb/Cargo.toml's [package.metadata.deb] takes them from.
ASSETS="${CARGO_TARGET_DIR:-target}/release/deb-assets"
OUT=target/debian

# --- Tools and host.
# The package's `ebb check` is only meaningful against a live libvirt, and
# setup-host.sh also brings libvirt-dev (the build), systemd and man-db (the
# checks). On a prepared host it returns in a second.
if ! virsh -c "$URI" version >/dev/null 2>&1; then
    timed "host set-up (scripts/setup-host.sh: libvirt at $URI did not answer)" ./scripts/setup-host.sh
fi
# cargo-deb's "$auto" dependencies come from dpkg-shlibdeps (dpkg-dev).
if ! command -v dpkg-shlibdeps >/dev/null; then
    timed "apt-get install dpkg-dev" apt-get install -y -q dpkg-dev
fi
if ! cargo deb --version >/dev/null 2>&1; then
    timed "cargo install cargo-deb" cargo install cargo-deb --locked
fi
say "$(cargo deb --version)"

# --- Build: the daemon alone (no lab tooling), then the files the binary
# writes about itself, then the .deb from that very binary.
timed "release build (cargo build --release -p ebb --no-default-features)" \
    cargo build --release -p ebb --no-default-features --locked
# (Called through `timed`'s `||`, where set -e is off: hence the &&.)
gen_assets() {
    mkdir -p "$ASSETS" &&
        "$BIN" man | gzip -9n >"$ASSETS/ebb.1.gz" &&
        "$BIN" completions bash >"$ASSETS/ebb.bash" &&
        "$BIN" completions zsh >"$ASSETS/_ebb" &&
        "$BIN" completions fish >"$ASSETS/ebb.fish"
}
timed "man page and completions (ebb man, ebb completions)" gen_assets
rm -f "$OUT"/ebb_*.deb
# --strip: the release profile keeps line tables (debug = "line-tables-only"),
# which would make the package several times larger.
timed "Debian package (cargo deb -p ebb --no-build --strip)" cargo deb -p ebb --no-build --strip --output "$OUT/"
deb=$(ls "$OUT"/ebb_*.deb)
say "$deb: $(stat -c %s "$deb") bytes ($(du -h "$deb" | cut -f1)), installed size $(dpkg-deb -f "$deb" Installed-Size) KiB"
say "Depends: $(dpkg-deb -f "$deb" Depends)"

# --- Install, as the README says. A stale package list can miss a
# dependency: refresh it then, once.
install_deb() {
    apt-get install -y -q "./$deb" || { apt-get update -q && apt-get install -y -q "./$deb"; }
}
timed "apt-get install ./$deb" install_deb

# --- What a new operator relies on, each failing with what is wrong.
check_installed() {
    dpkg -s ebb 2>/dev/null | grep -q '^Status: install ok installed' || die "dpkg -s ebb: the package is not installed"
    say "ok: dpkg -s ebb: $(dpkg-query -W -f='${Package} ${Version} ${Architecture}' ebb)"
    local v
    v=$(/usr/bin/ebb --version) || die "/usr/bin/ebb --version failed"
    say "ok: /usr/bin/ebb --version: $v"
    getent group ebb >/dev/null || die "no group ebb: the postinst should have made it (agent.socket_group)"
    say "ok: group ebb: $(getent group ebb)"
    for f in /etc/ebb/ebb.toml /etc/ebb/ebb.example.toml; do
        [ -f "$f" ] || die "$f is missing"
    done
    say "ok: /etc/ebb/ebb.toml and /etc/ebb/ebb.example.toml are there"
    local out
    out=$(/usr/bin/ebb check --config /etc/ebb/ebb.toml 2>&1) || die "ebb check --config /etc/ebb/ebb.toml refused the packaged config:
$out"
    # `ebb check` passes without libvirt too (its guests are advice): here it must have read them.
    ! grep -q '^guests: not checked' <<<"$out" || die "ebb check could not read libvirt at $URI:
$out"
    say "ok: ebb check --config /etc/ebb/ebb.toml:"
    sed 's/^/    /' <<<"$out"
    out=$(systemd-analyze verify /lib/systemd/system/ebb.service 2>&1) || die "systemd-analyze verify /lib/systemd/system/ebb.service:
$out"
    say "ok: systemd-analyze verify /lib/systemd/system/ebb.service${out:+ (it said: $out)}"
    # Enabled (deb-systemd-helper makes the link even where systemd is not running), not started.
    [ -L /etc/systemd/system/multi-user.target.wants/ebb.service ] || die "ebb.service is not enabled (no link in multi-user.target.wants)"
    say "ok: ebb.service is enabled"
    out=$(man -w ebb 2>&1) || die "man -w ebb does not find the manual page: $out"
    say "ok: man -w ebb: $out"
    local comp=/usr/share/bash-completion/completions/ebb
    [ -f "$comp" ] || die "$comp (bash completion) is missing"
    bash -c "source $comp && complete -p ebb" >/dev/null 2>&1 || die "$comp does not define a completion for ebb"
    say "ok: $comp completes ebb"
}
timed "checks of the installed package" check_installed

if [ "$keep" = 1 ]; then
    say "--keep: ebb stays installed"
    exit 0
fi

# --- Purge, and nothing of it left (the group ebb stays, by Debian's rule
# for system groups: see contrib/debian/postrm).
timed "apt-get purge -y ebb" apt-get purge -y -q ebb
check_purged() {
    ! dpkg -s ebb >/dev/null 2>&1 || die "dpkg still knows ebb: $(dpkg-query -W -f='${Status}' ebb)"
    local left=""
    for f in /usr/bin/ebb /etc/ebb /lib/systemd/system/ebb.service /etc/systemd/system/multi-user.target.wants/ebb.service \
        /usr/share/man/man1/ebb.1.gz /usr/share/bash-completion/completions/ebb /var/lib/ebb/journal.db; do
        [ ! -e "$f" ] && [ ! -L "$f" ] || left="$left $f"
    done
    [ -z "$left" ] || die "left after the purge:$left"
    say "ok: purged: no ebb package, binary, /etc/ebb, unit, man page, completion or journal left"
    say "the group ebb stays (Debian keeps system groups): $(getent group ebb || echo 'none')"
}
timed "checks after the purge" check_purged
