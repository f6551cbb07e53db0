#!/usr/bin/env bash
# Boot Debian's own kernel (linux-image-<KV> from the mirror) under qemu with this machine's root
# filesystem shared read-only (9p, tmpfs overlay inside the guest) and run one job in it.
# Usage: scripts/vm/hostroot.sh 'shell command'   (runs as root in the guest; output on stdout)
# Exit status: the job's. Needs qemu-system-x86, kmod (busybox-static is fetched as a .deb). Caches under $XDPG_VM_CACHE.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${XDPG_VM_CACHE:-/var/cache/xdpguard/vm}"
KV="${XDPG_VM_KERNEL:-6.1.0-57-amd64}"
MEM="${XDPG_VM_MEM:-3072}"
TIMEOUT="${XDPG_VM_TIMEOUT:-1500}"
OUTDIR="${XDPG_VM_OUT:-$CACHE/out}"   # the guest's /xdpg-out (read-write)
job="$1"
mkdir -p "$OUTDIR"

kdir="$CACHE/kernel-$KV"
if [[ ! -f "$kdir/boot/vmlinuz-$KV" ]]; then
    mkdir -p "$CACHE/debs" "$kdir"
    (cd "$CACHE/debs" && apt-get download "linux-image-$KV" >/dev/null)
    dpkg-deb -x "$CACHE"/debs/linux-image-"$KV"_*.deb "$kdir"
    ln -sfn "/usr/src/linux-headers-$KV" "$kdir/lib/modules/$KV/build"
    ln -sfn "/usr/src/linux-headers-${KV%-*}-common" "$kdir/lib/modules/$KV/source"
    depmod -b "$kdir" "$KV"
fi
initrd="$kdir/initrd-hostroot.cpio.gz"
if [[ ! -f "$initrd" || "$HERE/initramfs-init" -nt "$initrd" || "$HERE/hostroot-stage2" -nt "$initrd" ]]; then
    t="$(mktemp -d)"
    mkdir -p "$t/bin" "$t/mods" "$t/proc" "$t/sys" "$t/dev"
    # a static busybox: setup.sh installs Debian's dynamic `busybox`, which replaces busybox-static
    # and panics this initramfs ("Failed to execute /init"); the static one comes from its .deb
    if [[ ! -x "$CACHE/busybox-static/bin/busybox" ]]; then
        mkdir -p "$CACHE/debs" && (cd "$CACHE/debs" && apt-get download busybox-static >/dev/null)
        dpkg-deb -x "$(ls "$CACHE"/debs/busybox-static_*.deb | tail -1)" "$CACHE/busybox-static"
    fi
    cp "$CACHE/busybox-static/bin/busybox" "$t/bin/busybox"
    cp "$HERE/initramfs-init" "$t/init"
    cp "$HERE/hostroot-stage2" "$t/xdpg-stage2"
    : > "$t/modules.order"
    for m in virtio_pci 9pnet_virtio 9p overlay; do
        modprobe -d "$kdir" -S "$KV" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
    done | awk '!seen[$0]++' | while read -r ko; do
        cp "$ko" "$t/mods/"; basename "$ko" >> "$t/modules.order"
    done
    (cd "$t" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.tmp"
    mv "$initrd.tmp" "$initrd"; rm -rf "$t"
fi
accel=tcg,thread=multi
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
timeout --foreground -k 10 "$TIMEOUT" qemu-system-x86_64 -machine q35 -accel "$accel" -cpu max -smp 2 -m "$MEM" \
    -nographic -no-reboot -serial mon:stdio -display none \
    -kernel "$kdir/boot/vmlinuz-$KV" -initrd "$initrd" \
    -append "console=ttyS0 quiet panic=-1 xdpg.job=$(printf %s "$job" | base64 -w0)" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$kdir/lib/modules/$KV,mount_tag=kmods,security_model=none,readonly=on" \
    -virtfs "local,path=$OUTDIR,mount_tag=out,security_model=none" \
    -nic none </dev/null | tee "$out" | tr -d '\r'
status="$(tr -d '\r' < "$out" | sed -n 's/^XDPG-EXIT=\([0-9]*\).*/\1/p' | tail -1)"
exit "${status:-99}"
