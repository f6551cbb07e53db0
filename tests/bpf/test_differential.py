"""Differential test: the XDP program against the reference model (xdpguard/core/model.py).

Hypothesis draws a policy (protected addresses, allow/block prefixes — covering, nested and
expired ones —, open ports, blocked protocols, fragment policy, reflection ports, up to 64 feature
filters, per-port limit overrides, bans, monitor mask, program on/off) and a handful of raw
packets (v4/v6, 0–3 VLAN tags, fragments, malformed ihl/version/tot_len/doff, truncation at any
byte, random TCP flags and ports, payloads that often contain a filter's bytes at its offset).
The TCP state step is covered with its recorder: each example also draws frames leaving the
protected interface (replies from protected addresses with every TCP flag mix, some not TCP, not
from a protected address, behind VLAN tags or IPv6 option headers, truncated) and runs them
through the tc egress program (BPF_PROG_TEST_RUN on SCHED_CLS) and Model.egress; the connection
tables must then hold the same entries and states, and inbound packets are often drawn on those
connections (reversed). Expired table entries, the per-address off switch and the attach grace
period are drawn too. IPv6 frames may carry hop-by-hop/routing/destination options chains
(also over-long and truncated ones).

Every packet's verdict through BPF_PROG_TEST_RUN (TestBed.verdict, which also checks that exactly
one counter moved) must equal the model's: action, kind and reason.

Limits and the SYN threshold are 0 or far out of reach: the model treats them as never dropping
(time-dependent steps are tested in test_cleansing_steps.py). The TCP admission budget (budget.h
budget_syn_admit: unverified SYNs per service below the SYN threshold) is drawn within reach: a
setting of 1 or 2 SYN/s, or a learned rate of 1 written into a service's entry, against packets
that are often repeated, so SYNs pass it and then meet the SYN defence (a cookie, or a `syn` drop
of retransmission authentication, whose windows start 100 s after a first SYN: none
authenticates within an example). The budgets, the first-SYN memory and the authentications are
emptied before each example, so each starts with full buckets; a bucket of 1-2 SYN/s refills
its next SYN 0.5-1 s later, far longer than an example's packets take. The UDP budget stays out
of reach (TestBed). One TestBed serves the module; an example's policy is applied as a diff
against the previous one, so a draw writes few map entries.

Examples are randomized: each run draws XDPGUARD_DIFF_EXAMPLES examples (default 2000, locally and
under CI=true) from a fresh random seed, printed at the start of the module and in a failure's
report. A failure is replayed with the same seed and count:

    XDPGUARD_DIFF_SEED=<seed> XDPGUARD_DIFF_EXAMPLES=<count> bash scripts/test.sh tests/bpf/test_differential.py

The deep run (10000 examples, what every CI run used to do derandomized) is behind the same flag:
`XDPGUARD_DIFF_EXAMPLES=10000` (e.g. `XDPGUARD_DIFF_EXAMPLES=10000 .ci/run`). Different runs draw
different examples, so coverage accumulates across runs instead of repeating one fixed set.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import secrets
import struct
import time

import pytest
from hypothesis import HealthCheck, event, given, note, seed, settings
from hypothesis import strategies as st

from xdpguard.core.kernel import abi
from xdpguard.core import guard, policy
from xdpguard.core.kernel.abi import MapName, Reason
from xdpguard.core.model.verdict import Listed, Model, Protected, Setup, egress_flow
from xdpguard.core.policy import AddressPolicy, Filter, GlobalPolicy, Limits, SynPolicy
from xdpguard.core.prefixes import Prefix, parse_prefix
from xdpguard.core.guard import Guard
from xdpguard.core.testrun import TestBed

pytestmark = pytest.mark.kernel

CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
EXAMPLES = int(os.environ.get("XDPGUARD_DIFF_EXAMPLES", "2000"))
SEED = int(os.environ.get("XDPGUARD_DIFF_SEED") or secrets.randbits(64))
REPLAY = (
    f"test_differential: {EXAMPLES} examples from seed {SEED}; replay with "
    f"XDPGUARD_DIFF_SEED={SEED} XDPGUARD_DIFF_EXAMPLES={EXAMPLES}"
)

IP = ipaddress.ip_address
PROTECTABLE = [IP("198.18.0.1"), IP("198.18.0.3"), IP("2001:db8::1"), IP("2001:db8::3")]
SLOTS = {a: i for i, a in enumerate(PROTECTABLE)}
NEVER_PROTECTED = {4: IP("198.18.0.2"), 6: IP("2001:db8::2")}
DSTS = {f: [a for a in PROTECTABLE if a.version == f] + [NEVER_PROTECTED[f]] for f in (4, 6)}
SOURCES = {
    4: [IP(a) for a in ("203.0.113.7", "203.0.113.8", "203.0.113.130", "203.0.112.9", "198.51.100.10", "192.0.2.1")],
    6: [
        IP(a) for a in ("2001:db8:bad::7", "2001:db8:bad::8", "2001:db8:bad:1::7", "2001:db8:c::10", "2001:db8:ffff::1")
    ],
}
# Prefixes covering the sources above at many depths (nested: longest-prefix semantics).
PREFIXES = [
    parse_prefix(c).prefix
    for c in (
        "0.0.0.0/0",
        "203.0.112.0/23",
        "203.0.113.0/24",
        "203.0.113.0/25",
        "203.0.113.0/28",
        "203.0.113.0/29",
        "203.0.113.4/30",
        "203.0.113.6/31",
        "203.0.113.7",
        "203.0.113.8",
        "203.0.113.128/25",
        "198.51.100.0/24",
        "198.51.100.10",
        "192.0.2.1",
        "::/0",
        "2001:db8::/32",
        "2001:db8:bad::/48",
        "2001:db8:bad::/64",
        "2001:db8:bad::/120",
        "2001:db8:bad::4/126",
        "2001:db8:bad::7",
        "2001:db8:bad::8",
        "2001:db8:c::/48",
        "2001:db8:c::10",
        "2001:db8:bad:1::/64",
    )
]
NEVER, EXPIRED, LATER = "never", "expired", "later"  # list entry expiry classes
PORTS = [0, 22, 53, 80, 123, 443, 1900, 8080, 11211, 65535]
ALPHABET = [0x00, 0x41, 0x45, 0xFF]  # payload bytes: small, so random payloads match filters often
HUGE = Limits(
    src_pps=policy.MAX_PPS, src_bps=policy.MAX_BPS, dst_pps=policy.MAX_PPS, syn_src_pps=policy.MAX_PPS, ban_s=60
)
# Retransmission authentication never completes within an example: its window starts 100 s after
# a first SYN (the model has no time). SynPolicy()'s threshold is 0: no SYN defence, no budget.
LONG_AUTH = {"auth_min_ms": 100_000, "auth_max_ms": 120_000}
HUGE_SYN = SynPolicy(threshold_pps=policy.MAX_PPS, **LONG_AUTH)
BAN_S = 3600  # drop-ban filters: no ban may expire within an example
DROP_REASONS = [r for r in Reason if r.is_drop]
# Small maps: iterating an (almost) empty hash costs a scan of all its buckets, and the list
# writers iterate (Guard.sync_lists_mask, change_ports). Map sizes do not change any verdict.
SMALL_MAPS = {
    "XG_LIST_MAX": 1024,
    "XG_PORTS_MAX": 1024,
    "XG_BANS_MAX": 1024,
    "XG_SOURCES_MAX": 4096,
    "XG_SYNAUTH_MAX": 1024,
    "XG_FLOWS_MAX": 1024,
    "XG_EMBRYOS_MAX": 1024,
    "XG_OPBANS_MAX": 1024,
    "XG_BUDGET_MAX": 1024,
}


# ---- policy strategies (module-level constants: building strategies per draw is slow) ----

BOOL = st.booleans()
# draw(RARE[n]): True 1 in n times. Hypothesis favours 0 and the bounds of a range: those map to False.
RARE = {n: st.integers(0, 4 * n - 1).map(lambda x, n=n: x % n == 1) for n in (3, 4, 5, 6, 8, 10, 12, 16)}
U8, U16 = st.integers(0, 255), st.integers(0, 65535)
SPAN = st.integers(0, 60)
KIND8 = st.integers(0, 7)
RANGE_POOLS = {
    65535: st.sampled_from(PORTS),
    1: st.sampled_from([14, 34, 54, 60, 64, 74, 100, 200]),
    255: st.sampled_from([0, 1, 63, 64, 128, 255]),
}
ACTIONS = st.sampled_from(["drop", "drop", "pass", "drop-ban", "mitigate"])
BASES = st.sampled_from(["l3", "l4", "payload"])
PAYLOADS = st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=16).map(bytes)
MASK_BYTE = st.sampled_from([0xFF, 0x0F, 0xF0, 0x00, 0x41])
OFFSETS = st.integers(0, 48) | st.integers(0, abi.PAYLOAD_OFF_MAX)
FPROTOS = st.sampled_from([None, None, None, "tcp", "udp", "icmp"])


def _range(draw, top: int, pool_key: int | None = None) -> tuple[int, int]:
    kind = draw(KIND8)
    if kind <= 5:
        return 0, top
    if kind == 6:
        lo = draw(RANGE_POOLS[pool_key or top])
        return lo, min(top, lo + draw(SPAN))
    bound = U16 if top == 65535 else U8
    a, b = draw(bound), draw(bound)
    return min(a, b), max(a, b)


@st.composite
def filters(draw) -> Filter:
    action = draw(ACTIONS)
    payload = mask = b""
    base = "payload"
    off = 0
    if not draw(RARE[3]):
        payload = draw(PAYLOADS)
        if draw(BOOL):
            mask = bytes(draw(MASK_BYTE) for _ in payload)
        base = draw(BASES)
        off = draw(OFFSETS)
    flags = (0, 0)
    if draw(RARE[4]):
        m = draw(U8)
        flags = (m, draw(U8) & m)
    return Filter(
        action=action,
        proto=draw(FPROTOS),
        sport=_range(draw, 65535),
        dport=_range(draw, 65535),
        length=_range(draw, 65535, 1),
        ttl=_range(draw, 255),
        tcp_flags=flags,
        payload=payload,
        payload_mask=mask,
        payload_base=base,
        payload_off=min(off, abi.PAYLOAD_OFF_MAX + 16 - len(payload)),
        ban_s=BAN_S if action == "drop-ban" else 0,
    )


FILTER = filters()
FILTER_LISTS = st.lists(FILTER, max_size=8) | st.lists(FILTER, max_size=abi.FILTERS_MAX)
PROTOCOL_SETS = st.sets(st.sampled_from(sorted(policy.PROTOCOLS)), max_size=2)
LIMITS = st.sampled_from([Limits(), HUGE])
SYNS = st.sampled_from(
    [
        SynPolicy(),
        HUGE_SYN,
        SynPolicy(always=True, **LONG_AUTH),
        SynPolicy(threshold_pps=policy.MAX_PPS, mode="retransmit", **LONG_AUTH),
    ]
)
# the TCP budget: the setting (0: the default, 500/s with a burst of 64: out of an example's reach)
BUDGET_TCP = st.sampled_from([0, 1, 1, 2])
PORT_SETS = st.sets(st.tuples(st.sampled_from(["tcp", "udp"]), st.sampled_from(PORTS[1:])), max_size=4)
LIMIT_PORT_SETS = st.sets(st.tuples(st.sampled_from(["tcp", "udp"]), st.sampled_from(PORTS[1:])), max_size=2)
ADDR_SETS = st.sets(st.sampled_from(PROTECTABLE), min_size=1)
LIST_ENTRIES = {
    n: st.dictionaries(st.sampled_from(PREFIXES), st.sampled_from([NEVER, NEVER, EXPIRED, LATER]), max_size=n)
    for n in (3, 6)
}
REFL_PORTS = st.sets(st.sampled_from(PORTS[1:] + [19, 389]), max_size=5).map(frozenset)
REASON_SETS = st.sets(st.sampled_from(DROP_REASONS))
BANNED = st.sets(st.sampled_from(SOURCES[4] + SOURCES[6]), min_size=1, max_size=2).map(frozenset)


@st.composite
def protected_entries(draw) -> Protected:
    pol = AddressPolicy(frozenset(draw(PROTOCOL_SETS)) if draw(RARE[3]) else frozenset(), draw(LIMITS), draw(SYNS))
    ports = frozenset()
    if draw(BOOL):  # open ports (port policy on, and with it the TCP state step), often the connections' ports
        ports = frozenset(draw(PORT_SETS)) | (
            frozenset({("tcp", 80), ("tcp", 443)}) if not draw(RARE[4]) else frozenset()
        )
    limits = {k: HUGE for k in draw(LIMIT_PORT_SETS)} if draw(RARE[4]) else {}
    return Protected(pol, ports, limits, tcpstate=not draw(RARE[6]))


PROTECTED = protected_entries()


FLOW_STATES = {"est": abi.FLOW_EST, "fin": abi.FLOW_FIN, "rst": abi.FLOW_RST, "syn": abi.FLOW_SYN}
FLOW_PORTS = [80, 80, 443, 22, 8080]  # protected-side ports of drawn connections (mostly open ones)
CLIENT_PORTS = [1024, 40000, 65535]


def flow_keys(addrs):
    """Connection keys (family, client, client port, protected, protected port) on addrs."""
    return st.tuples(st.sampled_from(sorted(addrs, key=lambda a: (a.version, a)))).flatmap(
        lambda t: st.tuples(
            st.just(t[0].version),
            SRC_POOL[t[0].version],
            st.sampled_from(CLIENT_PORTS),
            st.just(t[0].packed),
            st.sampled_from(FLOW_PORTS),
        )
    )


@st.composite
def setups(draw) -> tuple[Setup, dict]:
    addrs = draw(ADDR_SETS)
    protected = {a: draw(PROTECTED) for a in sorted(addrs, key=lambda a: (a.version, a))}
    # (an IPv6 address in cookie mode keeps the retransmit authentication, XG_SYNCOOKIE_IPV6 0:
    # with LONG_AUTH it drops every unverified SYN of an example, as the model says)
    rates = {}
    if draw(RARE[4]):  # a rate the controller wrote into a TCP service's entry (daemon/budgets.py)
        services = st.tuples(st.sampled_from(sorted(addrs, key=lambda a: (a.version, a))), st.sampled_from(FLOW_PORTS))
        rates = {k: 1 for k in draw(st.lists(services, max_size=2))}
    expiry = {"allow": draw(LIST_ENTRIES[3]), "block": draw(LIST_ENTRIES[6])}
    lists = {w: tuple(Listed(p, cls == EXPIRED) for p, cls in e.items()) for w, e in expiry.items()}
    g = GlobalPolicy(
        drop_fragments=draw(BOOL),
        reflection=draw(BOOL),
        reflection_ports=draw(REFL_PORTS),
        filters=tuple(draw(FILTER_LISTS)),
        monitor_mask=0 if not draw(RARE[4]) else sum(1 << r for r in draw(REASON_SETS)),
    )
    banned = draw(BANNED) if draw(RARE[5]) else frozenset()
    flows = {}
    if draw(RARE[4]):  # entries written before: expired ones (live ones come from egress frames)
        for k in draw(st.lists(flow_keys(addrs), max_size=3)):
            flows[k] = (draw(st.sampled_from(["flow", "embryo"])), draw(st.sampled_from(list(FLOW_STATES))), False)
    setup = Setup(
        g,
        protected,
        lists["allow"],
        lists["block"],
        banned,
        enabled=not draw(RARE[16]),
        tcpstate=not draw(RARE[5]),
        grace=draw(RARE[8]),
        flows=flows,
        budget=not draw(RARE[8]),
        budget_tcp_syns=draw(BUDGET_TCP),
        budget_rates=rates,
    )
    return setup, expiry


# ---- packet strategy: raw bytes, so every header field can be wrong ----

ANY_PORT = st.sampled_from(PORTS) | U16
TCP_FLAGS = st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x01, 0x04]) | U8
DOFF = st.integers(0, 15)
NTAGS = st.integers(0, 34).map(lambda i: (0, 0, 0, 0, 1, 1, 2, 2, 3)[i % 9])  # not biased to the last
TPIDS = st.sampled_from([0x8100, 0x88A8])
SRC_POOL = {f: st.sampled_from([a.packed for a in SOURCES[f]]) for f in (4, 6)}
SRC_RANDOM = {4: st.binary(min_size=4, max_size=4), 6: st.binary(min_size=16, max_size=16)}
L4PROTOS = {4: st.sampled_from([6, 6, 17, 17, 1, 58, 47]), 6: st.sampled_from([6, 6, 17, 17, 1, 58, 47, 0, 44])}
FRAGS = st.sampled_from(["none", "none", "none", "first", "later"])
SMALL_PAYLOADS = st.lists(st.sampled_from(ALPHABET), max_size=24).map(bytes)
RANDOM_PAYLOADS = st.binary(max_size=64)
TTLS = st.sampled_from([0, 1, 64, 128, 255]) | U8
IHL = st.integers(0, 15)
VERSION = st.integers(0, 15)
DF = st.sampled_from([0, 0x4000])
MF = st.sampled_from([0, 0x2000])
OFF13 = st.integers(1, 0x1FFF)
M6 = st.sampled_from([0, 1])
ICMP_TYPE = U8


def _l4(draw, proto: int, refl, ports=None) -> tuple[bytes, int]:
    """(L4 header bytes, the length the parser takes for it). ports: (sport, dport) of TCP."""
    if proto == 6:
        doff = 5 if not draw(RARE[5]) else draw(DOFF)
        sport, dport = ports if ports is not None else (draw(ANY_PORT), draw(ANY_PORT))
        hdr = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, doff << 4, draw(TCP_FLAGS), 512, 0, 0)
        return hdr + (bytes(max(0, doff * 4 - 20)) if not draw(RARE[4]) else b""), max(doff * 4, 20)
    if proto == 17:
        sport = draw(refl) if refl is not None and draw(RARE[3]) else draw(ANY_PORT)
        return struct.pack("!HHHH", sport, draw(ANY_PORT), 0, 0), 8
    if proto in (1, 58):
        return bytes([draw(ICMP_TYPE), 0, 0, 0, 0, 0, 0, 1]), 8
    return b"", 0


OPT_TYPES = st.sampled_from([0, 43, 60])
OPT_COUNTS = st.sampled_from([0, 0, 0, 1, 1, 2, 6, 7])
OPT_LENS = st.sampled_from([0, 0, 1, 3])


def _ip6_options(draw, last: int) -> tuple[bytes, int]:
    """An IPv6 option-header chain (hop-by-hop, routing, destination options) ending in `last`:
    (bytes, first next header). Up to 7 headers: one more than the walk allows."""
    n = draw(OPT_COUNTS)
    types = [draw(OPT_TYPES) for _ in range(n)]
    out = b""
    for i in range(n):
        ln = draw(OPT_LENS)
        nxt = types[i + 1] if i + 1 < n else last
        out += bytes([nxt, ln]) + bytes(ln * 8 + 6)
    return out, (types[0] if n else last)


@st.composite
def frames(draw, setup: Setup, families, refl, with_payload, dsts, hints=None) -> bytes:
    """One frame for setup; families, dsts (per family): strategies biased to its protected
    addresses; refl: a strategy of its reflection ports (or None); with_payload: a strategy of
    its filters that compare payload bytes (or None); hints: a strategy of connection keys
    (or None) an inbound TCP packet often belongs to."""
    family = draw(families)
    ntags = draw(NTAGS)
    dst = draw(dsts[family])
    src = draw(SRC_POOL[family]) if not draw(RARE[6]) else draw(SRC_RANDOM[family])
    proto = draw(L4PROTOS[family])
    ports = None
    if hints is not None and not draw(RARE[3]):
        fam, client, cport, prot, pport = draw(hints)
        if draw(RARE[3]):  # a spoofed packet next to a real connection: another client port
            cport ^= 1
        family, src, dst, proto, ports = fam, client, ipaddress.ip_address(prot), 6, (cport, pport)
    frag = draw(FRAGS)
    l4, l4_len = _l4(draw, proto, refl, ports) if frag != "later" or draw(RARE[4]) else (b"", 0)
    payload = bytearray(draw(SMALL_PAYLOADS) if not draw(RARE[4]) else draw(RANDOM_PAYLOADS))
    ttl = draw(TTLS)

    l3_off = 14 + 4 * ntags
    ihl = 5 if family == 6 or not draw(RARE[6]) else draw(IHL)
    # IPv6 extension headers: options before the fragment header (or the upper layer), and
    # options after the fragment header.
    after, after_nh = _ip6_options(draw, proto) if family == 6 and frag != "none" and draw(RARE[4]) else (b"", proto)
    opts, first_nh = (
        _ip6_options(draw, 44 if frag != "none" else proto) if family == 6 and draw(RARE[4]) else (b"", None)
    )
    if frag == "later":
        after, after_nh = b"", proto  # fragment data, not headers
    l3_len = (
        (ihl * 4 if ihl >= 5 else 20) if family == 4 else 40 + len(opts) + (8 if frag != "none" else 0) + len(after)
    )
    l4_off = l3_off + l3_len
    payload_off = l4_off + l4_len
    # Often put a filter's bytes at its offset, so that filters match.
    if with_payload is not None and not draw(RARE[3]):
        f = draw(with_payload)
        at = {"l3": l3_off, "l4": l4_off, "payload": payload_off}[f.payload_base] + f.payload_off - payload_off
        if 0 <= at and at + len(f.payload) <= 1400:
            if len(payload) < at + len(f.payload):
                payload.extend(bytes(at + len(f.payload) - len(payload)))
            payload[at : at + len(f.payload)] = f.payload
    body = l4 + bytes(payload)

    if family == 4:
        version = 4 if not draw(RARE[8]) else draw(VERSION)
        frag_off = {"none": lambda: draw(DF), "first": lambda: 0x2000, "later": lambda: draw(OFF13) | draw(MF)}[frag]()
        opts = bytes(max(0, ihl * 4 - 20))
        tot_len = 20 + len(opts) + len(body) if not draw(RARE[6]) else draw(U16)
        l3 = (
            struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, tot_len, 1, frag_off, ttl, proto, 0, src, dst.packed)
            + opts
        )
        ethertype = 0x0800
    else:
        version = 6 if not draw(RARE[8]) else draw(VERSION)
        nh, fh = proto, b""
        if frag != "none":
            nh = 44
            off = 0 if frag == "first" else draw(OFF13)
            fh = struct.pack("!BBHI", after_nh, 0, off << 3 | draw(M6), 7) + after
        if first_nh is not None:
            nh = first_nh
        l3 = (
            struct.pack("!IHBB16s16s", version << 28, len(opts) + len(fh) + len(body), nh, ttl, src, dst.packed)
            + opts
            + fh
        )
        ethertype = 0x86DD
    types = [draw(TPIDS) for _ in range(ntags)] + [ethertype]
    frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + struct.pack("!H", types[0])
    for t in types[1:]:
        frame += struct.pack("!HH", 10, t)  # TCI, then the next TPID or the EtherType
    frame += l3 + body
    if draw(RARE[10]):  # truncated: mostly past the addresses, so the checks after them see it
        frame = frame[
            : draw(
                st.integers(l3_off + 20, len(frame))
                if draw(BOOL) and len(frame) > l3_off + 20
                else st.integers(14, len(frame))
            )
        ]
    return frame


EGRESS_FLAGS = st.sampled_from([0x12, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x02, 0x19]) | U8


@st.composite
def egress_frames(draw, setup: Setup) -> bytes:
    """A frame leaving the protected interface: mostly TCP from a protected address (a reply)."""
    prot = sorted(setup.protected, key=lambda a: (a.version, a))
    src = draw(st.sampled_from(prot * 4 + [NEVER_PROTECTED[4], NEVER_PROTECTED[6]]))
    family = src.version
    dst = draw(SRC_POOL[family])
    proto = 6 if not draw(RARE[6]) else draw(st.sampled_from([17, 1, 58]))
    doff = 5 if not draw(RARE[8]) else draw(DOFF)
    l4 = struct.pack(
        "!HHIIBBHHH",
        draw(st.sampled_from(FLOW_PORTS)),
        draw(st.sampled_from(CLIENT_PORTS)),
        1,
        2,
        doff << 4,
        draw(EGRESS_FLAGS),
        512,
        0,
        0,
    ) + bytes(max(0, doff * 4 - 20))
    if family == 4:
        frag_off = 0 if not draw(RARE[8]) else draw(OFF13)
        l3 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag_off, 64, proto, 0, src.packed, dst)
        ethertype = 0x0800
    else:
        opts, nh = _ip6_options(draw, proto) if draw(RARE[5]) else (b"", proto)
        l3 = struct.pack("!IHBB16s16s", 6 << 28, len(opts) + len(l4), nh, 64, src.packed, dst) + opts
        ethertype = 0x86DD
    tags = b"".join(struct.pack("!HH", 0x8100, 10) for _ in range(draw(NTAGS) % 3))
    frame = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02" + tags + struct.pack("!H", ethertype) + l3 + l4
    if draw(RARE[10]):  # truncated past the fixed L3 header (the kernel's skb test run wants that much)
        frame = frame[: draw(st.integers(14 + len(tags) + (20 if family == 4 else 40), len(frame)))]
    return frame


def _flow_key_c(k) -> abi.FlowKey:
    fam, client, cport, prot, pport = k
    c = abi.FlowKey()
    ctypes.memmove(ctypes.addressof(c), client, len(client))
    ctypes.memmove(ctypes.addressof(c) + 16, prot, len(prot))
    c.client_port, c.prot_port, c.family = cport, pport, fam
    return c


def _flow_key_py(c) -> tuple:
    n = 4 if c.family == 4 else 16
    return (c.family, bytes(c.client)[:n], c.client_port, bytes(c.prot)[:n], c.prot_port)


def table_contents(maps) -> dict[str, dict[tuple, tuple[str, bool]]]:
    """xg_flow_lru and xg_embryo_lru as {table: {key: (state, live)}}."""
    now = _now_ns()
    names = {v: k for k, v in FLOW_STATES.items()}
    out = {}
    for table, name in (("flow", MapName.FLOWS), ("embryo", MapName.EMBRYOS)):
        out[table] = {
            _flow_key_py(k): (names.get(v.state, str(v.state)), v.expires_ns > now) for k, v in maps[name].items()
        }
    return out


# ---- applying a drawn setup to the one TestBed, as a diff ----


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class AppliedBed:
    """The TestBed plus what is written in its maps, so the next setup writes only the difference."""

    def __init__(self, bed: TestBed):
        self.bed = bed
        self.maps = bed.maps
        self.guard = Guard(None, None, bed.maps)
        self.global_: GlobalPolicy | None = None  # None: the maps are fresh (zeroed)
        self.enabled = True
        self.protected: dict = {}
        self.lists: dict[str, dict[Prefix, str]] = {"allow": {}, "block": {}}
        self.banned: frozenset = frozenset()
        self.verify: policy.VerifySettings | None = None

    def apply(self, setup: Setup, expiry: dict[str, dict[Prefix, str]]) -> None:
        m = self.maps
        if self.global_ is not None and any(f.action == policy.MITIGATE for f in self.global_.filters):
            # The last example's mitigation filters would stay (write_global_policy keeps those in
            # the table): the table is emptied first. Not with write_mitigation_filters([]), which
            # compiles the operator's filters once more (1.5 MB of vectors) just before
            # write_global_policy compiles the new ones.
            cfg = m[MapName.CONFIG].get(ctypes.c_uint32(0))
            cfg.filters_count = 0
            m[MapName.CONFIG].set(ctypes.c_uint32(0), cfg)
        guard.write_global_policy(m, setup.global_, self.global_)
        self.global_ = setup.global_
        cfg = m[MapName.CONFIG].get(ctypes.c_uint32(0))
        want = (cfg.flags | abi.CFG_ENABLED) if setup.enabled else (cfg.flags & ~abi.CFG_ENABLED)
        want = (want | abi.CFG_TCPSTATE) if setup.tcpstate else (want & ~abi.CFG_TCPSTATE)
        if want != cfg.flags:
            cfg.flags = want
            m[MapName.CONFIG].set(ctypes.c_uint32(0), cfg)

        for a, p in setup.protected.items():
            old = self.protected.get(a)
            if old is None:
                m[MapName.PROT4 if a.version == 4 else MapName.PROT6].set(
                    policy.prot_key(a), policy.new_protected(SLOTS[a])
                )
            if old is None or old.policy != p.policy:
                guard.write_address_policy(m, a, p.policy)
            self._ports(a, old.open_ports if old else frozenset(), p.open_ports)
            self._port_limits(a, old.port_limits if old else {}, p.port_limits)
            if old is None or old.tcpstate != p.tcpstate:
                pm, pk = m[MapName.PROT4 if a.version == 4 else MapName.PROT6], policy.prot_key(a)
                cur = pm.get(pk)
                cur.flags = (cur.flags & ~abi.PROT_TCPSTATE_OFF) | (0 if p.tcpstate else abi.PROT_TCPSTATE_OFF)
                pm.set(pk, cur)
        for a in [a for a in self.protected if a not in setup.protected]:
            old = self.protected[a]
            self._ports(a, old.open_ports, frozenset())
            self._port_limits(a, old.port_limits, {})
            m[MapName.PROT4 if a.version == 4 else MapName.PROT6].delete(policy.prot_key(a))
        self.protected = dict(setup.protected)

        for which in ("allow", "block"):
            cur, new = self.lists[which], expiry[which]
            # Expired entries are rewritten every time: the data path deletes those it meets.
            gone = [p for p, cls in cur.items() if new.get(p) != cls or cls == EXPIRED]
            if gone:
                self.guard.delete(which, gone)
            by_cls: dict[str, list[Prefix]] = {}
            for p, cls in new.items():
                if cur.get(p) != cls or cls == EXPIRED:
                    by_cls.setdefault(cls, []).append(p)
            for cls, group in by_cls.items():
                self.guard.upsert(which, group, {NEVER: 0, EXPIRED: 1, LATER: _now_ns() + 3600 * 10**9}[cls])
            self.lists[which] = dict(new)

        self._bans(setup.banned)
        self._tables(setup)
        self._budgets(setup)

    def _tables(self, setup: Setup) -> None:
        """Empty the connection tables, then write the drawn (expired) entries; the grace period."""
        for name in (MapName.FLOWS, MapName.EMBRYOS, MapName.GOODSRC):
            for k in list(self.maps[name].keys()):
                self.maps[name].delete(k)
        for k, (table, state, live) in setup.flows.items():
            exp = _now_ns() + 3600 * 10**9 if live else 1
            self.maps[MapName.FLOWS if table == "flow" else MapName.EMBRYOS].set(
                _flow_key_c(k), abi.Flow(exp, FLOW_STATES[state], 0)
            )
        grace = _now_ns() + 3600 * 10**9 if setup.grace else 0
        self.maps[MapName.TCPCFG].set(ctypes.c_uint32(0), abi.TcpStateConfig(grace, 0, 0, 0, 0))

    def _budgets(self, setup: Setup) -> None:
        """The budget settings (the UDP one out of reach, as TestBed keeps it); every budget
        entry, first-SYN memory and retransmission authentication emptied; the drawn rates
        written into fresh TCP service entries (a full burst at the first SYN)."""
        v = policy.VerifySettings(
            budget_udp_pps=policy.MAX_PPS, budget_tcp_syns=setup.budget_tcp_syns, budget=setup.budget
        )
        if v != self.verify:
            guard.write_verify_settings(self.maps, v)
            self.verify = v
        for name in (MapName.BUDGET, MapName.SYNSEEN, MapName.SYNAUTH):
            for k in list(self.maps[name].keys()):
                self.maps[name].delete(k)
        for (a, port), rate in setup.budget_rates.items():
            self.maps[MapName.BUDGET].set(policy.port_key(a, "tcp", port), abi.Budget(0, 0, rate, 0, 0, 0))

    def _ports(self, a, old: frozenset, new: frozenset) -> None:
        for proto, port in old - new:
            self.guard.change_ports([a], proto, port, port, abi.PORT_BY_OPERATOR, False)
        for proto, port in new - old:
            self.guard.change_ports([a], proto, port, port, abi.PORT_BY_OPERATOR, True)

    def _port_limits(self, a, old, new) -> None:
        for proto, port in set(old) - set(new):
            guard.write_port_limits(self.maps, a, proto, port, port, None)
        for (proto, port), lim in new.items():
            if old.get((proto, port)) != lim:
                guard.write_port_limits(self.maps, a, proto, port, port, lim)

    def _bans(self, banned: frozenset) -> None:
        """Bans left by the last example (drop-ban filters) go; the drawn ones are written."""
        st_map = self.maps[MapName.DPSTATE]
        st = st_map.get(ctypes.c_uint32(0))
        if st.flags & abi.DP_HAS_BANS:
            for name in (MapName.BANS, MapName.OPBANS):
                bans = self.maps[name]
                for k in list(bans.keys()):
                    bans.delete(k)
            st_map.set(ctypes.c_uint32(0), abi.DpState(0))
        if banned:
            until = _now_ns() + 3600 * 10**9
            for a in banned:  # data-path bans (LRU) and operator bans (hash) by address parity
                name = MapName.OPBANS if a.packed[-1] & 1 else MapName.BANS
                self.maps[name].set(policy.src_key(a), abi.Ban(until, 0, int(Reason.FEATURE), 0))
            st_map.set(ctypes.c_uint32(0), abi.DpState(abi.DP_HAS_BANS))


@pytest.fixture(scope="module")
def applied(request):
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:  # shown whatever the outcome (past the capture)
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(REPLAY)
    bed = TestBed(SMALL_MAPS)
    try:
        yield AppliedBed(bed)
    finally:
        bed.close()


SETUPS = setups()


@st.composite
def examples(draw):
    setup, expiry = draw(SETUPS)
    refl = st.sampled_from(sorted(setup.global_.reflection_ports)) if setup.global_.reflection_ports else None
    with_payload = [f for f in setup.global_.filters if f.payload]
    dsts = {}
    for fam in (4, 6):
        mine = [a for a in setup.protected if a.version == fam]
        # Mostly to a protected address of the family, sometimes not (bypass).
        dsts[fam] = st.sampled_from(mine * 4 + DSTS[fam])
    families = st.sampled_from([a.version for a in setup.protected] * 3 + [4, 6])
    egress = draw(st.lists(egress_frames(setup), max_size=4))
    keys = [k for f in egress if (k := egress_key(f, setup)) is not None] + list(setup.flows)
    hints = st.sampled_from(keys) if keys else None  # (every key: a TCP connection of a protected address)
    packets = draw(
        st.lists(
            frames(setup, families, refl, st.sampled_from(with_payload) if with_payload else None, dsts, hints),
            min_size=1,
            max_size=6,
        )
    )
    if draw(BOOL):  # some of them again (a SYN repeated spends its service's budget)
        packets += draw(st.lists(st.sampled_from(packets), min_size=1, max_size=6))
    if draw(RARE[3]):  # new connections at one TCP service, from the pool's sources: its budget
        packets += draw(st.lists(syn_frames(setup), min_size=2, max_size=5))
    return setup, expiry, egress, packets


@st.composite
def syn_frames(draw, setup: Setup) -> bytes:
    """A plain SYN to one of the connections' ports of a protected address, from a pool source."""
    dst = draw(st.sampled_from(sorted(setup.protected, key=lambda a: (a.version, a))))
    src = draw(SRC_POOL[dst.version])
    tcp = struct.pack("!HHIIBBHHH", draw(st.sampled_from(CLIENT_PORTS)), FLOW_PORTS[0], 0, 0, 5 << 4, 0x02, 512, 0, 0)
    if dst.version == 4:
        l3 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src, dst.packed)
        return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + l3 + tcp
    l3 = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst.packed)
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd" + l3 + tcp


def egress_key(frame: bytes, setup: Setup):
    got = egress_flow(frame, {(a.version, a.packed) for a in setup.protected})
    return None if got is None else got[0]


def _describe(frame: bytes) -> str:
    try:
        from scapy.layers.l2 import Ether

        return Ether(frame).summary()
    except Exception:  # a malformed frame may not even dissect
        return frame.hex()


@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None if CI else settings.default.database,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(example=examples())
def test_xdp_agrees_with_model(applied, example):
    setup, expiry, egress, packets = example
    note(REPLAY)  # printed with the falsifying example
    applied.apply(setup, expiry)
    model = Model(setup)
    for frame in egress:
        model.egress(frame)
        rv, _ = applied.bed.egress(frame)
        assert rv == 0, "the egress recorder never drops (TC_ACT_OK)"
    want_tables = {t: {k: (st_, live) for k, (st_, live) in v.items()} for t, v in model.tables.items()}
    assert table_contents(applied.maps) == want_tables, [_describe(f) for f in egress]
    known = {(k.family, bytes(k.addr)[: 4 if k.family == 4 else 16]) for k in applied.maps[MapName.GOODSRC].keys()}
    assert known == model.known, [_describe(f) for f in egress]
    for i, frame in enumerate(packets):
        want = model.verdict(frame)
        event(f"{want.kind.label} {want.reason.label}")
        got = applied.bed.verdict(frame)
        assert (got.action, got.kind, got.reason) == (want.action, want.kind, want.reason), (
            f"packet {i}: {_describe(frame)}\n{frame.hex()}"
        )
    if model.budget_refused:
        event("a TCP service's budget exceeded")
