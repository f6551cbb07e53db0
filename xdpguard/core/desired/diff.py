"""What `apply` would change: the differences of two Desired trees, one Change per object."""

from __future__ import annotations

from dataclasses import dataclass

import ipaddress

from ..kernel import abi
from .. import policy
from ..l7 import schema as l7schema
from ..model import thresholds, vocab
from ..model.desired import ALL_DROP_MASK, AddressSpec, DaemonSpec, Desired, ForwardSpec, InterfaceSpec, addr_order
from .dump import verify_data, _fmt_connlimit, _fmt_num, _inline, _limits_toml, _thresholds_toml


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
    if old.fast_path != new.fast_path:
        fp = ("off" if v is None else f"via {v}" for v in (old.fast_path, new.fast_path))
        out.append(Change(f"{n} fast_path", "change", *fp))
    out += _set_changes(f"{n} protect", frozenset(old.protected), frozenset(new.protected))
    og, ng = old.global_, new.global_
    for label, a, b in (
        ("fragments", "drop" if og.drop_fragments else "pass", "drop" if ng.drop_fragments else "pass"),
        ("reflection", og.reflection, ng.reflection),
        ("monitor", _monitor_text(og.monitor_mask), _monitor_text(ng.monitor_mask)),
    ):
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
            out.append(
                Change(
                    f"{p} block_protocols",
                    "change",
                    ",".join(sorted(oa.blocked)) or "none",
                    ",".join(sorted(na.blocked)) or "none",
                )
            )
        if oa.limits != na.limits:
            out.append(Change(f"{p} limits", "change", _fmt_limits(oa.limits), _fmt_limits(na.limits)))
        if oa.syn != na.syn:
            out.append(Change(f"{p} syn", "change", _fmt_syn(oa.syn), _fmt_syn(na.syn)))
        out += _set_changes(
            f"{p} open_ports",
            frozenset(vocab.format_port_spec(*r) for r in oa.open_ports),
            frozenset(vocab.format_port_spec(*r) for r in na.open_ports),
        )
        if oa.connlimit != na.connlimit:
            out.append(Change(f"{p} connlimit", "change", _fmt_connlimit(oa.connlimit), _fmt_connlimit(na.connlimit)))
        if oa.geo != na.geo:
            out.append(
                Change(
                    f"{p} geo",
                    "change",
                    oa.geo.describe() if oa.geo else "none",
                    na.geo.describe() if na.geo else "none",
                )
            )
        if oa.watermark != na.watermark:
            out.append(
                Change(
                    f"{p} watermark",
                    "change",
                    "; ".join(w.describe() for w in oa.watermark) or "none",
                    "; ".join(w.describe() for w in na.watermark) or "none",
                )
            )
        if oa.port_limits != na.port_limits:
            fmt = lambda pls: (
                "; ".join(f"{vocab.format_port_spec(p, lo, hi)} {_fmt_limits(l)}" for p, lo, hi, l in pls) or "none"
            )  # noqa: E731
            out.append(Change(f"{p} port_limits", "change", fmt(oa.port_limits), fmt(na.port_limits)))
        if oa.http != na.http:
            oh, nh = {s.name: s for s in oa.http}, {s.name: s for s in na.http}
            for k in sorted(set(oh) | set(nh)):
                if k not in nh:
                    out.append(Change(f"{p} http", "remove", l7schema.describe(oh[k])))
                elif k not in oh:
                    out.append(Change(f"{p} http", "add", None, l7schema.describe(nh[k])))
                elif oh[k] != nh[k]:
                    out.append(Change(f"{p} http {k}", "change", l7schema.describe(oh[k]), l7schema.describe(nh[k])))
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
    if old.verify != new.verify:
        fmt = lambda v: ", ".join(f"{k} {x}" for k, x in verify_data(v).items()) or "defaults"  # noqa: E731
        out.append(Change(f"{n} verify", "change", fmt(old.verify), fmt(new.verify)))
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


def _fmt_events(e: thresholds.EventConfig) -> str:
    return (
        " ".join(_thresholds_toml(e.default))
        + f" hold {_fmt_num(e.hold_s)}"
        + (f" hook {e.hook}" if e.hook else "")
        + "".join(f"; {a}: " + " ".join(_thresholds_toml(t)) for a, t in sorted(e.addresses.items()))
    )


def describe(f: policy.Filter) -> str:
    parts = [f.proto or "any"]
    for name, (lo, hi), full in (
        ("sport", f.sport, (0, 65535)),
        ("dport", f.dport, (0, 65535)),
        ("len", f.length, (0, 65535)),
        ("ttl", f.ttl, (0, 255)),
    ):
        if (lo, hi) != full:
            parts.append(f"{name} {vocab.format_range(lo, hi)}")
    if f.tcp_flags[0]:
        parts.append("flags " + policy.format_tcp_flags(*f.tcp_flags))
    if f.payload:
        m = f.mask_bytes()
        parts.append(
            f"{f.payload_base}+{f.payload_off} {f.payload.hex()}" + ("" if m == b"\xff" * len(m) else f"/{m.hex()}")
        )
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
