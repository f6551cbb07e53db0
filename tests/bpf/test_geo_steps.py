"""Region (geo) blocking in the real program (BPF_PROG_TEST_RUN): geo.h after the lists.

The tries are filled through geo.load_tries from a fake database (TEST-NET and benchmark
prefixes mapped to made-up country codes); the address's rule through geo.write_spec."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xdpguard.core.kernel import abi
from xdpguard.core import geo, guard, policy
from xdpguard.core.kernel.abi import MapName, Reason
from xdpguard.core.testrun import TestBed

pytestmark = pytest.mark.kernel

PROT_A, PROT_B, PROT6 = "198.18.0.1", "198.18.0.2", "2001:db8::1"
NETS = [
    ("198.18.64.0/18", "XA"),
    ("198.18.128.0/18", "XB"),
    ("198.18.160.0/20", "XA"),  # nested: XA wins inside XB
    ("2001:db8:a::/48", "XA"),
    ("2001:db8:b::/48", "XB"),
]
IN_XA, IN_XB, IN_XA_NESTED, UNKNOWN = "198.18.64.9", "198.18.130.9", "198.18.161.9", "203.0.113.9"
IN_XA6, IN_XB6 = "2001:db8:a::9", "2001:db8:b::9"


class FakeDB:
    def networks(self, codes):
        out = []
        for cidr, cc in NETS:
            if cc in codes:
                n = ipaddress.ip_network(cidr)
                out.append((n.version, n.network_address.packed, n.prefixlen, cc))
        return out


@pytest.fixture(scope="module")
def bed():
    with TestBed() as b:
        b.protect(PROT_A, PROT_B, PROT6)
        assert guard.load_tries(b.maps, FakeDB(), ["XA", "XB"]) == (3, 2)
        yield b


@pytest.fixture(autouse=True)
def no_rules(bed):
    yield
    for a in (PROT_A, PROT_B, PROT6):
        guard.write_spec(bed.maps, ipaddress.ip_address(a), None)
    for which in (MapName.ALLOW4H, MapName.PORTS):
        for k in list(bed.maps[which].keys()):
            bed.maps[which].delete(k)
    bed.configure()


def pkt(src, dst, udp=False, dport=None):
    ip = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
    l4 = UDP(sport=4000, dport=dport or 53) if udp else TCP(sport=4000, dport=dport or 80, flags="S")
    return bytes(Ether() / ip / l4)


def rule(bed, addr, countries, only=False, mode="drop"):
    guard.write_spec(bed.maps, ipaddress.ip_address(addr), geo.GeoSpec(frozenset(countries), only, mode))


def open_port(bed, addr, proto, port, by):
    bed.maps[MapName.PORTS].set(policy.port_key(ipaddress.ip_address(addr), proto, port), abi.PortValue(by))


def test_blocked_country_dropped_with_reason_geo_other_address_unaffected(bed):
    assert bed.verdict(pkt(IN_XA, PROT_A)).reason == Reason.CLEAN  # no rule yet: one flag test
    rule(bed, PROT_A, {"XA"})
    v = bed.verdict(pkt(IN_XA, PROT_A))
    assert (v.action, v.reason) == ("drop", Reason.GEO)
    assert bed.verdict(pkt(IN_XA_NESTED, PROT_A)).reason == Reason.GEO  # the longest match's country
    assert bed.verdict(pkt(IN_XB, PROT_A)).reason == Reason.CLEAN
    assert bed.verdict(pkt(UNKNOWN, PROT_A)).reason == Reason.CLEAN
    v = bed.verdict(pkt(IN_XA, PROT_B))  # another address: no rule
    assert (v.action, v.reason) == ("pass", Reason.CLEAN)
    assert bed.verdict(pkt(IN_XA, PROT_A, udp=True)).reason == Reason.GEO


def test_allowlisted_source_is_never_geo_dropped(bed):
    rule(bed, PROT_A, {"XA"})
    bed.add("allow", f"{IN_XA}/32")
    v = bed.verdict(pkt(IN_XA, PROT_A))
    assert (v.action, v.reason) == ("pass", Reason.ALLOWLIST)
    assert bed.verdict(pkt("198.18.64.10", PROT_A)).reason == Reason.GEO  # its neighbour is not allowlisted


def test_only_rule_drops_the_rest_and_unknown_sources(bed):
    rule(bed, PROT_A, {"XB"}, only=True)
    assert bed.verdict(pkt(IN_XB, PROT_A)).reason == Reason.CLEAN
    assert bed.verdict(pkt(IN_XA, PROT_A)).reason == Reason.GEO
    assert bed.verdict(pkt(IN_XA_NESTED, PROT_A)).reason == Reason.GEO
    assert bed.verdict(pkt(UNKNOWN, PROT_A)).reason == Reason.GEO


def test_ipv6(bed):
    rule(bed, PROT6, {"XB"})
    assert bed.verdict(pkt(IN_XB6, PROT6)).reason == Reason.GEO
    assert bed.verdict(pkt(IN_XA6, PROT6)).reason == Reason.CLEAN


def test_policy_rewrite_keeps_the_geo_flag_and_read_back(bed):
    a = ipaddress.ip_address(PROT_A)
    rule(bed, PROT_A, {"XA", "XB"})
    pol = guard.read_address_policy(bed.maps, a)
    guard.write_address_policy(bed.maps, a, pol)  # what `limit set`, `proto block` do
    assert bed.verdict(pkt(IN_XA, PROT_A)).reason == Reason.GEO
    prot = bed.maps[MapName.PROT4].get(policy.prot_key(a))
    assert guard.read_spec(bed.maps, prot) == geo.GeoSpec(frozenset({"XA", "XB"}))
    guard.write_spec(bed.maps, a, None)
    assert bed.verdict(pkt(IN_XA, PROT_A)).reason == Reason.CLEAN
    assert guard.read_spec(bed.maps, bed.maps[MapName.PROT4].get(policy.prot_key(a))) is None


def test_monitor_mode_counts_would_drop(bed):
    rule(bed, PROT_A, {"XA"})
    bed.configure(monitor_mask=1 << Reason.GEO)
    v = bed.verdict(pkt(IN_XA, PROT_A))
    assert (v.action, v.reason, v.kind.label) == ("pass", Reason.GEO, "would_drop")


def test_reload_keeps_only_the_wanted_countries(bed):
    try:
        assert guard.load_tries(bed.maps, FakeDB(), ["XB"]) == (1, 1)
        rule(bed, PROT_A, {"XA"})
        assert bed.verdict(pkt(IN_XA, PROT_A)).reason == Reason.CLEAN  # XA's prefixes are gone
    finally:
        guard.load_tries(bed.maps, FakeDB(), ["XA", "XB"])


def test_mode_cc_passes_tcp_to_the_http_ports_only(bed):
    """HAProxy challenges those sources on its ports (l7/haproxy_config.py); the rest is dropped."""
    rule(bed, PROT_A, {"XA"}, mode="cc")
    assert bed.verdict(pkt(IN_XA, PROT_A)).reason == Reason.GEO  # no HTTP service: cc drops like drop
    open_port(bed, PROT_A, "tcp", 80, abi.PORT_BY_HTTP)
    open_port(bed, PROT_A, "tcp", 8080, abi.PORT_BY_FORWARD)
    open_port(bed, PROT_A, "udp", 80, abi.PORT_BY_OPERATOR | abi.PORT_BY_HTTP)  # HAProxy serves no UDP
    assert bed.verdict(pkt(IN_XA, PROT_A)).reason == Reason.CLEAN  # on to HAProxy's challenge
    assert bed.verdict(pkt(IN_XA, PROT_A, dport=8080)).reason == Reason.GEO  # a NAT forward: dropped
    assert bed.verdict(pkt(IN_XA, PROT_A, udp=True, dport=80)).reason == Reason.GEO
    assert bed.verdict(pkt(IN_XA, PROT_A, dport=81)).reason == Reason.GEO
    assert bed.verdict(pkt(IN_XB, PROT_A, dport=8080)).reason == Reason.CLEAN  # another country
    rule(bed, PROT_A, {"XA"})  # mode drop: the HTTP port too
    assert bed.verdict(pkt(IN_XA, PROT_A)).reason == Reason.GEO
    rule(bed, PROT_A, {"XB"}, only=True, mode="cc")  # only: the rest of the world is challenged
    assert bed.verdict(pkt(UNKNOWN, PROT_A)).reason == Reason.CLEAN
    assert bed.verdict(pkt(UNKNOWN, PROT_A, dport=8080)).reason == Reason.GEO


def test_mode_cc_ipv6(bed):
    rule(bed, PROT6, {"XB"}, mode="cc")
    open_port(bed, PROT6, "tcp", 443, abi.PORT_BY_HTTP)
    assert bed.verdict(pkt(IN_XB6, PROT6, dport=443)).reason == Reason.CLEAN
    assert bed.verdict(pkt(IN_XB6, PROT6, dport=80)).reason == Reason.GEO
