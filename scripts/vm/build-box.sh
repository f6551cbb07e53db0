#!/usr/bin/env bash
# Build the xdpguard VM box: Debian 12 (bookworm) debootstrapped from the Debian mirror, with
# everything provisioning needs baked in, so that scripts/setup.sh runs in the guest with no
# network: the packages of setup.sh's APT_PACKAGES, the headers of the box's own kernel, and
# wheels (from PyPI) for what Debian 12 lacks, e.g. pyroute2 >= 0.9 (Debian ships 0.7.2).
#
# Usage: scripts/vm/build-box.sh OUTDIR      (root; called by scripts/vm.sh build)
# Writes OUTDIR/box.qcow2 (ext4 on the whole disk, no partition table), OUTDIR/vmlinuz,
# OUTDIR/initrd.img, OUTDIR/kernel-release, OUTDIR/build.log.
# The mirror: $XDPG_VM_MIRROR, else the Debian entry of this machine's apt sources.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$1"
SUITE=bookworm
DISK_SIZE="${XDPG_VM_DISK:-8G}"
WHEEL_DIR=/opt/xdpguard/wheels          # XDPGUARD_WHEELS for setup.sh inside the guest
PROTECTOR_NET_ADDR=198.18.20.2/24       # eth1, the NIC on the host-side namespace's tap

die() { printf 'build-box.sh: error: %s\n' "$*" >&2; exit 1; }
step() { printf '==> %s\n' "$*"; }

# The packages scripts/setup.sh wants (its APT_PACKAGES array), so the guest needs no apt.
setup_packages() {
    sed -n '/^APT_PACKAGES=(/,/^)/p' "$REPO_ROOT/scripts/setup.sh" | sed '1d;$d;s/#.*//' | tr -s ' \n' ' '
}

debian_uri() {  # the URI of this machine's apt source for Debian main (deb822 or one-line)
    local suite="$1" f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] && awk -v s="$suite" '
            /^URIs:/ {u=$2} /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == s) print u} /^$/ {u=""}' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] && awk -v s="$suite" '$1 == "deb" && $3 == s {print $2}' "$f"
    done
    return 0
}

MIRROR="${XDPG_VM_MIRROR:-$(debian_uri "$SUITE" | head -n 1)}"
[[ -n "$MIRROR" ]] || die "no Debian $SUITE source in /etc/apt; set XDPG_VM_MIRROR to a Debian mirror URL"
SECURITY="${XDPG_VM_SECURITY_MIRROR:-$(debian_uri "$SUITE-security" | head -n 1)}"

VAGRANT_PUB="$(find /usr/share -path '*vagrant*/keys/vagrant.pub' 2>/dev/null | head -n 1)"
[[ -n "$VAGRANT_PUB" ]] || die "no Vagrant insecure key (apt-get install vagrant)"

PKG_CACHE="${XDPG_VM_PKG_CACHE:-$(dirname "$OUT")/debs}"   # .debs kept across builds
mkdir -p "$OUT" "$PKG_CACHE"
export PKG_CACHE
work="$(mktemp -d "$OUT/.build.XXXXXX")"
root="$work/root"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# Extra packages beyond setup.sh's: the box's kernel and its headers, sshd, and Debian's
# builds of xdpguard's Python dependencies (pip then only fetches what is missing or too old).
EXTRA=(
    linux-image-amd64 linux-headers-amd64 initramfs-tools systemd-sysv udev kmod
    openssh-server sudo iptables procps less
    python3-click python3-rich python3-prometheus-client python3-pytest python3-hypothesis
    python3-scapy python3-pip
)
read -r -a SETUP_PKGS <<<"$(setup_packages)"

step "debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --cache-dir="$PKG_CACHE" --include=ca-certificates,apt-utils "$SUITE" "$root" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

{
    echo "deb $MIRROR $SUITE main"
    echo "deb $MIRROR $SUITE-updates main"
    [[ -n "$SECURITY" ]] && echo "deb $SECURITY $SUITE-security main"
} >"$root/etc/apt/sources.list"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"   # no daemons start in the chroot
chmod +x "$root/usr/sbin/policy-rc.d"

# Runs in a private mount namespace, so /proc etc. inside the chroot vanish with it.
in_root() {
    unshare --mount --propagation private -- bash -c '
        r="$1"; shift
        mount -t proc proc "$r/proc"; mount -t sysfs sys "$r/sys"; mount --bind /dev "$r/dev"
        mount -t devpts devpts "$r/dev/pts" 2>/dev/null || true
        mount --bind "$PKG_CACHE" "$r/var/cache/apt/archives"
        exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive HOME=/root "$@"
    ' in_root "$root" "$@"
}

step "installing ${#SETUP_PKGS[@]} setup.sh packages, the kernel, its headers and sshd"
in_root apt-get update -qq >/dev/null
in_root apt-get install -y -qq --no-install-recommends "${EXTRA[@]}" "${SETUP_PKGS[@]}" \
    >"$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; die "apt-get install in the box failed"; }

kver="$(ls "$root/lib/modules" | sort -V | tail -n 1)"
[[ -d "$root/usr/src/linux-headers-$kver" ]] || die "no headers for the box kernel $kver"

step "wheels for what Debian lacks (into $WHEEL_DIR)"
mkdir -p "$root$WHEEL_DIR"
# pip download fetches the whole requirement set, for the box's Python (bookworm's 3.11, the
# same as this machine's when it is Debian 12); in the guest pip install --no-index then takes
# Debian's copies where they are new enough and the wheels for the rest (pyroute2 >= 0.9).
pybox="$(in_root python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
python3 - "$REPO_ROOT/pyproject.toml" >"$root$WHEEL_DIR/requirements.txt" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
for r in p["dependencies"] + p.get("optional-dependencies", {}).get("test", []):
    print(r)
EOF
python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version "$pybox" --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform linux_x86_64 -d "$root$WHEEL_DIR" "setuptools>=64" wheel \
    -r "$root$WHEEL_DIR/requirements.txt" >"$work/pip.log" 2>&1 \
    || { tail -n 20 "$work/pip.log" >&2; die "pip download failed (this machine's pip, for Python $pybox)"; }

step "configuring users, network, sshd"
in_root useradd -m -s /bin/bash -G sudo vagrant
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
for home in "$root/home/vagrant" "$root/root"; do
    install -d -m 0700 "$home/.ssh"
    install -m 0600 "$VAGRANT_PUB" "$home/.ssh/authorized_keys"
done
in_root chown -R vagrant:vagrant /home/vagrant/.ssh
echo xdpguard >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 xdpguard\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
echo '/dev/vda / ext4 defaults,errors=remount-ro 0 1' >"$root/etc/fstab"
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=eth0\n[Network]\nDHCP=ipv4\nIPv6AcceptRA=no\nLinkLocalAddressing=no\n' \
    >"$root/etc/systemd/network/10-eth0.network"
# eth1: the protector's NIC toward the host-side namespace; no default route, no RA.
printf '[Match]\nName=eth1\n[Network]\nAddress=%s\nIPv6AcceptRA=no\n' "$PROTECTOR_NET_ADDR" \
    >"$root/etc/systemd/network/20-eth1.network"
in_root systemctl enable systemd-networkd ssh serial-getty@ttyS0 >/dev/null 2>&1
# Timers and servers the box does not need (setup.sh wants prometheus only for promtool).
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
    man-db.timer systemd-networkd-wait-online.service prometheus.service \
    prometheus-node-exporter.service >/dev/null 2>&1 || true
echo 'UseDNS no' >"$root/etc/ssh/sshd_config.d/xdpguard.conf"
: >"$root/etc/machine-id"
echo "$kver" >"$root/etc/xdpguard-box-kernel"

rm -f "$root/usr/sbin/policy-rc.d"
rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/tmp/"*

step "image: ext4 over the whole disk ($DISK_SIZE), kernel $kver"
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
mkfs.ext4 -q -F -L xdpguard -d "$root" "$work/root.raw" "$DISK_SIZE"
qemu-img convert -c -O qcow2 "$work/root.raw" "$work/box.qcow2"
echo "$kver" >"$work/kernel-release"
cat "$work"/debootstrap.log "$work"/apt.log "$work"/pip.log >"$work/build.log" 2>/dev/null || true
for f in box.qcow2 vmlinuz initrd.img kernel-release build.log; do mv -f "$work/$f" "$OUT/$f"; done
step "box ready: $OUT/box.qcow2 ($(du -h "$OUT/box.qcow2" | cut -f1)), kernel $kver"
