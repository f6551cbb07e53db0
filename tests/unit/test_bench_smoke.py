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
