"""HAProxy's runtime API, over the admin socket of the configuration haproxy_config.py builds:
stick tables and stats as typed records, and the sources that are over their limits.

The socket is a Unix socket in the process owner's run directory, so this works from any
network namespace. Every call opens one connection, sends one command, reads to EOF, bounded
by a timeout; an unreachable socket is RuntimeApiError (the caller decides: HAProxy being down
is the process owner's business, not ours).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from . import haproxy_config as hc
from .haproxy_config import PUNISH_CODES, REQUEST_WINDOW_S
from .spec import CHALLENGES_PER_10S, CHALLENGES_UNPASSED, HttpService

TIMEOUT_S = 5.0
MAX_REPLY_BYTES = 64 << 20
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_HEADER_RE = re.compile(r"^# table: (?P<name>[^,]+), type: (?P<type>[^,]+), size:(?P<size>\d+), used:(?P<used>\d+)")
_FIELD_RE = re.compile(r"(\S+?)=(\S*)")


class RuntimeApiError(RuntimeError):
    """The runtime API could not be reached or refused a command."""


def command(sock_path: str, cmd: str, timeout: float = TIMEOUT_S) -> str:
    """Send one command, return the whole answer."""
    if "\n" in cmd or ";" in cmd:
        raise ValueError(f"one command at a time, without ';' or newline: {cmd!r}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock_path))
            s.sendall(cmd.encode() + b"\n")
            s.shutdown(socket.SHUT_WR)  # one command: the master CLI answers, then closes
            chunks, size = [], 0
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
                size += len(b)
                if size > MAX_REPLY_BYTES:
                    raise RuntimeApiError(f"{cmd!r}: answer larger than {MAX_REPLY_BYTES} bytes")
    except OSError as exc:
        raise RuntimeApiError(f"HAProxy runtime API {sock_path}: {exc.strerror or exc}") from None
    return b"".join(chunks).decode("utf-8", "replace")


def _address(key: str) -> IPAddress:
    a = ipaddress.ip_address(key)
    if a.version == 6 and a.ipv4_mapped is not None:  # `type ipv6` tables hold IPv4 sources mapped
        return a.ipv4_mapped
    return a


@dataclass(frozen=True)
class TableEntry:
    """One source in a stick table. `data` holds every stored counter by HAProxy's name,
    e.g. 'conn_cur', 'http_req_rate(10000)', 'gpt0' / 'gpt1' (the gpt array)."""

    address: IPAddress
    expire_ms: int
    data: dict[str, int] = field(default_factory=dict)

    def get(self, name: str, default: int = 0) -> int:
        """A counter by its name without the period: 'http_req_rate' finds 'http_req_rate(10000)'."""
        if name in self.data:
            return self.data[name]
        for k, v in self.data.items():
            if k.split("(", 1)[0] == name:
                return v
        return default


@dataclass(frozen=True)
class Table:
    name: str
    type: str
    size: int
    used: int
    entries: tuple[TableEntry, ...]


def parse_show_table(text: str) -> Table:
    """The answer to `show table NAME` → Table. Raises RuntimeApiError on an error answer."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeApiError("empty answer to show table")
    m = _HEADER_RE.match(lines[0])
    if m is None:
        raise RuntimeApiError(f"show table: {lines[0].strip()}")
    entries = []
    for ln in lines[1:]:
        _, sep, rest = ln.partition(": ")
        if not sep:
            continue
        fields = dict(_FIELD_RE.findall(rest))
        key = fields.pop("key", None)
        if key is None:
            continue
        try:
            addr = _address(key)
        except ValueError:
            continue  # not an address table
        exp = int(fields.pop("exp", "0") or 0)
        fields.pop("use", None)
        fields.pop("shard", None)
        data = {}
        for k, v in fields.items():
            try:
                data[k] = int(v)
            except ValueError:
                pass
        # HAProxy 2.6 prints the gpt array as gpt(N)=... per index or gpt0/gpt1: one spelling here
        for k in list(data):
            gm = re.fullmatch(r"gpt\((\d+)\)", k)
            if gm:
                data[f"gpt{gm.group(1)}"] = data.pop(k)
        entries.append(TableEntry(addr, exp, data))
    return Table(m["name"], m["type"], int(m["size"]), int(m["used"]), tuple(entries))


def show_table(sock_path: str, name: str) -> Table:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"invalid table name {name!r}")
    return parse_show_table(command(sock_path, f"show table {name}"))


_PEERS_RE = re.compile(r"^0x[0-9a-f]+: \[[^]]*\] id=(?P<name>\S+) .*\bflags=(?P<flags>0x[0-9a-f]+)")
PEERS_RESYNC_FINISHED = 0x3  # HAProxy's PEERS_F_RESYNC_LOCAL | PEERS_F_RESYNC_REMOTE (src/peers.c)


def parse_show_peers(text: str) -> dict[str, bool]:
    """`show peers` → {peers section: its resync is finished}. A worker whose resync is not
    finished (learning from the old worker or from a remote peer, or waiting for either to time
    out) does not push its tables to the next worker on a reload (HAProxy 2.6, src/peers.c)."""
    out = {}
    for line in text.splitlines():
        m = _PEERS_RE.match(line)
        if m:
            out[m["name"]] = int(m["flags"], 16) & PEERS_RESYNC_FINISHED == PEERS_RESYNC_FINISHED
    return out


@dataclass(frozen=True)
class StatRow:
    """One line of `show stat`: a frontend, a backend or a server."""

    proxy: str
    name: str  # FRONTEND, BACKEND or the server's name
    status: str
    sessions_cur: int
    sessions_total: int
    requests_total: int
    denied_requests: int
    http_2xx: int
    http_4xx: int
    http_5xx: int
    http_3xx: int = 0  # the 302 challenges among them (frontends)
    check_ms: int = 0  # servers: how long the last health check took


def _int(v: str | None) -> int:
    try:
        return int(v or 0)
    except ValueError:
        return 0


def parse_show_stat(text: str) -> list[StatRow]:
    if not text.startswith("# "):
        raise RuntimeApiError(f"show stat: {text.strip()[:200]}")
    rows = csv.DictReader(io.StringIO(text[2:]))
    return [
        StatRow(
            r["pxname"],
            r["svname"],
            r.get("status", ""),
            _int(r.get("scur")),
            _int(r.get("stot")),
            _int(r.get("req_tot")),
            _int(r.get("dreq")),
            _int(r.get("hrsp_2xx")),
            _int(r.get("hrsp_4xx")),
            _int(r.get("hrsp_5xx")),
            _int(r.get("hrsp_3xx")),
            _int(r.get("check_duration")),
        )
        for r in rows
        if r.get("pxname")
    ]


def show_stat(sock_path: str) -> list[StatRow]:
    return parse_show_stat(command(sock_path, "show stat"))


# ---- offenders ----

ACTION_BY_CODE = {v: k for k, v in PUNISH_CODES.items()}


@dataclass(frozen=True)
class Offender:
    """A source over a limit of a service, as the stick tables say now.

    kind: punished (its punishment runs until `until`), requests (over the level's ceiling),
    prefix (over a per-prefix limit, `detail` the prefix), concurrent or new_conns, challenged
    (challenged more than CHALLENGES_PER_10S times in a window, or CHALLENGES_UNPASSED times in
    its entry's life, and never passed: a bot), refused (answered 429 CHALLENGES_UNPASSED times on
    an exempt path in its surge, as a source not seen before it: haproxy_config._exempt_ceiling)."""

    service: str
    address: IPAddress
    kind: str
    value: int
    limit: int
    action: str  # deny | drop | tarpit | challenge | reject
    until: int | None = None  # unix seconds, for punished sources
    detail: str = ""
    verified: bool = False  # it holds a valid challenge cookie (gpt 2 of its source entry)


def service_offenders(tables: dict[str, Table], svc: HttpService, now: float | None = None) -> list[Offender]:
    """Pure: the offenders of `svc` in already-read tables (name → Table)."""
    now = time.time() if now is None else now
    out: list[Offender] = []
    p = svc.preset
    conns = svc.effective_conns()
    src = tables.get(hc.src_table(svc))
    verified = {e.address for e in (src.entries if src else ()) if e.get("gpt2") > now}
    for e in src.entries if src else ():
        until = e.get("gpt0")
        if until > now:
            out.append(
                Offender(
                    svc.name,
                    e.address,
                    "punished",
                    until - int(now),
                    0,
                    ACTION_BY_CODE.get(e.get("gpt1"), "deny"),
                    until,
                )
            )
        if e.get("http_req_rate") > p.requests_per_10s:
            out.append(
                Offender(
                    svc.name,
                    e.address,
                    "requests",
                    e.get("http_req_rate"),
                    p.requests_per_10s,
                    "deny",
                    detail=f"per {REQUEST_WINDOW_S} s",
                )
            )
        if e.address not in verified:
            if e.get("gpc0_rate") > CHALLENGES_PER_10S:
                out.append(
                    Offender(
                        svc.name,
                        e.address,
                        "challenged",
                        e.get("gpc0_rate"),
                        CHALLENGES_PER_10S,
                        "challenge",
                        detail=f"challenges per {REQUEST_WINDOW_S} s, none passed",
                    )
                )
            elif e.get("gpc0") >= CHALLENGES_UNPASSED:  # slow, but never passes: a bot all the same
                out.append(
                    Offender(
                        svc.name,
                        e.address,
                        "challenged",
                        e.get("gpc0"),
                        CHALLENGES_UNPASSED,
                        "challenge",
                        detail="challenges in a row, none passed",
                    )
                )
            if e.get("gpc2") >= CHALLENGES_UNPASSED:  # refused on an exempt path in its surge, kept coming
                out.append(
                    Offender(
                        svc.name,
                        e.address,
                        "refused",
                        e.get("gpc2"),
                        CHALLENGES_UNPASSED,
                        "deny",
                        detail="exempt path in surge: 429s to a source not seen before it",
                    )
                )
        if e.get("conn_cur") > conns.concurrent:
            out.append(Offender(svc.name, e.address, "concurrent", e.get("conn_cur"), conns.concurrent, "reject"))
        if e.get("conn_rate") > conns.new_per_10s:
            out.append(
                Offender(
                    svc.name,
                    e.address,
                    "new_conns",
                    e.get("conn_rate"),
                    conns.new_per_10s,
                    "reject",
                    detail=f"per {REQUEST_WINDOW_S} s",
                )
            )
    for i, lim in enumerate(svc.effective_limits()):
        t = tables.get(hc.limit_table(svc, i))
        for e in t.entries if t else ():
            if e.get("http_req_rate") > lim.requests:
                out.append(
                    Offender(
                        svc.name,
                        e.address,
                        "prefix",
                        e.get("http_req_rate"),
                        lim.requests,
                        lim.action,
                        detail=f"{lim.prefix} per {lim.window_s} s",
                    )
                )
    return [replace(o, verified=o.address in verified) for o in out]


def service_verified(tables: dict[str, Table], svc: HttpService, now: float | None = None) -> dict[IPAddress, int]:
    """Pure: the sources of `svc` that hold a valid challenge cookie now → its expiry (unix
    seconds; gpt 2 of the source's entry, set when HAProxy accepted the cookie)."""
    now = time.time() if now is None else now
    src = tables.get(hc.src_table(svc))
    return {e.address: e.get("gpt2") for e in (src.entries if src else ()) if e.get("gpt2") > now}


def table_names(svc: HttpService) -> list[str]:
    return [hc.src_table(svc)] + [hc.limit_table(svc, i) for i in range(len(svc.effective_limits()))]


def offenders(sock_path: str, services: Sequence[HttpService], now: float | None = None) -> list[Offender]:
    """Every source over a limit of any of `services`, read now from HAProxy."""
    return read_sources(sock_path, services, now)[0]


def read_sources(
    sock_path: str, services: Sequence[HttpService], now: float | None = None
) -> tuple[list[Offender], dict[IPAddress, tuple[str, int]]]:
    """One read of the stick tables: the offenders of `services`, and the challenge-passing
    sources → (service, cookie expiry in unix seconds; the latest when several services)."""
    out: list[Offender] = []
    verified: dict[IPAddress, tuple[str, int]] = {}
    for svc in services:
        tables = {name: show_table(sock_path, name) for name in table_names(svc)}
        out += service_offenders(tables, svc, now)
        for a, until in service_verified(tables, svc, now).items():
            if a not in verified or until > verified[a][1]:
                verified[a] = (svc.name, until)
    return out, verified
