"""The lists' prefilter (abi.h XG_LPF_*, steps/lists.h lpf_miss): a clear bit skips a list's
hash and trie, so every entry the controller writes must have its bit first, and the data
path's bit must be the controller's (policy.lpf_bits)."""

from __future__ import annotations

import ctypes
import ipaddress
import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xdpguard.core.kernel import abi
from xdpguard.core.kernel.abi import MapName
from xdpguard.core.prefixes import parse_prefix
from xdpguard.core.guard import Guard, lpf_rebuild

pytestmark = pytest.mark.kernel

DST4, DST6 = "198.51.100.10", "2001:db8:ffff:fffe::10"


@pytest.fixture
def bed(shared_bed):
    b = shared_bed()
    b.protect(DST4, DST6)
    return b


def pkt(src: str) -> bytes:
    l3 = IPv6(src=src, dst=DST6) if ":" in src else IP(src=src, dst=DST4)
    return bytes(Ether() / l3 / UDP(sport=40000, dport=53))


def reason(bed, src: str) -> str:
    return bed.verdict(pkt(src)).reason.label


def lists_mask(bed) -> int:
    return bed.maps[MapName.CONFIG].get(ctypes.c_uint32(0)).lists_mask


def test_entries_of_every_shape_are_seen_through_the_prefilter(bed):
    g = Guard(None, None, bed.maps)
    rng = random.Random(27)
    nets6 = [f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::/64" for _ in range(60)]
    block = ["198.18.7.0/24", "10.0.0.0/8", "203.0.113.9/32", "2001:db8:aaaa::/40", "2001:db8:bbbb::77/128", *nets6]
    g.upsert("block", [parse_prefix(t).prefix for t in block], 0)
    g.upsert("allow", [parse_prefix("198.18.7.128/25").prefix], 0)
    assert lists_mask(bed) & abi.LM_PREFILTER
    assert reason(bed, "198.18.7.5") == "blocklist"
    assert reason(bed, "198.18.7.200") == "allowlist"
    assert reason(bed, "10.200.3.4") == "blocklist"  # a /8 sets all of its 256 /16s
    assert reason(bed, "203.0.113.9") == "blocklist"
    assert reason(bed, "2001:db8:aaaa:ff00::1") == "blocklist"  # shorter than /48: every bit
    assert reason(bed, "2001:db8:bbbb::77") == "blocklist"
    for n in nets6:  # the data path's hash of the /48 is the controller's
        assert reason(bed, str(ipaddress.IPv6Network(n)[5])) == "blocklist", n
    for src in ("198.19.7.5", "11.0.0.1", "203.0.113.10", "2001:db8:cccc::1"):
        assert reason(bed, src) == "clean"


def test_a_clear_bit_skips_the_list_until_a_rebuild(bed):
    """What makes it a prefilter: an entry written behind the controller's back (no bit) is not
    seen while the prefilter is trusted, and is once it is rebuilt from the lists."""
    g = Guard(None, None, bed.maps)
    g.upsert("block", [parse_prefix("198.18.7.0/24").prefix], 0)
    key = abi.Addr4()
    ctypes.memmove(ctypes.addressof(key), ipaddress.IPv4Address("192.0.2.44").packed, 4)
    bed.maps[MapName.BLOCK4H].set(key, abi.ListEntry(0, 0, 32))
    g.sync_lists_mask()  # the host map is not empty now; the prefilter stays trusted as it is
    assert lists_mask(bed) & abi.LM_PREFILTER
    assert reason(bed, "192.0.2.44") == "clean"
    lpf_rebuild(bed.maps)
    assert lists_mask(bed) & abi.LM_PREFILTER
    assert reason(bed, "192.0.2.44") == "blocklist"
    assert reason(bed, "198.18.7.1") == "blocklist"


def test_an_untrusted_prefilter_is_not_read(bed):
    """A carried-over config without XG_LM_PREFILTER (an older controller): every list is looked at."""
    g = Guard(None, None, bed.maps)
    g.upsert("block", [parse_prefix("198.18.7.0/24").prefix], 0)
    bed.maps[MapName.LPF].set(ctypes.c_uint32((2 + 0) * abi.LPF_WORDS + (0xC612 >> 6)), ctypes.c_uint64(0))
    assert reason(bed, "198.18.7.1") == "clean"  # the bit is gone and the prefilter trusted
    cfg = bed.maps[MapName.CONFIG].get(ctypes.c_uint32(0))
    cfg.lists_mask &= ~abi.LM_PREFILTER
    bed.maps[MapName.CONFIG].set(ctypes.c_uint32(0), cfg)
    assert reason(bed, "198.18.7.1") == "blocklist"
