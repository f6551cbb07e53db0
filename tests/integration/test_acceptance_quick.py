"""Issue 25's acceptance, the quick subset (scripts/acceptance.py --quick): a spoofed UDP flood
at udp/7, a UDP flood from one real address, and the ACK flood from one real address right after a
UDP flood from it — each enforcing and in monitor mode, with a web client (10 browser addresses, paced) and a UDP client of
the echo service.

Shortened for the test (about 90 s instead of 4 minutes): a 2 s TCP-state grace after attach
($XDPGUARD_TCP_GRACE), 10 s of peacetime instead of 20, clients running 2 s after each flood
instead of 4, and one control run (the first row's, at a closed port) for all three rows. What is
asserted needs none of those: the rates are taken during the floods, which keep their 5 s.

Asserted: enforcing is never worse than monitor mode for either client, within NOISE of the
control's rate (this 2-core machine is shared; one run per mode), and the lab's backend (echo
UDP and TCP, HTTP) still answers after the floods (within 15 s: it may be draining the last).
The catalogue's other targets (≥ 90 % of the control, recovery ≤ 2 s, conntrack < 50 %) are
measured and printed, not asserted: they are timings (scripts/acceptance.py --full runs the
whole catalogue)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xdpguard.lab import topology

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing

NOISE = 0.15  # of the control's rate: enforcing may trail monitor mode by this much in one run
ROOT = Path(__file__).resolve().parents[2]


def test_quick_acceptance_enforcing_never_worse_than_monitor(tmp_path):
    missing = [t for t in ("trafgen", "hping3", "ab") if shutil.which(t) is None]
    if missing:
        msg = f"missing {', '.join(missing)}; run scripts/setup.sh"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    name = f"q{os.getpid() % 10_000_000}"
    env = {
        **os.environ,
        "XDPGUARD_LAB_NAME": name,
        "XDPGUARD_STATE_DIR": str(tmp_path / "state"),
        "XDPGUARD_RUN_DIR": str(tmp_path / "run"),
        "XDPGUARD_TCP_GRACE": "2",
    }
    out = tmp_path / "acceptance.json"
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "acceptance.py"),
            "--quick",
            "--duration",
            "5",
            "--warmup",
            "10",
            "--recover",
            "2",
            "--one-control",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    print(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not [r for r in topology.ROLES if topology.ns_exists(f"xg-{name}-{r}")]
    d = json.loads(out.read_text())
    assert len(d["results"]) == 3, d["results"]
    alive = {k: v for k, v in d["backend_alive"].items() if k != "after_s"}
    assert alive == {"echo_udp": True, "echo_tcp": True, "http": True}, (d["backend_alive"], d["daemon_log"])
    for r in d["results"]:
        e, m = r["enforcing"], r["monitor"]
        for client in ("udp_share", "web_share"):
            # a share is of the control's rate, itself one noisy run: at or above it the client is
            # served as well as with no flood at all, and the excess is noise (CI once had enforcing
            # 1.30 and monitor 1.53 of a slow control), so shares count up to 1
            assert min(e[client], 1.0) >= min(m[client], 1.0) - NOISE, (r["attack"], client, e, m, d["daemon_log"])
