"""A real browser through the JavaScript challenge (issue 29): Debian's chromium, headless, in the
client namespace, loads the page of a service at level `emergency` (everyone unverified gets the
JavaScript page) with nothing configured: it runs the script, gets the cookie, reloads and
receives the backend's page. curl, which runs no script, gets the challenge page only; the
cookie chromium earned is bound to the client's address (worth nothing from the attacker's).

chromium is a host test package (scripts/setup.sh HOST_TEST_PACKAGES), not in the VM box."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time

import pytest

from test_l7_haproxy import URL, Setup, _require, _service
from xdpguard.core.l7 import haproxy_config as hc
from xdpguard.core.l7 import runtime
from xdpguard.core.l7.spec import KNOWN_BEFORE_S
from xdpguard.lab import flood as flood_cmd
from xdpguard.lab import l7 as L

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing


def _chromium(s: Setup, *args: str) -> str:
    profile = tempfile.mkdtemp(prefix="xg-chromium-")
    s.lab.defer("remove the chromium profile", shutil.rmtree, profile, ignore_errors=True)
    p = s.lab.run(
        s.t.client,
        "timeout",
        "90",
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        *args,
        check=False,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_chromium_headless_passes_the_js_challenge(lab):
    _require("chromium")
    s = Setup(lab)
    assert s.apply(_service(level="emergency")) == "started"
    # curl runs no script: it gets the challenge page, never the backend's
    page = s.curl(s.t.client, URL).stdout
    assert "location.reload()" in page and "ok path=" not in page, page[:300]
    dom = _chromium(s, "--dump-dom", URL)
    assert "ok path=/ xff=198.18.0.10" in dom, dom[:1000]
    assert "Checking your browser" not in dom
    # challenged twice in all (curl's page, chromium's first load), never twice on one connection:
    # its reload on the same connection carried the cookie (a 2nd challenge there counts twice)
    src = runtime.show_table(str(s.h.admin_socket), hc.src_table(_service()))
    mine = [e for e in src.entries if str(e.address) == "198.18.0.10"]
    assert mine and mine[0].get("gpc0") == 2 and mine[0].get("gpt2") > 0, src
    # the cookie the page's script makes is bound to the address it was issued to
    b, a = re.search(r'var b="([0-9a-f]{32})",a="([0-9a-f]{32})"', page).groups()
    exp = re.search(r"xgc=(\d+)\.j\.", page).group(1)
    earned = f"xgc={exp}.j.{a}{b}"
    assert s.curl(s.t.client, "-b", earned, URL).stdout.startswith("ok ")
    assert "location.reload()" in s.curl(s.t.attacker, "-b", earned, URL).stdout  # not from another address


KNOWN4 = "198.18.24.2"  # a cookie-less client (a monitor, a script) known before the unrest


def _known_before_unrest(lab, url: str):
    """The lab at level normal with 128 bot addresses, and KNOWN4 (on the client namespace) seen
    once at `url` more than KNOWN_BEFORE_S ago, without a cookie."""
    s = Setup(lab)
    L.add_sources(lab, s.t, 128)
    lab.run(s.t.client, "ip", "address", "add", f"{KNOWN4}/32", "dev", "lo")
    lab.run(s.t.prot, "ip", "route", "replace", f"{KNOWN4}/32", "via", L.CLIENT4)
    svc = _service()
    assert s.apply(svc) == "started"
    assert s.curl(s.t.client, "--interface", KNOWN4, "-o", "/dev/null", "-w", "%{http_code}", url).stdout == "200"
    time.sleep(KNOWN_BEFORE_S + 0.5)
    return s, svc


def test_in_unrest_a_new_browser_passes_one_302_and_known_clients_keep_their_budget(lab):
    """Stop 34's unrest, what it costs (level normal, nothing tuned): 20 unverified requests/s
    from 128 new addresses is over a quarter of the domain's ceiling (50/s) and under the
    ceiling (no surge). A browser that arrives now is new: one 302 (followed, the cookie kept),
    then the page. A cookie-less client seen more than KNOWN_BEFORE_S before keeps its budget
    (200); a cookie-less client never seen is challenged at its first request."""
    _require("chromium")
    s, svc = _known_before_unrest(lab, URL)
    code = ("-o", "/dev/null", "-w", "%{http_code}")
    argv = flood_cmd.l7_command(L.PROT4, L.BOTS4, count=128, conns=16, rate=20, duration=12)
    f = s.lab.popen(s.t.attacker, "nice", "-n", "15", *argv, stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)
    dom = _chromium(s, "--dump-dom", URL)
    known = s.curl(s.t.client, "--interface", KNOWN4, *code, URL).stdout
    new = s.curl(s.t.attacker, *code, URL).stdout  # the attacker's own address: never seen
    sock = str(s.h.admin_socket)
    raw = runtime.command(sock, f"show table {hc.service_table(svc)}")
    src = runtime.show_table(sock, hc.src_table(svc))
    fl = Setup.result(f, timeout=40)
    print(f"\nunrest: chromium {dom.strip()[:60]!r}; known curl {known}; new curl {new}; flood {fl['status']}")
    assert "ok path=/ xff=198.18.0.10" in dom, dom[:1000]
    browser = [e for e in src.entries if str(e.address) == L.CLIENT4]
    assert browser and browser[0].get("gpc0") == 1 and browser[0].get("gpt2") > 0, src  # one 302, then verified
    assert known == "200" and new == "302", (known, new)
    assert fl["status"].get("302", 0) > 0, fl  # the flood's new sources were challenged …
    until = [int(x) for x in re.findall(r"gpt(?:0|\(0\))=(\d+)", raw)]
    assert all(u < time.time() - 10 for u in until), raw  # … without a surge (under the ceiling)


def test_in_unrest_on_the_exempt_path_a_new_api_client_waits_and_a_known_one_does_not(lab):
    """What unrest costs an API client (level normal, nothing tuned): 50 unverified requests/s
    on the exempt path /api/ from 128 new addresses is over a quarter of its exempt ceiling
    (100/s) and under it (no surge). An API client first seen now gets 429 until it is
    KNOWN_BEFORE_S old, then 200 (never banned: unrest's 429 is not a counted refusal); one seen
    before keeps every call."""
    s, svc = _known_before_unrest(lab, f"http://{L.PROT4}/api/status")
    argv = flood_cmd.l7_command(L.PROT4, L.BOTS4, count=128, conns=32, rate=50, duration=14, path="/api/x")
    f = s.lab.popen(s.t.attacker, "nice", "-n", "15", *argv, stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)
    new = s.lab.popen(
        s.t.attacker,
        *flood_cmd.api_client_command(L.PROT4, L.ATTACKER4, 2, 9, "/api/status"),
        stdout=subprocess.PIPE,
        text=True,
    )
    known = s.lab.popen(
        s.t.client,
        *flood_cmd.api_client_command(L.PROT4, KNOWN4, 2, 9, "/api/status"),
        stdout=subprocess.PIPE,
        text=True,
    )
    new_r, known_r = Setup.result(new, timeout=40), Setup.result(known, timeout=40)
    raw = runtime.command(str(s.h.admin_socket), f"show table {hc.service_table(svc)}")
    fl = Setup.result(f, timeout=40)
    print(f"\nunrest on /api/: new API client {new_r['status']}; known {known_r['status']}; flood {fl['status']}")
    assert known_r["sent"] >= 10 and known_r["status"] == {"200": known_r["sent"]}, known_r
    assert new_r["status"].get("429", 0) > 0 and new_r["status"].get("200", 0) > 0, new_r
    assert set(new_r["status"]) <= {"200", "429"}, new_r
    assert fl["status"].get("429", 0) > 0, fl  # the flood's new sources were refused …
    until = [int(x) for x in re.findall(r"gpt(?:0|\(0\))=(\d+)", raw)]
    assert all(u < time.time() - 10 for u in until), raw  # … without a surge (under the exempt ceiling)
