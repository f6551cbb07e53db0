"""One vocabulary for the words every verb and the config file share: counts and rates with
k/M/G suffixes, protocols, PROTO:PORT[-PORT] specs.

Every parser raises UserError naming the value and what was wrong with it; the CLI's ParamTypes
and the config loader both call these, so the two cannot drift.
"""

from __future__ import annotations

import math

from . import forwarding
from .errors import UserError

PORT_PROTOS = ("tcp", "udp")
_SUFFIX = {"k": 10**3, "m": 10**6, "g": 10**9}


def parse_count(value, what: str, limit: int | None = None) -> int:
    """A whole number ≥ 0, as an int or as text with an optional decimal k/M/G suffix
    ('10k', '1.5M'). inf, nan, fractions and negatives are refused."""
    if isinstance(value, bool):
        raise UserError(f"invalid {what} {value!r}: must be a whole number ≥ 0")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise UserError(f"invalid {what} {value!r}: must be a whole number ≥ 0")
        n = int(value)
    else:
        text = str(value).strip()
        mult = _SUFFIX.get(text[-1:].lower(), 1)
        num = text[:-1] if mult > 1 else text
        try:
            f = float(num)
        except ValueError:
            raise UserError(f"invalid {what} '{value}': not a number (e.g. 1000, 10k, 1.5M)") from None
        if not math.isfinite(f) or f * mult != int(f * mult):
            raise UserError(f"invalid {what} '{value}': must be a whole number ≥ 0")
        n = int(f * mult)
    if n < 0:
        raise UserError(f"invalid {what} {value!r}: must be a whole number ≥ 0")
    if limit is not None and n > limit:
        raise UserError(f"invalid {what} {value!r}: above the limit of {limit:,}")
    return n


def parse_port_range(text, what: str = "port range") -> tuple[int, int]:
    """PORT or PORT-PORT (or an int), 1..65535: forwarding's parser, as a one-line UserError."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    try:
        return forwarding.parse_port_range(text)
    except ValueError as exc:
        raise UserError(f"invalid {what} '{text}': {exc}") from None


def parse_port_spec(text) -> tuple[str, int, int]:
    """'udp:53' or 'tcp:1000-2000' → (proto, lo, hi)."""
    proto, colon, ports = str(text).strip().partition(":")
    proto = proto.lower()
    if not colon or proto not in PORT_PROTOS:
        raise UserError(f"invalid port '{text}': use PROTO:PORT[-PORT] with PROTO tcp or udp (e.g. udp:53)")
    lo, hi = parse_port_range(ports)
    return proto, lo, hi


def format_port_spec(proto: str, lo: int, hi: int) -> str:
    return f"{proto}:{lo}" if lo == hi else f"{proto}:{lo}-{hi}"


def runs(ports) -> list[tuple[int, int]]:
    """Sorted ports (ints) → merged (lo, hi) runs."""
    out: list[tuple[int, int]] = []
    for p in sorted(set(ports)):
        if out and out[-1][1] == p - 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def parse_range(what: str, text, full: tuple[int, int]) -> tuple[int, int]:
    """N or N-M (or an int) for filter fields; None is the full range. Bounds are checked by
    the object that takes the range (policy.Filter)."""
    if text is None:
        return full
    if isinstance(text, bool):
        raise UserError(f"invalid {what} {text!r}: use N or N-M")
    if isinstance(text, int):
        return text, text
    lo_s, dash, hi_s = str(text).strip().partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if dash else lo
    except ValueError:
        raise UserError(f"invalid {what} '{text}': use N or N-M") from None
    return lo, hi


def format_range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def parse_hex(what: str, text) -> bytes:
    """'deadbeef', '0xdeadbeef' or 'de:ad:be:ef' → bytes; empty or None → b''."""
    if not text:
        return b""
    t = str(text).strip().lower()
    t = t[2:] if t.startswith("0x") else t
    try:
        return bytes.fromhex(t.replace(":", "").replace(" ", ""))
    except ValueError:
        raise UserError(f"invalid {what} '{text}': not hex bytes (e.g. deadbeef or de:ad:be:ef)") from None


def parse_rate(value, what: str) -> float:
    """A finite rate ≥ 0 (thresholds): a number, or text with an optional k/M/G suffix."""
    if isinstance(value, bool):
        raise UserError(f"invalid {what} {value!r}: use a number, optionally with k, M or G")
    if isinstance(value, (int, float)):
        v = float(value)
    else:
        t = str(value).strip()
        mult = _SUFFIX.get(t[-1:].lower(), 1)
        try:
            v = float(t[:-1] if mult != 1 else t) * mult
        except ValueError:
            raise UserError(f"invalid {what} '{value}': use a number, optionally with k, M or G") from None
    if not math.isfinite(v) or v < 0:
        raise UserError(f"invalid {what} {value!r}: must be a finite number ≥ 0")
    return v
