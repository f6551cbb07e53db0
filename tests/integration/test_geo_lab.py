"""Geo rules with the real CLI in private namespaces: the toggle pattern.

The lab's sources are mapped to made-up countries by a small location database the test writes
(xdpguard.lab.geodb): the client's addresses (198.18.0.1, 2001:db8:0:1::1) are in QY, the second
source (.4, ::4) in QZ. Topology and echo server: test_protection.build_topo.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from cli_assert import one_line_error
from test_desired import reboot
from test_protection import CLIENT4, CLIENT6, OTHER4, OTHER6, PROT4, PROT6, Topo, build_topo
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
    st = subprocess.Popen(["ip", "netns", "exec", topo.prot, "xdpguard", "stats", topo.iface, "--interval", "4",
                           "--sample-every", "1", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    topo.lab.defer("stop stats", st.kill)
    time.sleep(0.8)
    topo.probe("udp", PROT4)
    topo.probe("udp", PROT4, src=OTHER4)
    out, err = st.communicate(timeout=30)
    assert st.returncode == 0, err
    countries = json.loads(out)["countries"]
    assert countries["dropped"][0]["key"] == "QY", countries
    assert countries["passed"][0]["key"] == "QZ", countries

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
    assert "cc" in show and "dropped in XDP" in show
    assert topo.reaches(PROT4) is False  # cc falls back to drop until the layer-7 wiring

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
