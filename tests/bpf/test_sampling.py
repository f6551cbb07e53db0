"""Sampling (bpf/include/sample.h) through BPF_PROG_TEST_RUN: the record, 1 in N, off, bypass.

BPF_PROG_TEST_RUN runs on the calling CPU, so the per-CPU countdown is one counter here.
"""

from __future__ import annotations

import ctypes

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from xdpguard.core import guard
from xdpguard.core.observe import sampling
from xdpguard.core.kernel.abi import SAMPLE_SNAPLEN, MapName, SampleState

pytestmark = pytest.mark.kernel

PROT4, PROT6 = "198.18.0.1", "2001:db8::1"
ATTACKER4, ATTACKER6, CLIENT4 = "203.0.113.7", "2001:db8:bad::7", "198.51.100.10"


@pytest.fixture(scope="module")
def bed(shared_bed):
    tb = shared_bed()
    tb.protect(PROT4, PROT6)
    tb.add("block", ATTACKER4)
    tb.add("block", ATTACKER6)
    return tb


@pytest.fixture
def reader(bed):
    r = sampling.SampleReader(bed.maps[MapName.SAMPLES].fd)
    r.drain()
    yield r
    guard.set_sample_every(bed.maps, 0)
    r.drain()
    r.close()


def udp4(src=ATTACKER4, dst=PROT4, payload=200, vlan=False) -> bytes:
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if vlan:
        eth = eth / Dot1Q(vlan=7)
    return bytes(eth / IP(src=src, dst=dst, ttl=64) / UDP(sport=40000, dport=53) / Raw(b"x" * payload))


def test_sample_every_1_records_the_dropped_packet(bed, reader):
    guard.set_sample_every(bed.maps, 1)
    taken0, _ = guard.sample_counters(bed.maps)
    pkt = udp4()
    v = bed.verdict(pkt)
    assert (v.action, v.reason.label) == ("drop", "blocklist")
    [s] = reader.drain()
    assert (s.kind, s.reason, s.family, s.proto) == ("drop", "blocklist", 4, "udp")
    assert (s.src, s.dst, s.sport, s.dport) == (ATTACKER4, PROT4, 40000, 53)
    assert s.pkt_len == len(pkt) and s.sample_every == 1
    assert s.data == pkt[:SAMPLE_SNAPLEN] and len(s.data) == SAMPLE_SNAPLEN
    assert guard.sample_counters(bed.maps)[0] == taken0 + 1


def test_short_packet_is_copied_whole_and_vlan_parsed(bed, reader):
    guard.set_sample_every(bed.maps, 1)
    pkt = udp4(payload=3, vlan=True)
    assert len(pkt) < SAMPLE_SNAPLEN
    bed.verdict(pkt)
    [s] = reader.drain()
    assert s.data == pkt and (s.src, s.dport) == (ATTACKER4, 53)


def test_ipv6_tcp_pass_is_sampled_with_kind_pass(bed, reader):
    guard.set_sample_every(bed.maps, 1)
    pkt = bytes(Ether() / IPv6(src="2001:db8:c::10", dst=PROT6) / TCP(sport=1234, dport=443, flags="S"))
    v = bed.verdict(pkt)
    assert v.reason.label == "clean"
    [s] = reader.drain()
    assert (s.kind, s.reason, s.family, s.proto, s.src, s.dst, s.sport, s.dport) == (
        "pass",
        "clean",
        6,
        "tcp",
        "2001:db8:c::10",
        PROT6,
        1234,
        443,
    )


def test_off_and_bypass_are_not_sampled(bed, reader):
    guard.set_sample_every(bed.maps, 0)
    bed.verdict(udp4())
    assert reader.drain() == []
    guard.set_sample_every(bed.maps, 1)
    bed.verdict(udp4(dst="198.18.0.99"))  # not protected: bypass, the host's own traffic
    assert reader.drain() == []


def test_one_in_n(bed, reader):
    guard.set_sample_every(bed.maps, 4)
    bed.maps[MapName.SAMPLE_STATE].set(ctypes.c_uint32(0), SampleState())  # countdown 0 on every CPU
    bed.run(udp4(src=CLIENT4), repeat=400)
    got = reader.drain()
    assert len(got) == 100
    assert all(s.sample_every == 4 and s.reason == "clean" for s in got)


def test_full_ring_counts_lost(bed, reader):
    guard.set_sample_every(bed.maps, 1)
    _, lost0 = guard.sample_counters(bed.maps)
    bed.run(udp4(), repeat=5000)  # 5000 × 200-byte records > the 512 KiB ring
    _, lost1 = guard.sample_counters(bed.maps)
    got = reader.drain()
    assert lost1 > lost0 and len(got) + (lost1 - lost0) == 5000
