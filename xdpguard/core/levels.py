"""Protection levels: loose, normal, strict — presets derived from an address's forward rules
(pure: the presets; levelset.py sets and shows them on an interface, desired/load.py applies them).

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
from dataclasses import dataclass

from . import policy, state
from .errors import UserError

STATE_KEY = state.LEVELS.key  # the old name (reconcile.py, cli/status.py spell the key through it)
LEVELS = ("loose", "normal", "strict")


@dataclass(frozen=True)
class Preset:
    level: str
    limits: policy.Limits  # per source, for the whole address
    syn: policy.SynPolicy
    udp_port: policy.Limits | None  # on every forwarded UDP port: the flood budget
    mitigation: bool
    # IP fragments to the interface's protected addresses dropped (interface-wide: only when no
    # address of the interface is at a level that keeps them). A spoofed fragment flood never
    # reassembles, has no ports to match, and costs the protector's kernel a reassembly queue each.
    drop_fragments: bool = False
    # IP protocols other than TCP, UDP and ICMP to the address dropped (reason `protocol`). Nothing
    # forwards them, and each spoofed source of one is a conntrack entry of the protector with a
    # 600 s generic timeout: t50's protocol mix filled the lab's 262,144-entry table in 3 s.
    block_other: bool = False

    def describe(self) -> str:
        lim = self.limits
        parts = [
            f"per source {lim.src_pps:,} pps" if lim.src_pps else "no per-source limit",
            f"SYN threshold {self.syn.threshold_pps:,}/s"
            + (f", {lim.syn_src_pps}/s per source" if lim.syn_src_pps else ""),
            (
                "forwarded UDP ports: "
                + f"{self.udp_port.src_pps:,} pps per source"
                + (f", {self.udp_port.dst_pps:,} pps in all" if self.udp_port.dst_pps else "")
            )
            if self.udp_port
            else "no UDP budget",
            "mitigation on" if self.mitigation else "mitigation off",
            "fragments dropped" if self.drop_fragments else "fragments pass",
            "other IP protocols dropped" if self.block_other else "other IP protocols pass",
        ]
        return "; ".join(parts)


PRESETS = {  # normal is what `attach` applies: nothing a real client (or a NAT of many) reaches
    "loose": Preset("loose", policy.Limits(), policy.SynPolicy(50_000), None, False),
    # normal: no address-wide per-source packet rate. At 50,000 pps it capped one real TCP client
    # (iperf3 through the lab) at 0.70 Gb/s against 4.35 Gb/s without it (the client's segments
    # are packets too); single-source floods are met by TCP state, the SYN defence, the UDP ports'
    # budget below and the port policy.
    "normal": Preset(
        "normal", policy.Limits(), policy.SynPolicy(5_000), policy.Limits(src_pps=10_000), True, True, True
    ),
    "strict": Preset(
        "strict",
        policy.Limits(src_pps=10_000, syn_src_pps=500, ban_s=60),
        policy.SynPolicy(500),
        policy.Limits(src_pps=1_000, dst_pps=50_000),
        True,
        True,
        True,
    ),
}
DEFAULT_LEVEL = "normal"


def fragments_dropped(address_levels) -> bool:
    """An interface's fragment policy from its addresses' levels: drop when every address has a
    level and each of them drops fragments (an address without a level, or at loose, keeps them)."""
    lv = list(address_levels)
    return bool(lv) and all(x in PRESETS and PRESETS[x].drop_fragments for x in lv)


def preset(level: str) -> Preset:
    if level not in PRESETS:
        raise UserError(f"unknown level '{level}': use {', '.join(LEVELS)}")
    return PRESETS[level]


def udp_ports(rules, addr) -> list[tuple[int, int]]:
    """The forwarded UDP port ranges of one protected address."""
    return sorted({(r.port_lo, r.port_hi) for r in rules if r.proto == "udp" and r.protected == addr})


def mitigation_on(st: dict, addr: str) -> bool:
    """Automatic mitigation for an address: off only under a level that says so."""
    lv = state.get(st, state.LEVELS).get(str(ipaddress.ip_address(addr)) if addr else addr)
    return PRESETS[lv].mitigation if lv in PRESETS else True


def address_policy(level: str, cur: policy.AddressPolicy) -> policy.AddressPolicy:
    """cur with the level's limits, SYN threshold and block of other IP protocols (on or off, as
    the preset says; the TCP/UDP/ICMP blocks and the SYN window kept)."""
    p = preset(level)
    blocked = cur.blocked | {"other"} if p.block_other else cur.blocked - {"other"}
    return policy.AddressPolicy(
        blocked,
        p.limits,
        policy.SynPolicy(p.syn.threshold_pps, cur.syn.auth_min_ms, cur.syn.auth_max_ms, cur.syn.auth_keep_s),
    )


def udp_budget(st: dict, proto: str, addr) -> Preset | None:
    """The level whose UDP budget a newly forwarded port of addr gets (None: no level, no budget)."""
    p = PRESETS.get(state.get(st, state.LEVELS).get(str(addr)))
    return p if proto == "udp" and p is not None and p.udp_port is not None else None
