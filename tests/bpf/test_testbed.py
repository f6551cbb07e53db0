"""TestBed.reset, on which the tier's shared compiles rest (tests/bpf/conftest.py `shared_bed`):
after traffic and policy have written to every kind of map — hashes, LRUs, LPM tries, arrays,
per-CPU arrays — a reset puts every map back byte for byte as it was handed out (run alone, that
is a fresh compile's state)."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from xdpguard.core.kernel import abi, libbpf
from xdpguard.core import guard, policy
from xdpguard.core.kernel.abi import MapName, Reason
from xdpguard.core.policy import AddressPolicy, Filter, GlobalPolicy, Limits

pytestmark = pytest.mark.kernel

PROT, SRC = "198.18.0.1", "203.0.113.7"


def snapshot(bed) -> dict[MapName, object]:
    """Every map's contents as bytes (plain arrays in batches: xg_reflect_arr has 65536 slots)."""

    def raw(v) -> bytes:
        return b"".join(bytes(x) for x in v) if isinstance(v, list) else bytes(v)

    out: dict[MapName, object] = {}
    for n, m in bed.maps.items():
        if n == MapName.SAMPLES:
            continue
        if libbpf.map_info(m.fd).type == abi.MAP_TYPES["array"]:
            out[n] = [bytes(m.value_type(v) if isinstance(v, int) else v) for v in m.array_values()]
        else:
            out[n] = {bytes(k): raw(v) for k, v in m.items()}
    return out


def test_reset_restores_every_map(shared_bed):
    bed = shared_bed()
    before = snapshot(bed)
    bed.protect(PROT, "2001:db8::1")
    bed.add("block", "198.51.100.0/24")
    bed.add("allow", "2001:db8:a::/48")
    addr = ipaddress.ip_address(PROT)
    guard.write_global_policy(bed.maps, GlobalPolicy(reflection=True, filters=(Filter(action="drop", payload=b"X"),)))
    guard.write_address_policy(bed.maps, addr, AddressPolicy(limits=Limits(src_pps=10, ban_s=60)))
    bed.maps[MapName.OPBANS].set(
        policy.src_key(ipaddress.ip_address("192.0.2.9")), abi.Ban(1 << 62, 0, int(Reason.BANNED), 0)
    )
    for i in range(50):  # buckets, bans, counters, the source sketch
        bed.run(bytes(Ether() / IP(src=f"203.0.113.{i}", dst=PROT) / UDP(sport=5000, dport=53) / b"hello"), repeat=20)
    bed.run(bytes(Ether() / IP(src=SRC, dst=PROT) / TCP(sport=4000, dport=80, flags="S")), repeat=5)
    dirty = snapshot(bed)
    assert dirty != before
    assert {n for n in MapName if dirty.get(n) != before.get(n)} >= {
        MapName.PROT4,
        MapName.PROT6,
        MapName.BLOCK4,
        MapName.ALLOW6,
        MapName.STATS,
        MapName.OPBANS,
        MapName.FILTERS,
        MapName.REFLECT,
    }
    bed.reset()
    after = snapshot(bed)
    assert {n for n in after if after[n] != before[n]} == set()
