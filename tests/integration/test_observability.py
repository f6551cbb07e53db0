"""Observability under a bounded attack in a namespace lab, with the real CLI:
`top` in tmux shows UNDER ATTACK, the drop reason and the attacker; `run` logs an attack event
with plausible peaks that closes after the attack and runs the hook; its metrics endpoint
parses and agrees with `stats --json`; `capture` writes a file tcpdump reads.

Topology (one veth pair):
    atk ns   xga0  198.18.0.1/29 (client), 198.18.0.5/29 (attacker)
    prot ns  xgp0  198.18.0.2/29 (protected)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xdpguard.core.observe import sampling
from xdpguard.lab.netns import Lab

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing

PY = sys.executable
PROT, CLIENT, ATTACKER = "198.18.0.2", "198.18.0.1", "198.18.0.5"
IFACE = "xgp0"
METRICS_PORT = 9477
FLOOD_PPS, FLOOD_S = 20_000, 10.0

# A bounded UDP flood: at most FLOOD_PPS × FLOOD_S packets, and never longer than FLOOD_S seconds.
FLOOD = """
import socket, sys, time
src, dst, pps, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
payload = b"A" * 64
sent, start = 0, time.monotonic()
limit = int(pps * secs)
while sent < limit:
    now = time.monotonic() - start
    if now >= secs:
        break
    due = min(limit, int(now * pps) + 100)
    while sent < due:
        try:
            s.sendto(payload, (dst, 53))
        except OSError:
            pass
        sent += 1
    time.sleep(0.002)
print(sent)
"""


def _scrape_code(port: int) -> str:
    return f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=5).read().decode())"


class Env:
    def __init__(self, lab: Lab, atk: str, prot: str, state_dir: Path):
        self.lab, self.atk, self.prot = lab, atk, prot
        self.env = {**os.environ, "XDPGUARD_STATE_DIR": str(state_dir)}

    def xg(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run(
            ["ip", "netns", "exec", self.prot, "xdpguard", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"{args} exited {p.returncode}: {p.stderr.strip()}")
        return p

    def xg_popen(self, *args: str, **kw) -> subprocess.Popen:
        return self.lab.popen(
            self.prot, "env", f"XDPGUARD_STATE_DIR={self.env['XDPGUARD_STATE_DIR']}", "xdpguard", *args, **kw
        )


@pytest.fixture
def env(lab: Lab, tmp_path: Path) -> Env:
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


def _tmux(sock: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, timeout=10)


def _wait_for(pred, timeout: float, step: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    return last


@pytest.mark.skipif(shutil.which("tmux") is None or shutil.which("tcpdump") is None, reason="needs tmux and tcpdump")
def test_top_events_metrics_capture_under_attack(env: Env, tmp_path: Path):
    hook_out = tmp_path / "hook.jsonl"
    hook_py = tmp_path / "hook.py"
    hook_py.write_text(
        "import json, os, sys\n"
        f"open({str(hook_out)!r}, 'a').write(json.dumps({{'phase': os.environ['XDPGUARD_EVENT_PHASE'],"
        " 'event': json.load(sys.stdin)}) + '\\n')\n"
    )
    env.xg("events", "threshold", "set", "--drop-pps", "2k", "--hold", "2", "--hook", f"{PY} {hook_py}")
    env.xg("block", "add", ATTACKER)
    stats0 = json.loads(env.xg("stats", IFACE, "--json", "--interval", "0.3").stdout)
    assert stats0["under_attack"] is False and stats0["sample_every"] == sampling.DEFAULT_SAMPLE_EVERY

    run = env.xg_popen(
        "run",
        "--metrics",
        f"127.0.0.1:{METRICS_PORT}",
        "--detect-interval",
        "0.5",
        "--duration",
        "60",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert "metrics on" in run.stdout.readline()

    sock = f"xgtest-{os.getpid()}"
    env.lab.defer("kill tmux server", _tmux, sock, "kill-server")
    top_cmd = (
        f"ip netns exec {env.prot} env XDPGUARD_STATE_DIR={env.env['XDPGUARD_STATE_DIR']} "
        f"{shutil.which('xdpguard') or 'xdpguard'} top {IFACE} --interval 1"
    )
    r = _tmux(sock, "new-session", "-d", "-s", "top", "-x", "100", "-y", "30", top_cmd)
    assert r.returncode == 0, r.stderr

    flood = env.lab.popen(
        env.atk, PY, "-c", FLOOD, ATTACKER, PROT, str(FLOOD_PPS), str(FLOOD_S), stdout=subprocess.PIPE, text=True
    )
    t_flood = time.monotonic()

    def screen_ok():
        scr = _tmux(sock, "capture-pane", "-p", "-t", "top").stdout
        return scr if ("UNDER ATTACK" in scr and "blocklist" in scr and ATTACKER in scr) else None

    scr = _wait_for(screen_ok, timeout=8)
    assert scr, f"top screen never showed the attack:\n{_tmux(sock, 'capture-pane', '-p', '-t', 'top').stdout}"
    _tmux(sock, "send-keys", "-t", "top", "q")
    assert _wait_for(lambda: _tmux(sock, "has-session", "-t", "top").returncode != 0, timeout=5), "q did not quit top"

    pcap = tmp_path / "drops.pcapng"
    cap = json.loads(
        env.xg(
            "capture", IFACE, "-w", str(pcap), "--count", "20", "--timeout", "5", "--reason", "blocklist", "--json"
        ).stdout
    )
    assert cap["packets"] == 20 and cap["reasons"] == {"blocklist": 20} and list(cap["sources"]) == [ATTACKER]

    sent = int(flood.communicate(timeout=FLOOD_S + 10)[0].strip())
    flood_s = time.monotonic() - t_flood
    assert sent > FLOOD_PPS * 2

    def closed_event():
        evs = json.loads(env.xg("events", "--json").stdout)
        return [e for e in evs if e["state"] == "closed"] and evs

    evs = _wait_for(closed_event, timeout=10)
    assert evs and len(evs) == 1, evs
    ev = evs[0]
    assert ev["iface"] == IFACE and ev["protected"] == PROT and ev["state"] == "closed"
    assert ev["top_reasons"][0][0] == "blocklist" and ev["top_sources"][0][0] == ATTACKER
    # peaks plausible: at least a tenth of the send rate, at most twice it (rates are per interval)
    assert FLOOD_PPS / 10 < ev["peak_drop_pps"] < FLOOD_PPS * 2, ev
    assert ev["peak_bps"] > ev["peak_drop_pps"] * 64 * 8 * 0.9
    assert ev["duration_s"] >= 2 and ev["end"] > ev["start"]
    hooks = [json.loads(line) for line in hook_out.read_text().splitlines()]
    assert [h["phase"] for h in hooks] == ["start", "end"] and all(h["event"]["id"] == ev["id"] for h in hooks)

    # Counters are still now: the scrape and `stats --json` must agree on the drop counter.
    from prometheus_client.parser import text_string_to_metric_families

    text = env.lab.run(env.prot, PY, "-c", _scrape_code(METRICS_PORT)).stdout
    drops = {
        s.labels["reason"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "xdpguard_packets_total" and s.labels["action"] == "drop" and s.labels["iface"] == IFACE
    }
    stats = json.loads(env.xg("stats", IFACE, "--json", "--interval", "0.2").stdout)
    stat_drop = {c["reason"]: c["packets"] for c in stats["counters"] if c["kind"] == "drop"}
    assert drops["blocklist"] == stat_drop["blocklist"] >= sent * 0.9
    assert "xdpguard_attack_active" in text and "xdpguard_list_entries" in text

    out = subprocess.run(["tcpdump", "-nr", str(pcap)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 20 and all(f"{ATTACKER}." in line and f"{PROT}.53" in line for line in lines), out.stdout

    run.terminate()
    run.wait(timeout=15)
    assert flood_s < FLOOD_S + 10
