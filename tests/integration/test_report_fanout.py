"""The daemon owns the sample ring (fanout.py) and keeps the history (history.py) that
`xdpguard report` draws from; with the real CLI in a namespace lab under a bounded flood:

- with `run` up, `capture` and `top --json` run at the same time and both see the flood's
  samples: each about as many as the daemon's own detection counted (its history), none missed;
- `report` then renders the attack event: HTML with its start, end, peak pps, top source and
  embedded PNGs, and a PNG file of the traffic plot;
- without the daemon, `report` says there is no history (one line, exit 2), and `capture` and
  `top --json` still work, reading the ring themselves.

Topology: the one of test_observability (one veth pair, attacker 198.18.0.5 → 198.18.0.2).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from test_observability import ATTACKER, FLOOD, IFACE, PROT, PY, Env, _wait_for  # noqa: F401
from xdpguard.core.observe import history, report
from xdpguard.lab.netns import NETNS_DIR, Lab

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing

FLOOD_PPS, FLOOD_S = 20_000, 3.0
SAMPLE_EVERY = 64


@pytest.fixture
def env(lab: Lab, tmp_path: Path, monkeypatch) -> Env:
    # a run directory of the test's own, deep enough that the socket's path overflows sun_path
    monkeypatch.setenv("XDPGUARD_RUN_DIR", str(tmp_path / "run-directory-of-this-test"))
    atk = lab.netns("atk")
    prot = lab.netns("prot")
    lab.veth(atk, "xga0", prot, IFACE)
    lab.addr(atk, "xga0", "198.18.0.1/29")
    lab.addr(atk, "xga0", "198.18.0.5/29")
    lab.addr(prot, IFACE, "198.18.0.2/29")
    e = Env(lab, atk, prot, tmp_path / "state")
    e.xg("attach", IFACE, "--protect", PROT)
    lab.defer("detach xdpguard", e.xg, "detach", IFACE, check=False)
    return e


def _flood(env: Env, secs: float = FLOOD_S) -> subprocess.Popen:
    return env.lab.popen(
        env.atk, PY, "-c", FLOOD, ATTACKER, PROT, str(FLOOD_PPS), str(secs), stdout=subprocess.PIPE, text=True
    )


def _hist_root(env: Env) -> Path:
    ino = os.stat(Path(NETNS_DIR) / env.prot).st_ino
    return Path(env.env["XDPGUARD_STATE_DIR"]) / f"net-{ino}" / "history"


def _png_look(png: bytes) -> tuple[int, int, int]:
    """(width, height, distinct 4-byte values in a sample of its rows) of a matplotlib PNG (RGBA, 8 bit)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    pos, idat = 8, b""
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        if png[pos + 4 : pos + 8] == b"IDAT":
            idat += png[pos + 8 : pos + 8 + n]
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = 1 + w * 4
    # the rows are PNG-filtered: a blank image filters to one value, a plot to many
    rows = [raw[i * stride + 1 : (i + 1) * stride] for i in range(0, h, 7)]
    return w, h, len({row[j : j + 4] for row in rows for j in range(0, len(row), 4 * 13)})


def _stats(env: Env) -> dict:
    return json.loads(env.xg("stats", IFACE, "--json", "--interval", "0.3").stdout)


def test_fanout_history_and_report(env: Env, tmp_path: Path):
    env.xg("events", "threshold", "set", "--drop-pps", "2k", "--hold", "2")
    env.xg("block", "add", ATTACKER)
    env.xg("stats", IFACE, "--sample-every", str(SAMPLE_EVERY), "--interval", "0.1")  # stays so
    assert _stats(env)["sample_source"] == "ring"

    nohist = env.xg("report", "-o", str(tmp_path / "none.html"), check=False)
    assert nohist.returncode == 2 and nohist.stderr.count("\n") == 1
    assert nohist.stderr.startswith("xdpguard: error: no daemon history") and not (tmp_path / "none.html").exists()

    run = env.xg_popen(
        "run",
        "--detect-interval",
        "0.5",
        "--duration",
        "120",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    env.lab.defer("stop run", lambda: (run.poll() is None and run.terminate(), run.wait(timeout=20)))
    assert _wait_for(lambda: _stats(env)["sample_source"] == "daemon", timeout=20), "top/stats never used the daemon"

    # capture and top at once, both over the whole flood
    pcap = tmp_path / "drops.pcapng"
    cap = env.xg_popen(
        "capture",
        IFACE,
        "-w",
        str(pcap),
        "--count",
        "1000000",
        "--timeout",
        "8",
        "--json",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    top = env.xg_popen(
        "top", IFACE, "--json", "--interval", "8", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(2.0)  # both connected (CLI start ~0.7 s) before the first packet
    t_flood = time.time()
    flood = _flood(env)
    sent = int(flood.communicate(timeout=FLOOD_S + 10)[0].strip())
    t_flood_end = time.time()
    cap_out, cap_err = cap.communicate(timeout=30)
    top_out, top_err = top.communicate(timeout=30)
    assert cap.returncode == 0, cap_err
    assert top.returncode == 0, top_err
    capr, topr = json.loads(cap_out), json.loads(top_out)

    def closed():
        evs = json.loads(env.xg("events", "--json").stdout)
        return [e for e in evs if e["state"] == "closed"]

    [ev] = _wait_for(closed, timeout=15)
    time.sleep(1.0)  # the record after the end is written
    recs = history.read_tier(IFACE, "1s", root=_hist_root(env))
    daemon_ns = sum(r["ns"] for r in recs if t_flood - 1 <= r["t"] <= t_flood_end + 2)
    expected = sent / SAMPLE_EVERY
    print(
        f"\nflood {sent} packets; samples: expected ~{expected:.0f}, daemon {daemon_ns}, "
        f"capture {capr['packets']} (missed {capr['missed']}), top {topr['samples']} (missed {topr['samples_missed']})"
    )
    assert capr["via"] == "daemon" and topr["sample_source"] == "daemon"
    assert capr["missed"] == 0 and topr["samples_missed"] == 0
    assert daemon_ns > expected * 0.5
    # each sees the flood's samples, as many as the daemon (they no longer take turns on the ring)
    for name, n in (("capture", capr["packets"]), ("top", topr["samples"])):
        assert abs(n - daemon_ns) <= max(5, daemon_ns * 0.05), (name, n, daemon_ns)
    assert set(capr["reasons"]) == {"blocklist"} and list(capr["sources"]) == [ATTACKER]
    assert topr["sources"][0]["key"] == ATTACKER

    # the report of that event
    html, png = tmp_path / "report.html", tmp_path / "report.png"
    t0 = time.monotonic()
    rep = json.loads(env.xg("report", "-o", str(html), "--png", str(png), "--json").stdout)
    wall = time.monotonic() - t0
    page = html.read_text()
    s = rep["summary"]
    print(
        f"report: {rep['html_bytes']} B HTML, {rep['png_bytes']} B PNG, rendered in {rep['render_s']} s "
        f"({wall:.2f} s with the CLI); history {sum(p.stat().st_size for p in _hist_root(env).rglob('*.jsonl'))} B "
        f"for {len(recs)} records"
    )
    assert rep["event"]["id"] == ev["id"] and s["tier"] == "1s"
    assert report._ts(ev["start"]) in page and report._ts(ev["end"]) in page
    assert f"{s['peak_pps']:,.0f}" in page and FLOOD_PPS / 10 < s["peak_pps"] < FLOOD_PPS * 2
    assert s["sources"][0][0] == ATTACKER and ATTACKER in page
    assert page.count('src="data:image/png;base64,') >= 1 and "blocklist" in page
    assert "in force from" in page and "drop_pps = 2000" in page.replace("&quot;", '"')  # the policy recorded
    w, h, colours = _png_look(png.read_bytes())
    assert (w, h) == (1100, 900) and colours > 5 and rep["png_bytes"] > 10_000  # a real plot, not a blank
    again = env.xg("report", "-o", str(html), check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr

    sock_dir = Path(os.environ.get("XDPGUARD_RUN_DIR", "/run/xdpguard")) / "samples" / _hist_root(env).parent.name
    assert (sock_dir / "samples.sock").is_socket() and (sock_dir / "samples.sock").stat().st_mode & 0o777 == 0o600
    assert sock_dir.stat().st_mode & 0o777 == 0o700
    run.terminate()
    run.wait(timeout=20)
    assert not sock_dir.exists()  # the daemon leaves nothing behind
    assert _wait_for(lambda: _stats(env)["sample_source"] == "ring", timeout=10)

    # no daemon: capture and top read the ring themselves
    flood = _flood(env, 8.0)
    time.sleep(0.5)
    cap2 = json.loads(
        env.xg("capture", IFACE, "-w", str(tmp_path / "d2.pcapng"), "--count", "20", "--timeout", "3", "--json").stdout
    )
    top2 = json.loads(env.xg("top", IFACE, "--json", "--interval", "1").stdout)
    flood.communicate(timeout=15)
    assert cap2["via"] == "ring" and cap2["packets"] == 20
    assert top2["sample_source"] == "ring" and top2["samples"] > 0 and top2["sources"][0]["key"] == ATTACKER
