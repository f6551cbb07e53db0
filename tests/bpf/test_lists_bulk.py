"""Bulk list writes (what `block load` uses): refresh keeps hit counts, overflow changes nothing."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from xdpguard.core.kernel.abi import MapName
from xdpguard.core.errors import UserError
from xdpguard.core.prefixes import parse_prefix
from xdpguard.core.guard import Guard
from xdpguard.core.testrun import TestBed

pytestmark = pytest.mark.kernel

PROT = "198.51.100.10"


@pytest.fixture(scope="module")
def small():
    """A program whose list maps hold only 64 entries each."""
    with TestBed(defines={"XG_LIST_MAX": 64}) as bed:
        bed.protect(PROT)
        yield bed


def _prefixes(texts):
    return [parse_prefix(t).prefix for t in texts]


def _entries(g: Guard):
    """prefix → (hits, expires_ns) straight from the maps."""
    out = {}
    for fam, m in g.list_maps("block"):
        for k, v in m.items():
            out[(fam, bytes(k.addr), getattr(k, "prefixlen", None))] = (v.hits, v.expires_ns)
    return out


def _hits(g: Guard):
    return {e.prefix: e.hits for e in g.list_entries("block")}


def test_refresh_keeps_hits_and_overflow_is_all_or_nothing(small: TestBed):
    g = Guard(None, None, small.maps)
    first = [f"203.0.113.{i}" for i in range(40)] + ["198.18.0.0/24", "198.18.1.0/24"]
    assert g.upsert("block", _prefixes(first), 0) == (42, 0)
    pkt = bytes(Ether() / IP(src="203.0.113.5", dst=PROT) / UDP(dport=53))
    small.run(pkt, repeat=7)
    pkt2 = bytes(Ether() / IP(src="198.18.0.9", dst=PROT) / UDP(dport=53))
    small.run(pkt2, repeat=3)
    before = _hits(g)
    assert before["203.0.113.5/32"] == 7 and before["198.18.0.0/24"] == 3

    # Refresh (same prefixes, a new expiry) plus two new ones: hits survive.
    far = 10**18
    assert g.upsert("block", _prefixes(first + ["203.0.113.200", "198.18.2.0/24"]), far) == (2, 42)
    hits = _hits(g)
    assert hits["203.0.113.5/32"] == 7 and hits["198.18.0.0/24"] == 3 and len(hits) == 44
    after = _entries(g)
    assert all(exp == far for _, exp in after.values())

    # 64 host entries max: 30 more do not fit. Nothing may change, not even the refreshed expiry.
    too_many = [f"192.0.2.{i}" for i in range(30)] + ["203.0.113.5"]
    with pytest.raises(UserError, match="full"):
        g.upsert("block", _prefixes(too_many), 0)
    assert _entries(g) == after
    assert len(small.maps[MapName.BLOCK4H]) == 41
