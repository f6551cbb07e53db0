"""Connection limits of forwarded services, in our nft table (nat.ConnLimits, nat.connlimit_batch):
per source (new connections/s, open connections) and per service (new connections/s, a
conntrack budget, short UDP conntrack timeouts), set per protected address.

A source over a per-source limit lands in the offender set (cl_off4/cl_off6); `xdpguard run`
reads the sets (`promote`) and bans those sources in XDP (dynamic bans, reason connlimit), so
their later packets never reach conntrack. The limits live in the interface state
("connlimits"); every NAT rebuild carries them.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import asdict, dataclass, fields

from . import abi, forward, guard, nat, policy, state
from .errors import UserError
from .protection import open_guard

KEY = forward.CONNLIMIT_KEY


@dataclass(frozen=True)
class ConnLimitResult:
    iface: str
    action: str
    limits: dict[str, dict]  # protected address → ConnLimits fields

    def to_dict(self) -> dict:
        return asdict(self)


def limits_of(st: dict) -> dict[str, dict]:
    return dict(sorted((st.get(KEY) or {}).items()))


def check_limits(lim: nat.ConnLimits) -> None:
    if not lim.active():
        raise UserError("connlimit set needs a limit: --new-per-source, --concurrent-per-source, --new-total, "
                        "--conntrack-budget or --udp-timeout")


def show(ifname: str | None) -> ConnLimitResult:
    with open_guard(ifname) as g:
        return ConnLimitResult(g.iface.name, "show", limits_of(state.read_state(g.iface) or {}))


def offenders(applier: nat.NftApplier | None = None) -> list[tuple[str, float]]:
    """(source, seconds left) in this namespace's offender sets; [] without a connlimit chain."""
    applier = applier or nat.NftApplier()
    out = []
    for name in nat.OFFENDER_SETS.values():
        try:
            listing = applier.run({"nftables": [{"list": {"set": {"family": nat.FAMILY, "table": applier.table,
                                                                   "name": name}}}]})
        except nat.NftError:
            continue  # no such set: no limits of that family
        out += nat.parse_offenders(listing)
    return out


def promote(maps, found: list[tuple[str, float]], default_s: float = 60.0) -> list[str]:
    """Ban the offenders in XDP (the dynamic ban map, reason connlimit) for what their set entry
    has left (default_s when it does not say). Returns the sources newly banned."""
    if not found:
        return []
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    m = maps[abi.MapName.BANS]
    new = []
    written = []
    for src, left in found:
        try:
            a = ipaddress.ip_address(src)
        except ValueError:
            continue
        k = policy.src_key(a)
        cur = m.get(k)
        until = now + int((left or default_s) * 1e9)
        if cur is not None and cur.expires_ns >= until - 1_000_000_000:
            continue
        m.set(k, abi.Ban(until, cur.hits if cur is not None else 0, int(abi.Reason.CONNLIMIT), 0))
        written.append(k)
        if cur is None or cur.expires_ns <= now:
            new.append(str(a))
    if written:
        guard.note_dynamic_ban(maps, written)  # the ban bloom must hold them (guard.enable_ban_bloom)
    return new


FIELDS = [f.name for f in fields(nat.ConnLimits)]
