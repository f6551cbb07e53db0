"""Assertions on the real CLI's output shared by the integration tests."""

from __future__ import annotations

import subprocess


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    """Bad input: exit 2 and exactly one stderr line 'xdpguard: error: …' containing each needle."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xdpguard: error:"), p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
