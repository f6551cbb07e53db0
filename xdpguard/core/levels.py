"""Protection levels: loose, normal, strict — presets derived from an address's forward rules.

A level is a starting point, not a mode: `xdpguard level LEVEL` writes the preset's values into
the address's policy (per-source limits, SYN defence, a per-port budget on every forwarded UDP
port) and remembers the level (interface state, "levels"), which also switches automatic
mitigation on or off for the address. The ports stay exactly the forwarded ones (forward rules
open their own ports; with any port open the port policy drops the rest) and TCP state
validation stays on. Settings made afterwards (`limit set`, `syn set`, `limit set --port`) win:
they change the values the level wrote, and `level show` then says "adjusted". Running `level`
again resets the address to the preset.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, replace

from . import forward, policy, state
from .errors import UserError
from .protection import _select_protected, locked_guard, open_guard

STATE_KEY = "levels"
LEVELS = ("loose", "normal", "strict")


@dataclass(frozen=True)
class Preset:
    level: str
    limits: policy.Limits  # per source, for the whole address
    syn: policy.SynPolicy
    udp_port: policy.Limits | None  # on every forwarded UDP port: the flood budget
    mitigation: bool

    def describe(self) -> str:
        lim = self.limits
        parts = [f"per source {lim.src_pps:,} pps" if lim.src_pps else "no per-source limit",
                 f"SYN threshold {self.syn.threshold_pps:,}/s" + (f", {lim.syn_src_pps}/s per source"
                                                                 if lim.syn_src_pps else ""),
                 ("forwarded UDP ports: " + f"{self.udp_port.src_pps:,} pps per source"
                  + (f", {self.udp_port.dst_pps:,} pps in all" if self.udp_port.dst_pps else ""))
                 if self.udp_port else "no UDP budget",
                 "mitigation on" if self.mitigation else "mitigation off"]
        return "; ".join(parts)


PRESETS = {
    "loose": Preset("loose", policy.Limits(), policy.SynPolicy(20_000), None, False),
    "normal": Preset("normal", policy.Limits(src_pps=20_000, syn_src_pps=100), policy.SynPolicy(2_000),
                     policy.Limits(src_pps=2_000), True),
    "strict": Preset("strict", policy.Limits(src_pps=5_000, syn_src_pps=20, ban_s=60), policy.SynPolicy(200),
                     policy.Limits(src_pps=500, dst_pps=20_000), True),
}
DEFAULT_LEVEL = "normal"


def preset(level: str) -> Preset:
    if level not in PRESETS:
        raise UserError(f"unknown level '{level}': use {', '.join(LEVELS)}")
    return PRESETS[level]


def udp_ports(rules, addr) -> list[tuple[int, int]]:
    """The forwarded UDP port ranges of one protected address."""
    return sorted({(r.port_lo, r.port_hi) for r in rules if r.proto == "udp" and r.protected == addr})


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
    plims = policy.read_port_limits(g.maps)
    out = []
    for a in g.protected_addrs():
        lv = levels.get(str(a))
        if lv not in PRESETS:
            out.append(LevelView(str(a), None, False, "-"))
            continue
        p = PRESETS[lv]
        cur = policy.read_address_policy(g.maps, a)
        adjusted = cur.limits != p.limits.effective() or cur.syn.threshold_pps != p.syn.threshold_pps
        for lo, hi in udp_ports(rules, a):
            for port in range(lo, hi + 1):
                have = plims.get((str(a), "udp", port))
                want = p.udp_port.effective() if p.udp_port else None
                adjusted |= (have.effective() if have else None) != want
        out.append(LevelView(str(a), lv, adjusted, p.describe()))
    return out


def set_level(ifname: str | None, level: str, protected: str | None = None) -> LevelResult:
    p = preset(level)
    with locked_guard(ifname) as g:
        addrs = _select_protected(g, protected)
        st = state.read_state(g.iface) or {}
        rules = [r.rule for r in forward.stored_rules(g.iface.name, st)]
        for a in addrs:
            cur = policy.read_address_policy(g.maps, a)
            policy.write_address_policy(g.maps, a, replace(cur, limits=p.limits, syn=replace(cur.syn, threshold_pps=p.syn.threshold_pps)))
            for lo, hi in udp_ports(rules, a):
                policy.write_port_limits(g.maps, a, "udp", lo, hi, p.udp_port)
        st.setdefault(STATE_KEY, {}).update({str(a): level for a in addrs})
        state.write_state(g.iface, st)
        return LevelResult(g.iface.name, "set", _views(g, st))


def show(ifname: str | None) -> LevelResult:
    with open_guard(ifname) as g:
        return LevelResult(g.iface.name, "show", _views(g, state.read_state(g.iface) or {}))


def mitigation_on(st: dict, addr: str) -> bool:
    """Automatic mitigation for an address: off only under a level that says so."""
    lv = (st or {}).get(STATE_KEY, {}).get(str(ipaddress.ip_address(addr)) if addr else addr)
    return PRESETS[lv].mitigation if lv in PRESETS else True
