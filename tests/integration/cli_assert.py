"""Assertions on the real CLI's output, and the CLI-driven lab rig, shared by the integration tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from xdpguard.lab import topology


class CliLab:
    """The namespace lab driven through the real CLI: its own name (`prefix` + pid), run dir and,
    when given, TCP-state grace (XDPGUARD_TCP_GRACE) in the environment of every command."""

    def __init__(self, tmp_path: Path, prefix: str, grace_s: float | None = None):
        self.name = f"{prefix}{os.getpid() % 10_000_000}"
        self.tmp = tmp_path
        self.env = {**os.environ, "XDPGUARD_LAB_NAME": self.name, "XDPGUARD_RUN_DIR": str(tmp_path / "run")}
        if grace_s is not None:
            self.env["XDPGUARD_TCP_GRACE"] = str(grace_s)

    def xg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            [*topology.xdpguard_argv(), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        assert not check or p.returncode == 0, f"xdpguard {' '.join(args)}: {p.stderr.strip()}"
        return p

    def ns(self, role: str) -> str:
        return f"xg-{self.name}-{role}"

    def in_ns(self, role: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    """Bad input: exit 2 and exactly one stderr line 'xdpguard: error: …' containing each needle."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xdpguard: error:"), p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
