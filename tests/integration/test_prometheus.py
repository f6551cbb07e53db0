"""A real Prometheus (Debian's) scraping a real `xdpguard run --metrics` in a namespace lab:
the shipped rules load and evaluate without error, the target is up, the recording rules give
the blocklist drop rate, and during a bounded IPv4-only flood the attack alert fires for the
IPv4 address only — never for the interface's idle IPv6 address, even with sampling so sparse
that most detection intervals have no sample to split the interface's rate by.

Topology (one veth pair):
    atk ns   xga0  198.18.0.1/29 (attacker)
    prot ns  xgp0  198.18.0.2/29 + 2001:db8::2/64 (both protected); xdpguard run, prometheus
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from xdpguard.lab.netns import Lab

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "xdpguard.rules.yml"
PY = sys.executable
PROT4, PROT6, ATTACKER = "198.18.0.2", "2001:db8::2", "198.18.0.1"
IFACE = "xgp0"
METRICS_PORT, PROM_PORT = 9477, 9090
FLOOD_PPS, FLOOD_S = 20_000, 10
SPARSE_SAMPLING = 16384


def _prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        msg = "prometheus not found (Debian package prometheus); run scripts/setup.sh"
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return path


class Prom:
    """The Prometheus HTTP API inside the namespace (queried by a python in it)."""

    def __init__(self, lab: Lab, ns: str):
        self.lab, self.ns = lab, ns

    def get(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{PROM_PORT}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
        p = self.lab.run(self.ns, PY, "-c", code, check=False, timeout=20)
        if p.returncode != 0:
            return {}
        body = json.loads(p.stdout) if p.stdout.strip().startswith("{") else {"raw": p.stdout}
        return body

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr).get("data", {}).get("result", [])


def _wait_for(pred, timeout: float, step: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    return last


def test_real_prometheus_loads_the_rules_and_alerts_on_the_attacked_address_only(lab: Lab, tmp_path: Path):
    prometheus = _prometheus()
    atk, prot = lab.netns("pmatk"), lab.netns("pmprot")
    lab.veth(atk, "xga0", prot, IFACE)
    lab.addr(atk, "xga0", f"{ATTACKER}/29")
    lab.addr(prot, IFACE, f"{PROT4}/29")
    lab.addr(prot, IFACE, f"{PROT6}/64")
    env = {**os.environ, "XDPGUARD_STATE_DIR": str(tmp_path / "state")}

    def xg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            ["ip", "netns", "exec", prot, "xdpguard", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        assert not check or p.returncode == 0, f"{args}: {p.stderr}"
        return p

    xg("attach", IFACE, "--protect", f"{PROT4},{PROT6}")
    lab.defer("detach xdpguard", xg, "detach", IFACE, check=False)
    xg("block", "add", ATTACKER)
    xg("events", "threshold", "set", "--drop-pps", "2k", "--hold", "3")
    # Sparse sampling (1 in SPARSE_SAMPLING per CPU and reason: about one sample a second at
    # FLOOD_PPS), so most detection intervals see no sample at all: the case where the whole
    # interface's rate used to be handed to every protected address, the idle IPv6 one included.
    xg("stats", IFACE, "--sample-every", str(SPARSE_SAMPLING), "--interval", "0.2")

    run = lab.popen(
        prot,
        "env",
        f"XDPGUARD_STATE_DIR={env['XDPGUARD_STATE_DIR']}",
        "xdpguard",
        "run",
        "--metrics",
        f"127.0.0.1:{METRICS_PORT}",
        "--detect-interval",
        "0.5",
        "--duration",
        "120",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert "metrics on" in run.stdout.readline()

    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "xdpguard", "static_configs": [{"targets": [f"127.0.0.1:{METRICS_PORT}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "w")
    lab.popen(
        prot,
        "timeout",
        "150",
        prometheus,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{PROM_PORT}",
        "--storage.tsdb.retention.time=1h",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = Prom(lab, prot)
    assert _wait_for(lambda: prom.get("/-/ready"), timeout=30), (tmp_path / "prometheus.log").read_text()[-2000:]

    # The rules load as shipped, and every one evaluates without error.
    shipped = {
        r.get("alert") or r.get("record") for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
    }

    def rules_ok():
        groups = prom.get("/api/v1/rules").get("data", {}).get("groups", [])
        rules = [r for g in groups for r in g["rules"]]
        bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
        return rules if rules and not bad else None

    rules = _wait_for(rules_ok, timeout=40, step=1)
    assert rules, prom.get("/api/v1/rules")
    assert {r["name"] for r in rules} == shipped

    def targets():
        active = prom.get("/api/v1/targets").get("data", {}).get("activeTargets", [])
        return [(t["labels"]["job"], t["health"]) for t in active]

    assert _wait_for(lambda: targets() == [("xdpguard", "up")], timeout=15), targets()

    # A bounded IPv4-only flood (blocklisted source): the alert fires for PROT4, never for PROT6.
    mac = json.loads(lab.run(prot, "ip", "-j", "link", "show", IFACE).stdout)[0]["address"]
    flood = lab.popen(
        atk,
        PY,
        "-m",
        "xdpguard.lab.flood",
        "--iface",
        "xga0",
        "--dst-mac",
        mac,
        "--dst",
        PROT4,
        "--kind",
        "udp",
        "--src",
        ATTACKER,
        "--dport",
        "53",
        "--pps",
        str(FLOOD_PPS),
        "--count",
        str(FLOOD_PPS * FLOOD_S),
        "--duration",
        str(FLOOD_S),
        "--json",
        stdout=subprocess.PIPE,
        text=True,
    )

    def firing():
        alerts = prom.get("/api/v1/alerts").get("data", {}).get("alerts", [])
        return [a for a in alerts if a["labels"]["alertname"] == "XdpguardAttackActive" and a["state"] == "firing"]

    fired = _wait_for(firing, timeout=FLOOD_S + 5)
    assert fired and {a["labels"]["protected"] for a in fired} == {PROT4}, fired
    assert fired[0]["labels"]["iface"] == IFACE and fired[0]["labels"]["severity"] == "warning"
    sent = json.loads(flood.communicate(timeout=FLOOD_S + 20)[0])["sent"]
    assert sent > FLOOD_PPS

    rate = _wait_for(
        lambda: prom.query(f'iface_reason:xdpguard_packets_dropped:rate1m{{iface="{IFACE}",reason="blocklist"}}'),
        timeout=20,
        step=1,
    )
    assert rate and float(rate[0]["value"][1]) > FLOOD_PPS / 20, rate
    v4 = prom.query(f'max_over_time(xdpguard_attack_active{{protected="{PROT4}"}}[5m])')
    v6 = prom.query(f'max_over_time(xdpguard_attack_active{{protected="{PROT6}"}}[5m])')
    assert [float(s["value"][1]) for s in v4] == [1.0], v4
    assert [float(s["value"][1]) for s in v6] == [0.0], v6  # scraped all along, never 1
    assert prom.query(f'ALERTS{{alertname="XdpguardAttackActive",protected="{PROT6}"}}[5m]') == []
    quiet = prom.query('ALERTS{alertname=~"XdpguardNothingProtected|XdpguardDaemonDown|XdpguardMetricsAbsent"}')
    assert quiet == [], quiet
