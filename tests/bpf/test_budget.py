"""Admission per service for unverified UDP (budget.h, issue 25 item 2) through BPF_PROG_TEST_RUN.

A flood from never-seen sources at a UDP service is bounded by one shared bucket of the service
(reason `budget`), before any per-source state; verified sources (UDP-verified in peacetime,
TCP-verified) are never charged; a full map falls back to the address's slot; the controller's
rate, switch and sweep (guard.read_budgets, sweep_budgets) work as documented.
"""

from __future__ import annotations

import ctypes
import ipaddress
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from xdpguard.core.kernel import abi
from xdpguard.core import guard, policy
from xdpguard.core.kernel.abi import MapName, Reason
from xdpguard.core.policy import AddressPolicy, GlobalPolicy, Limits, VerifySettings
from xdpguard.core.guard import Guard
from xdpguard.core.testrun import TestBed

pytestmark = pytest.mark.kernel

PROT, PROT_B, PROT6 = "198.18.0.1", "198.18.0.2", "2001:db8::1"
CLIENT, TCP_CLIENT, CLIENT6 = "203.0.113.7", "203.0.113.8", "2001:db8:bad::7"
OUT = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
IN = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
MAX = 4  # XG_BUDGET_MAX of this bed: services with a bucket of their own
TCP_SYNS = 5  # XG_BUDGET_TCP_SYNS of this bed: unverified SYNs/s per TCP service below the SYN threshold


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def ip(src: str, dst: str):
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


def udp(src: str, dst: str = PROT, dport: int = 7, payload: bytes = b"probe-1") -> bytes:
    return bytes(IN / ip(src, dst) / UDP(sport=5000, dport=dport) / Raw(payload))


def spoofed(i: int) -> str:
    return str(ipaddress.ip_address("198.18.128.0") + i)


@pytest.fixture(scope="module")
def tb():
    b = TestBed({"XG_BUDGET_MAX": MAX, "XG_BUDGET_TCP_SYNS": 5})
    try:
        b.protect(PROT, PROT_B, PROT6)
        yield b
    finally:
        b.close()


@pytest.fixture
def bed(tb):
    tb.reset()
    tb.protect(PROT, PROT_B, PROT6)
    guard.write_global_policy(tb.maps, GlobalPolicy(reflection=False))
    guard.write_verify_settings(tb.maps, VerifySettings(budget_udp_pps=5))
    for a in (PROT, PROT_B, PROT6):
        Guard(None, None, tb.maps).change_ports([ipaddress.ip_address(a)], "udp", 7, 7, abi.PORT_BY_FORWARD, True)
        Guard(None, None, tb.maps).change_ports([ipaddress.ip_address(a)], "tcp", 80, 80, abi.PORT_BY_FORWARD, True)
    tb.tcpstate(True)
    return tb


def flood(b: TestBed, n: int, dst: str = PROT, dport: int = 7, six: bool = False) -> list[Reason]:
    return [b.verdict(udp(f"2001:db8:bad::{i + 100:x}" if six else spoofed(i), dst, dport)).reason for i in range(n)]


def test_a_random_source_flood_gets_the_service_budget_and_no_per_source_state(bed):
    # a per-source limit that would give each new source a bucket (K = 0: the bucket path)
    guard.write_address_policy(
        bed.maps, ipaddress.ip_address(PROT), AddressPolicy(limits=Limits(src_pps=1, src_burst_pkts=1))
    )
    got = flood(bed, 20)
    assert got[:5] == [Reason.CLEAN] * 5 and got[5:] == [Reason.BUDGET] * 15, got
    # the 5 admitted ones met the per-source step; the 15 dropped ones never did
    assert len(list(bed.maps[MapName.BUCKETS].keys())) == 5
    [b] = guard.read_budgets(bed.maps)
    assert (b.protected, b.port, b.admitted, b.dropped, b.verified) == (PROT, 7, 5, 15, 0)
    assert bed.counters()[(abi.Kind.DROP, Reason.BUDGET)][0] == 15


def test_verified_clients_are_never_charged(bed):
    bed.egress(bytes(OUT / IP(src=PROT, dst=CLIENT) / UDP(sport=7, dport=5000) / Raw(b"probe-1")))  # peacetime answer
    bed.egress(bytes(OUT / IP(src=PROT, dst=TCP_CLIENT) / TCP(sport=80, dport=40000, flags="A")))  # established
    bed.egress(bytes(OUT / IPv6(src=PROT6, dst=CLIENT6) / UDP(sport=7, dport=5000) / Raw(b"probe-1")))
    assert flood(bed, 10).count(Reason.BUDGET) == 5  # the budget is spent by the flood
    for _ in range(20):  # the flood's very payload, from the verified clients: all pass
        assert bed.verdict(udp(CLIENT)).reason == Reason.CLEAN
        assert bed.verdict(udp(TCP_CLIENT)).reason == Reason.CLEAN
    assert flood(bed, 10, PROT6, six=True).count(Reason.BUDGET) == 5
    assert bed.verdict(udp(CLIENT6, PROT6)).reason == Reason.CLEAN
    by = {(b.protected, b.port): b for b in guard.read_budgets(bed.maps)}
    assert by[(PROT, 7)].verified == 40 and by[(PROT, 7)].dropped == 5
    assert by[(PROT6, 7)].verified == 1


def test_services_and_addresses_have_budgets_of_their_own(bed):
    assert flood(bed, 8).count(Reason.BUDGET) == 3
    assert flood(bed, 8, PROT_B).count(Reason.BUDGET) == 3  # another address: untouched by the first flood
    assert flood(bed, 8, dport=53)[:5] == [Reason.PORT] * 5  # a closed port: the port policy first, no budget
    assert {(b.protected, b.port) for b in guard.read_budgets(bed.maps)} == {(PROT, 7), (PROT_B, 7)}


def test_a_large_packet_costs_one_unit_per_128_bytes(bed):
    big = bytes(IN / IP(src=spoofed(1), dst=PROT) / UDP(sport=5000, dport=7) / Raw(b"x" * 300))  # 342 B: 3 units
    assert [bed.verdict(big).reason for _ in range(3)] == [Reason.CLEAN, Reason.BUDGET, Reason.BUDGET]
    assert bed.verdict(udp(spoofed(2))).reason == Reason.CLEAN  # 2 units left: a small one still fits
    [b] = guard.read_budgets(bed.maps)
    assert (b.admitted, b.dropped) == (2, 2)


def syn(src: str, dst: str = PROT, sport: int = 4000) -> bytes:
    return bytes(IN / ip(src, dst) / TCP(sport=sport, dport=80, flags="S", seq=1000, options=[("MSS", 1460)]))


def set_syn_threshold(b: TestBed, pps: int) -> None:
    for a in (PROT, PROT_B, PROT6):
        addr = ipaddress.ip_address(a)
        cur = guard.read_address_policy(b.maps, addr)
        guard.write_address_policy(b.maps, addr, AddressPolicy(cur.blocked, cur.limits, policy.SynPolicy(pps)))


def test_tcp_without_a_syn_defence_is_not_budgeted(bed):
    """An address whose SYN defence is off (threshold 0, not always): no budget for its SYNs."""
    for i in range(10):
        assert bed.verdict(syn(spoofed(i), sport=4000 + i)).reason == Reason.CLEAN


def test_new_tcp_connections_below_the_syn_threshold_get_the_services_budget(bed):
    """Below the address's SYN threshold every SYN used to reach the kernel (a conntrack entry
    for 120 s each: a spoofed flood under the threshold filled the table). Now each TCP service
    admits TCP_SYNS unverified SYNs/s; past them an unverified SYN meets the SYN defence as if
    the address were over its threshold: a cookie (IPv4), retransmit authentication (IPv6 in this
    build). Verified sources are never charged; no per-source state is made for the flood."""
    set_syn_threshold(bed, 1000)  # far above what this test sends: only the budget acts
    bed.egress(bytes(OUT / IP(src=PROT, dst=TCP_CLIENT) / TCP(sport=80, dport=40000, flags="A")))  # established
    got = [bed.verdict(syn(spoofed(i), sport=4000 + i)).reason for i in range(12)]
    assert got == [Reason.CLEAN] * TCP_SYNS + [Reason.SYNCOOKIE] * (12 - TCP_SYNS), got
    for i in range(10):  # a verified client's new connections: never charged, never a cookie
        assert bed.verdict(syn(TCP_CLIENT, sport=41000 + i)).reason == Reason.CLEAN
    six = [bed.verdict(syn(f"2001:db8:bad::{i + 1:x}", PROT6, sport=4000 + i)).reason for i in range(8)]
    assert six == [Reason.CLEAN] * TCP_SYNS + [Reason.SYN] * 3, six  # IPv6: retransmit authentication
    by = {(b.protected, b.port, b.proto): b for b in guard.read_budgets(bed.maps)}
    t = by[(PROT, 80, "tcp")]
    assert (t.admitted, t.dropped, t.verified) == (TCP_SYNS, 12 - TCP_SYNS, 10)
    assert by[(PROT6, 80, "tcp")].dropped == 3
    assert len(list(bed.maps[MapName.BUCKETS].keys())) == 0  # no per-source bucket for the flood
    # the switch turns it off with the UDP budget
    guard.write_verify_settings(bed.maps, VerifySettings(budget_udp_pps=5, budget=False))
    assert [bed.verdict(syn(spoofed(50 + i), sport=5000 + i)).reason for i in range(8)] == [Reason.CLEAN] * 8
    set_syn_threshold(bed, 0)


def test_the_tcp_budget_follows_the_operators_setting_and_the_learned_rate(bed):
    """The TCP budget's rate: the service's learned rate (xg_budget.rate, written by the map
    owner for daemon/budgets.py), else `verify set --budget-tcp-syns` (xg_verify_config), else
    XG_BUDGET_TCP_SYNS (5 in this bed). Fails with the rate compiled in."""
    set_syn_threshold(bed, 1000)  # far above what this test sends: only the budget acts
    guard.write_verify_settings(bed.maps, VerifySettings(budget_udp_pps=5, budget_tcp_syns=3))
    got = [bed.verdict(syn(spoofed(i), sport=4000 + i)).reason for i in range(8)]
    assert got == [Reason.CLEAN] * 3 + [Reason.SYNCOOKIE] * 5, got  # the setting, not the default 5
    six = [bed.verdict(syn(f"2001:db8:bad::{i + 1:x}", PROT6, sport=4000 + i)).reason for i in range(5)]
    assert six == [Reason.CLEAN] * 3 + [Reason.SYN] * 2, six
    # a rate in the service's entry wins over the setting (a fresh entry: a full burst, rate 7)
    bed.maps[MapName.BUDGET].set(policy.port_key(ipaddress.ip_address(PROT_B), "tcp", 80), abi.Budget(0, 0, 7, 0, 0, 0))
    got = [bed.verdict(syn(spoofed(20 + i), PROT_B, sport=4000 + i)).reason for i in range(10)]
    assert got == [Reason.CLEAN] * 7 + [Reason.SYNCOOKIE] * 3, got
    # the map owner's write names the protocol: tcp/7 and udp/7 are two entries
    g = Guard(None, None, bed.maps)
    assert flood(bed, 1)[0] == Reason.CLEAN  # udp/7's entry
    assert not g.write_budget_rate(PROT, 7, 50, "tcp")  # no SYN seen at tcp/7: nothing made, udp/7 untouched
    assert g.write_budget_rate(PROT, 80, 9, "tcp")
    by = {(b.protected, b.port, b.proto): b for b in g.read_budgets()}
    assert by[(PROT, 80, "tcp")].rate == 9 and by[(PROT, 80, "tcp")].admitted == 3
    assert by[(PROT, 7, "udp")].rate == 0
    time.sleep(1.05)  # refills the bucket at the new rate: a burst of 9
    got = [bed.verdict(syn(spoofed(40 + i), sport=6000 + i)).reason for i in range(13)]
    # 9 from the burst; the run's own time refills at most a token or two more at 9/s
    assert got[:9] == [Reason.CLEAN] * 9 and got.count(Reason.SYNCOOKIE) >= 2, got
    set_syn_threshold(bed, 0)


def test_a_full_map_falls_back_to_the_address_slot_never_to_another_address(bed):
    for a in (PROT, PROT_B):  # every port reachable: a flood over random ports
        m = bed.maps[MapName.PROT4]
        cur = m.get(policy.prot_key(ipaddress.ip_address(a)))
        cur.flags &= ~abi.PROT_PORT_POLICY
        m.set(policy.prot_key(ipaddress.ip_address(a)), cur)
    for port in range(1000, 1000 + MAX):  # fills the map: one admitted packet each
        assert bed.verdict(udp(spoofed(port), dport=port)).reason == Reason.CLEAN
    assert len(guard.read_budgets(bed.maps)) == MAX
    got = [bed.verdict(udp(spoofed(i), dport=2000 + i)).reason for i in range(8)]  # ports past a full map
    assert got == [Reason.CLEAN] * 5 + [Reason.BUDGET] * 3, got  # share one budget: neither open nor closed
    assert bed.verdict(udp(spoofed(99), PROT_B, dport=3000)).reason == Reason.CLEAN  # PROT_B's slot is its own
    slot = bed.maps[MapName.PROT4].get(policy.prot_key(ipaddress.ip_address(PROT))).syn.slot
    assert bed.maps[MapName.BUDGETADDR].get(ctypes.c_uint32(slot)).dropped == 3
    assert guard.budget_totals(bed.maps)["dropped"] == 3
    # the sweep: idle ones of no open port go; an open port keeps its budget and counters
    Guard(None, None, bed.maps).change_ports([ipaddress.ip_address(PROT)], "udp", 1000, 1000, abi.PORT_BY_FORWARD, True)
    assert guard.sweep_budgets(bed.maps, now_ns()) == 0  # not idle yet
    assert guard.sweep_budgets(bed.maps, now_ns() + 120 * 10**9) == MAX - 1
    assert [(b.protected, b.port) for b in guard.read_budgets(bed.maps)] == [(PROT, 1000)]


def test_the_rate_the_switch_and_monitor_mode(bed):
    guard.write_verify_settings(bed.maps, VerifySettings(budget_udp_pps=2))
    assert flood(bed, 6).count(Reason.BUDGET) == 4
    # a rate the controller wrote into the service's entry wins over the default
    bed.maps[MapName.BUDGET].set(policy.port_key(ipaddress.ip_address(PROT_B), "udp", 7), abi.Budget(0, 0, 3, 0, 0, 0))
    assert flood(bed, 6, PROT_B).count(Reason.BUDGET) == 3
    guard.write_verify_settings(bed.maps, VerifySettings(budget_udp_pps=2, budget=False))
    assert flood(bed, 6).count(Reason.BUDGET) == 0  # off: nothing dropped, nothing charged
    guard.write_verify_settings(bed.maps, VerifySettings(budget_udp_pps=2))
    bed.configure(monitor_mask=1 << Reason.BUDGET)
    v = bed.verdict(udp(spoofed(1)))
    assert (v.action, v.kind, v.reason) == ("pass", abi.Kind.WOULD_DROP, Reason.BUDGET)


def budget_burst(rate: int) -> int:
    """budget.h's burst: a tenth of a second of the rate, at least BUDGET_BURST_MIN, at most the rate."""
    return min(rate, max(rate // abi.BUDGET_BURST_DIV, abi.BUDGET_BURST_MIN))


def test_the_default_budget_applies_with_nothing_set(bed):
    guard.write_verify_settings(bed.maps, VerifySettings())
    pkt = udp(spoofed(1))
    bed.run(pkt, repeat=abi.BUDGET_UDP_PPS + 200)  # well under a second
    [b] = guard.read_budgets(bed.maps)
    burst = budget_burst(abi.BUDGET_UDP_PPS)  # 100
    # what the run's time refilled on top of the burst: 1,000/s for the run's few ms
    assert burst <= b.admitted <= burst + 20 and b.dropped >= abi.BUDGET_UDP_PPS + 200 - burst - 20, b


def test_a_burst_of_flood_gets_a_tenth_of_a_second_of_the_rate_not_a_second(bed):
    """trafgen's `--rate 30000pps` sends its packets in ~0.3 s bursts at ~100 kpps once a second; a
    bucket of one second's depth, refilled while it idled, let ~1,000 packets through within a
    few ms of each burst's start: 106 KB at once into the lab backend's 2 Mbit/s link (its queue
    holds ~21 KB), and the verified client's answers waited behind them. The burst is now a
    tenth of a second of the rate (and the floor of BUDGET_BURST_MIN units for small rates)."""
    for rate, want in ((2000, 200), (200, 64), (20, 20)):
        bed.reset()
        bed.protect(PROT, PROT_B, PROT6)
        guard.write_global_policy(bed.maps, GlobalPolicy(reflection=False))
        Guard(None, None, bed.maps).change_ports([ipaddress.ip_address(PROT)], "udp", 7, 7, abi.PORT_BY_FORWARD, True)
        guard.write_verify_settings(bed.maps, VerifySettings(budget_udp_pps=rate))
        assert budget_burst(rate) == want
        bed.run(udp(spoofed(1)), repeat=rate + 500)  # a burst of flood after an idle second (a fresh entry: full)
        [b] = guard.read_budgets(bed.maps)
        assert want <= b.admitted <= want + rate // 50, (rate, b)  # + what refilled during the run (< 20 ms)


def test_a_learned_rate_is_written_into_the_services_entry_and_read_back(bed):
    """Guard.write_budget_rate (daemon/budgets.py's only write): the entry keeps its tokens and
    counters, the data path uses the new rate, and a service with no entry yet is not made."""
    guard.write_verify_settings(bed.maps, VerifySettings(budget_udp_pps=2))
    g = Guard(None, None, bed.maps)
    assert not g.write_budget_rate(PROT, 7, 50)  # nothing seen yet: no entry, nothing made
    assert flood(bed, 6).count(Reason.BUDGET) == 4  # the entry exists now; the floor (2) applies
    assert g.write_budget_rate(PROT, 7, 10)
    [b] = [x for x in g.read_budgets() if x.protected == PROT]
    assert (b.rate, b.admitted, b.dropped) == (10, 2, 4)
    time.sleep(1.05)  # a second refills the bucket at the new rate (burst: one second's worth)
    assert flood(bed, 16).count(Reason.BUDGET) == 6
    assert g.write_budget_rate(PROT, 7, 0)  # 0: back to the settings' rate
    time.sleep(1.05)
    assert flood(bed, 6).count(Reason.BUDGET) == 4
