"""Set and show the protection levels of an interface's addresses (levels.py has the presets).

The level of each address is kept in the interface state ("levels"): `export` shows it, the
daemon's mitigation reads it. Setting a level writes its values; later settings win.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from . import forward, levels, policy, state
from .levels import PRESETS, STATE_KEY, udp_ports
from .protection import _select_protected, locked_guard, open_guard


@dataclass(frozen=True)
class LevelView:
    protected: str
    level: str | None
    adjusted: bool  # the policy differs from the preset: the operator changed it since
    preset: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LevelResult:
    iface: str
    action: str
    addresses: list[LevelView]

    def to_dict(self) -> dict:
        return {"iface": self.iface, "action": self.action, "addresses": [a.to_dict() for a in self.addresses]}


def _views(g, st: dict) -> list[LevelView]:
    levels = st.get(STATE_KEY, {})
    rules = [r.rule for r in forward.stored_rules(g.iface.name, st)]
    plims = g.read_port_limits()
    out = []
    for a in g.protected_addrs():
        lv = levels.get(str(a))
        if lv not in PRESETS:
            out.append(LevelView(str(a), None, False, "-"))
            continue
        p = PRESETS[lv]
        cur = g.read_address_policy(a)
        adjusted = (cur.limits != p.limits.effective() or cur.syn.threshold_pps != p.syn.threshold_pps
                    or (p.block_other and "other" not in cur.blocked))
        for lo, hi in udp_ports(rules, a):
            for port in range(lo, hi + 1):
                have = plims.get((str(a), "udp", port))
                want = p.udp_port.effective() if p.udp_port else None
                adjusted |= (have.effective() if have else None) != want
        out.append(LevelView(str(a), lv, adjusted, p.describe()))
    return out


def set_level(ifname: str | None, level: str, protected: str | None = None) -> LevelResult:
    levels.preset(level)
    with locked_guard(ifname) as g:
        addrs = _select_protected(g, protected)
        st = state.read_state(g.iface) or {}
        rules = [r.rule for r in forward.stored_rules(g.iface.name, st)]
        apply_locked(g, addrs, level, rules)
        st = state.read_state(g.iface) or {}
        return LevelResult(g.iface.name, "set", _views(g, st))


def apply_locked(g, addrs, level: str, rules) -> None:
    """Write the level's values for addrs and remember it (the caller holds the lock)."""
    p = levels.preset(level)
    for a in addrs:
        g.write_address_policy(a, levels.address_policy(level, g.read_address_policy(a)))
        for lo, hi in udp_ports(rules, a):
            g.write_port_limits(a, "udp", lo, hi, p.udp_port)
    st = state.read_state(g.iface) or {}
    st.setdefault(STATE_KEY, {}).update({str(a): level for a in addrs})
    state.write_state(g.iface, st)
    known = st[STATE_KEY]
    if levels.fragments_dropped(known.get(a) for a in g.protected()):
        pol = g.read_global_policy()
        if not pol.drop_fragments:
            g.write_global_policy(replace(pol, drop_fragments=True), pol)


def show(ifname: str | None) -> LevelResult:
    with open_guard(ifname) as g:
        return LevelResult(g.iface.name, "show", _views(g, state.read_state(g.iface) or {}))


