"""Helpers shared by the CLI unit tests (click's CliRunner on the real command tree)."""

from __future__ import annotations

from click.testing import CliRunner

from xdpguard.cli.main import cli


def invoke(*args: str):
    """Run `xdpguard ARGS…` in-process; exceptions propagate (a traceback is a test failure)."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(capsys) -> str:
    """The stderr of the last `run([...])`: exactly one line 'xdpguard: error: …'; returned."""
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("xdpguard: error: "), cap.err
    return lines[0]
