"""The source sketch in front of the per-source bucket LRU (abi.h xg_srcsk, policy.h step_ratelimit).

A source whose sketch slot's uncharged counts of this window and the last stay within
K = min(burst / 2, rate per second) of every per-source limit passes without an LRU entry; past K
its packets take the bucket path, and the bucket (created or found) is first charged with the
slot's uncharged counts. The claim these tests hold the C to: never more lenient than the bucket
alone — back to back (no refill), a source still gets exactly its burst, whatever K is, and a
source sharing a slot with a flooder gets no more than its own burst either.
"""

from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from xdpguard.core.kernel import abi
from xdpguard.core import guard, policy
from xdpguard.core.kernel.abi import Kind, MapName, Reason
from xdpguard.core.policy import AddressPolicy, Limits
from xdpguard.core.testrun import TestBed, sketch_slot

pytestmark = pytest.mark.kernel

PROT = "198.18.0.1"
CLEAN, LIMIT, SYNR = (Kind.PASS, Reason.CLEAN), (Kind.DROP, Reason.RATELIMIT), (Kind.DROP, Reason.SYN)


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def udp(src: str, size: int = 0) -> bytes:
    pkt = bytes(Ether() / IP(src=src, dst=PROT) / UDP(sport=5000, dport=53) / Raw(b"hello"))
    return pkt + b"\x00" * max(0, size - len(pkt))


def tcp(src: str, flags: str = "S") -> bytes:
    return bytes(Ether() / IP(src=src, dst=PROT) / TCP(sport=40000, dport=80, flags=flags))


def mates(n: int, base: str = "198.51.100.0") -> list[str]:
    """n v4 sources (from TEST-NET-2 and on) that share one sketch slot."""
    first = int(ipaddress.IPv4Address(base))
    want = sketch_slot(base)
    out = []
    i = 0
    while len(out) < n:
        a = str(ipaddress.IPv4Address(first + i))
        if sketch_slot(a) == want:
            out.append(a)
        i += 1
    return out


@pytest.fixture(scope="module")
def testbed(shared_bed):
    tb = shared_bed()
    tb.protect(PROT)
    return tb


@pytest.fixture
def bed(testbed):
    yield testbed
    m = testbed.maps
    for name in (MapName.BUCKETS, MapName.BANS):
        for k in list(m[name].keys()):
            m[name].delete(k)
    testbed.clear_sketch()
    guard.write_address_policy(m, ipaddress.ip_address(PROT), AddressPolicy())


def limit(tb: TestBed, **lim) -> None:
    guard.write_address_policy(tb.maps, ipaddress.ip_address(PROT), AddressPolicy(limits=Limits(**lim)))


def run(tb: TestBed, packet: bytes, repeat: int) -> dict:
    before = tb.counters()
    tb.run(packet, repeat=repeat)
    after = tb.counters()
    return {k: after[k][0] - before[k][0] for k in after if after[k][0] != before[k][0]}


def bucket(tb: TestBed, src: str):
    return tb.maps[MapName.BUCKETS].get(policy.src_key(ipaddress.ip_address(src)))


def test_a_source_far_from_its_limits_gets_no_bucket(bed):
    limit(bed, src_pps=1000, src_burst_pkts=1000)  # K = 500
    src = "198.51.100.7"
    assert run(bed, udp(src), 100) == {CLEAN: 100}
    assert bucket(bed, src) is None  # no LRU entry
    sk = bed.sketch(src)
    assert sum(sk.pkts) == 100 and sum(sk.bytes) == 100 * len(udp(src)) and sk.hot_until == 0


@pytest.mark.parametrize("pps,burst", [(10, 5), (50, 40), (20, 100), (1, 1), (1000, 64)])
def test_a_flood_gets_exactly_its_burst(bed, pps, burst):
    """Back to back (no measurable refill at these rates): K packets pass uncharged, then the bucket
    is charged with them, so the total is the burst, as with no sketch."""
    limit(bed, src_pps=pps, src_burst_pkts=burst)
    src = "198.51.100.8"
    first = now_ns() >> abi.SK_SHIFT
    got = run(bed, udp(src), burst + 30)
    last = now_ns() >> abi.SK_SHIFT
    assert got == {CLEAN: burst, LIMIT: 30}
    b = bucket(bed, src)
    assert b is not None and b.pkt_tokens < 10**9
    # on the bucket path now, until the window after the one the run saw (the run may straddle
    # a window's end: CI once read the clock a window later than the program had)
    assert first + 1 <= bed.sketch(src).hot_until <= last + 1


def test_bytes_are_counted_and_charged_too(bed):
    limit(bed, src_bps=1000, src_burst_bytes=1000)  # K = 500 bytes
    src = "198.51.100.9"
    pkt = udp(src, 100)
    assert len(pkt) == 100
    assert run(bed, pkt, 20) == {CLEAN: 10, LIMIT: 10}


def test_syns_are_counted_apart_and_charged_to_the_syn_bucket(bed):
    limit(bed, syn_src_pps=10, syn_src_burst=8)  # K = 4 SYNs
    src = "198.51.100.10"
    assert run(bed, tcp(src), 3) == {CLEAN: 3}
    assert bucket(bed, src) is None
    assert run(bed, tcp(src, "A"), 20) == {CLEAN: 20}  # no SYN: no per-source limit applies
    assert run(bed, tcp(src), 10) == {CLEAN: 5, SYNR: 5}  # 8 SYNs in all


def test_pps_sketch_path_syns_reach_the_syn_bucket_when_pps_crosses(bed):
    """SYNs counted uncharged while the packet allowance had room are charged to the SYN bucket when
    a non-SYN packet moves the source to the bucket path."""
    limit(bed, src_pps=10**6, src_burst_pkts=20, syn_src_pps=10, syn_src_burst=8)  # K: 10 packets, 4 SYNs
    src = "198.51.100.11"
    assert run(bed, tcp(src), 4) == {CLEAN: 4}  # 4 uncharged SYNs (the SYN allowance is full)
    assert run(bed, tcp(src, "A"), 7) == {CLEAN: 7}  # the 11th packet crosses K: 4 SYNs charged
    assert run(bed, tcp(src), 6) == {CLEAN: 4, SYNR: 2}


def test_slot_mates_get_no_more_than_their_own_burst(bed):
    """B sends a few packets uncharged; A, in the same slot, floods past K: the slot turns hot and
    B's new bucket is charged with the slot's uncharged counts (more than its own: never less)."""
    limit(bed, src_pps=10, src_burst_pkts=10)  # K = 5
    a, b = mates(2)
    t0 = time.monotonic()
    assert run(bed, udp(b), 3) == {CLEAN: 3}
    got = run(bed, udp(a), 20)
    got_b = run(bed, udp(b), 20)
    refill = int(10 * (time.monotonic() - t0))
    assert got[CLEAN] <= 10 + refill
    assert 3 + got_b.get(CLEAN, 0) <= 10 + refill  # b's total within its burst
    assert bucket(bed, b) is not None


def test_many_sources_in_one_slot_each_stay_within_their_burst(bed):
    limit(bed, src_pps=10, src_burst_pkts=6)  # K = 3
    srcs = mates(4)
    total = {s: 0 for s in srcs}
    t0 = time.monotonic()
    for _ in range(3):  # interleaved, a few packets each
        for s in srcs:
            total[s] += run(bed, udp(s), 3).get(CLEAN, 0)
    refill = int(10 * (time.monotonic() - t0))  # what 10/s gives back meanwhile (the counter reads are slow)
    assert all(n <= 6 + refill for n in total.values()), total
    assert total[srcs[0]] >= 6  # the first one is not punished for the others: K <= burst / 2


def test_the_slot_leaves_the_bucket_path_after_a_quiet_window(bed):
    limit(bed, src_pps=10, src_burst_pkts=4)  # K = 2
    src = "198.51.100.12"
    assert run(bed, udp(src), 10) == {CLEAN: 4, LIMIT: 6}
    hot_until = bed.sketch(src).hot_until
    while (now_ns() >> abi.SK_SHIFT) <= hot_until:  # at most ~2.2 s: the window after the next
        time.sleep(0.05)
    assert run(bed, udp(src), 2) == {CLEAN: 2}  # uncharged again (the bucket has refilled since)
    assert bed.sketch(src).hot_until == hot_until
    assert run(bed, udp(src), 10) == {CLEAN: 2, LIMIT: 8}  # then charged for them: 4 in all
