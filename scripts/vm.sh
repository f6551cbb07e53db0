#!/usr/bin/env bash
# xdpguard in a Debian 12 VM under qemu, on Debian 12's own kernel, with native XDP on virtio_net.
#
#   scripts/vm.sh build            build the box (cached; offline from the internet: the Debian
#                                  mirror and PyPI only) and print its directory
#   scripts/vm.sh up               boot it (KVM when it really works, else TCG: probed)
#   scripts/vm.sh ssh [CMD...]     a shell (or CMD) in the guest as user vagrant (sudo works)
#   scripts/vm.sh provision        copy this work tree to /vagrant in the guest and run setup.sh
#                                  there with no network (packages and wheels are in the box)
#   scripts/vm.sh smoke            guest kernel, XDP mode on the virtio NIC, block/unblock toggle
#   scripts/vm.sh test [ARGS...]   scripts/test.sh ARGS inside the guest (default: the whole suite)
#   scripts/vm.sh bench [N [S]]    drop rate and CPU per dropped packet in the guest: xdpguard vs
#                                  iptables raw vs nft ingress; floods of at most N packets and S
#                                  seconds from the host-side namespace (scripts/vm/bench.py)
#   scripts/vm.sh down             stop the VM and remove its namespace and disk overlay
#   scripts/vm.sh status           is it up; accel, kernel, ports
#   scripts/vm.sh accel            kvm or tcg: what this machine's /dev/kvm really runs (probed)
#
# Networks. The VM's eth0 is qemu user-mode networking with restrict=on (no way out), its only
# host-side door an ssh forward on 127.0.0.1:2222 inside our namespace. eth1 is a virtio NIC on a
# tap in that namespace (xgvm-<pid>): the "attacker" side, 198.18.20.1, sends to the protective
# IP 198.18.20.2 on the VM. qemu itself runs inside the namespace: nothing in the root namespace
# is touched. smoke and test boot a VM when none is up and stop it again when they finish.
#
# Environment: XDPG_VM_CACHE (box cache, default /var/cache/xdpguard/vm), XDPG_VM_ACCEL=kvm|tcg
# (skip the probe), XDPG_VM_CPUS (2), XDPG_VM_MEM (MiB, 3072), XDPG_VM_MIRROR (Debian mirror),
# XDPG_VM_BOOT_TIMEOUT (s, 600).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VM_DIR="$REPO_ROOT/scripts/vm"
CACHE="${XDPG_VM_CACHE:-/var/cache/xdpguard/vm}"
STATE="${XDPG_VM_STATE:-/run/xdpguard-vm}"     # the running VM: netns, qemu pid, accel
CPUS="${XDPG_VM_CPUS:-2}"
MEM="${XDPG_VM_MEM:-3072}"
BOOT_TIMEOUT="${XDPG_VM_BOOT_TIMEOUT:-600}"
SSH_PORT=2222
TAP=xgtap0
HOST_ADDR=198.18.20.1          # the attacker end of eth1, in our namespace
GUEST_ADDR=198.18.20.2         # the protective IP: the VM's eth1 (see build-box.sh)
WHEELS=/opt/xdpguard/wheels
HOST_PACKAGES=(qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client busybox-static cpio
               iproute2 vagrant netsniff-ng)

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'vm.sh: error: %s\n' "$*" >&2; exit 2; }

[[ "$(id -u)" -eq 0 ]] || die "must run as root (network namespaces, taps, the box cache)"

host_packages() {
    local missing=() p
    for p in "${HOST_PACKAGES[@]}"; do
        [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] || missing+=("$p")
    done
    if ((${#missing[@]})); then
        step "installing host packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# ---- the box --------------------------------------------------------------------------------

box_key() {  # a hash of everything the box is built from
    {
        cat "$VM_DIR/build-box.sh"
        sed -n '/^APT_PACKAGES=(/,/^)/p' "$REPO_ROOT/scripts/setup.sh"
        sed -n '/^dependencies/,/^\[tool/p' "$REPO_ROOT/pyproject.toml"
        echo "${XDPG_VM_MIRROR:-}" "${XDPG_VM_DISK:-}"
    } | sha256sum | cut -c1-16
}

BOX="$CACHE/box-$(box_key)"

cmd_build() {
    host_packages
    if [[ -f "$BOX/box.qcow2" && "${1:-}" != "--force" ]]; then
        step "box cached: $BOX ($(du -h "$BOX/box.qcow2" | cut -f1), kernel $(cat "$BOX/kernel-release"))"
    else
        local t0=$SECONDS
        mkdir -p "$CACHE"
        rm -rf "$BOX"
        bash "$VM_DIR/build-box.sh" "$BOX.partial"
        mv "$BOX.partial" "$BOX"
        echo "$((SECONDS - t0))" >"$BOX/build-seconds"
        step "box built in $((SECONDS - t0)) s: $BOX ($(du -h "$BOX/box.qcow2" | cut -f1))"
    fi
    install -m 0600 "$(find /usr/share -path '*vagrant*/keys/vagrant' | head -n 1)" "$CACHE/vagrant.key"
    echo "$BOX"
}

# ---- acceleration: KVM only when a stock Debian kernel really boots on it ----------------------

probe_initrd() {
    local f="$CACHE/probe-initrd.cpio.gz" t
    [[ -f "$f" ]] && { echo "$f"; return; }
    t="$(mktemp -d)"
    mkdir -p "$t/bin"
    cp /bin/busybox "$t/bin/busybox"
    printf '#!/bin/busybox sh\n/bin/busybox echo XDPG-PROBE-BOOTED\n/bin/busybox poweroff -f\n' >"$t/init"
    chmod +x "$t/init"
    (cd "$t" && find . | cpio -o -H newc --quiet | gzip -1) >"$f"
    rm -rf "$t"
    echo "$f"
}

probe_accel() {
    if [[ -n "${XDPG_VM_ACCEL:-}" ]]; then
        echo "$XDPG_VM_ACCEL"; return
    fi
    if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
        step "accel: tcg (no usable /dev/kvm)"; echo tcg; return
    fi
    local key cached out
    key="$(printf '%s %s %s' "$(uname -r)" "$(qemu-system-x86_64 --version | head -n 1)" \
        "$(cat "$BOX/kernel-release")" | sha256sum | cut -c1-16)"
    cached="$CACHE/accel-$key"
    if [[ -f "$cached" ]]; then
        step "accel: $(cat "$cached") (probed before for this host kernel, qemu and box kernel)"
        cat "$cached"; return
    fi
    # A PVM or otherwise odd /dev/kvm may hang a stock kernel early ("Probing EDD"): boot the
    # box's kernel on KVM with a two-line initramfs and look for its message.
    out="$(timeout -k 5 30 qemu-system-x86_64 -machine q35 -accel kvm -cpu host -m 256 -nographic \
        -no-reboot -nic none -kernel "$BOX/vmlinuz" -initrd "$(probe_initrd)" \
        -append "console=ttyS0 panic=-1 quiet" </dev/null 2>&1 || true)"
    if grep -q XDPG-PROBE-BOOTED <<<"$out"; then
        echo kvm >"$cached"
    else
        echo tcg >"$cached"
    fi
    step "accel: $(cat "$cached") (probe: the box kernel $(grep -q XDPG-PROBE-BOOTED <<<"$out" \
        && echo booted || echo 'did not reach init within 30 s') on /dev/kvm)"
    cat "$cached"
}

# ---- running VM -----------------------------------------------------------------------------

state_get() { cat "$STATE/$1" 2>/dev/null || true; }

qemu_alive() {
    local pid
    pid="$(state_get qemu.pid)"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "qemu-system.*xdpguard-vm"
}

vm_ssh() {  # vm_ssh [-t] [CMD...]
    local ns tty=()
    if [[ "${1:-}" == -t ]]; then
        shift
        [[ -t 0 ]] && tty=(-t)
    fi
    ns="$(state_get netns)"
    [[ -n "$ns" ]] || die "no VM is up (scripts/vm.sh up)"
    ip netns exec "$ns" ssh "${tty[@]}" -q -i "$CACHE/vagrant.key" -p "$SSH_PORT" -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 -o BatchMode=yes \
        -o ServerAliveInterval=30 vagrant@127.0.0.1 "$@"
}

in_ns() { ip netns exec "$(state_get netns)" "$@"; }

cmd_up() {
    if qemu_alive; then
        step "VM already up (netns $(state_get netns), accel $(state_get accel))"
        return 0
    fi
    cmd_down_quiet
    cmd_build >/dev/null
    local accel ns cpu t0
    accel="$(probe_accel)"
    ns="xgvm-$$"
    mkdir -p "$STATE"
    echo "$ns" >"$STATE/netns"
    echo "$accel" >"$STATE/accel"
    echo "$BOX" >"$STATE/box"
    ip netns add "$ns"
    in_ns ip link set lo up
    in_ns ip tuntap add dev "$TAP" mode tap multi_queue
    in_ns ip addr add "$HOST_ADDR/24" dev "$TAP"
    in_ns ip link set "$TAP" up
    qemu-img create -q -f qcow2 -F qcow2 -b "$BOX/box.qcow2" "$STATE/disk.qcow2"
    if [[ "$accel" == kvm ]]; then cpu=host; else cpu=max; accel="tcg,thread=multi"; fi
    local queues=$((2 * CPUS))
    step "booting the box ($(cat "$BOX/kernel-release"), $accel, $CPUS CPUs, $MEM MiB) in netns $ns"
    t0=$SECONDS
    # Guest offloads off on eth1: native XDP on virtio_net refuses LRO-like offloads.
    in_ns qemu-system-x86_64 -name xdpguard-vm -machine q35 -accel "$accel" -cpu "$cpu" \
        -smp "$CPUS" -m "$MEM" -display none -no-reboot -daemonize -pidfile "$STATE/qemu.pid" \
        -serial "file:$STATE/console.log" -monitor none \
        -kernel "$BOX/vmlinuz" -initrd "$BOX/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1" \
        -drive "file=$STATE/disk.qcow2,if=virtio,format=qcow2,cache=unsafe,discard=unmap" \
        -netdev "user,id=mgmt,net=198.18.100.0/24,host=198.18.100.2,dhcpstart=198.18.100.15,dns=198.18.100.3,restrict=on,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22" \
        -device virtio-net-pci,netdev=mgmt,mac=52:54:00:18:64:0f \
        -netdev "tap,id=data,ifname=$TAP,script=no,downscript=no,queues=$queues" \
        -device "virtio-net-pci,netdev=data,mac=52:54:00:18:14:02,mq=on,vectors=$((2 * queues + 2)),guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off"
    while ! vm_ssh true 2>/dev/null; do
        if ! qemu_alive; then
            tail -n 40 "$STATE/console.log" >&2 || true
            cmd_down_quiet
            die "the VM stopped while booting (console above)"
        fi
        if ((SECONDS - t0 > BOOT_TIMEOUT)); then
            tail -n 40 "$STATE/console.log" >&2 || true
            cmd_down_quiet
            die "no ssh within $BOOT_TIMEOUT s (console above)"
        fi
        sleep 2
    done
    echo "$((SECONDS - t0))" >"$STATE/boot-seconds"
    # Like a Vagrant VM: the default route via the management NIC (restrict=on: it leads nowhere).
    vm_ssh "sudo ip route replace default via 198.18.100.2 dev eth0" || true
    step "VM up in $((SECONDS - t0)) s: kernel $(vm_ssh uname -r), ssh via scripts/vm.sh ssh"
}

cmd_down_quiet() {
    local pid ns i
    pid="$(state_get qemu.pid)"
    if qemu_alive; then
        vm_ssh sudo poweroff -f >/dev/null 2>&1 &
        for i in $(seq 1 10); do qemu_alive || break; sleep 0.5; done
        qemu_alive && kill "$pid" 2>/dev/null
        for i in $(seq 1 20); do qemu_alive || break; sleep 0.5; done
        qemu_alive && kill -9 "$pid" 2>/dev/null
        wait 2>/dev/null || true
    fi
    ns="$(state_get netns)"
    [[ -n "$ns" ]] && ip netns del "$ns" 2>/dev/null || true
    rm -rf "$STATE"
}

cmd_down() {
    if [[ -d "$STATE" ]]; then
        cmd_down_quiet
        step "VM stopped, namespace and disk overlay removed"
    else
        step "no VM is up"
    fi
}

cmd_status() {
    if qemu_alive; then
        echo "up: netns $(state_get netns), accel $(state_get accel), box $(state_get box), booted in $(state_get boot-seconds) s"
    else
        echo "down"
        return 1
    fi
}

# The work tree (tracked and untracked files, not .venv/.git) to /vagrant, then setup.sh offline.
cmd_provision() {
    step "copying the work tree to /vagrant"
    (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard \
        | tar --null -T - --ignore-failed-read -czf - 2>/dev/null) \
        | vm_ssh 'sudo rm -rf /vagrant && sudo mkdir -p /vagrant && sudo tar -xzf - -C /vagrant'
    step "scripts/setup.sh in the guest, with no network (XDPGUARD_WHEELS=$WHEELS)"
    local t0=$SECONDS
    vm_ssh "sudo XDPGUARD_WHEELS=$WHEELS bash /vagrant/scripts/setup.sh" >&2
    echo "$((SECONDS - t0))" >"$STATE/provision-seconds"
    touch "$STATE/provisioned"
}

OWN_VM=0
ensure_up() {  # boot (and provision) unless a VM is up; a VM we booted stops when we exit
    if ! qemu_alive; then
        OWN_VM=1
        trap 'cmd_down_quiet' EXIT
        cmd_up
    fi
    [[ -f "$STATE/provisioned" ]] || cmd_provision
}

g() { vm_ssh "sudo /vagrant/.venv/bin/xdpguard $*"; }

pings() {  # pings N: echo replies the protective IP sent back to the host-side namespace
    in_ns ping -n -q -c "$1" -i 0.2 -W 1 "$GUEST_ADDR" 2>/dev/null \
        | sed -n 's/.* \([0-9]*\) received.*/\1/p' || true
}

cmd_smoke() {
    ensure_up
    local kernel mode r1 r2 r3 ok=1
    kernel="$(vm_ssh uname -r)"
    echo "guest kernel: $kernel"
    vm_ssh "sudo ip link set eth1 mtu 1500; sudo ethtool -K eth1 lro off >/dev/null 2>&1 || true"
    g attach eth1 --protect "$GUEST_ADDR" --mode native >/dev/null
    mode="$(vm_ssh 'ip -d link show eth1' | grep -oE 'xdp(drv|generic|offload)?' | head -n 1)"
    echo "eth1 driver: $(vm_ssh 'sudo ethtool -i eth1' | sed -n 's/^driver: //p'), XDP mode: $mode" \
         "($( [[ "$mode" == xdp || "$mode" == xdpdrv ]] && echo native || echo NOT native))"
    [[ "$mode" == xdp || "$mode" == xdpdrv ]] || ok=0
    r1="$(pings 5)"
    g block add "$HOST_ADDR/32" >/dev/null
    r2="$(pings 5)"
    g block del "$HOST_ADDR/32" >/dev/null
    r3="$(pings 5)"
    g detach eth1 >/dev/null
    echo "toggle from the host-side namespace ($HOST_ADDR -> $GUEST_ADDR, 5 pings each):" \
         "before block $r1/5 replies, blocked $r2/5, unblocked $r3/5"
    if [[ "$r1" -ge 4 && "$r2" -eq 0 && "$r3" -ge 4 ]]; then
        echo "toggle: ok (arrives -> dropped -> arrives)"
    else
        echo "toggle: FAILED"; ok=0
    fi
    ((ok)) || exit 1
}

cmd_test() {
    ensure_up
    local q t0=$SECONDS status=0
    (($#)) || set -- tests/ --ignore=tests/vm   # the whole suite, but no VM inside the VM
    q="$(printf '%q ' "$@")"
    # XDPGUARD_WHEELS: test.sh runs setup.sh, which must stay offline in the guest (as provision's)
    # XDPGUARD_SETUP_DONE=1: provisioning ran setup.sh in the guest; test.sh need not run it again
    local env="CI=${CI:-} PYTHONDONTWRITEBYTECODE=1 XDPGUARD_WHEELS=$WHEELS XDPGUARD_SETUP_DONE=1"
    [[ -n "${XDPGUARD_DIFF_EXAMPLES:-}" ]] && env+=" XDPGUARD_DIFF_EXAMPLES=$XDPGUARD_DIFF_EXAMPLES"
    vm_ssh "cd /vagrant && sudo $env bash scripts/test.sh ${q}" || status=$?
    step "suite in the VM: exit $status after $((SECONDS - t0)) s"
    return "$status"
}

cmd_bench() {
    ensure_up
    python3 "$VM_DIR/bench.py" --vm-sh "$0" --netns "$(state_get netns)" --tap "$TAP" \
        --packets "${1:-300000}" --seconds "${2:-10}"
}

verb="${1:-}"
shift || true
case "$verb" in
    build) cmd_build "$@" ;;
    up) cmd_up; [[ "${1:-}" == --provision ]] && cmd_provision; true ;;
    ssh) vm_ssh -t "$@" ;;
    provision) cmd_provision ;;
    smoke) cmd_smoke ;;
    test) cmd_test "$@" ;;
    bench) cmd_bench "$@" ;;
    box-dir) echo "$BOX" ;;
    accel) host_packages; cmd_build >/dev/null; probe_accel ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) die "usage: scripts/vm.sh build|up|ssh|provision|smoke|test|bench|down|status|accel" ;;
esac
