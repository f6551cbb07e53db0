#!/usr/bin/env bash
# Set up the machine (idempotent), then run pytest from the repo root with .venv first on PATH.
# Usage: scripts/test.sh [pytest args...]   (default: tests/)
# The default run is two pytest sessions when pytest-xdist is installed (pyproject's dev group):
# the unit tier over 2 xdist workers (no kernel, no floods, no timings), then bpf, integration
# and vm in one process, as they must (floods and the shared CPU). XDPGUARD_XDIST=0: one session.
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

run_pytest() {  # run_pytest ARGS...: one session; a session that collects nothing fails
    local rc=0
    echo "==> pytest $*"
    .venv/bin/python -m pytest -ra "$@" || rc=$?
    if ((rc == 5)); then
        echo "test.sh: pytest collected no tests; treating that as a failure" >&2
        rc=1
    fi
    return "$rc"
}

if [[ "$*" == tests/ && "${XDPGUARD_XDIST:-1}" != 0 ]] && .venv/bin/python -c 'import xdist' 2>/dev/null; then
    # Both sessions' per-tier times are printed at the end of the second (tests/conftest.py).
    tier_log="$(mktemp /tmp/xdpguard-tiers.XXXXXX)"
    export XDPGUARD_TIER_LOG="$tier_log"
    status=0
    run_pytest -n 2 --durations=10 tests/unit || status=$?
    run_pytest --durations=30 tests/ --ignore=tests/unit || status=$?
    rm -f "$tier_log"
    exit "$status"
fi
run_pytest --durations=30 "$@"
