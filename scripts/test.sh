#!/usr/bin/env bash
# Set up the machine (idempotent), then run pytest from the repo root with .venv first on PATH.
# Usage: scripts/test.sh [pytest args...]   (default: tests/)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

# XDPGUARD_SETUP_DONE=1: the caller has just run setup.sh (.ci/run; scripts/vm.sh test, after
# provisioning the guest, where a second run costs tens of seconds under TCG).
[[ "${XDPGUARD_SETUP_DONE:-}" == 1 ]] || bash scripts/setup.sh

export PATH="$REPO_ROOT/.venv/bin:$PATH"
if (($# == 0)); then
    set -- tests/
fi

# The run's state (per-namespace files, events.jsonl) goes to a private directory, removed after:
# the tests never leave anything in the machine's own /var/lib/xdpguard.
if [[ -z "${XDPGUARD_STATE_DIR:-}" ]]; then
    XDPGUARD_STATE_DIR="$(mktemp -d /tmp/xdpguard-test-state.XXXXXX)"
    export XDPGUARD_STATE_DIR
    trap 'rm -rf "$XDPGUARD_STATE_DIR"' EXIT
fi

echo "==> pytest $*"
status=0
.venv/bin/python -m pytest -ra --durations=30 "$@" || status=$?
if ((status == 5)); then
    echo "test.sh: pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
exit "$status"
