"""Reading `xdpguard.toml`: TOML → model.desired.Desired, every problem reported as
FILE:LINE: FIELD: message (all of them at once, in a ConfigError), values normalised on the way in."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import tomllib
from dataclasses import replace
from pathlib import Path

from ..kernel import abi
from .. import levels, policy
from .. import watermark as wmark
from ..model.cluster import BgpNeighbor, BgpSpec, ClusterSpec
from ..errors import UserError
from ..l7 import schema as l7schema
from ..l7 import spec as l7spec
from ..model import forwarding, geo, thresholds, vocab
from ..model.connlimit import ConnLimits
from ..model.forwarding import ForwardRule
from ..model.desired import (
    ALL_DROP_MASK,
    DROP_REASONS,
    MODES,
    VERIFY_KEYS,
    AddressSpec,
    DaemonSpec,
    Desired,
    ForwardSpec,
    InterfaceSpec,
    IPAddress,
    PortRun,
    addr_order,
    norm_filter,
    norm_interface,
    norm_port_limits,
    norm_port_runs,
)
from ..model.prefixes import Prefix, parse_address, parse_prefix
from ..prefixes import read_prefix_set

DEFAULT_PATH = Path("/etc/xdpguard/xdpguard.toml")


class ConfigError(UserError):
    """One or more problems in a config file; each line names file, line and field."""

    def __init__(self, problems: list[str]):
        super().__init__(problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + "; ".join(problems))
        self.problems = problems


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
            names = {
                "str": "a string",
                "bool": "true or false",
                "int": "a whole number",
                "num": "a finite number",
                "list": "an array",
                "table": "a table",
                "intstr": "a number or a string",
            }
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


_DAEMON_KEYS = {
    "metrics",
    "health_interval",
    "health_timeout",
    "rise",
    "fall",
    "sweep_interval",
    "detect",
    "detect_interval",
    "mitigation",
    "mitigation_pps",
    "mitigation_factor",
    "mitigation_max_share",
    "mitigation_hold",
    "mitigation_interval",
}
_IFACE_KEYS = {
    "name",
    "mode",
    "protect",
    "monitor",
    "fragments",
    "reflection",
    "reflection_ports",
    "block",
    "block_files",
    "allow",
    "allow_files",
    "address",
    "filter",
    "forward",
    "events",
    "verify",
    "fast_path",
}
_ADDR_KEYS = {
    "address",
    "block_protocols",
    "open_ports",
    "limits",
    "syn",
    "port_limit",
    "level",
    "connlimit",
    "http",
    "geo",
    "watermark",
}
#: `connlimit = { ... }` keys → ConnLimits fields
CONNLIMIT_KEYS = {
    "new_per_source": "new_per_source",
    "concurrent_per_source": "concurrent_per_source",
    "new_total": "new_total",
    "conntrack_budget": "conntrack_budget",
    "udp_timeout": "udp_timeout_s",
    "ban": "ban_s",
}
_LIMIT_KEYS = {
    "src_pps",
    "src_burst",
    "src_bps",
    "src_burst_bytes",
    "dst_pps",
    "dst_burst",
    "syn_src_pps",
    "syn_src_burst",
    "ban",
    "unknown_share",
}
_SYN_KEYS = {"threshold", "auth_window", "keep", "mode", "always"}
_FILTER_KEYS = {
    "action",
    "proto",
    "sport",
    "dport",
    "length",
    "ttl",
    "tcp_flags",
    "payload",
    "mask",
    "base",
    "offset",
    "ban",
}
_FORWARD_KEYS = {"proto", "ports", "protected", "to", "weights", "backup", "persist", "preserve_client_ip", "udp_probe"}
_EVENT_KEYS = {"pps", "bps", "drop_pps", "drop_bps", "reasons", "hold", "hook", "address"}


def _verify(ld: _Loader, d: dict, path: tuple) -> policy.VerifySettings:
    """`[interface.verify]`: the verified-client budgets and the per-service admission budget."""
    d = ld.table(d, path, set(VERIFY_KEYS))
    vals = {
        k: ld.get(d, k, path, "bool" if k == "budget" else "int", getattr(policy.VerifySettings(), k))
        for k in VERIFY_KEYS
    }
    return ld.guard(path, lambda: policy.VerifySettings(**vals), policy.VerifySettings())


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
    return DaemonSpec(
        metrics,
        pos("health_interval", base.health_interval_s, 3600),
        pos("health_timeout", base.health_timeout_s, 60),
        count("rise", base.rise),
        count("fall", base.fall),
        pos("sweep_interval", base.sweep_interval_s, 3600),
        ld.get(d, "detect", p, "bool", True),
        pos("detect_interval", base.detect_interval_s, 60),
        ld.get(d, "mitigation", p, "bool", True),
        float(mpps),
        float(factor),
        float(share),
        pos("mitigation_hold", base.mitigation_hold_s, 3600),
        pos("mitigation_interval", base.mitigation_interval_s, 60),
    )


_CLUSTER_KEYS = {
    "peers",
    "peer_port",
    "name",
    "node",
    "endpoints",
    "node_ttl",
    "resync_interval",
    "ca",
    "cert",
    "key",
    "user",
    "password_file",
    "insecure",
    "protect",
    "backends",
    "hook",
}
_BGP_KEYS = {
    "local_as",
    "router_id",
    "neighbors",
    "announce",
    "bfd",
    "bfd_interval",
    "bfd_multiplier",
    "hold",
    "min_nodes",
    "bird_config",
    "bird_socket",
    "liveness_interface",
    "flowspec_pps",
    "blackhole_pps",
    "escalation_hold",
    "blackhole_community",
    "overload_pps",
    "overload_prepend",
    "require_routes",
}
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
    peers = _cluster_peers(ld, d, p, out["node"], [ipaddress.ip_network(n) for n in nets["protect"]])
    peer_port = _int_in(ld, d, "peer_port", p, base.peer_port, 1, 65535)
    if peers and not (files["ca"] and files["cert"] and files["key"]) and not insecure:
        # HAProxy checks a connecting peer's name, not its address: plain TCP lets anyone who
        # reaches the port write stick-table entries (mark a source verified, lift a punishment)
        ld.fail(p + ("peers",), "need the cluster's TLS (ca, cert and key) or insecure = true")
    return ClusterSpec(
        out["name"],
        out["node"],
        tuple(good),
        ttl,
        float(resync),
        files["ca"],
        files["cert"],
        files["key"],
        user,
        files["password_file"],
        insecure,
        tuple(nets["protect"]),
        tuple(nets["backends"]),
        hook,
        peers,
        peer_port,
    )


def _cluster_peers(ld: _Loader, d: dict, p: tuple, node: str, protect: list) -> tuple[str, ...]:
    """`peers = ["NAME=ADDRESS", ...]`: unique names, this node among them, no address inside
    the prefixes the cluster protects (the peer port is never on a protective address)."""
    out, names = [], set()
    for i, item in enumerate(ld.strs(d, "peers", p)):
        name, sep, addr = item.partition("=")
        a = None
        try:
            a = ipaddress.ip_address(addr.strip())
        except ValueError:
            pass
        if not sep or not _NAME_RE.match(name.strip()) or a is None:
            ld.fail(p + ("peers", i), f"must be NAME=ADDRESS (a node name and its cluster address), got {item!r}")
            continue
        name = name.strip()
        if name in names:
            ld.fail(p + ("peers", i), f"node {name!r} is named twice")
            continue
        if any(a in n for n in protect):
            ld.fail(p + ("peers", i), f"{a} is inside a protected prefix: peers listen on the node's own address")
            continue
        names.add(name)
        out.append(f"{name}={a}")
    if out and node not in names:
        ld.fail(p + ("peers",), f"must name this node ({node!r}) too")
        return ()
    return tuple(out)


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
    return BgpSpec(
        local_as,
        rid or ipaddress.IPv4Address("0.0.0.1"),
        tuple(neighbors),
        tuple(sorted(announce, key=addr_order)),
        ld.get(d, "bfd", p, "bool", True),
        _int_in(ld, d, "bfd_interval", p, BgpSpec.bfd_interval_ms, 10, 10000),
        _int_in(ld, d, "bfd_multiplier", p, BgpSpec.bfd_multiplier, 2, 255),
        _int_in(ld, d, "hold", p, BgpSpec.hold_s, 3, 65535),
        _int_in(ld, d, "min_nodes", p, BgpSpec.min_nodes, 0, 1000),
        files["bird_config"],
        files["bird_socket"],
        live,
        _int_in(ld, d, "flowspec_pps", p, 0, 0, 10**12),
        _int_in(ld, d, "blackhole_pps", p, 0, 0, 10**12),
        _int_in(ld, d, "escalation_hold", p, BgpSpec.escalation_hold_s, 1, 86400),
        community,
        _int_in(ld, d, "overload_pps", p, 0, 0, 10**12),
        _int_in(ld, d, "overload_prepend", p, BgpSpec.overload_prepend, 1, 16),
        tuple(routes),
    )


def _limits(ld: _Loader, d: dict, path: tuple, known=_LIMIT_KEYS) -> policy.Limits:
    d = ld.table(d, path, known)
    problems_before = len(ld.problems)

    def n(key, limit):
        if key not in d:
            return 0
        return ld.guard(path + (key,), lambda: vocab.parse_count(d[key], key, limit), 0)

    lim = ld.guard(
        path,
        lambda: policy.Limits(
            src_pps=n("src_pps", policy.MAX_PPS),
            src_burst_pkts=n("src_burst", policy.MAX_BURST),
            src_bps=n("src_bps", policy.MAX_BPS),
            src_burst_bytes=n("src_burst_bytes", policy.MAX_BURST),
            dst_pps=n("dst_pps", policy.MAX_PPS),
            dst_burst_pkts=n("dst_burst", policy.MAX_BURST),
            syn_src_pps=n("syn_src_pps", policy.MAX_PPS),
            syn_src_burst=n("syn_src_burst", policy.MAX_BURST),
            ban_s=n("ban", policy.MAX_BAN_S),
            unknown_share_pct=n("unknown_share", 99),
        ),
        policy.Limits(),
    )
    if lim.ban_s and not (lim.src_pps or lim.src_bps or lim.syn_src_pps) and len(ld.problems) == problems_before:
        ld.fail(path + ("ban",), "a ban needs a per-source rate (src_pps, src_bps or syn_src_pps)")
    return lim.effective()


def _syn(ld: _Loader, d: dict, path: tuple) -> policy.SynPolicy:
    d = ld.table(d, path, _SYN_KEYS)
    base = policy.SynPolicy()
    thr = ld.guard(
        path + ("threshold",), lambda: vocab.parse_count(d.get("threshold", 0), "threshold", policy.MAX_PPS), 0
    )
    lo, hi = base.auth_min_ms, base.auth_max_ms
    if "auth_window" in d:
        lo, hi = ld.guard(
            path + ("auth_window",), lambda: vocab.parse_range("auth_window", d["auth_window"], (lo, hi)), (lo, hi)
        )
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
    return AddressSpec(
        addr,
        frozenset(b for b in blocked if b in policy.PROTOCOLS),
        limits,
        syn,
        norm_port_runs(opened),
        norm_port_limits(plims),
        level,
        _connlimit(ld, d, path) if "connlimit" in d else None,
        _http(ld, d, path, addr),
        geo=_geo(ld, d, path) if "geo" in d else None,
        watermark=_watermark(ld, d, path),
    )


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


def _connlimit(ld: _Loader, d: dict, path: tuple) -> ConnLimits | None:
    """`connlimit = { new_per_source = 20, ban = 60, ... }`: at least one limit; ban alone is none."""
    pp = path + ("connlimit",)
    t = ld.table(ld.get(d, "connlimit", path, "table", {}), pp, set(CONNLIMIT_KEYS))
    vals = {}
    for k, f in CONNLIMIT_KEYS.items():
        v = ld.get(t, k, pp, "int", None)
        if v is not None:
            vals[f] = v
    lim = ld.guard(pp, lambda: ConnLimits(**vals))
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


def build_filter(
    *,
    action: str,
    proto=None,
    sport=None,
    dport=None,
    length=None,
    ttl=None,
    tcp_flags=None,
    payload=None,
    mask=None,
    base: str = "payload",
    offset: int = 0,
    ban_s: int = 0,
    names: dict[str, str] | None = None,
) -> policy.Filter:
    """A filter from its text fields (the CLI's options and the config's keys); `names` maps a
    field to what the caller calls it in messages."""
    nm = {
        "sport": "sport",
        "dport": "dport",
        "length": "length",
        "ttl": "ttl",
        "payload": "payload",
        "mask": "mask",
        "ban": "ban",
        "tcp_flags": "tcp_flags",
        **(names or {}),
    }
    if action not in policy.ACTIONS:  # "mitigate" is the daemon's own (mitigation.py)
        raise UserError(f"invalid filter action '{action}': use drop, pass or drop-ban")
    if ban_s and action != "drop-ban":
        raise UserError(f"{nm['ban']} only goes with action drop-ban")
    if mask and not payload:
        raise UserError(f"{nm['mask']} needs {nm['payload']}")
    flt = policy.Filter(
        action=action,
        proto=proto.lower() if proto else None,
        sport=vocab.parse_range(nm["sport"], sport, (0, 65535)),
        dport=vocab.parse_range(nm["dport"], dport, (0, 65535)),
        length=vocab.parse_range(nm["length"], length, (0, 65535)),
        ttl=vocab.parse_range(nm["ttl"], ttl, (0, 255)),
        tcp_flags=policy.parse_tcp_flags(tcp_flags) if tcp_flags else (0, 0),
        payload=vocab.parse_hex(nm["payload"], payload),
        payload_mask=vocab.parse_hex(nm["mask"], mask),
        payload_base=base,
        payload_off=offset,
        ban_s=ban_s,
    )
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
        f = build_filter(
            action=str(d["action"]),
            proto=d.get("proto"),
            sport=d.get("sport"),
            dport=d.get("dport"),
            length=d.get("length"),
            ttl=d.get("ttl"),
            tcp_flags=d.get("tcp_flags"),
            payload=d.get("payload"),
            mask=d.get("mask"),
            base=str(d.get("base", "payload")),
            offset=d.get("offset", 0) if isinstance(d.get("offset", 0), int) else 0,
            ban_s=d.get("ban", 0) if isinstance(d.get("ban", 0), int) else 0,
        )
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
        return forwarding.make_rule(
            proto,
            addr,
            str(ports),
            ",".join(to),
            weights=weights,
            backups=backup,
            persist_s=persist,
            preserve_client_ip=routed,
        )

    rule = ld.guard(path, make)
    return None if rule is None else ForwardSpec(rule, probe)


def _thresholds(ld: _Loader, d: dict, path: tuple, base: thresholds.Thresholds) -> thresholds.Thresholds:
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
        reasons[r] = (
            ld.guard(rp, lambda: vocab.parse_rate(pps, r), 0.0),
            ld.guard(rp, lambda: vocab.parse_rate(bps or "0", r), 0.0),
        )
    return thresholds.Thresholds(
        rate("pps", base.pps),
        rate("bps", base.bps),
        rate("drop_pps", base.drop_pps),
        rate("drop_bps", base.drop_bps),
        reasons if "reasons" in d else dict(base.reasons),
    )


def _events(ld: _Loader, d: dict, path: tuple, protected: list[IPAddress]) -> thresholds.EventConfig:
    d = ld.table(d, path, _EVENT_KEYS)
    default = _thresholds(ld, d, path, thresholds.DEFAULT_THRESHOLDS)
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
    hold = ld.get(d, "hold", path, "num", thresholds.DEFAULT_HOLD_S)
    if not 0 <= hold <= 86400:
        ld.fail(path + ("hold",), "must be 0 to 86400 seconds")
        hold = thresholds.DEFAULT_HOLD_S
    hook = ld.get(d, "hook", path, "str", None) or None
    if hook is not None:  # checked now, not when an attack starts: a command that does not split is
        # an error; a program missing now is a warning (the desired-state store is read with this
        # loader too, and a program removed later must not make every verb fail)
        hook = ld.guard(path + ("hook",), lambda: vocab.parse_hook(hook, "hook", require_program=False), None)
        try:
            vocab.parse_hook(hook, "hook")
        except UserError as exc:
            ld.warn(path + ("hook",), f"{exc.message}; events are logged, the hook will not run")
    return thresholds.EventConfig(default, addrs, float(hold), hook)


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
    glob = ld.guard(
        path,
        lambda: policy.GlobalPolicy(
            frag == "drop", ld.get(d, "reflection", path, "bool", True), frozenset(refl_ports), tuple(filters), mask
        ),
        policy.GlobalPolicy(),
    )
    block = _prefixes(ld, d, "block", path)
    allow = _prefixes(ld, d, "allow", path)
    both = block & allow
    if both:
        ld.warn(
            path + ("allow",),
            f"{len(both)} prefix(es) are in both allow and block (allow wins), e.g. {sorted(both)[0]}",
        )
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
                    ld.fail(
                        path + ("forward", j),
                        f"tcp {svc.port} of {a.address} is the HTTP service {svc.name} "
                        "(HAProxy serves it): forward another port",
                    )
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
    vf = _verify(ld, ld.get(d, "verify", path, "table", {}), path + ("verify",))
    fast = _fast_path(ld, ld.get(d, "fast_path", path, "table", {}), path + ("fast_path",), name)
    return norm_interface(
        InterfaceSpec(
            name,
            mode if mode in MODES else "auto",
            tuple(addrs.values()),
            glob,
            frozenset(block),
            frozenset(allow),
            tuple(forwards),
            ev,
            vf,
            fast,
        )
    )


def _fast_path(ld: _Loader, d: dict, path: tuple, name: str) -> str | None:
    """`[interface.fast_path] via = "IF"`: the forwarding fast path on, its return program on IF
    (the backend-side interface; not the protected one). An empty table or no table: off."""
    d = ld.table(d, path, {"via"})
    via = ld.get(d, "via", path, "str", None)
    if via is None:
        return None
    if not via or len(via) > 15 or "/" in via or any(c.isspace() for c in via):
        ld.fail(path + ("via",), f"needs a valid interface name, got {via!r}")
        return None
    if via == name:
        ld.fail(path + ("via",), f"must be the backend-side interface, not the protected one ({name})")
        return None
    return via


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
