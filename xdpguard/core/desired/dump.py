"""Writing the desired spec back out: Desired → plain data → TOML (by tomli-w), as `export` does."""

from __future__ import annotations

from dataclasses import MISSING, fields

import tomli_w

from ..kernel import abi
from .. import policy
from ..model.cluster import BgpSpec
from ..l7 import schema as l7schema
from ..model import thresholds, vocab
from ..model.connlimit import ConnLimits
from ..model.desired import VERIFY_KEYS, ALL_DROP_MASK, AddressSpec, Desired, ForwardSpec, InterfaceSpec
from .load import CONNLIMIT_KEYS


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _limits_toml(lim: policy.Limits) -> dict[str, str]:
    e = lim.effective()
    out = {}
    for key, rate, burst_key, burst in (
        ("src_pps", e.src_pps, "src_burst", e.src_burst_pkts),
        ("src_bps", e.src_bps, "src_burst_bytes", e.src_burst_bytes),
        ("dst_pps", e.dst_pps, "dst_burst", e.dst_burst_pkts),
        ("syn_src_pps", e.syn_src_pps, "syn_src_burst", e.syn_src_burst),
    ):
        if rate:
            out[key] = str(rate)
            if burst != rate:
                out[burst_key] = str(burst)
    if e.ban_s:
        out["ban"] = str(e.ban_s)
    if e.unknown_share_pct:
        out["unknown_share"] = str(e.unknown_share_pct)
    return out


def _connlimit_items(c: ConnLimits) -> dict[str, str]:
    """The config keys of `c` that are set (ban always: it has a default, not an off value)."""
    return {k: str(getattr(c, f)) for k, f in CONNLIMIT_KEYS.items() if getattr(c, f) or k == "ban"}


def _fmt_connlimit(c: ConnLimits | None) -> str:
    return "none" if c is None else " ".join(f"{k}={v}" for k, v in _connlimit_items(c).items())


def _inline(d: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }"


def _fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _thresholds_toml(t: thresholds.Thresholds, always_reasons: bool = False) -> list[str]:
    out = [f"{k} = {_fmt_num(getattr(t, k))}" for k in ("pps", "bps", "drop_pps", "drop_bps")]
    if t.reasons or always_reasons:
        out.append(
            "reasons = "
            + (
                _inline({r: _q(f"{_fmt_num(p)}/{_fmt_num(b)}") for r, (p, b) in sorted(t.reasons.items())})
                if t.reasons
                else "{}"
            )
        )
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
        default = (
            f.default
            if f.default is not MISSING
            else (f.default_factory() if f.default_factory is not MISSING else MISSING)
        )
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


def _thresholds_data(t: thresholds.Thresholds, always_reasons: bool = False) -> dict:
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
        body["syn"] = {
            "threshold": a.syn.threshold_pps,
            "auth_window": f"{a.syn.auth_min_ms}-{a.syn.auth_max_ms}",
            "keep": a.syn.auth_keep_s,
            "mode": a.syn.mode,
            "always": a.syn.always,
        }
    if a.connlimit is not None:
        body["connlimit"] = {k: int(v) for k, v in _connlimit_items(a.connlimit).items()}
    if a.geo is not None:
        body["geo"] = a.geo.to_data()
    if a.watermark:
        body["watermark"] = [w.to_data() for w in a.watermark]
    if a.port_limits or a.level is not None:
        body["port_limit"] = [
            {"ports": vocab.format_port_spec(proto, lo, hi), **_limits_data(lim)}
            for proto, lo, hi, lim in a.port_limits
        ]
    if a.http:
        body["http"] = [l7schema.to_data(svc) for svc in a.http]
    if not body:
        return None
    return {"address": str(a.address), **body}


def _filter_data(f: policy.Filter) -> dict:
    out: dict = {"action": f.action}
    if f.proto:
        out["proto"] = f.proto
    for key, (lo, hi), full in (
        ("sport", f.sport, (0, 65535)),
        ("dport", f.dport, (0, 65535)),
        ("length", f.length, (0, 65535)),
        ("ttl", f.ttl, (0, 255)),
    ):
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
    out: dict = {
        "proto": r.proto,
        "ports": str(r.ports),
        "protected": str(r.protected),
        "to": [b.endpoint for b in prim],
    }
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
        out["events"]["address"] = [
            {"address": a, **_thresholds_data(t, True)} for a, t in sorted(ev.addresses.items())
        ]
    if verify_data(s.verify):
        out["verify"] = verify_data(s.verify)
    if s.fast_path is not None:
        out["fast_path"] = {"via": s.fast_path}
    return out


def verify_data(v: policy.VerifySettings) -> dict:
    """The `[interface.verify]` table of v: only what differs from the defaults."""
    base = policy.VerifySettings()
    return {k: getattr(v, k) for k in VERIFY_KEYS if getattr(v, k) != getattr(base, k)}


_BGP_KEYS_OF = {"liveness_iface": "liveness_interface"}  # BgpSpec fields whose key is not toml_key()


def _bgp_data(b: BgpSpec) -> dict:
    out = {
        "local_as": b.local_as,
        "router_id": str(b.router_id),
        "neighbors": [{"address": str(n.address), "as": n.asn} for n in b.neighbors],
    }
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
    daemon.update(
        health_interval=ds.health_interval_s,
        health_timeout=ds.health_timeout_s,
        rise=ds.rise,
        fall=ds.fall,
        sweep_interval=ds.sweep_interval_s,
        detect=ds.detect,
        detect_interval=ds.detect_interval_s,
        mitigation=ds.mitigation,
        mitigation_pps=_num(ds.mitigation_pps),
        mitigation_factor=ds.mitigation_factor,
        mitigation_max_share=ds.mitigation_max_share,
        mitigation_hold=ds.mitigation_hold_s,
        mitigation_interval=ds.mitigation_interval_s,
    )
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
