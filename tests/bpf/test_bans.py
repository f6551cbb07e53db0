"""Bans and the per-destination bucket under floods that fill their maps.

Operator bans (`xdpguard ban add`) live in xg_opban_hash, a plain hash: a flood of data-path bans
that fills xg_ban_lru (drop-ban filters hit by spoofed sources) cannot evict them. A flood over
random ports that fills xg_dstbkt_hash cannot lift the per-destination limit. Both maps are small
here (1024) and are filled through the real data path (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import ctypes
import ipaddress
import struct
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from xdpguard.core.kernel import abi
from xdpguard.core import guard, policy
from xdpguard.core.kernel.abi import MapName, Reason
from xdpguard.core.policy import AddressPolicy, Filter, GlobalPolicy, Limits
from xdpguard.core.testrun import TestBed

pytestmark = pytest.mark.kernel

PROT, OPERATOR_BANNED = "198.18.0.1", "203.0.113.66"


def udp(src: str, payload: bytes = b"hello") -> bytes:
    return bytes(Ether() / IP(src=src, dst=PROT) / UDP(sport=5000, dport=53) / Raw(payload))


@pytest.fixture(scope="module")
def bed():
    b = TestBed({"XG_BANS_MAX": 1024, "XG_LIST_MAX": 1024, "XG_PORTS_MAX": 1024})
    try:
        b.protect(PROT)
        yield b
    finally:
        b.close()


def test_operator_ban_survives_a_flood_of_data_path_bans(bed):
    m = bed.maps
    guard.write_global_policy(
        m, GlobalPolicy(reflection=False, filters=(Filter(action="drop-ban", payload=b"EVIL", ban_s=600),))
    )
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    # what cleansing.ban_add writes
    m[MapName.OPBANS].set(
        policy.src_key(ipaddress.ip_address(OPERATOR_BANNED)), abi.Ban(now + 3600 * 10**9, 0, int(Reason.BANNED), 0)
    )
    m[MapName.DPSTATE].set(ctypes.c_uint32(0), abi.DpState(abi.DP_HAS_BANS))
    frame = bytearray(udp("198.18.128.0", b"EVIL"))
    src_at = 14 + 12
    for i in range(5000):  # 5x the LRU: every spoofed source gets banned by the data path
        struct.pack_into("!I", frame, src_at, int(ipaddress.IPv4Address("198.18.128.0")) + i)
        rv, _ = bed.run(bytes(frame))
        assert rv == 1  # XDP_DROP (a checksum is not checked)
    assert len(m[MapName.BANS]) <= 1024  # the LRU evicted
    assert m[MapName.OPBANS].get(policy.src_key(ipaddress.ip_address(OPERATOR_BANNED))) is not None
    v = bed.verdict(udp(OPERATOR_BANNED))
    assert (v.action, v.reason) == ("drop", Reason.BANNED)
    assert m[MapName.OPBANS].get(policy.src_key(ipaddress.ip_address(OPERATOR_BANNED))).hits == 1


def test_expired_operator_ban_is_deleted(bed):
    m = bed.maps
    k = policy.src_key(ipaddress.ip_address("203.0.113.67"))
    m[MapName.OPBANS].set(k, abi.Ban(1, 0, int(Reason.BANNED), 0))
    m[MapName.DPSTATE].set(ctypes.c_uint32(0), abi.DpState(abi.DP_HAS_BANS))
    assert bed.verdict(udp("203.0.113.67")).reason != Reason.BANNED
    assert m[MapName.OPBANS].get(k) is None


# ---- the per-destination bucket never fails open (same small bed: XG_PORTS_MAX=1024) ----


def test_dst_limit_holds_when_the_bucket_map_is_full(bed):
    """A flood over random ports fills xg_dstbkt_hash; ports without a bucket of their own then
    share their address's overflow bucket instead of going unlimited."""

    m = bed.maps
    guard.write_global_policy(m, GlobalPolicy(reflection=False))
    m[MapName.DPSTATE].set(ctypes.c_uint32(0), abi.DpState(0))
    addr = ipaddress.ip_address(PROT)
    guard.write_address_policy(m, addr, AddressPolicy(limits=Limits(dst_pps=1, dst_burst_pkts=1)))
    frame = bytearray(udp("203.0.113.5"))
    dport_at = 14 + 20 + 2
    for port in range(1, 1200):  # past XG_PORTS_MAX buckets
        struct.pack_into("!H", frame, dport_at, port)
        bed.run(bytes(frame))
    assert len(m[MapName.DSTBKT]) == 1024  # full
    passed = 0
    for port in range(2000, 2020):  # 20 ports that cannot get a bucket: one shared bucket of depth 1
        struct.pack_into("!H", frame, dport_at, port)
        passed += bed.run(bytes(frame))[0] == 2
    assert passed <= 2, passed  # before: all 20 passed (no bucket, no limit)
    guard.write_address_policy(m, addr, AddressPolicy())
