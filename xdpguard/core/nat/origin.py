"""`xdpguard origin-rules`: firewall rules for the real servers, so that only we can reach them.

The protective IP hides a real server only while nobody can reach the server directly: like
Cloudflare's origin allowlists, the server should accept its service ports only from the
protector. For every forwarding rule this finds, in the protector's own routing table, the
address its traffic to each backend leaves with (SNAT: the route's preferred source, what
masquerade uses) and, for routed mode (the backend sees the client's address), the MAC address
of the protector's interface towards the backend. The rules accept the service ports from those
and refuse them to everyone else (TCP reset, ICMP port unreachable); other ports are left alone.

The builders are pure (nft_text, iptables_text); origin_rules reads the forwards and routes.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict, dataclass, field

from . import forward
from .. import state
from ..errors import UserError

FORMATS = ("nft", "iptables")
TABLE = "xdpguard_origin"


@dataclass(frozen=True)
class OriginService:
    """What one real server address serves through the protector, and from where it comes."""

    backend: str  # the real server's address
    proto: str  # tcp | udp
    ports: tuple[tuple[int, int], ...]  # inclusive runs
    sources: tuple[str, ...] = ()  # SNAT: the protector's egress addresses towards the backend
    macs: tuple[str, ...] = ()  # routed mode: the protector's MAC addresses towards the backend


@dataclass(frozen=True)
class OriginRules:
    format: str
    text: str
    services: list[OriginService] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _runs(ports: set[int]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for p in sorted(ports):
        if out and p == out[-1][1] + 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return tuple((lo, hi) for lo, hi in out)


def _nft_ports(runs) -> str:
    items = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _nft_set(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def nft_text(services: list[OriginService]) -> str:
    lines = [
        "# xdpguard origin rules: load on the real server(s) with `nft -f FILE`.",
        "# The forwarded service ports accept only what comes through the protector; other ports are untouched.",
        f"table inet {TABLE} {{",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
    ]
    for s in services:
        fam = "ip6" if ":" in s.backend else "ip"
        match = f"{fam} daddr {s.backend} {s.proto} dport {_nft_ports(s.ports)}"
        if s.sources:
            lines.append(f"\t\t{match} {fam} saddr {_nft_set(s.sources)} accept")
        if s.macs:
            lines.append(f"\t\t{match} ether saddr {_nft_set(s.macs)} accept  # routed mode: clients' own addresses")
        lines.append(f"\t\t{match} " + ("reject with tcp reset" if s.proto == "tcp" else "reject"))
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def iptables_text(services: list[OriginService]) -> str:
    lines = [
        "# xdpguard origin rules: run on the real server(s) (iptables for IPv4, ip6tables for IPv6).",
        "# The forwarded service ports accept only what comes through the protector; other ports are untouched.",
    ]
    for s in services:
        cmd = "ip6tables" if ":" in s.backend else "iptables"
        ports = ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in s.ports)
        match = f"-d {s.backend} -p {s.proto} -m multiport --dports {ports}"
        for src in s.sources:
            lines.append(f"{cmd} -A INPUT {match} -s {src} -j ACCEPT")
        for mac in s.macs:
            lines.append(f"{cmd} -A INPUT {match} -m mac --mac-source {mac} -j ACCEPT")
        lines.append(f"{cmd} -A INPUT {match} -j REJECT" + (" --reject-with tcp-reset" if s.proto == "tcp" else ""))
    return "\n".join(lines) + "\n"


def egress_of(addr) -> tuple[str | None, str | None]:
    """(preferred source address, MAC of the outgoing interface) of this namespace's route to addr."""
    from pyroute2 import IPRoute  # a third-party import kept lazy (startup cost), as reconcile does

    fam = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=str(addr), family=fam)
        except Exception:
            return None, None
        if not routes:
            return None, None
        r = routes[0]
        src, oif = r.get_attr("RTA_PREFSRC"), r.get_attr("RTA_OIF")
        mac = None
        if oif:
            links = ipr.get_links(oif)
            mac = links[0].get_attr("IFLA_ADDRESS") if links else None
    return src, mac


def services(rules, egress=egress_of) -> list[OriginService]:
    """Group the forwarding rules by (backend address, proto): the ports and where they come from."""
    acc: dict[tuple[str, str], dict] = {}
    for r in rules:
        for b in r.backends:
            host = ipaddress.ip_address(b.host)
            key = (str(host), r.proto)
            e = acc.setdefault(key, {"ports": set(), "sources": set(), "macs": set()})
            if b.port is not None:
                e["ports"].add(b.port)
            else:
                e["ports"].update(range(r.port_lo, r.port_hi + 1))
            src, mac = egress(host)
            if r.preserve_client_ip:
                if mac:
                    e["macs"].add(mac)
            elif src:
                e["sources"].add(src)
    out = []
    for (host, proto), e in sorted(
        acc.items(), key=lambda kv: (ipaddress.ip_address(kv[0][0]).version, ipaddress.ip_address(kv[0][0]), kv[0][1])
    ):
        out.append(OriginService(host, proto, _runs(e["ports"]), tuple(sorted(e["sources"])), tuple(sorted(e["macs"]))))
    return out


def origin_rules(fmt: str = "nft", ifname: str | None = None) -> OriginRules:
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}': use {' or '.join(FORMATS)}")
    state.require_root()
    rules = _rules_of(ifname)
    if not rules:
        raise UserError("no forwarding rules: nothing is forwarded to a real server (see `xdpguard forward add`)")
    svc = services(rules)
    missing = [s.backend for s in svc if not s.sources and not s.macs]
    if missing:
        raise UserError(f"no route from this host to the real server {missing[0]}: cannot tell its egress address")
    return OriginRules(fmt, nft_text(svc) if fmt == "nft" else iptables_text(svc), svc)


def _rules_of(ifname: str | None):
    """The stored forwarding rules of the protected interfaces of this namespace (or of one)."""
    names = state.protected_ifaces()
    if ifname is not None and ifname not in names:
        raise UserError(f"{ifname} is not protected by xdpguard in this network namespace")
    out = []
    for name in names:
        if ifname is not None and name != ifname:
            continue
        iface = state.resolve_iface(name)
        out += [sr.rule for sr in forward.stored_rules(name, state.read_state(iface))]
    return out
