"""The daemon's rolling history (xdpguard/core/observe/history.py): downsampling is right, the size cap
holds while many records are written fast, a torn last line loses only that record, a restart
rebuilds the coarse bucket it was filling; and a report renders from a recorded history."""

from __future__ import annotations

import json
import os
import struct
import zlib

import pytest

from xdpguard.core.observe import history, report
from xdpguard.core.errors import UserError


def rec(t: float, rx: float, drop: float, dt: float = 1.0, reasons=None, src=None, atk=()) -> dict:
    return {
        "t": t,
        "dt": dt,
        "rx": [rx, rx * 800],
        "drop": [drop, drop * 800],
        "fwd": [rx - drop, (rx - drop) * 800],
        "pass": [rx - drop, (rx - drop) * 800],
        "r": reasons if reasons is not None else ({"blocklist": [drop, drop * 800]} if drop else {}),
        "src": src or [],
        "port": [["udp/53", drop]] if drop else [],
        "ns": int(drop // 100),
        "nm": 0,
        "atk": list(atk),
    }


def test_downsample_means_peaks_and_unions():
    recs = [
        rec(
            1000 + i + 1,
            rx=100 + i,
            drop=(1000 if 3 <= i < 6 else 0),
            src=[["198.18.0.5", 1000.0]] if 3 <= i < 6 else [],
            atk=["198.18.0.2"] if i == 4 else (),
        )
        for i in range(20)
    ]
    out = history.downsample(recs, 10)
    # records end at 1001..1020: buckets 100 (1001..1009), 101 (1010..1019), 102 (1020)
    assert [r["t"] for r in out] == [1009, 1019, 1020]
    first = out[0]
    assert first["dt"] == 9
    assert first["rx"][0] == pytest.approx(sum(100 + i for i in range(9)) / 9, abs=0.01)
    assert first["drop"][0] == pytest.approx(3000 / 9, abs=0.01)
    assert first["pk"] == [108, 1000, 108 * 800]  # peaks are maxima, not means
    assert first["r"] == {"blocklist": [pytest.approx(3000 / 9, abs=0.01), pytest.approx(3000 * 800 / 9, abs=1)]}
    assert first["src"] == [["198.18.0.5", pytest.approx(3000 / 9, abs=0.01)]]
    assert first["atk"] == ["198.18.0.2"] and first["ns"] == 30
    assert out[1]["pk"][1] == 0 and out[1]["atk"] == [] and out[1]["dt"] == 10
    # time-weighted: a 3 s record counts three times a 1 s one
    m = history.merge([rec(10, 100, 0, dt=3), rec(11, 200, 0, dt=1)])
    assert m["rx"][0] == pytest.approx(125)
    # merging coarse records keeps their peaks (a 60 s record from 10 s ones)
    again = history.merge(out[:2])
    assert again["pk"] == [max(out[0]["pk"][0], out[1]["pk"][0]), 1000, max(out[0]["pk"][2], out[1]["pk"][2])]
    assert history.downsample(recs, 1) == [history.merge([r]) for r in recs]


def _tier_bytes(d) -> dict[str, int]:
    return {t.name: sum(p.stat().st_size for p in (d / t.name).glob("*.jsonl")) for t in history.TIERS}


def test_size_cap_holds_while_writing_fast(tmp_path):
    cap = 256 << 10
    r = history.Recorder("xgp0", root=tmp_path, cap_bytes=cap)
    d = tmp_path / "xgp0"
    srcs = [[f"198.18.{i}.{j}", 1000.0 - i] for i, j in zip(range(5), range(5))]
    n = 12_000  # 3 h 20 min of 1 s records: every tier over its share of the cap
    for i in range(n):
        r.add(rec(1_000_000 + i, 5000 + i % 7, 4000, src=srcs, atk=["198.18.0.2"]))
        if i % 997 == 0:
            sizes = _tier_bytes(d)
            assert sum(sizes.values()) <= cap, sizes
            for t in history.TIERS:
                assert sizes[t.name] <= cap * t.share + 1, (t.name, sizes)
    r.close()
    sizes = _tier_bytes(d)
    assert sum(sizes.values()) <= cap
    assert r.bytes_on_disk() == sum(sizes.values())
    last = 1_000_000 + n - 1
    fine = history.read_tier("xgp0", "1s", root=tmp_path)
    assert fine[-1]["t"] == last and fine[0]["t"] > 1_000_000  # the newest kept, the oldest gone
    assert [b["t"] for b in fine] == list(range(int(fine[0]["t"]), last + 1))  # no gap in what is kept
    ten = history.read_tier("xgp0", "10s", root=tmp_path)
    assert ten[-1]["t"] == (last // 10) * 10 - 1  # the last closed bucket
    assert all(b2["t"] - b1["t"] == 10 for b1, b2 in zip(ten, ten[1:]))
    assert ten[0]["t"] < fine[0]["t"]  # the coarse tier reaches back further


def test_retention_drops_old_segments(tmp_path):
    r = history.Recorder("xgp0", root=tmp_path, cap_bytes=1 << 30)
    for i in range(3 * 3600):
        r.add(rec(2_000_000 + i, 10, 0))
    r.close()
    fine = history.read_tier("xgp0", "1s", root=tmp_path)
    span = fine[-1]["t"] - fine[0]["t"]
    assert 3600 <= span <= 3600 + 3600 / 6 + 1  # an hour, plus at most one segment's span


def test_torn_write_loses_only_the_last_record(tmp_path):
    r = history.Recorder("xgp0", root=tmp_path)
    for i in range(50):
        r.add(rec(3_000_000 + i, 10, 0))
    r.close()
    [seg] = (tmp_path / "xgp0" / "1s").glob("*.jsonl")
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) - 17])  # a crash in the middle of the 50th line
    assert [x["t"] for x in history.read_tier("xgp0", "1s", root=tmp_path)][-1] == 3_000_000 + 48
    r = history.Recorder("xgp0", root=tmp_path)  # the next daemon cuts the torn line off and appends
    r.add(rec(3_000_100, 10, 0))
    r.close()
    ts = [x["t"] for x in history.read_tier("xgp0", "1s", root=tmp_path)]
    assert ts == [3_000_000 + i for i in range(49)] + [3_000_100]
    assert seg.read_bytes().endswith(b"\n")


def test_restart_rebuilds_the_coarse_bucket(tmp_path):
    r = history.Recorder("xgp0", root=tmp_path)
    for i in range(1, 16):
        r.add(rec(4_000_000 + i, 10 * i, 0))
    r.close()  # killed in the middle of the bucket 4_000_010..19
    r = history.Recorder("xgp0", root=tmp_path)
    for i in range(16, 31):
        r.add(rec(4_000_000 + i, 10 * i, 0))
    r.close()
    ten = history.read_tier("xgp0", "10s", root=tmp_path)
    assert [b["t"] for b in ten] == [4_000_009, 4_000_019, 4_000_029]
    assert ten[1]["rx"][0] == pytest.approx(sum(10 * i for i in range(10, 20)) / 10)
    assert ten[1]["dt"] == 10


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def _png_not_blank(png: bytes) -> bool:
    """More than one colour in the decoded image (matplotlib writes RGBA, 8 bit, filter per row)."""
    w, h = _png_size(png)
    pos, idat = 8, b""
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        if png[pos + 4 : pos + 8] == b"IDAT":
            idat += png[pos + 8 : pos + 8 + n]
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = 1 + w * 4
    rows = {raw[i * stride + 1 : (i + 1) * stride] for i in range(0, h, max(1, h // 50))}
    return len(rows) > 1


def test_report_from_a_recorded_history(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("XDPGUARD_STATE_DIR", str(tmp_path / "state"))
    root = tmp_path / "hist"
    r = history.Recorder("xgp0", root=root)
    t0 = 5_000_000
    for i in range(60):
        attack = 20 <= i < 40
        r.add(
            rec(
                t0 + i,
                20_000 if attack else 100,
                19_900 if attack else 0,
                src=[["198.18.0.5", 19_900.0]] if attack else [],
                atk=["198.18.0.2"] if attack else (),
            )
        )
    r.note_policy(t0, '[[interface]]\nname = "xgp0"\n')
    r.close()
    log = tmp_path / "state" / "events.jsonl"
    log.parent.mkdir(parents=True)
    ev = {
        "id": "abc123def456",
        "iface": "xgp0",
        "protected": "198.18.0.2",
        "start": t0 + 20,
        "end": t0 + 42,
        "state": "closed",
        "peak_pps": 20_000,
        "peak_bps": 16e6,
        "peak_drop_pps": 19_900,
        "triggers": ["drop_pps"],
        "top_sources": [["198.18.0.5", 19_900]],
        "top_reasons": [["blocklist", 400_000]],
    }
    log.write_text(json.dumps(ev) + "\n")
    out = tmp_path / "r.html"
    png = tmp_path / "r.png"
    res = report.build(None, str(out), str(png), root=root)
    page = out.read_text()
    assert res.summary.peak_pps == 20_000 and res.summary.sources[0][0] == "198.18.0.5"
    assert res.summary.forwarded_pps_before == pytest.approx(100)
    assert "198.18.0.5" in page and "20,000" in page and "abc123def456" in page and "blocklist" in page
    assert page.count("data:image/png;base64,") == 2 and "name = &quot;xgp0&quot;" in page
    assert report._ts(t0 + 20) in page and report._ts(t0 + 42) in page
    w, h = _png_size(png.read_bytes())
    assert (w, h) == (1100, 900) and _png_not_blank(png.read_bytes())
    with pytest.raises(UserError, match="it exists"):
        report.build(None, str(out), root=root)
    with pytest.raises(UserError, match="no daemon history in"):
        report.build(None, str(tmp_path / "x.html"), root=tmp_path / "none")
    assert not (tmp_path / "x.html").exists()
    link = tmp_path / "link.html"
    os.symlink(tmp_path / "target.html", link)
    with pytest.raises(UserError, match="symbolic link"):
        report.build("abc1", str(link), overwrite=True, root=root)
    assert not (tmp_path / "target.html").exists()


def test_keeper_never_lets_a_history_failure_reach_detection(tmp_path, monkeypatch):
    said = []
    k = history.Keeper(report=said.append, policy_source=lambda name: None)

    def broken(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(history.Recorder, "add", broken)
    monkeypatch.setattr(history, "record_of", lambda snap, attacked, missed: rec(1, 1, 0))
    monkeypatch.setattr(history.state, "netns_state_dir", lambda: tmp_path)

    class Snap:
        samples_missed = 0

    k("xgp0", Snap(), [])
    k("xgp0", Snap(), [])
    assert said == ["history of xgp0: No space left on device"]  # said once, nothing raised
    k.close()
