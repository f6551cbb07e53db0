#!/usr/bin/env bash
# README command one: set up the machine (idempotent), then run the demo in a namespace lab.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
bash scripts/setup.sh
export PATH="$REPO_ROOT/.venv/bin:$PATH"
exec .venv/bin/python -m xdpguard.lab.demo "$@"
