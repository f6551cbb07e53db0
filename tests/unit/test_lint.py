"""ruff with the rules written in pyproject.toml ([tool.ruff]); .ci/run runs it before the tests
too. ruff comes from pyproject's [dependency-groups] lint, installed by setup.sh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def _ruff() -> Path:
    exe = Path(sys.executable).with_name("ruff")
    assert exe.exists(), f"{exe} is missing: run scripts/setup.sh (it installs the lint group of pyproject.toml)"
    return exe


def test_ruff_check_is_clean():
    r = subprocess.run(
        [str(_ruff()), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_clean():
    """Every Python file is as `ruff format` writes it (pyproject's line length)."""
    r = subprocess.run(
        [str(_ruff()), "format", "--check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_reads_our_rules(tmp_path):
    """The rules are the project's: an unused import and an undefined name fail, a named lambda
    (ignored there) does not."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nf = lambda: 1\nprint(undefined_name)\n")
    r = subprocess.run(
        [
            str(_ruff()),
            "check",
            "--no-cache",
            "--config",
            str(REPO / "pyproject.toml"),
            "--output-format",
            "concise",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "F401" in r.stdout and "F821" in r.stdout and "E731" not in r.stdout, r.stdout
