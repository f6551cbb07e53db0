"""`xdpguard lab attack KIND`: every kind is bounded (ends by itself), reaches the protector and is
dropped in XDP with a reason, and the legitimate client keeps being served meanwhile.

One lab for the module (`lab up` takes a few seconds). Today's policy: the attacker's own
address is blocklisted (udp-flood, icmp-flood → `blocklist`), spoofed floods go to closed ports
(→ `port`)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_assert import CliLab
from xdpguard.lab import topology

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing

DURATION = 1.5
EXPECTED = {
    "udp-flood": {"blocklist"},
    "spoofed-udp": {"port"},
    "syn-flood": {"port"},
    "reflection": {"port"},
    "icmp-flood": {"blocklist"},
    "mixed": {"blocklist", "port"},
}


class AttackLab(CliLab):
    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path, "a")

    def counters(self) -> dict[tuple[str, str], int]:
        p = self.in_ns("prot", *topology.xdpguard_argv(), "status", topology.PROT_IFACE, "--json")
        assert p.returncode == 0, p.stderr
        return {(c["kind"], c["reason"]): c["packets"] for c in json.loads(p.stdout)[0]["counters"]}

    def block(self, add: bool) -> None:
        p = self.in_ns(
            "prot", *topology.xdpguard_argv(), "block", "add" if add else "del", topology.ATTACKER4, topology.ATTACKER6
        )
        assert p.returncode == 0, p.stderr

    def attack(self, *args: str) -> tuple[dict, float]:
        t0 = time.monotonic()
        res = self.xg_json("lab", "attack", *args)
        return res, time.monotonic() - t0


def _moved(after: dict, before: dict, kind: str = "drop") -> dict[str, int]:
    return {r: n - before.get((k, r), 0) for (k, r), n in after.items() if k == kind and n > before.get((k, r), 0)}


@pytest.fixture(scope="module")
def alab(tmp_path_factory) -> Iterator[AttackLab]:
    al = AttackLab(tmp_path_factory.mktemp("attacklab"))
    try:
        al.xg("lab", "up")
        al.block(True)
        yield al
    finally:
        al.xg("lab", "down", check=False)
    assert not [r for r in topology.ROLES if topology.ns_exists(al.ns(r))]


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_attack_is_bounded_and_dropped_with_reason(alab: AttackLab, kind: str):
    before = alab.counters()
    res, wall = alab.attack(kind, "--duration", str(DURATION))
    assert res["kind"] == kind and res["stopped_by"] == "time"
    assert res["elapsed_s"] <= DURATION + 1.0, res
    assert wall <= DURATION + 5.0  # CLI start-up and counter reads on top
    assert res["sent"] > 1000 and res["pps"] > 1000, res
    time.sleep(0.2)
    drops = _moved(alab.counters(), before)
    assert set(drops) >= EXPECTED[kind], (kind, drops)
    # most of what the attacker sent was dropped in XDP (what the veth/bridge queues lose before
    # XDP on this 2-core machine counts as sent but never reaches a verdict)
    assert sum(drops.values()) >= 0.75 * res["sent"], (drops, res)


def test_count_and_rate_bounds(alab: AttackLab):
    res, _ = alab.attack("spoofed-udp", "--count", "5000", "--duration", "10")
    assert res["stopped_by"] == "count" and 5000 <= res["sent"] <= 5020, res
    assert res["elapsed_s"] < 5, res
    res, _ = alab.attack("syn-flood", "--pps", "4000", "--duration", "1", "--sources", "16")
    assert res["count_limit"] == 4000 and res["sources"] == 16
    assert 3000 <= res["sent"] <= 4020, res
    assert 0.6 <= res["elapsed_s"] <= 2.0, res


def test_udp_flood_passes_until_blocked(alab: AttackLab):
    alab.block(False)
    # level loose: no per-source UDP budget (attach's level normal would rate-limit one source at 10,000 pps);
    # no admission budget for unverified UDP (issue 25: 1,000 pps per service by default)
    assert alab.in_ns("prot", *topology.xdpguard_argv(), "level", "loose").returncode == 0
    assert alab.in_ns("prot", *topology.xdpguard_argv(), "verify", "set", "--no-budget").returncode == 0
    try:
        before = alab.counters()
        res, _ = alab.attack("udp-flood", "--count", "20000", "--pps", "50000", "--duration", "2")
        after = alab.counters()
        dropped, passed = _moved(after, before), _moved(after, before, "pass")
        assert "blocklist" not in dropped
        seen = sum(dropped.values()) + sum(passed.values())
        # trafgen bursts faster than --pps at this rate; the veth/bridge queues then lose part of
        # the burst before XDP, so only a share of `sent` reaches a verdict
        assert seen >= 0.3 * res["sent"], (dropped, passed, res)
        assert passed.get("clean", 0) >= 0.95 * seen, (dropped, passed)  # to the forwarded port 7
    finally:
        alab.block(True)
        assert alab.in_ns("prot", *topology.xdpguard_argv(), "level", "normal").returncode == 0
        assert alab.in_ns("prot", *topology.xdpguard_argv(), "verify", "set", "--budget").returncode == 0
    before = alab.counters()
    res, _ = alab.attack("udp-flood", "--count", "20000", "--pps", "50000", "--duration", "2")
    assert _moved(alab.counters(), before).get("blocklist", 0) >= res["sent"] - 10


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_probe_succeeds_under_attack(alab: AttackLab, kind: str):
    attacker = subprocess.Popen(
        [*topology.xdpguard_argv(), "lab", "attack", kind, "--duration", "3", "--json"],
        env=alab.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        http = alab.xg_json("lab", "probe", "--proto", "http", "--count", "150", "--duration", "2")
        udp = alab.xg_json("lab", "probe", "--proto", "udp", "--count", "150", "--duration", "1")
    finally:
        out, err = attacker.communicate(timeout=30)
    res = json.loads(out)
    assert res["sent"] > 1000, (res, err)
    for r in (http, udp):
        assert r["sent"] >= 20 and r["success_pct"] >= 99.0, r
