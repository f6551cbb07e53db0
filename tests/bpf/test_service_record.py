"""The service record (abi.h xg_port_value, steps/port.h): one hash lookup of (address, proto,
port) carries the port policy, the port's limits and its destination bucket (xg_svc_arr at the
record's slot); and an upgrade from a program whose xg_ports_hash held the owners only gets its
records' slots and limits before the swap (protection.refill_derived)."""

from __future__ import annotations

import ctypes
import ipaddress
import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from xdpguard.core import guard, policy, protection
from xdpguard.core.errors import UserError
from xdpguard.core.guard import Guard
from xdpguard.core.kernel import abi, libbpf, migrate
from xdpguard.core.kernel.abi import Kind, MapName, Reason
from xdpguard.core.policy import AddressPolicy, Limits

pytestmark = pytest.mark.kernel

PROT = "198.18.0.1"
ADDR = ipaddress.ip_address(PROT)
SMALL = {"XG_PORTS_MAX": 1024}


def udp(dport: int, src: str = "198.51.100.7") -> bytes:
    return bytes(Ether() / IP(src=src, dst=PROT) / UDP(sport=4000, dport=dport))


def syn(dport: int) -> bytes:
    return bytes(Ether() / IP(src="198.51.100.8", dst=PROT) / TCP(sport=4000, dport=dport, flags="S"))


def counts(bed, frame: bytes, n: int) -> dict:
    """n runs of one frame: (kind, reason) → how many."""
    out: dict = {}
    for _ in range(n):
        v = bed.verdict(frame)
        out[(v.kind, v.reason)] = out.get((v.kind, v.reason), 0) + 1
    return out


@pytest.fixture
def bed(shared_bed):
    b = shared_bed(SMALL)
    b.protect(PROT)
    return b


def record(bed, proto: str, port: int):
    return bed.maps[MapName.PORTS].get(policy.port_key(ADDR, proto, port))


def test_open_port_with_limits_uses_its_record_only(bed):
    g = Guard(None, None, bed.maps)
    g.change_ports([ADDR], "udp", 53, 54, abi.PORT_BY_OPERATOR, True)
    guard.write_port_limits(bed.maps, ADDR, "udp", 53, 53, Limits(dst_pps=1, dst_burst_pkts=3))
    guard.write_port_limits(bed.maps, ADDR, "tcp", 22, 22, Limits(src_pps=1, src_burst_pkts=1))
    r53, r54, r22 = record(bed, "udp", 53), record(bed, "udp", 54), record(bed, "tcp", 22)
    assert r53.flags == abi.PORT_BY_OPERATOR | abi.PORT_SLOT | abi.PORT_LIMITS
    assert r54.flags == abi.PORT_BY_OPERATOR | abi.PORT_SLOT
    assert r22.flags == abi.PORT_SLOT | abi.PORT_LIMITS  # limits of its own, not open
    assert len({r53.slot, r54.slot, r22.slot}) == 3
    assert bed.maps[MapName.SVC].get(ctypes.c_uint32(r53.slot)).lim.dst_pps == 1
    # the listing and the address's flags know only the open ports
    assert g.open_ports() == {(PROT, "udp"): [(53, 54, abi.PORT_BY_OPERATOR)]}
    prot = bed.maps[MapName.PROT4].get(policy.prot_key(ADDR))
    assert prot.flags & abi.PROT_PORT_POLICY and prot.flags & abi.PROT_PORT_LIMITS

    # the port's destination budget, shared by every source, in the record's bucket
    got: dict = {}
    for i in range(5):
        v = bed.verdict(udp(53, src=f"198.51.100.{10 + i}"))
        got[(v.kind, v.reason)] = got.get((v.kind, v.reason), 0) + 1
    assert got == {(Kind.PASS, Reason.CLEAN): 3, (Kind.DROP, Reason.RATELIMIT): 2}
    assert bed.maps[MapName.SVC].get(ctypes.c_uint32(r53.slot)).bkt.last_ns > 0
    assert counts(bed, udp(54), 5) == {(Kind.PASS, Reason.CLEAN): 5}  # the address's limits: none
    assert len(bed.maps[MapName.DSTBKT]) == 0  # no lookup by key: nothing made there
    # a port with limits but not open: the port policy still drops it
    assert bed.verdict(syn(22)).reason == Reason.PORT

    # closing the port keeps the record while it has limits; removing those deletes it
    g.change_ports([ADDR], "udp", 53, 53, abi.PORT_BY_OPERATOR, False)
    assert record(bed, "udp", 53).flags == abi.PORT_SLOT | abi.PORT_LIMITS
    assert record(bed, "udp", 53).slot == r53.slot
    assert bed.verdict(udp(53)).reason == Reason.PORT
    guard.write_port_limits(bed.maps, ADDR, "udp", 53, 53, None)
    assert record(bed, "udp", 53) is None
    # a new record takes a free slot with an unused bucket (filled on its first packet)
    g.change_ports([ADDR], "udp", 55, 55, abi.PORT_BY_OPERATOR, True)
    r55 = record(bed, "udp", 55)
    assert r55.slot not in (r54.slot, r22.slot)
    assert bed.maps[MapName.SVC].get(ctypes.c_uint32(r55.slot)).bkt.last_ns == 0


def test_idle_record_buckets_go_back_to_unused(bed):
    g = Guard(None, None, bed.maps)
    g.change_ports([ADDR], "udp", 53, 53, abi.PORT_BY_OPERATOR, True)
    guard.write_port_limits(bed.maps, ADDR, "udp", 53, 53, Limits(dst_pps=1, dst_burst_pkts=1))
    assert counts(bed, udp(53), 2) == {(Kind.PASS, Reason.CLEAN): 1, (Kind.DROP, Reason.RATELIMIT): 1}
    slot = ctypes.c_uint32(record(bed, "udp", 53).slot)
    used = bed.maps[MapName.SVC].get(slot).bkt.last_ns
    guard.sweep_dst_buckets(bed.maps, used + 10 * 10**9, idle_s=60)  # not idle yet
    assert bed.maps[MapName.SVC].get(slot).bkt.last_ns == used
    guard.sweep_dst_buckets(bed.maps, used + 61 * 10**9, idle_s=60)
    svc = bed.maps[MapName.SVC].get(slot)
    assert (svc.bkt.last_ns, svc.bkt.pkt_tokens, svc.lim.dst_pps) == (0, 0, 1)  # the limits stay


def test_upgrade_from_owner_only_records_refills_slots_and_limits(bed):
    """The previous program's xg_ports_hash had an 8-byte value (the owners): the upgrade copies
    it zero-filled (no slot) and refills the records from the open ports and xg_portlim_hash."""
    key = policy.port_key(ADDR, "udp", 53)
    old = libbpf.lib().bpf_map_create(
        1, b"xg_ports_hash", ctypes.sizeof(abi.PortKey), 8, SMALL["XG_PORTS_MAX"], None
    )  # BPF_MAP_TYPE_HASH
    assert old >= 0
    try:
        libbpf.map_update(old, key, ctypes.c_uint64(abi.PORT_BY_OPERATOR))
        # what the old controller left in the maps the new program shares: limits, the flags
        lim = Limits(dst_pps=1, dst_burst_pkts=2)
        bed.maps[MapName.PORTLIM].set(key, lim.to_c())
        pm = bed.maps[MapName.PROT4]
        prot = pm.get(policy.prot_key(ADDR))
        prot.flags |= abi.PROT_PORT_POLICY | abi.PROT_PORT_LIMITS
        pm.set(policy.prot_key(ADDR), prot)

        p = migrate.plan({MapName.PORTS: old}, SMALL)
        actions = {s.name: s.action for s in p.steps}
        assert actions[MapName.PORTS] == "copy" and actions[MapName.SVC] == "new"
        migrate.copy(p, {MapName.PORTS: old}, {n: m.fd for n, m in bed.maps.items()})
        assert record(bed, "udp", 53).flags == abi.PORT_BY_OPERATOR  # copied: open, no slot yet
        assert bed.verdict(udp(54)).reason == Reason.PORT

        protection.refill_derived(p, bed.maps)
        r = record(bed, "udp", 53)
        assert r.flags == abi.PORT_BY_OPERATOR | abi.PORT_SLOT | abi.PORT_LIMITS
        assert bed.maps[MapName.SVC].get(ctypes.c_uint32(r.slot)).lim.dst_burst_pkts == 2
        assert counts(bed, udp(53), 3) == {(Kind.PASS, Reason.CLEAN): 2, (Kind.DROP, Reason.RATELIMIT): 1}
        assert guard.refill_service_records(bed.maps) == 1  # again: nothing changes
        assert record(bed, "udp", 53).slot == r.slot
    finally:
        os.close(old)


def test_address_defaults_apply_on_an_open_port_without_limits(bed):
    g = Guard(None, None, bed.maps)
    guard.write_address_policy(bed.maps, ADDR, AddressPolicy(limits=Limits(dst_pps=1, dst_burst_pkts=2)))
    g.change_ports([ADDR], "udp", 53, 53, abi.PORT_BY_OPERATOR, True)
    assert counts(bed, udp(53), 3) == {(Kind.PASS, Reason.CLEAN): 2, (Kind.DROP, Reason.RATELIMIT): 1}
    assert len(bed.maps[MapName.DSTBKT]) == 0


def test_limits_room_counts_the_records_open_ports_share(bed):
    """A port with limits of its own takes a service record like an open port: the room check
    counts the records, so limits on open ports need none and other ports may not overflow."""
    g = Guard(None, None, bed.maps)
    g.change_ports([ADDR], "udp", 1, 1000, abi.PORT_BY_OPERATOR, True)
    g.check_port_limits_room([ADDR], "udp", 1, 1000)  # their records exist already
    g.check_port_limits_room([ADDR], "tcp", 1, 24)  # 1,024 records: full, not over
    with pytest.raises(UserError, match="too many per-port limits: 1,025 entries, the table holds 1,024"):
        g.check_port_limits_room([ADDR], "tcp", 1, 25)
