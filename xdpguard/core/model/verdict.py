"""Reference model: the verdict of the whole XDP pipeline, computed in pure Python.

`Model(setup).verdict(frame)` returns what bpf/xdpguard.bpf.c returns for the same policy and
the same raw frame (bytes from the Ethernet header on): the action, the verdict kind and the
reason. It is written from the C, step by step, so the differential test
(tests/bpf/test_differential.py) can hold the two against each other on random policies and
random (also malformed and truncated) packets.

The TCP state step is modelled with its connection table: `Model.egress(frame)` is the tc
egress recorder (tcpstate.h) on a frame leaving the protected interface, and XDP admits a non-SYN
TCP packet only for a live recorded connection (or during the attach grace period). Entries are
live or expired (Setup.flows); within a model's life nothing expires by itself.

What the model does not do: time. Rate limits and the SYN threshold are modelled as "buckets
full, threshold not reached" — they never drop. The SYN defence acts where it does at any rate:
`always` (every unverified SYN), and, below the threshold, past the TCP service's admission
budget (budget.h budget_syn_admit). There a SYN is answered with a cookie in cookie mode for IPv4
(action "tx", a drop `syncookie`), else it meets retransmission authentication, which within a
model's life never authenticates (no time passes, so no retransmission is late enough): a drop
`syn`. The budget is a bucket that starts full (its burst, budget.h: min(rate, max(rate / 10,
64)) SYNs) and never refills; its rate is the service's learned one (Setup.budget_rates), else
Setup.budget_tcp_syns, else abi.BUDGET_TCP_SYNS. In cookie mode an ACK of no recorded
connection is a bad cookie (the model never makes valid ones), which keeps its `tcpstate` drop.
Policies fed to the model must use limits that are 0 (off) or so high that the traffic of a
test cannot reach them, and budgets that do not refill within one of its runs (the
differential test: 1 or 2 SYN/s, or 64 SYNs of burst); the time-dependent steps have their own
targeted tests (tests/bpf/test_cleansing_steps.py, test_budget.py). The UDP admission budget is
not modelled: fed policies keep it out of reach. Bans written by drop-ban filters are remembered
(they never expire within a model's life).

The model is stateful where the data path is: a drop-ban filter creates a ban, and an expired
allow/block trie entry met by a lookup is deleted (which matters for the retry bound,
XG_EXPIRED_RETRY, of lists.h).

Verified clients (knowngood.h) are learned from egress frames: an established TCP connection
verifies a client for every protocol, a UDP answer for UDP only; always peacetime here (no time,
so no UDP flood), and the per-source privilege budget is never spent. A verified source passes
the automatic mitigation filters, the SYN defence and the TCP budget (never charged), and no
drop-ban filter bans it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..kernel.abi import BUDGET_BURST_DIV, BUDGET_BURST_MIN, BUDGET_TCP_SYNS, FILTERS_MAX, REASON_MAX, VF_TCP, VF_UDP
from ..kernel.abi import Kind, Reason
from ..policy import AddressPolicy, Filter, GlobalPolicy, Limits
from .vocab import FILTER_PROTOS
from .prefixes import Prefix

ETH_HLEN = 14
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
ETH_P_8021Q, ETH_P_8021AD = 0x8100, 0x88A8
VLAN_MAX = 2  # XG_VLAN_MAX
EXPIRED_RETRY = 4  # XG_EXPIRED_RETRY: trie lookups per list per packet
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
NEXTHDR_FRAGMENT = 44
NEXTHDR_OPTIONS = (0, 43, 60)  # hop-by-hop, routing, destination options: walked by parse_ip6_ext
IPV6_EXT_MAX = 6  # XG_IPV6_EXT_MAX
TCP_FIN, TCP_RST = 0x01, 0x04
FLOW_EST, FLOW_FIN, FLOW_RST, FLOW_SYN = "est", "fin", "rst", "syn"
IP_MF, IP_OFFSET = 0x2000, 0x1FFF
TCP_SYN, TCP_ACK = 0x02, 0x10
BLOCK_BITS = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp", IPPROTO_ICMPV6: "icmp"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ANSWERED = "tx"  # _steps(): the SYN is answered with a SYN cookie (XG_SYNCOOKIE_TX)


# ---- inputs ----


@dataclass(frozen=True)
class Listed:
    """An allow/block list entry; an expired one is inert (the data path deletes it on sight)."""

    prefix: Prefix
    expired: bool = False


@dataclass(frozen=True)
class Protected:
    """One protected address: its policy, its open ports (the port policy is on while any port
    of the address is open, as Guard.change_ports keeps it) and per-port limit overrides."""

    policy: AddressPolicy = AddressPolicy()
    open_ports: frozenset[tuple[str, int]] = frozenset()  # ("tcp" | "udp", port)
    port_limits: Mapping[tuple[str, int], Limits] = field(default_factory=dict)
    tcpstate: bool = True  # False: XG_PROT_TCPSTATE_OFF (the step needs the port policy on too)


# (family, client address bytes, client port, protected address bytes, protected port)
FlowKey = tuple[int, bytes, int, bytes, int]


@dataclass(frozen=True)
class Setup:
    """Everything the pipeline reads from its maps."""

    global_: GlobalPolicy = GlobalPolicy()
    protected: Mapping[IPAddress, Protected] = field(default_factory=dict)
    allow: tuple[Listed | Prefix, ...] = ()
    block: tuple[Listed | Prefix, ...] = ()
    banned: frozenset[IPAddress] = frozenset()  # sources under a live dynamic ban
    enabled: bool = True
    tcpstate: bool = False  # XG_CFG_TCPSTATE: the egress recorder is attached
    grace: bool = False  # within the attach grace period: unknown connections pass
    # Recorded connections before any egress frame: FlowKey → (table, state, live).
    flows: Mapping[FlowKey, tuple[str, str, bool]] = field(default_factory=dict)
    # The admission budgets (xg_verify_config, budget.h): the switch, the TCP setting (SYNs/s per
    # service, 0: abi.BUDGET_TCP_SYNS), and the rates the controller wrote per TCP service
    # (protected address, port) → SYNs/s (xg_budget.rate; 0: the setting)
    budget: bool = True
    budget_tcp_syns: int = 0
    budget_rates: Mapping[tuple[IPAddress, int], int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelVerdict:
    action: str  # pass | drop
    kind: Kind
    reason: Reason


# ---- parsing (parsing.h and the entry point) ----


@dataclass(frozen=True)
class Addresses:
    """What the fixed L3 header gives before any check: enough to judge whether it is ours."""

    family: int
    src: bytes
    dst: bytes
    l3_off: int


@dataclass(frozen=True)
class Headers:
    """struct xg_pkt: what the cleansing steps know about a packet (offsets 0 = absent)."""

    l4proto: int
    ttl: int
    is_frag: bool
    has_l4: bool = False
    l4_off: int = 0
    payload_off: int = 0
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0


def _u16(b: bytes, at: int) -> int:
    return (b[at] << 8) | b[at + 1]


def _ethernet(frame: bytes) -> tuple[int, int] | None:
    """Ethernet and up to VLAN_MAX tags (0x8100 or 0x88a8): (offset of L3, EtherType), or None
    when a header is cut short (parse_ethhdr's contract, shared by ingress and egress parses)."""
    n = len(frame)
    if n < ETH_HLEN:
        return None
    pos, proto = ETH_HLEN, _u16(frame, 12)
    for _ in range(VLAN_MAX):
        if proto not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        if pos + 4 > n:
            return None
        proto = _u16(frame, pos + 2)
        pos += 4
    return pos, proto


def parse_addresses(frame: bytes) -> Addresses | None:
    """Ethernet, up to VLAN_MAX tags (0x8100 or 0x88a8), then the fixed IPv4/IPv6 header.
    None: not IP, or too short to hold both addresses (the packet is not ours: bypass)."""
    n = len(frame)
    l2 = _ethernet(frame)
    if l2 is None:
        return None
    pos, proto = l2
    if proto == ETH_P_IP:
        if pos + 20 > n:
            return None
        return Addresses(4, bytes(frame[pos + 12 : pos + 16]), bytes(frame[pos + 16 : pos + 20]), pos)
    if proto == ETH_P_IPV6:
        if pos + 40 > n:
            return None
        return Addresses(6, bytes(frame[pos + 8 : pos + 24]), bytes(frame[pos + 24 : pos + 40]), pos)
    return None


def _parse_l4(frame: bytes, pos: int, l4proto: int, ttl: int, is_frag: bool) -> Headers | None:
    """parse_l4(): None when the L4 header is truncated or malformed."""
    n = len(frame)
    if l4proto == IPPROTO_TCP:
        if pos + 20 > n:
            return None
        hlen = (frame[pos + 12] >> 4) * 4
        if hlen < 20 or pos + hlen > n:
            return None
        return Headers(
            l4proto, ttl, is_frag, True, pos, pos + hlen, _u16(frame, pos), _u16(frame, pos + 2), frame[pos + 13]
        )
    if l4proto == IPPROTO_UDP:
        if pos + 8 > n:
            return None
        return Headers(l4proto, ttl, is_frag, True, pos, pos + 8, _u16(frame, pos), _u16(frame, pos + 2))
    if l4proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):  # either one, in either family
        if pos + 8 > n:
            return None
        return Headers(l4proto, ttl, is_frag, True, pos, pos + 8)
    return Headers(l4proto, ttl, is_frag, True, pos, pos)  # "other": the payload starts at L4


def parse_headers(frame: bytes, a: Addresses) -> Headers | None:
    """The header checks after the lists and bans. None: malformed (drop)."""
    n = len(frame)
    pos = a.l3_off
    if a.family == 4:
        hlen = (frame[pos] & 0x0F) * 4
        if hlen < 20 or pos + hlen > n:
            return None
        if frame[pos] >> 4 != 4 or _u16(frame, pos + 2) < hlen:
            return None
        frag = _u16(frame, pos + 6)
        l4proto, ttl = frame[pos + 9], frame[pos + 8]
        is_frag = bool(frag & (IP_MF | IP_OFFSET))
        if frag & IP_OFFSET:  # non-first fragment: no L4 header
            return Headers(l4proto, ttl, is_frag)
        return _parse_l4(frame, pos + hlen, l4proto, ttl, is_frag)
    if frame[pos] >> 4 != 6:
        return None
    l4proto, ttl = frame[pos + 6], frame[pos + 7]
    pos += 40
    walked = _walk_ip6_chain(frame, pos, l4proto)
    if walked is None:
        return None
    pos, l4proto, frag, frag_nh = walked
    if frag & 0xFFF8:  # non-first fragment: no L4 header; the protocol is the fragment header's
        return Headers(frag_nh, ttl, True)
    return _parse_l4(frame, pos, l4proto, ttl, frag != 0)


def _walk_ip6_options(frame: bytes, pos: int, nh: int) -> tuple[int, int] | None:
    """parse_ip6_ext(): up to IPV6_EXT_MAX hop-by-hop/routing/destination options headers.
    (position after them, next header), or None: truncated or too long a chain."""
    n = len(frame)
    for _ in range(IPV6_EXT_MAX):
        if nh not in NEXTHDR_OPTIONS:
            return pos, nh
        if pos + 2 > n:
            return None
        ln = (frame[pos + 1] + 1) * 8
        if pos + ln > n:
            return None
        nh = frame[pos]
        pos += ln
    return None if nh in NEXTHDR_OPTIONS else (pos, nh)


def _walk_ip6_chain(frame: bytes, pos: int, nh: int) -> tuple[int, int, int, int] | None:
    """parse_ip6_chain(): up to IPV6_EXT_MAX extension headers in any order. (position after
    them, next header, fragment word (0x10000 | offset/flags, 0 without a fragment header),
    the fragment header's next header), or None: truncated or too long a chain."""
    n = len(frame)
    frag = frag_nh = 0
    for _ in range(IPV6_EXT_MAX):
        if nh == NEXTHDR_FRAGMENT:
            if pos + 8 > n:
                return None
            frag, frag_nh = 0x10000 | _u16(frame, pos + 2), frame[pos]
            pos += 8
            nh = 59 if frag & 0xFFF8 else frag_nh
            continue
        if nh not in NEXTHDR_OPTIONS:
            return pos, nh, frag, frag_nh
        if pos + 2 > n:
            return None
        ln = (frame[pos + 1] + 1) * 8
        if pos + ln > n:
            return None
        nh = frame[pos]
        pos += ln
    return None if nh in NEXTHDR_OPTIONS or nh == NEXTHDR_FRAGMENT else (pos, nh, frag, frag_nh)


def _egress_l4(frame: bytes, protected, l4proto: int) -> tuple[int, bytes, bytes, int] | None:
    """ts_egress()'s IP parse: (family, source, destination, L4 offset) of an unfragmented
    `l4proto` packet leaving from a protected address (`protected`: a set of (family, address
    bytes)), else None."""
    n = len(frame)
    l2 = _ethernet(frame)
    if l2 is None:
        return None
    pos, proto = l2
    if proto == ETH_P_IP:
        if pos + 20 > n:
            return None
        hlen = (frame[pos] & 0x0F) * 4
        if hlen < 20 or pos + hlen > n or frame[pos + 9] != l4proto or _u16(frame, pos + 6) & IP_OFFSET:
            return None
        fam, src, dst = 4, bytes(frame[pos + 12 : pos + 16]), bytes(frame[pos + 16 : pos + 20])
        pos += hlen
    elif proto == ETH_P_IPV6:
        if pos + 40 > n:
            return None
        fam, src, dst = 6, bytes(frame[pos + 8 : pos + 24]), bytes(frame[pos + 24 : pos + 40])
        walked = _walk_ip6_options(frame, pos + 40, frame[pos + 6])
        if walked is None or walked[1] != l4proto:
            return None
        pos = walked[0]
    else:
        return None
    return (fam, src, dst, pos) if (fam, src) in protected else None


def egress_flow(frame: bytes, protected) -> tuple[FlowKey, int] | None:
    """ts_egress()'s parse: (connection key, TCP flags) of a TCP segment leaving from a
    protected address (`protected`: a set of (family, address bytes)), else None."""
    l3 = _egress_l4(frame, protected, IPPROTO_TCP)
    if l3 is None:
        return None
    fam, src, dst, pos = l3
    if pos + 20 > len(frame):
        return None
    hlen = (frame[pos + 12] >> 4) * 4
    if hlen < 20 or pos + hlen > len(frame):
        return None
    return (fam, dst, _u16(frame, pos + 2), src, _u16(frame, pos)), frame[pos + 13]


def egress_udp_client(frame: bytes, protected) -> tuple[int, bytes] | None:
    """ts_egress()'s UDP branch (knowngood.h): (family, client address bytes) of a UDP datagram
    leaving from a protected address (an answer: the client is verified for UDP), else None."""
    l3 = _egress_l4(frame, protected, IPPROTO_UDP)
    return None if l3 is None else (l3[0], l3[2])


# ---- the pipeline ----


class _List:
    """One allow or block list: exact host entries and (LPM) trie entries, each live or expired."""

    def __init__(self, entries: Iterable[Listed | Prefix]):
        self.hosts: dict[tuple[int, bytes], bool] = {}  # (family, addr) → expired
        self.trie: dict[Prefix, bool] = {}  # prefix → expired
        for e in entries:
            if isinstance(e, Prefix):
                e = Listed(e)
            p = e.prefix
            if p.plen == (32 if p.family == 4 else 128):
                self.hosts[(p.family, p.addr)] = e.expired
            else:
                self.trie[p] = e.expired

    def hit(self, family: int, src: bytes) -> bool:
        """list_hit (steps/lists.h): the host hash, then up to EXPIRED_RETRY trie lookups, deleting
        each expired longest match met on the way."""
        k = (family, src)
        if k in self.hosts:
            if not self.hosts[k]:
                return True
            del self.hosts[k]
        host = Prefix(family, src, 32 if family == 4 else 128)
        for _ in range(EXPIRED_RETRY):
            best = max((p for p in self.trie if p.contains(host)), key=lambda p: p.plen, default=None)
            if best is None:
                return False
            if not self.trie[best]:
                return True
            del self.trie[best]
        return False


def _filter_matches(f: Filter, frame: bytes, h: Headers, l3_off: int) -> bool:
    """filter_matches() of policy.h."""
    if f.proto:
        num = FILTER_PROTOS[f.proto]
        if num == IPPROTO_ICMP:
            if h.l4proto not in (IPPROTO_ICMP, IPPROTO_ICMPV6):
                return False
        elif num != h.l4proto:
            return False
    n = len(frame)
    if not f.length[0] <= n <= f.length[1] or not f.ttl[0] <= h.ttl <= f.ttl[1]:
        return False
    ports = h.has_l4 and h.l4proto in (IPPROTO_TCP, IPPROTO_UDP)
    for (lo, hi), port in ((f.sport, h.sport), (f.dport, h.dport)):
        if (lo > 0 or hi < 65535) and (not ports or not lo <= port <= hi):
            return False
    mask, value = f.tcp_flags
    if mask and (h.l4proto != IPPROTO_TCP or not h.has_l4 or h.tcp_flags & mask != value):
        return False
    if not f.payload:
        return True
    base = {"l3": l3_off, "l4": h.l4_off, "payload": h.payload_off}[f.payload_base]
    if not base:
        return False
    off = base + f.payload_off
    if off + len(f.payload) > n:
        return False
    return all(frame[off + i] & m == b & m for i, (b, m) in enumerate(zip(f.payload, f.mask_bytes())))


class Model:
    """The pipeline of one interface. Stateful like the data path: see the module docstring."""

    def __init__(self, setup: Setup):
        if len(setup.global_.filters) > FILTERS_MAX:
            raise ValueError("more filters than the table holds")
        self.setup = setup
        self.protected = {(a.version, a.packed): p for a, p in setup.protected.items()}
        self.allow = _List(setup.allow)
        self.block = _List(setup.block)
        self.bans: set[tuple[int, bytes]] = {(a.version, a.packed) for a in setup.banned}
        # xg_flow_lru / xg_embryo_lru: key → [state, live]
        self.tables: dict[str, dict[FlowKey, list]] = {"flow": {}, "embryo": {}}
        for k, (table, state, live) in setup.flows.items():
            self.tables[table][k] = [state, live]
        # xg_goodsrc_hash: (family, address) → how it proved its address (VF_TCP | VF_UDP), learned on egress
        self.verified: dict[tuple[int, bytes], int] = {}
        # xg_budget_hash of the TCP services: (family, address, port) → SYNs left (no refill: no time)
        self.syn_budget: dict[tuple[int, bytes, int], int] = {}
        self.rates = {(a.version, a.packed, port): r for (a, port), r in setup.budget_rates.items()}
        self.budget_refused = 0  # SYNs past their service's budget (sent to the SYN defence)

    @property
    def known(self) -> set[tuple[int, bytes]]:
        """The keys of xg_goodsrc_hash."""
        return set(self.verified)

    def _learn(self, src: tuple[int, bytes], kind: int) -> None:
        self.verified[src] = self.verified.get(src, 0) | kind

    def _is_verified(self, src: tuple[int, bytes], h: Headers | None) -> bool:
        """kg_lookup()/kg_check(): a TCP verification covers every protocol, a UDP one UDP only."""
        kind = self.verified.get(src, 0)
        return bool(kind & VF_TCP or kind & VF_UDP and h is not None and h.l4proto == IPPROTO_UDP)

    def egress(self, frame: bytes) -> None:
        """ts_egress()/ts_record(): what the tc recorder writes for one leaving frame. Live
        entries stay live (nothing expires in a model), expired ones come back to life when
        refreshed."""
        udp = egress_udp_client(bytes(frame), set(self.protected))
        if udp is not None:
            self._learn(udp, VF_UDP)  # a UDP answer, in peacetime: verified for UDP
            return
        got = egress_flow(bytes(frame), set(self.protected))
        if got is None:
            return
        k, flags = got
        if flags & (TCP_SYN | TCP_RST | TCP_ACK) == TCP_ACK:
            self._learn((k[0], k[1]), VF_TCP)  # established: verified
        flows, embryos = self.tables["flow"], self.tables["embryo"]
        f = flows.get(k)
        if flags & TCP_RST:
            if f is not None and f[0] != FLOW_RST:  # an entry already in RST only keeps its expiry
                flows[k] = [FLOW_RST, True]
            e = embryos.get(k)
            if e is not None and e[1] and e[0] != FLOW_RST:  # only a later expiry is shortened
                embryos[k] = [FLOW_RST, True]
            return
        if flags & TCP_SYN:
            if f is not None:
                flows[k] = [FLOW_EST, True]
            else:
                embryos[k] = [FLOW_SYN, True]
            return
        state = FLOW_FIN if flags & TCP_FIN or (f is not None and f[0] == FLOW_FIN) else FLOW_EST
        flows[k] = [state, True]
        if f is None:
            embryos.pop(k, None)

    def _tcpstate_ok(self, a: Addresses, h: Headers, prot: Protected) -> bool:
        """step_tcpstate(): True when the packet may pass."""
        if not self.setup.tcpstate or not h.has_l4 or h.l4proto != IPPROTO_TCP or is_syn(h):
            return True
        if not prot.open_ports or not prot.tcpstate:
            return True
        k = (a.family, a.src, h.sport, a.dst, h.dport)
        for table in ("flow", "embryo"):
            e = self.tables[table].get(k)
            if e is not None and e[1]:
                return True
        return self.setup.grace

    def _cookie_mode(self, a: Addresses, prot: Protected) -> bool:
        """xg_cookie_mode() and xg_cookie_family() of syncookie.h (IPv6 off: XG_SYNCOOKIE_IPV6 0)."""
        syn = prot.policy.syn
        return syn.mode == "cookie" and syn.on and a.family == 4

    def _syn_budget_admits(self, a: Addresses, h: Headers, verified: bool) -> bool:
        """budget_syn_admit() of budget.h: True when the SYN goes on as before (the budget off,
        a verified source — never charged —, or a SYN left in the service's bucket)."""
        if not self.setup.budget or verified:
            return True
        key = (a.family, a.dst, h.dport)
        if key not in self.syn_budget:  # the entry XDP makes on the service's first SYN: a full burst
            rate = self.rates.get(key) or self.setup.budget_tcp_syns or BUDGET_TCP_SYNS
            self.syn_budget[key] = budget_burst(rate)
        if self.syn_budget[key] >= 1:
            self.syn_budget[key] -= 1
            return True
        self.budget_refused += 1
        return False

    def _synauth(self, a: Addresses, h: Headers, prot: Protected, src) -> Reason | str | None:
        """step_synauth(): the SYN defence of an address whose threshold is on, or `always`.
        Below the threshold (always, in the model) a SYN within its service's budget goes on;
        past it, as over the threshold: a verified source goes on, cookie mode for IPv4 answers
        (ANSWERED), else retransmission authentication drops it (`syn`: no retransmission is
        late enough within a model's life)."""
        syn = prot.policy.syn
        if not is_syn(h) or not syn.on:
            return None
        verified = self._is_verified(src, h)
        if not syn.always and self._syn_budget_admits(a, h, verified):
            return None
        if verified:
            return None
        if self._cookie_mode(a, prot):
            return ANSWERED
        return Reason.SYN

    def verdict(self, frame: bytes) -> ModelVerdict:
        action, reason = self._decide(bytes(frame))
        if action == "tx":  # answered with a SYN cookie; monitored, the step passed it untouched instead
            if self.setup.global_.monitor_mask >> reason & 1:
                return ModelVerdict("pass", Kind.WOULD_DROP, reason)
            return ModelVerdict("tx", Kind.DROP, reason)
        if action == "drop" and reason < REASON_MAX and self.setup.global_.monitor_mask >> reason & 1:
            return ModelVerdict("pass", Kind.WOULD_DROP, reason)
        return ModelVerdict(action, Kind.DROP if action == "drop" else Kind.PASS, reason)

    def _decide(self, frame: bytes) -> tuple[str, Reason]:
        if not self.setup.enabled:
            return "pass", Reason.BYPASS
        a = parse_addresses(frame)
        if a is None:
            return "pass", Reason.BYPASS
        prot = self.protected.get((a.family, a.dst))
        if prot is None:
            return "pass", Reason.BYPASS
        if self.allow.hit(a.family, a.src):
            return "pass", Reason.ALLOWLIST
        if self.block.hit(a.family, a.src):
            return "drop", Reason.BLOCKLIST
        src = (a.family, a.src)
        if src in self.bans:
            return "drop", Reason.BANNED
        h = parse_headers(frame, a)
        if h is None:
            return "drop", Reason.MALFORMED
        r = self._steps(frame, a, h, prot, src)
        if r == ANSWERED:
            return "tx", Reason.SYNCOOKIE
        return ("pass", Reason.CLEAN) if r is None else ("drop", r)

    def _steps(self, frame: bytes, a: Addresses, h: Headers, prot: Protected, src) -> Reason | str | None:
        """policy_steps(): TCP flags, fragments, protocol, port, reflection, feature filters, TCP state,
        the SYN defence with its budget; rate limits never drop in the model."""
        g = self.setup.global_
        if h.tcp_flags & TCP_SYN and h.tcp_flags & (TCP_FIN | TCP_RST):  # step_tcpflags() (0 unless TCP)
            return Reason.TCPFLAGS
        if h.is_frag and g.drop_fragments:
            return Reason.FRAGMENT
        if BLOCK_BITS.get(h.l4proto, "other") in prot.policy.blocked:
            return Reason.PROTOCOL
        tcp_udp = h.has_l4 and h.l4proto in (IPPROTO_TCP, IPPROTO_UDP)
        if prot.open_ports and tcp_udp:
            name = "tcp" if h.l4proto == IPPROTO_TCP else "udp"
            if (name, h.dport) not in prot.open_ports:
                return Reason.PORT
        if g.reflection and h.has_l4 and h.l4proto == IPPROTO_UDP and h.sport in g.reflection_ports:
            return Reason.REFLECTION
        verified = self._is_verified(src, h)
        for f in g.filters:
            if not _filter_matches(f, frame, h, a.l3_off):
                continue
            if f.action == "pass":
                return None  # skips the rate limits and the SYN defence
            if f.action == "mitigate":
                if verified:
                    break  # a verified source passes it, and the filters after it (the first match decides)
                return Reason.MITIGATION
            if f.action == "drop-ban" and f.ban_s and not g.monitor_mask >> Reason.FEATURE & 1 and not verified:
                self.bans.add(src)  # (a monitored reason bans nobody; nor is a verified source banned)
            return Reason.FEATURE
        if not self._tcpstate_ok(a, h, prot):
            # step_syncookie(): in cookie mode an ACK of no recorded connection is checked for a
            # cookie; the model's ACKs are never valid ones (a random one passes the kernel's check
            # with odds of about 2^-22; tests/bpf/test_syncookie.py has the valid ones), and a bad
            # one keeps the TCP state verdict.
            return Reason.TCPSTATE
        return self._synauth(a, h, prot, src)


def limits_for(prot: Protected, proto: str | None, dport: int | None) -> Limits:
    """limits_for(): the per-port override of a TCP/UDP packet with an L4 header, else the
    address's limits (for the targeted rate-limit tests)."""
    if proto in ("tcp", "udp") and dport is not None:
        lim = prot.port_limits.get((proto, dport))
        if lim is not None:
            return lim
    return prot.policy.limits


def budget_burst(rate: int) -> int:
    """budget_take()'s burst (budget.h): a tenth of a second of the rate, at least
    BUDGET_BURST_MIN units, at most the rate."""
    return min(rate, max(rate // BUDGET_BURST_DIV, BUDGET_BURST_MIN))


def is_syn(h: Headers) -> bool:
    return h.has_l4 and h.l4proto == IPPROTO_TCP and h.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN


def verdict(setup: Setup, frame: bytes) -> ModelVerdict:
    """One packet against a fresh model of setup."""
    return Model(setup).verdict(frame)
