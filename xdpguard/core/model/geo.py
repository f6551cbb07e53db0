"""A protected address's geo rule (a value type; geo.py loads the country tries from it)."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("drop", "cc")  # drop in XDP; cc = challenge at layer 7 where HAProxy serves the address


@dataclass(frozen=True)
class GeoSpec:
    """One protected address's geo rule."""

    countries: frozenset[str] = frozenset()  # upper-case ISO 3166 codes (as the database spells them)
    only: bool = False  # True: drop every source NOT in `countries` (unknown sources too)
    mode: str = "drop"  # MODES

    def active(self) -> bool:
        return bool(self.countries) or self.only

    def describe(self) -> str:
        cs = ", ".join(sorted(self.countries)) or "nothing"
        what = f"only {cs} pass" if self.only else f"{cs} dropped"
        mode = (
            ""
            if self.mode == "drop"
            else f" (mode {self.mode}: challenged by HAProxy on its ports, dropped in XDP otherwise)"
        )
        return what + mode

    def to_data(self) -> dict:
        out: dict = {("only" if self.only else "block"): sorted(self.countries)}
        if self.mode != "drop":
            out["mode"] = self.mode
        return out


def normal(g: GeoSpec | None) -> GeoSpec | None:
    """None for a rule that drops nothing (kept only for its mode: the mode alone is not stored)."""
    return g if g is not None and g.active() else None
