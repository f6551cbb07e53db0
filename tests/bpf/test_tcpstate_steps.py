"""TCP state validation through BPF_PROG_TEST_RUN: the tc egress recorder (SCHED_CLS) and the
XDP step on one TestBed, table-driven; plus the IPv6 option-header walk.

Each case: frames leaving the protected interface (replies), then one inbound packet and its
expected verdict. Time-dependent parts (expiry, grace) write the tables directly.
"""

from __future__ import annotations

import ctypes
import ipaddress
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import Ether

from xdpguard.core.kernel import abi
from xdpguard.core.kernel.abi import MapName, Reason
from xdpguard.core.guard import Guard
from xdpguard.core.testrun import TestBed

pytestmark = pytest.mark.kernel

PROT, PROT6, CLIENT, CLIENT6 = "198.18.0.1", "2001:db8::1", "203.0.113.7", "2001:db8:bad::7"
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def out(flags: str, sport=80, dport=40000, src=PROT, dst=CLIENT) -> bytes:
    ip = IP(src=src, dst=dst) if ":" not in src else IPv6(src=src, dst=dst)
    return bytes(E / ip / TCP(sport=sport, dport=dport, flags=flags))


def inb(flags: str, sport=40000, dport=80, src=CLIENT, dst=PROT) -> bytes:
    ip = IP(src=src, dst=dst) if ":" not in src else IPv6(src=src, dst=dst)
    return bytes(E / ip / TCP(sport=sport, dport=dport, flags=flags))


@pytest.fixture(scope="module")
def bed():
    b = TestBed({"XG_FLOWS_MAX": 1024, "XG_EMBRYOS_MAX": 1024, "XG_LIST_MAX": 1024, "XG_PORTS_MAX": 1024})
    try:
        b.protect(PROT, PROT6)
        g = Guard(None, None, b.maps)
        for a in (PROT, PROT6):
            g.change_ports([ipaddress.ip_address(a)], "tcp", 80, 80, abi.PORT_BY_FORWARD, True)
        yield b
    finally:
        b.close()


@pytest.fixture
def fresh(bed):
    for name in (MapName.FLOWS, MapName.EMBRYOS):
        for k in list(bed.maps[name].keys()):
            bed.maps[name].delete(k)
    bed.tcpstate(True)
    return bed


CASES = [
    # (description, egress frames, inbound packet, expected reason)
    ("ACK of no connection", [], inb("A"), Reason.TCPSTATE),
    ("RST of no connection", [], inb("R"), Reason.TCPSTATE),
    ("FIN of no connection", [], inb("F"), Reason.TCPSTATE),
    ("Xmas of no connection", [], inb("FPU"), Reason.TCPSTATE),
    ("SYN-ACK of no connection (reflection)", [], inb("SA"), Reason.TCPSTATE),
    ("a SYN is not judged here", [], inb("S"), Reason.CLEAN),
    ("handshake ACK after our SYN-ACK", [out("SA")], inb("A"), Reason.CLEAN),
    ("client RST to our SYN-ACK", [out("SA")], inb("R"), Reason.CLEAN),
    ("data after our ACK", [out("SA"), out("A")], inb("PA"), Reason.CLEAN),
    ("client FIN after our FIN", [out("A"), out("FA")], inb("FA"), Reason.CLEAN),
    ("after our RST (within its short timeout)", [out("A"), out("R")], inb("A"), Reason.CLEAN),
    ("other client port", [out("A")], inb("A", sport=40001), Reason.TCPSTATE),
    ("other client address", [out("A")], inb("A", src="203.0.113.8"), Reason.TCPSTATE),
    ("reply from an unprotected address records nothing", [out("A", src="198.18.0.2")], inb("A"), Reason.TCPSTATE),
    ("our own outbound SYN admits the SYN-ACK", [out("S", sport=80)], inb("SA"), Reason.CLEAN),
    ("IPv6 handshake", [out("SA", src=PROT6, dst=CLIENT6)], inb("A", src=CLIENT6, dst=PROT6), Reason.CLEAN),
    ("IPv6 ACK of no connection", [], inb("A", src=CLIENT6, dst=PROT6), Reason.TCPSTATE),
    ("closed port: the port policy answers first", [], inb("A", dport=81), Reason.PORT),
]


@pytest.mark.parametrize("desc,egress,pkt,want", CASES, ids=[c[0] for c in CASES])
def test_tcpstate_cases(fresh, desc, egress, pkt, want):
    for f in egress:
        assert fresh.egress(f)[0] == 0  # TC_ACT_OK: the recorder never drops
    v = fresh.verdict(pkt)
    assert v.reason == want, desc
    assert v.action == ("drop" if want.is_drop else "pass")


def _entry(bed, table, src=PROT, dst=CLIENT, sport=80, dport=40000):
    k = abi.FlowKey()
    ctypes.memmove(ctypes.addressof(k), ipaddress.ip_address(dst).packed, 4 if ":" not in dst else 16)
    ctypes.memmove(ctypes.addressof(k) + 16, ipaddress.ip_address(src).packed, 4 if ":" not in src else 16)
    k.client_port, k.prot_port, k.family = dport, sport, 4 if ":" not in src else 6
    return bed.maps[table].get(k), k


def test_states_and_timeouts(fresh):
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    fresh.egress(out("SA"))
    e, _ = _entry(fresh, MapName.EMBRYOS)
    assert e.state == abi.FLOW_SYN and abs(e.expires_ns - now - abi.TS_SYN_TIMEOUT_S * 10**9) < 2 * 10**9
    assert _entry(fresh, MapName.FLOWS)[0] is None  # half-open connections stay out of the main table
    fresh.egress(out("A"))
    f, _ = _entry(fresh, MapName.FLOWS)
    assert f.state == abi.FLOW_EST and abs(f.expires_ns - now - abi.TS_EST_TIMEOUT_S * 10**9) < 2 * 10**9
    assert _entry(fresh, MapName.EMBRYOS)[0] is None  # promoted
    fresh.egress(out("FA"))
    assert _entry(fresh, MapName.FLOWS)[0].state == abi.FLOW_FIN
    fresh.egress(out("A"))
    assert _entry(fresh, MapName.FLOWS)[0].state == abi.FLOW_FIN  # sticky
    fresh.egress(out("R"))
    f, _ = _entry(fresh, MapName.FLOWS)
    assert f.state == abi.FLOW_RST and f.expires_ns - now < (abi.TS_RST_TIMEOUT_S + 2) * 10**9


def test_expired_entry_drops_and_grace_admits(fresh):
    fresh.egress(out("A"))
    f, k = _entry(fresh, MapName.FLOWS)
    fresh.maps[MapName.FLOWS].set(k, abi.Flow(1, abi.FLOW_EST, 0))
    assert fresh.verdict(inb("A")).reason == Reason.TCPSTATE
    fresh.tcpstate(True, grace_until_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 10**10)
    assert fresh.verdict(inb("A", sport=50000)).reason == Reason.CLEAN
    fresh.tcpstate(True, grace_until_ns=0)
    assert fresh.verdict(inb("A", sport=50000)).reason == Reason.TCPSTATE


def test_switches(fresh):
    fresh.tcpstate(False)  # recorder not attached: never validate
    assert fresh.verdict(inb("A")).reason == Reason.CLEAN
    fresh.tcpstate(True)
    pk = abi.Addr4.from_buffer_copy(ipaddress.ip_address(PROT).packed)
    cur = fresh.maps[MapName.PROT4].get(pk)
    fresh.maps[MapName.PROT4].set(pk, abi.Protected(cur.flags | abi.PROT_TCPSTATE_OFF, cur.lim, cur.syn))
    try:
        assert fresh.verdict(inb("A")).reason == Reason.CLEAN
    finally:
        fresh.maps[MapName.PROT4].set(pk, cur)
    assert fresh.verdict(inb("A")).reason == Reason.TCPSTATE


def test_enforced_agrees_with_the_data_path(fresh):
    """Guard.tcpstate_enforced (what the mitigation engine trusts: a clean ACK is an established
    connection's) says yes exactly when XDP drops an ACK of no connection."""
    addr = ipaddress.ip_address(PROT)
    pk = abi.Addr4.from_buffer_copy(addr.packed)
    cur = fresh.maps[MapName.PROT4].get(pk)

    def both() -> tuple[bool, bool]:
        return fresh.tcpstate_enforced(addr), fresh.verdict(inb("A", sport=51000)).reason == Reason.TCPSTATE

    try:
        assert both() == (True, True)
        fresh.tcpstate(True, grace_until_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 10**10)
        assert both() == (False, False)
        fresh.tcpstate(False)
        assert both() == (False, False)
        fresh.tcpstate(True)
        fresh.maps[MapName.PROT4].set(pk, abi.Protected(cur.flags | abi.PROT_TCPSTATE_OFF, cur.lim, cur.syn))
        assert both() == (False, False)
        fresh.maps[MapName.PROT4].set(pk, abi.Protected(cur.flags & ~abi.PROT_PORT_POLICY, cur.lim, cur.syn))
        assert fresh.tcpstate_enforced(addr) is False
        assert fresh.tcpstate_enforced(ipaddress.ip_address("198.18.9.9")) is False  # not protected
    finally:
        fresh.maps[MapName.PROT4].set(pk, cur)
        fresh.tcpstate(True)
    assert both() == (True, True)


def test_monitor_counts_would_drop(fresh):
    fresh.configure(monitor_mask=1 << Reason.TCPSTATE)
    fresh.tcpstate(True)
    try:
        v = fresh.verdict(inb("A"))
        assert (v.action, v.kind, v.reason) == ("pass", abi.Kind.WOULD_DROP, Reason.TCPSTATE)
    finally:
        fresh.configure()
        fresh.tcpstate(True)


# ---- IPv6 option headers: walked, so the port policy sees the real upper layer ----


def v6(*ext, dport=81, flags="S") -> bytes:
    pkt = IPv6(src=CLIENT6, dst=PROT6)
    for h in ext:
        pkt = pkt / h
    return bytes(E / pkt / TCP(sport=40000, dport=dport, flags=flags))


@pytest.mark.parametrize(
    "ext",
    [
        (IPv6ExtHdrDestOpt(),),
        (IPv6ExtHdrHopByHop(),),
        (IPv6ExtHdrRouting(),),
        (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt()),
        (IPv6ExtHdrHopByHop(), IPv6ExtHdrFragment(offset=0, m=1), IPv6ExtHdrDestOpt()),
        (IPv6ExtHdrFragment(offset=0, m=0),),
    ],
    ids=["dest", "hbh", "routing", "chain4", "hbh-frag-dest", "atomic-frag"],
)
def test_ipv6_options_walked(fresh, ext):
    assert fresh.verdict(v6(*ext, dport=81)).reason == Reason.PORT  # a SYN to a closed port: dropped
    assert fresh.verdict(v6(*ext, dport=80)).reason == Reason.CLEAN
    assert fresh.verdict(v6(*ext, dport=80, flags="A")).reason == Reason.TCPSTATE


def test_ipv6_later_fragment_behind_options(fresh):
    later = v6(IPv6ExtHdrHopByHop(), IPv6ExtHdrFragment(offset=100, m=0, nh=6), dport=81)
    assert fresh.verdict(later).reason == Reason.CLEAN  # no L4 header: port policy and TCP state skip it


def test_ipv6_chain_too_long_is_malformed(fresh):
    assert fresh.verdict(v6(*[IPv6ExtHdrDestOpt() for _ in range(abi.IPV6_EXT_MAX)], dport=80)).reason == Reason.CLEAN
    assert (
        fresh.verdict(v6(*[IPv6ExtHdrDestOpt() for _ in range(abi.IPV6_EXT_MAX + 1)], dport=80)).reason
        == Reason.MALFORMED
    )
    truncated = v6(IPv6ExtHdrDestOpt(len=4), dport=80)[: 14 + 40 + 16]
    assert fresh.verdict(truncated).reason == Reason.MALFORMED
