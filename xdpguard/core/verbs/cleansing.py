"""Cleansing: rate limits, protocol blocking, reflection ports, feature filters, the SYN
defence, monitor mode, the fragment policy and dynamic bans (DESIGN.md pipeline, steps 5–12).

Here are their validators, the edits of the interface-wide policy (`*_global`), the frozen
result objects (`to_dict()` for --json) and the read-only `show` verbs. The changes of desired
state are edits of the spec in imperative.py, realised by the reconciler; the bans (dynamic
state) go to the map owner (guard.py) from here. Bad input changes nothing. No click, no rich.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

from ..kernel import abi
from .. import policy
from ..desired.diff import describe
from ..model import vocab
from ..kernel.abi import ALL_DROP_MASK, DROP_REASONS
from ..errors import UserError
from ..prefixes import parse_address
from ..protection import locked_guard, open_guard
from ..result import as_dict as _as_dict

MAX_BAN_TTL_S = policy.MAX_BAN_S


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # bpf_ktime_get_ns()


def _check_count(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UserError(f"invalid {name} {value!r}: must be a whole number in {lo}-{hi:,}")
    return value


# ---- rate limits ----


@dataclass(frozen=True)
class LimitView:
    protected: str
    scope: str  # "address" or "tcp:80" / "udp:1000-2000"
    limits: dict  # policy.Limits fields, bursts as stored (filled in)


@dataclass(frozen=True)
class LimitResult:
    iface: str
    action: str  # set | clear | show
    changed: int  # entries written (addresses, or ports x addresses)
    limits: list[LimitView]
    to_dict = _as_dict


def limit_views(g, only=None) -> list[LimitView]:
    out = []
    for a in g.protected_addrs():
        lim = g.read_address_policy(a).limits
        if lim.active():
            out.append(LimitView(str(a), "address", asdict(lim)))
    runs: list[list] = []  # [addr, proto, lo, hi, Limits]
    for (addr, proto, port), lim in g.read_port_limits().items():
        if runs and runs[-1][0] == addr and runs[-1][1] == proto and runs[-1][3] == port - 1 and runs[-1][4] == lim:
            runs[-1][3] = port
        else:
            runs.append([addr, proto, port, port, lim])
    for addr, proto, lo, hi, lim in runs:
        rng = str(lo) if lo == hi else f"{lo}-{hi}"
        out.append(LimitView(addr, f"{proto}:{rng}", asdict(lim)))
    return out


def check_limit_set(limits: policy.Limits) -> None:
    if not limits.active():
        raise UserError("limit set needs a rate: --src-pps, --src-bps, --dst-pps or --syn-src-pps")
    if limits.ban_s and not (limits.src_pps or limits.src_bps or limits.syn_src_pps):
        raise UserError("--ban needs a per-source rate (--src-pps, --src-bps or --syn-src-pps)")


def limit_show(ifname: str | None) -> LimitResult:
    with open_guard(ifname) as g:
        return LimitResult(g.iface.name, "show", 0, limit_views(g))


# ---- protocol blocking ----


@dataclass(frozen=True)
class ProtoResult:
    iface: str
    action: str  # block | unblock | show
    changed: int
    blocked: dict[str, list[str]]  # protected address → blocked protocols
    to_dict = _as_dict


def blocked_view(g) -> dict[str, list[str]]:
    order = list(policy.PROTOCOLS)
    return {str(a): sorted(g.read_address_policy(a).blocked, key=order.index) for a in g.protected_addrs()}


def check_proto(proto: str) -> str:
    proto = str(proto).lower()
    if proto not in policy.PROTOCOLS:
        raise UserError(f"unknown protocol '{proto}': use tcp, udp, icmp or other")
    return proto


def proto_show(ifname: str | None) -> ProtoResult:
    with open_guard(ifname) as g:
        return ProtoResult(g.iface.name, "show", 0, blocked_view(g))


# ---- interface-wide policy (reflection, filters, monitor, fragments) ----


def _read_global(ifname: str | None) -> tuple[str, policy.GlobalPolicy]:
    with open_guard(ifname) as g:
        return g.iface.name, g.read_global_policy()


@dataclass(frozen=True)
class ReflectionResult:
    iface: str
    action: str  # add | del | on | off | list
    enabled: bool
    ports: list[int]
    changed: list[int] = field(default_factory=list)
    to_dict = _as_dict


def _check_ports(ports) -> frozenset[int]:
    out = set()
    for p in ports:
        try:
            n = int(str(p).strip())
        except ValueError:
            raise UserError(f"invalid reflection port '{p}': not a number") from None
        if not 1 <= n <= 65535:
            raise UserError(f"invalid reflection port {n}: outside 1-65535")
        out.add(n)
    if not out:
        raise UserError("give at least one port")
    return frozenset(out)


def reflection_global(action: str, ports=()):
    """The change of the global policy that `reflection ACTION PORTS` makes (validated now)."""
    if action not in ("add", "del", "on", "off"):
        raise UserError(f"invalid reflection action '{action}': use add, del, on or off")
    wanted = _check_ports(ports) if action in ("add", "del") else frozenset()

    def change(old: policy.GlobalPolicy) -> policy.GlobalPolicy:
        if action == "add":
            return replace(old, reflection_ports=old.reflection_ports | wanted)
        if action == "del":
            return replace(old, reflection_ports=old.reflection_ports - wanted)
        return replace(old, reflection=action == "on")

    return change


def reflection_list(ifname: str | None) -> ReflectionResult:
    name, pol = _read_global(ifname)
    return ReflectionResult(name, "list", pol.reflection, sorted(pol.reflection_ports))


@dataclass(frozen=True)
class FilterView:
    index: int  # 1-based, the order of evaluation
    filter: dict  # policy.Filter.to_dict()
    summary: str


@dataclass(frozen=True)
class FilterResult:
    iface: str
    action: str  # add | del | list
    index: int | None  # the filter added or deleted
    filters: list[FilterView]
    capacity: int = abi.FILTERS_MAX
    to_dict = _as_dict


describe_filter = describe  # one description of a filter, shared with `diff`


def filter_views(pol: policy.GlobalPolicy) -> list[FilterView]:
    return [FilterView(i + 1, f.to_dict(), describe_filter(f)) for i, f in enumerate(pol.filters)]


def filter_add_global(flt: policy.Filter, position: int | None = None, where: list[int] | None = None):
    """The change of the global policy that inserts flt at 1-based `position` (default: last);
    the position taken is appended to `where`."""
    if position is not None:
        _check_count("--position", position, 1, abi.FILTERS_MAX)
    where = [] if where is None else where

    def change(old: policy.GlobalPolicy) -> policy.GlobalPolicy:
        if len(old.filters) >= abi.FILTERS_MAX:
            raise UserError(f"too many filters: the table holds {abi.FILTERS_MAX}; delete one first")
        i = len(old.filters) if position is None else min(position - 1, len(old.filters))
        where.append(i + 1)
        return replace(old, filters=old.filters[:i] + (flt,) + old.filters[i:])

    return change


def filter_del_global(index: int):
    _check_count("filter index", index, 1, abi.FILTERS_MAX)

    def change(old: policy.GlobalPolicy) -> policy.GlobalPolicy:
        if index > len(old.filters):
            raise UserError(f"no filter {index}: there are {len(old.filters)}")
        return replace(old, filters=old.filters[: index - 1] + old.filters[index:])

    return change


def filter_list(ifname: str | None) -> FilterResult:
    name, pol = _read_global(ifname)
    return FilterResult(name, "list", None, filter_views(pol))


@dataclass(frozen=True)
class MonitorResult:
    iface: str
    action: str  # on | off | show
    reasons: list[str]  # drop reasons counted as would_drop and passed
    all: bool
    to_dict = _as_dict


def _reason_mask(reasons) -> int:
    if not reasons:
        return ALL_DROP_MASK
    mask = 0
    for r in reasons:
        name = str(r).strip().lower()
        if name not in DROP_REASONS:
            raise UserError(f"unknown reason '{r}': use {', '.join(DROP_REASONS)}")
        mask |= 1 << abi.Reason[name.upper()]
    return mask


def monitor_view(name: str, action: str, mask: int) -> MonitorResult:
    reasons = [r.label for r in abi.Reason if r.is_drop and mask & (1 << r)]
    return MonitorResult(name, action, reasons, mask & ALL_DROP_MASK == ALL_DROP_MASK)


def monitor_global(on: bool, reasons=()):
    bits = _reason_mask(reasons)
    return lambda old: replace(old, monitor_mask=(old.monitor_mask | bits) if on else (old.monitor_mask & ~bits))


def monitor_show(ifname: str | None) -> MonitorResult:
    name, pol = _read_global(ifname)
    return monitor_view(name, "show", pol.monitor_mask)


@dataclass(frozen=True)
class FragmentsResult:
    iface: str
    action: str  # drop | pass | show
    drop: bool
    to_dict = _as_dict


def fragments_global(drop: bool):
    return lambda old: replace(old, drop_fragments=drop)


def fragments_show(ifname: str | None) -> FragmentsResult:
    name, pol = _read_global(ifname)
    return FragmentsResult(name, "show", pol.drop_fragments)


# ---- SYN defence ----


@dataclass(frozen=True)
class SynView:
    protected: str
    threshold_pps: int
    auth_min_ms: int
    auth_max_ms: int
    auth_keep_s: int
    syn_src_pps: int  # the per-source SYN limit (limit set --syn-src-pps)
    mode: str = "cookie"  # cookie | retransmit
    always: bool = False  # SYN-defence mode at any rate


@dataclass(frozen=True)
class SynResult:
    iface: str
    action: str  # set | show
    changed: int
    policies: list[SynView]
    # xg_cookie_pcpu summed over CPUs: what the `syncookie` verdicts were (synack_sent, ack_valid,
    # ack_bad, failed); empty when the loaded program has no such map
    cookies: dict[str, int] = field(default_factory=dict)
    to_dict = _as_dict


def parse_window(text: str) -> tuple[int, int]:
    lo_s, dash, hi_s = str(text).strip().partition("-")
    try:
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise UserError(f"invalid --auth-window '{text}': use MIN_MS-MAX_MS, e.g. 200-10000") from None
    if not dash:
        raise UserError(f"invalid --auth-window '{text}': use MIN_MS-MAX_MS, e.g. 200-10000")
    return lo, hi


def syn_views(g) -> list[SynView]:
    out = []
    for a in g.protected_addrs():
        p = g.read_address_policy(a)
        out.append(
            SynView(
                str(a),
                p.syn.threshold_pps,
                p.syn.auth_min_ms,
                p.syn.auth_max_ms,
                p.syn.auth_keep_s,
                p.limits.syn_src_pps,
                p.syn.mode,
                p.syn.always,
            )
        )
    return out


def _cookie_counts(g) -> dict[str, int]:
    return g.cookie_counts()


def syn_policy(
    threshold_pps: int,
    auth_window: str | None = None,
    keep_s: int | None = None,
    mode: str = "cookie",
    always: bool = False,
) -> policy.SynPolicy:
    d = policy.SynPolicy()
    lo, hi = parse_window(auth_window) if auth_window else (d.auth_min_ms, d.auth_max_ms)
    return policy.SynPolicy(threshold_pps, lo, hi, d.auth_keep_s if keep_s is None else keep_s, mode, always)


def syn_show(ifname: str | None) -> SynResult:
    with open_guard(ifname) as g:
        return SynResult(g.iface.name, "show", 0, syn_views(g), _cookie_counts(g))


# ---- dynamic bans ----


@dataclass(frozen=True)
class BanResult:
    iface: str
    action: str  # add | del | list
    changed: int
    bans: list[policy.BanView]
    missing: list[str] = field(default_factory=list)
    to_dict = _as_dict


def _bans(g) -> list[policy.BanView]:
    # an operator's ban carries reason `banned`; say so
    return [replace(b, reason="operator") if b.reason == abi.Reason.BANNED.label else b for b in g.read_bans(_now_ns())]


_check_ttl = vocab.check_ban_ttl


def ban_add(ifname: str | None, addrs: list[str], ttl_s: float) -> BanResult:
    ttl = _check_ttl(ttl_s)
    parsed = list(dict.fromkeys(parse_address(a, "source address") for a in addrs))
    if not parsed:
        raise UserError("give at least one address")
    with locked_guard(ifname) as g:
        g.ban(parsed, ttl)
        return BanResult(g.iface.name, "add", len(parsed), _bans(g))


def ban_del(ifname: str | None, addrs: list[str]) -> BanResult:
    parsed = list(dict.fromkeys(parse_address(a, "source address") for a in addrs))
    if not parsed:
        raise UserError("give at least one address")
    with locked_guard(ifname) as g:
        removed, missing = g.unban(parsed)
        return BanResult(g.iface.name, "del", removed, _bans(g), missing)


def ban_list(ifname: str | None) -> BanResult:
    with open_guard(ifname) as g:
        return BanResult(g.iface.name, "list", 0, _bans(g))
