"""The imperative verbs (`block add`, `limit set`, `forward add`, `level`, …), store first.

Each verb here is the command of protection / cleansing / levelset / connlimit / forward /
events plus its effect on the interface's desired spec (config.InterfaceSpec): reconcile.change
stores that predicted spec (fsynced) before the command touches the kernel, puts it back when
the command fails, and records the realised state after it. The predictions validate with the
commands' own checks, so bad input stores nothing. No click, no rich.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, replace
from pathlib import Path

from . import (cleansing, config, connlimit, events, forward, forwarding, levels, levelset, nat, policy,
               protection, reconcile, state, vocab)
from .config import AddressSpec, ForwardSpec, InterfaceSpec
from .prefixes import parse_address, read_prefix_file


def _selected(spec: InterfaceSpec, protected: str | None) -> set:
    """The addresses a verb's --protected selects; an unknown one selects nothing (the command
    itself reports it, and the store is put back)."""
    if protected is None:
        return set(spec.protected)
    return {parse_address(protected, "protected address")} & set(spec.protected)


def _each(spec: InterfaceSpec, protected: str | None, fn) -> InterfaceSpec:
    sel = _selected(spec, protected)
    return replace(spec, addresses=tuple(fn(a) if a.address in sel else a for a in spec.addresses))


def _port_limits(a: AddressSpec, proto: str, lo: int, hi: int, lim: policy.Limits | None) -> AddressSpec:
    per = {(p, n): lm for p, plo, phi, lm in a.port_limits for n in range(plo, phi + 1)}
    for n in range(lo, hi + 1):
        if lim is None:
            per.pop((proto, n), None)
        else:
            per[(proto, n)] = lim
    return replace(a, port_limits=config.norm_port_limits([(p, n, n, lm) for (p, n), lm in per.items()]))


# ---- lists and ports (protection.py) ----


def _lists(spec: InterfaceSpec, which: str, prefixes, permanent: bool) -> InterfaceSpec:
    cur = getattr(spec, which)
    new = cur | frozenset(prefixes) if permanent else cur - frozenset(prefixes)
    return replace(spec, **{which: new})  # an entry refreshed with a TTL is dynamic from then on


def list_add(which: str, ifname: str | None, cidrs: list[str], ttl: float | None = None, force: bool = False):
    prefixes, _ = protection.parse_many(cidrs)
    protection.check_ttl(ttl)
    protection.check_whole_family(which, prefixes, force)
    return reconcile.change(ifname, lambda s: _lists(s, which, prefixes, ttl is None),
                            lambda: protection.list_add(which, ifname, cidrs, ttl), lists=True)


def list_del(which: str, ifname: str | None, cidrs: list[str]):
    prefixes, _ = protection.parse_many(cidrs)
    return reconcile.change(ifname, lambda s: _lists(s, which, prefixes, False),
                            lambda: protection.list_del(which, ifname, cidrs), lists=True)


def list_load(which: str, ifname: str | None, path: str | Path, ttl: float | None = None, force: bool = False):
    pf = read_prefix_file(path)
    protection.check_ttl(ttl)
    protection.check_whole_family(which, pf.prefixes, force)
    return reconcile.change(ifname, lambda s: _lists(s, which, pf.prefixes, ttl is None),
                            lambda: protection.list_load(which, ifname, path, ttl, parsed=pf), lists=True)


def ports_change(ifname: str | None, proto: str, port_range: str, protected: str | None, open_: bool):
    lo, hi = protection.check_port_run(proto, port_range)

    def predict(s: InterfaceSpec) -> InterfaceSpec:
        def one(a: AddressSpec) -> AddressSpec:
            ports = {(p, n) for p, plo, phi in a.open_ports for n in range(plo, phi + 1)}
            run = {(proto, n) for n in range(lo, hi + 1)}
            ports = ports | run if open_ else ports - run
            return replace(a, open_ports=config.norm_port_runs([(p, n, n) for p, n in ports]))
        return _each(s, protected, one)

    return reconcile.change(ifname, predict, lambda: protection.ports_change(ifname, proto, port_range, protected, open_))


# ---- cleansing (cleansing.py) ----


def limit_set(ifname: str | None, limits: policy.Limits, protected: str | None = None, port: str | None = None):
    cleansing.check_limit_set(limits)
    run = vocab.parse_port_spec(port) if port else None

    def one(a: AddressSpec) -> AddressSpec:
        return replace(a, limits=limits.effective()) if run is None else _port_limits(a, *run, limits)

    return reconcile.change(ifname, lambda s: _each(s, protected, one),
                            lambda: cleansing.limit_set(ifname, limits, protected, port))


def limit_clear(ifname: str | None, protected: str | None = None, port: str | None = None, all_ports: bool = False):
    run = vocab.parse_port_spec(port) if port else None

    def one(a: AddressSpec) -> AddressSpec:
        a = replace(a, limits=policy.Limits()) if run is None else _port_limits(a, *run, None)
        return replace(a, port_limits=()) if all_ports else a

    return reconcile.change(ifname, lambda s: _each(s, protected, one),
                            lambda: cleansing.limit_clear(ifname, protected, port, all_ports))


def proto_change(ifname: str | None, proto: str, block: bool, protected: str | None = None):
    p = cleansing.check_proto(proto)

    def one(a: AddressSpec) -> AddressSpec:
        return replace(a, blocked=a.blocked | {p} if block else a.blocked - {p})

    return reconcile.change(ifname, lambda s: _each(s, protected, one),
                            lambda: cleansing.proto_change(ifname, proto, block, protected))


def syn_set(ifname: str | None, threshold_pps: int, auth_window: str | None = None, keep_s: int | None = None,
            protected: str | None = None, mode: str = "cookie", always: bool = False):
    syn = cleansing.syn_policy(threshold_pps, auth_window, keep_s, mode, always)
    return reconcile.change(ifname, lambda s: _each(s, protected, lambda a: replace(a, syn=syn)),
                            lambda: cleansing.syn_set(ifname, threshold_pps, auth_window, keep_s, protected, mode,
                                                      always))


def _global(ifname: str | None, change, write):
    return reconcile.change(ifname, lambda s: replace(s, global_=change(s.global_)), write)


def reflection_change(ifname: str | None, action: str, ports=()):
    return _global(ifname, cleansing.reflection_global(action, ports),
                   lambda: cleansing.reflection_change(ifname, action, ports))


def filter_add(ifname: str | None, flt: policy.Filter, position: int | None = None):
    return _global(ifname, cleansing.filter_add_global(flt, position), lambda: cleansing.filter_add(ifname, flt, position))


def filter_del(ifname: str | None, index: int):
    return _global(ifname, cleansing.filter_del_global(index), lambda: cleansing.filter_del(ifname, index))


def monitor_change(ifname: str | None, on: bool, reasons=()):
    return _global(ifname, cleansing.monitor_global(on, reasons), lambda: cleansing.monitor_change(ifname, on, reasons))


def fragments_set(ifname: str | None, drop: bool):
    return _global(ifname, cleansing.fragments_global(drop), lambda: cleansing.fragments_set(ifname, drop))


# ---- levels (levelset.py) ----


def set_level(ifname: str | None, level: str, protected: str | None = None):
    p = levels.preset(level)

    def predict(s: InterfaceSpec) -> InterfaceSpec:
        rules = [f.rule for f in s.forwards]

        def one(a: AddressSpec) -> AddressSpec:
            pol = levels.address_policy(level, a.policy)
            a = replace(a, blocked=pol.blocked, limits=pol.limits.effective(), syn=pol.syn, level=level)
            for lo, hi in levels.udp_ports(rules, a.address):
                a = _port_limits(a, "udp", lo, hi, p.udp_port)
            return a

        s = _each(s, protected, one)
        if levels.fragments_dropped(a.level for a in s.addresses) and not s.global_.drop_fragments:
            s = replace(s, global_=replace(s.global_, drop_fragments=True))
        return s

    return reconcile.change(ifname, predict, lambda: levelset.set_level(ifname, level, protected))


# ---- connection limits (connlimit.py) ----


def connlimit_set(ifname: str | None, lim: nat.ConnLimits, protected: str | None = None):
    connlimit.check_limits(lim)
    stored = forward.stored_connlimit(asdict(lim))
    return reconcile.change(ifname, lambda s: _each(s, protected, lambda a: replace(a, connlimit=stored)),
                            lambda: connlimit.set_limits(ifname, lim, protected))


def connlimit_clear(ifname: str | None, protected: str | None = None):
    return reconcile.change(ifname, lambda s: _each(s, protected, lambda a: replace(a, connlimit=None)),
                            lambda: connlimit.clear(ifname, protected))


# ---- forwarding (forward.py) ----


def forward_add(proto: str, ports: str, to: str, *, ifname: str | None = None, protected: str | None = None,
                weights: str | None = None, backup: str | None = None, persist_s: int = 0,
                preserve_client_ip: bool = False, udp_probe: str | None = None):
    probe = forward.check_add(proto, udp_probe)

    def predict(s: InterfaceSpec) -> InterfaceSpec:
        st = state.read_state(state.resolve_iface(s.name)) or {}
        rule = forward.build_rule(proto, ports, to, protected, st, s.name, weights=weights, backup=backup,
                                  persist_s=persist_s, preserve_client_ip=preserve_client_ip)
        others = [f.rule for f in s.forwards if f.rule != rule]
        try:  # what the command refuses is not stored (it says why, across interfaces)
            forwarding.check_backend_not_protected(rule, s.protected)
            forwarding.check_overlap(others, rule)
        except ValueError:
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
        return s

    return reconcile.change(ifname, predict, lambda: forward.add(
        proto, ports, to, ifname=ifname, protected=protected, weights=weights, backup=backup, persist_s=persist_s,
        preserve_client_ip=preserve_client_ip, udp_probe=udp_probe))


def forward_delete(proto: str, ports: str, *, ifname: str | None = None, protected: str | None = None):
    lo, hi = forward.check_delete(proto, ports)
    try:
        want = ipaddress.ip_address(protected.strip()) if protected is not None else None
    except ValueError:
        want = False  # the command reports it

    def predict(s: InterfaceSpec) -> InterfaceSpec:
        match = [f for f in s.forwards if f.rule.proto == proto and (f.rule.port_lo, f.rule.port_hi) == (lo, hi)
                 and (want is None or f.rule.protected == want)]
        if len(match) != 1 or want is False:
            return s  # the command reports it
        return replace(s, forwards=tuple(f for f in s.forwards if f is not match[0]))

    return reconcile.change(ifname, predict, lambda: forward.delete(proto, ports, ifname=ifname, protected=protected))


# ---- attack thresholds (events.py) ----


def set_event_config(iface: state.Iface, update) -> events.EventConfig:
    """events.set_config with the interface's desired thresholds stored first."""
    return reconcile.change(iface.name, lambda s: replace(s, events=update(s.events)),
                            lambda: events.set_config(iface, update))
