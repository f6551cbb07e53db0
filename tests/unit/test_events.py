"""Attack detection with a fake clock: open on crossing, close after the hold time, peaks,
per-reason thresholds, the log's last-line-wins, the hook, config round trip."""

from __future__ import annotations

import json
import sys

import pytest

from xdpguard.core.observe import events
from xdpguard.core import state
from xdpguard.core.observe.events import Detector, EventConfig, Measure, Thresholds

ADDR = "198.18.0.2"


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def det(cfg: EventConfig, sink=None):
    clock = FakeClock()
    got: list[tuple[str, events.AttackEvent]] = []
    d = Detector("xgp0", cfg, sink=sink or (lambda p, e: got.append((p, e))), clock=clock, wall=lambda: clock.t + 1e9)
    return d, clock, got


def m(pps=0.0, drop=0.0, reasons=None, sources=None):
    return Measure(pps, pps * 8000, drop, drop * 8000, reasons or {}, sources or {}, {"udp/53": drop})


def test_opens_on_crossing_and_closes_after_hold():
    d, clock, got = det(EventConfig(Thresholds(drop_pps=1000), hold_s=5))
    assert d.update({ADDR: m(100, 10)}, 1) == []
    clock.t += 1
    [(phase, ev)] = d.update({ADDR: m(50_000, 49_000, {"blocklist": (49_000, 0)}, {"203.0.113.7": 49_000})}, 1)
    assert phase == "start" and ev.protected == ADDR and ev.triggers == ["drop_pps"] and ev.state == "open"
    clock.t += 1
    d.update({ADDR: m(90_000, 89_000, {"blocklist": (89_000, 0)}, {"203.0.113.7": 89_000})}, 1)
    for _ in range(4):  # below, but for less than the hold time
        clock.t += 1
        assert d.update({ADDR: m(100, 0)}, 1) == []
    clock.t += 1
    [(phase, ev)] = d.update({ADDR: m(100, 0)}, 1)
    assert phase == "end" and ev.state == "closed" and ev.end is not None and ev.end > ev.start
    assert ev.peak_pps == 90_000 and ev.peak_drop_pps == 89_000 and ev.peak_bps == 90_000 * 8000
    assert ev.top_reasons == [["blocklist", 138_000]]
    assert ev.top_sources == [["203.0.113.7", 89_000.0]] and ev.top_ports[0][0] == "udp/53"
    assert [p for p, _ in got] == ["start", "end"] and not d.active()


def test_going_back_above_during_hold_keeps_one_event():
    d, clock, got = det(EventConfig(Thresholds(pps=1000), hold_s=3))
    d.update({ADDR: m(5000)}, 1)
    for v in (0, 0, 5000, 0, 0):
        clock.t += 1
        d.update({ADDR: m(v)}, 1)
    assert [p for p, _ in got] == ["start"]
    clock.t += 1
    d.update({ADDR: m(0)}, 1)
    assert [p for p, _ in got] == ["start", "end"]


def test_per_reason_and_per_address_thresholds():
    cfg = EventConfig(Thresholds(), {ADDR: Thresholds(reasons={"port": (100, 0)})}, hold_s=0)
    d, clock, got = det(cfg)
    d.update(
        {ADDR: m(10_000, 10_000, {"blocklist": (10_000, 0)}), "198.18.0.3": m(10_000, 10_000, {"port": (500, 0)})}, 1
    )
    assert got == []  # the default is empty; ADDR only watches 'port'
    d.update({ADDR: m(200, 200, {"port": (200, 0)})}, 1)
    assert [(p, e.protected, e.triggers) for p, e in got] == [("start", ADDR, ["port pps"])]
    clock.t += 1
    d.update({}, 1)  # hold 0: closes at once
    assert got[-1][0] == "end"


def test_close_all_on_shutdown():
    d, clock, got = det(EventConfig(Thresholds(pps=1), hold_s=60))
    d.update({ADDR: m(10)}, 1)
    d.close_all()
    assert [p for p, _ in got] == ["start", "end"] and "controller stopped" in got[-1][1].triggers


def test_exceeded_labels():
    t = Thresholds(pps=10, bps=0, drop_pps=5, drop_bps=1, reasons={"syn": (1, 1)})
    assert events.exceeded(t, Measure(11, 100, 6, 2, {"syn": (2, 2)})) == [
        "pps",
        "drop_pps",
        "drop_bps",
        "syn pps",
        "syn bps",
    ]
    assert events.exceeded(t, Measure(10, 100, 5, 1, {"syn": (1, 1)})) == []


def test_config_round_trip_and_parse_rate():
    cfg = EventConfig(
        Thresholds(1e6, 2e9, 1000, 0, {"blocklist": (5.0, 0.0)}), {ADDR: Thresholds(pps=10)}, 7, "logger -t x"
    )
    assert EventConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    assert EventConfig.from_json(None) == EventConfig()
    assert (events.parse_rate("10k", "x"), events.parse_rate("1.5M", "x"), events.parse_rate("2G", "x")) == (
        1e4,
        1.5e6,
        2e9,
    )
    with pytest.raises(events.UserError):
        events.parse_rate("fast", "--pps")


def test_log_last_line_wins_and_torn_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("XDPGUARD_STATE_DIR", str(tmp_path))
    ev = events.AttackEvent("e1", "xgp0", ADDR, 100.0)
    events.append_log(ev)
    ev.end, ev.state, ev.peak_pps = 110.0, "closed", 5.0
    events.append_log(ev)
    events.append_log(events.AttackEvent("e2", "other0", ADDR, 200.0))
    with open(events.log_path(), "a") as f:
        f.write('{"id": "torn"')
    got = events.read_log()
    assert [(d["id"], d["state"]) for d in got] == [("e1", "closed"), ("e2", "open")]
    assert got[0]["duration_s"] == 10.0
    assert [d["id"] for d in events.read_log(iface="other0")] == ["e2"]


def test_hook_gets_the_event_on_stdin(tmp_path):
    out = tmp_path / "hook.out"
    code = f"import os,sys; open({str(out)!r},'a').write(os.environ['XDPGUARD_EVENT_PHASE'] + ' ' + sys.stdin.read() + chr(10))"
    hook = events.HookRunner(f'{sys.executable} -c "{code}"')
    ev = events.AttackEvent("e1", "xgp0", ADDR, 100.0)
    hook("start", ev)
    hook.reap(wait=True)
    phase, payload = out.read_text().strip().split(" ", 1)
    assert phase == "start" and json.loads(payload)["id"] == "e1" and json.loads(payload)["phase"] == "start"


def test_measures_from_snapshot_single_and_shared():
    from render_fixtures import attack_snapshot  # tests/unit is on sys.path

    snap = attack_snapshot()
    ms = events.measures_from_snapshot(snap)
    assert set(ms) == set(snap.protected)
    from dataclasses import replace

    one = replace(snap, protected=[ADDR])
    m1 = events.measures_from_snapshot(one)[ADDR]
    assert m1.drop_pps == 100_000 and m1.pps == 100_240 and m1.reasons["blocklist"][0] == 90_000
    shared = replace(snap, dst_shares={ADDR: 0.75, "2001:db8:0:1::2": 0.25})
    ms = events.measures_from_snapshot(shared)
    assert ms[ADDR].drop_pps == 75_000 and ms["2001:db8:0:1::2"].drop_pps == 25_000


V6 = "2001:db8:0:1::2"


def test_unsampled_interval_gives_an_idle_address_nothing():
    """An IPv4-only flood with an IPv6 address also protected: an interval without samples must
    not hand the whole interface's rate to the IPv6 address (it received nothing)."""
    from dataclasses import replace

    from render_fixtures import attack_snapshot

    snap = replace(attack_snapshot(), dst_shares={})  # no samples this interval
    ms = events.measures_from_snapshot(snap)
    assert ms[V6] == Measure() and ms[ADDR] == Measure()  # no evidence: no attribution
    att = events.Attribution()
    sampled = replace(snap, dst_shares={ADDR: 1.0})
    assert att(sampled)[ADDR].drop_pps == 100_000 and att(sampled)[V6].drop_pps == 0
    ms = att(snap)  # the next interval has no samples: the last sampled split holds
    assert ms[ADDR].drop_pps == 100_000 and ms[V6] == Measure()
    assert all(":" not in s for s in ms[ADDR].sources)  # v4 address: only v4 sources


def test_attack_active_only_for_the_attacked_address():
    """DetectionLoop.active() is what xdpguard_attack_active exports: over sampled and
    unsampled intervals of a v4-only flood it never names the v6 address."""
    from dataclasses import replace

    from render_fixtures import attack_snapshot

    base = attack_snapshot()
    d, clock, got = det(EventConfig(Thresholds(drop_pps=1000), hold_s=30))
    att = events.Attribution()
    for shares in ({ADDR: 1.0}, {}, {}, {ADDR: 1.0}, {}):
        d.update(att(replace(base, dst_shares=shares)), 1)
        clock.t += 1
    assert [(p, e.protected) for p, e in got] == [("start", ADDR)]
    loop = events.DetectionLoop()
    loop.detectors["xgp0"] = d
    assert loop.active() == {("xgp0", ADDR): True}


def test_forgetting_a_namespace_drops_its_log_lines_only(tmp_path, monkeypatch):
    """The lab deletes its namespaces with their state (state.forget_netns): their lines in the
    shared event log go too (and a torn last line); other namespaces' lines stay, in order."""
    monkeypatch.setenv("XDPGUARD_STATE_DIR", str(tmp_path))
    log = state.events_log_path()
    for i, ns in enumerate(["net-1", "net-2", "net-1", "net-3"]):
        state.append_log_line(log, {"id": f"e{i}", "netns": ns})
    with open(log, "a") as f:
        f.write('{"id": "torn"')
    assert state.drop_log_lines(log, "net-1") == 2
    assert [json.loads(ln)["id"] for ln in log.read_text().splitlines()] == ["e1", "e3"]
    assert state.drop_log_lines(log, "net-1") == 0
    state.forget_netns("net-2")
    assert [ln for ln in log.read_text().splitlines() if '"e1"' in ln] == []
    state.append_log_line(log, {"id": "e9", "netns": "net-3"})  # appending after a compaction
    assert log.read_text().splitlines()[-1] == '{"id": "e9", "netns": "net-3"}'
