"""Smoke test of scripts/bench.py: it runs end to end and reports every figure.

No timing assertions: the numbers depend on the machine. Only that each is a positive number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _numbers(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


@pytest.mark.kernel
def test_bench_quick_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    before = set(Path("/run/netns").glob("xgbench-*"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--prefixes", "20000", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ratios, not absolute numbers" in proc.stdout
    doc = json.loads(out.read_text())

    assert doc["kernel"] == os.uname().release
    assert doc["cpus"] >= 1
    assert doc["config"]["prefixes"] == 20000
    assert sum(v for k, v in doc["prefix_mix"].items() if k != "total") == doc["prefix_mix"]["total"] == 20000

    variants = doc["testrun_ns"]
    assert len(variants) == 11
    assert any(k.startswith("bare XDP_DROP") for k in variants)
    assert any(k.startswith("clean pass") for k in variants)
    assert sum(k.startswith("block hit") for k in variants) == 5
    for k, v in variants.items():
        assert len(v["samples"]) == doc["config"]["rounds"], k
    assert len(doc["testrun_ratios"]) == 10
    assert set(doc["load_s"]) == {"empty", "refresh", "ipset"}
    assert {"total_s", "parse_s", "upsert_s", "upsert_sys_s", "batch_syscall_s"} <= set(doc["load_s"]["empty"])
    assert {"total_s", "parse_s", "upsert_s", "upsert_sys_s"} <= set(doc["load_s"]["refresh"])
    assert len(doc["load_ratios"]) == 2

    # Every figure is a positive number (CPU-time splits may legitimately round to zero).
    for path, value in _numbers({k: doc[k] for k in ("testrun_ns", "testrun_ratios", "load_ratios")}):
        assert value > 0, path
    for kind, figures in doc["load_s"].items():
        assert figures["total_s"] > 0, kind
        for name, value in figures.items():
            assert value >= 0, f"{kind}.{name}"
    for name in ("parse_s", "upsert_s", "batch_syscall_s"):
        assert doc["load_s"]["empty"][name] > 0, name

    # The run left no namespace behind.
    assert set(Path("/run/netns").glob("xgbench-*")) <= before


@pytest.mark.kernel
def test_bench_suite_smoke_has_every_section(tmp_path):
    """`scripts/bench --smoke`: every section runs end to end, writes its JSON, table and plot,
    the verdicts of xdpguard and xdp-filter agree (the suite refuses to time them otherwise), and
    no namespace is left behind. No timing assertions."""
    out = tmp_path / "res"
    proc = subprocess.Popen([str(REPO / "scripts" / "bench"), "--smoke", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, stdout + stderr
    doc = json.loads((out / "bench.json").read_text())
    assert {"1_per_packet", "2_drop", "3_scale", "4_load", "5_forward"} <= set(doc)
    assert doc["profile"] == "smoke" and doc["machine"]["kernel"] == os.uname().release

    pp = doc["1_per_packet"]
    assert pp["bare_ns"] > 0
    assert len(pp["cases"]) == 6
    for name, row in pp["cases"].items():
        assert row["ns"] > 0 and row["x_bare"] > 0, name
        assert row["verdict"].split("/")[0] in ("pass", "drop"), name
    with_xf = [n for n, r in pp["cases"].items() if "xdp_filter_ns" in r]
    assert set(with_xf) == {"clean pass v4", "clean pass v6", "blocklist hit v4", "blocklist hit v6"}
    assert pp["cases"]["blocklist hit v4"]["verdict"] == "drop/blocklist"

    drop = doc["2_drop"]
    assert set(drop) == {"no filter", "iptables raw", "nft netdev ingress", "ipset", "xdp-filter", "xdpguard", "bare XDP_DROP"}
    for name, row in drop.items():
        assert row["pps"] > 0 and row["cpu_ns_per_pkt"] > 0, name
        assert all(r["sent"] > 0 for r in row["rounds"]), name

    scale = doc["3_scale"]
    for mech in ("ip6tables rules", "ipset", "nft set", "xdpguard"):
        assert set(scale[mech]) == {"1", "100"}, mech
        assert all(r["pps"] > 0 for r in scale[mech].values()), mech

    load = doc["4_load"]
    assert load["prefixes"] == 1000
    for k in ("xdpguard block load (empty map)", "xdpguard block load (refresh)", "ipset restore", "nft -f"):
        assert load[k]["s"] > 0, k

    fwd = doc["5_forward"]
    assert set(fwd) == {"xdpguard", "nft DNAT", "nft DNAT + XDP_PASS", "our nft table, no XDP",
                        "nft DNAT + old counter chain", "nft DNAT + empty forward chain"}
    for name, row in fwd.items():
        assert row["gbps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], name
        assert row["failed"] == 0, name

    md = (out / "bench.md").read_text()
    assert md in stdout
    for title in ("1. Per-packet cost", "2. Drop on a veth pair", "3. Rule-count scaling", "4. Loading", "5. Forwarding"):
        assert title in md, title
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The lab names its namespaces xg-<prefix>-<pid>-<n> (bench execs python: same pid).
    assert not [p.name for p in Path("/run/netns").glob(f"xg-*-{proc.pid}-*")]
