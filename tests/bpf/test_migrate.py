"""Map shapes across an upgrade (migrate.py) on real kernel maps.

abi.MAP_SHAPES + MAP_LAYOUTS must describe exactly what a compile creates — with the default
sizes and with -D overrides — because an upgrade trusts them to decide which pinned maps the
new program may share (bcc reuses a pin without checking it). And a program with the previous
release's shapes (XG_REASON_MAX 16, smaller LRUs) hands its counters and entries over."""

from __future__ import annotations

import ctypes
import ipaddress
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from xdpguard.core.kernel import abi, libbpf, migrate
from xdpguard.core import guard, policy
from xdpguard.core.kernel.abi import Kind, MapName, Reason
from xdpguard.core.errors import UserError
from xdpguard.core.testrun import TestBed

pytestmark = pytest.mark.kernel

OLD = {"XG_REASON_MAX": 16, "XG_BANS_MAX": 4096, "XG_SOURCES_MAX": 8192, "XG_OPBANS_MAX": 4}
PROT, BLOCKED = "198.18.0.1", "203.0.113.9"


@pytest.fixture(scope="module")
def beds():
    old, new = TestBed(OLD), TestBed()
    try:
        yield old, new
    finally:
        old.close()
        new.close()


def fds(bed: TestBed) -> dict[MapName, int]:
    return {n: m.fd for n, m in bed.maps.items()}


def test_declared_shapes_are_what_the_compile_creates(beds):
    old, new = beds
    for bed, defines in ((old, OLD), (new, None)):
        want = migrate.expected_shapes(defines)
        have = {n: migrate.shape_of(fd) for n, fd in fds(bed).items()}
        assert set(have) == set(MapName)
        diff = {n.value: (have[n].describe(), want[n].describe()) for n in MapName if have[n] != want[n]}
        assert not diff, diff


def test_previous_shapes_hand_over_counters_and_entries(beds):
    old, new = beds
    old.protect(PROT)
    old.add("block", f"{BLOCKED}/32")
    frame = bytes(Ether() / IP(src=BLOCKED, dst=PROT) / UDP(sport=5000, dport=53))
    for _ in range(7):
        rv, _ = old.run(frame)
        assert rv == 1
    # a data-path ban and two operator bans, as the data path / cleansing write them
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    for i, m in enumerate((MapName.BANS, MapName.OPBANS, MapName.OPBANS)):
        old.maps[m].set(
            policy.src_key(ipaddress.ip_address(f"198.51.100.{i + 1}")),
            abi.Ban(now + 600 * 10**9, 0, int(Reason.BANNED), 0),
        )

    p = migrate.plan(fds(old))
    actions = {s.name: s.action for s in p.steps}
    assert actions[MapName.STATS] == "stats"
    assert actions[MapName.BANS] == actions[MapName.BUCKETS] == actions[MapName.SYNSEEN] == "copy"
    assert actions[MapName.OPBANS] == "copy" and actions[MapName.BLOCK4H] == "keep"
    assert actions[MapName.SAMPLES] == "reset"
    assert p.changes_shapes

    migrate.copy(p, fds(old), fds(new))
    slot = ctypes.c_uint32(abi.stats_slot(Kind.DROP, Reason.BLOCKLIST))
    assert sum(c.packets for c in new.maps[MapName.STATS].get(slot)) == 7
    old_slot = ctypes.c_uint32(int(Kind.DROP) * 16 + int(Reason.BLOCKLIST))
    assert sum(c.packets for c in old.maps[MapName.STATS].get(old_slot)) == 7
    assert len(new.maps[MapName.BANS]) == 1 and len(new.maps[MapName.OPBANS]) == 2

    # the same maps cannot shrink below what they hold: refused, nothing read-modified
    with pytest.raises(UserError, match="xg_opban_hash: 2 entries do not fit the new size 1"):
        migrate.plan(fds(old), {"XG_OPBANS_MAX": 1})
    # a policy map whose key changes cannot be carried: refused
    with pytest.raises(UserError, match="nothing was changed"):
        migrate.plan({MapName.PORTS: fds(old)[MapName.OPBANS]})


def test_grown_values_get_a_zero_tail_per_cpu():
    ncpu = libbpf.num_possible_cpus()
    have = migrate.Shape(6, 4, 12, 1, 0)
    want = migrate.Shape(6, 4, 20, 1, 0)
    value = b"".join(bytes([i + 1]) * 12 + b"\0" * 4 for i in range(ncpu))
    grown = migrate._grow(value, have, want, ncpu)
    assert len(grown) == 24 * ncpu
    assert all(
        grown[i * 24 : i * 24 + 12] == bytes([i + 1]) * 12 and not any(grown[i * 24 + 12 : (i + 1) * 24])
        for i in range(ncpu)
    )
    plain = migrate._grow(b"\1\2", migrate.Shape(1, 4, 2, 8, 0), migrate.Shape(1, 4, 5, 8, 0), ncpu)
    assert plain == b"\1\2\0\0\0"


def test_filter_vectors_new_to_the_program_are_compiled_before_the_swap(shared_bed):
    """An upgrade from a program without the compiled filter maps (the previous release): the
    ordered filter list is shared, the vectors are new and must be filled before the swap."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from xdpguard.core import protection
    from xdpguard.core.policy import Filter, GlobalPolicy

    old = shared_bed()  # the default build, reset; `new` must be a second live program of it
    with TestBed() as new:
        for bed in (old, new):
            bed.protect(PROT)
        guard.write_global_policy(old.maps, GlobalPolicy(filters=(Filter(action="drop", proto="udp", dport=(53, 53)),)))
        frame = bytes(Ether() / IP(src="198.51.100.5", dst=PROT) / UDP(sport=4000, dport=53))
        assert old.verdict(frame).reason == Reason.FEATURE
        live = {n: fd for n, fd in fds(old).items() if n not in protection.FILTER_VECTORS}
        p = migrate.plan(live)
        assert {s.name for s in p.steps if s.action == "new"} == set(protection.FILTER_VECTORS)
        # what a real upgrade shares through the pins: the config and the ordered list
        for name in (MapName.CONFIG, MapName.FILTERS):
            for k, v in old.maps[name].items():
                new.maps[name].set(k, v)
        assert new.verdict(frame).reason != Reason.FEATURE  # vectors empty: the filter is off
        protection.refill_derived(p, new.maps)
        assert new.verdict(frame).reason == Reason.FEATURE
