"""Set and show the protection levels of an interface's addresses (levels.py has the presets).

The level of each address is kept in the interface state ("levels"): `export` shows it, the
daemon's mitigation reads it. Setting a level is an edit of the desired spec (imperative.set_level).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..nat import forward
from .. import state
from ..levels import PRESETS, udp_ports
from ..protection import open_guard


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


def views(g, st: dict) -> list[LevelView]:
    levels = state.get(st, state.LEVELS)
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
        adjusted = (
            cur.limits != p.limits.effective()
            or cur.syn.threshold_pps != p.syn.threshold_pps
            or (p.block_other and "other" not in cur.blocked)
        )
        for lo, hi in udp_ports(rules, a):
            for port in range(lo, hi + 1):
                have = plims.get((str(a), "udp", port))
                want = p.udp_port.effective() if p.udp_port else None
                adjusted |= (have.effective() if have else None) != want
        out.append(LevelView(str(a), lv, adjusted, p.describe()))
    return out


def show(ifname: str | None) -> LevelResult:
    with open_guard(ifname) as g:
        return LevelResult(g.iface.name, "show", views(g, state.read_state(g.iface) or {}))
