"""The forwarding fast path's value types: a NATed flow as conntrack knows it, and the two
translations XDP applies to it (bpf/include/steps/fastfwd.h).

A flow that nftables DNATed (and masqueraded) has an original tuple, client → protective IP,
and a reply tuple, backend → the source the NAT chose (the masquerade address and port; the client
itself in routed mode). The fast path needs exactly those two tuples: each direction's packet is
rewritten into the other direction's reversed tuple. Pure: no kernel, no I/O.
"""

from __future__ import annotations

import ipaddress
import socket
import zlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

FWD_IN, FWD_OUT = 1, 2  # the data path's XG_FWD_IN / XG_FWD_OUT (kernel.abi mirrors them)

# Conntrack bits and states the flow selection reads (linux/netfilter/nf_conntrack_common.h,
# nf_conntrack_tcp.h).
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_DST_NAT = 1 << 5
TCP_CONNTRACK_ESTABLISHED = 3

Tuple5 = tuple[int, ipaddress.IPv4Address, int, ipaddress.IPv4Address, int]  # proto, saddr, sport, daddr, dport


@dataclass(frozen=True, order=True)
class NatFlow:
    """One DNATed flow: the client's tuple and the tuple the backend answers on."""

    proto: int  # socket.IPPROTO_TCP / IPPROTO_UDP
    client: ipaddress.IPv4Address
    client_port: int
    protected: ipaddress.IPv4Address
    protected_port: int
    backend: ipaddress.IPv4Address
    backend_port: int
    nat_addr: ipaddress.IPv4Address  # the reply's destination: masquerade address (or the client)
    nat_port: int

    def entries(self) -> list[tuple[Tuple5, Tuple5, int]]:
        """(packet tuple, what it becomes, direction) for both directions."""
        orig = (self.proto, self.client, self.client_port, self.protected, self.protected_port)
        reply = (self.proto, self.backend, self.backend_port, self.nat_addr, self.nat_port)
        return [(orig, _reverse(reply), FWD_IN), (reply, _reverse(orig), FWD_OUT)]


def _reverse(t: Tuple5) -> Tuple5:
    proto, s, sp, d, dp = t
    return (proto, d, dp, s, sp)


@dataclass(frozen=True)
class CtRecord:
    """What the fast path reads of a conntrack entry (fastfwd.read_conntrack fills it)."""

    proto: int
    orig: tuple[str, int, str, int]  # src, sport, dst, dport
    reply: tuple[str, int, str, int]
    status: int
    tcp_state: int | None  # TCP only
    timeout: int | None = None  # seconds conntrack still keeps the entry without a packet


def select_flows(
    records: Iterable[CtRecord],
    protected: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address],
    down: Collection[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = (),
) -> list[NatFlow]:
    """The flows the fast path takes: IPv4 TCP or UDP, DNATed from a protected address, TCP assured
    and ESTABLISHED, UDP answered (a reply seen); none to a backend (address, port) in `down`
    (health: a flow to a dead backend goes back to the slow path, where nftables' own
    established flows are)."""
    prot = {a for a in protected if a.version == 4}
    out = []
    for r in records:
        if r.proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
            continue
        # UDP: answered is enough (conntrack assures a UDP flow only 2 s after its first reply)
        two_way = IPS_ASSURED if r.proto == socket.IPPROTO_TCP else IPS_SEEN_REPLY
        if r.status & (two_way | IPS_DST_NAT) != two_way | IPS_DST_NAT:
            continue
        if r.proto == socket.IPPROTO_TCP and r.tcp_state != TCP_CONNTRACK_ESTABLISHED:
            continue
        try:
            src, sport, dst, dport = r.orig
            rsrc, rsport, rdst, rdport = r.reply
            client, p = ipaddress.ip_address(src), ipaddress.ip_address(dst)
            backend, nat = ipaddress.ip_address(rsrc), ipaddress.ip_address(rdst)
        except (TypeError, ValueError):
            continue
        if p not in prot or any(a.version != 4 for a in (client, backend, nat)):
            continue
        if (backend, rsport) in down:
            continue
        out.append(NatFlow(r.proto, client, sport, p, dport, backend, rsport, nat, rdport))
    return sorted(out)


def desired_entries(flows: Iterable[NatFlow], rule_ids=None) -> dict[Tuple5, tuple[Tuple5, int, int]]:
    """The fast-path table these flows need: packet tuple → (translated tuple, direction, the
    flow's rule id from `rule_ids`, flow → rule_id; 0 without one)."""
    ids = rule_ids or {}
    return {k: (v, d, ids.get(f, 0)) for f in flows for k, v, d in f.entries()}


# ---- conntrack's timeouts of fast flows (conntrack sees none of their packets) ----

ONE_SEC_NS = 1_000_000_000


def ct_timeouts(records: Iterable[CtRecord]) -> dict[Tuple5, int]:
    """The original tuple (as NatFlow.entries spells the client's) → the seconds conntrack still
    keeps the entry, for every record that says it."""
    out = {}
    for r in records:
        if r.timeout is None:
            continue
        try:
            src, sport, dst, dport = r.orig
            out[(r.proto, ipaddress.ip_address(src), sport, ipaddress.ip_address(dst), dport)] = int(r.timeout)
        except (TypeError, ValueError):
            continue
    return out


def refresh_due(
    flows: Iterable[NatFlow],
    timeouts: Mapping[Tuple5, int],
    seen_ns: Mapping[Tuple5, int],
    now_ns: int,
    full_s: Mapping[int, int],
) -> list[tuple[NatFlow, int]]:
    """(flow, seconds) for each fast flow whose conntrack timeout is behind its traffic: the
    timeout conntrack would hold had it seen the flow's last fast packet (`full_s[proto]`, the
    namespace's established/stream timeout, minus that packet's age, from the data path's
    seen_ns of either direction), when that is ahead of what conntrack holds by at least
    max(1 s, an eighth of the full timeout) — an idle flow is never refreshed: it expires as if
    conntrack had seen all of it."""
    out = []
    for f in flows:
        full = full_s.get(f.proto)
        orig = f.entries()[0][0]
        left = timeouts.get(orig)
        if not full or left is None:
            continue
        last = max((seen_ns.get(k, 0) for k, _, _ in f.entries()), default=0)
        if not last:
            continue
        want = full - max(0, now_ns - last) // ONE_SEC_NS
        if want - left >= max(1, full // 8):
            out.append((f, int(want)))
    return out


# ---- per-rule counters of fast packets (xg_fwd_rule; nftables' rule counters never see them) ----

PROTO_NUM = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


def rule_id(key: str) -> int:
    """A forwarding rule's id in the data path: crc32 of its key (`tcp/198.18.0.2/80`), never 0
    (0: no rule). Stable across restarts and rule edits; two keys of one interface sharing an id
    (about 1 in 10^6 for 100 rules) would share a counter."""
    return zlib.crc32(key.encode()) or 1


def flow_rule_ids(flows: Iterable[NatFlow], rules: Iterable[tuple[str, object, int, int, str]]) -> dict[NatFlow, int]:
    """Each flow's rule id: the rule (proto name, protected address, first port, last port, key)
    whose protected address and port range the flow was DNATed from; flows of no rule get none."""
    table = [(PROTO_NUM.get(p), a, lo, hi, rule_id(k)) for p, a, lo, hi, k in rules]
    out = {}
    for f in flows:
        for proto, a, lo, hi, rid in table:
            if proto == f.proto and a == f.protected and lo <= f.protected_port <= hi:
                out[f] = rid
                break
    return out
