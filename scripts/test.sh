#!/usr/bin/env bash
# Set up the machine (idempotent), then run pytest from the repo root with .venv first on PATH.
# Usage: scripts/test.sh [pytest args...]   (default: tests/; XDPGUARD_TEST_JOBS=1: one process)
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
    XDPGUARD_STATE_DIR_MADE="$XDPGUARD_STATE_DIR"
    trap 'rm -rf "$XDPGUARD_STATE_DIR_MADE"' EXIT
fi

# Parallel: with pytest-xdist in .venv (pyproject's ci group; the VM box has none) and
# XDPGUARD_TEST_JOBS > 1 (default 3), a first pass runs the integration tests without the
# `serial` marker in that many worker processes (tests/conftest.py's --xg-pass and scheduler: one
# test at a time, a module with a module-scoped fixture on one worker); they mostly wait (sleeps,
# timeouts, daemons), so 3 workers fit on 2 cores. A second pass runs everything else in one
# process: the unit and bpf tiers, the tests that assert a flood's rate, a loss share or a tight
# timing (marked `serial`), and the VM tier. The first pass's temporary directories are short
# (--basetemp): HAProxy refuses a stats socket path over 97 characters, and xdist's default adds
# "popen-gwN/" to pytest's own.
jobs="${XDPGUARD_TEST_JOBS:-3}"
if ! [[ "$jobs" =~ ^[0-9]+$ ]] || ((jobs < 2)) || ! .venv/bin/python -c 'import xdist' 2>/dev/null; then
    echo "==> pytest $*"
    status=0
    .venv/bin/python -m pytest -ra --durations=30 "$@" || status=$?
    if ((status == 5)); then
        echo "test.sh: pytest collected no tests; treating that as a failure" >&2
        exit 1
    fi
    exit "$status"
fi

XDPGUARD_TIMES_FILE="$(mktemp /tmp/xdpguard-test-times.XXXXXX)"
export XDPGUARD_TIMES_FILE
par_tmp="$(mktemp -d /tmp/xgp.XXXXXX)"
trap 'rm -rf "${XDPGUARD_STATE_DIR_MADE:-}" "$XDPGUARD_TIMES_FILE" "$par_tmp"' EXIT
start=$SECONDS
echo "==> pytest, parallel pass (integration tests not marked serial, $jobs workers): $*"
par=0
.venv/bin/python -m pytest -ra --durations=30 -n "$jobs" --basetemp "$par_tmp" --xg-pass parallel "$@" || par=$?
echo "==> pytest, serial pass (everything else): $*"
ser=0
.venv/bin/python -m pytest -ra --durations=30 --xg-pass serial "$@" || ser=$?
.venv/bin/python - "$XDPGUARD_TIMES_FILE" "$((SECONDS - start))" <<'PY'
import json, sys
from collections import defaultdict

passes = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
tiers = defaultdict(lambda: [0, 0.0])
print("==> time per pass, and per tier (a tier's time is the sum of its tests' durations)")
for p in passes:
    workers = f", {p['workers']} workers" if p["workers"] else ""
    print(f"{p['pass'] + ' pass':<18}        {p['wall_s']:8.1f} s  ({p['wall_s'] / 60:.1f} min wall{workers})")
    for tier, (n, secs) in p["tiers"].items():
        tiers[tier][0] += n
        tiers[tier][1] += secs
for tier, (n, secs) in tiers.items():
    print(f"{tier:<12} {n:>5} tests  {secs:8.1f} s  ({secs / 60:.1f} min)")
total = int(sys.argv[2])
print(f"{'both passes':<18}        {total:8.1f} s  ({total / 60:.1f} min wall)")
PY
if ((par == 5 && ser == 5)); then
    echo "test.sh: pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
((par == 5)) && par=0
((ser == 5)) && ser=0
((par != 0)) && exit "$par"
exit "$ser"
