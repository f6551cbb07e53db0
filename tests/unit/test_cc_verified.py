"""Guard.verify_challenged (issue 29 / 25: challenge-passing clients feed XDP's verified map),
against in-memory maps: what is written, for how long, what is left alone, the cap per call."""

from __future__ import annotations

import ctypes
import ipaddress
import time

from xdpguard.core.kernel import abi, libbpf
from xdpguard.core import guard, policy


class FakeMap:
    def __init__(self, key_type, value_type, full_at: int | None = None):
        self.key_type, self.value_type, self.d, self.full_at = key_type, value_type, {}, full_at

    def get(self, k):
        raw = self.d.get(bytes(k))
        return None if raw is None else self.value_type.from_buffer_copy(raw)

    def set(self, k, v, flags: int = 0) -> None:
        if self.full_at is not None and bytes(k) not in self.d and len(self.d) >= self.full_at:
            raise libbpf.BpfError(7, "bpf_map_update_elem: Argument list too long")  # E2BIG: full
        self.d[bytes(k)] = bytes(v)


def _guard(full_at: int | None = None) -> tuple[guard.Guard, FakeMap, FakeMap]:
    good = FakeMap(abi.SrcKey, abi.GoodSrc, full_at)
    bloom = FakeMap(ctypes.c_uint32, ctypes.c_uint64)
    return guard.Guard(None, None, {abi.MapName.GOODSRC: good, abi.MapName.GOODBLOOM: bloom}), good, bloom


def _entry(m: FakeMap, addr: str) -> abi.GoodSrc | None:
    return m.get(policy.src_key(ipaddress.ip_address(addr)))


def test_a_challenge_passing_source_becomes_tcp_verified_until_its_cookie_ends():
    g, good, bloom = _guard()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    w = g.verify_challenged([("198.18.0.10", 600.0), ("2001:db8:0:1::10", 30.0)])
    assert (w.written, w.new) == (2, ["198.18.0.10", "2001:db8:0:1::10"])
    e = _entry(good, "198.18.0.10")
    assert e.kind == abi.VF_TCP | abi.VF_L7
    assert 599e9 <= e.expires_ns - now <= 601e9  # expires with the cookie, not egress's day
    assert e.tokens > 0
    # its bloom bit is set (XDP looks a source up only when its bit is set)
    bit = policy.good_bloom_bit(policy.src_key(ipaddress.ip_address("198.18.0.10")))
    assert bloom.get(ctypes.c_uint32(bit >> 6)).value >> (bit & 63) & 1
    # the next tick: already written for as long, left alone
    w = g.verify_challenged([("198.18.0.10", 590.0)])
    assert (w.written, w.fresh, w.new) == (0, 1, [])


def test_an_entry_egress_learned_keeps_its_expiry_and_gains_the_bit():
    g, good, _ = _guard()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    k = policy.src_key(ipaddress.ip_address("198.18.0.11"))
    good.set(k, abi.GoodSrc(now + 86_400 * 10**9, abi.VF_TCP | abi.VF_UDP, 0, now, 5))
    w = g.verify_challenged([("198.18.0.11", 600.0)])
    e = good.get(k)
    assert (w.written, w.new) == (1, ["198.18.0.11"])  # newly verified by a challenge
    assert e.kind == abi.VF_TCP | abi.VF_UDP | abi.VF_L7 and e.expires_ns == now + 86_400 * 10**9
    assert (e.last_ns, e.tokens) == (now, 5)  # XDP's privilege bucket untouched


def test_cap_per_call_expired_cookies_and_a_full_map():
    found = [("198.18.17.1", 0.0), ("bad", 5.0)] + [(f"198.18.16.{i}", 600.0) for i in range(1, 11)]
    g, good, _ = _guard()
    w = g.verify_challenged(found, cap=4)
    assert (w.written, w.capped, w.full, len(good.d)) == (4, 6, 0, 4)
    assert _entry(good, "198.18.17.1") is None  # a cookie with nothing left is no verification
    g, good, _ = _guard(full_at=3)
    w = g.verify_challenged(found, cap=100)
    assert (w.written, w.full, len(good.d)) == (3, 7, 3)  # the first refusal stops the call
