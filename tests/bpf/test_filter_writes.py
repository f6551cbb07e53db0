"""Filter changes written in part (guard.py, issue 27): a change costs what changed, and stays right.

- Another writer between two calls of one Guard (the CLI, the reconciler, a second daemon: a map
  dict of its own, so a memory of its own) is neither lost nor overwritten with a stale table.
- A generation written in part holds exactly what a full compile writes, whoever wrote before.
- A writer that died half-way leaves a generation no one patches as if it were whole.
- The generation in use is never written; the switch to the new one is the last write.
"""

from __future__ import annotations

import ctypes
import os
import random
import sys
from dataclasses import replace

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from xdpguard.core import guard, policy
from xdpguard.core.kernel import abi, libbpf
from xdpguard.core.kernel.abi import MapName, Reason
from xdpguard.core.kernel.maps import BpfMap
from xdpguard.core.policy import MITIGATE, Filter, GlobalPolicy

pytestmark = pytest.mark.kernel

PROT = "198.18.0.1"

OPER = Filter(proto="udp", dport=(9999, 9999))
M53 = Filter(action=MITIGATE, proto="udp", dport=(53, 53), length=(40, 400))
M123 = Filter(action=MITIGATE, proto="udp", dport=(123, 123), length=(40, 400), ttl=(1, 200))
M161 = Filter(action=MITIGATE, proto="udp", dport=(161, 161), sport=(5000, 5000))
MPAY = Filter(  # (as the maps give it back: the mask spelt out)
    action=MITIGATE,
    proto="udp",
    dport=(11211, 11211),
    payload=b"\x00\x01",
    payload_mask=b"\xff\xff",
    payload_base="payload",
)


def udp(dport: int, payload: bytes = b"hello") -> bytes:
    return bytes(Ether() / IP(src="203.0.113.66", dst=PROT, ttl=64) / UDP(sport=5000, dport=dport) / Raw(payload))


@pytest.fixture(scope="module")
def bed(shared_bed):
    b = shared_bed()
    b.protect(PROT)
    guard.write_global_policy(b.maps, GlobalPolicy(reflection=False))
    return b


@pytest.fixture
def clean(bed):
    yield bed.maps
    guard.write_global_policy(bed.maps, GlobalPolicy(reflection=False), guard.read_global_policy(bed.maps))
    guard.write_mitigation_filters(bed.maps, [])


@pytest.fixture
def other(bed):
    """A second writer on the same maps, with its own fds and so its own memory (as another
    process opens them)."""
    maps = {n: BpfMap(n, os.dup(m.fd)) for n, m in bed.maps.items()}
    try:
        yield maps
    finally:
        for m in maps.values():
            m.close()


def raw_table(m) -> list[Filter]:
    """xg_filters_arr[0..count), read past every memory."""
    return list(guard._read_table(m))


def words(m: BpfMap, first: int, n: int) -> bytes:
    return b"".join(w.to_bytes(8, sys.byteorder) for w in guard._read_slots(m, first, n))


def assert_generation_is(m, gen: int, filters: tuple[Filter, ...]) -> None:
    """Generation `gen` holds exactly what a full compile of `filters` writes."""
    head = m[MapName.FHEAD].get(ctypes.c_uint32(gen))
    vec, live, payload = policy.filter_vectors(filters)
    assert (head.count, head.live, head.payload) == (len(filters), live, payload)
    assert words(m[MapName.FVEC], gen * abi.FV_SLOTS, abi.FV_SLOTS) == vec
    pvec, indexed, positions = policy.payload_index(filters)
    assert words(m[MapName.PVEC], gen * abi.PV_SLOTS, abi.PV_SLOTS) == pvec
    ph = m[MapName.PHEAD].get(ctypes.c_uint32(gen))
    assert (ph.indexed, list(ph.pos[: ph.npos])) == (indexed, positions)
    defs = guard._read_slots(m[MapName.FDEF], gen * abi.FILTERS_MAX, len(filters))
    assert tuple(Filter.from_c(f) for f in defs) == filters


def live_gen(m) -> int:
    return m[MapName.FSEL].get(ctypes.c_uint32(0)).gen & 1


def test_a_change_by_another_writer_between_two_calls_is_kept(bed, clean, other):
    a = bed.maps
    guard.write_mitigation_filters(a, [M53])
    # the CLI adds an operator filter (write_global_policy keeps the mitigations, after it)
    guard.write_global_policy(other, GlobalPolicy(reflection=False, filters=(OPER,)), guard.read_global_policy(other))
    assert guard.write_mitigation_filters(a, [M53, M123]) == 2  # the daemon widens its set
    assert raw_table(a) == [OPER, M53, M123]
    assert_generation_is(a, live_gen(a), (OPER, M53, M123))
    assert bed.verdict(udp(9999)).reason == Reason.FEATURE
    assert bed.verdict(udp(53)).reason == Reason.MITIGATION
    assert bed.verdict(udp(123)).reason == Reason.MITIGATION
    # another writer lifts a mitigation behind the daemon's back; the daemon then writes the
    # very list it wrote last: its memory is stale, so that is a change, not a no-op
    guard.write_mitigation_filters(other, [M123])
    assert bed.verdict(udp(53)).reason == Reason.CLEAN
    guard.write_mitigation_filters(a, [M53, M123])
    assert raw_table(a) == [OPER, M53, M123]
    assert bed.verdict(udp(53)).reason == Reason.MITIGATION
    # same count, another filter: the table is read again, not assumed
    guard.write_mitigation_filters(other, [M161, M123])
    assert guard.read_mitigation_filters(a) == [M161, M123]
    assert guard.read_global_policy(a).filters == (OPER,)
    guard.write_mitigation_filters(a, [M53])
    assert raw_table(a) == [OPER, M53]
    assert_generation_is(a, live_gen(a), (OPER, M53))
    assert bed.verdict(udp(161)).reason == Reason.CLEAN
    assert bed.verdict(udp(53)).reason == Reason.MITIGATION


def test_generations_written_in_part_hold_exactly_a_full_compile(bed, clean, other):
    rng = random.Random(27)
    pool = [M53, M123, M161, MPAY, replace(M53, length=(40, 800)), replace(M123, ttl=(30, 90))]
    writers = {"daemon": bed.maps, "cli": other}
    last = {}
    for step in range(14):
        who = rng.choice(["daemon", "daemon", "cli", "fresh"])
        m = writers["cli" if who == "cli" else "daemon"]
        if who == "fresh":  # a new Guard on the same maps: no memory at all
            guard._MEMOS.pop(m[MapName.FSEL], None)
        if rng.random() < 0.25:
            ops = tuple(rng.sample([OPER, Filter(proto="tcp", dport=(22, 22), action="pass")], rng.randint(0, 2)))
            guard.write_global_policy(m, GlobalPolicy(reflection=False, filters=ops), guard.read_global_policy(m))
            last[live_gen(bed.maps)] = tuple(raw_table(bed.maps))  # (a change too, compiled)
        mits = rng.sample(pool, rng.randint(0, len(pool)))
        guard.write_mitigation_filters(m, mits)
        want = tuple(f for f in raw_table(bed.maps) if f.action != MITIGATE) + tuple(mits)
        assert raw_table(bed.maps) == list(want), step
        g = live_gen(bed.maps)
        assert_generation_is(bed.maps, g, want)
        if g ^ 1 in last:  # the other generation still holds the change before, stamped as such
            assert guard._compiled_in(bed.maps, g ^ 1) == last[g ^ 1]
        last[g] = want


def test_a_writer_that_died_half_way_leaves_no_generation_patched_as_whole(bed, clean, monkeypatch):
    m = bed.maps
    s0, s1, x = (M53,), (M53, M123), (M161, MPAY, M123)
    guard.write_mitigation_filters(m, list(s0))
    guard.write_mitigation_filters(m, list(s1))
    target = live_gen(m) ^ 1  # holds s0
    real = libbpf.map_update_batch
    fvec = m[MapName.FVEC].fd

    def dies_half_way(fd, keys_ptr, values_ptr, count, elem_flags=libbpf.BPF_ANY):
        if fd == fvec:
            real(fd, keys_ptr, values_ptr, max(1, count // 2), elem_flags)
            raise OSError("killed")
        return real(fd, keys_ptr, values_ptr, count, elem_flags)

    monkeypatch.setattr(libbpf, "map_update_batch", dies_half_way)
    with pytest.raises(OSError):
        guard.write_mitigation_filters(m, list(x))
    monkeypatch.setattr(libbpf, "map_update_batch", real)
    assert live_gen(m) == target ^ 1  # never switched to the torn generation
    assert bed.verdict(udp(123)).reason == Reason.MITIGATION and bed.verdict(udp(161)).reason == Reason.CLEAN
    assert guard._compiled_in(m, target) is None  # its stamp went before its words
    # s0 again, into the torn generation: what it held before the crash, so a patch would write
    # nothing; it must be written whole
    guard.write_mitigation_filters(m, list(s0))
    assert live_gen(m) == target
    assert_generation_is(m, target, s0)
    assert bed.verdict(udp(53)).reason == Reason.MITIGATION and bed.verdict(udp(123)).reason == Reason.CLEAN


def test_the_generation_in_use_is_never_written_and_the_switch_comes_last(bed, clean, monkeypatch):
    m = bed.maps
    fds = {m[n].fd: n for n in (MapName.FVEC, MapName.PVEC, MapName.FDEF, MapName.FHEAD, MapName.PHEAD, MapName.FSEL)}
    writes: list[tuple[MapName, int, int | None]] = []  # (map, key, xg_fsel.gen written)
    real_batch, real_update = libbpf.map_update_batch, libbpf.map_update

    def batch(fd, keys_ptr, values_ptr, count, elem_flags=libbpf.BPF_ANY):
        if fd in fds:
            writes.extend((fds[fd], k, None) for k in (ctypes.c_uint32 * count).from_address(keys_ptr))
        return real_batch(fd, keys_ptr, values_ptr, count, elem_flags)

    def update(fd, key, value, flags=libbpf.BPF_ANY):
        if fd in fds:
            writes.append((fds[fd], key.value, value.gen if fds[fd] == MapName.FSEL else None))
        return real_update(fd, key, value, flags)

    monkeypatch.setattr(libbpf, "map_update_batch", batch)
    monkeypatch.setattr(libbpf, "map_update", update)
    per_gen = {
        MapName.FVEC: abi.FV_SLOTS,
        MapName.PVEC: abi.PV_SLOTS,
        MapName.FDEF: abi.FILTERS_MAX,
        MapName.FHEAD: 1,
        MapName.PHEAD: 1,
    }
    for mits in ([M53], [M53, MPAY], [replace(M53, length=(40, 900)), MPAY], [MPAY], []):
        in_use = live_gen(m)
        writes.clear()
        guard.write_mitigation_filters(m, mits)
        assert writes and writes[-1] == (MapName.FSEL, 0, in_use ^ 1)  # the switch, last
        assert live_gen(m) == in_use ^ 1
        for name, key, gen in writes[:-1]:
            if name == MapName.FSEL:
                assert gen == in_use  # the tag cleared before anything else: the generation unchanged
            else:
                assert key // per_gen[name] == in_use ^ 1, (name, key)
        assert m[MapName.FSEL].get(ctypes.c_uint32(0)).reserved != 0


def test_settle_brings_the_other_generation_up_so_the_next_change_writes_its_own_words(bed, clean, other, monkeypatch):
    m = bed.maps
    guard.write_mitigation_filters(m, [M123])
    guard.write_mitigation_filters(m, [M123, M53])  # the install: the other generation still holds [M123]
    assert not guard.settle_filters(m)  # not right after the switch: a packet may still read the old one
    monkeypatch.setattr(guard, "SETTLE_AFTER_S", 0.0)
    g = live_gen(m)
    assert guard.settle_filters(m)
    assert live_gen(m) == g  # the generation in use stays in use
    assert_generation_is(m, g, (M123, M53))
    assert_generation_is(m, g ^ 1, (M123, M53))
    assert guard._compiled_in(m, g ^ 1) == (M123, M53)
    assert not guard.settle_filters(m)  # nothing left to settle
    real = libbpf.map_update_batch
    written = []

    def counting(fd, keys_ptr, values_ptr, count, elem_flags=libbpf.BPF_ANY):
        written.append(count)
        return real(fd, keys_ptr, values_ptr, count, elem_flags)

    monkeypatch.setattr(libbpf, "map_update_batch", counting)
    wider = replace(M53, length=(40, 800))
    guard.write_mitigation_filters(m, [M123, wider])  # the widen: its 400 length words, in 16-word runs
    assert 400 <= sum(written) <= 400 + 32
    assert_generation_is(m, live_gen(m), (M123, wider))
    assert bed.verdict(udp(53, b"x" * 500)).reason == Reason.MITIGATION
    # after a lift the other generation keeps the lifted filter: installed again (or another
    # fingerprint in its slot), most of its words are there already
    assert guard.settle_filters(m)
    guard.write_mitigation_filters(m, [M123])
    assert not guard.settle_filters(m)
    written.clear()
    guard.write_mitigation_filters(m, [M123, M53])
    assert sum(written) <= 400 + 32
    assert_generation_is(m, live_gen(m), (M123, M53))
    # another writer in between: this memory no longer holds, settle leaves the maps alone
    guard.write_mitigation_filters(other, [M123])
    assert not guard.settle_filters(m)
    assert_generation_is(m, live_gen(m), (M123,))
