"""One vocabulary for the words every verb and the config file share: counts and rates with
k/M/G suffixes, durations, protocols, PROTO:PORT[-PORT] specs, HOST:PORT listen addresses,
hook commands, and the text every value must be (UTF-8, no control character).

Every parser raises UserError naming the value and what was wrong with it; the CLI's ParamTypes
and the config loader both call these, so the two cannot drift.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import socket

from . import forwarding
from ..errors import UserError

PORT_PROTOS = ("tcp", "udp")
# The one table of IP protocol numbers (IANA), under the names the CLI, the config, JSON, samples
# and BGP flowspec use; every other protocol is shown as its number.
PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}
PROTO_NAMES = {num: name for name, num in PROTO_NUMBERS.items()}
# What a feature filter can name (its icmp matches ICMPv6 too: policy.h filter_matches).
FILTER_PROTOS = {name: PROTO_NUMBERS[name] for name in ("icmp", "tcp", "udp")}
_SUFFIX = {"k": 10**3, "m": 10**6, "g": 10**9}
COUNT_MAX = 2**64 - 1  # no count of ours is wider than a u64; the owner of a field checks its own bound
BAN_TTL_MAX_S = 7 * 86400  # the longest ban: operator bans, spread bans, per-source limit bans


def check_ban_ttl(ttl, name: str = "--ttl") -> float:
    """A ban's lifetime in seconds, 1 s to BAN_TTL_MAX_S: the one check of it (`ban add`,
    `cluster ban`, the cluster store's writer)."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= BAN_TTL_MAX_S:
        raise UserError(f"invalid {name} {ttl!r}: must be between 1 s and {BAN_TTL_MAX_S} s (7 days)")
    return float(ttl)


def proto_name(num: int) -> str:
    """The name of IP protocol num (PROTO_NAMES), else the number as text."""
    return PROTO_NAMES.get(num, str(num))


def shown(text: str) -> str:
    """text as it can be printed: a byte of invalid UTF-8 (a lone surrogate U+DC80..U+DCFF,
    as os.fsdecode makes them) as U+FFFD, any other lone surrogate escaped."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def control_char(s: str) -> str | None:
    """The first control character of s (C0 including NUL, tab and line breaks, DEL, C1) as
    'U+000A', or None. No value of ours is multi-line or carries terminal escapes: a line break
    in a stored value would end a line of the desired-state file or of BIRD's config, an ESC
    would reach the operator's terminal."""
    m = _CONTROL.search(s)
    return None if m is None else f"U+{ord(m.group()):04X}"


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_text(value, what: str) -> str:
    """Text a value can be: encodable as UTF-8 (no lone surrogates, which is what invalid
    UTF-8 in argv or a file name becomes) and without control characters (NUL, which no kernel
    interface, file name or map key of ours accepts; line breaks, ESC and the rest, which would
    corrupt the files and the terminal the value is written to)."""
    s = str(value)
    if "\x00" in s:
        raise UserError(f"invalid {what} {shown(s)!r}: contains a NUL byte")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"invalid {what} {shown(s)!r}: not valid UTF-8") from None
    bad = control_char(s)
    if bad is not None:
        raise UserError(f"invalid {what} {s!r}: contains a control character ({bad})")
    return s


def parse_count(value, what: str, limit: int | None = None) -> int:
    """A whole number ≥ 0, as an int or as text with an optional decimal k/M/G suffix
    ('10k', '1.5M'). inf, nan, fractions and negatives are refused."""
    if isinstance(value, bool):
        raise UserError(f"invalid {what} {value!r}: must be a whole number ≥ 0")
    if isinstance(value, str):
        check_text(value, what)
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
        v = f * mult
        if not math.isfinite(v) or v != int(v):
            raise UserError(f"invalid {what} '{value}': must be a whole number ≥ 0")
        n = int(v)
    if n < 0:
        raise UserError(f"invalid {what} {value!r}: must be a whole number ≥ 0")
    limit = COUNT_MAX if limit is None else limit
    if n > limit:
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
        t = check_text(value, what).strip()
        mult = _SUFFIX.get(t[-1:].lower(), 1)
        try:
            v = float(t[:-1] if mult != 1 else t) * mult
        except ValueError:
            raise UserError(f"invalid {what} '{value}': use a number, optionally with k, M or G") from None
    if not math.isfinite(v) or v < 0:
        raise UserError(f"invalid {what} {value!r}: must be a finite number ≥ 0")
    return v


def parse_seconds(value, what: str, lo: float = 0.0, hi: float | None = None, lo_open: bool = False) -> float:
    """A finite duration in seconds within [lo, hi] (or (lo, hi] with lo_open): a number or its
    text. inf, nan, 1e999 and text that is no number are refused."""
    if isinstance(value, bool):
        raise UserError(f"invalid {what} {value!r}: use a number of seconds")
    if isinstance(value, int):
        v = float(value) if abs(value) < 10**300 else math.inf
    elif isinstance(value, float):
        v = value
    else:
        t = check_text(value, what).strip()
        try:
            v = float(t)
        except ValueError:
            raise UserError(f"invalid {what} '{value}': use a number of seconds") from None
    if not math.isfinite(v):
        raise UserError(f"invalid {what} {value!r}: must be a finite number of seconds")
    if v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
        bound = f"more than {lo:g}" if lo_open else f"at least {lo:g}"
        upper = f" and at most {hi:g}" if hi is not None else ""
        raise UserError(f"invalid {what} {value!r}: must be {bound}{upper} seconds")
    return v


def _resolve(host: str, port: int) -> None:
    """Raises OSError (socket.gaierror) when host:port cannot be a listening address."""
    socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)


def parse_listen(value, what: str = "--metrics", resolve: bool = True) -> tuple[str, int]:
    """'127.0.0.1:9477', '[::1]:9477', 'localhost:9477' or ':9477' (loopback) → (host, port);
    with resolve, the host must resolve to a local address family (no surprise at bind time)."""
    text = check_text(value, what)
    t = text.strip()
    if t.startswith("["):
        host, sep, port = t[1:].partition("]:")
        if not sep:
            raise UserError(f"invalid {what} '{text}': use HOST:PORT ([ADDR]:PORT for IPv6)")
    else:
        host, _, port = t.rpartition(":")
    host = host or "127.0.0.1"
    if not (port.isascii() and port.isdigit()) or len(port) > 5:
        raise UserError(f"invalid {what} '{text}': use HOST:PORT with a port number 1-65535")
    p = int(port)
    if not 1 <= p <= 65535:
        raise UserError(f"invalid {what} '{text}': port {p} is outside 1-65535")
    if resolve:
        try:
            _resolve(host, p)
        except (OSError, UnicodeError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise UserError(f"invalid {what} '{text}': cannot resolve host '{host}' ({why})") from None
    return host, p


def parse_hook(value, what: str = "--hook", require_program: bool = True) -> str | None:
    """A hook command (run without a shell, split as a shell would): the text as given, or None
    for '' / None. Its program is a name on PATH or an absolute path (the daemon does not run in
    the caller's directory); with require_program it must exist and be executable now."""
    if value is None:
        return None
    text = check_text(value, what)
    if not text.strip():
        return None
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise UserError(f"invalid {what} {text!r}: {exc} (it is split like a shell would, without one)") from None
    if not argv:
        return None
    prog = argv[0]
    if "/" in prog and not os.path.isabs(prog):
        raise UserError(f"invalid {what} {text!r}: give the program as an absolute path or a name on PATH")
    if require_program and shutil.which(prog) is None:
        raise UserError(
            f"invalid {what} {text!r}: '{prog}' is not an executable program" + ("" if "/" in prog else " on PATH")
        )
    return text
