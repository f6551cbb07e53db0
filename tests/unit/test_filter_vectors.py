"""The compiled filter vectors (policy.filter_vectors) against the linear scan they replace.

For random filter lists and random packet headers, the filters whose bits survive the AND of
the six field words must be exactly those whose header conditions hold in the reference model
(model._filter_matches with the payload condition left out). The kernel side of the same
vectors is covered by tests/bpf/test_differential.py.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from xdpguard.core.kernel import abi
from xdpguard.core import guard, policy
from xdpguard.core.model.verdict import Headers, _filter_matches
from xdpguard.core.policy import Filter

PORTS = st.sampled_from([0, 1, 53, 80, 443, 1000, 65534, 65535]) | st.integers(0, 65535)
U8 = st.integers(0, 255)


def ranges(top: int, pool):
    return st.just((0, top)) | st.tuples(pool, pool).map(sorted).map(tuple)


@st.composite
def filters(draw) -> Filter:
    mask = draw(st.sampled_from([0, 0, 0x02, 0x12, 0xFF]) | U8)
    return Filter(
        proto=draw(st.sampled_from([None, "tcp", "udp", "icmp"])),
        sport=draw(ranges(65535, PORTS)),
        dport=draw(ranges(65535, PORTS)),
        length=draw(ranges(65535, st.integers(0, 2000) | PORTS)),
        ttl=draw(ranges(255, U8)),
        tcp_flags=(mask, draw(U8) & mask),
    )


@st.composite
def headers(draw) -> tuple[Headers, int]:
    proto = draw(st.sampled_from([6, 17, 1, 58, 47, 0]) | U8)
    has_l4 = draw(st.booleans())
    ports = has_l4 and proto in (6, 17)
    h = Headers(
        proto,
        draw(U8),
        False,
        has_l4,
        sport=draw(PORTS) if ports else 0,
        dport=draw(PORTS) if ports else 0,
        tcp_flags=draw(U8) if has_l4 and proto == 6 else 0,
    )
    return h, draw(st.integers(14, 2000) | st.integers(0, 65535))


def word(vec: bytes, at: int) -> int:
    return int.from_bytes(vec[at * 8 : at * 8 + 8], sys.byteorder)


def survivors(vec: bytes, live: int, h: Headers, n: int) -> int:
    """step_feature()'s AND of the field words."""
    ports = h.has_l4 and h.l4proto in (6, 17)
    tcp = h.has_l4 and h.l4proto == 6
    m = live & word(vec, abi.FV_PROTO + h.l4proto)
    m &= word(vec, abi.FV_DPORT + (h.dport if ports else abi.FV_NOPORT))
    m &= word(vec, abi.FV_SPORT + (h.sport if ports else abi.FV_NOPORT))
    m &= word(vec, abi.FV_LEN + (abi.FV_NOPORT if n > 65535 else n))
    m &= word(vec, abi.FV_TTL + h.ttl)
    m &= word(vec, abi.FV_FLAGS + (h.tcp_flags if tcp else abi.FV_NOTCP))
    return m


@settings(max_examples=300, deadline=None)
@given(fl=st.lists(filters(), max_size=abi.FILTERS_MAX), pkts=st.lists(headers(), min_size=1, max_size=8))
def test_vectors_select_what_the_linear_scan_matches(fl, pkts):
    fl = tuple(fl)
    vec, live, payload = policy.filter_vectors(fl)
    assert len(vec) == abi.FV_SLOTS * 8 and payload == 0 and live == (1 << len(fl)) - 1
    for h, n in pkts:
        frame = bytes(n)
        want = sum(1 << i for i, f in enumerate(fl) if _filter_matches(f, frame, h, 14))
        assert survivors(vec, live, h, n) == want


def test_payload_filters_are_marked_and_survive_on_their_header_fields():
    fl = (Filter(proto="udp", payload=b"\xab"), Filter(dport=(53, 53)), Filter(payload=b"\x01", payload_off=3))
    vec, live, payload = policy.filter_vectors(fl)
    assert payload == 0b101 and live == 0b111
    h = Headers(17, 64, False, True, sport=1, dport=53)
    assert survivors(vec, live, h, 100) == 0b111
    stripped = [replace(f, payload=b"", payload_mask=b"") for f in fl]
    assert all(_filter_matches(f, bytes(100), h, 14) for f in stripped)


# ---- the payload index (policy.payload_index, steps/feature.h payload_index) ----

PAYLOAD_BYTES = st.sampled_from([0x00, 0x41, 0xFF])


@st.composite
def payload_filters(draw) -> Filter:
    payload = bytes(draw(st.lists(PAYLOAD_BYTES, min_size=1, max_size=abi.PAYLOAD_MATCH_MAX)))
    mask = b""
    if draw(st.booleans()):
        mask = bytes(
            draw(st.lists(st.sampled_from([0xFF, 0x0F, 0x00, 0x41]), min_size=len(payload), max_size=len(payload)))
        )
    return Filter(
        payload=payload,
        payload_mask=mask,
        payload_base=draw(st.sampled_from(["l3", "l4", "payload"])),
        payload_off=draw(st.integers(0, 24) | st.integers(0, abi.PAYLOAD_OFF_MAX)),
    )


def index_survivors(vec: bytes, indexed: int, positions: list[int], frame: bytes, h: Headers, cand: int) -> int:
    """payload_index() of feature.h: cand ANDed with the word of every position's byte."""
    assert len(positions) <= abi.PPOS_MAX
    for k, code in enumerate(positions):
        fb, off = code >> abi.PPOS_OFF_BITS, code & ((1 << abi.PPOS_OFF_BITS) - 1)
        base = {abi.FB_L3: 14, abi.FB_L4: h.l4_off, abi.FB_PAYLOAD: h.payload_off}[fb]
        at = base + off
        v = frame[at] if base and at < len(frame) else abi.PV_ABSENT
        cand &= word(vec, k * abi.PV_VALUES + v)
    return cand


@settings(max_examples=300, deadline=None)
@given(
    fl=st.lists(payload_filters() | filters(), max_size=abi.FILTERS_MAX),
    frames=st.lists(
        st.tuples(st.lists(PAYLOAD_BYTES, max_size=80).map(bytes), st.integers(0, 40), st.booleans()),
        min_size=1,
        max_size=6,
    ),
)
def test_payload_index_decides_what_the_compare_decides(fl, frames):
    """Every filter the index decides survives it exactly when its payload compare holds; the
    ones it does not decide keep their bit."""
    fl = tuple(fl)
    vec, indexed, positions = policy.payload_index(fl)
    assert len(vec) == abi.PV_SLOTS * 8 and len(positions) <= abi.PPOS_MAX
    with_payload = sum(1 << i for i, f in enumerate(fl) if f.payload)
    assert indexed & ~with_payload == 0
    for body, l4, has_l4 in frames:
        l4_off = 34 + l4 if has_l4 else 0
        h = Headers(17, 64, False, has_l4, l4_off=l4_off, payload_off=l4_off + 8 if has_l4 else 0)
        frame = bytes(14 + 20 + l4) + body
        got = index_survivors(vec, indexed, positions, frame, h, (1 << 64) - 1)
        bare = [replace(f, payload=b"", payload_mask=b"") for f in fl]
        for i, f in enumerate(fl):
            if not indexed >> i & 1:
                assert got >> i & 1, "a filter the index does not decide keeps its bit"
                continue
            if _filter_matches(bare[i], frame, h, 14):  # (header conditions: the other words' business)
                assert bool(got >> i & 1) == _filter_matches(f, frame, h, 14)


def test_payload_index_takes_filters_in_order_while_their_positions_fit():
    # 64 four-byte signatures at offsets 0..15 (the benchmark's): 19 positions, all indexed
    fl = tuple(Filter(payload=bytes([0xDE, 0xAD, 0xBE, i]), payload_off=i % 16) for i in range(64))
    _, indexed, positions = policy.payload_index(fl)
    assert indexed == (1 << 64) - 1 and len(positions) == 19
    # 16-byte signatures at disjoint offsets: two fit in 32 positions, the third is compared
    fl = tuple(Filter(payload=bytes(range(1, 17)), payload_off=16 * i) for i in range(3))
    _, indexed, positions = policy.payload_index(fl)
    assert indexed == 0b011 and len(positions) == 32


# ---- partial rewrites of a generation (guard.py: only the words that differ are written) ----

DIGEST_FILTERS = (
    Filter(action="mitigate", proto="udp", dport=(53, 53), length=(100, 180), ttl=(40, 50)),
    Filter(proto="tcp", sport=(1000, 2000), tcp_flags=(0x12, 0x02)),
    Filter(action="pass", payload=b"GOOD", payload_base="payload", payload_off=2),
    Filter(proto="icmp", length=(0, 64), payload=b"\x08\x00", payload_mask=b"\xff\x0f", payload_base="l4"),
)


def test_the_compiled_words_are_those_of_the_compile_version():
    """guard.py patches a generation where its words differ from those of the filters its stamp
    names, which an older controller may have compiled: a change to what filter_vectors or
    payload_index write for the same filters must come with a new guard.COMPILE_VERSION (then
    record the new digest here)."""
    vec, live, payload = policy.filter_vectors(DIGEST_FILTERS)
    pvec, indexed, positions = policy.payload_index(DIGEST_FILTERS)
    digest = hashlib.sha256(vec + pvec + repr((live, payload, indexed, positions)).encode()).hexdigest()
    assert (guard.COMPILE_VERSION, digest) == (
        3,
        "a07431d177c195052db463204479800459bd8f4d8607b2b288d00dfa7f968da8",
    )


def test_stamps_name_the_filters_and_are_never_zero():
    a = guard._stamp(DIGEST_FILTERS)
    assert a and guard._stamp(()) and a == guard._stamp(tuple(DIGEST_FILTERS))
    assert a != guard._stamp(DIGEST_FILTERS[:3]) and a != guard._stamp(DIGEST_FILTERS[::-1])
    assert a != guard._stamp((replace(DIGEST_FILTERS[0], length=(100, 181)), *DIGEST_FILTERS[1:]))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 5000),
    changes=st.lists(st.tuples(st.integers(0, 4999), st.integers(1, 255)), max_size=40),
)
def test_changed_runs_cover_every_changed_word_and_only_chunks_that_changed(n, changes):
    old = bytes(8 * n)
    new = bytearray(old)
    for at, v in changes:
        if at < n:
            new[8 * at + (v % 8)] = v
    new = bytes(new)
    runs = guard.changed_runs(old, new)
    covered = set()
    for a, b in runs:
        assert 0 <= a < b <= n
        covered.update(range(a, b))
    differ = {i for i in range(n) if old[8 * i : 8 * i + 8] != new[8 * i : 8 * i + 8]}
    assert differ <= covered
    chunks = {i // 16 for i in differ}
    assert {i // 16 for i in covered} == chunks  # nothing beyond the changed chunks
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(runs, runs[1:]))  # sorted, adjacent ones merged
    patched = bytearray(old)
    for a, b in runs:
        patched[8 * a : 8 * b] = new[8 * a : 8 * b]
    assert bytes(patched) == new


def test_a_new_mitigation_costs_its_words_not_the_generation():
    """What a partial rewrite writes for the engine's kinds of change, against the whole
    generation (abi.FV_SLOTS words) the full compile wrote."""
    ops = (Filter(proto="udp", dport=(123, 123), length=(468, 468)),)
    mit = Filter(action="mitigate", proto="udp", dport=(53, 53), length=(100, 180), ttl=(40, 50))
    wider = replace(mit, length=(100, 260))
    before, after, widened = (policy.filter_vectors(f)[0] for f in (ops, (*ops, mit), (*ops, wider)))
    words = lambda runs: sum(b - a for a, b in runs)  # noqa: E731
    assert words(guard.changed_runs(after, widened)) <= 16 * 8  # 80 length words, in 16-word chunks
    # any source port: a free slot has its bit in every source-port word already (install, lift)
    assert words(guard.changed_runs(before, after)) <= 1024
    assert words(guard.changed_runs(after, before)) <= 1024
    # one source port: its bit leaves the other 65,535 source-port words (the layout's cost)
    exact = policy.filter_vectors((*ops, replace(mit, sport=(5000, 5000))))[0]
    assert abi.FV_SLOTS // 4 < words(guard.changed_runs(before, exact)) < abi.FV_SLOTS // 2


def test_free_slots_accept_any_source_port_and_nothing_else_sees_them():
    fl = (Filter(proto="udp", sport=(53, 53)),)
    vec, live, _ = policy.filter_vectors(fl)
    free = ((1 << abi.FILTERS_MAX) - 1) & ~live
    assert all(word(vec, abi.FV_SPORT + v) & free == free for v in (0, 53, 65535, abi.FV_NOPORT))
    assert all(word(vec, abi.FV_DPORT + v) & free == 0 for v in (0, 53, 65535, abi.FV_NOPORT))
    assert word(vec, abi.FV_SPORT + 54) & live == 0 and word(vec, abi.FV_SPORT + 53) & live == live


def test_payload_index_reads_first_the_positions_that_reject_most():
    """The data path stops reading once no indexed filter is left (feature.h payload_index): the
    benchmark's 64 signatures (DE AD BE i at offsets 0..15) on a payload that matches none are
    decided in 5 reads, where the order the filters named their positions in took 16."""
    fl = tuple(Filter(payload=bytes([0xDE, 0xAD, 0xBE, i]), payload_off=i % 16) for i in range(64))
    vec, indexed, positions = policy.payload_index(fl)
    h = Headers(17, 64, False, True, l4_off=34, payload_off=42)
    for body in (bytes(22), bytes(range(22)), b"\xff" * 22):
        frame = bytes(42) + body
        cand, reads = (1 << 64) - 1, 0
        for k in range(len(positions)):
            if not cand & indexed:
                break
            reads += 1
            cand = index_survivors(vec, indexed, positions[: k + 1], frame, h, (1 << 64) - 1)
        assert cand & indexed == 0 and reads == 5
    # the order changes no verdict: a frame carrying signature 37 leaves exactly filter 37
    body = bytearray(22)
    body[5:9] = bytes([0xDE, 0xAD, 0xBE, 37])
    got = index_survivors(vec, indexed, positions, bytes(42) + bytes(body), h, (1 << 64) - 1)
    assert got & indexed == 1 << 37
