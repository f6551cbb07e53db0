"""The imperative verbs (`block add`, `limit set`, `forward add`, `level`, …): one writer.

Each verb is an edit of the interface's desired spec (config.InterfaceSpec), spec' = f(spec):
reconcile.edit opens the maps once, applies the edit (which validates, so bad input stores and
writes nothing), stores spec' (fsynced), and has the reconciler's writer (write_differences)
realise it; the verb's result is read back from the same open maps. Dynamic state (list entries
with a TTL, bans) goes to the map owner directly. Validators and result types stay with their
subject (protection, cleansing, levelset, connlimit, forward). No click, no rich.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, replace
from pathlib import Path

from . import cleansing, levelset
from .. import fastfwd, guard, levels, policy, protection, reconcile, state
from ..model.desired import AddressSpec, ForwardSpec, InterfaceSpec, norm_port_limits, norm_port_runs
from ..model import vocab
from ..nat import connlimit, forward, nft as nat
from ..observe import events
from ..errors import UserError
from ..prefixes import read_prefix_file


def _addrs(g, protected: str | None) -> list:
    """The addresses --protected selects (all without it); an unknown one is refused."""
    return protection._select_protected(g, protected)


def _each_of(s: InterfaceSpec, addrs, fn) -> InterfaceSpec:
    sel = set(addrs)
    return replace(s, addresses=tuple(fn(a) if a.address in sel else a for a in s.addresses))


def _port_limits(a: AddressSpec, proto: str, lo: int, hi: int, lim: policy.Limits | None) -> AddressSpec:
    per = {(p, n): lm for p, plo, phi, lm in a.port_limits for n in range(plo, phi + 1)}
    for n in range(lo, hi + 1):
        if lim is None:
            per.pop((proto, n), None)
        else:
            per[(proto, n)] = lim
    return replace(a, port_limits=norm_port_limits([(p, n, n, lm) for (p, n), lm in per.items()]))


# ---- lists and ports (protection.py) ----


def _lists(spec: InterfaceSpec, which: str, prefixes, permanent: bool) -> InterfaceSpec:
    cur = getattr(spec, which)
    new = cur | frozenset(prefixes) if permanent else cur - frozenset(prefixes)
    return replace(spec, **{which: new})  # an entry refreshed with a TTL is dynamic from then on


def _list_result(action: str, which: str, io: reconcile.ListIO, normalised: list[str]):
    return lambda g, old, new, notes: protection.ListChangeResult(
        g.iface.name, which, action, io.added, io.updated, io.removed, io.missing, normalised
    )


def list_add(which: str, ifname: str | None, cidrs: list[str], ttl: float | None = None, force: bool = False):
    """Permanent entries (no ttl) join the spec's list; entries with a TTL are dynamic (they
    leave it). Every named entry is written (an existing one keeps its hit count)."""
    prefixes, normalised = protection.parse_many(cidrs)
    expires = protection.check_ttl(ttl)
    protection.check_whole_family(which, prefixes, force)
    io = reconcile.ListIO(which, upsert=prefixes, expires_ns=expires)
    return reconcile.edit(
        ifname,
        lambda s, g: _lists(s, which, prefixes, ttl is None),
        _list_result("add", which, io, normalised),
        io=io,
        dynamic=lambda g: g.sweep_expired(which),
    )


def list_del(which: str, ifname: str | None, cidrs: list[str]):
    prefixes, normalised = protection.parse_many(cidrs)
    io = reconcile.ListIO(which, delete=prefixes)

    def result(g, old, new, notes):
        g.sweep_expired(which)
        return _list_result("del", which, io, normalised)(g, old, new, notes)

    return reconcile.edit(ifname, lambda s, g: _lists(s, which, prefixes, False), result, io=io)


def list_load(which: str, ifname: str | None, path: str | Path, ttl: float | None = None, force: bool = False):
    pf = read_prefix_file(path)
    expires = protection.check_ttl(ttl)
    protection.check_whole_family(which, pf.prefixes, force)
    io = reconcile.ListIO(which, upsert=pf.prefixes, expires_ns=expires)
    note = [f"{pf.normalised} prefixes had host bits set and were normalised"] if pf.normalised else []
    return reconcile.edit(
        ifname, lambda s, g: _lists(s, which, pf.prefixes, ttl is None), _list_result("load", which, io, note), io=io
    )


def ports_change(ifname: str | None, proto: str, port_range: str, protected: str | None, open_: bool):
    lo, hi = protection.check_port_run(proto, port_range)
    changed = [0]

    def one(a: AddressSpec) -> AddressSpec:
        ports = {(p, n) for p, plo, phi in a.open_ports for n in range(plo, phi + 1)}
        run = {(proto, n) for n in range(lo, hi + 1)}
        new = ports | run if open_ else ports - run
        changed[0] += len(new ^ ports)
        return replace(a, open_ports=norm_port_runs([(p, n, n) for p, n in new]))

    return reconcile.edit(
        ifname,
        lambda s, g: _each_of(s, _addrs(g, protected), one),
        lambda g, old, new, notes: protection.PortResult(
            g.iface.name, "open" if open_ else "close", changed[0], protection.port_runs(g)
        ),
    )


# ---- cleansing (the result types and validators are cleansing.py's) ----


def limit_set(ifname: str | None, limits: policy.Limits, protected: str | None = None, port: str | None = None):
    """Replace the limits of every selected address (or of its ports PROTO:LO-HI) by `limits`."""
    cleansing.check_limit_set(limits)
    run = vocab.parse_port_spec(port) if port else None
    changed = []

    def edit(s: InterfaceSpec, g) -> InterfaceSpec:
        addrs = _addrs(g, protected)
        if run is None:
            changed.append(len(addrs))
            return _each_of(s, addrs, lambda a: replace(a, limits=limits.effective()))
        g.check_port_limits_room(addrs, *run)
        changed.append(len(addrs) * (run[2] - run[1] + 1))
        return _each_of(s, addrs, lambda a: _port_limits(a, *run, limits))

    return reconcile.edit(
        ifname,
        edit,
        lambda g, old, new, notes: cleansing.LimitResult(g.iface.name, "set", changed[0], cleansing.limit_views(g)),
    )


def limit_clear(ifname: str | None, protected: str | None = None, port: str | None = None, all_ports: bool = False):
    """Remove the limits of the selected addresses (or of their ports PROTO:LO-HI; with all_ports
    every per-port override as well)."""
    run = vocab.parse_port_spec(port) if port else None
    changed = [0]

    def one(a: AddressSpec) -> AddressSpec:
        if run is None:
            changed[0] += a.limits != policy.Limits().effective()
            a = replace(a, limits=policy.Limits())
        else:
            had = {(p, n) for p, lo, hi, _ in a.port_limits for n in range(lo, hi + 1)}
            changed[0] += sum(1 for n in range(run[1], run[2] + 1) if (run[0], n) in had)
            a = _port_limits(a, *run, None)
        if all_ports:
            changed[0] += sum(hi - lo + 1 for _, lo, hi, _ in a.port_limits)
            a = replace(a, port_limits=())
        return a

    return reconcile.edit(
        ifname,
        lambda s, g: _each_of(s, _addrs(g, protected), one),
        lambda g, old, new, notes: cleansing.LimitResult(g.iface.name, "clear", changed[0], cleansing.limit_views(g)),
    )


def proto_change(ifname: str | None, proto: str, block: bool, protected: str | None = None):
    p = cleansing.check_proto(proto)
    changed = [0]

    def one(a: AddressSpec) -> AddressSpec:
        new = a.blocked | {p} if block else a.blocked - {p}
        changed[0] += new != a.blocked
        return replace(a, blocked=frozenset(new))

    return reconcile.edit(
        ifname,
        lambda s, g: _each_of(s, _addrs(g, protected), one),
        lambda g, old, new, notes: cleansing.ProtoResult(
            g.iface.name, "block" if block else "unblock", changed[0], cleansing.blocked_view(g)
        ),
    )


def syn_set(
    ifname: str | None,
    threshold_pps: int,
    auth_window: str | None = None,
    keep_s: int | None = None,
    protected: str | None = None,
    mode: str = "cookie",
    always: bool = False,
):
    """Above threshold_pps SYNs/s (0: off; or at any rate with `always`) to an address, SYNs
    are answered with SYN cookies (mode cookie) or sources must retransmit (mode retransmit)."""
    syn = cleansing.syn_policy(threshold_pps, auth_window, keep_s, mode, always)
    changed = []

    def edit(s: InterfaceSpec, g) -> InterfaceSpec:
        addrs = _addrs(g, protected)
        changed.append(len(addrs))
        return _each_of(s, addrs, lambda a: replace(a, syn=syn))

    return reconcile.edit(
        ifname,
        edit,
        lambda g, old, new, notes: cleansing.SynResult(
            g.iface.name, "set", changed[0], cleansing.syn_views(g), g.cookie_counts()
        ),
    )


def _global(ifname: str | None, change, result):
    """An edit of the interface-wide policy: result(iface name, old policy, new policy) — the
    new one as change() made it."""
    made = []

    def edit(s: InterfaceSpec, g) -> InterfaceSpec:
        made.append(change(s.global_))
        return replace(s, global_=made[0])

    return reconcile.edit(ifname, edit, lambda g, old, new, notes: result(g.iface.name, old.global_, made[0]))


def reflection_change(ifname: str | None, action: str, ports=()):
    return _global(
        ifname,
        cleansing.reflection_global(action, ports),
        lambda name, old, new: cleansing.ReflectionResult(
            name,
            action,
            new.reflection,
            sorted(new.reflection_ports),
            sorted(old.reflection_ports ^ new.reflection_ports),
        ),
    )


def filter_add(ifname: str | None, flt: policy.Filter, position: int | None = None):
    """Insert flt at 1-based `position` (default: last)."""
    where: list[int] = []
    return _global(
        ifname,
        cleansing.filter_add_global(flt, position, where),
        lambda name, old, new: cleansing.FilterResult(name, "add", where[0], cleansing.filter_views(new)),
    )


def filter_del(ifname: str | None, index: int):
    return _global(
        ifname,
        cleansing.filter_del_global(index),
        lambda name, old, new: cleansing.FilterResult(name, "del", index, cleansing.filter_views(new)),
    )


def monitor_change(ifname: str | None, on: bool, reasons=()):
    """Monitor (count as would_drop and pass) the given drop reasons, default all; off: stop."""
    return _global(
        ifname,
        cleansing.monitor_global(on, reasons),
        lambda name, old, new: cleansing.monitor_view(name, "on" if on else "off", new.monitor_mask),
    )


def fragments_set(ifname: str | None, drop: bool):
    return _global(
        ifname,
        cleansing.fragments_global(drop),
        lambda name, old, new: cleansing.FragmentsResult(name, "drop" if drop else "pass", new.drop_fragments),
    )


# ---- levels (levelset.py) ----


def set_level(ifname: str | None, level: str, protected: str | None = None):
    """The level's values for the selected addresses (later settings win), its UDP budget on
    their forwarded UDP ports, and the fragment policy it asks for."""
    p = levels.preset(level)

    def edit(s: InterfaceSpec, g) -> InterfaceSpec:
        rules = [f.rule for f in s.forwards]

        def one(a: AddressSpec) -> AddressSpec:
            pol = levels.address_policy(level, a.policy)
            a = replace(a, blocked=pol.blocked, limits=pol.limits.effective(), syn=pol.syn, level=level)
            for lo, hi in levels.udp_ports(rules, a.address):
                a = _port_limits(a, "udp", lo, hi, p.udp_port)
            return a

        s = _each_of(s, _addrs(g, protected), one)
        if levels.fragments_dropped(a.level for a in s.addresses) and not s.global_.drop_fragments:
            s = replace(s, global_=replace(s.global_, drop_fragments=True))
        return s

    return reconcile.edit(
        ifname,
        edit,
        lambda g, old, new, notes: levelset.LevelResult(
            g.iface.name, "set", levelset.views(g, state.read_state(g.iface) or {})
        ),
    )


# ---- connection limits (connlimit.py) ----


def _connlimit_result(action: str):
    return lambda g, old, new, notes: connlimit.ConnLimitResult(
        g.iface.name, action, connlimit.limits_of(state.read_state(g.iface) or {})
    )


def connlimit_set(ifname: str | None, lim: nat.ConnLimits, protected: str | None = None):
    """Connection limits of the selected addresses (the NAT table's connlimit chain)."""
    connlimit.check_limits(lim)
    stored = forward.stored_connlimit(asdict(lim))
    return reconcile.edit(
        ifname,
        lambda s, g: _each_of(s, _addrs(g, protected), lambda a: replace(a, connlimit=stored)),
        _connlimit_result("set"),
    )


def connlimit_clear(ifname: str | None, protected: str | None = None):
    return reconcile.edit(
        ifname,
        lambda s, g: _each_of(s, _addrs(g, protected), lambda a: replace(a, connlimit=None)),
        _connlimit_result("clear"),
    )


# ---- forwarding (forward.py) ----


def forward_add(
    proto: str,
    ports: str,
    to: str,
    *,
    ifname: str | None = None,
    protected: str | None = None,
    weights: str | None = None,
    backup: str | None = None,
    persist_s: int = 0,
    preserve_client_ip: bool = False,
    udp_probe: str | None = None,
):
    """A forwarding rule joins the spec (checked against every interface's rules and protected
    addresses); a UDP rule of an address with a protection level gives the level's budget to its
    ports that have no limit of their own (levels.py). The reconciler writes nft, ports, sysctls."""
    probe = forward.check_add(proto, udp_probe)
    made: dict = {}

    def edit(s: InterfaceSpec, g) -> InterfaceSpec:
        st = state.read_state(g.iface) or {}
        rule = forward.build_rule(
            proto,
            ports,
            to,
            protected,
            st,
            s.name,
            weights=weights,
            backup=backup,
            persist_s=persist_s,
            preserve_client_ip=preserve_client_ip,
        )
        existing = forward.rules_elsewhere(s.name, st, rule)
        made.update(rule=rule, first=not existing and not s.forwards, notes=[])
        same = [f for f in s.forwards if f.rule == rule]
        if same and same[0].udp_probe == probe:
            made["notes"] = ["rule exists already; unchanged"]
            return s
        s = replace(s, forwards=(*(f for f in s.forwards if f.rule != rule), ForwardSpec(rule, probe)))
        a = s.address(rule.protected)
        lv = levels.PRESETS.get(a.level) if a is not None and a.level else None
        if a is not None and rule.proto == "udp" and lv is not None and lv.udp_port is not None:
            have = {(p, n) for p, lo, hi, _ in a.port_limits for n in range(lo, hi + 1)}
            for n in range(rule.port_lo, rule.port_hi + 1):  # the level's budget on ports without a limit
                if ("udp", n) not in have:
                    a = _port_limits(a, "udp", n, n, lv.udp_port)
            s = replace(s, addresses=tuple(a if x.address == a.address else x for x in s.addresses))
            made["notes"].append(
                f"level {lv.level}: {lv.udp_port.src_pps:,} pps per source on udp {rule.port_lo}"
                + (f"-{rule.port_hi}" if rule.port_hi != rule.port_lo else "")
            )
        if made["first"]:
            made["notes"].append(
                "enabled net.ipv4.ip_forward and net.ipv6.conf.all.forwarding; net.netfilter.nf_conntrack_tcp_loose=0"
            )
        return s

    def result(g, old, new, notes):
        changed = old != new
        return forward.ForwardChangeResult(g.iface.name, "add", made["rule"].key, changed, made["notes"])

    return reconcile.edit(ifname, edit, result)


def forward_fastpath(ifname: str, via: str | None = None, off: bool = False) -> fastfwd.FastPathResult:
    """`xdpguard forward fastpath IFACE --via IF | --off`: the spec's `fast_path` set (or
    cleared), realised by the reconciler (return program on IF, tail-call slot, sysctl; off: the
    table emptied, the return program taken off), then one sync of the flows from conntrack.
    Without --via, the stored `via` is kept (one sync). `xdpguard run` syncs every second."""
    seen: dict = {}

    def edit(s: InterfaceSpec, g) -> InterfaceSpec:
        seen["entries"] = len(g.fastfwd_entries()) if g.fastfwd_compiled() else 0
        if off:
            return replace(s, fast_path=None)
        want = via if via is not None else s.fast_path
        if want is None:
            raise UserError(f"the fast path is off on {s.name}; give --via BACKEND_IFACE to turn it on")
        fastfwd.check(g, want)
        return replace(s, fast_path=want)

    def result(g, old, new, notes):
        if new.fast_path is None:
            counters = g.fastfwd_counters() if g.fastfwd_compiled() else {}
            return fastfwd.FastPathResult(g.iface.name, None, 0, 0, 0, seen["entries"], counters, notes)
        flows, written, deleted, refreshed = fastfwd.sync_guard(g)
        return fastfwd.FastPathResult(
            g.iface.name,
            new.fast_path,
            guard.pinned_fwd_id(g.iface),
            flows,
            written,
            deleted,
            g.fastfwd_counters(),
            notes,
            refreshed,
        )

    return reconcile.edit(ifname, edit, result)


def forward_delete(proto: str, ports: str, *, ifname: str | None = None, protected: str | None = None):
    lo, hi = forward.check_delete(proto, ports)
    if protected is not None:
        try:
            want = ipaddress.ip_address(protected.strip())
        except ValueError:
            raise UserError(f"protected address {protected!r} is not an IP address") from None
    gone: list = []

    def edit(s: InterfaceSpec, g) -> InterfaceSpec:
        match = [
            f
            for f in s.forwards
            if f.rule.proto == proto
            and (f.rule.port_lo, f.rule.port_hi) == (lo, hi)
            and (protected is None or f.rule.protected == want)
        ]
        what = f"{proto} {ports}" + (f" on {protected}" if protected else "")
        if not match:
            raise UserError(f"no forwarding rule {what} on {s.name}")
        if len(match) > 1:
            raise UserError(f"several rules match {what} ({', '.join(f.rule.key for f in match)}); give --protected")
        gone.append(match[0].rule)
        return replace(s, forwards=tuple(f for f in s.forwards if f is not match[0]))

    def result(g, old, new, notes):  # (the reconciler's count of rules is not this verb's news)
        return forward.ForwardChangeResult(
            g.iface.name, "del", gone[0].key, True, [n for n in notes if not n.startswith(f"{g.iface.name}: ")]
        )

    return reconcile.edit(ifname, edit, result)


# ---- attack thresholds (events.py) ----


def set_event_config(iface: state.Iface, update) -> events.EventConfig:
    """The interface's attack thresholds: update(thresholds) → thresholds, stored, then realised
    (the interface record the detector reads)."""
    return reconcile.edit(
        iface.name, lambda s, g: replace(s, events=update(s.events)), lambda g, old, new, notes: new.events
    )
