"""A real browser through the JavaScript challenge (issue 29): Debian's chromium, headless, in the
client namespace, loads the page of a service at level `emergency` (everyone unverified gets the
JavaScript page) with nothing configured: it runs the script, gets the cookie, reloads and
receives the backend's page. curl, which runs no script, gets the challenge page only; the
cookie chromium earned is bound to the client's address (worth nothing from the attacker's).

chromium is a host test package (scripts/setup.sh HOST_TEST_PACKAGES), not in the VM box."""

from __future__ import annotations

import re
import shutil
import tempfile

import pytest

from test_l7_haproxy import URL, Setup, _require, _service
from xdpguard.core.l7 import haproxy_config as hc
from xdpguard.core.l7 import runtime

pytestmark = pytest.mark.kernel


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
