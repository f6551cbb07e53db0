"""The fast-path shortcuts of issue 14 that the verdict tables do not reach.

- The operator-ban flag: sweep_bans notes an empty xg_opban_hash (XG_DP_OPBANS_EMPTY) so the data
  path skips that lookup; an operator ban written afterwards and noted (what `ban add` does) is
  enforced again.
- Filter generations: a compile swaps the whole set at once; the set not in use is never read.
- Per-source buckets: a new source is charged on insert (one LRU operation), so a burst of 1 drops
  its second packet.
"""

from __future__ import annotations

import ctypes
import ipaddress
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from xdpguard.core.kernel import abi
from xdpguard.core import guard, policy
from xdpguard.core.kernel.abi import Kind, MapName, Reason
from xdpguard.core.policy import AddressPolicy, Filter, GlobalPolicy, Limits
from xdpguard.core.testrun import TestBed

pytestmark = pytest.mark.kernel

PROT, SRC = "198.18.0.1", "203.0.113.66"


def udp(src: str = SRC, dport: int = 53, payload: bytes = b"hello") -> bytes:
    return bytes(Ether() / IP(src=src, dst=PROT) / UDP(sport=5000, dport=dport) / Raw(payload))


@pytest.fixture(scope="module")
def bed():
    b = TestBed({"XG_BANS_MAX": 1024, "XG_LIST_MAX": 1024, "XG_PORTS_MAX": 1024, "XG_SOURCES_MAX": 1024})
    try:
        b.protect(PROT)
        yield b
    finally:
        b.close()


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def test_operator_ban_flag_skips_an_empty_map_and_a_noted_ban_is_enforced(bed):
    m = bed.maps
    guard.write_global_policy(m, GlobalPolicy(reflection=False))
    key = policy.src_key(ipaddress.ip_address(SRC))
    m[MapName.BANS].set(policy.src_key(ipaddress.ip_address("203.0.113.1")), abi.Ban(now_ns() + 10**12, 0, 10, 0))
    m[MapName.DPSTATE].set(ctypes.c_uint32(0), abi.DpState(abi.DP_HAS_BANS))
    guard.sweep_bans(m, now_ns())
    flags = m[MapName.DPSTATE].get(ctypes.c_uint32(0)).flags
    assert flags == abi.DP_HAS_BANS | abi.DP_OPBANS_EMPTY | abi.DP_BAN_BLOOM
    m[MapName.OPBANS].set(key, abi.Ban(now_ns() + 10**12, 0, int(Reason.BANNED), 0))
    assert bed.verdict(udp()).reason == Reason.CLEAN  # written but not noted: the flag says "empty"
    guard.note_operator_ban(m, [key])
    v = bed.verdict(udp())
    assert (v.action, v.kind, v.reason) == ("drop", Kind.DROP, Reason.BANNED)
    m[MapName.OPBANS].delete(key)
    m[MapName.BANS].delete(policy.src_key(ipaddress.ip_address("203.0.113.1")))
    guard.sweep_bans(m, now_ns())
    assert m[MapName.DPSTATE].get(ctypes.c_uint32(0)).flags == abi.DP_OPBANS_EMPTY | abi.DP_BAN_BLOOM
    assert bed.verdict(udp()).reason == Reason.CLEAN


def test_filter_sets_swap_whole_and_order_decides(bed):
    m = bed.maps
    drop53 = Filter(proto="udp", dport=(53, 53))
    pass_all = Filter(action="pass")
    gens = []
    for filters, want in (
        ((drop53,), Reason.FEATURE),
        ((pass_all, drop53), Reason.CLEAN),
        ((), Reason.CLEAN),
        ((drop53, pass_all), Reason.FEATURE),
    ):
        old = guard.read_global_policy(m)
        guard.write_global_policy(m, GlobalPolicy(reflection=False, filters=filters), old)
        gens.append(m[MapName.FSEL].get(ctypes.c_uint32(0)).gen)
        head = m[MapName.FHEAD].get(ctypes.c_uint32(gens[-1]))
        assert head.count == len(filters) and head.live == (1 << len(filters)) - 1
        assert bed.verdict(udp()).reason == want
        assert bed.verdict(udp(dport=54)).reason == Reason.CLEAN
    assert gens == [gens[0], gens[0] ^ 1, gens[0], gens[0] ^ 1]  # every change flips the generation
    assert guard.read_global_policy(m).filters == (drop53, pass_all)
    guard.write_global_policy(m, GlobalPolicy(reflection=False), guard.read_global_policy(m))


def test_payload_filter_ahead_of_a_plain_one_is_compared_first(bed):
    m = bed.maps
    filters = (Filter(action="pass", payload=b"GOOD"), Filter(proto="udp"))
    guard.write_global_policy(m, GlobalPolicy(reflection=False, filters=filters), guard.read_global_policy(m))
    assert bed.verdict(udp(payload=b"GOODxx")).reason == Reason.CLEAN  # filter 1 (pass) first
    assert bed.verdict(udp(payload=b"BADxxx")).reason == Reason.FEATURE  # filter 2
    guard.write_global_policy(m, GlobalPolicy(reflection=False), guard.read_global_policy(m))


def test_a_new_source_is_charged_when_its_bucket_is_inserted(bed):
    m = bed.maps
    ip = ipaddress.ip_address(PROT)
    guard.write_address_policy(m, ip, AddressPolicy(limits=Limits(src_pps=1, src_burst_pkts=1)))
    try:
        src = "203.0.113.77"
        assert m[MapName.BUCKETS].get(policy.src_key(ipaddress.ip_address(src))) is None
        assert bed.verdict(udp(src)).reason == Reason.CLEAN
        b = m[MapName.BUCKETS].get(policy.src_key(ipaddress.ip_address(src)))
        assert b is not None and b.pkt_tokens < 10**9  # inserted already charged for that packet
        assert bed.verdict(udp(src)).reason == Reason.RATELIMIT
    finally:
        guard.write_address_policy(m, ip, AddressPolicy())


def test_ban_bloom_bits_agree_and_a_data_path_ban_is_enforced_behind_the_bloom(bed):
    m = bed.maps
    guard.sweep_bans(m, now_ns())
    assert m[MapName.DPSTATE].get(ctypes.c_uint32(0)).flags & abi.DP_BAN_BLOOM
    guard.write_global_policy(
        m,
        GlobalPolicy(reflection=False, filters=(Filter(action="drop-ban", payload=b"EVIL", ban_s=600),)),
        guard.read_global_policy(m),
    )
    try:
        for i in range(50):
            src = f"198.18.7.{i}"
            assert bed.verdict(udp(src, payload=b"EVILxx")).reason == Reason.FEATURE  # banned by the data path
            key = policy.src_key(ipaddress.ip_address(src))
            bit = policy.ban_bloom_bit(key)  # the Python hash is the C one: the data path set this bit
            assert m[MapName.BANBLOOM].get(ctypes.c_uint32(bit >> 6)).value >> (bit & 63) & 1
            assert bed.verdict(udp(src)).reason == Reason.BANNED
        assert bed.verdict(udp("198.18.8.1")).reason == Reason.CLEAN
    finally:
        guard.write_global_policy(m, GlobalPolicy(reflection=False), guard.read_global_policy(m))
        for k in list(m[MapName.BANS].keys()):
            m[MapName.BANS].delete(k)
        guard.sweep_bans(m, now_ns())
    assert not any(m[MapName.BANBLOOM].array_values())  # no ban left: the bloom is cleared
