"""Cleansing policy: typed, validated objects and their place in the maps (no recompile).

The same objects feed the data path (`apply_*` write the maps of a Guard or TestBed) and the
reference model (`model.py`). Every constructor validates and raises UserError naming the
problem, so a bad request never reaches a map.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import struct
import sys
import time
from dataclasses import asdict, dataclass, replace

from . import abi, libbpf
from .errors import UserError

MAX_PPS = 100_000_000  # per-source or per-destination packets/s; beyond is absurd for one box
MAX_BPS = 4_000_000_000  # bytes/s (32 Gbit/s); the bucket arithmetic holds up to 4e9
MAX_BURST = 10_000_000_000
MAX_BAN_S = 7 * 86400
FILTER_MAX_BAN_S = 65535  # xg_filter.ban_s is a __u16: a longer ban would be stored truncated

DEFAULT_REFLECTION_PORTS = (17, 19, 69, 111, 123, 137, 161, 389, 1194, 1900, 3389, 3702, 11211)

PROTOCOLS = {"tcp": abi.PROT_BLOCK_TCP, "udp": abi.PROT_BLOCK_UDP, "icmp": abi.PROT_BLOCK_ICMP,
             "other": abi.PROT_BLOCK_OTHER}
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}
ACTIONS = {"drop": abi.FA_DROP, "pass": abi.FA_PASS, "drop-ban": abi.FA_DROP_BAN}
MITIGATE = "mitigate"  # the action of the daemon's automatic mitigation filters (mitigation.py); not an operator's
_ALL_ACTIONS = {**ACTIONS, MITIGATE: abi.FA_MITIGATE}
BASES = {"l3": abi.FB_L3, "l4": abi.FB_L4, "payload": abi.FB_PAYLOAD}
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ece": 0x40, "cwr": 0x80}


def _check_rate(name: str, value: int, limit: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise UserError(f"invalid {name} {value!r}: must be a whole number ≥ 0")
    if value > limit:
        raise UserError(f"invalid {name} {value}: above the limit of {limit:,}")


@dataclass(frozen=True)
class Limits:
    """Per-source (and per-destination) token buckets. 0 = no limit. A burst of 0 means one
    second's worth of the rate."""

    src_pps: int = 0
    src_burst_pkts: int = 0
    src_bps: int = 0
    src_burst_bytes: int = 0
    dst_pps: int = 0
    dst_burst_pkts: int = 0
    syn_src_pps: int = 0
    syn_src_burst: int = 0
    ban_s: int = 0
    # 1..99: under dst_pps, unverified sources may use only this % of the bucket (the rest is
    # kept for verified ones, knowngood.h; drop reason `unknown`); 0: every source alike
    unknown_share_pct: int = 0

    def __post_init__(self):
        for n in ("src_pps", "dst_pps", "syn_src_pps"):
            _check_rate(n.replace("_", "-"), getattr(self, n), MAX_PPS)
        _check_rate("src-bps", self.src_bps, MAX_BPS)
        for n in ("src_burst_pkts", "src_burst_bytes", "dst_burst_pkts", "syn_src_burst"):
            _check_rate(n.replace("_", "-"), getattr(self, n), MAX_BURST)
        _check_rate("ban", self.ban_s, MAX_BAN_S)
        if not isinstance(self.unknown_share_pct, int) or not 0 <= self.unknown_share_pct <= 99:
            raise UserError(f"invalid unknown share {self.unknown_share_pct!r}: a percentage, 1 to 99 (0: off)")

    def effective(self) -> Limits:
        """Bursts filled in (one second of the rate when not given)."""
        return replace(
            self,
            src_burst_pkts=self.src_burst_pkts or self.src_pps,
            src_burst_bytes=self.src_burst_bytes or self.src_bps,
            dst_burst_pkts=self.dst_burst_pkts or self.dst_pps,
            syn_src_burst=self.syn_src_burst or self.syn_src_pps,
        )

    def to_c(self) -> abi.Limits:
        e = self.effective()
        return abi.Limits(e.src_pps, e.src_burst_pkts, e.src_bps, e.src_burst_bytes, e.dst_pps, e.dst_burst_pkts,
                          e.syn_src_pps, e.syn_src_burst, e.ban_s, e.unknown_share_pct)

    @classmethod
    def from_c(cls, c: abi.Limits) -> Limits:
        return cls(c.src_pps, c.src_burst_pkts, c.src_bps, c.src_burst_bytes, c.dst_pps, c.dst_burst_pkts,
                   c.syn_src_pps, c.syn_src_burst, c.ban_s, c.unknown_share_pct)

    def active(self) -> bool:
        return bool(self.src_pps or self.src_bps or self.dst_pps or self.syn_src_pps)


SYN_MODES = ("cookie", "retransmit")


@dataclass(frozen=True)
class SynPolicy:
    """Above threshold_pps SYNs/s to a protected address, sources must authenticate: the first
    SYN is dropped and a retransmission auth_min_ms..auth_max_ms later admits the source for
    auth_keep_s. Linux and Windows retransmit a SYN after about 1 s (then 3 s)."""

    threshold_pps: int = 0
    auth_min_ms: int = 200
    auth_max_ms: int = 10_000
    auth_keep_s: int = 600
    # cookie: in SYN-defence mode XDP answers each SYN with a SYN cookie (syncookie.h) and nft
    # synproxy completes the handshake; retransmit: the first SYN is dropped (the window above).
    mode: str = "cookie"
    always: bool = False  # SYN-defence mode at any SYN rate, not only above threshold_pps

    def __post_init__(self):
        _check_rate("syn threshold", self.threshold_pps, MAX_PPS)
        if self.mode not in SYN_MODES:
            raise UserError(f"invalid SYN defence mode {self.mode!r}: use {' or '.join(SYN_MODES)}")
        if not 0 < self.auth_min_ms < self.auth_max_ms <= 120_000:
            raise UserError(f"invalid SYN authentication window {self.auth_min_ms}-{self.auth_max_ms} ms: "
                            "need 0 < min < max ≤ 120000")
        if not 1 <= self.auth_keep_s <= MAX_BAN_S:
            raise UserError(f"invalid SYN authentication keep {self.auth_keep_s} s: 1 s to 7 days")

    def to_c(self, slot: int) -> abi.SynPolicy:
        return abi.SynPolicy(self.threshold_pps, self.auth_min_ms, self.auth_max_ms, self.auth_keep_s, slot)

    @property
    def on(self) -> bool:
        return bool(self.threshold_pps or self.always)

    def flag_bits(self) -> int:
        """The xg_protected.flags bits of the mode (XG_PROT_SYN_COOKIE, XG_PROT_SYN_ALWAYS)."""
        return (abi.PROT_SYN_COOKIE if self.mode == "cookie" else 0) | (abi.PROT_SYN_ALWAYS if self.always else 0)

    @classmethod
    def from_c(cls, c: abi.SynPolicy, flags: int = abi.PROT_SYN_COOKIE) -> SynPolicy:
        """From the map entry; the mode lives in the entry's flags (an entry written before the
        cookie mode existed has no XG_PROT_SYN_COOKIE bit: retransmit, as it ran)."""
        mode = "cookie" if flags & abi.PROT_SYN_COOKIE else "retransmit"
        always = bool(flags & abi.PROT_SYN_ALWAYS)
        if not c.auth_max_ms:  # never configured
            return cls(c.syn_threshold_pps, mode=mode, always=always)
        return cls(c.syn_threshold_pps, c.auth_min_ms, c.auth_max_ms, c.auth_keep_s, mode, always)


@dataclass(frozen=True)
class Filter:
    """One packet feature filter; every given condition must hold. Ranges are inclusive."""

    action: str = "drop"  # drop | pass | drop-ban
    proto: str | None = None  # tcp | udp | icmp | None (any)
    sport: tuple[int, int] = (0, 65535)
    dport: tuple[int, int] = (0, 65535)
    length: tuple[int, int] = (0, 65535)  # frame bytes as XDP sees them
    ttl: tuple[int, int] = (0, 255)
    tcp_flags: tuple[int, int] = (0, 0)  # (mask, value)
    payload: bytes = b""
    payload_mask: bytes = b""  # defaults to all ones
    payload_base: str = "payload"  # l3 | l4 | payload
    payload_off: int = 0
    ban_s: int = 0

    def __post_init__(self):
        if self.action not in _ALL_ACTIONS:
            raise UserError(f"invalid filter action '{self.action}': use drop, pass or drop-ban")
        if self.proto is not None and self.proto not in PROTO_NUMBERS:
            raise UserError(f"unknown protocol '{self.proto}': use tcp, udp or icmp")
        for name, (lo, hi), top in (("sport", self.sport, 65535), ("dport", self.dport, 65535),
                                    ("length", self.length, 65535), ("ttl", self.ttl, 255)):
            if not (0 <= lo <= hi <= top):
                raise UserError(f"invalid filter {name} range {lo}-{hi}: need 0 ≤ lo ≤ hi ≤ {top}")
        mask, value = self.tcp_flags
        if not (0 <= mask <= 255 and 0 <= value <= 255) or value & ~mask:
            raise UserError(f"invalid filter tcp flags {value:#x}/{mask:#x}: value bits outside the mask")
        if len(self.payload) > abi.PAYLOAD_MATCH_MAX:
            raise UserError(f"invalid filter payload: {len(self.payload)} bytes, at most {abi.PAYLOAD_MATCH_MAX}")
        if self.payload_mask and len(self.payload_mask) != len(self.payload):
            raise UserError("invalid filter payload mask: must be as long as the payload")
        if self.payload_base not in BASES:
            raise UserError(f"invalid filter payload base '{self.payload_base}': use l3, l4 or payload")
        if not 0 <= self.payload_off or self.payload_off + len(self.payload) > abi.PAYLOAD_OFF_MAX + abi.PAYLOAD_MATCH_MAX:
            raise UserError(f"invalid filter offset {self.payload_off}: past the packet limit "
                            f"({abi.PAYLOAD_OFF_MAX} + {abi.PAYLOAD_MATCH_MAX} bytes)")
        if self.payload_off > abi.PAYLOAD_OFF_MAX:
            raise UserError(f"invalid filter offset {self.payload_off}: past the packet limit ({abi.PAYLOAD_OFF_MAX})")
        if self.action == "drop-ban" and not 1 <= self.ban_s <= FILTER_MAX_BAN_S:
            raise UserError(f"a drop-ban filter needs --ban SECONDS (1 to {FILTER_MAX_BAN_S} s)")

    def mask_bytes(self) -> bytes:
        return self.payload_mask or b"\xff" * len(self.payload)

    def to_c(self) -> abi.Filter:
        f = abi.Filter()
        f.proto = PROTO_NUMBERS.get(self.proto, 0) if self.proto else 0
        f.action = _ALL_ACTIONS[self.action]
        f.tcp_flags_mask, f.tcp_flags_value = self.tcp_flags
        f.ttl_min, f.ttl_max = self.ttl
        f.payload_len = len(self.payload)
        f.payload_base = BASES[self.payload_base]
        f.sport_min, f.sport_max = self.sport
        f.dport_min, f.dport_max = self.dport
        f.len_min, f.len_max = self.length
        f.payload_off = self.payload_off
        f.ban_s = self.ban_s
        mask = self.mask_bytes()
        for i, (b, m) in enumerate(zip(self.payload, mask)):
            f.payload[i] = b & m  # the data path compares (byte & mask) == value
            f.payload_mask[i] = m
        return f

    @classmethod
    def from_c(cls, f: abi.Filter) -> Filter:
        n = f.payload_len
        names = {v: k for k, v in _ALL_ACTIONS.items()}
        protos = {v: k for k, v in PROTO_NUMBERS.items()}
        return cls(
            action=names.get(f.action, "drop"), proto=protos.get(f.proto) if f.proto else None,
            sport=(f.sport_min, f.sport_max), dport=(f.dport_min, f.dport_max), length=(f.len_min, f.len_max),
            ttl=(f.ttl_min, f.ttl_max), tcp_flags=(f.tcp_flags_mask, f.tcp_flags_value),
            payload=bytes(f.payload[:n]), payload_mask=bytes(f.payload_mask[:n]),
            payload_base={v: k for k, v in BASES.items()}[f.payload_base], payload_off=f.payload_off, ban_s=f.ban_s)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["payload"] = self.payload.hex()
        d["payload_mask"] = self.mask_bytes().hex() if self.payload else ""
        return d


@dataclass(frozen=True)
class AddressPolicy:
    """What applies to one protected address."""

    blocked: frozenset[str] = frozenset()  # of PROTOCOLS
    limits: Limits = Limits()
    syn: SynPolicy = SynPolicy()

    def __post_init__(self):
        bad = set(self.blocked) - set(PROTOCOLS)
        if bad:
            raise UserError(f"unknown protocol '{sorted(bad)[0]}': use tcp, udp, icmp or other")


@dataclass(frozen=True)
class GlobalPolicy:
    """Interface-wide steps."""

    drop_fragments: bool = False
    reflection: bool = True
    reflection_ports: frozenset[int] = frozenset(DEFAULT_REFLECTION_PORTS)
    filters: tuple[Filter, ...] = ()
    monitor_mask: int = 0

    def __post_init__(self):
        if len(self.filters) > abi.FILTERS_MAX:
            raise UserError(f"too many filters: {len(self.filters)}, the table holds {abi.FILTERS_MAX}")
        for p in self.reflection_ports:
            if not 1 <= p <= 65535:
                raise UserError(f"invalid reflection port {p}: outside 1-65535")


def parse_tcp_flags(text: str) -> tuple[int, int]:
    """'syn' (SYN set, others any), 'syn,!ack' (SYN set, ACK clear) → (mask, value)."""
    mask = value = 0
    for part in filter(None, (p.strip().lower() for p in text.split(","))):
        neg = part.startswith("!")
        name = part.lstrip("!")
        if name not in TCP_FLAGS:
            raise UserError(f"unknown TCP flag '{name}': use {', '.join(TCP_FLAGS)}")
        if mask & TCP_FLAGS[name]:  # 'syn,!syn' would silently become one of the two
            raise UserError(f"TCP flag '{name}' is given twice in '{text}': give each flag once, set or !clear")
        mask |= TCP_FLAGS[name]
        if not neg:
            value |= TCP_FLAGS[name]
    return mask, value


def format_tcp_flags(mask: int, value: int) -> str:
    """(mask, value) → 'syn,!ack' (the inverse of parse_tcp_flags)."""
    return ",".join(("" if value & bit else "!") + n for n, bit in TCP_FLAGS.items() if mask & bit)


# ---- reading and writing the maps (any object with a .maps dict of BpfMap) ----


def _prot_map(maps, addr):
    return maps[abi.MapName.PROT4 if addr.version == 4 else abi.MapName.PROT6]


def prot_key(addr):
    """Key of xg_prot4_hash / xg_prot6_hash: the address's raw bytes."""
    k = abi.Addr4() if addr.version == 4 else abi.Addr6()
    ctypes.memmove(ctypes.addressof(k), addr.packed, len(addr.packed))
    return k


def read_address_policy(maps, addr) -> AddressPolicy:
    v = _prot_map(maps, addr).get(prot_key(addr))
    if v is None:
        raise UserError(f"{addr} is not a protected address")
    blocked = frozenset(n for n, bit in PROTOCOLS.items() if v.flags & bit)
    return AddressPolicy(blocked, Limits.from_c(v.lim), SynPolicy.from_c(v.syn, v.flags))


def write_address_policy(maps, addr, pol: AddressPolicy) -> None:
    """Rewrite the address's entry, keeping what other features own (port-policy flag, slot)."""
    m, k = _prot_map(maps, addr), prot_key(addr)
    cur = m.get(k)
    if cur is None:
        raise UserError(f"{addr} is not a protected address")
    keep = cur.flags & (abi.PROT_PORT_POLICY | abi.PROT_PORT_LIMITS | abi.PROT_TCPSTATE_OFF | abi.PROT_GEO | abi.PROT_WATERMARK)
    flags = keep | sum(PROTOCOLS[p] for p in pol.blocked) | pol.syn.flag_bits()
    m.set(k, abi.Protected(flags, pol.limits.to_c(), pol.syn.to_c(cur.syn.slot)))


def new_protected(slot: int) -> abi.Protected:
    """The entry `attach` writes: nothing blocked, no limits, SYN defence off (cookie mode)."""
    return abi.Protected(SynPolicy().flag_bits(), Limits().to_c(), SynPolicy().to_c(slot))


def port_key(addr, proto: str, port: int) -> abi.PortKey:
    k = abi.PortKey()
    ctypes.memmove(ctypes.addressof(k), addr.packed, len(addr.packed))
    k.port = port
    k.proto = PROTO_NUMBERS[proto]
    k.family = addr.version
    return k


def read_port_limits(maps) -> dict[tuple[str, str, int], Limits]:
    out = {}
    names = {v: k for k, v in PROTO_NUMBERS.items()}
    for k, v in maps[abi.MapName.PORTLIM].items():
        raw = bytes(k.addr)[: 4 if k.family == 4 else 16]
        out[(str(ipaddress.ip_address(raw)), names.get(k.proto, str(k.proto)), k.port)] = Limits.from_c(v)
    return dict(sorted(out.items()))


def write_port_limits(maps, addr, proto: str, lo: int, hi: int, lim: Limits | None) -> None:
    """Override (or with lim None, remove the override of) the limits of addr's ports lo..hi."""
    m = maps[abi.MapName.PORTLIM]
    for port in range(lo, hi + 1):
        k = port_key(addr, proto, port)
        if lim is None:
            m.delete(k)
        else:
            m.set(k, lim.to_c())
    _sync_port_limits_flag(maps, addr)


def _sync_port_limits_flag(maps, addr) -> None:
    raw = addr.packed
    on = any(k.family == addr.version and bytes(k.addr)[: len(raw)] == raw for k in maps[abi.MapName.PORTLIM].keys())
    pm, pk = _prot_map(maps, addr), prot_key(addr)
    cur = pm.get(pk)
    if cur is None:
        return
    flags = (cur.flags | abi.PROT_PORT_LIMITS) if on else (cur.flags & ~abi.PROT_PORT_LIMITS)
    if flags != cur.flags:
        cur.flags = flags
        pm.set(pk, cur)


def _read_filters(maps) -> list[Filter]:
    cfg = maps[abi.MapName.CONFIG].get(ctypes.c_uint32(0)) or abi.Config()
    fm = maps[abi.MapName.FILTERS]
    out = []
    for i in range(cfg.filters_count):
        f = fm.get(ctypes.c_uint32(i))
        if f is not None:
            out.append(Filter.from_c(f))
    return out


def read_global_policy(maps) -> GlobalPolicy:
    """The operator's policy: the automatic mitigation filters (dynamic state, after the
    operator's in the table) are not part of it."""
    cfg = maps[abi.MapName.CONFIG].get(ctypes.c_uint32(0)) or abi.Config()
    ports = frozenset(i for i, on in enumerate(maps[abi.MapName.REFLECT].array_values()) if on)
    filters = [f for f in _read_filters(maps) if f.action != MITIGATE]
    return GlobalPolicy(bool(cfg.flags & abi.CFG_DROP_FRAGMENTS), bool(cfg.flags & abi.CFG_REFLECTION),
                        ports, tuple(filters), cfg.monitor_mask)


def read_mitigation_filters(maps) -> list[Filter]:
    """The automatic mitigation filters in the table, in order."""
    return [f for f in _read_filters(maps) if f.action == MITIGATE]


def write_mitigation_filters(maps, filters: list[Filter]) -> int:
    """Replace the mitigation filters (kept after the operator's). Returns how many fit: the
    operator's filters always keep their slots."""
    pol = read_global_policy(maps)
    room = max(0, abi.FILTERS_MAX - len(pol.filters))
    keep = [f for f in filters if f.action == MITIGATE][:room]
    _write_filter_table(maps, list(pol.filters) + keep)
    return len(keep)


def write_global_policy(maps, pol: GlobalPolicy, old: GlobalPolicy | None = None) -> None:
    """Filters are written before the count grows and after it shrinks, and the data path reads
    them only through their compiled generation (compile_filters), which is swapped in whole."""
    cm = maps[abi.MapName.CONFIG]
    cfg = cm.get(ctypes.c_uint32(0)) or abi.Config()
    refl = maps[abi.MapName.REFLECT]
    old_ports = old.reflection_ports if old is not None else frozenset()  # None: a fresh (zeroed) map
    for p in old_ports - pol.reflection_ports:
        refl.set(ctypes.c_uint32(p), ctypes.c_uint8(0))
    for p in pol.reflection_ports - old_ports:
        refl.set(ctypes.c_uint32(p), ctypes.c_uint8(1))
    filters = list(pol.filters)
    if not any(f.action == MITIGATE for f in filters):  # the daemon's mitigations stay, after the operator's
        filters += read_mitigation_filters(maps)[: max(0, abi.FILTERS_MAX - len(filters))]
    _write_filter_table(maps, filters)
    cfg = cm.get(ctypes.c_uint32(0)) or abi.Config()
    flags = cfg.flags & ~(abi.CFG_DROP_FRAGMENTS | abi.CFG_REFLECTION)
    flags |= (abi.CFG_DROP_FRAGMENTS if pol.drop_fragments else 0) | (abi.CFG_REFLECTION if pol.reflection else 0)
    cfg.flags = flags
    cfg.monitor_mask = pol.monitor_mask
    cm.set(ctypes.c_uint32(0), cfg)


def read_filter_table(maps) -> list[Filter]:
    """The whole table in order: the operator's filters, then the automatic mitigations."""
    return _read_filters(maps)


def _write_filter_table(maps, filters: list[Filter]) -> None:
    """The ordered list (the controller's record, xg_filters_arr) and its compiled generation,
    which is what the data path reads and is swapped in whole; nothing when both already hold
    exactly `filters` (the reconciler writes every 30 s)."""
    if _read_filters(maps) == list(filters) and filters_compiled(maps, len(filters)):
        return
    cm = maps[abi.MapName.CONFIG]
    cfg = cm.get(ctypes.c_uint32(0)) or abi.Config()
    fm = maps[abi.MapName.FILTERS]
    n_new = len(filters)
    if n_new < cfg.filters_count:
        cfg.filters_count = n_new
        cm.set(ctypes.c_uint32(0), cfg)
    for i, f in enumerate(filters):
        fm.set(ctypes.c_uint32(i), f.to_c())
    cfg.filters_count = n_new
    cm.set(ctypes.c_uint32(0), cfg)
    compile_filters(maps, tuple(filters))


# ---- feature filters compiled to per-field bit vectors (abi.h XG_FV_*) ----


def _word(mask: int) -> bytes:
    return mask.to_bytes(8, sys.byteorder)


def _range_words(ranges: list[tuple[int, int, int]], values: int = 65536) -> bytes:
    """Words for values 0..values-1: bit b set where lo <= value <= hi, for each (b, lo, hi).
    A sweep over the range boundaries: cost in the number of filters, not of values."""
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for bit, lo, hi in ranges:
        starts[lo] = starts.get(lo, 0) | bit
        ends[hi + 1] = ends.get(hi + 1, 0) | bit
    points = sorted({0, values, *starts, *ends})
    out, mask = [], 0
    for a, b in zip(points, points[1:]):
        mask = (mask & ~ends.get(a, 0)) | starts.get(a, 0)
        out.append(_word(mask) * (b - a))
    return b"".join(out)


def filter_vectors(filters: tuple[Filter, ...]) -> tuple[bytes, int, int]:
    """The words of one generation (abi.FV_SLOTS of them, host byte order), the live mask and the
    payload mask. Word (field, value) has bit i set when filter i's condition on that field holds
    for that value — exactly filter_matches() of the linear scan this replaces, field by field."""
    bits = [1 << i for i in range(len(filters))]
    proto, ttl, flags = [0] * 256, [0] * 256, [0] * 257
    sport, dport, length = [], [], []
    no_sport = no_dport = 0
    for b, f in zip(bits, filters):
        num = PROTO_NUMBERS[f.proto] if f.proto else 0
        for v in range(256):
            if not num or v == num or (num == 1 and v == 58):
                proto[v] |= b
            if f.ttl[0] <= v <= f.ttl[1]:
                ttl[v] |= b
        mask, value = f.tcp_flags
        for v in range(256):
            if not mask or v & mask == value:
                flags[v] |= b
        if not mask:
            flags[abi.FV_NOTCP] |= b
        for rng, out in ((f.sport, sport), (f.dport, dport)):
            out.append((b, *rng))
        if f.sport == (0, 65535):
            no_sport |= b
        if f.dport == (0, 65535):
            no_dport |= b
        length.append((b, *f.length))
    pad = abi.FV_SPORT - (abi.FV_FLAGS + len(flags))
    vec = b"".join([
        b"".join(map(_word, proto)), b"".join(map(_word, ttl)), b"".join(map(_word, flags)), _word(0) * pad,
        _range_words(sport), _word(no_sport), _range_words(dport), _word(no_dport),
        _range_words(length), _word(0),  # a frame longer than 65535 bytes passes no length range
    ])
    assert len(vec) == abi.FV_SLOTS * 8
    live = (1 << len(filters)) - 1
    payload = sum(b for b, f in zip(bits, filters) if f.payload)
    return vec, live, payload


def filters_compiled(maps, count: int) -> bool:
    """Does the generation in use hold `count` filters? (False after an upgrade from a version
    without compiled filters: their maps start empty.)"""
    sel = maps[abi.MapName.FSEL].get(ctypes.c_uint32(0))
    head = maps[abi.MapName.FHEAD].get(ctypes.c_uint32(sel.gen & 1 if sel else 0))
    return head is not None and head.count == count


def compile_filters(maps, filters: tuple[Filter, ...]) -> int:
    """Write the filters into the generation not in use (vectors, definitions, head), then
    switch the data path to it with one write. Returns the new generation."""
    if len(filters) > abi.FILTERS_MAX:
        raise UserError(f"too many filters: {len(filters)}, the table holds {abi.FILTERS_MAX}")
    sel_m = maps[abi.MapName.FSEL]
    sel = sel_m.get(ctypes.c_uint32(0)) or abi.FSel()
    gen = (sel.gen & 1) ^ 1
    vec, live, payload = filter_vectors(filters)
    keys = (ctypes.c_uint32 * abi.FV_SLOTS)(*range(gen * abi.FV_SLOTS, (gen + 1) * abi.FV_SLOTS))
    vals = ctypes.create_string_buffer(vec, len(vec))
    vm = maps[abi.MapName.FVEC]
    rc, done = libbpf.map_update_batch(vm.fd, ctypes.addressof(keys), ctypes.addressof(vals), abi.FV_SLOTS)
    if rc != 0 or done != abi.FV_SLOTS:
        raise libbpf.BpfError(-rc, f"map update batch on {vm.name.value}: {os.strerror(-rc) if rc else 'short'}")
    dm = maps[abi.MapName.FDEF]
    for i, f in enumerate(filters):
        dm.set(ctypes.c_uint32(gen * abi.FILTERS_MAX + i), f.to_c())
    maps[abi.MapName.FHEAD].set(ctypes.c_uint32(gen), abi.FHead(live, payload, len(filters), 0))
    # XXX: a packet that read the old generation before this write finishes on it; the next
    # compile rewrites that generation, so two changes within one packet's run could tear it.
    sel_m.set(ctypes.c_uint32(0), abi.FSel(gen, 0))
    return gen


# ---- dynamic bans ----


@dataclass(frozen=True)
class BanView:
    source: str
    expires_in_s: float
    hits: int
    reason: str


def src_key(addr) -> abi.SrcKey:
    k = abi.SrcKey()
    ctypes.memmove(ctypes.addressof(k), addr.packed, len(addr.packed))
    k.family = addr.version
    return k


def read_bans(maps, now_ns: int) -> list[BanView]:
    out = []
    for k, v in [*maps[abi.MapName.OPBANS].items(), *maps[abi.MapName.BANS].items()]:
        if v.expires_ns <= now_ns:
            continue
        raw = bytes(k.addr)[: 4 if k.family == 4 else 16]
        try:
            reason = abi.Reason(v.reason).label
        except ValueError:
            reason = str(v.reason)
        out.append(BanView(str(ipaddress.ip_address(raw)), round((v.expires_ns - now_ns) / 1e9, 1), v.hits, reason))
    return sorted(out, key=lambda b: (-b.hits, b.source))


def sweep_bans(maps, now_ns: int) -> int:
    """Delete expired bans; clear the data path's has-bans flag when none is left."""
    dead = 0
    for name in (abi.MapName.OPBANS, abi.MapName.BANS):
        m = maps[name]
        gone = [k for k, v in m.items() if v.expires_ns <= now_ns]
        for k in gone:
            m.delete(k)
        dead += len(gone)
    no_op = not any(True for _ in maps[abi.MapName.OPBANS].keys())
    none_left = no_op and not any(True for _ in maps[abi.MapName.BANS].keys())
    st = maps[abi.MapName.DPSTATE]
    cur = st.get(ctypes.c_uint32(0))
    if cur is not None:
        flags = (cur.flags | abi.DP_OPBANS_EMPTY) if no_op else (cur.flags & ~abi.DP_OPBANS_EMPTY)
        if none_left:
            flags &= ~abi.DP_HAS_BANS
        if flags != cur.flags:
            st.set(ctypes.c_uint32(0), abi.DpState(flags))
        if none_left:
            _write_bloom(maps, [0] * (abi.BANBLOOM_BITS // 64))  # no ban left: every bit may go
        if not flags & abi.DP_BAN_BLOOM:
            enable_ban_bloom(maps)
    return dead


# ---- the ban bloom (xg_banbloom_arr): a clear bit lets the data path skip both ban lookups ----

_M64 = (1 << 64) - 1


def ban_bloom_bit(key: abi.SrcKey) -> int:
    """xg_ban_bit() of policy.h: the source's bit in xg_banbloom_arr."""
    raw = bytes(key.addr)
    a0, a1 = int.from_bytes(raw[:8], sys.byteorder), int.from_bytes(raw[8:16], sys.byteorder)
    h = ((a0 * 0x9E3779B97F4A7C15) & _M64) ^ ((a1 * 0xC2B2AE3D27D4EB4F) & _M64) ^ key.family
    h ^= h >> 29
    h = (h * 0xBF58476D1CE4E5B9) & _M64
    h ^= h >> 32
    return h & (abi.BANBLOOM_BITS - 1)


def _write_bloom(maps, words: list[int], name: abi.MapName = abi.MapName.BANBLOOM) -> None:
    m = maps[name]
    n = len(words)
    keys = (ctypes.c_uint32 * n)(*range(n))
    vals = (ctypes.c_uint64 * n)(*words)
    rc, done = libbpf.map_update_batch(m.fd, ctypes.addressof(keys), ctypes.addressof(vals), n)
    if rc != 0 or done != n:
        raise libbpf.BpfError(-rc, f"map update batch on {m.name.value}: {os.strerror(-rc) if rc else 'short'}")


def _set_bloom_bits(maps, keys) -> None:
    m = maps[abi.MapName.BANBLOOM]
    for k in keys:
        bit = ban_bloom_bit(k)
        w = ctypes.c_uint32(bit >> 6)
        cur = m.get(w)
        val = (cur.value if cur is not None else 0) | (1 << (bit & 63))
        m.set(w, ctypes.c_uint64(val))


def enable_ban_bloom(maps) -> None:
    """Set the bit of every ban in both ban maps, then let the data path trust clear bits
    (XG_DP_BAN_BLOOM). Bits the data path sets meanwhile may be overwritten; a source whose bit is
    lost is judged again by the step that banned it, which bans it (and sets its bit) again."""
    m = maps[abi.MapName.BANBLOOM]
    words = [v.value if hasattr(v, "value") else int(v) for v in m.array_values()]
    for name in (abi.MapName.OPBANS, abi.MapName.BANS):
        for k in maps[name].keys():
            bit = ban_bloom_bit(k)
            words[bit >> 6] |= 1 << (bit & 63)
    _write_bloom(maps, words)
    st = maps[abi.MapName.DPSTATE]
    cur = st.get(ctypes.c_uint32(0)) or abi.DpState(0)
    if not cur.flags & abi.DP_BAN_BLOOM:
        st.set(ctypes.c_uint32(0), abi.DpState(cur.flags | abi.DP_BAN_BLOOM))


def _set_dp_flags(maps, set_bits: int, clear_bits: int = 0) -> None:
    st = maps[abi.MapName.DPSTATE]
    cur = st.get(ctypes.c_uint32(0)) or abi.DpState(0)
    flags = (cur.flags | set_bits) & ~clear_bits
    if flags != cur.flags:
        st.set(ctypes.c_uint32(0), abi.DpState(flags))


def note_dynamic_ban(maps, keys) -> None:
    """After the controller wrote `keys` into xg_ban_lru (the data path's own bans set their bits
    themselves): their bloom bits, and make the data path look at bans."""
    _set_bloom_bits(maps, keys)
    _set_dp_flags(maps, abi.DP_HAS_BANS)


def note_operator_ban(maps, keys) -> None:
    """After writing `keys` (abi.SrcKey) into xg_opban_hash: their bloom bits, and make the data
    path look at bans, operator bans included. Every writer of xg_opban_hash must call this."""
    _set_bloom_bits(maps, keys)
    _set_dp_flags(maps, abi.DP_HAS_BANS, abi.DP_OPBANS_EMPTY)


# ---- verified clients (knowngood.h): settings, sweep, and the do-no-harm counters ----


@dataclass(frozen=True)
class VerifySettings:
    """xg_vcfg_arr[0]. 0 in any field means the data path's default (abi.VERIFIED_*,
    abi.UDP_PEACE_PPS, abi.SPOOF_BAN_S)."""

    tcp_pps: int = 0  # what one TCP-verified source may send using its privilege, packets/s
    tcp_burst: int = 0
    udp_pps: int = 0  # the same for a UDP-only verified source
    udp_burst: int = 0
    udp_peace_pps: int = 0  # UDP packets/s to one protected address above which it learns nothing
    udp_learning: bool = True  # False: the controller saw an attack, no UDP learning anywhere
    spoof_ban_s: int = 0  # the longest data-path ban from spoofable evidence (rate steps)

    def __post_init__(self):
        for name in ("tcp_pps", "udp_pps", "udp_peace_pps"):
            _check_rate(name, getattr(self, name), MAX_PPS)
        for name in ("tcp_burst", "udp_burst"):
            _check_rate(name, getattr(self, name), 1 << 32)
        if self.udp_peace_pps > 0xFFFFFFFF:
            raise UserError(f"invalid udp_peace_pps {self.udp_peace_pps}")
        if not isinstance(self.spoof_ban_s, int) or not 0 <= self.spoof_ban_s <= MAX_BAN_S:
            raise UserError(f"invalid spoof_ban_s {self.spoof_ban_s!r}: 0 to {MAX_BAN_S} s")

    def to_c(self) -> abi.VerifyConfig:
        return abi.VerifyConfig(self.tcp_pps, self.tcp_burst, self.udp_pps, self.udp_burst, self.udp_peace_pps,
                                0 if self.udp_learning else abi.VC_NO_UDP_LEARN, self.spoof_ban_s, 0)

    @classmethod
    def from_c(cls, c: abi.VerifyConfig) -> VerifySettings:
        return cls(c.tcp_pps, c.tcp_burst, c.udp_pps, c.udp_burst, c.udp_peace_pps,
                   not c.flags & abi.VC_NO_UDP_LEARN, c.spoof_ban_s)


def read_verify_settings(maps) -> VerifySettings:
    c = maps[abi.MapName.VCFG].get(ctypes.c_uint32(0))
    return VerifySettings.from_c(c) if c is not None else VerifySettings()


def write_verify_settings(maps, v: VerifySettings) -> None:
    maps[abi.MapName.VCFG].set(ctypes.c_uint32(0), v.to_c())


def set_udp_learning(maps, on: bool) -> None:
    """The controller's switch: off while it sees an attack (no UDP answer teaches anything),
    on again in peacetime. The data path also stops by itself, per protected address, above
    udp_peace_pps (xg_udpwin_pcpu, xg_udpflood_arr)."""
    cur = read_verify_settings(maps)
    if cur.udp_learning != on:
        write_verify_settings(maps, replace(cur, udp_learning=on))


@dataclass(frozen=True)
class VerifiedView:
    source: str
    kind: str  # "tcp", "udp", "tcp+udp", or "untrusted" (an entry of an older program)
    expires_in_s: float


_KIND_NAMES = {abi.VF_TCP: "tcp", abi.VF_UDP: "udp", abi.VF_TCP | abi.VF_UDP: "tcp+udp"}


def _src_text(k: abi.SrcKey) -> str:
    return str(ipaddress.ip_address(bytes(k.addr)[: 4 if k.family == 4 else 16]))


def read_verified(maps, now_ns: int) -> list[VerifiedView]:
    out = []
    for k, v in maps[abi.MapName.GOODSRC].items():
        if v.expires_ns > now_ns:
            out.append(VerifiedView(_src_text(k), _KIND_NAMES.get(v.kind & 3, "untrusted"),
                                    round((v.expires_ns - now_ns) / 1e9, 1)))
    return sorted(out, key=lambda x: x.source)


@dataclass(frozen=True)
class SweepStats:
    before: int
    expired: int  # expired entries and entries of an older program (kind 0) removed
    evicted: int  # live entries removed to get below the high-water mark (UDP-only first, then oldest)
    after: int
    seconds: float


def sweep_verified(maps, now_ns: int, high: float = 0.9, low: float = 0.75) -> SweepStats:
    """The sweep of xg_goodsrc_hash (only the tc egress program inserts; XDP never deletes):
    delete expired entries and untrusted ones (kind 0, carried over from an older program); when
    more than `high` of the map is still used, evict live entries down to `low`: UDP-only ones
    first (peacetime learning is the weaker proof), then TCP ones, each soonest-to-expire first.
    So learning always finds room again. Reads the map in batches, deletes in batches."""
    t0 = time.monotonic()
    m = maps[abi.MapName.GOODSRC]
    ks, vs = ctypes.sizeof(abi.SrcKey), ctypes.sizeof(abi.GoodSrc)
    raw_k, raw_v, n = m.dump_raw()
    dead, live = [], []
    trusted = abi.VF_TCP | abi.VF_UDP
    # (expires_ns, kind) of each value in one pass (a ctypes object per entry costs ~10x more)
    for i, (exp, kind) in enumerate(struct.iter_unpack("=QI" + "x" * (vs - 12), raw_v[:n * vs])):
        key = raw_k[i * ks:(i + 1) * ks]
        if exp <= now_ns or not kind & trusted:
            dead.append(key)
        else:
            live.append((0 if kind & abi.VF_TCP else -1, exp, key))
    evict = []
    cap = m.max_entries
    if len(live) > high * cap:
        live.sort()  # UDP-only (-1) before TCP (0), then by expiry
        evict = [k for _, _, k in live[: len(live) - int(low * cap)]]
    gone = _delete_raw(m, dead + evict, ks)
    if gone and gone * 8 >= n:  # an eighth gone: their bloom bits too (a stale bit only costs a lookup)
        kept = live[len(evict):] if evict else live
        words = [0] * (abi.GOODBLOOM_BITS // 64)
        for _, _, k in kept:
            bit = good_bloom_bit(abi.SrcKey.from_buffer_copy(k))
            words[bit >> 6] |= 1 << (bit & 63)
        _write_bloom(maps, words, abi.MapName.GOODBLOOM)
    return SweepStats(n, min(len(dead), gone), max(0, gone - len(dead)), n - gone, time.monotonic() - t0)


def good_bloom_bit(key: abi.SrcKey) -> int:
    """kg_bloom_word() of knowngood.h: the source's bit in xg_vbloom_arr (the hash of the
    ban bloom, xg_src_hash, on as many bits)."""
    return ban_bloom_bit(key) & (abi.GOODBLOOM_BITS - 1)


def _delete_raw(m, keys: list[bytes], ks: int, chunk: int = 16384) -> int:
    """Delete packed keys in BPF_MAP_DELETE_BATCH calls (key by key where a batch stops short)."""
    done = 0
    for i in range(0, len(keys), chunk):
        part = keys[i:i + chunk]
        buf = ctypes.create_string_buffer(b"".join(part), len(part) * ks)
        rc, cnt = libbpf.map_delete_batch(m.fd, ctypes.addressof(buf), len(part))
        done += cnt
        for k in part[cnt:]:  # a key already gone (or no batch support): one by one
            done += bool(m.delete(m.key_type.from_buffer_copy(k)))
    return done


def sweep_dst_buckets(maps, now_ns: int, idle_s: float = 60.0) -> int:
    """Delete the per-destination buckets (xg_dstbkt_hash) untouched for idle_s: the map fills
    with the ports of a flood over random ports, and while it is full new ports share their
    address's bucket (xg_dstaddr_arr). An idle bucket has refilled (a new one starts full), so
    deleting it changes no verdict unless its burst takes longer than idle_s to refill; the
    port-0 overflow entries of older programs go too. Returns how many were deleted."""
    m = maps[abi.MapName.DSTBKT]
    ks, vs = ctypes.sizeof(abi.PortKey), ctypes.sizeof(abi.DstBucket)
    raw_k, raw_v, n = m.dump_raw()
    limit = now_ns - int(idle_s * 1e9)
    stale = []
    for i in range(n):
        key = raw_k[i * ks:(i + 1) * ks]
        v = abi.DstBucket.from_buffer_copy(raw_v, i * vs)
        if v.last_ns < limit or abi.PortKey.from_buffer_copy(key).port == 0:
            stale.append(key)
    return _delete_raw(m, stale, ks)


@dataclass(frozen=True)
class VerifiedHits:
    """Packets of verified sources that one filter or step dropped, or let pass because they
    were verified (exempted), since the program's maps were made ("first, do no harm")."""

    dropped: int
    exempted: int


@dataclass(frozen=True)
class VerifiedDrops:
    filters: dict[int, tuple[Filter | None, VerifiedHits]]  # index in the filter table → (filter, hits)
    reasons: dict[abi.Reason, VerifiedHits]  # the step's reason (banned, ratelimit, syn, …) → hits


def read_verified_drops(maps) -> VerifiedDrops:
    """The do-no-harm counters (xg_vdrop_pcpu), summed over CPUs, non-zero slots only. A filter
    is named by its index in the table (operator's filters first, then the mitigations: see
    read_filter_table); per ban, xg_ban.verified_hits (read_bans_verified_hits). Counters only
    grow: a caller that wants a rate keeps the previous reading."""
    m = maps[abi.MapName.VDROP]
    table = _read_filters(maps)
    filters: dict[int, tuple[Filter | None, VerifiedHits]] = {}
    reasons: dict[abi.Reason, VerifiedHits] = {}
    for slot in range(abi.FILTERS_MAX + abi.REASON_MAX):
        per_cpu = m.get(ctypes.c_uint32(slot)) or []
        d, e = sum(c.dropped for c in per_cpu), sum(c.exempted for c in per_cpu)
        if not d and not e:
            continue
        if slot < abi.FILTERS_MAX:
            filters[slot] = (table[slot] if slot < len(table) else None, VerifiedHits(d, e))
        else:
            try:
                reasons[abi.Reason(slot - abi.FILTERS_MAX)] = VerifiedHits(d, e)
            except ValueError:
                continue
    return VerifiedDrops(filters, reasons)


def read_bans_verified_hits(maps) -> dict[str, int]:
    """Per banned source, the packets the ban dropped while the source was verified: a ban that
    hits verified clients is suspect (the data path itself bans no verified source)."""
    out = {}
    for name in (abi.MapName.OPBANS, abi.MapName.BANS):
        for k, v in maps[name].items():
            if v.verified_hits:
                out[_src_text(k)] = out.get(_src_text(k), 0) + v.verified_hits
    return out
