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
from collections.abc import Collection, Iterable
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


def desired_entries(flows: Iterable[NatFlow]) -> dict[Tuple5, tuple[Tuple5, int]]:
    """The fast-path table these flows need: packet tuple → (translated tuple, direction)."""
    return {k: (v, d) for f in flows for k, v, d in f.entries()}
