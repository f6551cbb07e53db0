"""The demo runs end to end without a terminal (scripts/demo.sh → python -m xdpguard.lab.demo):
numbers for both runs, drops per reason, and nothing left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from xdpguard.lab import topology

pytestmark = pytest.mark.kernel


def test_demo_end_to_end(tmp_path):
    name = f"d{os.getpid() % 10_000_000}"
    env = {**os.environ, "XDPGUARD_LAB_NAME": name, "XDPGUARD_RUN_DIR": str(tmp_path / "run")}
    p = subprocess.run([sys.executable, "-m", "xdpguard.lab.demo", "--quick"], capture_output=True, text=True,
                       env=env, timeout=300, stdin=subprocess.DEVNULL)
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert "== with protection" in out and "== without protection" in out and "== summary" in out
    summary = out.split("== summary", 1)[1]
    expected = {"udp-flood": "blocklist", "spoofed-udp": "port", "syn-flood": "port", "reflection": "port",
                "icmp-flood": "blocklist", "mixed": "blocklist|port", "syn-flood:80": "syn"}
    for kind, reasons in expected.items():
        line = next(ln for ln in summary.splitlines() if ln.split("|")[0].strip() == kind)
        with_part = line.split("|")[1]
        pps, ok = with_part.split()[:2]
        assert int(pps.replace(",", "")) > 1000, line
        assert float(ok.rstrip("%")) >= 99.0, line  # the legitimate client with protection
        assert re.search(rf"({reasons}) \d+", line.split("|")[3]), line
    assert "nothing left behind" in out
    assert not [r for r in topology.ROLES if os.path.exists(f"/run/netns/xg-{name}-{r}")]
    assert not (tmp_path / "run" / f"lab-{name}.json").exists()
