"""Verified clients and the admission budgets (knowngood.h, budget.h): the `verify` verbs.

`verify set` edits the interface's desired spec (config.InterfaceSpec.verify: stored, fsynced)
and the reconciler writes it (reconcile.realise → write_differences); `verify show` reads the
live settings and counters through the map owner (guard.py). The daemon's UDP-learning switch is runtime
state and never part of the spec. No click, no rich.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..kernel import abi
from .. import policy, protection, reconcile
from ..model.desired import VERIFY_KEYS
from ..errors import UserError


@dataclass(frozen=True)
class VerifyView:
    iface: str
    settings: dict  # VERIFY_KEYS → value; 0 = the data path's default
    effective: dict  # the same with the defaults filled in
    udp_learning: bool  # the daemon's switch (off while it sees an attack)
    verified: dict  # "tcp", "udp", "tcp+udp", "untrusted" → live entries
    budget: dict  # totals: admitted / dropped (unverified) / verified (never charged)
    services: list[dict]  # per UDP or TCP service: protected, port, rate, admitted, dropped, verified, proto
    verified_drops: dict  # "first, do no harm": reason or filter → {dropped, exempted} (nonzero only)


_DEFAULTS = {
    "budget_udp_pps": abi.BUDGET_UDP_PPS,
    "budget_tcp_syns": abi.BUDGET_TCP_SYNS,
    "tcp_pps": abi.VERIFIED_TCP_PPS,
    "tcp_burst": abi.VERIFIED_TCP_BURST,
    "udp_pps": abi.VERIFIED_UDP_PPS,
    "udp_burst": abi.VERIFIED_UDP_BURST,
    "udp_peace_pps": abi.UDP_PEACE_PPS,
    "spoof_ban_s": abi.SPOOF_BAN_S,
}


def effective(v: policy.VerifySettings) -> dict:
    """v's values with the data path's defaults for the zeros."""
    return {k: (getattr(v, k) or _DEFAULTS[k]) if k in _DEFAULTS else getattr(v, k) for k in VERIFY_KEYS}


def _view(g) -> VerifyView:
    cur = g.read_verify_settings()
    c = g.verified_counters()
    services = [asdict(b) for b in g.read_budgets()]
    return VerifyView(
        g.iface.name,
        {k: getattr(cur, k) for k in VERIFY_KEYS},
        effective(cur),
        cur.udp_learning,
        c["verified"],
        c["budget"],
        services,
        c["verified_drops"],
    )


def show(ifname: str | None) -> VerifyView:
    with protection.open_guard(ifname) as g:
        return _view(g)


def verify_set(ifname: str | None, **changes) -> VerifyView:
    """Change the verify settings in the interface's desired spec (stored first), then the
    reconciler writes the difference (reconcile.edit: one writer)."""
    bad = sorted(set(changes) - set(VERIFY_KEYS))
    if bad:
        raise UserError(f"unknown verify setting {bad[0]!r} (use {', '.join(VERIFY_KEYS)})")
    if not changes:
        raise UserError("nothing to set: give at least one setting")
    replace(policy.VerifySettings(), **changes)  # validates before anything is stored
    return reconcile.edit(
        ifname, lambda s, g: replace(s, verify=replace(s.verify, **changes)), lambda g, old, new, notes: _view(g)
    )
