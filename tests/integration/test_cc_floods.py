"""CC floods from many real addresses (issue 29): scripts/l7flood.py binds each connection to one
of 128 or 1,000 addresses on the attacker (lab/l7.add_sources), every source stays under its
per-source limits, and the service ceiling (unverified requests per second of the service) turns
the challenge on for everyone unverified. Measured in one run, side by side: the browser-like
web client (a new connection per request, a cookie jar) alone, under the flood with xdpguard's
HAProxy, and under the same flood with a plain HAProxy in front of the same small backend.

Every generator is bounded (--duration, --rate, --max-requests; the client's --duration)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from test_l7_haproxy import URL, Setup, _service
from xdpguard.core.l7 import auto, ceiling
from xdpguard.core.l7 import haproxy_config as hc
from xdpguard.core.l7 import runtime
from xdpguard.lab import flood as flood_cmd
from xdpguard.lab import l7 as L

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing


def flood(s: Setup, count: int, seconds: float, *extra: str, rate: int = 600, conns: int = 256) -> subprocess.Popen:
    # niced: on a real network the bots have their own CPUs; here they share the lab's two cores
    # with HAProxy and the web client, and must not win the race for them
    argv = flood_cmd.l7_command(L.PROT4, L.BOTS4, *extra, count=count, conns=conns, rate=rate, duration=seconds)
    return s.lab.popen(s.t.attacker, "nice", "-n", "15", *argv, stdout=subprocess.PIPE, text=True)


def reached_backend(f: dict) -> int:
    return f["status"].get("200", 0)


API4 = "198.18.24.1"  # the API client's own address, on the client namespace (not the web client's)
API_RATE = 3  # its requests per second (the service limits /api/ to 50 per 10 s per source)


def api_client(s: Setup, seconds: float) -> subprocess.Popen:
    """A plain API client: only the exempt path /api/, no cookie, no JavaScript, a request at a
    time at API_RATE/s, a new connection each, from its own address (scripts/l7flood.py)."""
    argv = flood_cmd.api_client_command(L.PROT4, API4, API_RATE, seconds, "/api/status")
    return s.lab.popen(s.t.client, *argv, stdout=subprocess.PIPE, text=True)


def per_s(r: dict) -> float:
    return r["status"].get("200", 0) / r["seconds"]


def test_floods_from_128_and_1000_addresses(lab):
    """Also, in each case, a plain API client on the exempt path /api/ (no cookie: never
    challenged) next to the web client; and a fifth case: 1,000 bots that found the exempt path
    (no challenge there): the path's own ceiling refuses (429) every source it did not know
    before the flood, and counts the refusals (a source refused 3 times is banned in XDP)."""
    s = Setup(lab, shape=L.BACKEND_RATE, page_bytes=L.PAGE_BYTES)  # a small server a flood can fill
    L.add_sources(lab, s.t, 1000)
    lab.run(s.t.client, "ip", "link", "set", "lo", "up")
    lab.run(s.t.client, "ip", "address", "add", f"{API4}/32", "dev", "lo")
    lab.run(s.t.prot, "ip", "route", "replace", f"{API4}/32", "via", L.CLIENT4)
    svc = _service()
    assert s.apply(svc) == "started"
    client_s, flood_s = 5.0, 7.0  # the client runs from 1.5 s to 6.5 s into each flood

    def under(count: int, *extra: str, conns: int = 256) -> tuple[dict, dict, dict]:
        f = flood(s, count, flood_s, *extra, conns=conns)
        time.sleep(1.5)  # the flood is on
        api = api_client(s, client_s)
        res = Setup.result(s.client(client_s))
        return res, Setup.result(api), Setup.result(f, timeout=flood_s + 30)

    # (sources, flood options, connections, also under a plain HAProxy); keep-alive: a connection
    # per bot (with fewer, a source is reached only when the one before it on that connection
    # stops: the flood would be 256 bots, not 1,000)
    cases = [
        (128, (), 256, True),
        (1000, (), 256, True),
        (1000, ("--keepalive",), 1000, True),
        (1000, ("--random-path",), 256, True),
        (1000, ("--path", "/api/x"), 256, False),  # the bots found the exempt path
    ]
    rows = []
    for i, (count, extra, conns, plain_too) in enumerate(cases):
        if i:
            # back from the plain HAProxy, which has no stick tables: the new worker's start empty
            assert s.apply(svc) == "reloaded"
            # the API client calls before its baseline, as an API client does all day (the exempt
            # path's surge keeps the sources it knew), and the small backend drains what the plain
            # HAProxy's flood queued
            warm = api_client(s, 2.0)
            time.sleep(2.5)
            Setup.result(warm)
        # no attack, next to each attack: the shared machine's load changes from case to case (one
        # baseline for all four and 3 s windows made a 30-request sample; CI saw 22/30 = 73 %)
        api = api_client(s, client_s)
        base = Setup.result(s.client(client_s))
        api_base = Setup.result(api)
        assert base["ok"] >= 10 and base["failed"] == 0, base
        assert api_base["status"] == {"200": api_base["sent"]} and api_base["sent"] >= 10, api_base
        defended, api_def, f_def = under(count, *extra, conns=conns)
        seen = {str(o.address): o.kind for o in runtime.offenders(str(s.h.admin_socket), [svc])}
        plain = f_plain = None
        if plain_too:
            assert s.h.apply(hc.Rendered(L.plain_config(s.run_dir), {})) == "reloaded"
            time.sleep(0.5)
            plain, _, f_plain = under(count, *extra, conns=conns)
        kind = " ".join(extra) or "new conn/request"
        rows.append((count, kind, base, defended, f_def, plain, f_plain, seen, api_base, api_def))

    def share(r: dict, base: dict) -> str:
        return f"{r['ok']:>3} ok {r['failed']:>3} failed {r['ok'] / base['ok']:>4.0%}"

    print(f"\nweb client: a new connection per request, 10/s for {client_s:g} s; flood {flood_s:g} s at 600 req/s")
    print(
        f"{'sources':>7} {'flood':<17} {'no attack':>9} | {'client, xdpguard':<26} {'API client':>10} "
        f"{'to backend':>10} {'offenders':>9} | {'client, plain HAProxy':<26} {'to backend':>10}"
    )
    for count, kind, b, d, fd, p, fp, seen, ab, ad in rows:
        print(
            f"{count:>7} {kind:<17} {b['ok']:>6} ok | {share(d, b):<26} {per_s(ad) / per_s(ab):>10.0%} "
            f"{reached_backend(fd) / max(1, fd['sent']):>10.1%} {len(seen):>9} | "
            + (f"{share(p, b):<26} {reached_backend(fp) / max(1, fp['sent']):>10.1%}" if p else "—")
        )
        print(
            f"        defended flood {fd['rate']} req/s {json.dumps(fd['status'])}, offences "
            f"{json.dumps({k: list(seen.values()).count(k) for k in sorted(set(seen.values()))})}, "
            f"API client {json.dumps(ad['status'])} (alone {json.dumps(ab['status'])})"
            + (f", plain flood {fp['rate']} req/s {json.dumps(fp['status'])}" if fp else "")
        )
    for count, kind, b, d, fd, p, fp, seen, ab, ad in rows:
        assert fd["sent"] >= 2000, (count, kind, fd)  # a real flood: each source under its limits
        # the client is never refused and keeps its rate: ≥ 80 % in each case, a load spike of the
        # shared machine included; the 90 % target over the cases together, below
        assert d["failed"] == 0 and d["ok"] >= 0.8 * b["ok"], (count, kind, b, d)
        # the API client on the exempt path: never challenged nor refused, keeps its rate, the
        # flood at the exempt path itself included (it was seen before that flood began)
        assert ad["status"] == {"200": ad["sent"]} and per_s(ad) >= 0.8 * per_s(ab), (count, kind, ab, ad)
        assert reached_backend(fd) <= 0.05 * fd["sent"], (count, kind, fd)  # the flood was answered by HAProxy
        assert L.CLIENT4 not in seen and API4 not in seen, seen
        if p is not None:  # without the defence the same flood fills the small backend: the client is hurt
            assert p["ok"] < 0.5 * b["ok"], (count, kind, b, p)
    assert sum(r[3]["ok"] for r in rows) >= 0.9 * sum(r[2]["ok"] for r in rows), rows
    # the bots that keep failing the challenge are seen (what the daemon bans in XDP, l7/bans.py)
    assert list(rows[0][7].values()).count("challenged") >= 100, rows[0][7]
    # keep-alive, a connection per bot: a second challenge on its connection makes a bot
    ka = rows[2][7]
    assert list(ka.values()).count("challenged") >= 900, (len(ka), rows[2][4])
    # the exempt path: no challenge, 429 for the sources its surge did not know, refused ones seen
    fx, seen_x = rows[4][4], rows[4][7]
    assert fx["status"].get("429", 0) >= 0.9 * fx["sent"] and "302" not in fx["status"], fx
    assert list(seen_x.values()).count("refused") >= 500, (len(seen_x), fx)


def test_slowloris_and_slow_post_from_128_addresses(lab):
    """A backend with a fixed pool of 16 workers (a small server that slow requests can fill):
    slowloris (a header line a second) and slow POST (a body byte a second) from 128 addresses,
    256 connections. xdpguard's HAProxy holds every request until its headers and body are in
    (`option http-buffer-request`) and cuts it after the level's `timeout http-request` (5 s at
    normal); a plain HAProxy passes a slow POST's body on to the backend as it comes."""
    s = Setup(lab, shape=L.BACKEND_RATE, page_bytes=L.PAGE_BYTES, workers=16)
    L.add_sources(lab, s.t, 128)
    svc = _service()
    assert s.apply(svc) == "started"
    client_s, slow_s = 3.0, 8.0  # every connection is cut (timeout http-request 5 s) by ~6 s

    def under(mode: str, seconds: float = slow_s) -> tuple[dict, dict]:
        argv = flood_cmd.l7_command(
            L.PROT4,
            L.BOTS4,
            *("--mode", mode, "--interval", "1"),
            count=128,
            conns=256,
            duration=seconds,
            timeout=None,
            path="/form",
        )
        f = s.lab.popen(s.t.attacker, "nice", "-n", "15", *argv, stdout=subprocess.PIPE, text=True)
        time.sleep(2.5)  # every slow connection is open
        res = Setup.result(s.client(client_s))
        return res, Setup.result(f, timeout=seconds + 30)

    rows = []
    base = Setup.result(s.client(client_s))
    assert base["ok"] >= 10 and base["failed"] == 0, base
    for i, mode in enumerate(("slowloris", "slowpost")):
        if i:
            assert s.apply(svc) == "reloaded"
            time.sleep(0.5)
        defended, f_def = under(mode)
        assert s.h.apply(hc.Rendered(L.plain_config(s.run_dir), {})) == "reloaded"
        time.sleep(0.5)
        plain, f_plain = under(mode, seconds=client_s + 3.0)  # (what it does to the client: no count asserted)
        rows.append((mode, base, defended, f_def, plain, f_plain))

    print(
        f"\nslow attacks from 128 addresses, 256 connections, a drip a second for {slow_s:g} s; "
        "backend: 16 workers, 2 Mbit/s"
    )
    print(
        f"{'attack':<10} {'no attack':>9} | {'client, xdpguard':<24} {'cut by HAProxy':>14} {'answers':<18} | "
        f"{'client, plain HAProxy':<24} {'cut':>5} {'answers':<18}"
    )
    for mode, b, d, fd, p, fp in rows:
        print(
            f"{mode:<10} {b['ok']:>6} ok | {d['ok']:>3} ok {d['failed']:>3} failed {d['ok'] / b['ok']:>4.0%} "
            f"{fd['closed_by_server']:>14} {json.dumps(fd['status']):<18} | "
            f"{p['ok']:>3} ok {p['failed']:>3} failed {p['ok'] / b['ok']:>4.0%} {fp['closed_by_server']:>5} "
            f"{json.dumps(fp['status']):<18}"
        )
    for mode, b, d, fd, p, fp in rows:
        assert fd["max_open"] >= 200, (mode, fd)  # the attack really held its connections
        # every slow request was cut (408) at least once per connection, none reached the backend
        assert fd["closed_by_server"] >= 256 and set(fd["status"]) <= {"408"}, (mode, fd)
        assert d["failed"] == 0 and d["ok"] >= 0.9 * b["ok"], (mode, b, d)
    slowpost_plain = rows[1][4]
    # the plain proxy passed the slow bodies to the backend, whose 16 workers waited on them
    assert slowpost_plain["ok"] < 0.5 * rows[1][1]["ok"], rows[1]


def test_a_replayed_challenge_cookie(lab):
    """A bot passes the cookie challenge once (from the attacker's own address) and replays the
    cookie: from 128 other addresses it is worth nothing (the cookie is bound to the address it
    was issued to: each request is challenged again once the service ceiling trips), and from
    its own address it is limited like any source (429 + punishment beyond the level's ceiling),
    never more than that ceiling reaching the backend."""
    s = Setup(lab, shape=L.BACKEND_RATE, page_bytes=L.PAGE_BYTES)
    L.add_sources(lab, s.t, 128)
    svc = _service()
    assert s.apply(svc) == "started"
    head = s.curl(s.t.attacker, "-i", f"http://{L.PROT4}/private/a").stdout
    m = re.search(r"set-cookie: (xgc=\d+\.c\.[0-9a-f]{64});", head, re.I)
    assert m, head
    cookie = m.group(1)
    assert s.curl(s.t.attacker, "-b", cookie, f"http://{L.PROT4}/private/a").stdout.startswith("ok ")  # solved
    client_s, flood_s = 3.0, 5.5

    def under(src: str, count: int, *extra: str, conns: int = 128, seconds: float = flood_s) -> tuple[dict, dict]:
        argv = flood_cmd.l7_command(
            L.PROT4, src, "--cookie", cookie, *extra, count=count, conns=conns, rate=600, duration=seconds
        )
        f = s.lab.popen(s.t.attacker, "nice", "-n", "15", *argv, stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        res = Setup.result(s.client(client_s))
        return res, Setup.result(f, timeout=seconds + 30)

    base = Setup.result(s.client(client_s))
    moved, f_moved = under(L.BOTS4, 128)
    s.clear_tables(svc)  # fresh stick tables (a reload keeps them), same secret
    own, f_own = under(f"{L.ATTACKER4}/32", 1)
    s.clear_tables(svc)
    # keep-alive: the first 300 requests pass at the small backend's pace (~5 s), the 429s after
    ka, f_ka = under(f"{L.ATTACKER4}/32", 1, "--keepalive", conns=8, seconds=12.0)
    print(
        f"\nreplayed challenge cookie, 600 req/s for {flood_s:g} s; client alone {base['ok']} ok in {client_s:g} s"
        f"\n  from 128 other addresses: client {moved['ok']} ok {moved['failed']} failed; flood {json.dumps(f_moved)}"
        f"\n  from its own address    : client {own['ok']} ok {own['failed']} failed; flood {json.dumps(f_own)}"
        f"\n  its own, keep-alive     : client {ka['ok']} ok {ka['failed']} failed; flood {json.dumps(f_ka)}"
    )
    # moved: no request is taken as verified; once the ceiling trips every one is challenged again
    assert f_moved["sent"] >= 2000 and reached_backend(f_moved) <= 0.05 * f_moved["sent"], f_moved
    assert f_moved["status"].get("302", 0) >= 0.9 * f_moved["sent"], f_moved
    # its own address, a new connection a request: the per-source cap on new connections (250 per
    # 10 s at normal) refuses the connections, at most the level's per-source ceiling passes
    tried = f_own["sent"] + f_own["connect_failed"]
    assert tried >= 2000 and reached_backend(f_own) <= 300 + 50, f_own
    assert f_own["closed_by_server"] + f_own["connect_failed"] >= 0.9 * tried, f_own
    # its own address, keep-alive: the per-source request ceiling (300 per 10 s) answers 429 and
    # punishes; the verified source is limited like any other, never more passes
    assert f_ka["sent"] >= 2000 and reached_backend(f_ka) <= 300 + 50, f_ka
    assert f_ka["status"].get("429", 0) >= 0.9 * f_ka["sent"], f_ka
    for r in (moved, own):
        assert r["failed"] == 0 and r["ok"] >= 0.8 * base["ok"], (base, r)
    # (with keep-alive, the 300 requests the per-source ceiling lets through come in the flood's
    # first half second: the small backend's 2 Mbit/s uplink drains them for ~5 s, which the
    # client measured from 2 s feels; printed, not asserted — the ceiling is per 10 s by design)
    assert ka["failed"] == 0, ka


def test_automatic_cc_mode_raises_the_level_when_the_backend_suffers(lab):
    """A flood under both service ceilings (at most 150 requests/s from 128 addresses over 90
    connections: the operator's ceilings here are 200/s and 1000 at the backend at once;
    each source's 12 per 10 s is under its unverified budget) still fills the small
    backend. Automatic CC mode (l7/auto.py, what `xdpguard run` does every
    tick) sees the backend's response time (its health checks) leave its baseline, raises the
    level to strict (everyone unverified challenged), and lowers it once the backend is quiet."""
    s = Setup(lab, shape=L.BACKEND_RATE, page_bytes=L.PAGE_BYTES)
    L.add_sources(lab, s.t, 128)
    # both ceilings above what this flood does (normal's own, 50/s and a surge that holds 30 s,
    # stop it before the backend suffers: not what this test is about)
    svc = _service(service_rate=200, backend_conns=1000)
    assert s.apply(svc) == "started"
    levels = auto.AutoLevel(calm_s=6.0)
    seen: list[tuple[float, str, str]] = []

    readings: list[tuple[float, int]] = []

    def tick(now: float) -> str:
        r = auto.reading(runtime.show_stat(str(s.h.admin_socket)), svc)
        readings.append((round(now - t0, 1), r.rtime_ms if r else -1))
        lv, step = levels.step(svc.name, svc.level, r, now)
        if step is not None:
            seen.append((now, step.new, step.why))
            s.apply(replace(svc, level=lv))
        return lv

    t0 = time.monotonic()
    while time.monotonic() - t0 < 8:  # peacetime: the baseline
        tick(time.monotonic())
        time.sleep(1.0)
    base = Setup.result(s.client(5.0))
    f = flood(s, 128, 40, rate=150, conns=90)
    start = time.monotonic()
    while time.monotonic() - start < 25 and tick(time.monotonic()) == "normal":
        time.sleep(1.0)
    raised_after = time.monotonic() - start
    print(f"\nhealth-check durations (s since start, ms): {readings}")
    assert seen and seen[0][1] == "strict", (seen, levels.states)
    time.sleep(2.0)
    defended = Setup.result(s.client(5.0))
    for _ in range(3):
        tick(time.monotonic())
        time.sleep(1.0)
    f.terminate()  # l7flood stops and prints what it did
    fr = Setup.result(f, timeout=60)
    end = time.monotonic()
    while time.monotonic() - end < 30 and tick(time.monotonic()) != "normal":
        time.sleep(1.0)
    print(
        f"\nautomatic CC mode, a ≤ 150 req/s flood from 128 addresses, 90 connections (under both ceilings): raised to strict "
        f"{raised_after:.1f} s after it started ({seen[0][2]}); client alone {base['ok']} ok, after the raise "
        f"{defended['ok']} ok / {defended['failed']} failed; steps {[(round(t - start, 1), lv) for t, lv, _ in seen]}"
        f"; flood {json.dumps(fr['status'])}"
    )
    print(f"health-check durations (s since start, ms): {readings}")
    assert raised_after < 25
    assert defended["failed"] == 0 and defended["ok"] >= 0.8 * base["ok"], (base, defended)
    assert seen[-1][1] == "normal", seen  # lowered again when quiet, to the operator's level


def test_unverified_budget_and_the_surge_that_holds(lab):
    """Stop 32's two rules against real HAProxy, at level normal, nothing tuned. Per source: a
    client without the cookie gets its 20 unverified requests per 10 s, then the challenge (not a
    429: a browser passes it). Per domain: a flood from 128 addresses (each far under its budget)
    crosses the 50/s ceiling; seconds after it ended, with the domain's rate back at 0, a new
    source without the cookie is still challenged (the surge holds SURGE_HOLD_S), and the domain's
    entry says until when."""
    s = Setup(lab)
    L.add_sources(lab, s.t, 128)
    assert s.apply(_service()) == "started"
    # the budget: 25 requests at 10/s from one source, one connection each
    codes = s.curl(
        s.t.client, "--rate", "10/s", "-w", "%{http_code}\n", *[x for _ in range(25) for x in ("-o", "/dev/null", URL)]
    ).stdout.split()
    assert codes == ["200"] * 20 + ["302"] * 5, codes
    # a browser passes it and is not counted again: with the cookie, 200 again
    jar = Path(s.run_dir) / "client.jar"
    assert (
        s.curl(s.t.client, "-L", "-b", str(jar), "-c", str(jar), "-o", "/dev/null", "-w", "%{http_code}", URL).stdout
        == "200"
    )
    # the surge: 2 s of 150 requests/s from 128 addresses (≤ 3 each), then quiet
    f = Setup.result(flood(s, 128, 2, rate=150, conns=64), timeout=30)
    assert f["status"].get("302", 0) > 0, f  # the ceiling tripped during the flood
    time.sleep(3)  # the domain's 1 s rate is back to 0
    raw = runtime.command(str(s.h.admin_socket), f"show table {hc.service_table(_service())}")
    until = [int(x) for x in re.findall(r"gpt(?:0|\(0\))=(\d+)", raw)]
    now = time.time()
    assert until and now < until[0] <= now + hc.SURGE_HOLD_S, raw  # in surge, until ≤ 30 s from now
    # the attacker's own address (not a bot, never seen): challenged on its first request
    assert s.curl(s.t.attacker, "-o", "/dev/null", "-w", "%{http_code}", URL).stdout == "302"
    # the verified client is not
    assert s.curl(s.t.client, "-b", str(jar), "-o", "/dev/null", "-w", "%{http_code}", URL).stdout == "200"
    print(f"\nbudget: {codes.count('200')} × 200 then 302; flood {f['status']}; surge table {raw.strip()}")

    # the ceiling that follows the peacetime (l7/ceiling.py, what `xdpguard run` does each tick):
    # fresh tables (cleared: a reload keeps them, the surge above included) and an empty map
    # (nothing wrote it yet): 8 requests/s from 128 addresses is under the level's 50/s, and under
    # its quarter (12/s: above it, the domain is in unrest and new sources have no budget) …
    svc2 = _service()
    s.clear_tables(svc2)
    under = Setup.result(flood(s, 128, 5, rate=8, conns=32), timeout=30)
    assert under["sent"] >= 30 and "302" not in under["status"], under
    # … a quiet domain's learned ceiling is MIN_PER_S (10/s), written into HAProxy's map at runtime
    # (no reload: the stick tables stay), read back from it …
    time.sleep(1.5)  # the domain's 1 s rate is back to ~0
    learned = ceiling.Ceilings(warmup_s=0)
    sock = str(s.h.admin_socket)
    wrote = ceiling.sync(sock, svc2, learned, time.time())
    assert wrote == {hc.ceiling_key(svc2, "web"): ceiling.MIN_PER_S}, (wrote, learned.domains)
    mid = ceiling.map_id(runtime.command(sock, "show map"))
    assert ceiling.map_entries(runtime.command(sock, f"show map {mid}")) == wrote
    assert ceiling.sync(sock, svc2, learned, time.time()) == {}  # nothing to change the next tick
    # … and 30 requests/s from the same (now known) addresses crosses it: challenged
    over = Setup.result(flood(s, 128, 1.5, rate=30, conns=32), timeout=30)
    assert over["status"].get("302", 0) > 0, over
    print(
        f"ceiling from peacetime: {wrote}; 8 req/s under the level's 50: {under['status']}, 30 over 10: {over['status']}"
    )
