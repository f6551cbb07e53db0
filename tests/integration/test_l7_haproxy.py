"""HAProxy owned by xdpguard (core/l7) in a private namespace lab (lab/l7.py): the cookie and
JavaScript challenges, X-Forwarded-For with the backend hidden, reloads under traffic, drift
repair, and a wrk flood from one address limited while a browser-like client keeps its service.

Every traffic generator is bounded (wrk -d, the client's --duration, timeouts); the lab and
HAProxy are torn down by the `lab` fixture whatever happens.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from xdpguard.core.l7 import haproxy_config as hc
from xdpguard.core.l7 import runtime
from xdpguard.core.l7.proc import Haproxy, HaproxyConfigError, load_secret, tls_files
from xdpguard.core.l7.spec import HttpService, RateLimit, Rule, Tls
from xdpguard.lab import l7 as L

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing

URL = f"http://{L.PROT4}/"


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{tool} is not installed (scripts/setup.sh installs it)")
        pytest.skip(f"{tool} is not installed")


def _service(**kw) -> HttpService:
    base = dict(
        name="web",
        listen=[L.PROT4],
        backends=[f"{L.BACKEND4}:{L.HTTP_PORT}"],
        health_path="/healthz",
        rules=[Rule("challenge", path_prefix="/private/")],
        limits=[RateLimit("/api/", 50)],
        exempt=["/api/"],
    )
    return HttpService(**{**base, **kw})


class Setup:
    def __init__(self, lab, **build):
        _require("haproxy")
        self.lab = lab
        self.t = L.build(lab, serve_s=300, **build)
        self.run_dir = tempfile.mkdtemp(prefix="xg-l7-")  # short: Unix socket paths are ≤ 107 bytes
        lab.defer("remove the HAProxy run dir", shutil.rmtree, self.run_dir, ignore_errors=True)
        self.h = Haproxy(self.run_dir, self.t.prot)
        lab.defer("stop HAProxy", self.h.stop)
        self.secret = load_secret(Path(self.run_dir) / "secret")

    def render(self, *services: HttpService) -> hc.Rendered:
        return hc.render(services, run_dir=self.run_dir, secret=self.secret)

    def apply(self, *services: HttpService) -> str:
        return self.h.apply(self.render(*services), tls_files(services))

    def curl(self, ns: str, *args: str) -> subprocess.CompletedProcess:
        return self.lab.run(ns, "curl", "-s", "-m", "3", *args, check=False, timeout=10)

    def clear_tables(self, *services: HttpService, timeout_s: float = 10.0) -> None:
        """Empty every stick table of `services` (per source, per prefix, per domain) through the
        runtime API: what a test that wants fresh tables does, as a reload keeps them (peers). An
        entry a live connection still tracks is not removed (HAProxy): cleared again until none is
        left."""
        sock = str(self.h.admin_socket)
        names = [n for svc in services for n in (*runtime.table_names(svc), hc.service_table(svc))]
        end = time.monotonic() + timeout_s
        while True:
            for n in names:
                runtime.command(sock, f"clear table {n}")
            used = {n: runtime.show_table(sock, n).used for n in names}
            if not any(used.values()):
                return
            assert time.monotonic() < end, f"stick tables not emptied after {timeout_s:g} s: {used}"
            time.sleep(0.2)

    def client(self, duration: float, path: str = "/", interval: float = 0.1) -> subprocess.Popen:
        return self.lab.popen(
            self.t.client,
            sys.executable,
            "-m",
            "xdpguard.lab.l7",
            "client",
            "--url",
            f"http://{L.PROT4}{path}",
            "--duration",
            str(duration),
            "--interval",
            str(interval),
            stdout=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def result(p: subprocess.Popen, timeout: float = 60) -> dict:
        out, _ = p.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def wrk(self, seconds: int, conns: int = 64) -> subprocess.Popen:
        return self.lab.popen(
            self.t.attacker,
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{seconds}s",
            "--timeout",
            "2s",
            URL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _cookie_for(secret: bytes, addr: str, exp: int, kind: str = "c") -> str:
    mac = hmac.new(secret, f"{addr}|{exp}|{kind}".encode(), hashlib.sha256).hexdigest()
    return f"{hc.COOKIE}={exp}.{kind}.{mac}"


def test_challenges_forwarded_for_and_hidden_backend(lab):
    s = Setup(lab)
    assert s.apply(_service()) == "started"
    cli, atk = s.t.client, s.t.attacker

    # the public page: no challenge at level normal; the backend sees the client's address
    r = s.curl(cli, "-i", URL)
    assert r.stdout.startswith("HTTP/1.1 200") and "xff=198.18.0.10" in r.stdout, r.stdout
    # a forged X-Forwarded-For is replaced, not passed on
    assert "xff=198.18.0.10\n" in s.curl(cli, "-H", "X-Forwarded-For: 203.0.113.9", URL).stdout
    # the backend is hidden: not reachable from outside, and not named in what HAProxy answers
    assert s.curl(cli, "-o", "/dev/null", "-w", "%{http_code}", f"http://{L.BACKEND4}/").stdout == "000"
    assert L.BACKEND4 not in r.stdout

    # a client without cookies is sent round by 302 with a cookie
    r = s.curl(cli, "-i", f"http://{L.PROT4}/private/a")
    assert r.stdout.startswith("HTTP/1.1 302"), r.stdout
    m = re.search(r"set-cookie: (xgc=\d+\.c\.[0-9a-f]{64});", r.stdout, re.I)
    assert m, r.stdout
    issued = m.group(1)
    # the browser-like client passes, keeps passing, and has the cookie
    res = Setup.result(s.client(1.0, "/private/a"))
    assert res["ok"] >= 5 and res["failed"] == 0 and res["cookies"] == ["xgc"], res
    # the cookie is bound to the address: from the client it passes, from the attacker it does not
    assert s.curl(cli, "-b", issued, f"http://{L.PROT4}/private/a").stdout.startswith("ok ")
    assert (
        s.curl(atk, "-o", "/dev/null", "-w", "%{http_code}", "-b", issued, f"http://{L.PROT4}/private/a").stdout
        == "302"
    )
    # our own HMAC agrees with HAProxy's; a wrong MAC, an expired or a foreign-address cookie fail
    now = int(time.time())
    code = lambda ns, c: (
        s.curl(
            ns,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-b",
            c,  # noqa: E731
            f"http://{L.PROT4}/private/a",
        ).stdout
    )
    assert code(cli, _cookie_for(s.secret, L.CLIENT4, now + 600)) == "200"
    assert code(cli, _cookie_for(s.secret, L.CLIENT4, now + 600).replace(".c.", ".j.")) == "302"
    assert code(cli, _cookie_for(s.secret, L.CLIENT4, now - 5)) == "302"
    assert code(cli, _cookie_for(s.secret, L.ATTACKER4, now + 600)) == "302"
    assert code(cli, _cookie_for(b"x" * 32, L.CLIENT4, now + 600)) == "302"
    assert code(cli, "xgc=garbage") == "302"

    # level emergency: everyone unverified gets the JavaScript page; a 302 cookie is not enough
    assert s.apply(_service(level="emergency")) == "reloaded"
    page = s.curl(cli, "-i", URL).stdout
    assert page.startswith("HTTP/1.1 200") and "location.reload()" in page and "ok " not in page
    b, a = re.search(r'var b="([0-9a-f]{32})",a="([0-9a-f]{32})"', page).groups()
    exp = re.search(r"xgc=(\d+)\.j\.", page).group(1)
    assert s.curl(cli, "-b", f"xgc={exp}.j.{a}{b}", URL).stdout.startswith("ok ")  # what the script sets
    assert "location.reload()" in s.curl(cli, "-b", _cookie_for(s.secret, L.CLIENT4, now + 600), URL).stdout
    # exempt paths (APIs) are never challenged
    assert s.curl(cli, f"http://{L.PROT4}/api/x").stdout.startswith("ok ")


def test_reload_under_traffic_refused_config_and_drift(lab):
    s = Setup(lab)
    svc = _service()
    assert s.apply(svc) == "started"
    assert s.apply(svc) == "unchanged"
    first = s.h.proc_info()

    # two reloads while a client sends a new connection every 50 ms: not one request fails (the
    # first reload waits until the first worker can hand its stick tables over: 5 s after start).
    # 20 new connections/s stays under the level's 250 per 10 s: now that the tables survive a
    # reload, a faster client (it was 50/s) is refused by that limit, as it should be.
    p = s.client(10.0, "/", interval=0.05)
    time.sleep(1.5)
    assert s.apply(replace(svc, limits=(RateLimit("/api/", 40),))) == "reloaded"
    time.sleep(1.5)
    assert s.apply(replace(svc, level="loose")) == "reloaded"
    res = Setup.result(p)
    info = s.h.proc_info()
    assert info.master == first.master and info.reloads == first.reloads + 2
    assert res["failed"] == 0 and res["ok"] >= 100, res
    print(f"\nreloads under traffic: {res['ok']} requests, {res['failed']} failed")

    # a configuration HAProxy refuses is not loaded; the running one keeps serving
    bad = s.render(svc)
    bad = hc.Rendered(bad.text.replace("sc0_conn_cur gt", "sc0_conn_cur_bogus gt"), bad.files)
    with pytest.raises(HaproxyConfigError, match="HAProxy refused"):
        s.h.apply(bad)
    assert s.h.proc_info().workers == info.workers
    assert s.curl(s.t.client, URL).stdout.startswith("ok ")

    # drift: HAProxy killed → ensure() starts the installed configuration again
    assert s.h.ensure() == "ok"
    for pid in (info.master, *info.workers):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while s.h.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not s.h.running()
    assert s.h.ensure() == "restarted"
    assert s.h.proc_info().master != info.master
    assert s.curl(s.t.client, URL).stdout.startswith("ok ")


def _source(s: Setup, addr: str) -> runtime.TableEntry | None:
    table = runtime.show_table(str(s.h.admin_socket), hc.src_table(_service()))
    return next((e for e in table.entries if str(e.address) == addr), None)


def test_stick_tables_survive_a_reload(lab):
    """A reload (a level change: what automatic CC mode does) keeps every source's counters:
    requests, challenges, first-seen time, the punishment. HAProxy 2.6 hands the tables over
    from the old worker to the new one through the local peer, and only from a worker that is
    5 s old: the reload comes at once after the start, so proc.py's wait is tested too."""
    s = Setup(lab)
    svc = _service(limits=[RateLimit("/api/", 3, punish_s=120)])
    assert s.apply(svc) == "started"

    def code(path: str) -> str:
        return s.curl(s.t.client, "-o", "/dev/null", "-w", "%{http_code}", f"http://{L.PROT4}{path}").stdout

    assert [code("/private/") for _ in range(2)] == ["302", "302"]  # a challenge rule: counted (gpc 0)
    assert [code("/api/x") for _ in range(4)] == ["200", "200", "200", "429"]  # over the limit: punished
    before = _source(s, L.CLIENT4)
    assert before is not None and before.get("gpc0") == 2 and before.get("gpt1") == hc.PUNISH_CODES["deny"], before
    assert before.get("gpt0") > time.time() + 60 and before.get("http_req_rate") == 6, before
    old = s.h.proc_info().workers

    assert s.apply(replace(svc, level="strict")) == "reloaded"
    assert set(s.h.proc_info().workers).isdisjoint(old)
    after = _source(s, L.CLIENT4)
    assert after is not None, "the reload emptied the stick table"
    for name in ("gpc0", "gpt0", "gpt1", "gpt3"):  # challenges, punished until, how, first seen
        assert after.get(name) == before.get(name), (name, before, after)
    assert after.get("http_req_rate") >= 6, after
    # the new worker keeps punishing: refused (429), not challenged (302) as a new source would be
    assert code("/private/") == "429"
    print(f"\nafter the reload: {after.data}")


def test_a_rotated_secret_keeps_the_cookies_it_signed(lab):
    """After a rotation (cluster rotate-secret: secret.rotated) HAProxy signs with the new key
    and still takes a live cookie signed with the previous one; once the previous key is dropped
    (its cookie lifetime is over) such a cookie is challenged again. A cookie under neither key,
    or for another address, never passes."""
    s = Setup(lab)
    svc = _service()
    old, new = s.secret, os.urandom(32)
    now = int(time.time())
    code = lambda c: (  # noqa: E731
        s.curl(s.t.client, "-o", "/dev/null", "-w", "%{http_code}", "-b", c, f"http://{L.PROT4}/private/a").stdout
    )
    by_old, by_new = _cookie_for(old, L.CLIENT4, now + 600), _cookie_for(new, L.CLIENT4, now + 600)
    assert s.h.apply(hc.render([svc], run_dir=s.run_dir, secret=old)) == "started"
    assert (code(by_old), code(by_new)) == ("200", "302")
    assert s.h.apply(hc.render([svc], run_dir=s.run_dir, secret=new, old_secret=old)) == "reloaded"
    assert (code(by_old), code(by_new)) == ("200", "200")
    assert code(_cookie_for(old, L.ATTACKER4, now + 600)) == "302"  # still bound to its address
    assert code(_cookie_for(old, L.CLIENT4, now - 5)) == "302"  # and to its expiry
    assert code(_cookie_for(os.urandom(32), L.CLIENT4, now + 600)) == "302"
    # a new challenge is signed with the new key
    head = s.curl(s.t.attacker, "-i", f"http://{L.PROT4}/private/a").stdout
    issued = re.search(r"set-cookie: xgc=(\d+)\.c\.([0-9a-f]{64});", head, re.I)
    assert issued and _cookie_for(new, L.ATTACKER4, int(issued.group(1))).endswith(issued.group(2)), head
    assert s.h.apply(hc.render([svc], run_dir=s.run_dir, secret=new)) == "reloaded"  # the previous key dropped
    assert (code(by_old), code(by_new)) == ("302", "200")


def _wrk_summary(text: str) -> dict:
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "requests": int(total.group(1)) if total else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


def test_wrk_flood_is_limited_and_the_client_keeps_its_service(lab):
    _require("wrk")
    s = Setup(lab, shape=L.BACKEND_RATE, page_bytes=L.PAGE_BYTES)  # a small server a flood can fill
    assert s.apply(_service()) == "started"
    client_s, wrk_s = 5.0, 14

    def under_attack() -> tuple[dict, dict, dict]:
        """The client in the flood's first seconds (onset: what passed before the source was
        caught is still draining through the backend's uplink) and in its steady state."""
        w = s.wrk(wrk_s)
        time.sleep(1.5)  # the flood is on
        onset = Setup.result(s.client(client_s))
        time.sleep(0.5)
        steady = Setup.result(s.client(client_s))
        out, _ = w.communicate(timeout=wrk_s + 30)
        return onset, steady, _wrk_summary(out)

    base = Setup.result(s.client(client_s))
    assert base["ok"] >= 10 and base["failed"] == 0, base

    onset_limited, limited, wrk_limited = under_attack()
    offenders = runtime.offenders(str(s.h.admin_socket), [_service()])
    bad = {str(o.address) for o in offenders}
    kinds = {o.kind for o in offenders if str(o.address) == L.ATTACKER4}

    # the same flood against HAProxy without any defence (a plain reverse proxy), same run
    assert s.h.apply(hc.Rendered(L.plain_config(s.run_dir), {})) == "reloaded"
    time.sleep(1.0)
    onset_plain, plain, wrk_plain = under_attack()

    def share(r: dict) -> str:
        return f"{r['ok']} ok / {r['failed']} failed = {r['ok'] / base['ok']:.0%}"

    share_limited = limited["ok"] / base["ok"]
    print(
        f"\nclient alone: {base['ok']} ok in {client_s:g} s"
        f"\nwrk flood, limits on : client onset {share(onset_limited)}, steady {share(limited)}; wrk {wrk_limited}"
        f"\nwrk flood, no limits : client onset {share(onset_plain)}, steady {share(plain)}; wrk {wrk_plain}"
    )
    assert L.ATTACKER4 in bad and L.CLIENT4 not in bad, offenders
    assert "punished" in kinds and "requests" in kinds, offenders
    # the flood was answered by HAProxy, not passed on: almost every wrk request got a 429
    assert wrk_limited["requests"] > 1000 and wrk_limited["non_2xx"] >= 0.95 * wrk_limited["requests"], wrk_limited
    assert share_limited >= 0.9, (base, limited)


def test_slowloris_is_timed_out(lab):
    s = Setup(lab, shape=L.BACKEND_RATE, page_bytes=L.PAGE_BYTES)
    assert s.apply(_service()) == "started"  # normal: a request's headers must arrive within 5 s
    base = Setup.result(s.client(5.0))

    def under_slowloris() -> tuple[dict, dict]:
        slow = s.lab.popen(
            s.t.attacker,
            sys.executable,
            "-m",
            "xdpguard.lab.l7",
            "slowloris",
            "--host",
            L.PROT4,
            "--conns",
            "60",
            "--duration",
            "12",
            "--interval",
            "1",
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.0)
        res = Setup.result(s.client(5.0))
        return res, Setup.result(slow, timeout=60)

    limited, slow_limited = under_slowloris()
    assert s.h.apply(hc.Rendered(L.plain_config(s.run_dir), {})) == "reloaded"
    plain, slow_plain = under_slowloris()
    print(
        f"\nslowloris (60 connections, a header line per second, 12 s), client alone {base['ok']} ok:"
        f"\n  limits on : client {limited['ok']} ok / {limited['failed']} failed; slowloris {slow_limited}"
        f"\n  plain     : client {plain['ok']} ok / {plain['failed']} failed; slowloris {slow_plain}"
    )
    # every unfinished request is cut (each connection at least once in 12 s); the plain proxy,
    # whose only limit is inactivity, keeps every one of them
    assert slow_limited["closed_by_server"] >= 60 and slow_plain["closed_by_server"] == 0
    assert limited["failed"] == 0 and limited["ok"] >= 0.9 * base["ok"], (base, limited)


def test_https_service_with_its_certificate(lab):
    _require("openssl")
    s = Setup(lab)
    d = Path(s.run_dir) / "certs-src"
    d.mkdir()
    cert, key = d / "site.crt", d / "site.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=example.com",
            "-addext",
            "subjectAltName=DNS:example.com",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    web = _service(domains=["example.com"])
    tls = replace(web, name="webtls", port=443, tls=Tls(cert, key))
    assert s.apply(web, tls) == "started"
    resolve = ["--resolve", f"example.com:443:{L.PROT4}", "--cacert", str(cert)]
    # verified against our certificate; the challenge cookie of an HTTPS service is Secure
    r = s.curl(s.t.client, *resolve, "-i", "https://example.com/private/a")
    assert r.returncode == 0 and r.stdout.startswith("HTTP/2 302"), r.stdout + r.stderr
    assert re.search(r"set-cookie: xgc=\d+\.c\.[0-9a-f]{64};.*; Secure", r.stdout, re.I), r.stdout
    jar = str(Path(s.run_dir) / "jar")
    r = s.curl(s.t.client, *resolve, "-L", "-c", jar, "-b", jar, "https://example.com/private/a")
    assert r.stdout.startswith("ok path=/private/a xff=198.18.0.10"), r.stdout + r.stderr
    # an unknown Host gets 404, on both services
    assert s.curl(s.t.client, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: other.example", URL).stdout == "404"
