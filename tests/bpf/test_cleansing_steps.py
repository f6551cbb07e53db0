"""Every cleansing step and drop reason through BPF_PROG_TEST_RUN, table-driven.

Stateless steps (bans, fragments, protocol, port, reflection, feature filters) are one packet
against one policy: the XDP verdict must be the expected one, and the reference model
(xdpguard/core/model.py) must agree. Time-dependent steps (token buckets, auto-bans, ban expiry,
SYN rate and SYN authentication) use `TestBed.run(packet, repeat=N)` — the kernel runs the program
N times back to back, far faster than any refill — and short real sleeps. bpf_ktime_get_ns() is
CLOCK_MONOTONIC, so a ban or SYN state can be written and read with time.clock_gettime_ns.
"""

from __future__ import annotations

import ctypes
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from xdpguard.core.kernel import abi
from xdpguard.core import guard, policy
from xdpguard.core.kernel.abi import Kind, MapName, Reason
from xdpguard.core.model.verdict import Model, Protected, Setup
from xdpguard.core.policy import AddressPolicy, Filter, GlobalPolicy, Limits, SynPolicy
from xdpguard.core.guard import Guard
from xdpguard.core.testrun import TestBed

pytestmark = pytest.mark.kernel

PROTECTED4, PROTECTED6 = "198.18.0.1", "2001:db8::1"
CLIENT4, CLIENT6 = "198.51.100.10", "2001:db8:c::10"
OTHER4 = "198.51.100.11"
ADDRS = {4: ipaddress.ip_address(PROTECTED4), 6: ipaddress.ip_address(PROTECTED6)}
PASS, DROP = "pass", "drop"
NO_REFLECTION = GlobalPolicy(reflection=False, reflection_ports=frozenset())
ALL_DROP_REASONS = sum(1 << r for r in Reason if r.is_drop)


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # the clock of bpf_ktime_get_ns


# ---- packets ----


def v4(l4=None, src: str = CLIENT4, **ip) -> bytes:
    return bytes(
        Ether() / IP(src=src, dst=PROTECTED4, **ip) / (TCP(sport=40000, dport=80, flags="S") if l4 is None else l4)
    )


def v6(l4=None, src: str = CLIENT6, frag=None) -> bytes:
    l3 = IPv6(src=src, dst=PROTECTED6)
    if frag is not None:
        l3 = l3 / IPv6ExtHdrFragment(offset=frag, m=1)
    return bytes(Ether() / l3 / (TCP(sport=40000, dport=80, flags="S") if l4 is None else l4))


def syn(src: str = CLIENT4, dport: int = 80) -> bytes:
    return v4(TCP(sport=40000, dport=dport, flags="S"), src=src)


def ack(src: str = CLIENT4) -> bytes:
    return v4(TCP(sport=40000, dport=80, flags="A"), src=src)


def udp(sport: int = 5000, dport: int = 53, payload: bytes = b"hello", src: str = CLIENT4) -> bytes:
    return v4(UDP(sport=sport, dport=dport) / Raw(payload), src=src)


# ---- the bed ----


class Bed:
    """A TestBed with PROTECTED4/6 and helpers that set one policy and reset it."""

    def __init__(self, tb: TestBed):
        self.tb = tb
        self.maps = tb.maps
        self.guard = Guard(None, None, tb.maps)
        self.global_: GlobalPolicy | None = None
        tb.protect(PROTECTED4, PROTECTED6)

    def reset(self) -> None:
        for name in (
            MapName.PORTS,
            MapName.PORTLIM,
            MapName.BUCKETS,
            MapName.DSTBKT,
            MapName.BANS,
            MapName.OPBANS,
            MapName.SYNSEEN,
            MapName.SYNAUTH,
        ):
            m = self.maps[name]
            for k in list(m.keys()):
                m.delete(k)
        for slot in range(2):
            self.maps[MapName.SYNWIN].set(ctypes.c_uint32(slot), abi.SynWin(0, 0))
        self.tb.clear_sketch()
        self.maps[MapName.DPSTATE].set(ctypes.c_uint32(0), abi.DpState(0))
        for a in ADDRS.values():  # no port policy, no port limits (their maps were emptied above)
            m = self.maps[MapName.PROT4 if a.version == 4 else MapName.PROT6]
            m.set(policy.prot_key(a), policy.new_protected(m.get(policy.prot_key(a)).syn.slot))
        self.apply(NO_REFLECTION)
        guard.write_mitigation_filters(self.maps, [])  # write_global_policy keeps them

    def apply(
        self,
        g: GlobalPolicy = NO_REFLECTION,
        addr: AddressPolicy = AddressPolicy(),
        ports=(),
        port_limits=None,
        banned=(),
    ) -> Setup:
        """Write a policy (for both protected addresses) and return the model's view of it."""
        guard.write_global_policy(self.maps, g, self.global_)
        self.global_ = g
        for a in ADDRS.values():
            guard.write_address_policy(self.maps, a, addr)
            for proto, port in ports:
                self.guard.change_ports([a], proto, port, port, abi.PORT_BY_OPERATOR, True)
            for (proto, port), lim in (port_limits or {}).items():
                guard.write_port_limits(self.maps, a, proto, port, port, lim)
        for src in banned:
            self.ban(src, 3600)
        prot = Protected(addr, frozenset(ports), dict(port_limits or {}))
        return Setup(g, {a: prot for a in ADDRS.values()}, banned=frozenset(ipaddress.ip_address(s) for s in banned))

    def ban(self, src: str, seconds: float) -> None:
        until = now_ns() + int(seconds * 1e9)
        self.maps[MapName.BANS].set(
            policy.src_key(ipaddress.ip_address(src)), abi.Ban(until, 0, int(Reason.FEATURE), 0)
        )
        self.maps[MapName.DPSTATE].set(ctypes.c_uint32(0), abi.DpState(abi.DP_HAS_BANS))

    def ban_of(self, src: str):
        return self.maps[MapName.BANS].get(policy.src_key(ipaddress.ip_address(src)))

    def verdict(self, packet: bytes) -> tuple[str, Kind, Reason]:
        v = self.tb.verdict(packet)
        return v.action, v.kind, v.reason

    def run(self, packet: bytes, repeat: int) -> dict[tuple[Kind, Reason], int]:
        """Run packet repeat times; the packets counted per (kind, reason) slot."""
        before = self.tb.counters()
        self.tb.run(packet, repeat=repeat)
        after = self.tb.counters()
        return {k: after[k][0] - before[k][0] for k in after if after[k][0] != before[k][0]}

    def saturate_syn_window(self) -> None:
        """Make both addresses' SYN windows read 'far above any threshold, this second'."""
        for slot in range(2):
            self.maps[MapName.SYNWIN].set(ctypes.c_uint32(slot), abi.SynWin(now_ns(), 10**9))


@pytest.fixture(scope="module")
def testbed(shared_bed):
    return Bed(shared_bed())


@pytest.fixture
def bed(testbed):
    testbed.reset()
    yield testbed
    testbed.reset()


# ---- stateless steps: one packet, one policy ----


@dataclass(frozen=True)
class Case:
    id: str
    description: str
    packet: Callable[[], bytes]
    action: str
    reason: Reason
    g: GlobalPolicy = NO_REFLECTION
    addr: AddressPolicy = AddressPolicy()
    ports: tuple[tuple[str, int], ...] = ()
    banned: tuple[str, ...] = ()
    kind: Kind | None = None  # default: from the action
    extra: dict = field(default_factory=dict)


def drops(id, description, packet, reason, **kw) -> Case:
    return Case(id, description, packet, DROP, reason, **kw)


def passes(id, description, packet, **kw) -> Case:
    return Case(id, description, packet, PASS, Reason.CLEAN, **kw)


FRAGS = GlobalPolicy(drop_fragments=True, reflection=False, reflection_ports=frozenset())
REFL = GlobalPolicy(reflection=True, reflection_ports=frozenset({19, 123, 1900, 11211}))
WEB = (("tcp", 80), ("tcp", 443), ("udp", 53))


def feat(*filters: Filter, **kw) -> GlobalPolicy:
    return GlobalPolicy(reflection=False, reflection_ports=frozenset(), filters=filters, **kw)


EVIL = Filter(payload=b"EVIL")  # payload base, offset 0

CASES = [
    # bans
    drops("banned-v4", "a source under a live dynamic ban", lambda: v4(), Reason.BANNED, banned=(CLIENT4,)),
    drops("banned-v6", "a source under a live dynamic ban", lambda: v6(), Reason.BANNED, banned=(CLIENT6,)),
    passes("banned-other-source", "a ban of another source", lambda: v4(), banned=(OTHER4,)),
    drops(
        "banned-before-malformed",
        "bans come before the header checks",
        lambda: v4()[:40],
        Reason.BANNED,
        banned=(CLIENT4,),
    ),
    # fragments
    drops(
        "frag-v4-first",
        "first v4 fragment (MF) with the fragment policy on",
        lambda: v4(flags="MF"),
        Reason.FRAGMENT,
        g=FRAGS,
    ),
    drops(
        "frag-v4-later",
        "non-first v4 fragment",
        lambda: bytes(Ether() / IP(src=CLIENT4, dst=PROTECTED4, proto=17, frag=100) / Raw(b"x" * 8)),
        Reason.FRAGMENT,
        g=FRAGS,
    ),
    drops("frag-v6-first", "v6 fragment header, offset 0", lambda: v6(frag=0), Reason.FRAGMENT, g=FRAGS),
    drops(
        "frag-v6-later",
        "v6 fragment header, offset 100",
        lambda: v6(l4=Raw(b"x" * 8), frag=100),
        Reason.FRAGMENT,
        g=FRAGS,
    ),
    passes("frag-v4-policy-off", "fragments pass with the policy off", lambda: v4(flags="MF")),
    passes("frag-v4-df-only", "DF is not a fragment", lambda: v4(flags="DF"), g=FRAGS),
    # protocol
    drops("proto-tcp", "TCP blocked", lambda: v4(), Reason.PROTOCOL, addr=AddressPolicy(frozenset({"tcp"}))),
    drops("proto-udp", "UDP blocked", lambda: udp(), Reason.PROTOCOL, addr=AddressPolicy(frozenset({"udp"}))),
    drops("proto-icmp", "ICMP blocked", lambda: v4(ICMP()), Reason.PROTOCOL, addr=AddressPolicy(frozenset({"icmp"}))),
    drops(
        "proto-icmpv6",
        "ICMPv6 blocked by 'icmp'",
        lambda: v6(ICMPv6EchoRequest()),
        Reason.PROTOCOL,
        addr=AddressPolicy(frozenset({"icmp"})),
    ),
    drops(
        "proto-other-gre",
        "GRE blocked by 'other'",
        lambda: v4(Raw(b"\x00" * 8), proto=47),
        Reason.PROTOCOL,
        addr=AddressPolicy(frozenset({"other"})),
    ),
    passes(
        "proto-udp-not-blocked",
        "UDP passes when only TCP is blocked",
        lambda: udp(),
        addr=AddressPolicy(frozenset({"tcp"})),
    ),
    # port policy
    passes("port-open-tcp", "TCP to an open port", lambda: v4(), ports=WEB),
    drops("port-closed-tcp", "TCP to a closed port", lambda: syn(dport=81), Reason.PORT, ports=WEB),
    drops("port-closed-udp", "UDP to a port open only for TCP", lambda: udp(dport=80), Reason.PORT, ports=WEB),
    passes("port-open-udp", "UDP to an open UDP port", lambda: udp(dport=53), ports=WEB),
    drops("port-closed-v6", "v6 TCP to a closed port", lambda: v6(TCP(dport=22)), Reason.PORT, ports=WEB),
    passes("port-icmp", "ICMP has no ports: not subject to the port policy", lambda: v4(ICMP()), ports=WEB),
    passes(
        "port-later-fragment",
        "a non-first fragment has no ports",
        lambda: bytes(Ether() / IP(src=CLIENT4, dst=PROTECTED4, proto=6, frag=100) / Raw(b"x" * 8)),
        ports=WEB,
    ),
    passes("port-policy-off", "no open port: every port is reachable", lambda: syn(dport=81)),
    # reflection
    drops("reflection-ntp", "UDP from source port 123", lambda: udp(sport=123), Reason.REFLECTION, g=REFL),
    drops("reflection-memcached", "UDP from source port 11211", lambda: udp(sport=11211), Reason.REFLECTION, g=REFL),
    passes("reflection-tcp", "TCP from port 123 is no reflection", lambda: v4(TCP(sport=123, dport=80)), g=REFL),
    passes("reflection-other-port", "UDP from port 124", lambda: udp(sport=124), g=REFL),
    passes(
        "reflection-off",
        "reflection step off",
        lambda: udp(sport=123),
        g=GlobalPolicy(reflection=False, reflection_ports=frozenset({123})),
    ),
    drops(
        "reflection-before-feature",
        "reflection comes before a pass filter",
        lambda: udp(sport=123),
        Reason.REFLECTION,
        g=GlobalPolicy(reflection_ports=frozenset({123}), filters=(Filter(action="pass"),)),
    ),
    # TCP flags no stack sends (steps/tcpflags.h): SYN with FIN or RST, in any combination
    drops("tcpflags-syn-fin", "SYN and FIN", lambda: v4(TCP(flags="SF")), Reason.TCPFLAGS),
    drops("tcpflags-syn-rst", "SYN and RST", lambda: v4(TCP(flags="SR")), Reason.TCPFLAGS),
    drops("tcpflags-syn-fin-ack-v6", "SYN, FIN and ACK over IPv6", lambda: v6(TCP(flags="SFA")), Reason.TCPFLAGS),
    drops("tcpflags-syn-rst-ack", "SYN, RST and ACK", lambda: v4(TCP(flags="SRA")), Reason.TCPFLAGS),
    passes("tcpflags-syn", "a plain SYN", lambda: v4(TCP(flags="S"))),
    passes("tcpflags-fin-ack", "FIN-ACK (no SYN)", lambda: v4(TCP(flags="FA"))),
    passes("tcpflags-rst", "RST (no SYN)", lambda: v4(TCP(flags="R"))),
    passes("tcpflags-udp", "UDP has no TCP flags", lambda: udp(payload=b"\x03" * 16)),
    drops(
        "tcpflags-before-pass-filter",
        "no pass filter admits SYN+FIN",
        lambda: v4(TCP(flags="SF")),
        Reason.TCPFLAGS,
        g=feat(Filter(action="pass")),
    ),
    Case(
        "tcpflags-no-cookie",
        "SYN+FIN gets no cookie SYN-ACK (SYN defence always on, cookie mode)",
        lambda: v4(TCP(flags="SF")),
        DROP,
        Reason.TCPFLAGS,
        addr=AddressPolicy(syn=SynPolicy(always=True)),
    ),
    Case(
        "tcpflags-cookie-control",
        "the plain SYN is answered with a cookie there",
        lambda: v4(TCP(flags="S")),
        "tx",
        Reason.SYNCOOKIE,
        addr=AddressPolicy(syn=SynPolicy(always=True)),
        kind=Kind.DROP,
    ),
    Case(
        "monitor-tcpflags",
        "monitor: a tcpflags drop passes as would_drop",
        lambda: v4(TCP(flags="SR")),
        PASS,
        Reason.TCPFLAGS,
        g=feat(monitor_mask=1 << Reason.TCPFLAGS),
        kind=Kind.WOULD_DROP,
    ),
    # feature filters
    drops(
        "feature-payload",
        "payload bytes at offset 0 of the payload",
        lambda: udp(payload=b"EVIL!"),
        Reason.FEATURE,
        g=feat(EVIL),
    ),
    passes("feature-payload-miss", "other payload", lambda: udp(payload=b"GOOD!"), g=feat(EVIL)),
    passes(
        "feature-payload-past-end", "the bytes would lie past the packet end", lambda: udp(payload=b"EVI"), g=feat(EVIL)
    ),
    drops(
        "feature-payload-mask",
        "masked compare: 'evil' matches 'EVIL' with 0xdf masks",
        lambda: udp(payload=b"evil"),
        Reason.FEATURE,
        g=feat(Filter(payload=b"EVIL", payload_mask=b"\xdf" * 4)),
    ),
    drops(
        "feature-l4-base",
        "UDP destination port 53 as bytes at L4 offset 2",
        lambda: udp(),
        Reason.FEATURE,
        g=feat(Filter(payload=b"\x00\x35", payload_base="l4", payload_off=2)),
    ),
    drops(
        "feature-l3-base",
        "TTL 7 as a byte at L3 offset 8",
        lambda: v4(ttl=7),
        Reason.FEATURE,
        g=feat(Filter(payload=b"\x07", payload_base="l3", payload_off=8)),
    ),
    drops(
        "feature-tcp-flags",
        "SYN without ACK",
        lambda: syn(),
        Reason.FEATURE,
        g=feat(Filter(tcp_flags=policy.parse_tcp_flags("syn,!ack"))),
    ),
    passes(
        "feature-tcp-flags-miss",
        "SYN-ACK does not match syn,!ack",
        lambda: v4(TCP(flags="SA")),
        g=feat(Filter(tcp_flags=policy.parse_tcp_flags("syn,!ack"))),
    ),
    drops("feature-ttl", "TTL in 0..10", lambda: v4(ttl=5), Reason.FEATURE, g=feat(Filter(ttl=(0, 10)))),
    drops(
        "feature-length",
        "frame length 60..60",
        lambda: udp(payload=b"x" * 18),
        Reason.FEATURE,
        g=feat(Filter(length=(60, 60))),
    ),
    drops(
        "feature-ports",
        "UDP 5000 → 53",
        lambda: udp(),
        Reason.FEATURE,
        g=feat(Filter(proto="udp", sport=(5000, 5000), dport=(53, 53))),
    ),
    passes(
        "feature-ports-icmp", "a port condition never matches ICMP", lambda: v4(ICMP()), g=feat(Filter(dport=(0, 100)))
    ),
    drops(
        "feature-icmp-matches-icmpv6",
        "proto icmp matches ICMPv6",
        lambda: v6(ICMPv6EchoRequest()),
        Reason.FEATURE,
        g=feat(Filter(proto="icmp")),
    ),
    passes(
        "feature-first-match-pass",
        "a pass filter before a drop filter wins",
        lambda: udp(payload=b"EVIL"),
        g=feat(Filter(action="pass", proto="udp"), EVIL),
    ),
    drops(
        "feature-first-match-drop",
        "a drop filter before a pass filter wins",
        lambda: udp(payload=b"EVIL"),
        Reason.FEATURE,
        g=feat(EVIL, Filter(action="pass", proto="udp")),
    ),
    drops(
        "feature-after-port",
        "the port policy comes before the filters",
        lambda: syn(dport=81),
        Reason.PORT,
        g=feat(Filter(action="pass")),
        ports=WEB,
    ),
    # monitor mode
    Case(
        "monitor-feature",
        "monitor: a feature drop passes as would_drop",
        lambda: udp(payload=b"EVIL"),
        PASS,
        Reason.FEATURE,
        g=feat(EVIL, monitor_mask=ALL_DROP_REASONS),
        kind=Kind.WOULD_DROP,
    ),
    Case(
        "monitor-port",
        "monitor: a port drop passes as would_drop",
        lambda: syn(dport=81),
        PASS,
        Reason.PORT,
        g=feat(monitor_mask=1 << Reason.PORT),
        ports=WEB,
        kind=Kind.WOULD_DROP,
    ),
    drops(
        "monitor-other-reason",
        "monitor mask of another reason still drops",
        lambda: syn(dport=81),
        Reason.PORT,
        g=feat(monitor_mask=1 << Reason.FEATURE),
        ports=WEB,
    ),
]


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_step(bed, case: Case):
    setup = bed.apply(case.g, case.addr, case.ports, banned=case.banned)
    pkt = case.packet()
    kind = case.kind if case.kind is not None else (Kind.DROP if case.action == DROP else Kind.PASS)
    want = (case.action, kind, case.reason)
    assert bed.verdict(pkt) == want, case.description
    m = Model(setup).verdict(pkt)
    assert (m.action, m.kind, m.reason) == want, f"model: {case.description}"


# ---- bans written by the data path, and their expiry ----


def test_expired_ban_is_deleted_and_passes(bed):
    bed.apply()
    bed.ban(CLIENT4, -1)
    assert bed.verdict(v4()) == (PASS, Kind.PASS, Reason.CLEAN)
    assert bed.ban_of(CLIENT4) is None


def test_drop_ban_filter_bans_the_source_until_expiry(bed):
    bed.apply(feat(Filter(action="drop-ban", payload=b"EVIL", ban_s=1)))
    assert bed.verdict(udp(payload=b"EVIL")) == (DROP, Kind.DROP, Reason.FEATURE)
    ban = bed.ban_of(CLIENT4)
    assert ban is not None and ban.reason == Reason.FEATURE
    assert 0.5e9 < ban.expires_ns - now_ns() <= 1e9
    assert bed.verdict(udp(payload=b"fine")) == (DROP, Kind.DROP, Reason.BANNED)  # even a clean packet
    assert bed.verdict(udp(payload=b"fine", src=OTHER4)) == (PASS, Kind.PASS, Reason.CLEAN)
    assert bed.ban_of(CLIENT4).hits == 1
    time.sleep(1.05)
    assert bed.verdict(udp(payload=b"fine")) == (PASS, Kind.PASS, Reason.CLEAN)


def test_drop_ban_in_monitor_mode_is_would_drop_and_bans_nobody(bed):
    bed.apply(feat(Filter(action="drop-ban", payload=b"EVIL", ban_s=60), monitor_mask=ALL_DROP_REASONS))
    assert bed.verdict(udp(payload=b"EVIL")) == (PASS, Kind.WOULD_DROP, Reason.FEATURE)
    assert bed.ban_of(CLIENT4) is None  # monitor mode has no side effects
    assert bed.verdict(udp(payload=b"fine")) == (PASS, Kind.PASS, Reason.CLEAN)


def test_monitoring_one_reason_creates_no_ban_that_really_drops(bed):
    """Only `feature` monitored, `banned` enforced: a would-drop must not turn into real drops."""
    bed.apply(feat(Filter(action="drop-ban", payload=b"EVIL", ban_s=60), monitor_mask=1 << Reason.FEATURE))
    assert bed.verdict(udp(payload=b"EVIL")) == (PASS, Kind.WOULD_DROP, Reason.FEATURE)
    assert bed.ban_of(CLIENT4) is None
    assert bed.verdict(udp(payload=b"fine")) == (PASS, Kind.PASS, Reason.CLEAN)


def test_rate_limit_auto_ban_not_while_ratelimit_is_monitored(bed):
    bed.apply(
        feat(monitor_mask=1 << Reason.RATELIMIT), AddressPolicy(limits=Limits(src_pps=10, src_burst_pkts=2, ban_s=60))
    )
    assert bed.run(ack(), 5) == {(Kind.PASS, Reason.CLEAN): 2, (Kind.WOULD_DROP, Reason.RATELIMIT): 3}
    assert bed.ban_of(CLIENT4) is None


# ---- rate limits (repeat: back-to-back runs, no measurable refill) ----


def test_src_pps_burst(bed):
    bed.apply(addr=AddressPolicy(limits=Limits(src_pps=10, src_burst_pkts=5)))
    assert bed.run(syn(), 20) == {(Kind.PASS, Reason.CLEAN): 5, (Kind.DROP, Reason.RATELIMIT): 15}
    assert bed.run(syn(src=OTHER4), 3) == {(Kind.PASS, Reason.CLEAN): 3}  # per source


def test_src_pps_default_burst_is_one_second(bed):
    bed.apply(addr=AddressPolicy(limits=Limits(src_pps=7)))
    assert bed.run(ack(), 10) == {(Kind.PASS, Reason.CLEAN): 7, (Kind.DROP, Reason.RATELIMIT): 3}


def test_src_pps_refills(bed):
    bed.apply(addr=AddressPolicy(limits=Limits(src_pps=10, src_burst_pkts=2)))
    assert bed.run(ack(), 4) == {(Kind.PASS, Reason.CLEAN): 2, (Kind.DROP, Reason.RATELIMIT): 2}
    time.sleep(0.25)  # 2.5 packets of refill, capped at the burst of 2
    assert bed.run(ack(), 4) == {(Kind.PASS, Reason.CLEAN): 2, (Kind.DROP, Reason.RATELIMIT): 2}


def test_src_bps_burst(bed):
    pkt = udp(payload=b"x" * 58)  # 100-byte frame
    assert len(pkt) == 100
    bed.apply(addr=AddressPolicy(limits=Limits(src_bps=1000, src_burst_bytes=350)))
    assert bed.run(pkt, 10) == {(Kind.PASS, Reason.CLEAN): 3, (Kind.DROP, Reason.RATELIMIT): 7}


def test_src_bps_refills_when_pps_is_also_limited(bed):
    """Regression: both buckets share last_ns; the byte bucket used to see 0 ns elapsed once the
    packet bucket had stamped it, and never refilled."""
    pkt = udp(payload=b"x" * 58)
    bed.apply(addr=AddressPolicy(limits=Limits(src_pps=1_000_000, src_bps=1000, src_burst_bytes=200)))
    assert bed.run(pkt, 5) == {(Kind.PASS, Reason.CLEAN): 2, (Kind.DROP, Reason.RATELIMIT): 3}
    time.sleep(0.25)  # 250 bytes of refill, capped at 200
    assert bed.run(pkt, 5) == {(Kind.PASS, Reason.CLEAN): 2, (Kind.DROP, Reason.RATELIMIT): 3}


def test_dst_pps_is_shared_by_all_sources(bed):
    bed.apply(addr=AddressPolicy(limits=Limits(dst_pps=1, dst_burst_pkts=3)))
    assert bed.run(syn(), 2) == {(Kind.PASS, Reason.CLEAN): 2}
    assert bed.run(syn(src=OTHER4), 3) == {(Kind.PASS, Reason.CLEAN): 1, (Kind.DROP, Reason.RATELIMIT): 2}
    assert bed.run(syn(dport=443), 3) == {(Kind.PASS, Reason.CLEAN): 3}  # per address:port
    assert bed.run(v4(ICMP()), 5) == {(Kind.PASS, Reason.CLEAN): 5}  # no port: no per-destination bucket


def test_port_limit_overrides_the_address_limits(bed):
    bed.apply(
        addr=AddressPolicy(limits=Limits(src_pps=100)), port_limits={("tcp", 22): Limits(src_pps=1, src_burst_pkts=1)}
    )
    assert bed.run(syn(dport=22), 3) == {(Kind.PASS, Reason.CLEAN): 1, (Kind.DROP, Reason.RATELIMIT): 2}
    bed.maps[MapName.BUCKETS].delete(policy.src_key(ipaddress.ip_address(CLIENT4)))
    assert bed.run(syn(dport=80), 3) == {(Kind.PASS, Reason.CLEAN): 3}


def test_auto_ban_by_rate_limit_then_expiry(bed):
    bed.apply(addr=AddressPolicy(limits=Limits(src_pps=10, src_burst_pkts=2, ban_s=1)))
    assert bed.run(ack(), 6) == {
        (Kind.PASS, Reason.CLEAN): 2,
        (Kind.DROP, Reason.RATELIMIT): 1,
        (Kind.DROP, Reason.BANNED): 3,
    }
    ban = bed.ban_of(CLIENT4)
    assert ban is not None and ban.reason == Reason.RATELIMIT and ban.hits == 3
    time.sleep(1.05)
    assert bed.verdict(ack()) == (PASS, Kind.PASS, Reason.CLEAN)
    assert bed.ban_of(CLIENT4) is None


def test_pass_filter_skips_rate_limits(bed):
    bed.apply(feat(Filter(action="pass", proto="tcp")), AddressPolicy(limits=Limits(src_pps=1, src_burst_pkts=1)))
    assert bed.run(ack(), 5) == {(Kind.PASS, Reason.CLEAN): 5}
    assert bed.run(udp(), 3) == {(Kind.PASS, Reason.CLEAN): 1, (Kind.DROP, Reason.RATELIMIT): 2}


def test_rate_limit_in_monitor_mode(bed):
    bed.apply(feat(monitor_mask=ALL_DROP_REASONS), AddressPolicy(limits=Limits(src_pps=1, src_burst_pkts=2)))
    assert bed.run(ack(), 5) == {(Kind.PASS, Reason.CLEAN): 2, (Kind.WOULD_DROP, Reason.RATELIMIT): 3}


# ---- SYN defence ----


def test_syn_per_source_rate(bed):
    bed.apply(addr=AddressPolicy(limits=Limits(syn_src_pps=10, syn_src_burst=3)))
    assert bed.run(syn(), 10) == {(Kind.PASS, Reason.CLEAN): 3, (Kind.DROP, Reason.SYN): 7}
    assert bed.run(ack(), 5) == {(Kind.PASS, Reason.CLEAN): 5}  # only SYNs count
    assert bed.run(v4(TCP(flags="SA")), 5) == {(Kind.PASS, Reason.CLEAN): 5}  # SYN-ACK is no SYN


def test_syn_per_source_rate_auto_ban(bed):
    bed.apply(addr=AddressPolicy(limits=Limits(syn_src_pps=10, syn_src_burst=1, ban_s=60)))
    assert bed.run(syn(), 3) == {
        (Kind.PASS, Reason.CLEAN): 1,
        (Kind.DROP, Reason.SYN): 1,
        (Kind.DROP, Reason.BANNED): 1,
    }
    assert bed.ban_of(CLIENT4).reason == Reason.SYN


AUTH = SynPolicy(threshold_pps=5, auth_min_ms=200, auth_max_ms=900, auth_keep_s=600, mode="retransmit")


def test_syn_auth_below_threshold_passes(bed):
    bed.apply(addr=AddressPolicy(syn=AUTH))
    assert bed.run(syn(), 5) == {(Kind.PASS, Reason.CLEAN): 5}
    assert bed.run(syn(src=OTHER4), 3) == {(Kind.DROP, Reason.SYN): 3}  # the 6th..8th SYN of this second


def test_syn_auth_retransmission_admits_the_source(bed):
    bed.apply(addr=AddressPolicy(syn=AUTH))
    bed.saturate_syn_window()
    assert bed.verdict(syn()) == (DROP, Kind.DROP, Reason.SYN)  # first SYN: remembered, dropped
    seen = bed.maps[MapName.SYNSEEN].get(policy.src_key(ipaddress.ip_address(CLIENT4)))
    assert seen is not None
    assert bed.verdict(syn()) == (DROP, Kind.DROP, Reason.SYN)  # a retransmission too early
    assert bed.maps[MapName.SYNSEEN].get(policy.src_key(ipaddress.ip_address(CLIENT4))).first_ns == seen.first_ns
    assert bed.verdict(ack()) == (PASS, Kind.PASS, Reason.CLEAN)  # only SYNs authenticate
    time.sleep(0.3)
    bed.saturate_syn_window()
    assert bed.verdict(syn()) == (PASS, Kind.PASS, Reason.CLEAN)  # inside the window: admitted
    auth = bed.maps[MapName.SYNAUTH].get(policy.src_key(ipaddress.ip_address(CLIENT4)))
    assert auth is not None and 599e9 < auth.until_ns - now_ns() <= 600e9
    assert bed.maps[MapName.SYNSEEN].get(policy.src_key(ipaddress.ip_address(CLIENT4))) is None
    assert bed.run(syn(), 5) == {(Kind.PASS, Reason.CLEAN): 5}  # remembered
    assert bed.verdict(syn(src=OTHER4)) == (DROP, Kind.DROP, Reason.SYN)  # others still must authenticate


def test_syn_auth_too_late_restarts(bed):
    bed.apply(addr=AddressPolicy(syn=AUTH))
    bed.saturate_syn_window()
    key = policy.src_key(ipaddress.ip_address(CLIENT4))
    assert bed.verdict(syn()) == (DROP, Kind.DROP, Reason.SYN)
    first = bed.maps[MapName.SYNSEEN].get(key).first_ns
    time.sleep(1.0)  # past auth_max_ms
    bed.saturate_syn_window()
    assert bed.verdict(syn()) == (DROP, Kind.DROP, Reason.SYN)  # too late: a new attempt starts
    restarted = bed.maps[MapName.SYNSEEN].get(key).first_ns
    assert restarted - first >= 0.9e9
    time.sleep(0.3)
    bed.saturate_syn_window()
    assert bed.verdict(syn()) == (PASS, Kind.PASS, Reason.CLEAN)


def test_syn_auth_needs_a_real_retransmission(bed):
    """A second SYN with another port or sequence number (a spoofer reusing the source) does not
    authenticate; only the remembered SYN, retransmitted inside the window, does."""
    bed.apply(addr=AddressPolicy(syn=AUTH))
    bed.saturate_syn_window()
    assert bed.verdict(v4(TCP(sport=40000, dport=80, flags="S", seq=1111))) == (DROP, Kind.DROP, Reason.SYN)
    time.sleep(0.3)
    bed.saturate_syn_window()
    assert bed.verdict(v4(TCP(sport=40001, dport=80, flags="S", seq=1111))) == (DROP, Kind.DROP, Reason.SYN)
    assert bed.verdict(v4(TCP(sport=40000, dport=80, flags="S", seq=2222))) == (DROP, Kind.DROP, Reason.SYN)
    assert bed.verdict(v4(TCP(sport=40000, dport=80, flags="S", seq=1111))) == (PASS, Kind.PASS, Reason.CLEAN)


def test_syn_auth_expiry_requires_a_new_authentication(bed):
    bed.apply(addr=AddressPolicy(syn=AUTH))
    bed.saturate_syn_window()
    key = policy.src_key(ipaddress.ip_address(CLIENT4))
    bed.maps[MapName.SYNAUTH].set(key, abi.SynAuth(now_ns() - 1))  # authenticated, expired
    assert bed.verdict(syn()) == (DROP, Kind.DROP, Reason.SYN)
    assert bed.maps[MapName.SYNAUTH].get(key) is None
    assert bed.maps[MapName.SYNSEEN].get(key) is not None


# ---- bucket arithmetic edges (state written directly) ----


def _set_bucket(bed, src: str, **fields) -> None:
    """Write a source's bucket and put its sketch slot on the bucket path (so the bucket is what
    judges its next packet, as for a source past its sketch allowance)."""
    b = abi.Bucket()
    for k, v in fields.items():
        setattr(b, k, v)
    bed.maps[MapName.BUCKETS].set(policy.src_key(ipaddress.ip_address(src)), b)
    bed.tb.sketch_hot(src, now_ns())


def test_bucket_refill_saturates_instead_of_wrapping(bed):
    """Regression: tokens + elapsed*rate could pass 2^64 and wrap to almost nothing. With the 4 s
    refill cap and the top rate, add = 4e9 * 4e9 = 1.6e19; these tokens make the sum 2^64 + 5."""
    bed.apply(addr=AddressPolicy(limits=Limits(src_bps=policy.MAX_BPS, src_burst_bytes=policy.MAX_BURST)))
    _set_bucket(bed, CLIENT4, last_ns=now_ns() - 10 * 10**9, byte_tokens=2**64 - 16 * 10**18 + 5)
    assert bed.verdict(ack()) == (PASS, Kind.PASS, Reason.CLEAN)


def test_bucket_stamped_in_the_future_gets_no_refill(bed):
    """Regression: a last_ns later than now (another CPU's stamp) made now - last_ns wrap, which
    the 4 s cap turned into a full refill."""
    bed.apply(addr=AddressPolicy(limits=Limits(src_pps=10, src_burst_pkts=5)))
    _set_bucket(bed, CLIENT4, last_ns=now_ns() + 10 * 10**9, pkt_tokens=0)
    assert bed.verdict(ack()) == (DROP, Kind.DROP, Reason.RATELIMIT)


# ---- automatic mitigation filters (action mitigate, reason mitigation; core/daemon/mitigation.py) ----


MITIG = Filter(
    action="mitigate", proto="udp", dport=(53, 53), length=(47, 47), payload=b"hello", payload_mask=b"\xff" * 5
)  # the form the kernel gives back


def test_mitigation_filter_drops_as_mitigation_after_the_operators(bed):
    setup = bed.apply(feat(Filter(action="pass", payload=b"hello", sport=(7, 7))))
    guard.write_mitigation_filters(bed.maps, [MITIG])
    setup = Setup(
        GlobalPolicy(reflection=False, reflection_ports=frozenset(), filters=(*setup.global_.filters, MITIG)),
        setup.protected,
    )
    for pkt, want in (
        (udp(), (DROP, Kind.DROP, Reason.MITIGATION)),
        (udp(sport=7), (PASS, Kind.PASS, Reason.CLEAN)),  # the operator's pass filter comes first
        (udp(payload=b"hellO"), (PASS, Kind.PASS, Reason.CLEAN)),
        (udp(dport=54), (PASS, Kind.PASS, Reason.CLEAN)),
    ):
        assert bed.verdict(pkt) == want
        m = Model(setup).verdict(pkt)
        assert (m.action, m.kind, m.reason) == want
    guard.write_mitigation_filters(bed.maps, [])


def test_operator_filter_changes_keep_mitigations_and_export_never_sees_them(bed):
    bed.apply(feat(EVIL))
    guard.write_mitigation_filters(bed.maps, [MITIG])
    assert guard.read_global_policy(bed.maps).filters == (replace(EVIL, payload_mask=b"\xff" * 4),)
    assert guard.read_mitigation_filters(bed.maps) == [MITIG]
    g2 = feat(EVIL, Filter(action="pass", sport=(7, 7)))
    guard.write_global_policy(bed.maps, g2, bed.global_)  # what apply / filter add do
    bed.global_ = g2
    assert len(guard.read_global_policy(bed.maps).filters) == 2
    assert guard.read_mitigation_filters(bed.maps) == [MITIG]
    assert bed.verdict(udp()) == (DROP, Kind.DROP, Reason.MITIGATION)
    # a full table: the operator's filters keep their slots, mitigations get what is left
    assert guard.write_mitigation_filters(bed.maps, [MITIG] * abi.FILTERS_MAX) == abi.FILTERS_MAX - 2
    guard.write_mitigation_filters(bed.maps, [])
    assert bed.verdict(udp()) == (PASS, Kind.PASS, Reason.CLEAN)


def test_mitigation_monitored_is_would_drop(bed):
    bed.apply(feat(monitor_mask=1 << Reason.MITIGATION))
    guard.write_mitigation_filters(bed.maps, [MITIG])
    assert bed.verdict(udp()) == (PASS, Kind.WOULD_DROP, Reason.MITIGATION)
    guard.write_mitigation_filters(bed.maps, [])
