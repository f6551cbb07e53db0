"""Verified clients and the admission budgets (knowngood.h, budget.h): the `verify` verbs.

`verify set` edits the interface's desired spec (config.InterfaceSpec.verify: stored, fsynced)
and the reconciler writes it (reconcile.realise → write_differences); `verify show` reads the
live settings and counters through policy's readers. The daemon's UDP-learning switch is runtime
state and never part of the spec. No click, no rich.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from . import abi, config, policy, protection, reconcile, store
from .errors import UserError


@dataclass(frozen=True)
class VerifyView:
    iface: str
    settings: dict  # config.VERIFY_KEYS → value; 0 = the data path's default
    effective: dict  # the same with the defaults filled in
    udp_learning: bool  # the daemon's switch (off while it sees an attack)
    verified: dict  # "tcp", "udp", "tcp+udp", "untrusted" → live entries
    budget: dict  # totals: admitted / dropped (unverified) / verified (never charged)
    services: list[dict]  # per UDP service: protected, port, rate, admitted, dropped, verified
    verified_drops: dict  # "first, do no harm": reason or filter → {dropped, exempted} (nonzero only)


_DEFAULTS = {"budget_udp_pps": abi.BUDGET_UDP_PPS, "tcp_pps": abi.VERIFIED_TCP_PPS,
             "tcp_burst": abi.VERIFIED_TCP_BURST, "udp_pps": abi.VERIFIED_UDP_PPS,
             "udp_burst": abi.VERIFIED_UDP_BURST, "udp_peace_pps": abi.UDP_PEACE_PPS,
             "spoof_ban_s": abi.SPOOF_BAN_S}


def effective(v: policy.VerifySettings) -> dict:
    """v's values with the data path's defaults for the zeros."""
    return {k: (getattr(v, k) or _DEFAULTS[k]) if k in _DEFAULTS else getattr(v, k) for k in config.VERIFY_KEYS}


def show(ifname: str | None) -> VerifyView:
    with protection.open_guard(ifname) as g:
        cur = policy.read_verify_settings(g.maps)
        c = policy.verified_counters(g.maps)
        services = [asdict(b) for b in policy.read_budgets(g.maps)]
        name = g.iface.name
    return VerifyView(name, {k: getattr(cur, k) for k in config.VERIFY_KEYS}, effective(cur), cur.udp_learning,
                      c["verified"], c["budget"], services, c["verified_drops"])


def verify_set(ifname: str | None, **changes) -> VerifyView:
    """Change the verify settings in the interface's desired spec, then realise it."""
    bad = sorted(set(changes) - set(config.VERIFY_KEYS))
    if bad:
        raise UserError(f"unknown verify setting {bad[0]!r} (use {', '.join(config.VERIFY_KEYS)})")
    if not changes:
        raise UserError("nothing to set: give at least one setting")
    replace(policy.VerifySettings(), **changes)  # validates before anything is stored
    name = protection.pick_iface(ifname)

    def write():
        spec = store.stored_interface(name)
        if spec is None:
            raise UserError(f"{name} has no stored desired state")
        reconcile.realise(spec, lists=False)

    reconcile.change(name, lambda s: replace(s, verify=replace(s.verify, **changes)), write)
    return show(name)
