"""The reference model (xdpguard/core/model/verdict.py) on hand-written packets; no root needed.

The model's agreement with the real program is tests/bpf/test_differential.py's job; these pin
down its reading of the pipeline on cases one can check by eye.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from xdpguard.core.kernel.abi import Kind, Reason
from xdpguard.core.model.verdict import Listed, Model, Protected, Setup, parse_addresses, parse_headers, verdict
from xdpguard.core.policy import AddressPolicy, Filter, GlobalPolicy
from xdpguard.core.prefixes import parse_prefix

P4, P6 = "198.18.0.1", "2001:db8::1"
SRC4, SRC6 = "203.0.113.7", "2001:db8:bad::7"
NO_REFL = GlobalPolicy(reflection=False, reflection_ports=frozenset())


def prot(**kw) -> dict:
    p = Protected(**kw)
    return {ipaddress.ip_address(P4): p, ipaddress.ip_address(P6): p}


def setup(g: GlobalPolicy = NO_REFL, allow=(), block=(), **kw) -> Setup:
    return Setup(g, prot(**kw), tuple(allow), tuple(block))


def v4(l4=None, src=SRC4, dst=P4, vlans=(), **ip) -> bytes:
    f = Ether()
    for t in vlans:
        f = f / (Dot1AD(vlan=1) if t == "ad" else Dot1Q(vlan=2))
    return bytes(f / IP(src=src, dst=dst, **ip) / (TCP(dport=80, flags="S") if l4 is None else l4))


def v6(l4=None, src=SRC6, dst=P6, frag=None) -> bytes:
    l3 = IPv6(src=src, dst=dst)
    if frag is not None:
        l3 = l3 / IPv6ExtHdrFragment(offset=frag)
    return bytes(Ether() / l3 / (TCP(dport=80, flags="S") if l4 is None else l4))


def entry(cidr: str, expired: bool = False) -> Listed:
    return Listed(parse_prefix(cidr).prefix, expired)


def r(s: Setup, pkt: bytes) -> tuple[str, Kind, Reason]:
    v = verdict(s, pkt)
    return v.action, v.kind, v.reason


CLEAN = ("pass", Kind.PASS, Reason.CLEAN)
BYPASS = ("pass", Kind.PASS, Reason.BYPASS)


def drop(reason: Reason):
    return "drop", Kind.DROP, reason


@pytest.mark.parametrize(
    "pkt, want",
    [
        (v4(), CLEAN),
        (v6(), CLEAN),
        (v4(dst="198.18.0.2"), BYPASS),
        (v6(dst="2001:db8::2"), BYPASS),
        (bytes(Ether() / ARP(pdst=P4)), BYPASS),
        (v4(vlans=("ad", "q")), CLEAN),
        (v4(vlans=("q", "q", "q")), BYPASS),  # three tags: not parsed
        (v4()[:33], BYPASS),  # the IPv4 header is cut: addresses unreadable
        (v4(ihl=4), drop(Reason.MALFORMED)),
        (v4(version=5), drop(Reason.MALFORMED)),
        (v4(len=19), drop(Reason.MALFORMED)),
        (v4(TCP(dataofs=4)), drop(Reason.MALFORMED)),
        (v4()[:44], drop(Reason.MALFORMED)),  # TCP cut at 10 bytes
        (v4(ICMP())[:40], drop(Reason.MALFORMED)),  # ICMP needs its 8-byte header
        (v6(UDP())[:60], drop(Reason.MALFORMED)),
        (bytes(Ether() / IP(src=SRC4, dst=P4, proto=6, frag=10) / Raw(b"ab")), CLEAN),  # non-first: no L4
    ],
)
def test_parsing(pkt, want):
    assert r(setup(), pkt) == want


def test_disabled_is_bypass():
    assert r(Setup(NO_REFL, prot(), enabled=False), v4(ihl=4)) == BYPASS


def test_lists_longest_prefix_and_expiry():
    s = setup(allow=[entry("203.0.113.0/24")], block=[entry(f"{SRC4}/32")])
    assert r(s, v4()) == ("pass", Kind.PASS, Reason.ALLOWLIST)
    assert r(setup(block=[entry("203.0.113.0/24"), entry("203.0.113.0/28", expired=True)]), v4()) == drop(
        Reason.BLOCKLIST
    )
    assert r(setup(block=[entry(f"{SRC4}/32", expired=True)]), v4()) == CLEAN
    assert r(setup(allow=[entry(f"{SRC4}/32", expired=True)], block=[entry("0.0.0.0/0")]), v4()) == drop(
        Reason.BLOCKLIST
    )
    assert r(setup(block=[entry("::/0")]), v4()) == CLEAN  # v6 entries never judge v4 sources


def test_expired_retry_bound_is_modelled():
    """Four expired nested trie entries hide a live /24 from one lookup (XG_EXPIRED_RETRY); the
    lookup deletes them, so the next packet is blocked."""
    nested = [entry(f"203.0.113.0/{n}", expired=True) for n in (26, 27, 28, 29)]
    m = Model(setup(block=[entry("203.0.113.0/24"), *nested]))
    assert m.verdict(v4()).reason == Reason.CLEAN
    assert m.verdict(v4()).reason == Reason.BLOCKLIST


def test_steps():
    assert r(setup(NO_REFL), v4(flags="MF")) == CLEAN
    frag = GlobalPolicy(drop_fragments=True, reflection=False)
    assert r(setup(frag), v4(flags="MF")) == drop(Reason.FRAGMENT)
    assert r(setup(frag), v6(frag=0)) == drop(Reason.FRAGMENT)
    blocked = AddressPolicy(frozenset({"icmp", "other"}))
    assert r(setup(policy=blocked), v6(ICMPv6EchoRequest())) == drop(Reason.PROTOCOL)
    assert r(setup(policy=blocked), v4(Raw(b"x" * 8), proto=47)) == drop(Reason.PROTOCOL)
    assert r(setup(policy=blocked), v4()) == CLEAN
    ports = frozenset({("tcp", 80)})
    assert r(setup(open_ports=ports), v4()) == CLEAN
    assert r(setup(open_ports=ports), v4(TCP(dport=81))) == drop(Reason.PORT)
    assert r(setup(open_ports=ports), v4(UDP(dport=80))) == drop(Reason.PORT)
    assert r(setup(open_ports=ports), v4(ICMP())) == CLEAN
    refl = GlobalPolicy(reflection_ports=frozenset({123}))
    assert r(setup(refl), v4(UDP(sport=123, dport=80))) == drop(Reason.REFLECTION)
    assert r(setup(refl), v4(TCP(sport=123, dport=80))) == CLEAN


def test_filters():
    evil = Filter(payload=b"EVIL")
    g = GlobalPolicy(reflection=False, filters=(evil,))
    assert r(setup(g), v4(UDP() / Raw(b"EVIL"))) == drop(Reason.FEATURE)
    assert r(setup(g), v4(UDP() / Raw(b"EVI"))) == CLEAN  # past the end never matches
    first_pass = GlobalPolicy(reflection=False, filters=(Filter(action="pass", proto="udp"), evil))
    assert r(setup(first_pass), v4(UDP() / Raw(b"EVIL"))) == CLEAN
    l3 = GlobalPolicy(reflection=False, filters=(Filter(payload=b"\x07", payload_base="l3", payload_off=8),))
    assert r(setup(l3), v4(ttl=7)) == drop(Reason.FEATURE)
    icmp = GlobalPolicy(reflection=False, filters=(Filter(proto="icmp"),))
    assert r(setup(icmp), v6(ICMPv6EchoRequest())) == drop(Reason.FEATURE)
    ports = GlobalPolicy(reflection=False, filters=(Filter(dport=(0, 100)),))
    assert r(setup(ports), v4(ICMP())) == CLEAN


def test_drop_ban_filter_bans_the_source():
    g = GlobalPolicy(reflection=False, filters=(Filter(action="drop-ban", payload=b"EVIL", ban_s=60),))
    m = Model(setup(g))
    assert m.verdict(v4(UDP() / Raw(b"EVIL"))).reason == Reason.FEATURE
    assert m.verdict(v4(UDP() / Raw(b"fine"))).reason == Reason.BANNED
    assert m.verdict(v4(UDP() / Raw(b"fine"), src="198.51.100.1")).reason == Reason.CLEAN


def test_monitor_mask():
    g = GlobalPolicy(reflection=False, monitor_mask=1 << Reason.MALFORMED)
    assert r(setup(g), v4(ihl=4)) == ("pass", Kind.WOULD_DROP, Reason.MALFORMED)
    assert r(setup(g, block=[entry(SRC4)]), v4()) == drop(Reason.BLOCKLIST)


def test_offsets():
    pkt = v4(UDP() / Raw(b"xyz"), vlans=("q",), options=b"\x01\x01\x01\x01")
    a = parse_addresses(pkt)
    h = parse_headers(pkt, a)
    assert (a.l3_off, h.l4_off, h.payload_off) == (18, 18 + 24, 18 + 24 + 8)
    assert parse_headers(v6(Raw(b"x" * 8), frag=3), parse_addresses(v6(Raw(b"x" * 8), frag=3))).has_l4 is False
