"""What the CLI says about itself: --version, help text defaults that come from the code."""

from __future__ import annotations

import importlib.metadata

import pytest
from cli_helpers import invoke

from xdpguard import __version__
from xdpguard.core.observe import sampling


@pytest.mark.parametrize("cmd", ["top", "stats", "capture"])
def test_sample_every_help_states_the_real_default(cmd):
    text = " ".join(invoke(cmd, "--help").output.split())  # undo click's line wrapping
    assert f"{sampling.DEFAULT_SAMPLE_EVERY} when off" in text
    assert "64 when off" not in text or sampling.DEFAULT_SAMPLE_EVERY == 64


def test_version_matches_the_installed_package():
    out = invoke("--version").output.strip()
    assert out == f"xdpguard, version {__version__}"
    assert importlib.metadata.version("xdpguard") == __version__  # pyproject.toml and the code agree
