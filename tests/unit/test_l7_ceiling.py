"""The service ceiling that follows each domain's peacetime (xdpguard/core/l7/ceiling.py)."""

from __future__ import annotations

from xdpguard.core.l7 import ceiling
from xdpguard.core.l7 import haproxy_config as hc
from xdpguard.core.l7.spec import HttpService


def _svc(**kw) -> HttpService:
    return HttpService(**{"name": "web", "listen": ["198.18.0.1"], "backends": ["198.18.1.2:80"], **kw})


def test_the_level_number_until_a_baseline_then_four_times_the_peak_within_bounds():
    c = ceiling.Ceilings()
    t = 1000.0
    for i in range(0, 600, 1):  # 10 min of peacetime at 2-5 unverified requests/s
        c.learn("web", "web", 2 + i % 4, False, t + i)
        if i < ceiling.WARMUP_S:
            assert c.ceiling("web", "web", 50, t + i) == 50  # the floor before any baseline
    assert c.ceiling("web", "web", 50, t + 600) == 20  # 4 × the peak of 5
    # a quiet domain is never below MIN_PER_S; a busy one never above 4 × the level's number
    # (a reading is learned at the next one, when that is not in a surge either)
    q = ceiling.Ceilings(warmup_s=1)
    q.learn("web", "a", 0, False, t)
    assert q.ceiling("web", "a", 50, t + 1) == ceiling.MIN_PER_S
    q.learn("web", "b", 500, False, t)
    q.learn("web", "b", 0, False, t + 0.5)
    assert q.ceiling("web", "b", 50, t + 1) == ceiling.MAX_OF_LEVEL * 50
    # the peak holds PEAK_HOLD_S, then halves every PEAK_HALF_LIFE_S
    q.learn("web", "c", 40, False, t)
    q.learn("web", "c", 0, False, t + 0.5)
    assert q.ceiling("web", "c", 50, t + ceiling.PEAK_HOLD_S) == 160
    assert q.ceiling("web", "c", 50, t + ceiling.PEAK_HOLD_S + ceiling.PEAK_HALF_LIFE_S) == 80


def test_once_in_force_the_peak_rises_slowly():
    """Bots that ramp up under the ceiling: a reading of 40/s half a second after a peak of 5
    lifts the peak by a hair, not to 40; it at most doubles every DOUBLE_S."""
    c = ceiling.Ceilings(warmup_s=10)
    c.learn("web", "web", 5, False, 0.0)
    c.learn("web", "web", 5, False, 10.0)
    c.learn("web", "web", 40, False, 10.5)  # in force from here
    c.learn("web", "web", 40, False, 11.0)
    assert c.ceiling("web", "web", 50, 11.0) == 21  # ceil(4 × 5.0005)
    for i in range(1, 7201):  # an hour of 40/s, a reading every 0.5 s
        c.learn("web", "web", 40, False, 11.0 + i * 0.5)
    assert 38 <= c.ceiling("web", "web", 50, 3611.0) <= 42  # 5 → ~10 in an hour: 4 × ~10


def test_readings_in_a_surge_are_not_learned():
    c = ceiling.Ceilings(warmup_s=1)
    c.learn("web", "web", 5, False, 0.0)
    c.learn("web", "web", 5, False, 0.5)
    c.learn("web", "web", 30, False, 0.9)  # the flood's first fraction of a second, before it crossed
    c.learn("web", "web", 600, True, 1.0)  # the flood, in surge: neither is learned
    c.learn("web", "web", 5, False, 40.0)
    assert c.ceiling("web", "web", 50, 40.0) == 20


def test_a_tick_reads_the_table_and_gives_the_map_entries_that_differ_from_the_level():
    svc = _svc(domains=["example.com"], exempt=["/api/"])
    table = (
        "# table: web_svc, type: string, size:1024, used:3\n"
        "0x1: key=example.com use=0 exp=59000 shard=0 gpt0=0 gpt1=0 http_req_rate(1000)=3\n"
        "0x2: key=example.com|x use=0 exp=59000 shard=0 gpt0=0 gpt1=0 http_req_rate(1000)=90\n"
        "0x3: key=web use=0 exp=59000 shard=0 gpt0=1796614999 gpt1=0 http_req_rate(1000)=700\n"
    )
    rates = ceiling.service_rates(table)
    assert rates == {"example.com": (3, 0), "example.com|x": (90, 0), "web": (700, 1796614999)}
    c = ceiling.Ceilings(warmup_s=1)
    assert c.tick(svc, rates, now=1796614000.0) == {}  # no baseline yet: the level's number (no entry)
    c.tick(svc, rates, now=1796614000.5)
    want = c.tick(svc, rates, now=1796614001.0)
    # example.com: 4 × 3 → 12; the exempt paths' entry is not learned; 'web' is in surge: not learned
    assert want == {hc.ceiling_key(svc, "example.com"): 12}
    # a domain without an entry (no unverified request for a minute) reads 0/s: the quietest ceiling
    quiet = ceiling.Ceilings(warmup_s=0)
    assert quiet.tick(_svc(), {}, now=1.0) == {hc.ceiling_key(_svc(), "web"): ceiling.MIN_PER_S}
    svc2 = _svc(domains=["example.com", "*.example.org"])
    assert set(ceiling.Ceilings(warmup_s=0).tick(svc2, {}, now=1.0)) == {"web|example.com", "web|*.example.org"}
    # an operator's own service_rate is kept as it is
    assert ceiling.Ceilings(warmup_s=0).tick(_svc(service_rate=80), rates, now=1796614000.0) == {}


def test_the_map_is_found_read_and_changed_with_the_fewest_commands():
    listing = (
        "# id (file) description\n"
        "1 (/run/xdpguard/l7/geo.map) pattern loaded from file '/run/xdpguard/l7/geo.map' used by map at file "
        "'/run/xdpguard/l7/haproxy.cfg' line 60. curr_ver=0 next_ver=0 entry_cnt=3\n"
        "2 (/run/xdpguard/l7/ceiling.map) pattern loaded from file '/run/xdpguard/l7/ceiling.map' used by map "
        "at file '/run/xdpguard/l7/haproxy.cfg' line 70. curr_ver=0 next_ver=0 entry_cnt=2\n"
    )
    assert ceiling.map_id(listing) == "#2"
    assert ceiling.map_id(listing.replace("ceiling.map", "other.map")) is None
    have = ceiling.map_entries("0x55e0: web|a 12\n0x55e1: web|b 40\n")
    assert have == {"web|a": 12, "web|b": 40}
    assert ceiling.changes(have, {"web|b": 16, "web|c": 10}) == [
        "del map {id} web|a",
        "set map {id} web|b 16",
        "add map {id} web|c 10",
    ]
    assert ceiling.changes(have, have) == []


def test_the_daemon_says_a_ceiling_once_per_change_not_after_every_haproxy_restart(monkeypatch):
    """HAProxy's restart empties its ceiling map and the daemon writes the learned ceiling again:
    a repair, not news. The line is said when a domain's ceiling changes (and when it goes back
    to the level's number), once."""
    from xdpguard.core.l7 import bans, runtime

    svc = _svc(domains=["example.com"])
    rate = {"now": 3}
    haproxy = {"map": {}}  # the ceiling map as HAProxy holds it

    def command(sock, cmd):
        if cmd.startswith("show table"):
            return f"# table: web_svc\n0x1: key=example.com use=0 exp=59000 gpt0=0 http_req_rate(1000)={rate['now']}\n"
        if cmd == "show map":
            return "2 (/run/xdpguard/l7/ceiling.map) pattern loaded from file\n"
        if cmd.startswith("show map #2"):
            return "".join(f"0x1: {k} {v}\n" for k, v in haproxy["map"].items())
        verb, _, _, key, *value = cmd.split()
        if verb == "del":
            haproxy["map"].pop(key)
        else:
            haproxy["map"][key] = int(value[0])
        return ""

    monkeypatch.setattr(runtime, "command", command)
    said: list[str] = []
    w = bans.Watch(said.append)
    w.ceilings = ceiling.Ceilings(warmup_s=1)
    t = 1000.0
    for i in range(4):
        w.learn_ceilings("sock", [svc], now=t + i)
    assert haproxy["map"] == {"web|example.com": 12}
    assert len(said) == 1 and "example.com 12/s" in said[0]
    for restart in range(3):  # HAProxy restarts: the map is empty again, and written again
        haproxy["map"] = {}
        w.learn_ceilings("sock", [svc], now=t + 10 + restart)
        assert haproxy["map"] == {"web|example.com": 12}
    assert len(said) == 1, said
    rate["now"] = 5  # a new peak an hour on (the learned peak rises at most ×2 an hour): said once
    for i in range(3):
        w.learn_ceilings("sock", [svc], now=t + ceiling.DOUBLE_S + i)
    assert haproxy["map"] == {"web|example.com": 20}
    # (the hour's decay of the old peak, 12 → 10/s, is a change too: said once, at the first tick)
    assert said[1:] == [
        "web: service ceiling from peacetime: example.com 10/s (level normal: 50/s)",
        "web: service ceiling from peacetime: example.com 20/s (level normal: 50/s)",
    ], said
    svc_op = _svc(domains=["example.com"], service_rate=80)  # the operator sets it: back to the level's
    w.learn_ceilings("sock", [svc_op], now=t + ceiling.DOUBLE_S + 10)
    w.learn_ceilings("sock", [svc_op], now=t + ceiling.DOUBLE_S + 11)
    assert haproxy["map"] == {}
    assert said[3:] == ["web: service ceiling back to the level's: example.com (level normal: 80/s)"], said


def test_unrest_is_above_the_peacetime_peak_the_ceiling_was_learned_from():
    """HAProxy calls a domain in unrest above 1/UNREST_OF_CEILING of its ceiling: with a learned
    ceiling (FACTOR × the peacetime peak) that is its peacetime peak."""
    from xdpguard.core.l7 import spec

    assert spec.UNREST_OF_CEILING == ceiling.FACTOR
