"""Automatic CC mode (l7/auto.py): the level follows the backend's health, one step at a time,
never below the operator's level, never on a single slow reading; and the reading is taken from
HAProxy's real `show stat` rows."""

from __future__ import annotations

from xdpguard.core.l7 import auto, runtime
from xdpguard.core.l7.auto import AutoLevel, Reading
from xdpguard.core.l7.spec import HttpService


def ok(ms: int = 20, answers: int = 0, errors: int = 0, up: bool = True) -> Reading:
    return Reading(ms, answers, errors, up)


def run(a: AutoLevel, readings, start: float = 0.0, every: float = 1.0, level: str = "normal"):
    out = []
    for i, r in enumerate(readings):
        lv, step = a.step("web", level, r, start + i * every)
        out.append((lv, step))
    return out


def test_quiet_backend_keeps_the_operators_level_and_learns_its_baseline():
    a = AutoLevel()
    got = run(a, [ok(20 + i % 3) for i in range(30)])
    assert {lv for lv, _ in got} == {"normal"} and not any(s for _, s in got)
    assert 19 <= a.states["web"].baseline_ms <= 23


def test_slow_backend_raises_one_step_after_a_while_and_lowers_when_quiet():
    a = AutoLevel(calm_s=10)
    run(a, [ok(20)] * 10)
    # one slow reading is no trouble yet; slow for RAISE_AFTER_S is
    got = run(a, [ok(900)] * 7, start=10)
    levels = [lv for lv, _ in got]
    assert levels[:5] == ["normal"] * 5 and levels[5] == "strict", levels
    step = got[5][1]
    assert (step.old, step.new) == ("normal", "strict") and "response time 900 ms" in step.why
    # still in trouble: the next step needs another RAISE_AFTER_S, up to emergency and no further
    got = run(a, [ok(900)] * 20, start=17)
    assert [lv for lv, _ in got][:4] == ["strict", "strict", "strict", "emergency"]  # raised at 15, again at 20
    assert got[-1][0] == "emergency"
    assert sum(1 for _, s in got if s) == 1
    # the baseline did not learn the slow readings
    assert a.states["web"].baseline_ms < 30
    # quiet: one step down per calm_s, not below the operator's level
    got = run(a, [ok(20)] * 40, start=40)
    steps = [(s.old, s.new) for _, s in got if s]
    assert steps == [("emergency", "strict"), ("strict", "normal")], steps
    assert got[-1][0] == "normal"


def test_a_slowly_building_queue_does_not_drag_the_baseline_up():
    a = AutoLevel()
    run(a, [ok(10)] * 10)
    got = run(a, [ok(int(10 * 1.25**i)) for i in range(30)], start=10)  # +25 % a second
    assert got[-1][0] != "normal" and a.states["web"].baseline_ms < 25, a.states["web"]


def test_5xx_and_a_dead_backend_are_trouble():
    a = AutoLevel()
    run(a, [ok(20, answers=100 * i, errors=0) for i in range(5)])
    got = run(a, [ok(20, answers=500 + 100 * i, errors=50 * i) for i in range(1, 8)], start=5)
    assert got[-1][0] == "strict" and "answers 5xx" in next(s for _, s in got if s).why
    b = AutoLevel()
    got = run(b, [ok(20)] * 3 + [ok(0, up=False)] * 7)
    assert got[-1][0] == "strict" and next(s for _, s in got if s).why == "no server up"
    # few answers: a handful of errors is not a share
    c = AutoLevel()
    got = run(c, [ok(20, answers=i * 5, errors=i * 4) for i in range(20)])
    assert got[-1][0] == "normal"


def test_never_below_the_operators_level():
    a = AutoLevel(calm_s=1)
    got = run(a, [ok(20)] * 5, level="strict")
    assert {lv for lv, _ in got} == {"strict"}
    # the operator raises the level while it is raised automatically: the operator's wins
    a.states["web"].level = "normal"
    lv, _ = a.step("web", "emergency", ok(20), 100)
    assert lv == "emergency"


STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,"
    "weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,"
    "rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,"
    "hrsp_other,hanafail,req_rate,req_rate_max,req_tot,\n"
    "web_be,s0,0,0,1,9,,1200,1,2,,0,,0,0,0,0,UP,1,1,0,0,0,99,0,,1,4,1,,1200,,2,5,,80,L7OK,200,37,0,1100,0,50,"
    "50,,,,,,\n"
    "web_be,s1,0,0,1,9,,1200,1,2,,0,,0,0,0,0,DOWN,1,1,0,0,0,99,0,,1,4,2,,1200,,2,5,,80,L4TOUT,,2001,0,0,0,0,0,"
    ",,,,,\n"
    "web_be,BACKEND,0,0,1,9,,1200,1,2,,0,,0,0,0,0,UP,1,1,0,0,0,99,0,,1,4,0,,1200,,1,5,,80,,,,0,1100,0,50,50,"
    ",,,,,\n"
)


def test_reading_from_show_stat():
    svc = HttpService("web", listen=["198.18.0.1"], backends=["198.18.1.2:80", "198.18.1.3:80"])
    r = auto.reading(runtime.parse_show_stat(STAT), svc)
    # the down server's timed-out check is not a response time; the answers are the backend's
    assert r == Reading(37, 1200, 50, True)
    assert (
        auto.reading(
            runtime.parse_show_stat(STAT), HttpService("other", listen=["198.18.0.1"], backends=["198.18.1.2:80"])
        )
        is None
    )


def test_the_daemons_watch_serves_the_raised_level_and_logs_each_step(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from xdpguard.core.observe import events
    from xdpguard.core.l7 import bans, engine

    svc = HttpService("web", listen=["198.18.0.1"], backends=["198.18.1.2:80"])
    ifaces = [SimpleNamespace(name="xgp0", addresses=[SimpleNamespace(http=[svc])])]
    slow = {"ms": 20}
    served: list[list[str]] = []
    monkeypatch.setattr(
        engine,
        "stats",
        lambda: [
            runtime.StatRow("web_be", "s0", "UP", 0, 0, 0, 0, 0, 0, 0, check_ms=slow["ms"]),
            runtime.StatRow("web_be", "BACKEND", "UP", 0, 0, 0, 0, 0, 0, 0),
        ],
    )
    monkeypatch.setattr(engine, "realise", lambda services: served.append([s.level for s in services]) or "reloaded")
    logged: list[dict] = []
    monkeypatch.setattr(events, "append_record", lambda rec, path=None: logged.append(rec))
    said: list[str] = []
    w = bans.Watch(said.append, levels=AutoLevel(calm_s=5))
    for t in range(10):
        assert w.auto_levels(ifaces, [svc], now=float(t)) == []
    assert served == []  # nothing raised, nothing rendered
    slow["ms"] = 2000
    steps = [w.auto_levels(ifaces, [svc], now=float(t)) for t in range(10, 17)]
    assert [len(x) for x in steps] == [0, 0, 0, 0, 0, 1, 0]
    assert served[0] == ["strict"] and len(served) == 2  # raised, then kept rendered while raised
    assert w.raised == {"web": "strict"}
    assert logged[0]["type"] == "cc_level" and (logged[0]["old"], logged[0]["new"]) == ("normal", "strict")
    assert logged[0]["iface"] == "xgp0" and "automatic CC mode: web normal → strict" in said[0]
    slow["ms"] = 20
    for t in range(17, 30):
        w.auto_levels(ifaces, [svc], now=float(t))
    assert served[-1] == ["normal"] and w.raised == {} and logged[-1]["new"] == "normal"
