"""Attack thresholds and the event settings of an interface (value types).

Thresholds are packets/s and bits/s, overall and per drop reason (0 = none); a protected address
whose measured rates cross any of them is under attack (events.py opens the event).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_HOLD_S = 10.0


@dataclass(frozen=True)
class Thresholds:
    pps: float = 0  # all packets to the address (dropped or not)
    bps: float = 0
    drop_pps: float = 0  # dropped (and would-drop) packets
    drop_bps: float = 0
    reasons: dict[str, tuple[float, float]] = field(default_factory=dict)  # reason → (pps, bps)

    def to_json(self) -> dict:
        return {
            "pps": self.pps,
            "bps": self.bps,
            "drop_pps": self.drop_pps,
            "drop_bps": self.drop_bps,
            "reasons": {r: list(v) for r, v in sorted(self.reasons.items())},
        }

    @classmethod
    def from_json(cls, d: dict) -> Thresholds:
        return cls(
            float(d.get("pps", 0)),
            float(d.get("bps", 0)),
            float(d.get("drop_pps", 0)),
            float(d.get("drop_bps", 0)),
            {r: (float(v[0]), float(v[1])) for r, v in d.get("reasons", {}).items()},
        )

    def is_empty(self) -> bool:
        return not (
            self.pps or self.bps or self.drop_pps or self.drop_bps or any(p or b for p, b in self.reasons.values())
        )


DEFAULT_THRESHOLDS = Thresholds(drop_pps=1000)


@dataclass(frozen=True)
class Measure:
    """Rates to one protected address over one interval."""

    pps: float = 0.0
    bps: float = 0.0
    drop_pps: float = 0.0
    drop_bps: float = 0.0
    reasons: dict[str, tuple[float, float]] = field(default_factory=dict)  # drop reason → (pps, bps)
    sources: dict[str, float] = field(default_factory=dict)  # source → pps estimate
    ports: dict[str, float] = field(default_factory=dict)  # proto/port → pps estimate


def exceeded(t: Thresholds, m: Measure) -> list[str]:
    """Which thresholds m crosses, as short labels ('pps', 'drop_bps', 'blocklist pps', …)."""
    out = [
        name
        for name in ("pps", "bps", "drop_pps", "drop_bps")
        if getattr(t, name) and getattr(m, name) > getattr(t, name)
    ]
    for r, (tp, tb) in sorted(t.reasons.items()):
        mp, mb = m.reasons.get(r, (0.0, 0.0))
        if tp and mp > tp:
            out.append(f"{r} pps")
        if tb and mb > tb:
            out.append(f"{r} bps")
    return out


@dataclass(frozen=True)
class EventConfig:
    default: Thresholds = DEFAULT_THRESHOLDS
    addresses: dict[str, Thresholds] = field(default_factory=dict)
    hold_s: float = DEFAULT_HOLD_S
    hook: str | None = None

    def for_address(self, addr: str) -> Thresholds:
        return self.addresses.get(addr, self.default)

    def to_json(self) -> dict:
        return {
            "default": self.default.to_json(),
            "addresses": {a: t.to_json() for a, t in sorted(self.addresses.items())},
            "hold_s": self.hold_s,
            "hook": self.hook,
        }

    @classmethod
    def from_json(cls, d: dict | None) -> EventConfig:
        if not d:
            return cls()
        return cls(
            Thresholds.from_json(d.get("default", {})) if "default" in d else DEFAULT_THRESHOLDS,
            {a: Thresholds.from_json(t) for a, t in d.get("addresses", {}).items()},
            float(d.get("hold_s", DEFAULT_HOLD_S)),
            d.get("hook"),
        )
