"""Connection limits of forwarded services, in our nft table (nat.ConnLimits, nat.connlimit_batch):
per source (new connections/s, open connections) and per service (new connections/s, a
conntrack budget, short UDP conntrack timeouts), set per protected address.

A source over a per-source limit lands in the offender set (cl_off4/cl_off6); `xdpguard run`
reads the sets (`promote`) and bans those sources in XDP (dynamic bans, reason connlimit), so
their later packets never reach conntrack. The limits live in the interface state
("connlimits"); every NAT rebuild carries them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..kernel import abi
from . import nft as nat
from .. import state
from ..errors import UserError
from ..protection import open_guard

KEY = state.CONNLIMITS.key  # the old name


@dataclass(frozen=True)
class ConnLimitResult:
    iface: str
    action: str
    limits: dict[str, dict]  # protected address → ConnLimits fields

    def to_dict(self) -> dict:
        return asdict(self)


def limits_of(st: dict) -> dict[str, dict]:
    return dict(sorted(state.get(st, state.CONNLIMITS).items()))


def check_limits(lim: nat.ConnLimits) -> None:
    if not lim.active():
        raise UserError(
            "connlimit set needs a limit: --new-per-source, --concurrent-per-source, --new-total, "
            "--conntrack-budget or --udp-timeout"
        )


def show(ifname: str | None) -> ConnLimitResult:
    with open_guard(ifname) as g:
        return ConnLimitResult(g.iface.name, "show", limits_of(state.read_state(g.iface) or {}))


def offenders(applier: nat.NftApplier | None = None) -> list[tuple[str, float]]:
    """(source, seconds left) in this namespace's offender sets; [] without a connlimit chain."""
    applier = applier or nat.NftApplier()
    out = []
    for name in nat.OFFENDER_SETS.values():
        try:
            listing = applier.run(
                {"nftables": [{"list": {"set": {"family": nat.FAMILY, "table": applier.table, "name": name}}}]}
            )
        except nat.NftError:
            continue  # no such set: no limits of that family
        out += nat.parse_offenders(listing)
    return out


def promote(g, found: list[tuple[str, float]], default_s: float = 60.0) -> list[str]:
    """Ban the offenders in XDP (the dynamic ban map, reason connlimit) for what their set entry
    has left (default_s when it does not say), through the map owner. Returns the sources newly
    banned."""
    return g.promote_bans(found, abi.Reason.CONNLIMIT, default_s)


FIELDS = [f.name for f in fields(nat.ConnLimits)]
