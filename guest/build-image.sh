#!/bin/sh
# Builds ebb's test guest image into OUT_DIR:
#   OUT_DIR/vmlinuz     the host's Debian kernel (/boot/vmlinuz-<ver>)
#   OUT_DIR/initrd.img  cpio newc + gzip: busybox-static and its applet links,
#                       the virtio modules of <ver>, guest/init as /init,
#                       the memory workload and the httpd CGI scripts.
# The guest files are read from this script's own folder, so ebb can write its
# embedded copies to a temp folder and run the script from there.
# Kernel version: $EBB_GUEST_KVER, else the newest /boot/vmlinuz-*.
set -eu

die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: build-image.sh OUT_DIR"
OUT=$1
SRC=$(cd "$(dirname "$0")" && pwd)

KVER=${EBB_GUEST_KVER:-}
if [ -z "$KVER" ]; then
    k=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$k" ] || die "no /boot/vmlinuz-* found: install linux-image-amd64 (scripts/setup-host.sh)"
    KVER=${k#/boot/vmlinuz-}
fi
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER/kernel
[ -r "$KERNEL" ] || die "$KERNEL is missing or unreadable"
[ -d "$MODDIR" ] || die "$MODDIR is missing: the kernel's modules are not installed"

BUSYBOX=$(command -v busybox || true)
for b in /bin/busybox /usr/bin/busybox; do [ -x "$b" ] && BUSYBOX=$b && break; done
[ -n "$BUSYBOX" ] || die "busybox not found: install busybox-static"
command -v cpio >/dev/null || die "cpio not found: install cpio"

mkdir -p "$OUT"
ROOT=$(mktemp -d "${TMPDIR:-/tmp}/ebb-guest-root.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT

mkdir -p "$ROOT"/bin "$ROOT"/sbin "$ROOT"/usr/bin "$ROOT"/usr/sbin "$ROOT"/etc \
    "$ROOT"/proc "$ROOT"/sys "$ROOT"/dev "$ROOT"/tmp "$ROOT"/run "$ROOT"/root \
    "$ROOT"/lib/modules "$ROOT"/www/cgi-bin
cp "$BUSYBOX" "$ROOT"/bin/busybox
chmod 0755 "$ROOT"/bin/busybox
# One link per applet, where busybox itself says it belongs.
"$BUSYBOX" --list-full | while read -r path; do
    [ "$path" = bin/busybox ] && continue
    mkdir -p "$ROOT/$(dirname "$path")"
    ln -sf /bin/busybox "$ROOT/$path"
done
[ -e "$ROOT"/bin/sh ] || ln -sf /bin/busybox "$ROOT"/bin/sh

# Modules in load order; /init loads whatever of this list is present.
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
virtio_balloon failover net_failover virtio_net virtio_blk evdev button virtio_console"
: > "$ROOT"/lib/modules/order
for m in $MODULES; do
    f=$(find "$MODDIR" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n 1)
    if [ -z "$f" ]; then
        # Optional: the disk, and the power button (clean shutdown).
        case "$m" in virtio_blk|evdev|button|virtio_console) continue ;; esac
        die "module $m not found under $MODDIR"
    fi
    case "$f" in
        *.ko.xz)  xz -dc "$f" > "$ROOT/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" > "$ROOT/lib/modules/$m.ko" ;;
        *.ko.gz)  gzip -dc "$f" > "$ROOT/lib/modules/$m.ko" ;;
        *)        cp "$f" "$ROOT/lib/modules/$m.ko" ;;
    esac
    echo "$m" >> "$ROOT"/lib/modules/order
done

install -m 0755 "$SRC"/init "$ROOT"/init
install -m 0755 "$SRC"/ebb-mem "$ROOT"/bin/ebb-mem
for c in status mem release hit hits bulk cpu disk work net; do
    install -m 0755 "$SRC/cgi-bin/$c" "$ROOT/www/cgi-bin/$c"
done
# The QEMU guest agent and the libraries it links: through it the guest
# onlines and offlines its own vCPUs when ebb asks (virsh setvcpus --guest).
QGA=$(command -v qemu-ga || true)
[ -x /usr/sbin/qemu-ga ] && QGA=/usr/sbin/qemu-ga
[ -n "$QGA" ] || die "qemu-ga not found: install qemu-guest-agent (scripts/setup-host.sh)"
install -D -m 0755 "$QGA" "$ROOT"/usr/sbin/qemu-ga
for lib in $(ldd "$QGA" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$ROOT"/etc/passwd
printf 'root:x:0:\n' > "$ROOT"/etc/group
# busybox init: nothing to respawn; it only reaps orphans and never exits.
printf '::ctrlaltdel:/sbin/reboot -f\n' > "$ROOT"/etc/inittab
echo "$KVER" > "$ROOT"/etc/ebb-kernel

# Fixed mtimes, sorted names, no inode numbers: the same inputs give the same bytes.
REPRO=
cpio --help 2>/dev/null | grep -q -- --reproducible && REPRO=--reproducible
find "$ROOT" -exec touch -h -d @0 {} + 2>/dev/null || true
(cd "$ROOT" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet $REPRO) \
    | gzip -n -6 > "$OUT"/initrd.img.tmp
mv "$OUT"/initrd.img.tmp "$OUT"/initrd.img
cp "$KERNEL" "$OUT"/vmlinuz.tmp
mv "$OUT"/vmlinuz.tmp "$OUT"/vmlinuz
chmod 0644 "$OUT"/vmlinuz "$OUT"/initrd.img
echo "$KVER" > "$OUT"/kernel-version
printf 'build-image: %s/vmlinuz (%s), %s/initrd.img (%s bytes)\n' \
    "$OUT" "$KVER" "$OUT" "$(wc -c < "$OUT"/initrd.img)"
