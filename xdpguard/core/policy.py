"""Cleansing policy: typed, validated objects, their C layout and their map keys (no map I/O:
guard.py reads and writes them in the maps).

The same objects feed the data path (through guard.py, on a Guard or a TestBed) and the
reference model (`model.py`). Every constructor validates and raises UserError naming the
problem, so a bad request never reaches a map.
"""

from __future__ import annotations

import ctypes
import ipaddress
import sys
from dataclasses import asdict, dataclass, replace

from .kernel import abi
from .model import vocab
from .errors import UserError

MAX_PPS = 100_000_000  # per-source or per-destination packets/s; beyond is absurd for one box
MAX_BPS = 4_000_000_000  # bytes/s (32 Gbit/s); the bucket arithmetic holds up to 4e9
MAX_BURST = 10_000_000_000
MAX_BAN_S = vocab.BAN_TTL_MAX_S
FILTER_MAX_BAN_S = 65535  # xg_filter.ban_s is a __u16: a longer ban would be stored truncated

DEFAULT_REFLECTION_PORTS = (17, 19, 69, 111, 123, 137, 161, 389, 1194, 1900, 3389, 3702, 11211)

PROTOCOLS = {
    "tcp": abi.PROT_BLOCK_TCP,
    "udp": abi.PROT_BLOCK_UDP,
    "icmp": abi.PROT_BLOCK_ICMP,
    "other": abi.PROT_BLOCK_OTHER,
}
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
        return abi.Limits(
            e.src_pps,
            e.src_burst_pkts,
            e.src_bps,
            e.src_burst_bytes,
            e.dst_pps,
            e.dst_burst_pkts,
            e.syn_src_pps,
            e.syn_src_burst,
            e.ban_s,
            e.unknown_share_pct,
        )

    @classmethod
    def from_c(cls, c: abi.Limits) -> Limits:
        return cls(
            c.src_pps,
            c.src_burst_pkts,
            c.src_bps,
            c.src_burst_bytes,
            c.dst_pps,
            c.dst_burst_pkts,
            c.syn_src_pps,
            c.syn_src_burst,
            c.ban_s,
            c.unknown_share_pct,
        )

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
            raise UserError(
                f"invalid SYN authentication window {self.auth_min_ms}-{self.auth_max_ms} ms: "
                "need 0 < min < max ≤ 120000"
            )
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
        if self.proto is not None and self.proto not in vocab.FILTER_PROTOS:
            raise UserError(f"unknown protocol '{self.proto}': use tcp, udp or icmp")
        for name, (lo, hi), top in (
            ("sport", self.sport, 65535),
            ("dport", self.dport, 65535),
            ("length", self.length, 65535),
            ("ttl", self.ttl, 255),
        ):
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
        if (
            not 0 <= self.payload_off
            or self.payload_off + len(self.payload) > abi.PAYLOAD_OFF_MAX + abi.PAYLOAD_MATCH_MAX
        ):
            raise UserError(
                f"invalid filter offset {self.payload_off}: past the packet limit "
                f"({abi.PAYLOAD_OFF_MAX} + {abi.PAYLOAD_MATCH_MAX} bytes)"
            )
        if self.payload_off > abi.PAYLOAD_OFF_MAX:
            raise UserError(f"invalid filter offset {self.payload_off}: past the packet limit ({abi.PAYLOAD_OFF_MAX})")
        if self.action == "drop-ban" and not 1 <= self.ban_s <= FILTER_MAX_BAN_S:
            raise UserError(f"a drop-ban filter needs --ban SECONDS (1 to {FILTER_MAX_BAN_S} s)")

    def mask_bytes(self) -> bytes:
        return self.payload_mask or b"\xff" * len(self.payload)

    def to_c(self) -> abi.Filter:
        f = abi.Filter()
        f.proto = vocab.FILTER_PROTOS.get(self.proto, 0) if self.proto else 0
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
        protos = {v: k for k, v in vocab.FILTER_PROTOS.items()}
        return cls(
            action=names.get(f.action, "drop"),
            proto=protos.get(f.proto) if f.proto else None,
            sport=(f.sport_min, f.sport_max),
            dport=(f.dport_min, f.dport_max),
            length=(f.len_min, f.len_max),
            ttl=(f.ttl_min, f.ttl_max),
            tcp_flags=(f.tcp_flags_mask, f.tcp_flags_value),
            payload=bytes(f.payload[:n]),
            payload_mask=bytes(f.payload_mask[:n]),
            payload_base={v: k for k, v in BASES.items()}[f.payload_base],
            payload_off=f.payload_off,
            ban_s=f.ban_s,
        )

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


# ---- map keys and entries (guard.py reads and writes them) ----


def prot_key(addr):
    """Key of xg_prot4_hash / xg_prot6_hash: the address's raw bytes."""
    k = abi.Addr4() if addr.version == 4 else abi.Addr6()
    ctypes.memmove(ctypes.addressof(k), addr.packed, len(addr.packed))
    return k


def new_protected(slot: int) -> abi.Protected:
    """The entry `attach` writes: nothing blocked, no limits, SYN defence off (cookie mode)."""
    return abi.Protected(SynPolicy().flag_bits(), Limits().to_c(), SynPolicy().to_c(slot))


def port_key(addr, proto: str, port: int) -> abi.PortKey:
    k = abi.PortKey()
    ctypes.memmove(ctypes.addressof(k), addr.packed, len(addr.packed))
    k.port = port
    k.proto = vocab.PROTO_NUMBERS[proto]
    k.family = addr.version
    return k


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
    for that value — exactly filter_matches() of the linear scan this replaces, field by field.

    A slot no filter holds is outside the live mask (the data path ANDs it first) and accepts
    any source port: a filter for any source port (the engine's usual fingerprint: a spoofed
    flood comes from every port) installed into a free slot then changes none of the 65,537
    source-port words, and neither does its lift (the controller writes only changed words)."""
    bits = [1 << i for i in range(len(filters))]
    free = sum(1 << i for i in range(len(filters), abi.FILTERS_MAX))
    proto, ttl, flags = [0] * 256, [0] * 256, [0] * 257
    sport, dport, length = [], [], []
    no_sport = no_dport = 0
    for b, f in zip(bits, filters):
        num = vocab.FILTER_PROTOS[f.proto] if f.proto else 0
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
    if free:
        sport.append((free, 0, 65535))
        no_sport |= free
    pad = abi.FV_SPORT - (abi.FV_FLAGS + len(flags))
    vec = b"".join(
        [
            b"".join(map(_word, proto)),
            b"".join(map(_word, ttl)),
            b"".join(map(_word, flags)),
            _word(0) * pad,
            _range_words(sport),
            _word(no_sport),
            _range_words(dport),
            _word(no_dport),
            _range_words(length),
            _word(0),  # a frame longer than 65535 bytes passes no length range
        ]
    )
    assert len(vec) == abi.FV_SLOTS * 8
    live = (1 << len(filters)) - 1
    payload = sum(b for b, f in zip(bits, filters) if f.payload)
    return vec, live, payload


def payload_index(filters: tuple[Filter, ...]) -> tuple[bytes, int, list[int]]:
    """The payload index of one generation (abi.h XG_PV_*): its words (abi.PV_SLOTS, host byte
    order), the mask of the filters it decides, and its byte positions (abi.h xg_phead.pos).

    A filter tests the positions where its mask is not zero, and its last byte (the window must
    lie inside the packet, as in verdict.filter_matches); all of them read, it matches exactly
    when the compare of the linear scan would. Filters are taken in order while their positions
    fit in abi.PPOS_MAX; one that does not fit is left to the compare (its bit is set in every
    word)."""
    positions: dict[int, int] = {}  # position code → its index k
    tests: list[tuple[int, dict[int, tuple[int, int]]]] = []  # (filter bit, {position code: (value, mask)})
    for i, f in enumerate(filters):
        if not f.payload:
            continue
        base = BASES[f.payload_base] << abi.PPOS_OFF_BITS
        need = {base | (f.payload_off + j): (v & m, m) for j, (v, m) in enumerate(zip(f.payload, f.mask_bytes())) if m}
        need.setdefault(base | (f.payload_off + len(f.payload) - 1), (0, 0))
        new = [c for c in need if c not in positions]
        if len(positions) + len(new) > abi.PPOS_MAX:
            continue  # left to the compare
        for c in new:
            positions[c] = len(positions)
        tests.append((1 << i, need))
    indexed = sum(b for b, _ in tests)
    order = _probe_order(list(positions), tests)
    rows = []
    for code in [*order, *[None] * (abi.PPOS_MAX - len(order))]:
        testers = [(b, need[code]) for b, need in tests if code in need]
        row = [(1 << 64) - 1 - sum(b for b, _ in testers)] * abi.PV_VALUES  # theirs cleared, absent too
        for b, (value, mask) in testers:
            for v in range(256):
                if v & mask == value:
                    row[v] |= b
        rows.append(row)
    vec = b"".join(_word(w) for row in rows for w in row)
    assert len(vec) == abi.PV_SLOTS * 8
    return vec, indexed, order


def _probe_order(codes: list[int], tests: list[tuple[int, dict[int, tuple[int, int]]]]) -> list[int]:
    """The positions in the order the data path reads them. It stops once no indexed filter is
    left, so a packet that matches none costs one read per position until every filter has met a
    byte it rejects. Greedy: next comes the position that rejects the most filters expected to be
    left, where a test of a byte rejects a packet with probability 0.9, a test of the byte 0 only
    0.25 (padding reads as 0), a test of presence alone (the window's last byte, mask 0) none.
    With the benchmark's 64 four-byte signatures at offsets 0..15 a zero payload is decided in 5
    reads instead of 16. Ties keep the order the filters named the positions in."""
    reject = {
        (b, c): (0.0 if not mask else 0.25 if value == 0 else 0.9)
        for b, need in tests
        for c, (value, mask) in need.items()
    }
    alive = {b: 1.0 for b, _ in tests}
    left = list(codes)
    order: list[int] = []
    while left:
        gain = {c: sum(alive[b] * reject[b, c] for b, need in tests if c in need) for c in left}
        best = max(left, key=lambda c: (gain[c], -left.index(c)))
        left.remove(best)
        order.append(best)
        for b, need in tests:
            if best in need:
                alive[b] *= 1.0 - reject[b, best]
    return order


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
    # budget.h: unverified UDP admitted per service, units/s (a packet: one per 128 bytes started;
    # 0: abi.BUDGET_UDP_PPS); budget False: none
    budget_udp_pps: int = 0
    budget: bool = True
    # budget.h budget_syn_admit: unverified SYNs admitted per TCP service below the address's SYN
    # threshold, per second (past them: the SYN defence; 0: abi.BUDGET_TCP_SYNS); `budget` switches it too
    budget_tcp_syns: int = 0

    def __post_init__(self):
        for name in ("tcp_pps", "udp_pps", "udp_peace_pps"):
            _check_rate(name, getattr(self, name), MAX_PPS)
        for name in ("tcp_burst", "udp_burst"):
            _check_rate(name, getattr(self, name), 1 << 32)
        if self.udp_peace_pps > 0xFFFFFFFF:
            raise UserError(f"invalid udp_peace_pps {self.udp_peace_pps}")
        if not isinstance(self.spoof_ban_s, int) or not 0 <= self.spoof_ban_s <= MAX_BAN_S:
            raise UserError(f"invalid spoof_ban_s {self.spoof_ban_s!r}: 0 to {MAX_BAN_S} s")
        _check_rate("budget_udp_pps", self.budget_udp_pps, min(MAX_PPS, 0xFFFFFFFF))
        _check_rate("budget_tcp_syns", self.budget_tcp_syns, min(MAX_PPS, 0xFFFFFFFF))

    def to_c(self) -> abi.VerifyConfig:
        flags = (0 if self.udp_learning else abi.VC_NO_UDP_LEARN) | (0 if self.budget else abi.VC_NO_BUDGET)
        return abi.VerifyConfig(
            self.tcp_pps,
            self.tcp_burst,
            self.udp_pps,
            self.udp_burst,
            self.udp_peace_pps,
            flags,
            self.spoof_ban_s,
            self.budget_udp_pps,
            self.budget_tcp_syns,
        )

    @classmethod
    def from_c(cls, c: abi.VerifyConfig) -> VerifySettings:
        return cls(
            c.tcp_pps,
            c.tcp_burst,
            c.udp_pps,
            c.udp_burst,
            c.udp_peace_pps,
            not c.flags & abi.VC_NO_UDP_LEARN,
            c.spoof_ban_s,
            c.budget_udp_pps,
            not c.flags & abi.VC_NO_BUDGET,
            c.budget_tcp_syns,
        )


@dataclass(frozen=True)
class VerifiedView:
    source: str
    kind: str  # "tcp", "udp", "tcp+udp", or "untrusted" (an entry of an older program)
    expires_in_s: float


_KIND_NAMES = {abi.VF_TCP: "tcp", abi.VF_UDP: "udp", abi.VF_TCP | abi.VF_UDP: "tcp+udp"}


def _src_text(k: abi.SrcKey) -> str:
    return str(ipaddress.ip_address(bytes(k.addr)[: 4 if k.family == 4 else 16]))


@dataclass(frozen=True)
class SweepStats:
    before: int
    expired: int  # expired entries and entries of an older program (kind 0) removed
    evicted: int  # live entries removed to get below the high-water mark (UDP-only first, then oldest)
    after: int
    seconds: float


def lpf_bits(family: int, addr: bytes, plen: int) -> tuple[int, int]:
    """The bits a list entry sets in its list's prefilter bitmap (abi.h XG_LPF_*), as (first,
    count): an IPv4 prefix its /16 (a shorter one every /16 it covers); an IPv6 one the hash of
    its /48 (lpf_bit of steps/lists.h; a shorter one all of them)."""
    if family == 4:
        top = int.from_bytes(addr[:2], "big")
        if plen >= 16:
            return top, 1
        span = 1 << (16 - plen)
        return top & ~(span - 1), span
    if plen < abi.LPF_V6_PLEN:
        return 0, abi.LPF_BITS
    x = int.from_bytes(addr[:6], "big")
    return ((x * 0x9E3779B97F4A7C15) & _M64) >> 48, 1


def good_bloom_bit(key: abi.SrcKey) -> int:
    """kg_bloom_word() of knowngood.h: the source's bit in xg_vbloom_arr (the hash of the
    ban bloom, xg_src_hash, on as many bits)."""
    return ban_bloom_bit(key) & (abi.GOODBLOOM_BITS - 1)


@dataclass(frozen=True)
class BudgetView:
    """One service's admission budget for unverified traffic (xg_budget_hash, budget.h)."""

    protected: str
    port: int
    rate: int  # units/s (UDP) or SYNs/s (TCP) the controller set (0: VerifySettings.budget_udp_pps / budget_tcp_syns)
    admitted: int  # unverified packets admitted
    dropped: int  # unverified packets over the budget (reason budget)
    verified: int  # packets of verified sources, never charged ("do no harm")
    # "udp": unverified UDP units; "tcp": unverified SYNs below the SYN threshold (budget_syn_admit),
    # `dropped` being those sent to the SYN defence (a cookie, or retransmit authentication)
    proto: str = "udp"


def port_key_addr(k: abi.PortKey) -> str:
    raw = bytes(k.addr)
    return str(ipaddress.ip_address(raw[:4] if k.family == 4 else raw[:16]))


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
