"""Countries in observation (issue 28): the daemon's country tally behind Prometheus has a
bounded label set (N countries + "other" per iface and action) whose series never step back; the
history records keep the top countries of dropped and passed samples and merge them like the
sources; the report shows them. No kernel: samples and records are built here."""

from __future__ import annotations

import json

import pytest

from xdpguard.core import geo
from xdpguard.core.observe import history, report
from xdpguard.core.observe.sampling import PacketSample
from xdpguard.lab.geodb import write_location_db

from render_fixtures import attack_snapshot, geo_attack_snapshot

NETS = {f"198.18.{i}.0/24": f"Q{chr(ord('A') + i)}" for i in range(12)}  # QA..QL: twelve countries


@pytest.fixture
def tally(tmp_path, monkeypatch):
    monkeypatch.setenv(geo.DB_ENV, str(write_location_db(tmp_path / "lab.db", NETS)))
    return geo.CountryTally(labels=3)


def sample(src, dropped=True, every=10):
    return PacketSample(
        0,
        every,
        "drop" if dropped else "pass",
        "geo" if dropped else "clean",
        4,
        "udp",
        src,
        "198.18.200.1",
        1,
        2,
        60,
        b"",
    )


def test_label_set_is_bounded_and_every_series_only_grows(tally):
    # QA 5 samples, QB 4, QC 3, QD 2, QE 1 (dropped); one passed QA
    feed = [f"198.18.{i}.1" for i, n in enumerate((5, 4, 3, 2, 1)) for _ in range(n)]
    tally.feed("xgp0", [sample(s) for s in feed] + [sample("198.18.0.9", dropped=False)])
    first = tally.snapshot()
    assert first == {
        ("xgp0", "drop", "QA"): 50,
        ("xgp0", "drop", "QB"): 40,
        ("xgp0", "drop", "QC"): 30,
        ("xgp0", "drop", "other"): 30,
        ("xgp0", "pass", "QA"): 10,
    }
    # QL floods now: it becomes the largest, but the three labels are taken: it counts as "other"
    tally.feed("xgp0", [sample("198.18.11.1") for _ in range(20)] + [sample("198.18.0.1")])
    second = tally.snapshot()
    assert second[("xgp0", "drop", "other")] == 230 and second[("xgp0", "drop", "QA")] == 60
    assert not any(k[2] == "QL" for k in second)
    assert all(second[k] >= v for k, v in first.items())  # counters: nothing stepped back
    assert len({k for k in second if k[:2] == ("xgp0", "drop")}) == 4  # labels + "other", whatever comes

    # with free labels a newcomer gets one; what "other" had counted of it stays there
    t = geo.CountryTally(of=tally.of, labels=2)
    t.feed("xgp0", [sample("198.18.0.1"), sample("198.18.1.1"), sample("198.18.2.1")])
    a = t.snapshot()
    assert a == {("xgp0", "drop", "QA"): 10, ("xgp0", "drop", "QB"): 10, ("xgp0", "drop", "other"): 10}
    t.labels = 3  # (a freed label)
    t.feed("xgp0", [sample("198.18.2.1")])
    b = t.snapshot()
    # QC's label counts from its labelling on: what came before stays in "other" (10 → 20, never back)
    assert b[("xgp0", "drop", "QC")] == 0 and b[("xgp0", "drop", "other")] == 20
    t.feed("xgp0", [sample("198.18.2.1")])
    c = t.snapshot()
    assert c[("xgp0", "drop", "QC")] == 10 and c[("xgp0", "drop", "other")] == 20


def test_without_a_database_nothing_is_counted(tmp_path, monkeypatch):
    monkeypatch.setenv(geo.DB_ENV, str(tmp_path / "none.db"))
    t = geo.CountryTally()
    t.feed("xgp0", [sample("198.18.0.1")])
    assert not t.of.available and t.snapshot() == {}


def test_history_records_and_merges_the_countries():
    rec = history.record_of(geo_attack_snapshot())
    assert rec["cd"] == [["QY", 90000.0], ["QZ", 9000.0]] and rec["cp"] == [["DE", 240.0], ["??", 10.0]]
    assert "cd" not in history.record_of(attack_snapshot())  # no geo database: no key
    later = dict(rec, t=rec["t"] + 1, cd=[["QZ", 99000.0]], cp=[])
    m = history.merge([rec, later])
    assert m["cd"] == [["QZ", 54000.0], ["QY", 45000.0]] and m["cp"] == [["DE", 120.0], ["??", 5.0]]
    assert "cd" not in history.merge([history.record_of(attack_snapshot())] * 2)
    json.dumps(m)  # a record is one JSON line


def test_report_shows_the_top_countries():
    rec = history.record_of(geo_attack_snapshot())
    s = report.summarise("1s", [rec], rec["t"] - 1, rec["t"])
    assert s.countries_dropped == [["QY", 90000], ["QZ", 9000]] and s.countries_passed == [["DE", 240], ["??", 10]]
    page = report.render_html({"id": "e1"}, s, [], rec["t"] - 1, rec["t"])
    assert "Top countries" in page and "<td>QY</td><td>90,000</td><td>DE</td><td>240</td>" in page
    assert "<td>QZ</td><td>9,000</td><td>??</td><td>10</td>" in page
    plain = report.summarise("1s", [history.record_of(attack_snapshot())], rec["t"] - 1, rec["t"])
    assert plain.countries_dropped == [] and "Top countries" not in report.render_html({}, plain, [], 0, 1)
