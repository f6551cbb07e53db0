"""The dashboard's pure render() against golden screens (fixed Snapshots, fixed consoles).

Regenerate after an intended change: XDPGUARD_UPDATE_GOLDEN=1 pytest tests/unit/test_render.py
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from xdpguard.core.observe.stats import Talker
from xdpguard.tui.render import fmt_duration, fmt_rate, plain, render

from render_fixtures import (
    attack_snapshot,
    geo_attack_snapshot,
    quiet_snapshot,
)  # tests/unit is on sys.path (rootdir-less test dirs)

GOLDEN = Path(__file__).parent / "golden" / "render"


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def screen(snap, width: int, height: int) -> str:
    c = Console(
        width=width,
        height=height,
        record=True,
        color_system=None,
        file=open(os.devnull, "w"),
        highlight=False,
        legacy_windows=False,
    )
    c.print(render(snap, width, height))
    return c.export_text()


@pytest.mark.parametrize(
    "name,make", [("attack", attack_snapshot), ("quiet", quiet_snapshot), ("geo_attack", geo_attack_snapshot)]
)
@pytest.mark.parametrize("width,height", [(80, 24), (160, 48)])
def test_golden(name, make, width, height):
    text = screen(make(), width, height)
    lines = text.splitlines()
    assert len(lines) <= height, f"{len(lines)} lines do not fit {height}"
    assert max(len(line) for line in lines) <= width
    path = GOLDEN / f"{name}_{width}x{height}.txt"
    if os.environ.get("XDPGUARD_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_attack_screen_says_what_matters():
    text = screen(attack_snapshot(), 80, 24)
    assert "UNDER ATTACK for 1m23s" in text
    assert "blocklist" in text and "198.18.0.66" in text and "udp/53" in text
    assert "sampled 1/64" in text and "q quits" in text
    assert "NORMAL" in screen(quiet_snapshot(), 80, 24)


def test_plain_snapshot_is_uncoloured_text():
    text = plain(attack_snapshot(), 100)
    assert "\x1b[" not in text and "UNDER ATTACK" in text


@pytest.mark.parametrize(
    "v,unit,out",
    [(0, "", "0"), (999, "", "999"), (1000, "", "1.00k"), (78.4e6, "b", "78.40Mb"), (2.5e9, "b", "2.50Gb")],
)
def test_fmt_rate(v, unit, out):
    assert fmt_rate(v, unit) == out


def test_fmt_duration():
    assert (fmt_duration(5), fmt_duration(83), fmt_duration(7322)) == ("5s", "1m23s", "2h02m")


def test_top_countries_line_only_with_a_geo_database():
    snap = attack_snapshot()
    assert "countries:" not in plain(snap)
    snap = replace(
        snap,
        countries={
            "dropped": [Talker("CN", 12000.0, 0.0, 0.8, 1.0, "geo")],
            "passed": [Talker("DE", 300.0, 0.0, 0.2, 0.0, "clean")],
        },
    )
    text = plain(snap, width=120)
    assert "countries: dropped CN 12.00k" in text and "passed DE 300" in text
    lines = screen(snap, 80, 24).splitlines()
    assert len(lines) <= 24 and any(line.startswith("countries: dropped CN") for line in lines)
