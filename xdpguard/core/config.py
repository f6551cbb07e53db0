"""Desired state: the typed model behind `xdpguard.toml`, its loader, its writer and its diff.

One frozen dataclass tree says what the operator asked for: interfaces and their modes,
protected addresses, lists, every cleansing policy, forwarding rules with their health probes,
attack thresholds and hooks, and the daemon's settings. The same tree is

- read from a TOML file (`load`, every problem reported as FILE:LINE: FIELD: message),
- written back as TOML (`to_toml`, by tomli-w; `load(to_toml(d)) == d` is a tested property),
- read from the kernel by `live.export` (what is realised), and
- compared by `diff` (what `apply` would change).

Dynamic state (bans, list entries with a TTL, health, counters) is not part of it and is never
touched by an apply. Values are normalised on the way in (bursts filled in, filter payloads
masked, port runs merged, lists as sets), so two trees that realise the same kernel state are
equal.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path

import tomli_w

from . import abi, events, forwarding, geo, levels, nat, policy, vocab
from . import watermark as wmark
from .errors import UserError
from .forwarding import ForwardRule
from .l7 import schema as l7schema
from .l7 import spec as l7spec
from .prefixes import Prefix, parse_address, parse_prefix, read_prefix_set

DEFAULT_PATH = Path("/etc/xdpguard/xdpguard.toml")
MODES = ("auto", "native", "skb")
ALL_DROP_MASK = sum(1 << r for r in abi.Reason if r.is_drop)
DROP_REASONS = tuple(r.label for r in abi.Reason if r.is_drop)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ConfigError(UserError):
    """One or more problems in a config file; each line names file, line and field."""

    def __init__(self, problems: list[str]):
        super().__init__(problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + "; ".join(problems))
        self.problems = problems


# ---- the model ----


PortRun = tuple[str, int, int]  # (proto, lo, hi), merged, sorted


@dataclass(frozen=True)
class AddressSpec:
    """One protected address and what applies to it."""

    address: IPAddress
    blocked: frozenset[str] = frozenset()  # of policy.PROTOCOLS
    limits: policy.Limits = policy.Limits()  # bursts filled in (Limits.effective)
    syn: policy.SynPolicy = policy.SynPolicy()
    open_ports: tuple[PortRun, ...] = ()  # opened by the operator (forwards open their own)
    port_limits: tuple[tuple[str, int, int, policy.Limits], ...] = ()  # merged runs of equal limits
    level: str | None = None  # levels.LEVELS: its preset filled what the table did not give
    connlimit: nat.ConnLimits | None = None  # connection limits of its forwarded services (connlimit.py)
    http: tuple[l7spec.HttpService, ...] = ()  # HTTP services HAProxy serves on it (l7/), by (port, name)
    geo: geo.GeoSpec | None = None  # region (geo) blocking (geo.py); None: no rule
    watermark: tuple[wmark.WatermarkSpec, ...] = ()  # watermarked UDP ports (watermark.py), by port

    @property
    def policy(self) -> policy.AddressPolicy:
        return policy.AddressPolicy(self.blocked, self.limits, self.syn)


@dataclass(frozen=True)
class ForwardSpec:
    rule: ForwardRule
    udp_probe: bytes | None = None  # None: the default probe payload


@dataclass(frozen=True)
class InterfaceSpec:
    name: str
    mode: str = "auto"
    addresses: tuple[AddressSpec, ...] = ()  # sorted by (version, address)
    global_: policy.GlobalPolicy = policy.GlobalPolicy()
    block: frozenset[Prefix] = frozenset()  # permanent entries (TTL entries are dynamic)
    allow: frozenset[Prefix] = frozenset()
    forwards: tuple[ForwardSpec, ...] = ()  # sorted by rule key
    events: events.EventConfig = events.EventConfig()

    @property
    def protected(self) -> list[IPAddress]:
        return [a.address for a in self.addresses]

    def address(self, addr: IPAddress) -> AddressSpec | None:
        return next((a for a in self.addresses if a.address == addr), None)


@dataclass(frozen=True)
class DaemonSpec:
    metrics: str | None = None  # HOST:PORT
    health_interval_s: float = 2.0
    health_timeout_s: float = 1.0
    rise: int = 2
    fall: int = 3
    sweep_interval_s: float = 10.0
    detect: bool = True
    detect_interval_s: float = 1.0
    # automatic mitigation (mitigation.py; its Settings take these)
    mitigation: bool = True
    mitigation_pps: float = 5000.0
    mitigation_factor: float = 4.0
    mitigation_max_share: float = 0.01
    mitigation_hold_s: float = 5.0
    mitigation_interval_s: float = 0.5  # detection rounds are at most this long while mitigation is on


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


@dataclass(frozen=True)
class Desired:
    interfaces: tuple[InterfaceSpec, ...] = ()  # sorted by name
    daemon: DaemonSpec = DaemonSpec()
    # node-local settings read by `xdpguard cluster run`; `apply` neither realises nor diffs them
    cluster: ClusterSpec | None = None
    bgp: BgpSpec | None = None

    def interface(self, name: str) -> InterfaceSpec | None:
        return next((i for i in self.interfaces if i.name == name), None)

    def with_interface(self, spec: InterfaceSpec) -> Desired:
        rest = [i for i in self.interfaces if i.name != spec.name]
        return replace(self, interfaces=tuple(sorted([*rest, spec], key=lambda i: i.name)))

    def without_interface(self, name: str) -> Desired:
        return replace(self, interfaces=tuple(i for i in self.interfaces if i.name != name))


# ---- normalisation (shared by the loader and live.export) ----


def addr_order(a: IPAddress) -> tuple[int, bytes]:
    return (a.version, a.packed)


def norm_filter(f: policy.Filter) -> policy.Filter:
    """Payload bytes masked and the mask explicit: the form the kernel gives back."""
    if not f.payload:  # base and offset mean nothing without payload bytes
        return replace(f, payload_mask=b"", payload_base="payload", payload_off=0)
    m = f.mask_bytes()
    return replace(f, payload=bytes(b & k for b, k in zip(f.payload, m)), payload_mask=m)


def norm_port_runs(items) -> tuple[PortRun, ...]:
    """(proto, lo, hi) triples → merged, sorted runs."""
    by: dict[str, set[int]] = {}
    for proto, lo, hi in items:
        by.setdefault(proto, set()).update(range(lo, hi + 1))
    return tuple((p, lo, hi) for p in sorted(by) for lo, hi in vocab.runs(by[p]))


def norm_port_limits(items) -> tuple[tuple[str, int, int, policy.Limits], ...]:
    """(proto, lo, hi, Limits) → per-port, later entries win, then merged runs of equal limits."""
    per: dict[tuple[str, int], policy.Limits] = {}
    for proto, lo, hi, lim in items:
        for p in range(lo, hi + 1):
            per[(proto, p)] = lim.effective()
    out: list[list] = []
    for (proto, p), lim in sorted(per.items(), key=lambda kv: kv[0]):
        if out and out[-1][0] == proto and out[-1][2] == p - 1 and out[-1][3] == lim:
            out[-1][2] = p
        else:
            out.append([proto, p, p, lim])
    return tuple(tuple(r) for r in out)


def norm_interface(spec: InterfaceSpec) -> InterfaceSpec:
    return replace(
        spec,
        addresses=tuple(sorted(spec.addresses, key=lambda a: addr_order(a.address))),
        global_=replace(spec.global_, filters=tuple(norm_filter(f) for f in spec.global_.filters)),
        forwards=tuple(sorted(spec.forwards, key=lambda f: f.rule.key)),
    )


# ---- locating keys in the TOML text (tomllib keeps no positions) ----

_HEADER = re.compile(r"^\s*(\[\[|\[)\s*([^\[\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r'^\s*("[^"]*"|[A-Za-z0-9_-]+)\s*=')


def _locate(text: str) -> dict[tuple, int]:
    """Path (('interface', 0, 'address', 1, 'limits', 'src_pps')) → the line that defines it."""
    lines: dict[tuple, int] = {}
    arrays: dict[tuple, int] = {}
    cur: tuple = ()
    for no, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            parts = [p.strip().strip('"') for p in m.group(2).split(".")]
            path: list = []
            for i, part in enumerate(parts):
                path.append(part)
                if i < len(parts) - 1 and tuple(path) in arrays:
                    path.append(arrays[tuple(path)] - 1)
            if m.group(1) == "[[":
                key = tuple(path)
                arrays[key] = arrays.get(key, 0) + 1
                path.append(arrays[key] - 1)
            cur = tuple(path)
            lines.setdefault(cur, no)
            continue
        m = _KEY.match(line)
        if m:
            lines.setdefault(cur + (m.group(1).strip('"'),), no)
    return lines


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


# ---- the loader ----


class _Loader:
    def __init__(self, source: str, text: str, read_files: bool = True):
        self.source = source
        self.read_files = read_files  # False: `<list>_files` are named, not read (store.save's check)
        self.lines = _locate(text)
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def where(self, path: tuple) -> str:
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return f"{self.source}:{line}: {_dotted(path)}"
        return f"{self.source}: {_dotted(path)}"

    def fail(self, path: tuple, msg: str) -> None:
        self.problems.append(f"{self.where(path)}: {msg}")

    def warn(self, path: tuple, msg: str) -> None:
        self.warnings.append(f"{self.where(path)}: {msg}")

    # -- typed field access; each returns the default (and records a problem) on bad input --

    def table(self, d: dict, path: tuple, known: set[str]) -> dict:
        if not isinstance(d, dict):
            self.fail(path, f"must be a table, got {type(d).__name__}")
            return {}
        for k in d:
            if k not in known:
                self.fail(path + (k,), f"unknown key (known: {', '.join(sorted(known))})")
        return d

    def get(self, d: dict, key: str, path: tuple, kind, default):
        if key not in d:
            return default
        v = d[key]
        ok = {
            "str": isinstance(v, str),
            "bool": isinstance(v, bool),
            "int": isinstance(v, int) and not isinstance(v, bool),
            "num": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
            "list": isinstance(v, list),
            "table": isinstance(v, dict),
            "intstr": isinstance(v, (int, str)) and not isinstance(v, bool),
        }[kind]
        if not ok:
            names = {"str": "a string", "bool": "true or false", "int": "a whole number", "num": "a finite number",
                     "list": "an array", "table": "a table", "intstr": "a number or a string"}
            self.fail(path + (key,), f"must be {names[kind]}, got {v!r}")
            return default
        return v

    def strs(self, d: dict, key: str, path: tuple) -> list[str]:
        v = d.get(key, [])
        if isinstance(v, str):
            v = [s for s in v.split(",") if s.strip()]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            self.fail(path + (key,), f"must be an array of strings, got {v!r}")
            return []
        return [s.strip() for s in v]

    def guard(self, path: tuple, fn, default=None):
        """Run a typed constructor; its UserError/ValueError becomes a located problem."""
        try:
            return fn()
        except ConfigError as exc:
            self.problems.extend(exc.problems)
        except UserError as exc:
            self.fail(path, exc.message)
        except ValueError as exc:
            self.fail(path, str(exc))
        return default


_DAEMON_KEYS = {"metrics", "health_interval", "health_timeout", "rise", "fall", "sweep_interval", "detect",
                "detect_interval", "mitigation", "mitigation_pps", "mitigation_factor", "mitigation_max_share",
                "mitigation_hold", "mitigation_interval"}
_IFACE_KEYS = {"name", "mode", "protect", "monitor", "fragments", "reflection", "reflection_ports", "block",
               "block_files", "allow", "allow_files", "address", "filter", "forward", "events"}
_ADDR_KEYS = {"address", "block_protocols", "open_ports", "limits", "syn", "port_limit", "level", "connlimit", "http",
              "geo", "watermark"}
#: `connlimit = { ... }` keys → nat.ConnLimits fields
CONNLIMIT_KEYS = {"new_per_source": "new_per_source", "concurrent_per_source": "concurrent_per_source",
                  "new_total": "new_total", "conntrack_budget": "conntrack_budget", "udp_timeout": "udp_timeout_s",
                  "ban": "ban_s"}
_LIMIT_KEYS = {"src_pps", "src_burst", "src_bps", "src_burst_bytes", "dst_pps", "dst_burst", "syn_src_pps",
               "syn_src_burst", "ban", "unknown_share"}
_SYN_KEYS = {"threshold", "auth_window", "keep", "mode", "always"}
_FILTER_KEYS = {"action", "proto", "sport", "dport", "length", "ttl", "tcp_flags", "payload", "mask", "base",
                "offset", "ban"}
_FORWARD_KEYS = {"proto", "ports", "protected", "to", "weights", "backup", "persist", "preserve_client_ip",
                 "udp_probe"}
_EVENT_KEYS = {"pps", "bps", "drop_pps", "drop_bps", "reasons", "hold", "hook", "address"}


def _daemon(ld: _Loader, d: dict) -> DaemonSpec:
    p = ("daemon",)
    d = ld.table(d, p, _DAEMON_KEYS)
    base = DaemonSpec()

    def pos(key, default, hi):
        v = ld.get(d, key, p, "num", default)
        if not 0 < v <= hi:
            ld.fail(p + (key,), f"must be above 0 and at most {hi:g}, got {v!r}")
            return default
        return float(v)

    def count(key, default):
        v = ld.get(d, key, p, "int", default)
        if not 1 <= v <= 100:
            ld.fail(p + (key,), f"must be 1 to 100, got {v!r}")
            return default
        return v

    metrics = ld.get(d, "metrics", p, "str", None)
    if metrics is not None:  # what `run --metrics` takes (the host is resolved when the daemon binds)
        metrics = ld.guard(p + ("metrics",), lambda: vocab.parse_listen(metrics, "metrics", resolve=False) and metrics)
    share = ld.get(d, "mitigation_max_share", p, "num", base.mitigation_max_share)
    if not 0 < share < 1:
        ld.fail(p + ("mitigation_max_share",), f"must be above 0 and below 1 (a share: 0.01 is 1%), got {share!r}")
        share = base.mitigation_max_share
    factor = ld.get(d, "mitigation_factor", p, "num", base.mitigation_factor)
    if not 1 <= factor <= 1000:
        ld.fail(p + ("mitigation_factor",), f"must be 1 to 1000, got {factor!r}")
        factor = base.mitigation_factor
    mpps = base.mitigation_pps
    if "mitigation_pps" in d:
        mpps = ld.guard(p + ("mitigation_pps",), lambda: vocab.parse_rate(d["mitigation_pps"], "mitigation_pps"), mpps)
        if not mpps > 0:
            ld.fail(p + ("mitigation_pps",), "must be above 0")
            mpps = base.mitigation_pps
    return DaemonSpec(metrics, pos("health_interval", base.health_interval_s, 3600),
                      pos("health_timeout", base.health_timeout_s, 60), count("rise", base.rise),
                      count("fall", base.fall), pos("sweep_interval", base.sweep_interval_s, 3600),
                      ld.get(d, "detect", p, "bool", True), pos("detect_interval", base.detect_interval_s, 60),
                      ld.get(d, "mitigation", p, "bool", True), float(mpps), float(factor), float(share),
                      pos("mitigation_hold", base.mitigation_hold_s, 3600),
                      pos("mitigation_interval", base.mitigation_interval_s, 60))


_CLUSTER_KEYS = {"name", "node", "endpoints", "node_ttl", "resync_interval", "ca", "cert", "key", "user",
                 "password_file", "insecure", "protect", "backends", "hook"}
_BGP_KEYS = {"local_as", "router_id", "neighbors", "announce", "bfd", "bfd_interval", "bfd_multiplier", "hold",
             "min_nodes", "bird_config", "bird_socket", "liveness_interface", "flowspec_pps", "blackhole_pps",
             "escalation_hold", "blackhole_community", "overload_pps", "overload_prepend", "require_routes"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _int_in(ld: _Loader, d: dict, key: str, path: tuple, default: int, lo: int, hi: int) -> int:
    v = ld.get(d, key, path, "int", default)
    if not lo <= v <= hi:
        ld.fail(path + (key,), f"must be {lo} to {hi}, got {v!r}")
        return default
    return v


def _cluster(ld: _Loader, d: dict) -> ClusterSpec:
    p = ("cluster",)
    d = ld.table(d, p, _CLUSTER_KEYS)
    base = ClusterSpec()
    out = {}
    for key in ("name", "node"):
        v = ld.get(d, key, p, "str", getattr(base, key))
        if not _NAME_RE.match(v):
            ld.fail(p + (key,), f"must be 1-63 letters, digits, '_', '.' or '-', got {v!r}")
            v = getattr(base, key)
        out[key] = v
    eps = ld.strs(d, "endpoints", p) if "endpoints" in d else list(base.endpoints)
    good = []
    for i, e in enumerate(eps):
        if not re.match(r"^https?://[^/\s]+(:\d+)?/?$", e):
            ld.fail(p + ("endpoints", i), f"must be an http(s)://HOST:PORT URL, got {e!r}")
        else:
            good.append(e.rstrip("/"))
    if not good:
        ld.fail(p + ("endpoints",), "needs at least one etcd URL")
        good = list(base.endpoints)
    ttl = _int_in(ld, d, "node_ttl", p, base.node_ttl_s, 2, 3600)
    resync = ld.get(d, "resync_interval", p, "num", base.resync_interval_s)
    if not 1 <= resync <= 86400:
        ld.fail(p + ("resync_interval",), f"must be 1 to 86400 seconds, got {resync!r}")
        resync = base.resync_interval_s
    files = {}
    for key in ("ca", "cert", "key", "password_file"):
        v = ld.get(d, key, p, "str", None)
        if v is not None and (not v.startswith("/") or any(ord(c) < 32 for c in v)):
            ld.fail(p + (key,), f"must be an absolute file path, got {v!r}")
            v = None
        files[key] = v
    if (files["cert"] is None) != (files["key"] is None):
        ld.fail(p + ("cert" if files["cert"] is None else "key",), "cert and key go together (the client certificate)")
    user = ld.get(d, "user", p, "str", None)
    if user is not None and not _NAME_RE.match(user):
        ld.fail(p + ("user",), f"must be 1-63 letters, digits, '_', '.' or '-', got {user!r}")
    if (user is None) != (files["password_file"] is None):
        ld.fail(p + ("user" if user is None else "password_file",), "user and password_file go together")
    insecure = ld.get(d, "insecure", p, "bool", False)
    if all(e.startswith("http://") for e in good) and (files["cert"] or files["ca"]):
        ld.fail(p + ("endpoints",), "ca/cert/key need https:// endpoints")
    nets = {}
    for key in ("protect", "backends"):
        nets[key] = []
        for i, t in enumerate(ld.strs(d, key, p)):
            n = ld.guard(p + (key, i), lambda t=t: ipaddress.ip_network(t, strict=True))
            if n is not None:
                nets[key].append(str(n))
    hook = ld.get(d, "hook", p, "str", None) or None
    if hook is not None:
        hook = ld.guard(p + ("hook",), lambda: vocab.parse_hook(hook, "hook", require_program=False), None)
    return ClusterSpec(out["name"], out["node"], tuple(good), ttl, float(resync), files["ca"], files["cert"],
                       files["key"], user, files["password_file"], insecure, tuple(nets["protect"]),
                       tuple(nets["backends"]), hook)


def _ip(ld: _Loader, v, path: tuple, version: int | None = None):
    try:
        a = parse_address(v) if isinstance(v, str) else None
    except UserError as exc:
        if "scoped" in exc.message:
            ld.fail(path, f"must be an address without a zone (%...), got {v!r}")
            return None
        a = None
    if a is None or (version is not None and a.version != version):
        ld.fail(path, f"must be an IPv{version or '4 or IPv6'} address, got {v!r}")
        return None
    return a


def _bgp(ld: _Loader, d: dict) -> BgpSpec | None:
    p = ("bgp",)
    d = ld.table(d, p, _BGP_KEYS)
    for key in ("local_as", "router_id", "neighbors"):
        if key not in d:
            ld.fail(p + (key,), "is required")
    local_as = _int_in(ld, d, "local_as", p, 1, 1, 4294967295)
    rid = _ip(ld, ld.get(d, "router_id", p, "str", "0.0.0.1"), p + ("router_id",), 4)
    neighbors = []
    for i, n in enumerate(ld.get(d, "neighbors", p, "list", [])):
        np_ = p + ("neighbors", i)
        n = ld.table(n, np_, {"address", "as"})
        if "address" not in n or "as" not in n:
            ld.fail(np_, "needs address and as")
            continue
        a = _ip(ld, n["address"], np_ + ("address",))
        asn = _int_in(ld, n, "as", np_, 1, 1, 4294967295)
        if a is not None:
            neighbors.append(BgpNeighbor(a, asn))
    if "neighbors" in d and not neighbors:
        ld.fail(p + ("neighbors",), "needs at least one neighbor")
    announce = []
    for i, v in enumerate(ld.strs(d, "announce", p)):
        a = _ip(ld, v, p + ("announce", i))
        if a is not None and a not in announce:
            announce.append(a)
    files = {}
    for key, default in (("bird_config", BgpSpec.bird_config), ("bird_socket", BgpSpec.bird_socket)):
        v = ld.get(d, key, p, "str", default)
        if not v.startswith("/") or "\n" in v or '"' in v:
            ld.fail(p + (key,), f"must be an absolute path, got {v!r}")
            v = default
        files[key] = v
    live = ld.get(d, "liveness_interface", p, "str", BgpSpec.liveness_iface)
    if not _IFNAME_RE.match(live):
        ld.fail(p + ("liveness_interface",), f"must be an interface name (1-15 characters), got {live!r}")
        live = BgpSpec.liveness_iface
    routes = []
    for i, v in enumerate(ld.strs(d, "require_routes", p)):
        try:
            if "%" in v:
                raise ValueError("scoped")
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            ld.fail(p + ("require_routes", i), f"must be a prefix (CIDR), got {v!r}")
            continue
        if net not in routes:
            routes.append(net)
    community = BgpSpec.blackhole_community
    text = ld.get(d, "blackhole_community", p, "str", "65535:666")
    m = re.fullmatch(r"(\d{1,5}):(\d{1,5})", text)
    if m and int(m[1]) <= 65535 and int(m[2]) <= 65535:
        community = (int(m[1]), int(m[2]))
    else:
        ld.fail(p + ("blackhole_community",), f"must be ASN:VALUE with both parts 0 to 65535, got {text!r}")
    return BgpSpec(local_as, rid or ipaddress.IPv4Address("0.0.0.1"), tuple(neighbors),
                   tuple(sorted(announce, key=addr_order)), ld.get(d, "bfd", p, "bool", True),
                   _int_in(ld, d, "bfd_interval", p, BgpSpec.bfd_interval_ms, 10, 10000),
                   _int_in(ld, d, "bfd_multiplier", p, BgpSpec.bfd_multiplier, 2, 255),
                   _int_in(ld, d, "hold", p, BgpSpec.hold_s, 3, 65535),
                   _int_in(ld, d, "min_nodes", p, BgpSpec.min_nodes, 0, 1000),
                   files["bird_config"], files["bird_socket"], live,
                   _int_in(ld, d, "flowspec_pps", p, 0, 0, 10**12),
                   _int_in(ld, d, "blackhole_pps", p, 0, 0, 10**12),
                   _int_in(ld, d, "escalation_hold", p, BgpSpec.escalation_hold_s, 1, 86400), community,
                   _int_in(ld, d, "overload_pps", p, 0, 0, 10**12),
                   _int_in(ld, d, "overload_prepend", p, BgpSpec.overload_prepend, 1, 16), tuple(routes))


def _limits(ld: _Loader, d: dict, path: tuple, known=_LIMIT_KEYS) -> policy.Limits:
    d = ld.table(d, path, known)
    problems_before = len(ld.problems)

    def n(key, limit):
        if key not in d:
            return 0
        return ld.guard(path + (key,), lambda: vocab.parse_count(d[key], key, limit), 0)

    lim = ld.guard(path, lambda: policy.Limits(
        src_pps=n("src_pps", policy.MAX_PPS), src_burst_pkts=n("src_burst", policy.MAX_BURST),
        src_bps=n("src_bps", policy.MAX_BPS), src_burst_bytes=n("src_burst_bytes", policy.MAX_BURST),
        dst_pps=n("dst_pps", policy.MAX_PPS), dst_burst_pkts=n("dst_burst", policy.MAX_BURST),
        syn_src_pps=n("syn_src_pps", policy.MAX_PPS), syn_src_burst=n("syn_src_burst", policy.MAX_BURST),
        ban_s=n("ban", policy.MAX_BAN_S), unknown_share_pct=n("unknown_share", 99)), policy.Limits())
    if lim.ban_s and not (lim.src_pps or lim.src_bps or lim.syn_src_pps) and len(ld.problems) == problems_before:
        ld.fail(path + ("ban",), "a ban needs a per-source rate (src_pps, src_bps or syn_src_pps)")
    return lim.effective()


def _syn(ld: _Loader, d: dict, path: tuple) -> policy.SynPolicy:
    d = ld.table(d, path, _SYN_KEYS)
    base = policy.SynPolicy()
    thr = ld.guard(path + ("threshold",), lambda: vocab.parse_count(d.get("threshold", 0), "threshold",
                                                                  policy.MAX_PPS), 0)
    lo, hi = base.auth_min_ms, base.auth_max_ms
    if "auth_window" in d:
        lo, hi = ld.guard(path + ("auth_window",), lambda: vocab.parse_range("auth_window", d["auth_window"], (lo, hi)),
                          (lo, hi))
    keep = ld.get(d, "keep", path, "int", base.auth_keep_s)
    mode = ld.get(d, "mode", path, "str", base.mode)
    if mode not in policy.SYN_MODES:
        ld.fail(path + ("mode",), f"must be {' or '.join(map(repr, policy.SYN_MODES))}, got {mode!r}")
        mode = base.mode
    always = ld.get(d, "always", path, "bool", base.always)
    return ld.guard(path, lambda: policy.SynPolicy(thr, lo, hi, keep, mode, always), base)


def _ports(ld: _Loader, items: list, path: tuple) -> list[PortRun]:
    out = []
    for i, s in enumerate(items):
        r = ld.guard(path + (i,), lambda s=s: vocab.parse_port_spec(s))
        if r is not None:
            out.append(r)
    return out


def _address(ld: _Loader, d: dict, path: tuple, protected: list[IPAddress]) -> AddressSpec | None:
    d = ld.table(d, path, _ADDR_KEYS)
    text = ld.get(d, "address", path, "str", None)
    if text is None:
        ld.fail(path + ("address",), "missing: the protected address this table is about")
        return None
    addr = ld.guard(path + ("address",), lambda: parse_address(text))
    if addr is None:
        return None
    if addr not in protected:
        ld.fail(path + ("address",), f"{addr} is not in this interface's protect list")
        return None
    blocked = ld.strs(d, "block_protocols", path)
    for i, b in enumerate(blocked):
        if b not in policy.PROTOCOLS:
            ld.fail(path + ("block_protocols", i), f"unknown protocol '{b}': use {', '.join(policy.PROTOCOLS)}")
    limits = _limits(ld, ld.get(d, "limits", path, "table", {}), path + ("limits",))
    syn = _syn(ld, ld.get(d, "syn", path, "table", {}), path + ("syn",))
    opened = _ports(ld, ld.strs(d, "open_ports", path), path + ("open_ports",))
    plims = []
    for i, pl in enumerate(ld.get(d, "port_limit", path, "list", [])):
        pp = path + ("port_limit", i)
        if not isinstance(pl, dict) or "ports" not in pl:
            ld.fail(pp, "needs ports = 'PROTO:PORT[-PORT]' and at least one rate")
            continue
        spec = ld.guard(pp + ("ports",), lambda pl=pl: vocab.parse_port_spec(pl["ports"]))
        lim = _limits(ld, {k: v for k, v in pl.items() if k != "ports"}, pp)
        if spec is not None:
            if not lim.active():
                ld.fail(pp, "needs a rate: src_pps, src_bps, dst_pps or syn_src_pps")
            plims.append((*spec, lim))
    level = ld.get(d, "level", path, "str", None)
    if level is not None and level not in levels.LEVELS:
        ld.fail(path + ("level",), f"must be one of {', '.join(levels.LEVELS)}, got {level!r}")
        level = None
    if level is not None:  # the preset fills what the table does not give (each of these as a whole)
        lp = levels.address_policy(level, policy.AddressPolicy(frozenset(), limits, syn))
        limits = limits if "limits" in d else lp.limits.effective()
        syn = syn if "syn" in d else lp.syn
        blocked = blocked if "block_protocols" in d else sorted(lp.blocked)
    return AddressSpec(addr, frozenset(b for b in blocked if b in policy.PROTOCOLS), limits, syn,
                       norm_port_runs(opened), norm_port_limits(plims), level,
                       _connlimit(ld, d, path) if "connlimit" in d else None, _http(ld, d, path, addr),
                       geo=_geo(ld, d, path) if "geo" in d else None, watermark=_watermark(ld, d, path))


def norm_http(services) -> tuple[l7spec.HttpService, ...]:
    return tuple(sorted(services, key=lambda s: (s.port, s.name)))


def _http(ld: _Loader, d: dict, path: tuple, addr: IPAddress) -> tuple[l7spec.HttpService, ...]:
    """`[[interface.address.http]]`: HTTP services on this address (l7/schema.py)."""
    out: list[l7spec.HttpService] = []
    for i, hd in enumerate(ld.get(d, "http", path, "list", [])):
        pp = path + ("http", i)
        before = len(ld.problems)
        if isinstance(hd, dict):
            ld.table(hd, pp, l7schema.KEYS)  # an unknown key is named on its own line
        if len(ld.problems) > before:
            continue
        svc = ld.guard(pp, lambda hd=hd: l7schema.from_data(hd, addr))
        if svc is None:
            continue
        clash = next((o for o in out if o.name == svc.name or o.port == svc.port), None)
        if clash is not None:
            ld.fail(pp, f"service {svc.name} on port {svc.port} clashes with {clash.name} on port {clash.port}")
            continue
        out.append(svc)
    return norm_http(out)


def _watermark(ld: _Loader, d: dict, path: tuple) -> tuple[wmark.WatermarkSpec, ...]:
    """`[[interface.address.watermark]]`: watermarked UDP ports (watermark.py); key files, not keys."""
    out: list[wmark.WatermarkSpec] = []
    for i, wd in enumerate(ld.get(d, "watermark", path, "list", [])):
        pp = path + ("watermark", i)
        before = len(ld.problems)
        if isinstance(wd, dict):
            ld.table(wd, pp, wmark.KEYS)
        else:
            ld.fail(pp, "must be a table: port, key_file, and optionally step, window, skew, overlap")
        if len(ld.problems) > before:
            continue
        w = ld.guard(pp, lambda wd=wd: wmark.from_data(wd))
        if w is None:
            continue
        if any(o.port == w.port for o in out):
            ld.fail(pp + ("port",), f"udp/{w.port} is watermarked twice")
            continue
        out.append(w)
    return wmark.normal(out)


def _geo(ld: _Loader, d: dict, path: tuple) -> geo.GeoSpec | None:
    """`geo = { block = ["CN", "RU"] }` or `{ only = ["DE"] }`, optional `mode = "drop" | "cc"`.
    The codes are checked for shape here; against the database when the rule is realised."""
    pp = path + ("geo",)
    t = ld.table(ld.get(d, "geo", path, "table", {}), pp, {"block", "only", "mode"})
    if "block" in t and "only" in t:
        ld.fail(pp, "give block or only, not both")
        return None
    key = "only" if "only" in t else "block"
    codes = ld.strs(t, key, pp)
    if key == "only" and not codes:
        ld.fail(pp + ("only",), "needs at least one country (only = [] would drop every source)")
        return None
    ok = []
    for i, c in enumerate(codes):
        if not (isinstance(c, str) and len(c) == 2 and c.isascii() and c.isalnum()):
            ld.fail(pp + (key, i), f"'{c}' is not a country code: give two letters (ISO 3166-1), e.g. DE")
        else:
            ok.append(c.upper())
    mode = ld.get(t, "mode", pp, "str", "drop")
    if mode not in geo.MODES:
        ld.fail(pp + ("mode",), f"must be one of {', '.join(geo.MODES)}, got {mode!r}")
        mode = "drop"
    return geo.normal(geo.GeoSpec(frozenset(ok), key == "only", mode))


def _connlimit(ld: _Loader, d: dict, path: tuple) -> nat.ConnLimits | None:
    """`connlimit = { new_per_source = 20, ban = 60, ... }`: at least one limit; ban alone is none."""
    pp = path + ("connlimit",)
    t = ld.table(ld.get(d, "connlimit", path, "table", {}), pp, set(CONNLIMIT_KEYS))
    vals = {}
    for k, f in CONNLIMIT_KEYS.items():
        v = ld.get(t, k, pp, "int", None)
        if v is not None:
            vals[f] = v
    lim = ld.guard(pp, lambda: nat.ConnLimits(**vals))
    if lim is not None and not lim.active():
        ld.fail(pp, "needs a limit: " + ", ".join(k for k in CONNLIMIT_KEYS if k != "ban"))
        return None
    return lim


def _level_port_limits(spec: AddressSpec, raw: dict, forwards) -> AddressSpec:
    """A level's budget on the address's forwarded UDP ports, unless the table gives port_limit."""
    p = levels.PRESETS.get(spec.level)
    if p is None or p.udp_port is None or "port_limit" in raw:
        return spec
    ports = levels.udp_ports([f.rule for f in forwards], spec.address)
    return replace(spec, port_limits=norm_port_limits([("udp", lo, hi, p.udp_port) for lo, hi in ports]))


def build_filter(*, action: str, proto=None, sport=None, dport=None, length=None, ttl=None, tcp_flags=None,
                 payload=None, mask=None, base: str = "payload", offset: int = 0, ban_s: int = 0,
                 names: dict[str, str] | None = None) -> policy.Filter:
    """A filter from its text fields (the CLI's options and the config's keys); `names` maps a
    field to what the caller calls it in messages."""
    nm = {"sport": "sport", "dport": "dport", "length": "length", "ttl": "ttl", "payload": "payload",
          "mask": "mask", "ban": "ban", "tcp_flags": "tcp_flags", **(names or {})}
    if action not in policy.ACTIONS:  # "mitigate" is the daemon's own (mitigation.py)
        raise UserError(f"invalid filter action '{action}': use drop, pass or drop-ban")
    if ban_s and action != "drop-ban":
        raise UserError(f"{nm['ban']} only goes with action drop-ban")
    if mask and not payload:
        raise UserError(f"{nm['mask']} needs {nm['payload']}")
    flt = policy.Filter(
        action=action, proto=proto.lower() if proto else None,
        sport=vocab.parse_range(nm["sport"], sport, (0, 65535)), dport=vocab.parse_range(nm["dport"], dport, (0, 65535)),
        length=vocab.parse_range(nm["length"], length, (0, 65535)), ttl=vocab.parse_range(nm["ttl"], ttl, (0, 255)),
        tcp_flags=policy.parse_tcp_flags(tcp_flags) if tcp_flags else (0, 0),
        payload=vocab.parse_hex(nm["payload"], payload), payload_mask=vocab.parse_hex(nm["mask"], mask),
        payload_base=base, payload_off=offset, ban_s=ban_s)
    if flt.tcp_flags[0] and flt.proto not in (None, "tcp"):
        raise UserError(f"{nm['tcp_flags']} only match TCP; drop the protocol or use tcp")
    return flt


def _filter(ld: _Loader, d: dict, path: tuple) -> policy.Filter | None:
    d = ld.table(d, path, _FILTER_KEYS)
    if "action" not in d:
        ld.fail(path + ("action",), f"missing: one of {', '.join(policy.ACTIONS)}")
        return None
    for k in ("offset", "ban"):
        ld.get(d, k, path, "int", 0)
    for k in ("action", "proto", "tcp_flags", "payload", "mask", "base"):
        ld.get(d, k, path, "str", None)
    for k in ("sport", "dport", "length", "ttl"):
        ld.get(d, k, path, "intstr", None)
    try:
        f = build_filter(action=str(d["action"]), proto=d.get("proto"), sport=d.get("sport"), dport=d.get("dport"),
                         length=d.get("length"), ttl=d.get("ttl"), tcp_flags=d.get("tcp_flags"),
                         payload=d.get("payload"), mask=d.get("mask"), base=str(d.get("base", "payload")),
                         offset=d.get("offset", 0) if isinstance(d.get("offset", 0), int) else 0,
                         ban_s=d.get("ban", 0) if isinstance(d.get("ban", 0), int) else 0)
    except (UserError, TypeError, AttributeError) as exc:
        ld.fail(path, getattr(exc, "message", str(exc)))
        return None
    return norm_filter(f)


def _forward(ld: _Loader, d: dict, path: tuple, protected: list[IPAddress]) -> ForwardSpec | None:
    d = ld.table(d, path, _FORWARD_KEYS)
    proto = ld.get(d, "proto", path, "str", None)
    ports = ld.get(d, "ports", path, "intstr", None)
    to = ld.strs(d, "to", path)
    if proto is None or ports is None or not to:
        ld.fail(path, "needs proto, ports and to")
        return None
    if proto not in forwarding.PROTOCOLS:
        ld.fail(path + ("proto",), f"unknown protocol '{proto}': use tcp or udp")
        return None
    w = d.get("weights")
    weights = ",".join(str(x) for x in w) if isinstance(w, list) else (None if w is None else str(w))
    backup = ",".join(ld.strs(d, "backup", path)) or None
    persist = ld.get(d, "persist", path, "int", 0)
    routed = ld.get(d, "preserve_client_ip", path, "bool", False)
    probe_hex = ld.get(d, "udp_probe", path, "str", None)
    probe = None
    if probe_hex is not None:
        if proto != "udp":
            ld.fail(path + ("udp_probe",), "applies to udp rules only")
        probe = ld.guard(path + ("udp_probe",), lambda: bytes.fromhex(probe_hex))
        if probe is not None and not 1 <= len(probe) <= 1400:
            ld.fail(path + ("udp_probe",), "needs 1 to 1400 bytes")
    prot_text = ld.get(d, "protected", path, "str", None)

    def make() -> ForwardRule:
        backends = forwarding.parse_backends(",".join(to), weights=weights, backups=backup)
        if prot_text is not None:
            addr = parse_address(prot_text, "protected address")
            if addr not in protected:
                raise ValueError(f"protected address {addr} is not in this interface's protect list")
        else:
            fam = backends[0].host.version
            same = [a for a in protected if a.version == fam]
            if len(same) != 1:
                raise ValueError(f"give protected = ADDR: the interface protects {len(same)} IPv{fam} addresses")
            addr = same[0]
        return forwarding.make_rule(proto, addr, str(ports), ",".join(to), weights=weights, backups=backup,
                                    persist_s=persist, preserve_client_ip=routed)

    rule = ld.guard(path, make)
    return None if rule is None else ForwardSpec(rule, probe)


def _thresholds(ld: _Loader, d: dict, path: tuple, base: events.Thresholds) -> events.Thresholds:
    def rate(key, default):
        if key not in d:
            return default
        return ld.guard(path + (key,), lambda: vocab.parse_rate(d[key], key), default)

    reasons = {}
    rd = ld.get(d, "reasons", path, "table", {})
    for r, v in rd.items():
        rp = path + ("reasons", r)
        if r not in DROP_REASONS:
            ld.fail(rp, f"unknown drop reason (use {', '.join(DROP_REASONS)})")
            continue
        pps, _, bps = str(v).partition("/")
        reasons[r] = (ld.guard(rp, lambda: vocab.parse_rate(pps, r), 0.0),
                      ld.guard(rp, lambda: vocab.parse_rate(bps or "0", r), 0.0))
    return events.Thresholds(rate("pps", base.pps), rate("bps", base.bps), rate("drop_pps", base.drop_pps),
                             rate("drop_bps", base.drop_bps), reasons if "reasons" in d else dict(base.reasons))


def _events(ld: _Loader, d: dict, path: tuple, protected: list[IPAddress]) -> events.EventConfig:
    d = ld.table(d, path, _EVENT_KEYS)
    default = _thresholds(ld, d, path, events.DEFAULT_THRESHOLDS)
    addrs = {}
    for i, a in enumerate(ld.get(d, "address", path, "list", [])):
        ap = path + ("address", i)
        if not isinstance(a, dict) or "address" not in a:
            ld.fail(ap, "needs address = ADDR")
            continue
        ld.table(a, ap, {"address", "pps", "bps", "drop_pps", "drop_bps", "reasons"})
        addr = ld.guard(ap + ("address",), lambda a=a: parse_address(str(a["address"])))
        if addr is not None and addr not in protected:
            ld.fail(ap + ("address",), f"{addr} is not in this interface's protect list")
        if addr is not None:
            addrs[str(addr)] = _thresholds(ld, a, ap, default)
    hold = ld.get(d, "hold", path, "num", events.DEFAULT_HOLD_S)
    if not 0 <= hold <= 86400:
        ld.fail(path + ("hold",), "must be 0 to 86400 seconds")
        hold = events.DEFAULT_HOLD_S
    hook = ld.get(d, "hook", path, "str", None) or None
    if hook is not None:  # checked now, not when an attack starts: a command that does not split is
        # an error; a program missing now is a warning (the desired-state store is read with this
        # loader too, and a program removed later must not make every verb fail)
        hook = ld.guard(path + ("hook",), lambda: vocab.parse_hook(hook, "hook", require_program=False), None)
        try:
            vocab.parse_hook(hook, "hook")
        except UserError as exc:
            ld.warn(path + ("hook",), f"{exc.message}; events are logged, the hook will not run")
    return events.EventConfig(default, addrs, float(hold), hook)


def _prefixes(ld: _Loader, d: dict, key: str, path: tuple) -> set[Prefix]:
    out: set[Prefix] = set()
    for i, text in enumerate(ld.strs(d, key, path)):
        p = ld.guard(path + (key, i), lambda t=text: parse_prefix(t).prefix)
        if p is not None:
            out.add(p)
    for i, f in enumerate(ld.strs(d, f"{key}_files", path)):
        if not ld.read_files:
            continue
        pf = ld.guard(path + (f"{key}_files", i), lambda f=f: read_prefix_set(f))
        if pf is not None:
            out.update(pf)
    return out


def _interface(ld: _Loader, d: dict, path: tuple) -> InterfaceSpec | None:
    d = ld.table(d, path, _IFACE_KEYS)
    name = ld.get(d, "name", path, "str", None)
    if not name or len(name) > 15 or "/" in name or any(c.isspace() for c in name):
        ld.fail(path + ("name",), f"needs a valid interface name, got {name!r}")
        return None
    mode = ld.get(d, "mode", path, "str", "auto")
    if mode not in MODES:
        ld.fail(path + ("mode",), f"must be one of {', '.join(MODES)}, got {mode!r}")
    protected: list[IPAddress] = []
    for i, t in enumerate(ld.strs(d, "protect", path)):
        a = ld.guard(path + ("protect", i), lambda t=t: parse_address(t, "protected address"))
        if a is not None and a not in protected:
            protected.append(a)
    if not protected:
        ld.fail(path + ("protect",), "needs at least one protected address")
    if len(protected) > abi.PROTECTED_MAX:
        ld.fail(path + ("protect",), f"at most {abi.PROTECTED_MAX} addresses")
    addrs: dict[IPAddress, AddressSpec] = {a: AddressSpec(a) for a in protected}
    seen: set[IPAddress] = set()
    for i, ad in enumerate(ld.get(d, "address", path, "list", [])):
        spec = _address(ld, ad, path + ("address", i), protected)
        if spec is None:
            continue
        if spec.address in seen:
            ld.fail(path + ("address", i, "address"), f"{spec.address} has a table already")
        seen.add(spec.address)
        addrs[spec.address] = spec
    monitor = ld.strs(d, "monitor", path)
    mask = 0
    for i, r in enumerate(monitor):
        if r == "all":
            mask |= ALL_DROP_MASK
        elif r in DROP_REASONS:
            mask |= 1 << abi.Reason[r.upper()]
        else:
            ld.fail(path + ("monitor", i), f"unknown drop reason '{r}' (use all or {', '.join(DROP_REASONS)})")
    frag = ld.get(d, "fragments", path, "str", None)  # None: from the addresses' levels (below)
    if frag is not None and frag not in ("pass", "drop"):
        ld.fail(path + ("fragments",), f"must be pass or drop, got {frag!r}")
    refl_ports = ld.get(d, "reflection_ports", path, "list", list(policy.DEFAULT_REFLECTION_PORTS))
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in refl_ports):
        ld.fail(path + ("reflection_ports",), "must be an array of port numbers")
        refl_ports = list(policy.DEFAULT_REFLECTION_PORTS)
    filters = []
    for i, fd in enumerate(ld.get(d, "filter", path, "list", [])):
        f = _filter(ld, fd, path + ("filter", i))
        if f is not None:
            filters.append(f)
    glob = ld.guard(path, lambda: policy.GlobalPolicy(frag == "drop", ld.get(d, "reflection", path, "bool", True),
                                                      frozenset(refl_ports), tuple(filters), mask),
                    policy.GlobalPolicy())
    block = _prefixes(ld, d, "block", path)
    allow = _prefixes(ld, d, "allow", path)
    both = block & allow
    if both:
        ld.warn(path + ("allow",), f"{len(both)} prefix(es) are in both allow and block (allow wins), "
                                   f"e.g. {sorted(both)[0]}")
    forwards: list[ForwardSpec] = []
    for i, fd in enumerate(ld.get(d, "forward", path, "list", [])):
        fs = _forward(ld, fd, path + ("forward", i), protected)
        if fs is None:
            continue
        try:
            forwarding.check_overlap([f.rule for f in forwards], fs.rule)
            forwarding.check_backend_not_protected(fs.rule, protected)
        except ValueError as exc:
            ld.fail(path + ("forward", i), str(exc))
            continue
        if any(f.rule == fs.rule for f in forwards):
            ld.fail(path + ("forward", i), f"rule {fs.rule.key} is given twice")
            continue
        forwards.append(fs)
    for a in addrs.values():
        for svc in a.http:
            for j, fs in enumerate(forwards):
                r = fs.rule
                if r.protected == a.address and r.proto == "tcp" and r.port_lo <= svc.port <= r.port_hi:
                    ld.fail(path + ("forward", j), f"tcp {svc.port} of {a.address} is the HTTP service {svc.name} "
                                                   "(HAProxy serves it): forward another port")
    raw_addr = {}
    for ad in ld.get(d, "address", path, "list", []):
        if isinstance(ad, dict) and isinstance(ad.get("address"), str):
            try:
                raw_addr[parse_address(ad["address"])] = ad
            except UserError:
                pass
    for a, spec in list(addrs.items()):
        if spec.level is not None:
            addrs[a] = _level_port_limits(spec, raw_addr.get(a, {}), forwards)
    if frag is None and levels.fragments_dropped(s.level for s in addrs.values()):
        glob = replace(glob, drop_fragments=True)  # the levels' fragment policy (fragments not given)
    ev = _events(ld, ld.get(d, "events", path, "table", {}), path + ("events",), protected)
    return norm_interface(InterfaceSpec(name, mode if mode in MODES else "auto", tuple(addrs.values()), glob,
                                        frozenset(block), frozenset(allow), tuple(forwards), ev))


MAX_DEPTH = 12  # the schema nests 7 deep (interface.address.port_limit); anything deeper is wrong


def _check_values(ld: _Loader, v, path: tuple) -> None:
    """The boundary every value of a config crosses: keys and strings are text (no control
    character: a line break or a quote must not reach a file we write), nesting is bounded."""
    if len(path) > MAX_DEPTH:
        ld.fail(path, f"nested too deeply (more than {MAX_DEPTH} levels)")
        return
    if isinstance(v, str):
        bad = vocab.control_char(v)
        if bad is not None:
            ld.fail(path, f"contains a control character ({bad}): {v[:60]!r}")
    elif isinstance(v, dict):
        for k, x in v.items():
            bad = vocab.control_char(k)
            if bad is not None:
                ld.fail(path, f"a key contains a control character ({bad}): {k[:60]!r}")
                continue
            _check_values(ld, x, path + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _check_values(ld, x, path + (i,))


def loads(text: str, source: str = "<config>", read_files: bool = True) -> tuple[Desired, list[str]]:
    """Parse and validate a config text. Returns (desired, warnings); raises ConfigError with
    every problem found, each as 'SOURCE:LINE: field: message'. With read_files=False the list
    files (`block_files`, `allow_files`) are not read: those lists come back empty."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError([f"{source}: not valid TOML: nested too deeply"]) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    ld = _Loader(source, text, read_files)
    _check_values(ld, data, ())
    if ld.problems:  # nothing below reads text that is not what a value can be
        raise ConfigError(ld.problems)
    ld.table(data, (), {"daemon", "interface", "cluster", "bgp"})
    daemon = _daemon(ld, ld.get(data, "daemon", (), "table", {}))
    cluster = _cluster(ld, ld.get(data, "cluster", (), "table", {})) if "cluster" in data else None
    bgp = _bgp(ld, ld.get(data, "bgp", (), "table", {})) if "bgp" in data else None
    indexed: list[tuple[int, InterfaceSpec]] = []  # (index in the file, spec)
    for i, d in enumerate(ld.get(data, "interface", (), "list", [])):
        spec = _interface(ld, d, ("interface", i))
        if spec is None:
            continue
        if any(s.name == spec.name for _, s in indexed):
            ld.fail(("interface", i, "name"), f"interface {spec.name} is given twice")
            continue
        indexed.append((i, spec))
    ifaces = [s for _, s in indexed]
    owner: dict[IPAddress, str] = {}
    for i, s in indexed:
        for a in s.protected:
            if a in owner:
                ld.fail(("interface", i, "protect"), f"{a} is protected on {owner[a]} already")
            owner[a] = s.name
    all_protected = list(owner)
    for i, s in indexed:
        for j, f in enumerate(s.forwards):
            try:
                forwarding.check_backend_not_protected(f.rule, all_protected)
            except ValueError as exc:
                ld.fail(("interface", i, "forward", j), str(exc))
    ld.guard(("interface",), lambda: l7spec.check_services(http_services(ifaces)))  # one HAProxy per namespace
    if ld.problems:
        raise ConfigError(ld.problems)
    return Desired(tuple(sorted(ifaces, key=lambda s: s.name)), daemon, cluster, bgp), ld.warnings


def http_services(ifaces) -> list[l7spec.HttpService]:
    """Every HTTP service of these interfaces (what the namespace's HAProxy serves)."""
    return [svc for s in ifaces for a in s.addresses for svc in a.http]


def read_regular(p: Path, what: str) -> bytes:
    """The bytes of a regular file. Anything else is refused without blocking: a FIFO with no
    writer would hang the command for ever, /dev/zero would never end."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # opening a FIFO does not wait
    except OSError as exc:
        raise UserError(f"cannot read {what} {p}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UserError(f"cannot read {what} {p}: it is a directory")
        if not stat.S_ISREG(mode):
            raise UserError(f"cannot read {what} {p}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise UserError(f"cannot read {what} {p}: {exc.strerror}") from None
    finally:
        os.close(fd)


def load(path: str | Path) -> tuple[Desired, list[str]]:
    p = Path(path)
    raw = read_regular(p, "config")
    if b"\0" in raw:
        raise ConfigError([f"{p}: not a text file (NUL byte)"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{p}:{line}: not UTF-8 text"]) from None
    return loads(text, str(p))


# ---- the writer ----


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _limits_toml(lim: policy.Limits) -> dict[str, str]:
    e = lim.effective()
    out = {}
    for key, rate, burst_key, burst in (("src_pps", e.src_pps, "src_burst", e.src_burst_pkts),
                                        ("src_bps", e.src_bps, "src_burst_bytes", e.src_burst_bytes),
                                        ("dst_pps", e.dst_pps, "dst_burst", e.dst_burst_pkts),
                                        ("syn_src_pps", e.syn_src_pps, "syn_src_burst", e.syn_src_burst)):
        if rate:
            out[key] = str(rate)
            if burst != rate:
                out[burst_key] = str(burst)
    if e.ban_s:
        out["ban"] = str(e.ban_s)
    if e.unknown_share_pct:
        out["unknown_share"] = str(e.unknown_share_pct)
    return out


def _connlimit_items(c: nat.ConnLimits) -> dict[str, str]:
    """The config keys of `c` that are set (ban always: it has a default, not an off value)."""
    return {k: str(getattr(c, f)) for k, f in CONNLIMIT_KEYS.items() if getattr(c, f) or k == "ban"}


def _fmt_connlimit(c: nat.ConnLimits | None) -> str:
    return "none" if c is None else " ".join(f"{k}={v}" for k, v in _connlimit_items(c).items())


def _inline(d: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }"


def _fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _thresholds_toml(t: events.Thresholds, always_reasons: bool = False) -> list[str]:
    out = [f"{k} = {_fmt_num(getattr(t, k))}" for k in ("pps", "bps", "drop_pps", "drop_bps")]
    if t.reasons or always_reasons:
        out.append("reasons = " + (_inline({r: _q(f"{_fmt_num(p)}/{_fmt_num(b)}") for r, (p, b) in sorted(t.reasons.items())})
                                   if t.reasons else "{}"))
    return out


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def _plain(v):
    """A field's value as TOML can hold it: containers as arrays, the rest as itself or text."""
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list, frozenset, set)):
        return [_plain(x) for x in v]
    return str(v)


def _table_of(obj, keys: dict[str, str] | None = None) -> dict:
    """A flat dataclass as a TOML table, GENERICALLY: every field that differs from its default,
    under its name without a unit suffix (`node_ttl_s` → `node_ttl`) unless `keys` names it. A
    field added to the dataclass (and to its loader) is written without touching this writer."""
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        if v is None or v == default:
            continue
        out[(keys or {}).get(f.name, toml_key(f.name))] = _plain(v)
    return out


def toml_key(field_name: str) -> str:
    """The config key of a settings field: its name without the unit suffix (_s, _ms)."""
    for suffix in ("_ms", "_s"):
        if field_name.endswith(suffix):
            return field_name[: -len(suffix)]
    return field_name


def _limits_data(lim: policy.Limits) -> dict[str, int]:
    return {k: int(v) for k, v in _limits_toml(lim).items()}


def _thresholds_data(t: events.Thresholds, always_reasons: bool = False) -> dict:
    out: dict = {k: _num(getattr(t, k)) for k in ("pps", "bps", "drop_pps", "drop_bps")}
    if t.reasons or always_reasons:
        out["reasons"] = {r: f"{_fmt_num(p)}/{_fmt_num(b)}" for r, (p, b) in sorted(t.reasons.items())}
    return out


def _address_data(a: AddressSpec) -> dict | None:
    body: dict = {}
    if a.level is not None:
        body["level"] = a.level
    if a.blocked or a.level is not None:  # given, even empty: the level's preset does not fill it
        body["block_protocols"] = [p for p in policy.PROTOCOLS if p in a.blocked]
    if a.open_ports:
        body["open_ports"] = [vocab.format_port_spec(*r) for r in a.open_ports]
    lt = _limits_data(a.limits)
    if lt or a.level is not None:  # an empty table is given: the level's preset does not fill it
        body["limits"] = lt
    if a.syn != policy.SynPolicy() or a.level is not None:
        body["syn"] = {"threshold": a.syn.threshold_pps, "auth_window": f"{a.syn.auth_min_ms}-{a.syn.auth_max_ms}",
                       "keep": a.syn.auth_keep_s, "mode": a.syn.mode, "always": a.syn.always}
    if a.connlimit is not None:
        body["connlimit"] = {k: int(v) for k, v in _connlimit_items(a.connlimit).items()}
    if a.geo is not None:
        body["geo"] = a.geo.to_data()
    if a.watermark:
        body["watermark"] = [w.to_data() for w in a.watermark]
    if a.port_limits or a.level is not None:
        body["port_limit"] = [{"ports": vocab.format_port_spec(proto, lo, hi), **_limits_data(lim)}
                              for proto, lo, hi, lim in a.port_limits]
    if a.http:
        body["http"] = [l7schema.to_data(svc) for svc in a.http]
    if not body:
        return None
    return {"address": str(a.address), **body}


def _filter_data(f: policy.Filter) -> dict:
    out: dict = {"action": f.action}
    if f.proto:
        out["proto"] = f.proto
    for key, (lo, hi), full in (("sport", f.sport, (0, 65535)), ("dport", f.dport, (0, 65535)),
                                ("length", f.length, (0, 65535)), ("ttl", f.ttl, (0, 255))):
        if (lo, hi) != full:
            out[key] = vocab.format_range(lo, hi)
    if f.tcp_flags[0]:
        out["tcp_flags"] = policy.format_tcp_flags(*f.tcp_flags)
    if f.payload:
        out.update(payload=f.payload.hex(), mask=f.mask_bytes().hex(), base=f.payload_base, offset=f.payload_off)
    if f.action == "drop-ban":
        out["ban"] = f.ban_s
    return out


def _forward_data(fs: ForwardSpec) -> dict:
    r = fs.rule
    prim, back = r.primaries, r.backups
    out: dict = {"proto": r.proto, "ports": str(r.ports), "protected": str(r.protected),
                 "to": [b.endpoint for b in prim]}
    if any(b.weight != 1 for b in prim):
        out["weights"] = [b.weight for b in prim]
    if back:
        out["backup"] = [b.endpoint for b in back]
    if r.persist_s:
        out["persist"] = r.persist_s
    if r.preserve_client_ip:
        out["preserve_client_ip"] = True
    if fs.udp_probe is not None:
        out["udp_probe"] = fs.udp_probe.hex()
    return out


def _interface_data(s: InterfaceSpec, list_files: dict[tuple[str, str], str]) -> dict:
    g = s.global_
    out: dict = {"name": s.name, "mode": s.mode, "protect": [str(a) for a in s.protected]}
    if g.monitor_mask & ALL_DROP_MASK == ALL_DROP_MASK:
        out["monitor"] = ["all"]
    elif g.monitor_mask:
        out["monitor"] = [r.label for r in abi.Reason if r.is_drop and g.monitor_mask & (1 << r)]
    out["fragments"] = "drop" if g.drop_fragments else "pass"
    out["reflection"] = g.reflection
    out["reflection_ports"] = sorted(g.reflection_ports)
    for key, prefixes in (("block", s.block), ("allow", s.allow)):
        if (s.name, key) in list_files:
            out[f"{key}_files"] = [list_files[(s.name, key)]]
        elif prefixes:
            out[key] = [str(p) for p in sorted(prefixes)]
    addrs = [t for t in (_address_data(a) for a in s.addresses) if t is not None]
    if addrs:
        out["address"] = addrs
    if g.filters:
        out["filter"] = [_filter_data(f) for f in g.filters]
    if s.forwards:
        out["forward"] = [_forward_data(fs) for fs in s.forwards]
    ev = s.events
    out["events"] = {**_thresholds_data(ev.default), "hold": _num(ev.hold_s)}
    if ev.hook:
        out["events"]["hook"] = ev.hook
    if ev.addresses:
        out["events"]["address"] = [{"address": a, **_thresholds_data(t, True)} for a, t in sorted(ev.addresses.items())]
    return out


_BGP_KEYS_OF = {"liveness_iface": "liveness_interface"}  # BgpSpec fields whose key is not toml_key()


def _bgp_data(b: BgpSpec) -> dict:
    out = {"local_as": b.local_as, "router_id": str(b.router_id),
           "neighbors": [{"address": str(n.address), "as": n.asn} for n in b.neighbors]}
    rest = _table_of(b, _BGP_KEYS_OF)
    rest.pop("local_as", None), rest.pop("router_id", None), rest.pop("neighbors", None)
    if "blackhole_community" in rest:
        rest["blackhole_community"] = "%d:%d" % b.blackhole_community
    return {**out, **rest}


def to_data(d: Desired, list_files: dict[tuple[str, str], str] | None = None) -> dict:
    """`d` as the plain tree (tables, arrays, strings, numbers) its config file holds."""
    list_files = list_files or {}
    ds = d.daemon
    daemon: dict = {"metrics": ds.metrics} if ds.metrics else {}
    daemon.update(health_interval=ds.health_interval_s, health_timeout=ds.health_timeout_s, rise=ds.rise,
                  fall=ds.fall, sweep_interval=ds.sweep_interval_s, detect=ds.detect,
                  detect_interval=ds.detect_interval_s, mitigation=ds.mitigation,
                  mitigation_pps=_num(ds.mitigation_pps), mitigation_factor=ds.mitigation_factor,
                  mitigation_max_share=ds.mitigation_max_share, mitigation_hold=ds.mitigation_hold_s,
                  mitigation_interval=ds.mitigation_interval_s)
    out: dict = {"daemon": daemon}
    if d.cluster is not None:
        out["cluster"] = _table_of(d.cluster)
    if d.bgp is not None:
        out["bgp"] = _bgp_data(d.bgp)
    if d.interfaces:
        out["interface"] = [_interface_data(s, list_files) for s in d.interfaces]
    return out


def to_toml(d: Desired, list_files: dict[tuple[str, str], str] | None = None) -> str:
    """The config text that loads back to exactly `d` (written by tomli-w: every string is
    escaped as TOML says). With list_files ((interface, 'block' or 'allow') → path) those lists
    are referenced as `<list>_files` instead of written inline (the store keeps big lists in
    prefix files: a million entries load in a second, not in thirty)."""
    return "# xdpguard desired state (xdpguard export)\n\n" + tomli_w.dumps(to_data(d, list_files))


# ---- the diff ----


@dataclass(frozen=True)
class Change:
    """One difference: `path` names the object ('veth0 block', 'veth0 198.18.0.1 limits')."""

    path: str
    op: str  # add | remove | change
    old: str | None = None
    new: str | None = None
    count: int = 1  # for list changes: how many entries

    def text(self) -> str:
        sign = {"add": "+", "remove": "-", "change": "~"}[self.op]
        if self.op == "change":
            return f"{sign} {self.path}: {self.old} -> {self.new}"
        return f"{sign} {self.path}: {self.new if self.op == 'add' else self.old}"


def _order(x) -> tuple:
    """A sort key for a set's members: addresses and prefixes by family first (IPv4Address and
    IPv6Address do not compare with each other), the rest as they are."""
    if isinstance(x, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return (x.version, x.packed)
    return (0, x)


def _set_changes(path: str, old: frozenset, new: frozenset, show: int = 5) -> list[Change]:
    out = []
    for op, items in (("add", new - old), ("remove", old - new)):
        if not items:
            continue
        first = sorted(items, key=_order)[:show]
        text = ", ".join(map(str, first)) + (f" (+{len(items) - show} more)" if len(items) > show else "")
        out.append(Change(path, op, text if op == "remove" else None, text if op == "add" else None, len(items)))
    return out


def _fmt_limits(lim: policy.Limits) -> str:
    return _inline(_limits_toml(lim)) if lim.active() else "none"


def _fmt_forward(f: ForwardSpec) -> str:
    r = f.rule
    s = f"{r.key} -> {', '.join(b.endpoint + ('*' + str(b.weight) if b.weight != 1 else '') + (' (backup)' if b.backup else '') for b in r.backends)}"
    if r.persist_s:
        s += f" persist {r.persist_s}s"
    if r.preserve_client_ip:
        s += " routed"
    if f.udp_probe is not None:
        s += f" probe {f.udp_probe.hex()}"
    return s


def _iface_changes(old: InterfaceSpec, new: InterfaceSpec) -> list[Change]:
    n = new.name
    out: list[Change] = []
    if old.mode != new.mode:
        out.append(Change(f"{n} mode", "change", old.mode, new.mode))
    out += _set_changes(f"{n} protect", frozenset(old.protected), frozenset(new.protected))
    og, ng = old.global_, new.global_
    for label, a, b in (("fragments", "drop" if og.drop_fragments else "pass", "drop" if ng.drop_fragments else "pass"),
                        ("reflection", og.reflection, ng.reflection),
                        ("monitor", _monitor_text(og.monitor_mask), _monitor_text(ng.monitor_mask))):
        if a != b:
            out.append(Change(f"{n} {label}", "change", str(a), str(b)))
    out += _set_changes(f"{n} reflection_ports", og.reflection_ports, ng.reflection_ports)
    if og.filters != ng.filters:
        from_ = [describe(f) for f in og.filters]
        to = [describe(f) for f in ng.filters]
        out.append(Change(f"{n} filters", "change", "; ".join(from_) or "none", "; ".join(to) or "none"))
    out += _set_changes(f"{n} block", old.block, new.block)
    out += _set_changes(f"{n} allow", old.allow, new.allow)
    for addr in sorted(set(old.protected) & set(new.protected), key=addr_order):
        oa, na = old.address(addr), new.address(addr)
        p = f"{n} {addr}"
        if oa.level != na.level:
            out.append(Change(f"{p} level", "change", oa.level or "none", na.level or "none"))
        if oa.blocked != na.blocked:
            out.append(Change(f"{p} block_protocols", "change", ",".join(sorted(oa.blocked)) or "none",
                              ",".join(sorted(na.blocked)) or "none"))
        if oa.limits != na.limits:
            out.append(Change(f"{p} limits", "change", _fmt_limits(oa.limits), _fmt_limits(na.limits)))
        if oa.syn != na.syn:
            out.append(Change(f"{p} syn", "change", _fmt_syn(oa.syn), _fmt_syn(na.syn)))
        out += _set_changes(f"{p} open_ports", frozenset(vocab.format_port_spec(*r) for r in oa.open_ports),
                            frozenset(vocab.format_port_spec(*r) for r in na.open_ports))
        if oa.connlimit != na.connlimit:
            out.append(Change(f"{p} connlimit", "change", _fmt_connlimit(oa.connlimit), _fmt_connlimit(na.connlimit)))
        if oa.geo != na.geo:
            out.append(Change(f"{p} geo", "change", oa.geo.describe() if oa.geo else "none",
                              na.geo.describe() if na.geo else "none"))
        if oa.watermark != na.watermark:
            out.append(Change(f"{p} watermark", "change", "; ".join(w.describe() for w in oa.watermark) or "none",
                              "; ".join(w.describe() for w in na.watermark) or "none"))
        if oa.port_limits != na.port_limits:
            fmt = lambda pls: "; ".join(f"{vocab.format_port_spec(p, lo, hi)} {_fmt_limits(l)}" for p, lo, hi, l in pls) or "none"  # noqa: E731
            out.append(Change(f"{p} port_limits", "change", fmt(oa.port_limits), fmt(na.port_limits)))
        if oa.http != na.http:
            oh, nh = {s.name: s for s in oa.http}, {s.name: s for s in na.http}
            for k in sorted(set(oh) | set(nh)):
                if k not in nh:
                    out.append(Change(f"{p} http", "remove", l7schema.describe(oh[k])))
                elif k not in oh:
                    out.append(Change(f"{p} http", "add", None, l7schema.describe(nh[k])))
                elif oh[k] != nh[k]:
                    out.append(Change(f"{p} http {k}", "change", l7schema.describe(oh[k]),
                                      l7schema.describe(nh[k])))
    of = {f.rule.key: f for f in old.forwards}
    nf = {f.rule.key: f for f in new.forwards}
    for k in sorted(set(of) | set(nf)):
        if k not in nf:
            out.append(Change(f"{n} forward", "remove", _fmt_forward(of[k])))
        elif k not in of:
            out.append(Change(f"{n} forward", "add", None, _fmt_forward(nf[k])))
        elif of[k] != nf[k]:
            out.append(Change(f"{n} forward", "change", _fmt_forward(of[k]), _fmt_forward(nf[k])))
    if old.events != new.events:
        out.append(Change(f"{n} events", "change", _fmt_events(old.events), _fmt_events(new.events)))
    return out


def _monitor_text(mask: int) -> str:
    if mask & ALL_DROP_MASK == ALL_DROP_MASK:
        return "all"
    return ",".join(r.label for r in abi.Reason if r.is_drop and mask & (1 << r)) or "off"


def _fmt_syn(s: policy.SynPolicy) -> str:
    if not s.on:
        return f"off (mode {s.mode})"
    when = "always" if s.always else f"threshold {s.threshold_pps}"
    if s.mode == "cookie":
        return f"{when} cookie"
    return f"{when} retransmit window {s.auth_min_ms}-{s.auth_max_ms} ms keep {s.auth_keep_s} s"


def _fmt_events(e: events.EventConfig) -> str:
    return " ".join(_thresholds_toml(e.default)) + f" hold {_fmt_num(e.hold_s)}" + (f" hook {e.hook}" if e.hook else "") + \
        "".join(f"; {a}: " + " ".join(_thresholds_toml(t)) for a, t in sorted(e.addresses.items()))


def describe(f: policy.Filter) -> str:
    parts = [f.proto or "any"]
    for name, (lo, hi), full in (("sport", f.sport, (0, 65535)), ("dport", f.dport, (0, 65535)),
                                 ("len", f.length, (0, 65535)), ("ttl", f.ttl, (0, 255))):
        if (lo, hi) != full:
            parts.append(f"{name} {vocab.format_range(lo, hi)}")
    if f.tcp_flags[0]:
        parts.append("flags " + policy.format_tcp_flags(*f.tcp_flags))
    if f.payload:
        m = f.mask_bytes()
        parts.append(f"{f.payload_base}+{f.payload_off} {f.payload.hex()}" + ("" if m == b"\xff" * len(m) else f"/{m.hex()}"))
    return " ".join(parts) + f" -> {f.action}" + (f" {f.ban_s} s" if f.action == "drop-ban" else "")


def diff(old: Desired, new: Desired) -> list[Change]:
    """What turning `old` into `new` changes, in a stable order."""
    out: list[Change] = []
    if old.daemon != new.daemon:
        for k in DaemonSpec.__dataclass_fields__:
            a, b = getattr(old.daemon, k), getattr(new.daemon, k)
            if a != b:
                out.append(Change(f"daemon {k}", "change", str(a), str(b)))
    names = sorted({i.name for i in old.interfaces} | {i.name for i in new.interfaces})
    for name in names:
        o, n = old.interface(name), new.interface(name)
        if o is None:
            out.append(Change(f"interface {name}", "add", None, "protect " + ", ".join(map(str, n.protected))))
            o = InterfaceSpec(name, n.mode, tuple(AddressSpec(a) for a in n.protected))
        if n is None:
            out.append(Change(f"interface {name}", "remove", "protect " + ", ".join(map(str, o.protected))))
            continue
        out += _iface_changes(o, n)
    return out
