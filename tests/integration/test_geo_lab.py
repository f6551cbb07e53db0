"""Geo rules with the real CLI in private namespaces: the toggle pattern.

The lab's sources are mapped to made-up countries by a small location database the test writes
(xdpguard.lab.geodb): the client's addresses (198.18.0.1, 2001:db8:0:1::1) are in QY, the second
source (.4, ::4) in QZ. Topology and echo server: test_protection.build_topo.

Mode cc on the layer-7 path: the lab of `xdpguard lab up` (HAProxy serves tcp/80 of the protective
IP; tcp/8080 and udp/7 are NAT forwards), the attacker's addresses in QY, the client's in QZ.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from cli_assert import one_line_error
from test_desired import reboot
from test_l7_lab import Env
from test_protection import CLIENT4, CLIENT6, OTHER4, OTHER6, PROT4, PROT6, Topo, build_topo
from xdpguard.lab import topology as T
from xdpguard.lab.geodb import write_location_db

pytestmark = pytest.mark.kernel

NETS = {"198.18.0.0/30": "QY", "2001:db8:0:1::/126": "QY", "198.18.0.4/30": "QZ", "2001:db8:0:1::4/126": "QZ"}


@pytest.fixture
def topo(lab, tmp_path, monkeypatch) -> Topo:
    db = write_location_db(tmp_path / "lab-location.db", NETS)
    monkeypatch.setenv("XDPGUARD_GEO_DB", str(db))  # the CLI runs with the test's environment
    t = build_topo(lab, "geo")
    t.attach()
    return t


def both(topo: Topo, src4: str = CLIENT4, src6: str = CLIENT6) -> tuple[bool, bool]:
    return topo.reaches(PROT4, src=src4), topo.reaches(PROT6, src=src6)


def test_geo_toggle_block_allow(topo: Topo, tmp_path):
    assert both(topo) == (True, True)  # arrives

    out = json.loads(topo.xg("geo", "block", "qy", "--json").stdout)
    assert out["rules"][PROT4]["countries"] == ["QY"] and not out["rules"][PROT4]["only"]
    assert both(topo) == (False, False)  # the client's country: dropped
    assert both(topo, OTHER4, OTHER6) == (True, True)  # another country passes
    assert topo.counter("drop", "geo") >= 4

    # stats --json: the top countries of the sampled traffic, dropped and passed
    st = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            topo.prot,
            "xdpguard",
            "stats",
            topo.iface,
            "--interval",
            "4",
            "--sample-every",
            "1",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    topo.lab.defer("stop stats", st.kill)
    end = time.monotonic() + 4  # probes while it samples (its start takes a while on a loaded machine)
    while st.poll() is None and time.monotonic() < end:
        topo.probe("udp", PROT4, timeout=0.3)
        topo.probe("udp", PROT4, src=OTHER4, timeout=0.3)
    out, err = st.communicate(timeout=30)
    assert st.returncode == 0, err
    countries = json.loads(out)["countries"]
    assert countries["dropped"][0]["key"] == "QY", countries
    assert countries["passed"][0]["key"] == "QZ", countries

    # Prometheus: the daemon's tally of its samples by country (a bounded label set, geo.CountryTally)
    d = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            topo.prot,
            "xdpguard",
            "run",
            "--metrics",
            "127.0.0.1:9477",
            "--duration",
            "30",
            "--no-mitigate",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    topo.lab.defer("stop the daemon", d.kill)
    scraped, end = "", time.monotonic() + 20
    want = ('action="drop",country="QY",iface="xgp0"', 'action="pass",country="QZ",iface="xgp0"')
    while not all(w in scraped for w in want) and time.monotonic() < end:
        topo.probe("udp", PROT4)
        topo.probe("udp", PROT4, src=OTHER4)
        scraped = topo.lab.run(
            topo.prot, "curl", "-s", "-m", "2", "http://127.0.0.1:9477/metrics", check=False, timeout=10
        ).stdout
        scraped = "\n".join(
            line.replace(" ", "") for line in scraped.splitlines() if line.startswith("xdpguard_country_packets_total{")
        )
    d.terminate()
    d.wait(timeout=20)
    assert all(w in scraped for w in want), scraped

    # desired state: export carries the rule, and applying the export changes nothing
    exported = topo.xg("export").stdout
    assert "geo" in exported and "QY" in exported
    f = tmp_path / "exported.toml"
    f.write_text(exported)
    assert topo.xg("diff", "-f", str(f)).stdout.strip() == "no changes"
    topo.xg("apply", "-f", str(f))  # succeeds, and changes nothing:
    assert topo.xg("diff", "-f", str(f)).stdout.strip() == "no changes"

    # bad input: one error line, exit 2, nothing changed
    one_line_error(topo.xg("geo", "block", "DE", check=False), "unknown country code 'DE'")
    one_line_error(topo.xg("geo", "block", "QZ", "--protected", "198.18.0.9", check=False), "198.18.0.9")
    assert topo.xg("export").stdout == exported
    assert both(topo, OTHER4, OTHER6) == (True, True)

    # a reboot takes the program, the pins (tries included) and the table; the file brings it all back
    reboot(topo)
    assert both(topo) == (True, True)
    topo.xg("apply", "-f", str(f))
    assert both(topo) == (False, False) and both(topo, OTHER4, OTHER6) == (True, True)
    assert topo.xg("diff", "-f", str(f)).stdout.strip() == "no changes"

    topo.xg("geo", "allow", "QY")
    assert both(topo) == (True, True)  # arrives again

    # only: the rest of the world (here QY) is dropped, for one address only
    topo.xg("geo", "only", "QZ", "--protected", PROT4)
    assert topo.reaches(PROT4) is False and topo.reaches(PROT4, src=OTHER4) is True
    assert topo.reaches(PROT6) is True  # the other address has no rule
    show = json.loads(topo.xg("geo", "show", "--json").stdout)
    assert show["rules"][PROT4]["only"] and show["rules"][PROT6] == {}
    assert "lab-location.db" in show["database"]

    topo.xg("geo", "mode", "cc", "--protected", PROT4)
    show = topo.xg("geo", "show").stdout
    assert "cc" in show and "no HTTP service there" in show and "dropped in XDP" in show
    assert topo.reaches(PROT4) is False  # no HTTP service here: cc drops in XDP like drop

    topo.xg("geo", "clear")
    assert both(topo) == (True, True)
    assert "geo" not in topo.xg("export").stdout

    # the management address (the default route's interface: xgp0, 198.18.0.2 in QY) is guarded
    topo.lab.run(topo.prot, "ip", "route", "add", "default", "via", CLIENT4)
    one_line_error(topo.xg("geo", "block", "QY", check=False), "management address", "--force")
    assert "geo" not in topo.xg("export").stdout
    topo.xg("geo", "block", "QZ")  # another country is fine
    topo.xg("geo", "block", "QY", "--force")
    assert both(topo) == (False, False)


PAGE = "200 <h1>xdpguard lab backend"  # the lab backend's page, through HAProxy (or the NAT forward)
L7_NETS = {"198.18.0.64/26": "QY", "2001:db8:0:1::40/122": "QY", "198.18.0.0/28": "QZ", "2001:db8:0:1::/124": "QZ"}


def _get(lab: Env, role: str, url: str, *args: str) -> str:
    """`HTTP_CODE BODY` of one curl from `role` (000: no answer within 3 s)."""
    p = lab.run(
        ["ip", "netns", "exec", lab.ns(role), "curl", "-s", "-m", "3", "-w", "\\n%{http_code}", *args, url],
        check=False,
        timeout=15,
    )
    body, _, code = p.stdout.rpartition("\n")
    return f"{code} {body}"


def test_geo_mode_cc_challenges_at_layer7(tmp_path: Path) -> None:
    """drop: the attacker's country gets no answer (dropped in XDP); cc: it gets HAProxy's challenge
    (302 + cookie) and, with the cookie, the page; its traffic to the NAT forwards stays dropped in
    XDP; the client's country is never challenged."""
    db = write_location_db(tmp_path / "lab-location.db", L7_NETS)
    lab = Env(f"g{os.getpid() % 10_000_000}", tmp_path / "run", tmp_path / "state")
    lab.env["XDPGUARD_GEO_DB"] = str(db)
    try:
        lab.run([*T.xdpguard_argv(), "lab", "up"], timeout=300)
        web4, web6, nat = f"http://{T.PROT4}/", f"http://[{T.PROT6}]/", f"http://{T.PROT4}:{T.NAT_HTTP_PORT}/"
        for url in (web4, web6, nat):
            assert _get(lab, "attacker", url).startswith(PAGE), url
        geo_drops = lambda: lab.counters().get(("drop", "geo"), 0)  # noqa: E731

        lab.xg("geo", "block", "QY")
        before = geo_drops()
        assert _get(lab, "attacker", web4).startswith("000")  # no answer: dropped in XDP
        assert _get(lab, "attacker", web6).startswith("000")
        assert geo_drops() > before
        assert _get(lab, "client", web4).startswith(PAGE)

        out = lab.xg("geo", "mode", "cc")
        assert "HAProxy" in out.stdout and "challenges those sources on tcp 80" in out.stdout, out.stdout
        cfg = next((tmp_path / "run" / "l7").glob("*/haproxy.cfg")).read_text()
        assert "map_ip(geo.map,00)" in cfg and "-m str QY" in cfg
        jar = str(tmp_path / "jar")
        for url in (web4, web6):
            got = _get(lab, "attacker", url, "-i", "-c", jar)
            assert got.startswith("302 "), got  # the challenge, from HAProxy
            assert re.search(r"set-cookie: xgc=\d+\.c\.[0-9a-f]{64};", got, re.I), got
            assert _get(lab, "attacker", url, "-b", jar, "-c", jar).startswith(PAGE), url  # with the cookie
            assert _get(
                lab,
                "attacker",
                url,
                "-L",
                "-b",
                str(tmp_path / "new-jar"),  # a browser: 302, then the page
                "-c",
                str(tmp_path / "new-jar"),
            ).startswith(PAGE), url
        before = geo_drops()
        assert _get(lab, "attacker", nat).startswith("000")  # a NAT forward: still dropped in XDP
        assert geo_drops() > before
        assert _get(lab, "client", web4).startswith(PAGE)  # another country: no challenge
        assert _get(lab, "client", web6).startswith(PAGE)
        show = json.loads(lab.xg("geo", "show", "--json").stdout)
        assert show["rules"][T.PROT4]["mode"] == "cc" and "challenged by HAProxy" in show["rules"][T.PROT4]["text"]

        # export → apply of the same file changes nothing (the cc rule and HAProxy's config stay)
        f = tmp_path / "exported.toml"
        f.write_text(lab.xg("export").stdout)
        assert 'mode = "cc"' in f.read_text()
        assert lab.xg("diff", "-f", str(f)).stdout.strip() == "no changes"

        # bad input: one error line, exit 2, nothing changed
        p = lab.xg("geo", "block", "DE", check=False)
        assert p.returncode == 2 and p.stderr.count("xdpguard: error:") == 1 and "'DE'" in p.stderr, p.stderr
        p = lab.xg("geo", "mode", "tarpit", check=False)
        assert p.returncode == 2 and "tarpit" in p.stderr, p.stderr
        assert lab.xg("export").stdout == f.read_text()

        lab.xg("geo", "mode", "drop")
        assert _get(lab, "attacker", web4).startswith("000")
        assert "map_ip" not in next((tmp_path / "run" / "l7").glob("*/haproxy.cfg")).read_text()
        lab.xg("geo", "clear")
        assert _get(lab, "attacker", web4).startswith(PAGE)
    finally:
        lab.run([*T.xdpguard_argv(), "lab", "down"], check=False, timeout=120)
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"xg-{lab.name}-")]
