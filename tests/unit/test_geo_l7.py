"""Geo rules in mode cc on the layer-7 path: the HAProxy lines (goldens in tests/unit/golden/geo/,
each also checked with `haproxy -c` together with its map file), the map file from the
database (longest match, as the tries), the interface record's cc entries and what the L7 engine
reads from them, and the notes (mode cc without an HTTP service is allowed: dropped in XDP).
Regenerate the goldens with XDPGUARD_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from xdpguard.core import geo, state
from xdpguard.core.model.desired import AddressSpec
from xdpguard.core.prefixes import parse_address
from xdpguard.core.l7 import haproxy_config as hc
from xdpguard.core.l7.spec import HttpService
from xdpguard.lab.geodb import write_location_db

from test_l7_haproxy_config import RUN_DIR, SECRET, _check

GOLDEN_DIR = Path(__file__).parent / "golden" / "geo"
UPDATE_GOLDEN = os.environ.get("XDPGUARD_UPDATE_GOLDEN") == "1"
# QY holds a /18 with a QZ /20 nested in it: the longest match must give QZ there
NETS = {"198.18.64.0/18": "QY", "2001:db8:a::/48": "QY", "198.18.128.0/18": "QZ", "198.18.96.0/20": "QZ"}


def _svc(**kw) -> HttpService:
    base = {"name": "web", "listen": ["198.18.0.1"], "backends": ["198.18.1.2:80"], "exempt": ["/api/"]}
    return HttpService(**{**base, **kw})


CASES = {
    "block_one_address": (lambda: [_svc()], {"198.18.0.1": geo.GeoSpec(frozenset({"QY"}), False, "cc")}),
    "only_second_listen_address": (
        lambda: [_svc(listen=["198.18.0.1", "2001:db8:0:1::1"], level="emergency")],
        {"2001:db8:0:1::1": geo.GeoSpec(frozenset({"QZ", "QY"}), True, "cc")},
    ),
}


@pytest.fixture
def testdb(tmp_path, monkeypatch):
    p = write_location_db(tmp_path / "lab.db", NETS)
    monkeypatch.setenv(geo.DB_ENV, str(p))
    return p


def _render(name: str, geo_map: str = "") -> hc.Rendered:
    services, rules = CASES[name]
    return hc.render(services(), run_dir=RUN_DIR, secret=SECRET, geo_rules=rules, geo_map=geo_map)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    path = GOLDEN_DIR / f"{name}.cfg"
    text = _render(name).text
    if UPDATE_GOLDEN:
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with XDPGUARD_UPDATE_GOLDEN=1"
    assert path.read_text() == text, f"{path.name} differs; if intended, rerun with XDPGUARD_UPDATE_GOLDEN=1"


def test_no_stale_goldens() -> None:
    assert {p.stem for p in GOLDEN_DIR.glob("*.cfg")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_haproxy_accepts_it_with_its_map(name: str, testdb, tmp_path: Path) -> None:
    geo_map = geo.l7_map(geo.GeoDB.open(), ["QY", "QZ"])
    r = _render(name, geo_map)
    assert r.files[hc.GEO_MAP] == geo_map
    p = _check(r, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_haproxy_refuses_it_without_the_map(tmp_path: Path) -> None:
    """The check above means something: the map file is read at load (a missing one is an error)."""
    r = _render("block_one_address")
    p = _check(hc.Rendered(r.text, {k: v for k, v in r.files.items() if k != hc.GEO_MAP}), tmp_path)
    assert p.returncode != 0 and hc.GEO_MAP in p.stdout + p.stderr


def test_the_geo_lines() -> None:
    text = _render("block_one_address").text
    assert "http-request set-var(txn.xg_geo) src,map_ip(geo.map,00)" in text
    assert "acl xg_geo0 var(txn.xg_geo) -m str QY" in text
    assert "http-request set-var(txn.xg_chal) int(1) if xg_geo0 !xg_exempt" in text
    # before the challenge is issued (the lines that use xg_chal come after)
    assert text.index("if xg_geo0 !xg_exempt") < text.index("http-request return status 302")
    text = _render("only_second_listen_address").text
    assert "acl xg_geo1 var(txn.xg_geo) -m str QY QZ" in text
    assert "if { dst 2001:db8:0:1::1 } !xg_geo1 !xg_exempt" in text and "xg_geo0" not in text


def test_no_geo_lines_without_a_cc_rule() -> None:
    services, _ = CASES["block_one_address"]
    plain = hc.render(services(), run_dir=RUN_DIR, secret=SECRET)
    for rules in (
        {},
        {"198.18.0.1": geo.GeoSpec(frozenset({"QY"}))},  # mode drop: XDP's alone
        {"198.18.0.9": geo.GeoSpec(frozenset({"QY"}), False, "cc")},
    ):  # another address
        r = hc.render(services(), run_dir=RUN_DIR, secret=SECRET, geo_rules=rules, geo_map="x")
        assert r == plain and hc.GEO_MAP not in r.files and "xg_geo" not in r.text


def test_map_is_the_longest_match_data(testdb) -> None:
    text = geo.l7_map(geo.GeoDB.open(), ["QY", "QZ"])
    assert text.splitlines() == ["198.18.64.0/18 QY", "198.18.96.0/20 QZ", "198.18.128.0/18 QZ", "2001:db8:a::/48 QY"]
    assert geo.l7_map(geo.GeoDB.open(), []) == ""


class FakeGuard:
    def __init__(self):
        self.rules, self.loads = {}, 0

    def geo_tries_empty(self):
        return self.loads == 0

    def load_geo_tries(self, db, codes):
        self.loads += 1

    def write_geo(self, addr, spec):
        self.rules[str(addr)] = spec

    def clear_geo_tries(self):
        self.loads = 0


def _addr(a, g=None, ports=()):
    spec = AddressSpec(parse_address(a), geo=g)
    return (
        spec
        if not ports
        else AddressSpec(spec.address, geo=g, http=tuple(_svc(name=f"s{p}", listen=[a], port=p) for p in ports))
    )


def test_the_record_lists_the_cc_rules_and_the_engine_reads_them(testdb) -> None:
    g = FakeGuard()
    addrs = [
        _addr("198.18.0.1", geo.GeoSpec(frozenset({"QY"}), False, "cc"), ports=(80, 443)),
        _addr("198.18.0.2", geo.GeoSpec(frozenset({"QZ"}), True, "cc")),
        _addr("198.18.0.3", geo.GeoSpec(frozenset({"QZ"}))),
    ]
    rec, notes = geo.realise(g, addrs, {})
    assert rec["cc"] == {
        "198.18.0.1": {"countries": ["QY"], "only": False},
        "198.18.0.2": {"countries": ["QZ"], "only": True},
    }
    assert rec["countries"] == ["QY", "QZ"] and g.loads == 1
    assert notes == [
        "geo mode cc on 198.18.0.1: HAProxy challenges those sources on tcp 80, 443; "
        "the rest of their traffic is dropped in XDP",
        "geo mode cc on 198.18.0.2: no HTTP service there, so those sources are dropped in XDP "
        "(the challenge applies once HAProxy serves the address)",
    ]
    st = {state.GEO.key: rec}
    assert state.shape_problem(st, state.STATE_SHAPE) is None  # the record's checked shape
    assert "only" in state.shape_problem({state.GEO.key: {"cc": {"198.18.0.1": {"only": "yes"}}}}, state.STATE_SHAPE)
    # switching a mode does not reload the tries (the countries did not change)
    addrs[2] = _addr("198.18.0.3", geo.GeoSpec(frozenset({"QZ"}), False, "cc"))
    rec2, _ = geo.realise(g, addrs, st)
    assert g.loads == 1 and "198.18.0.3" in rec2["cc"]
    # what the L7 engine renders: the rules of the listen addresses it serves, and their map
    rules, geo_map = geo.l7_challenges(
        [ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.9")], {"xgp0": st}
    )
    assert rules == {"198.18.0.1": geo.GeoSpec(frozenset({"QY"}), False, "cc")}
    assert "198.18.64.0/18 QY" in geo_map and "198.18.96.0/20 QZ" in geo_map  # the nested QZ keeps its country
    assert geo.l7_challenges([ipaddress.ip_address("198.18.0.9")], {"xgp0": st}) == ({}, "")
    # back to drop everywhere: no cc entry left
    rec3, notes3 = geo.realise(g, [_addr("198.18.0.1", geo.GeoSpec(frozenset({"QY"})))], st)
    assert "cc" not in rec3 and notes3 == []


def test_describe_says_what_cc_does() -> None:
    assert "challenged by HAProxy" in geo.GeoSpec(frozenset({"QY"}), False, "cc").describe()
