"""The cluster's records in the desired spec: `[cluster]` (this node's membership of a cluster
whose desired state lives in etcd) and `[bgp]` (its BIRD speaker). Value types; the loader
(desired/load.py) fills them from the node's own file."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ClusterSpec:
    """`[cluster]`: this node's membership of a cluster whose desired state lives in etcd."""

    name: str = "xdpguard"  # the key prefix /xdpguard/<name>/
    node: str = "node"  # this node's name, unique in the cluster
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)  # etcd client URLs
    node_ttl_s: int = 3  # the node key's lease: a dead node vanishes from `cluster status` after it
    resync_interval_s: float = 60.0  # full read of the store even without a reconnect
    # the way to the store: TLS (https:// endpoints) with a client certificate; plain http only
    # with insecure = true. Optional user/password auth (the password in its own file)
    ca: str | None = None  # PEM file of the CA that signed etcd's certificate (None: the system's CAs)
    cert: str | None = None  # this node's client certificate (PEM), with its key
    key: str | None = None
    user: str | None = None
    password_file: str | None = None  # the user's password: the file's first line
    insecure: bool = False  # allow http:// endpoints (no TLS): only for a store nobody else can reach
    # what the node's own file lets the store ask for (the store is not trusted with more):
    protect: tuple[str, ...] = ()  # prefixes the store may make this node protect and escalate for
    # (empty: the addresses of [bgp] announce; without those, none)
    backends: tuple[str, ...] = ()  # prefixes the store's forwards may send to (empty: none)
    hook: str | None = None  # the events hook of the store's interfaces (a hook is never taken from the store)
    # every node of the cluster as "NAME=ADDRESS" (this node's own among them): HAProxy shares its
    # stick tables with them (`peers`, on each node's own address and peer_port, TLS with ca/cert/key
    # when given), so per-source limits hold across the nodes. Only from the node's own file: a
    # peer can write any stick-table entry. Empty: the tables are this node's own
    peers: tuple[str, ...] = ()
    peer_port: int = 10470


@dataclass(frozen=True)
class BgpNeighbor:
    address: IPAddress
    asn: int


@dataclass(frozen=True)
class BgpSpec:
    """`[bgp]`: the node's BIRD speaker announcing the protective addresses to its router(s)."""

    local_as: int
    router_id: ipaddress.IPv4Address
    neighbors: tuple[BgpNeighbor, ...]
    announce: tuple[IPAddress, ...] = ()  # empty: every protected address of the cluster
    bfd: bool = True
    bfd_interval_ms: int = 50
    bfd_multiplier: int = 3
    hold_s: int = 3
    min_nodes: int = 1  # never withdraw for ill health when it would leave fewer nodes announcing
    bird_config: str = "/run/xdpguard/cluster/bird.conf"
    bird_socket: str = "/run/bird/bird.ctl"
    liveness_iface: str = "xgvip0"  # the TUN device held by `cluster run`; routes point at it
    # upstream escalation (one elected node): cluster-wide pps to one protected address above
    # which a FlowSpec rule (its fingerprint, traffic-rate 0) / an RTBH route is announced; 0: never
    flowspec_pps: int = 0
    blackhole_pps: int = 0
    escalation_hold_s: int = 30  # below the threshold this long before the route is withdrawn
    blackhole_community: tuple[int, int] = (65535, 666)  # RFC 7999 BLACKHOLE
    # overload: this node receives more than overload_pps (all protected addresses): it prepends
    # its AS overload_prepend times (the router prefers the others, keeps it as a backup)
    overload_pps: int = 0
    overload_prepend: int = 3
    # prefixes the node must have a route to (its clients' side, e.g. 0.0.0.0/0 and ::/0): a node
    # that reaches its backends but cannot answer its clients withdraws
    require_routes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
