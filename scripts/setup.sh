#!/usr/bin/env bash
# Prepare a Debian 12 machine for xdpguard: system packages, kernel headers for bcc, bpffs
# mounts and the project's .venv. Idempotent: safe to re-run, quick when nothing changed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SYSTEM_PYTHON=/usr/bin/python3            # Debian's python: the one that sees python3-bpfcc
BPFFS_DIR=/run/xdpguard/bpffs             # where xdpguard pins maps (survives `ip netns exec`)
VENV_DIR="$REPO_ROOT/.venv"
VENV_STAMP="$VENV_DIR/.xdpguard-pyproject.sha256"
KERNEL_RELEASE="$(uname -r)"
MODULES_DIR="/lib/modules/$KERNEL_RELEASE"

APT_PACKAGES=(
    python3-bpfcc bpfcc-tools nftables python3-nftables iproute2 python3-venv
    ipset tcpdump tmux netsniff-ng ethtool iputils-ping prometheus python3-yaml hping3
    vagrant bird2 etcd-server etcd-client openssl
    xdp-tools libxdp1 bpftool iptables iperf3 apache2-utils busybox python3-matplotlib
    t50 nmap wrk haproxy man-db
    libloc-database python3-location
)

# Host-only test tools: installed on the machine that runs the integration tier, never in the VM
# box (kept out of APT_PACKAGES, which build-box.sh reads and the box cache hashes; the VM runs
# the bpf tier only). chromium: a real browser through the JavaScript challenge (issue 29).
HOST_TEST_PACKAGES=(
    chromium
)

# Offline provisioning (the VM box): XDPGUARD_WHEELS=DIR installs Python packages from DIR only
# (pip --no-index); XDPGUARD_OFFLINE=1 also forbids apt, so a missing package is an error.
WHEELS_DIR="${XDPGUARD_WHEELS:-}"
OFFLINE="${XDPGUARD_OFFLINE:-0}"

step() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

if [[ "$(id -u)" -ne 0 ]]; then
    die "must run as root (try: sudo bash $0)"
fi

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0

apt_update_once() {
    if [[ "$OFFLINE" == 1 ]]; then
        die "XDPGUARD_OFFLINE=1 but apt is needed (missing packages or kernel headers)"
    fi
    if [[ "$APT_UPDATED" -eq 0 ]]; then
        step "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

apt_install() {
    apt_update_once
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# --- system packages ------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    apt_update_once
    step "installing packages: ${missing[*]}"
    apt_install "${missing[@]}"
else
    step "system packages already installed"
fi
# Not in the VM box (XDPGUARD_WHEELS: provisioned with no network; its tier needs no browser).
if [[ "$OFFLINE" != 1 && -z "$WHEELS_DIR" ]]; then
    host_missing=()
    for pkg in "${HOST_TEST_PACKAGES[@]}"; do
        is_installed "$pkg" || host_missing+=("$pkg")
    done
    if ((${#host_missing[@]})); then
        step "installing host test packages: ${host_missing[*]}"
        apt_install "${host_missing[@]}"
    fi
fi
# promtool (for the rules tests) comes with Debian's prometheus package, whose postinst enables
# and starts a Prometheus server. xdpguard needs only the tool: a server this run installed is
# stopped and disabled (one the operator had installed before is left alone).
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    step "stopping and disabling the prometheus service (only promtool is needed)"
    if [[ -d /run/systemd/system ]]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    else
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true
        update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
fi

# bird2, etcd-server and haproxy come with services their postinst enables (and, under systemd,
# starts) in the host's own namespace. xdpguard runs BIRD and etcd only inside namespaces it made
# (the cluster lab, the tests) and HAProxy only as its own process (core/l7/proc.py, never the
# distribution's unit): a service this run installed is stopped and disabled, as for prometheus.
for svc in bird etcd haproxy; do
    case "$svc" in bird) pkg=bird2 ;; etcd) pkg=etcd-server ;; *) pkg=$svc ;; esac
    if [[ " ${missing[*]} " == *" $pkg "* ]]; then
        step "stopping and disabling the $svc service (xdpguard runs $svc only inside lab namespaces)"
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
        else
            "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
            update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    fi
done

# --- kernel headers for bcc -----------------------------------------------------------------
headers_usable() {
    [[ -d "$MODULES_DIR/build/include/linux" || -f "$MODULES_DIR/build/Makefile" ]]
}

apt_candidate() {  # print the candidate version of a package, empty if none is packaged
    apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
}

link_modules_dir() {  # link_modules_dir NAME TARGET: make $MODULES_DIR/NAME a symlink to TARGET
    local link="$MODULES_DIR/$1" target="$2"
    if [[ -d "$link" && ! -L "$link" ]]; then
        rmdir "$link" 2>/dev/null \
            || die "$link is a non-empty directory without kernel headers; move it away and re-run"
    fi
    ln -sfn "$target" "$link"
}

if headers_usable; then
    step "kernel headers for $KERNEL_RELEASE present ($(readlink -f "$MODULES_DIR/build"))"
else
    apt_update_once
    if [[ -n "$(apt_candidate "linux-headers-$KERNEL_RELEASE")" ]]; then
        step "installing linux-headers-$KERNEL_RELEASE"
        apt_install "linux-headers-$KERNEL_RELEASE"
    fi
    if ! headers_usable; then
        arch="$(dpkg --print-architecture)"
        if is_installed "linux-headers-$arch"; then
            fallback_version="$(dpkg-query -W -f='${Version}' "linux-headers-$arch")"
        else
            fallback_version="$(apt_candidate "linux-headers-$arch")"
            [[ -n "$fallback_version" ]] || die "no linux-headers-$arch package available from apt"
        fi
        step "no headers packaged for kernel $KERNEL_RELEASE; falling back to Debian's" \
            "linux-headers-$arch (version $fallback_version), which is fine for xdpguard's XDP code"
        is_installed "linux-headers-$arch" || apt_install "linux-headers-$arch"
        # Debian splits each header set into linux-headers-<abi>-<arch> (build) and
        # linux-headers-<abi>-common (source). Plain flavour only: not -cloud-, -rt-, ...
        arch_dir="$(find /usr/src -maxdepth 1 -type d -regextype posix-extended \
            -regex "/usr/src/linux-headers-[0-9][0-9.]*-[0-9]+-$arch" | sort -V | tail -n 1)"
        [[ -n "$arch_dir" ]] || die "linux-headers-$arch installed but no /usr/src/linux-headers-*-$arch"
        common_dir="${arch_dir%-"$arch"}-common"
        [[ -d "$common_dir" ]] || die "missing $common_dir (expected next to $arch_dir)"
        mkdir -p "$MODULES_DIR"
        link_modules_dir build "$arch_dir"
        link_modules_dir source "$common_dir"
        step "linked $MODULES_DIR/{build,source} -> $arch_dir, $common_dir"
    fi
fi

step "checking that bcc compiles and loads a trivial XDP program"
bcc_check_log="$(mktemp)"
trap 'rm -f "$bcc_check_log"' EXIT
if ! "$SYSTEM_PYTHON" - >"$bcc_check_log" 2>&1 <<'EOF'
from bcc import BPF
b = BPF(text="int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }")
b.load_func("xdp_pass", BPF.XDP)
b.cleanup()
EOF
then
    cat "$bcc_check_log" >&2
    die "bcc cannot compile a trivial XDP program with $SYSTEM_PYTHON (kernel $KERNEL_RELEASE," \
        "headers at $(readlink -f "$MODULES_DIR/build" || echo none)); see the output above"
fi

# --- bpffs mounts ---------------------------------------------------------------------------
mount_bpffs() {  # mount_bpffs DIR [MODE]
    local dir="$1" mode="${2:-}"
    mkdir -p "$dir"
    if [[ "$(findmnt -n -o FSTYPE --mountpoint "$dir" 2>/dev/null || true)" == "bpf" ]]; then
        step "bpffs already mounted at $dir"
    else
        step "mounting bpffs at $dir"
        mount -t bpf ${mode:+-o mode=$mode} bpf "$dir"
    fi
    if [[ -n "$mode" ]]; then chmod "$mode" "$dir"; fi
}
mount_bpffs /sys/fs/bpf
mount_bpffs "$BPFFS_DIR" 0700   # root-only: nobody else may pre-create or unlink our pins
chmod 0700 "$(dirname "$BPFFS_DIR")"

# --- virtualenv -----------------------------------------------------------------------------
venv_ok() {
    [[ -x "$VENV_DIR/bin/python" && -f "$VENV_DIR/pyvenv.cfg" ]] || return 1
    grep -Eq '^include-system-site-packages *= *true' "$VENV_DIR/pyvenv.cfg" || return 1
    "$VENV_DIR/bin/python" -c 'import bcc' >/dev/null 2>&1
}

if venv_ok; then
    step "virtualenv $VENV_DIR exists"
else
    step "creating virtualenv $VENV_DIR with $SYSTEM_PYTHON --system-site-packages"
    rm -rf "$VENV_DIR"
    "$SYSTEM_PYTHON" -m venv --system-site-packages "$VENV_DIR"
fi

# Reinstall when pyproject.toml changed (or the last install did not finish).
pyproject_hash="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
if [[ -f "$VENV_STAMP" && "$(cat "$VENV_STAMP")" == "$pyproject_hash" \
      && -x "$VENV_DIR/bin/xdpguard" ]]; then
    step "xdpguard already installed in .venv (pyproject.toml unchanged)"
else
    pip_source=()
    if [[ -n "$WHEELS_DIR" ]]; then
        [[ -d "$WHEELS_DIR" ]] || die "XDPGUARD_WHEELS=$WHEELS_DIR is not a directory"
        pip_source=(--no-index --find-links "$WHEELS_DIR")
    fi
    step "pip install -e '.[test]'${WHEELS_DIR:+ from $WHEELS_DIR only}"
    rm -f "$VENV_STAMP"
    (cd "$REPO_ROOT" && "$VENV_DIR/bin/pip" install -q "${pip_source[@]}" -e '.[test]')
    # Dev-only tools: pyproject's PEP 735 [dependency-groups] lint (import-linter, ruff) and ci
    # (pytest-xdist), read with tomllib (Debian 12's pip has no --group). The offline box's wheels
    # need not hold them: the lint runs in the unit tier on the host, and the box's bpf tier runs
    # in one process.
    mapfile -t lint_reqs < <("$VENV_DIR/bin/python" - "$REPO_ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
groups = tomllib.load(open(sys.argv[1], "rb")).get("dependency-groups", {})
for req in groups.get("lint", []) + groups.get("ci", []):
    if isinstance(req, str):  # an {include-group = ...} entry is not a requirement
        print(req)
EOF
    )
    if ((${#lint_reqs[@]})); then
        step "pip install the lint and ci groups: ${lint_reqs[*]}"
        if [[ -n "$WHEELS_DIR" ]]; then
            "$VENV_DIR/bin/pip" install -q "${pip_source[@]}" "${lint_reqs[@]}" \
                || step "the lint and ci groups are not among the wheels in $WHEELS_DIR: skipped"
        else
            "$VENV_DIR/bin/pip" install -q "${lint_reqs[@]}"
        fi
    fi
    printf '%s\n' "$pyproject_hash" >"$VENV_STAMP"
fi

step "checking imports in .venv"
"$VENV_DIR/bin/python" -c 'import bcc, nftables, pyroute2, click, rich' \
    || die "imports failed in $VENV_DIR; delete it and re-run scripts/setup.sh"

if [[ "${XDPGUARD_INSTALL_SERVICE:-0}" == 1 ]]; then  # asked for: xdpguard.service (see install-service.sh)
    bash "$REPO_ROOT/scripts/install-service.sh"
fi

step "setup complete"
