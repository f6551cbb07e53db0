"""The runtime API client (l7/runtime.py) on HAProxy 2.6's real answers, and the process owner's
first rule (l7/proc.py): a configuration HAProxy refuses is never installed."""

from __future__ import annotations

import ipaddress
import shutil

import pytest

from xdpguard.core.l7 import bans
from xdpguard.core.l7 import haproxy_config as hc
from xdpguard.core.l7 import runtime, spec
from xdpguard.core.l7.proc import Haproxy, HaproxyConfigError, load_secret
from xdpguard.core.l7.spec import HttpService, RateLimit

# captured from HAProxy 2.6.12 (Debian 12) in the lab
SRC = """# table: web_src, type: ipv6, size:102400, used:3
0x55ab7a208198: key=::ffff:198.18.0.10 use=0 exp=59818 conn_rate(10000)=22 conn_cur=0 http_req_rate(10000)=22 gpt0=0 gpt1=0
0x55ab7a208358: key=::ffff:198.18.0.66 use=64 exp=59999 conn_rate(10000)=80 conn_cur=64 http_req_rate(10000)=9000 gpt0=1796614414 gpt1=2
0x55ab7a208400: key=2001:db8::66 use=0 exp=1000 conn_rate(10000)=300 conn_cur=2 http_req_rate(10000)=3 gpt0=1796614000 gpt1=1

"""
L0 = """# table: web_l0, type: ipv6, size:102400, used:1
0x55ab7a208270: key=::ffff:198.18.0.66 use=0 exp=59982 http_req_rate(10000)=6

"""
STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,"
    "weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,"
    "rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,"
    "hrsp_other,hanafail,req_rate,req_rate_max,req_tot,\n"
    "web_fe,FRONTEND,,,3,70,4096,91234,1,2,88000,0,0,,,,,OPEN,,,,,,,,,1,3,0,,,,0,10,0,900,,,,0,1200,5,90000,0,"
    ",,,,91205,\n"
    "web_be,s0,0,0,1,9,,1200,1,2,,0,,0,0,0,0,UP,1,1,0,0,0,99,0,,1,4,1,,1200,,2,5,,80,L7OK,200,1,0,1200,0,0,0,"
    ",,,,,\n"
)


def _svc(**kw) -> HttpService:
    return HttpService(**{"name": "web", "listen": ["198.18.0.1"], "backends": ["198.18.1.2:80"], **kw})


def test_show_table_is_parsed_into_typed_entries():
    t = runtime.parse_show_table(SRC)
    assert (t.name, t.type, t.size, t.used) == ("web_src", "ipv6", 102400, 3)
    addrs = [e.address for e in t.entries]
    assert addrs == [
        ipaddress.ip_address("198.18.0.10"),
        ipaddress.ip_address("198.18.0.66"),
        ipaddress.ip_address("2001:db8::66"),
    ]
    atk = t.entries[1]
    assert atk.get("http_req_rate") == 9000 and atk.get("conn_cur") == 64 and atk.get("gpt1") == 2
    assert atk.data["http_req_rate(10000)"] == 9000 and atk.expire_ms == 59999
    assert atk.get("gpc0") == 0  # not stored: default


def test_an_error_answer_is_an_error():
    with pytest.raises(runtime.RuntimeApiError, match="Unknown table"):
        runtime.parse_show_table("Unknown table name 'nope'.\n")
    with pytest.raises(runtime.RuntimeApiError):
        runtime.parse_show_stat("Unknown command.\n")


def test_offenders_name_what_each_source_exceeded():
    svc = _svc(limits=[RateLimit("/api/", 5, action="tarpit")])
    tables = {"web_src": runtime.parse_show_table(SRC), "web_l0": runtime.parse_show_table(L0)}
    now = 1796614000 - 10
    got = {(str(o.address), o.kind): o for o in runtime.service_offenders(tables, svc, now=now)}
    assert set(got) == {
        ("198.18.0.66", "punished"),
        ("198.18.0.66", "requests"),
        ("198.18.0.66", "prefix"),
        ("2001:db8::66", "punished"),
        ("2001:db8::66", "new_conns"),
    }
    p = got[("198.18.0.66", "punished")]
    assert p.action == "drop" and p.until == 1796614414 and p.value == 1796614414 - now
    assert got[("198.18.0.66", "requests")].limit == 300 and got[("198.18.0.66", "requests")].value == 9000
    assert (
        got[("198.18.0.66", "prefix")].action == "tarpit" and got[("198.18.0.66", "prefix")].detail == "/api/ per 10 s"
    )
    assert got[("2001:db8::66", "new_conns")].limit == 250
    # the client (22 requests, no punishment) is no offender; a punishment in the past is none either
    later = {(str(o.address), o.kind) for o in runtime.service_offenders(tables, svc, now=1796614414 + 1)}
    assert ("198.18.0.66", "punished") not in later and not any(a == "198.18.0.10" for a, _ in later)
    # a stricter level is stricter about the same numbers
    strict = {(str(o.address), o.kind) for o in runtime.service_offenders(tables, _svc(level="emergency"), now=now)}
    assert ("2001:db8::66", "new_conns") in strict and ("198.18.0.66", "concurrent") in strict


def test_show_stat_rows():
    rows = runtime.parse_show_stat(STAT)
    fe = rows[0]
    assert (fe.proxy, fe.name, fe.status, fe.sessions_cur, fe.denied_requests, fe.http_4xx, fe.requests_total) == (
        "web_fe",
        "FRONTEND",
        "OPEN",
        3,
        88000,
        90000,
        91205,
    )
    assert rows[1].status == "UP" and rows[1].http_2xx == 1200


def test_one_command_per_connection():
    with pytest.raises(ValueError):
        runtime.command("/nonexistent.sock", "show table a; clear table a")
    with pytest.raises(runtime.RuntimeApiError, match="/nonexistent.sock"):
        runtime.command("/nonexistent.sock", "show info")


@pytest.mark.skipif(
    shutil.which("haproxy") is None and not shutil.os.path.exists("/usr/sbin/haproxy"),
    reason="haproxy is not installed",
)
def test_a_refused_configuration_is_never_installed(tmp_path):
    h = Haproxy(tmp_path / "run")
    good = hc.render([_svc()], run_dir=str(h.run_dir), secret=b"s" * 32)
    bad = hc.Rendered(good.text.replace("http_req_rate(10s)", "http_req_rate(ten seconds)"), good.files)
    with pytest.raises(HaproxyConfigError, match="HAProxy refused the generated configuration: .*"):
        h.apply(bad)
    assert not h.config.exists() and not (h.run_dir / "staging").exists()
    h.check(good)  # the good one passes the same check


def test_the_secret_is_made_once_and_kept(tmp_path):
    a = load_secret(tmp_path / "l7" / "secret")
    assert len(a) == 32 and load_secret(tmp_path / "l7" / "secret") == a
    assert (tmp_path / "l7" / "secret").stat().st_mode & 0o777 == 0o600


# a source the service ceiling challenged 40 times in 10 s without passing (HAProxy 2.6.12 prints
# the gpc array's first counter as gpc0 / gpc0_rate), a browser challenged once, and a source
# challenged 40 times that holds a valid cookie now (one user behind its address passed)
CHALLENGED = """# table: web_src, type: ipv6, size:102400, used:3
0x1: key=::ffff:198.18.16.1 use=0 exp=59241 conn_cur=0 http_req_rate(10000)=40 gpt0=0 gpt1=0 gpt2=0 gpc0=40 gpc0_rate(10000)=40
0x2: key=::ffff:198.18.0.10 use=0 exp=59241 conn_cur=0 http_req_rate(10000)=30 gpt0=0 gpt1=0 gpt2=1796614999 gpc0=1 gpc0_rate(10000)=1
0x3: key=::ffff:198.18.16.2 use=0 exp=59241 conn_cur=0 http_req_rate(10000)=40 gpt0=0 gpt1=0 gpt2=1796614999 gpc0=40 gpc0_rate(10000)=40

"""


def test_a_source_that_fails_every_challenge_is_an_offender():
    tables = {"web_src": runtime.parse_show_table(CHALLENGED)}
    got = [
        (str(o.address), o.kind, o.value, o.verified) for o in runtime.service_offenders(tables, _svc(), now=1796614000)
    ]
    assert got == [("198.18.16.1", "challenged", 40, False)]
    # twice without passing is not yet a bot (a browser passes its first challenge; a second may
    # be in flight before it has the cookie)
    assert (
        runtime.service_offenders(
            {"web_src": runtime.parse_show_table(CHALLENGED.replace("=40", "=2"))}, _svc(), now=1796614000
        )
        == []
    )


def test_a_slow_source_that_never_passes_is_a_bot_whatever_its_rate():
    """Issue 29, 1,000 addresses: each bot sends ~1 request per 2 s, far under 8 challenges per
    10 s, and gets a 302 every time. CHALLENGES_UNPASSED challenges in its entry's life (gpc0,
    cumulative) without a valid cookie make it an offender; the same count on a source that
    holds a valid cookie (it passed) does not."""
    slow = CHALLENGED.replace("gpc0=40 gpc0_rate(10000)=40", "gpc0=3 gpc0_rate(10000)=1")
    got = [
        (str(o.address), o.kind, o.value, o.limit, o.verified)
        for o in runtime.service_offenders({"web_src": runtime.parse_show_table(slow)}, _svc(), now=1796614000)
    ]
    assert got == [("198.18.16.1", "challenged", 3, spec.CHALLENGES_UNPASSED, False)]
    assert spec.CHALLENGES_UNPASSED == 3
    # banned as any challenged offender (the verified one is not even an offender)
    b = bans.select(
        runtime.service_offenders({"web_src": runtime.parse_show_table(slow)}, _svc(), now=1796614000),
        [_svc()],
        now=1796614000,
    )
    assert [(x.address, x.kind) for x in b] == [("198.18.16.1", "challenged")]
    # a source challenged once and gone: not an offender
    once = CHALLENGED.replace("gpc0=40 gpc0_rate(10000)=40", "gpc0=1 gpc0_rate(10000)=0")
    assert runtime.service_offenders({"web_src": runtime.parse_show_table(once)}, _svc(), now=1796614000) == []


def test_a_source_refused_on_the_exempt_path_in_its_surge_is_banned():
    """An exempt (API) path cannot challenge: in its surge a source not seen before it gets 429,
    each counted in gpc 2 (HAProxy prints the array's third counter as gpc2). Refused
    CHALLENGES_UNPASSED times and still coming: an offender (`refused`), banned; twice is not;
    a source holding a valid cookie never is."""
    refused = CHALLENGED.replace("gpc0=40 gpc0_rate(10000)=40", "gpc0=0 gpc0_rate(10000)=0 gpc1=0 gpc2=3")
    offenders = runtime.service_offenders({"web_src": runtime.parse_show_table(refused)}, _svc(), now=1796614000)
    assert [(str(o.address), o.kind, o.value, o.limit, o.verified) for o in offenders] == [
        ("198.18.16.1", "refused", 3, spec.CHALLENGES_UNPASSED, False),
    ]  # 198.18.16.2 holds a valid cookie: not even an offender
    b = bans.select(offenders, [_svc()], now=1796614000)
    assert [(x.address, x.kind) for x in b] == [("198.18.16.1", "refused")]
    twice = refused.replace("gpc2=3", "gpc2=2")
    assert runtime.service_offenders({"web_src": runtime.parse_show_table(twice)}, _svc(), now=1796614000) == []


def test_challenge_passing_sources_are_read_with_their_cookie_expiry():
    """What the daemon writes into XDP's verified map (l7/bans.py → Guard.verify_challenged):
    the sources whose gpt 2 (the cookie's expiry) is in the future, each for what it has left;
    a cookie that expired, or none, is not a verification."""
    tables = {"web_src": runtime.parse_show_table(CHALLENGED)}
    got = runtime.service_verified(tables, _svc(), now=1796614000)
    assert {str(a): t for a, t in got.items()} == {"198.18.0.10": 1796614999, "198.18.16.2": 1796614999}
    assert runtime.service_verified(tables, _svc(), now=1796614999) == {}  # expired: not verified
    verified = {a: ("web", t) for a, t in got.items()}
    assert bans.passed(verified, now=1796614000.0) == [("198.18.0.10", 999.0), ("198.18.16.2", 999.0)]
    assert bans.passed(verified, now=1796615000.0) == []


# `show peers` of HAProxy 2.6.12 (Debian 12) in the lab: a fresh worker (resync not finished,
# it would hand nothing over on a reload) and, 5 s later, the same one finished
PEERS_FRESH = """0x5643577c8be0: [07/Dec/2026:22:56:52] id=xg_peers disabled=0 flags=0x11 resync_timeout=3s task_calls=2
  0x5643577c8d50: id=local(local,inactive) addr=unix@/run/x/peers.sock last_status=NONE last_hdshk=<NEVER>
        reconnect=<NEVER> heartbeat=<NEVER> confirm=0 tx_hbt=0 rx_hbt=0 no_hbt=0 new_conn=0 proto_err=0 coll=0
        flags=0x0
        shared tables:
          0x5643579148a0 local_id=1 remote_id=0 flags=0x0 remote_data=0x0
              last_acked=0 last_pushed=0 last_get=0 teaching_origin=0 update=0
              table:0x5643577d0f10 id=web_src update=0 localupdate=0 commitupdate=0 refcnt=1
        Dictionary cache not dumped (use "show peers dict")

"""


def test_show_peers_says_whether_the_resync_is_finished():
    assert runtime.parse_show_peers(PEERS_FRESH) == {"xg_peers": False}
    assert runtime.parse_show_peers(PEERS_FRESH.replace("flags=0x11 ", "flags=0x33 ", 1)) == {"xg_peers": True}
    # taught by the old worker on a reload: LOCAL|REMOTE plus LOCALFINISHED (0x100)
    assert runtime.parse_show_peers(PEERS_FRESH.replace("flags=0x11 ", "flags=0x103 ", 1)) == {"xg_peers": True}
    assert runtime.parse_show_peers("") == {}  # no peers section: nothing to wait for
