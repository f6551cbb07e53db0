"""The UDP watermark with the real CLI in the lab (`xdpguard lab up`): the client marks its
datagrams with the SDK (python -m xdpguard.sdk.watermark echo) and reaches the backend's echo
service through the protective IP (a NAT forward of udp/7), v4 and v6.

1. The toggle: arrives → watermark enable → unmarked refused, marked arrives (stripped: the
   echo returns the bare data) → rotate (both keys during the overlap; overlap 0 ends it) →
   disable → unmarked arrives again. Export names key files, never keys; bad input is one error
   line and changes nothing; a mark older than its lifetime (a replay) is dropped.
2. Under a random-source UDP flood at the watermarked service (`lab attack spoofed-udp --port 7`:
   4,096 spoofed sources, bounded in time), the marked client keeps every echo; the same flood
   with the watermark off, against the unmarked client, is measured beside it (printed, in the
   report of the stop) — the backend is shaped like a small server (topology.shape_backend).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_assert import CliLab, one_line_error
from xdpguard.lab import topology

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing

PY = sys.executable
V4, V6 = f"{topology.PROT4}:7", f"[{topology.PROT6}]:7"
FLOOD_S = 10.0


class WmLab(CliLab):
    def xgp(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """xdpguard in the protector's namespace."""
        p = self.in_ns("prot", *topology.xdpguard_argv(), *args, timeout=180)
        if check and p.returncode != 0:
            raise AssertionError(f"xdpguard {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
        return p

    def echo(
        self,
        target: str,
        key: Path | None = None,
        count: int = 6,
        interval: float = 0.02,
        age: float = 0.0,
        timeout: float = 0.5,
    ) -> dict:
        argv = [
            PY,
            "-m",
            "xdpguard.sdk.watermark",
            "echo",
            "--count",
            str(count),
            "--interval",
            str(interval),
            "--timeout",
            str(timeout),
            "--age",
            str(age),
            "--max-seconds",
            "60",
        ]
        argv += ["--key-file", str(key)] if key else ["--plain"]
        p = self.in_ns("client", *argv, target, timeout=90)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def got(self, target: str, key: Path | None = None, **kw) -> int:
        return self.echo(target, key, **kw)["received"]

    def counters(self) -> dict[str, int]:
        st = json.loads(self.xgp("status", topology.PROT_IFACE, "--json").stdout)[0]
        return {f"{c['kind']}/{c['reason']}": c["packets"] for c in st["counters"]}

    def counter(self, reason: str) -> int:
        return self.counters().get(f"drop/{reason}", 0)

    def keygen(self, name: str) -> Path:
        p = self.tmp / name
        self.xgp("watermark", "keygen", str(p))
        return p


@pytest.fixture(scope="module")
def wl(tmp_path_factory) -> Iterator[WmLab]:
    w = WmLab(tmp_path_factory.mktemp("wmlab"), "wm")
    try:
        w.xg("lab", "up")
        yield w
    finally:
        w.xg("lab", "down", check=False)
    assert not [r for r in topology.ROLES if topology.ns_exists(w.ns(r))]


def test_watermark_toggle_rotate_and_bad_input(wl: WmLab, tmp_path: Path):
    assert (wl.got(V4), wl.got(V6)) == (6, 6)  # arrives
    k1, k2, k3 = wl.keygen("k1.key"), wl.keygen("k2.key"), wl.keygen("k3.key")

    out = json.loads(wl.xgp("watermark", "enable", "7", "--key-file", str(k1), "--json").stdout)
    secret = k1.read_text().strip()
    assert secret not in json.dumps(out)
    rows = out["services"][topology.PROT4]
    assert [r["port"] for r in rows] == [7] and rows[0]["key_id"].startswith("sip:")
    d0 = wl.counter("watermark")
    assert (wl.got(V4), wl.got(V6)) == (0, 0)  # unmarked: dropped in XDP
    assert wl.counter("watermark") - d0 >= 12
    assert (wl.got(V4, k1), wl.got(V6, k1)) == (6, 6)  # marked: stripped (the echo returns the bare data)
    assert wl.got(V4, k2) == 0  # another key
    # a replay: a mark older than its lifetime ((skew 1 + 2) * 30 s) is stale
    assert wl.got(V4, k1, age=120) == 0 and wl.got(V4, k1, age=25) == 6

    # desired state: the key file's path, never the key; the export re-applies to nothing
    exported = wl.xgp("export").stdout
    assert "watermark" in exported and str(k1) in exported and secret not in exported
    f = tmp_path / "exported.toml"
    f.write_text(exported)
    assert wl.xgp("diff", "-f", str(f)).stdout.strip() == "no changes"
    for p in [*(wl.tmp / "run").rglob("*"), *Path(os.environ.get("XDPGUARD_STATE_DIR", "/nonexistent")).rglob("*")]:
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p

    # bad input: one error line, exit 2, nothing changed
    bad = tmp_path / "bad.key"
    bad.write_text("0123")
    one_line_error(wl.xgp("watermark", "enable", "7", "--key-file", str(bad), check=False), "16 bytes")
    one_line_error(wl.xgp("watermark", "rotate", "9", "--key-file", str(k2), check=False), "udp/9")
    one_line_error(
        wl.xgp("watermark", "enable", "7", "--key-file", str(k1), "--window", "12", check=False), "multiple of 8"
    )
    one_line_error(wl.xgp("watermark", "disable", "7", "--protected", "198.18.0.99", check=False), "198.18.0.99")
    assert wl.xgp("export").stdout == exported

    # rotation: both keys during the overlap; a rotation with overlap 0 ends the old key at once
    show = json.loads(wl.xgp("watermark", "rotate", "7", "--key-file", str(k2), "--json").stdout)
    assert show["services"][topology.PROT4][0]["previous_key_id"] == rows[0]["key_id"]
    assert (wl.got(V4, k1), wl.got(V4, k2), wl.got(V6, k2)) == (6, 6, 6)
    wl.xgp("watermark", "rotate", "7", "--key-file", str(k3), "--overlap", "0")
    assert (wl.got(V4, k2), wl.got(V4, k3)) == (0, 6)
    text = wl.xgp("watermark", "show").stdout
    assert "udp/7" in text and "passed" in text and secret not in text

    # drift: the key file is replaced on disk; the realised entry no longer matches the spec, and
    # an apply of the same desired state (what the daemon does) loads the file's new key
    k3_old = tmp_path / "k3.old"
    k3_old.write_text(k3.read_text())
    f2 = tmp_path / "exported2.toml"
    f2.write_text(wl.xgp("export").stdout)
    k3.write_text(k2.read_text())
    assert "watermark" in wl.xgp("diff", "-f", str(f2)).stdout
    wl.xgp("apply", "-f", str(f2))
    assert wl.xgp("diff", "-f", str(f2)).stdout.strip() == "no changes"
    assert (wl.got(V4, k3), wl.got(V4, k3_old)) == (6, 0)

    wl.xgp("watermark", "disable", "7")
    assert (wl.got(V4), wl.got(V6)) == (6, 6)  # arrives again
    assert "watermark" not in wl.xgp("export").stdout


def _under_flood(wl: WmLab, key: Path | None) -> tuple[dict, dict, dict]:
    """The client's echoes during a bounded random-source flood at udp/7, what the flood sent,
    and the verdicts and backend packets it moved."""
    c0, b0 = wl.counters(), topology.backend_counts(wl.name)
    atk = subprocess.Popen(
        [
            *topology.xdpguard_argv(),
            "lab",
            "attack",
            "spoofed-udp",
            "--port",
            "7",
            "--sources",
            "4096",
            "--duration",
            str(FLOOD_S),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=wl.env,
        stdin=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # the flood is on
        res = wl.echo(V4, key, count=100, interval=0.05, timeout=0.3)
    finally:
        out, err = atk.communicate(timeout=FLOOD_S + 30)
    assert atk.returncode == 0, err
    c1, b1 = wl.counters(), topology.backend_counts(wl.name)
    moved = {k: v - c0.get(k, 0) for k, v in c1.items() if v > c0.get(k, 0)}
    moved.update({f"backend/{k}": v - b0.get(k, 0) for k, v in b1.items()})
    return res, json.loads(out), moved


def test_marked_client_keeps_working_under_a_random_source_flood(wl: WmLab):
    topology.shape_backend(wl.name)  # a small real server's uplink (2 mbit)
    k = wl.keygen("flood.key")
    wl.xgp("watermark", "enable", "7", "--key-file", str(k), "--protected", topology.PROT4)
    marked, atk_on, moved_on = _under_flood(wl, k)
    wl.xgp("watermark", "disable", "7")
    plain, atk_off, moved_off = _under_flood(wl, None)
    for name, client, atk, moved in (("on ", marked, atk_on, moved_on), ("off", plain, atk_off, moved_off)):
        print(f"\nwatermark {name}: client {client}; flood {atk['sent']} pkts at {atk['pps']} pps; {moved}")
    assert atk_on["sent"] > 10_000, atk_on
    assert moved_on.get("drop/watermark", 0) >= 0.5 * atk_on["sent"], (moved_on, atk_on)  # died in XDP
    assert moved_on.get("backend/attack", 0) == 0, moved_on  # not one flood packet reached the server
    assert marked["sent"] == 100 and marked["received"] == 100, marked  # every marked echo came back
