"""xdpguard.service as scripts/install-service.sh writes it, checked by the real systemd-analyze;
the example config loads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from xdpguard.core.desired.load import load

REPO = Path(__file__).resolve().parents[2]


def test_example_config_loads_and_protects_nothing():
    d, warnings = load(REPO / "deploy" / "xdpguard.example.toml")
    assert d.interfaces == () and warnings == []
    assert d.daemon.health_interval_s == 2.0


@pytest.mark.kernel  # needs root (the script refuses otherwise); no kernel state is touched
def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    cfg = tmp_path / "etc" / "xdpguard.toml"
    p = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-service.sh"), "--unit-dir", str(tmp_path), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    unit = tmp_path / "xdpguard.service"
    text = unit.read_text()
    assert "@" not in text.replace("$MAINPID", "")
    assert f"ExecStart={REPO}/.venv/bin/xdpguard run --config {cfg}" in text
    assert load(cfg)[0].interfaces == ()  # the example was installed
    v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr
    # and the check can fail: a unit whose command does not exist is refused
    unit.write_text(text.replace(f"{REPO}/.venv/bin/xdpguard", "/nonexistent/xdpguard"))
    v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert v.returncode != 0 and "/nonexistent/xdpguard" in v.stderr
