#!/usr/bin/env bash
# Install xdpguard.service (root): the unit with this checkout's .venv/bin/xdpguard, and an
# example /etc/xdpguard/xdpguard.toml when there is none. Enables and starts it only when systemd
# runs (PID 1) and --start is given; prints what it did. Idempotent.
# Usage: scripts/install-service.sh [--start] [--unit-dir DIR] [--config FILE]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UNIT_DIR=/etc/systemd/system
CONFIG=/etc/xdpguard/xdpguard.toml
START=0
while (($#)); do
    case "$1" in
        --start) START=1 ;;
        --unit-dir) UNIT_DIR="$2"; shift ;;
        --config) CONFIG="$2"; shift ;;
        *) echo "install-service.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[[ "$(id -u)" -eq 0 ]] || { echo "install-service.sh: must run as root" >&2; exit 1; }
XG="$REPO_ROOT/.venv/bin/xdpguard"
[[ -x "$XG" ]] || { echo "install-service.sh: $XG missing; run scripts/setup.sh first" >&2; exit 1; }
mkdir -p "$UNIT_DIR"
sed -e "s|@XDPGUARD@|$XG|g" -e "s|@CONFIG@|$CONFIG|g" -e "s|@REPO@|$REPO_ROOT|g" "$REPO_ROOT/deploy/systemd/xdpguard.service.in" \
    >"$UNIT_DIR/xdpguard.service"
echo "==> installed $UNIT_DIR/xdpguard.service (ExecStart=$XG run --config $CONFIG)"
if [[ ! -e "$CONFIG" ]]; then
    install -d -m 0755 "$(dirname "$CONFIG")"
    install -m 0600 "$REPO_ROOT/deploy/xdpguard.example.toml" "$CONFIG"
    echo "==> wrote an example $CONFIG (edit it: it protects nothing until you name interfaces)"
fi
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    if ((START)); then
        systemctl enable --now xdpguard.service
        echo "==> enabled and started xdpguard.service"
    else
        echo "==> start it with: systemctl enable --now xdpguard.service"
    fi
else
    echo "==> systemd is not running here; the unit is installed for the next boot"
fi
