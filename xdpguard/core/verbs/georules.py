"""`xdpguard geo block|allow|only|clear|mode|show`: the geo rules of protected addresses, store first.

Each verb is `spec' = f(spec)` on the interface's desired spec (AddressSpec.geo), through
reconcile.edit: stored (fsynced) before the kernel is touched, then realised by the reconciler's
writer (write_differences → write_geo). A rule that would drop the host's management address is
refused inside the edit unless --force. Bad input (a malformed or unknown country code, a
missing database, an address that is not protected) stores nothing and changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from .. import geo, protection, reconcile, state
from ..model.desired import InterfaceSpec
from ..errors import UserError

ACTIONS = {"block": geo.block, "allow": geo.allow, "only": geo.only}


@dataclass(frozen=True)
class GeoResult:
    iface: str
    action: str  # block | allow | only | clear | mode | show
    database: str
    rules: dict[str, dict]  # address → {"countries": [...], "only": bool, "mode": str, "text": str}; no rule: {}
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _rules(spec: InterfaceSpec) -> dict[str, dict]:
    out = {}
    for a in spec.addresses:
        g = a.geo
        out[str(a.address)] = (
            {}
            if g is None
            else {"countries": sorted(g.countries), "only": g.only, "mode": g.mode, "text": g.describe()}
        )
    return out


def _notes(spec: InterfaceSpec) -> list[str]:
    return geo.cc_notes(spec.addresses)


def _change(ifname: str | None, action: str, one, protected: str | None, force: bool, db: geo.GeoDB) -> GeoResult:
    def f(spec: InterfaceSpec, g) -> InterfaceSpec:
        sel = spec.selected(protected)
        new = replace(
            spec,
            addresses=tuple(replace(a, geo=geo.normal(one(a.geo))) if a.address in sel else a for a in spec.addresses),
        )
        if not force:
            mgmt = reconcile.management_addresses()
            if mgmt:
                geo.check_management([a for a in new.addresses if a.address in sel], db, mgmt)
        return new

    def result(g, before: InterfaceSpec, after: InterfaceSpec, notes: list[str]) -> GeoResult:
        return GeoResult(after.name, action, db.describe(), _rules(after), list(notes) or _notes(after))

    return reconcile.edit(ifname, f, result)


def change(
    ifname: str | None, action: str, codes: list[str], protected: str | None = None, force: bool = False
) -> GeoResult:
    """`geo block|allow|only CODE…`: block adds countries to a block rule (removes them from an
    only rule); allow does the reverse; only makes the rule "only these pass"."""
    fn = ACTIONS[action]
    db = geo.GeoDB.open()
    cs = geo.check_codes(codes, db)
    return _change(ifname, action, lambda g: fn(g, cs), protected, force, db)


def clear(ifname: str | None, protected: str | None = None) -> GeoResult:
    db = geo.GeoDB.open()
    return _change(ifname, "clear", lambda g: None, protected, True, db)


def set_mode(ifname: str | None, mode: str, protected: str | None = None) -> GeoResult:
    if mode not in geo.MODES:
        raise UserError(f"unknown geo mode '{mode}': use {' or '.join(geo.MODES)}")
    db = geo.GeoDB.open()
    return _change(ifname, "mode", lambda g: geo.with_mode(g, mode), protected, True, db)


def show(ifname: str | None) -> GeoResult:
    state.require_root()
    name = protection.pick_iface(ifname)
    spec = reconcile.export_iface(name, lists=False)
    if spec is None:
        raise UserError(f"{name} is not protected by xdpguard; run 'xdpguard attach {name}' first")
    return GeoResult(name, "show", geo.db_info(), _rules(spec), _notes(spec))
