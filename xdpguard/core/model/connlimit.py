"""Connection limits of one forwarded service (a value type; nat.py builds their nft rules)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ConnLimits:
    """Connection limits of one forwarded service (0 = none)."""

    new_per_source: int = 0  # new connections per second per source
    concurrent_per_source: int = 0  # open connections (conntrack entries) per source
    new_total: int = 0  # new connections per second from all sources
    conntrack_budget: int = 0  # conntrack entries of the service, all sources
    udp_timeout_s: int = 0  # UDP: conntrack timeout of an unanswered flow (answered: twice that)
    ban_s: int = 60  # offenders of the per-source limits: banned in XDP for this long

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 100_000_000:
                raise ValueError(f"invalid {f.name.replace('_', '-')} {v!r}: a whole number 0 to 100000000")
        if not 1 <= self.ban_s <= 86400:
            raise ValueError(f"invalid ban {self.ban_s} s: 1 to 86400")
        if self.udp_timeout_s and not 1 <= self.udp_timeout_s <= 3600:
            raise ValueError(f"invalid udp-timeout {self.udp_timeout_s} s: 1 to 3600")

    def active(self) -> bool:
        return bool(
            self.new_per_source
            or self.concurrent_per_source
            or self.new_total
            or self.conntrack_budget
            or self.udp_timeout_s
        )
