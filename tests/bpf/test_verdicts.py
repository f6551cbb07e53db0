"""The real XDP program through BPF_PROG_TEST_RUN: packet + map setup → verdict and counters.

One TestBed (compiled and loaded once, attached nowhere) serves the module. PROTECTED4/6 are
protected for the whole module; every test starts and ends with empty allow/block maps and the
default config, so test order does not matter.

`TestBed.verdict()` already asserts that exactly one (kind, reason) counter slot moved, by one
packet and len(packet) bytes; the cases add the expected action, kind, reason and the hit delta
of every list entry they install (an entry a case does not mention must not move).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from xdpguard.core.kernel.abi import LISTS_MASK_BITS, Kind, MapName, Reason
from xdpguard.core.testrun import TestBed

pytestmark = pytest.mark.kernel

PROTECTED4, PROTECTED6 = "198.18.0.1", "2001:db8::1"
UNPROTECTED4, UNPROTECTED6 = "198.18.0.2", "2001:db8::2"
CLIENT4, CLIENT6 = "198.51.100.10", "2001:db8:c::10"
ATTACKER4, ATTACKER6 = "203.0.113.7", "2001:db8:bad::7"

ETH_LEN, IP4_LEN, IP6_LEN = 14, 20, 40
L4_AT_V4, L4_AT_V6 = ETH_LEN + IP4_LEN, ETH_LEN + IP6_LEN  # offset of the L4 header
ALL_DROP_REASONS = sum(1 << r for r in Reason if r.is_drop)
LIST_MAP_NAMES = tuple(LISTS_MASK_BITS)


# ---- packet builders ----


def eth(**kw) -> Ether:
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", **kw)


def v4(src: str = CLIENT4, dst: str = PROTECTED4, l4=None, vlans=(), **ip) -> bytes:
    return _frame(vlans, IP(src=src, dst=dst, **ip) / (TCP(dport=80, flags="S") if l4 is None else l4))


def v6(src: str = CLIENT6, dst: str = PROTECTED6, l4=None, vlans=(), **ip) -> bytes:
    return _frame(vlans, IPv6(src=src, dst=dst, **ip) / (TCP(dport=80, flags="S") if l4 is None else l4))


def _frame(vlans: tuple[str, ...], l3) -> bytes:
    """vlans=('ad', 'q') → Ether / Dot1AD / Dot1Q / l3, outer tag first; scapy fills in the EtherTypes."""
    frame = eth()
    for tag in vlans:
        frame = frame / (Dot1AD(vlan=100) if tag == "ad" else Dot1Q(vlan=10))
    return bytes(frame / l3)


def cut(packet: bytes, length: int) -> bytes:
    assert length < len(packet)
    return packet[:length]


# ---- the table ----


@dataclass(frozen=True)
class Entry:
    list: str  # "allow" | "block"
    cidr: str
    expires_in_s: float | None = None  # None: never; negative: already expired


@dataclass(frozen=True)
class Case:
    id: str
    description: str
    packet: Callable[[], bytes]
    action: str  # "pass" | "drop"
    kind: Kind
    reason: Reason
    entries: tuple[Entry, ...] = ()
    hits: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (list, cidr) → delta
    enabled: bool = True
    monitor_mask: int = 0


PASS, DROP = "pass", "drop"
BLOCK_ATTACKER4 = Entry("block", f"{ATTACKER4}/32")
BLOCK_ATTACKER6 = Entry("block", f"{ATTACKER6}/128")
HIT_ATTACKER4 = {("block", f"{ATTACKER4}/32"): 1}
HIT_ATTACKER6 = {("block", f"{ATTACKER6}/128"): 1}


def clean(id, description, packet, **kw) -> Case:
    return Case(id, description, packet, PASS, Kind.PASS, Reason.CLEAN, **kw)


def bypass(id, description, packet, **kw) -> Case:
    return Case(id, description, packet, PASS, Kind.PASS, Reason.BYPASS, **kw)


def blocked(id, description, packet, entries, hits) -> Case:
    return Case(id, description, packet, DROP, Kind.DROP, Reason.BLOCKLIST, entries, hits)


BASIC = [
    clean("v4-clean", "clean TCP SYN to a protected v4 address", lambda: v4()),
    clean("v6-clean", "clean TCP SYN to a protected v6 address", lambda: v6()),
    clean("v4-udp-clean", "clean UDP", lambda: v4(l4=UDP(sport=5000, dport=53))),
    clean("v4-icmp-clean", "clean ICMP echo", lambda: v4(l4=ICMP())),
    clean("v6-icmpv6-clean", "clean ICMPv6 echo", lambda: v6(l4=ICMPv6EchoRequest())),
    bypass("v4-unprotected", "destination not protected", lambda: v4(dst=UNPROTECTED4)),
    bypass("v6-unprotected", "destination not protected", lambda: v6(dst=UNPROTECTED6)),
    bypass(
        "v4-unprotected-blocked-src",
        "the host's own traffic is never filtered, even from a blocked source",
        lambda: v4(src=ATTACKER4, dst=UNPROTECTED4),
        entries=(BLOCK_ATTACKER4,),
    ),
    bypass(
        "v6-unprotected-blocked-src",
        "the host's own traffic is never filtered, even from a blocked source",
        lambda: v6(src=ATTACKER6, dst=UNPROTECTED6),
        entries=(BLOCK_ATTACKER6,),
    ),
    bypass("arp", "ARP asking for a protected address", lambda: bytes(eth() / ARP(psrc=CLIENT4, pdst=PROTECTED4))),
    bypass("lldp", "non-IP EtherType", lambda: bytes(eth(type=0x88CC) / Raw(b"\x00" * 46))),
]

LISTS = [
    blocked(
        "v4-block-exact", "source blocked by its /32", lambda: v4(src=ATTACKER4), (BLOCK_ATTACKER4,), HIT_ATTACKER4
    ),
    blocked(
        "v4-block-24",
        "source blocked by a covering /24",
        lambda: v4(src=ATTACKER4),
        (Entry("block", "203.0.113.0/24"),),
        {("block", "203.0.113.0/24"): 1},
    ),
    blocked(
        "v4-block-0",
        "source blocked by 0.0.0.0/0",
        lambda: v4(src=ATTACKER4),
        (Entry("block", "0.0.0.0/0"),),
        {("block", "0.0.0.0/0"): 1},
    ),
    blocked(
        "v4-block-longest-match",
        "with /32 and /24 both present only the /32 counts the hit",
        lambda: v4(src=ATTACKER4),
        (BLOCK_ATTACKER4, Entry("block", "203.0.113.0/24")),
        HIT_ATTACKER4,
    ),
    clean(
        "v4-block-other-source", "a blocklist entry not covering the source", lambda: v4(), entries=(BLOCK_ATTACKER4,)
    ),
    blocked(
        "v6-block-exact", "source blocked by its /128", lambda: v6(src=ATTACKER6), (BLOCK_ATTACKER6,), HIT_ATTACKER6
    ),
    blocked(
        "v6-block-48",
        "source blocked by a covering /48",
        lambda: v6(src=ATTACKER6),
        (Entry("block", "2001:db8:bad::/48"),),
        {("block", "2001:db8:bad::/48"): 1},
    ),
    blocked(
        "v6-block-0",
        "source blocked by ::/0",
        lambda: v6(src=ATTACKER6),
        (Entry("block", "::/0"),),
        {("block", "::/0"): 1},
    ),
    blocked(
        "v4-block-v6-entry-ignored",
        "a v4 source is judged by the v4 trie only: ::/0 does not block it",
        lambda: v4(src=ATTACKER4),
        (Entry("block", "::/0"), BLOCK_ATTACKER4),
        HIT_ATTACKER4,
    ),
    Case(
        "v4-allow-over-block",
        "same /32 in both lists: allowlist wins, blocklist hit unchanged",
        lambda: v4(src=ATTACKER4),
        PASS,
        Kind.PASS,
        Reason.ALLOWLIST,
        (BLOCK_ATTACKER4, Entry("allow", f"{ATTACKER4}/32")),
        {("allow", f"{ATTACKER4}/32"): 1},
    ),
    Case(
        "v6-allow-over-block",
        "same /128 in both lists: allowlist wins, blocklist hit unchanged",
        lambda: v6(src=ATTACKER6),
        PASS,
        Kind.PASS,
        Reason.ALLOWLIST,
        (BLOCK_ATTACKER6, Entry("allow", f"{ATTACKER6}/128")),
        {("allow", f"{ATTACKER6}/128"): 1},
    ),
    Case(
        "v4-allow-24-over-block-32",
        "a covering allow /24 beats a more specific block /32",
        lambda: v4(src=ATTACKER4),
        PASS,
        Kind.PASS,
        Reason.ALLOWLIST,
        (BLOCK_ATTACKER4, Entry("allow", "203.0.113.0/24")),
        {("allow", "203.0.113.0/24"): 1},
    ),
    blocked(
        "v4-allow-not-covering",
        "an allowlist entry not covering the source does not help",
        lambda: v4(src=ATTACKER4),
        (BLOCK_ATTACKER4, Entry("allow", "198.51.100.0/24")),
        HIT_ATTACKER4,
    ),
    blocked(
        "v6-allow-not-covering",
        "an allowlist entry not covering the source does not help",
        lambda: v6(src=ATTACKER6),
        (BLOCK_ATTACKER6, Entry("allow", "2001:db8:c::/48")),
        HIT_ATTACKER6,
    ),
    clean(
        "v4-block-expired",
        "an expired block entry is inert and its hit counter does not move",
        lambda: v4(src=ATTACKER4),
        entries=(Entry("block", f"{ATTACKER4}/32", -60),),
    ),
    blocked(
        "v4-block-expires-later",
        "an entry expiring in the future blocks",
        lambda: v4(src=ATTACKER4),
        (Entry("block", f"{ATTACKER4}/32", 3600),),
        HIT_ATTACKER4,
    ),
    clean(
        "v6-block-expired",
        "an expired block entry is inert and its hit counter does not move",
        lambda: v6(src=ATTACKER6),
        entries=(Entry("block", f"{ATTACKER6}/128", -60),),
    ),
    blocked(
        "v6-block-expires-later",
        "an entry expiring in the future blocks",
        lambda: v6(src=ATTACKER6),
        (Entry("block", f"{ATTACKER6}/128", 3600),),
        HIT_ATTACKER6,
    ),
    blocked(
        "v4-allow-expired",
        "an expired allow entry no longer shields a blocked source",
        lambda: v4(src=ATTACKER4),
        (BLOCK_ATTACKER4, Entry("allow", f"{ATTACKER4}/32", -60)),
        HIT_ATTACKER4,
    ),
]

VLANS = [
    clean("vlan-v4-clean", "802.1Q tag, v4", lambda: v4(vlans=("q",))),
    clean("vlan-v6-clean", "802.1Q tag, v6", lambda: v6(vlans=("q",))),
    blocked(
        "vlan-v4-blocked",
        "802.1Q tag, v4 blocked source",
        lambda: v4(src=ATTACKER4, vlans=("q",)),
        (BLOCK_ATTACKER4,),
        HIT_ATTACKER4,
    ),
    blocked(
        "vlan-v6-blocked",
        "802.1Q tag, v6 blocked source",
        lambda: v6(src=ATTACKER6, vlans=("q",)),
        (BLOCK_ATTACKER6,),
        HIT_ATTACKER6,
    ),
    clean("qinq-v4-clean", "QinQ (0x88a8 outer, 0x8100 inner), v4", lambda: v4(vlans=("ad", "q"))),
    clean("qinq-v6-clean", "QinQ (0x88a8 outer, 0x8100 inner), v6", lambda: v6(vlans=("ad", "q"))),
    blocked(
        "qinq-v4-blocked",
        "QinQ, v4 blocked source",
        lambda: v4(src=ATTACKER4, vlans=("ad", "q")),
        (BLOCK_ATTACKER4,),
        HIT_ATTACKER4,
    ),
    blocked(
        "qinq-v6-blocked",
        "QinQ, v6 blocked source",
        lambda: v6(src=ATTACKER6, vlans=("ad", "q")),
        (BLOCK_ATTACKER6,),
        HIT_ATTACKER6,
    ),
    bypass(
        "three-tags-v4",
        "three VLAN tags exceed XG_VLAN_MAX=2: not parsed, bypass (blocklist untouched)",
        lambda: v4(src=ATTACKER4, vlans=("ad", "q", "q")),
        entries=(BLOCK_ATTACKER4,),
    ),
    bypass(
        "three-tags-v6",
        "three VLAN tags exceed XG_VLAN_MAX=2: not parsed, bypass (blocklist untouched)",
        lambda: v6(src=ATTACKER6, vlans=("ad", "q", "q")),
        entries=(BLOCK_ATTACKER6,),
    ),
    bypass(
        "vlan-tag-truncated", "802.1Q EtherType but only 2 bytes of tag", lambda: bytes(eth(type=0x8100)) + b"\x00\x0a"
    ),
]

# Headers too short to hold the destination: the packet cannot be ours to judge.
UNKNOWABLE = [
    bypass("ethernet-only", "IPv4 EtherType, nothing after the Ethernet header", lambda: bytes(eth(type=0x0800))),
    bypass(
        "v4-header-19-bytes",
        "IPv4 header one byte short",
        lambda: cut(v4(src=ATTACKER4), ETH_LEN + 19),
        entries=(BLOCK_ATTACKER4,),
    ),
    bypass(
        "v6-header-39-bytes",
        "IPv6 header one byte short",
        lambda: cut(v6(src=ATTACKER6), ETH_LEN + 39),
        entries=(BLOCK_ATTACKER6,),
    ),
]

# Malformed or truncated at L3/L4 but with the destination readable: each builder takes dst.
MALFORMED: list[tuple[str, str, Callable[[str], bytes]]] = [
    ("v4-ihl-4", "IPv4 ihl=4 (< 5)", lambda d: v4(dst=d, ihl=4)),
    ("v4-ihl-past-end", "IPv4 ihl=15 (60 bytes) in a 40-byte datagram", lambda d: v4(dst=d, ihl=15)),
    ("v4-totlen-below-ihl", "IPv4 tot_len=19 < ihl*4", lambda d: v4(dst=d, len=19)),
    ("v4-version-5", "IPv4 EtherType, version field 5", lambda d: v4(dst=d, version=5)),
    ("v4-tcp-doff-4", "TCP doff=4 (< 5)", lambda d: v4(dst=d, l4=TCP(dataofs=4))),
    ("v4-tcp-doff-past-end", "TCP doff=15 in a 20-byte segment", lambda d: v4(dst=d, l4=TCP(dataofs=15))),
    ("v4-tcp-10-bytes", "TCP truncated to 10 bytes", lambda d: cut(v4(dst=d), L4_AT_V4 + 10)),
    ("v4-udp-4-bytes", "UDP truncated to 4 bytes", lambda d: cut(v4(dst=d, l4=UDP()), L4_AT_V4 + 4)),
    ("v4-icmp-2-bytes", "ICMP truncated to 2 bytes", lambda d: cut(v4(dst=d, l4=ICMP()), L4_AT_V4 + 2)),
    (
        "v4-first-fragment-tcp-10-bytes",
        "first fragment (MF, offset 0) still has its L4 checked",
        lambda d: cut(v4(dst=d, flags="MF"), L4_AT_V4 + 10),
    ),
    ("v6-version-4", "IPv6 EtherType, version field 4", lambda d: v6(dst=d, version=4)),
    ("v6-tcp-10-bytes", "IPv6, TCP truncated to 10 bytes", lambda d: cut(v6(dst=d), L4_AT_V6 + 10)),
    ("v6-udp-4-bytes", "IPv6, UDP truncated to 4 bytes", lambda d: cut(v6(dst=d, l4=UDP()), L4_AT_V6 + 4)),
    (
        "v6-icmpv6-2-bytes",
        "ICMPv6 truncated to 2 bytes",
        lambda d: cut(v6(dst=d, l4=ICMPv6EchoRequest()), L4_AT_V6 + 2),
    ),
]


def _dst(id: str, protected: bool) -> str:
    if id.startswith("v4"):
        return PROTECTED4 if protected else UNPROTECTED4
    return PROTECTED6 if protected else UNPROTECTED6


MALFORMED_CASES = (
    [
        Case(
            f"{id}-protected", description, (lambda b=build, d=_dst(id, True): b(d)), DROP, Kind.DROP, Reason.MALFORMED
        )
        for id, description, build in MALFORMED
    ]
    + [
        bypass(
            f"{id}-unprotected",
            f"{description}, to an unprotected destination",
            (lambda b=build, d=_dst(id, False): b(d)),
        )
        for id, description, build in MALFORMED
    ]
    + [
        blocked(
            "v4-blocked-truncated-tcp",
            "the blocklist comes before the malformed check",
            lambda: cut(v4(src=ATTACKER4), L4_AT_V4 + 10),
            (BLOCK_ATTACKER4,),
            HIT_ATTACKER4,
        ),
        blocked(
            "v4-blocked-ihl-4",
            "the blocklist comes before the malformed check",
            lambda: v4(src=ATTACKER4, ihl=4),
            (BLOCK_ATTACKER4,),
            HIT_ATTACKER4,
        ),
        blocked(
            "v6-blocked-truncated-tcp",
            "the blocklist comes before the malformed check",
            lambda: cut(v6(src=ATTACKER6), L4_AT_V6 + 10),
            (BLOCK_ATTACKER6,),
            HIT_ATTACKER6,
        ),
        clean(
            "v4-nonfirst-fragment",
            "non-first fragment: no L4 header to check",
            lambda: bytes(eth() / IP(src=CLIENT4, dst=PROTECTED4, proto=6, frag=185) / Raw(b"\x00" * 4)),
        ),
        clean(
            "v4-nonfirst-last-fragment-empty",
            "last non-first fragment without payload",
            lambda: bytes(eth() / IP(src=CLIENT4, dst=PROTECTED4, proto=17, frag=1)),
        ),
    ]
)

MONITOR = [
    Case(
        "monitor-v4-blocked",
        "monitor mode: a blocklist drop is passed and counted as would_drop",
        lambda: v4(src=ATTACKER4),
        PASS,
        Kind.WOULD_DROP,
        Reason.BLOCKLIST,
        (BLOCK_ATTACKER4,),
        HIT_ATTACKER4,
        monitor_mask=ALL_DROP_REASONS,
    ),
    Case(
        "monitor-v6-blocked",
        "monitor mode: a blocklist drop is passed and counted as would_drop",
        lambda: v6(src=ATTACKER6),
        PASS,
        Kind.WOULD_DROP,
        Reason.BLOCKLIST,
        (BLOCK_ATTACKER6,),
        HIT_ATTACKER6,
        monitor_mask=ALL_DROP_REASONS,
    ),
    Case(
        "monitor-v4-malformed",
        "monitor mode: a malformed drop is passed and counted as would_drop",
        lambda: cut(v4(), L4_AT_V4 + 10),
        PASS,
        Kind.WOULD_DROP,
        Reason.MALFORMED,
        monitor_mask=ALL_DROP_REASONS,
    ),
    Case(
        "monitor-v4-clean",
        "monitor mode does not touch clean traffic",
        lambda: v4(),
        PASS,
        Kind.PASS,
        Reason.CLEAN,
        monitor_mask=ALL_DROP_REASONS,
    ),
    Case(
        "monitor-only-blocklist-malformed",
        "monitor mask with only the blocklist bit still drops malformed",
        lambda: cut(v4(), L4_AT_V4 + 10),
        DROP,
        Kind.DROP,
        Reason.MALFORMED,
        monitor_mask=1 << Reason.BLOCKLIST,
    ),
    Case(
        "monitor-only-malformed-blocked",
        "monitor mask with only the malformed bit still drops blocked sources",
        lambda: v4(src=ATTACKER4),
        DROP,
        Kind.DROP,
        Reason.BLOCKLIST,
        (BLOCK_ATTACKER4,),
        HIT_ATTACKER4,
        monitor_mask=1 << Reason.MALFORMED,
    ),
]

DISABLED = [
    bypass(f"disabled-{c.id}", f"program disabled: {c.description}", c.packet, entries=c.entries, enabled=False)
    for c in (
        clean("v4-clean", "clean v4", lambda: v4()),
        clean("v6-clean", "clean v6", lambda: v6()),
        Case(
            "v4-blocked",
            "blocked v4 source (hit counter untouched)",
            lambda: v4(src=ATTACKER4),
            DROP,
            Kind.DROP,
            Reason.BLOCKLIST,
            (BLOCK_ATTACKER4,),
        ),
        Case(
            "v6-blocked",
            "blocked v6 source (hit counter untouched)",
            lambda: v6(src=ATTACKER6),
            DROP,
            Kind.DROP,
            Reason.BLOCKLIST,
            (BLOCK_ATTACKER6,),
        ),
        Case(
            "v4-allowed",
            "allowlisted source (hit counter untouched)",
            lambda: v4(src=ATTACKER4),
            PASS,
            Kind.PASS,
            Reason.ALLOWLIST,
            (Entry("allow", f"{ATTACKER4}/32"),),
        ),
        Case("v4-malformed", "truncated TCP", lambda: cut(v4(), L4_AT_V4 + 10), DROP, Kind.DROP, Reason.MALFORMED),
        Case("arp", "ARP", lambda: bytes(eth() / ARP(pdst=PROTECTED4)), PASS, Kind.PASS, Reason.BYPASS),
    )
]

CASES = BASIC + LISTS + VLANS + UNKNOWABLE + MALFORMED_CASES + MONITOR + DISABLED


# ---- fixtures and helpers ----


@pytest.fixture(scope="module")
def testbed(shared_bed):
    bed = shared_bed()
    bed.protect(PROTECTED4, PROTECTED6)
    return bed


def reset(bed: TestBed) -> None:
    """Empty the allow/block maps and restore the default config (enabled, no monitor)."""
    for name in LIST_MAP_NAMES:
        m = bed.maps[name]
        for key in list(m.keys()):
            m.delete(key)
    bed.configure()


@pytest.fixture
def bed(testbed):
    reset(testbed)
    yield testbed
    reset(testbed)


def install(bed: TestBed, entries: tuple[Entry, ...]) -> None:
    now_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # the clock of bpf_ktime_get_ns
    for e in entries:
        expires_ns = 0 if e.expires_in_s is None else now_ns + int(e.expires_in_s * 1e9)
        assert e.expires_in_s is None or expires_ns > 0
        bed.add(e.list, e.cidr, expires_ns=expires_ns)


def hits(bed: TestBed, entries: tuple[Entry, ...]) -> dict[tuple[str, str], int]:
    return {(e.list, e.cidr): bed.entry_hits(e.list, e.cidr) for e in entries}


# ---- tests ----


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_verdict(bed, case: Case):
    keys = {(e.list, e.cidr) for e in case.entries}
    assert set(case.hits) <= keys, f"hits name entries the case does not install: {set(case.hits) - keys}"
    install(bed, case.entries)
    bed.configure(enabled=case.enabled, monitor_mask=case.monitor_mask)
    before = hits(bed, case.entries)

    got = bed.verdict(case.packet())

    assert (got.action, got.kind, got.reason) == (case.action, case.kind, case.reason), case.description
    after = hits(bed, case.entries)
    # The data path deletes an expired entry it meets (so it cannot shadow a live covering one).
    expired = {(e.list, e.cidr) for e in case.entries if e.expires_in_s is not None and e.expires_in_s < 0}
    assert all(after[k] is not None or k in expired for k in after), case.description
    deltas = {k: 0 if after[k] is None else after[k] - before[k] for k in after}
    assert deltas == {k: case.hits.get(k, 0) for k in after}, case.description


@pytest.mark.parametrize(
    "packet, entries, action, slot",
    [
        pytest.param(lambda: v4(), (), PASS, (Kind.PASS, Reason.CLEAN), id="v4-clean"),
        pytest.param(
            lambda: v6(l4=UDP(dport=53) / Raw(b"x" * 100)), (), PASS, (Kind.PASS, Reason.CLEAN), id="v6-clean"
        ),
        pytest.param(
            lambda: v4(src=ATTACKER4), (BLOCK_ATTACKER4,), DROP, (Kind.DROP, Reason.BLOCKLIST), id="v4-blocked"
        ),
        pytest.param(lambda: v4(dst=UNPROTECTED4), (), PASS, (Kind.PASS, Reason.BYPASS), id="v4-bypass"),
    ],
)
def test_repeat_counts_every_run(bed, packet, entries, action, slot):
    n = 1000
    pkt = packet()
    install(bed, entries)
    counters_before, hits_before = bed.counters(), hits(bed, entries)

    rv, _ = bed.run(pkt, repeat=n)

    counters_after, hits_after = bed.counters(), hits(bed, entries)
    assert {"pass": 2, "drop": 1}[action] == rv
    moved = {
        k: (counters_after[k][0] - counters_before[k][0], counters_after[k][1] - counters_before[k][1])
        for k in counters_after
        if counters_after[k] != counters_before[k]
    }
    assert moved == {slot: (n, n * len(pkt))}
    assert {k: hits_after[k] - hits_before[k] for k in hits_after} == {k: n for k in hits_after}


def test_expired_exact_entry_does_not_shadow_live_covering_entry(bed):
    install(bed, (Entry("block", "203.0.113.0/24"), Entry("block", f"{ATTACKER4}/32", -60)))
    got = bed.verdict(v4(src=ATTACKER4))
    assert (got.action, got.reason) == (DROP, Reason.BLOCKLIST)


@pytest.mark.parametrize("shadow", ["/28", "/29"])
def test_expired_trie_prefix_does_not_shadow_live_covering_prefix(bed, shadow):
    """Non-host entries live in the LPM trie: an expired /28 must not hide the live /24; the data
    path deletes the expired one it met (so the next lookup is direct)."""
    install(bed, (Entry("block", "203.0.113.0/24"), Entry("block", f"203.0.113.0{shadow}", -60)))
    got = bed.verdict(v4(src=ATTACKER4))
    assert (got.action, got.reason) == (DROP, Reason.BLOCKLIST)
    left = [k.prefixlen for k in bed.maps[MapName.BLOCK4].keys()]
    assert left == [24]  # the expired entry was deleted by XDP (an LPM lookup would find the /24)
    assert bed.entry_hits("block", "203.0.113.0/24") == 1


def test_allowlist_exact_and_prefix_maps_both_count(bed):
    install(bed, (Entry("block", "203.0.113.0/24"), Entry("allow", f"{ATTACKER4}/32")))
    got = bed.verdict(v4(src=ATTACKER4))
    assert (got.action, got.reason) == (PASS, Reason.ALLOWLIST)
    assert bed.entry_hits("allow", f"{ATTACKER4}/32") == 1 and bed.entry_hits("block", "203.0.113.0/24") == 0
