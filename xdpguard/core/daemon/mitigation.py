"""Automatic mitigation: detect a flood at one protected service, fingerprint it from the
packet samples, drop it with a temporary filter (reason `mitigation`), adapt, lift.

A *service* is (protected address, protocol, destination port). Every detection round of
`xdpguard run` hands the engine the interface's exact counters (a stats.Snapshot) and the
samples of the round (1 in N per CPU and verdict, sampling.py). From them, per service:

- its *unresolved* rate: the exact non-bypass rate of the interface times the service's share
  of the samples that the data path passed (clean, would-drop), rate-limited (`ratelimit`: the
  flood spends the real clients' budget) or dropped as `mitigation`. A flood that another step
  already drops (port, tcpstate, syn, …) needs no filter.
- a peacetime *baseline*: the passed samples of the service (and of the interface) from rounds
  without an attack, committed two rounds late so that the ramp of a flood never enters it.

A service whose unresolved rate is at least `min_pps` and `factor` times its peacetime rate is
under attack. Its fingerprint (`derive`) is what most of the round's flood samples share:
frame length, TTL, source port, TCP flags, payload bytes at fixed offsets (one 16-byte window
with a mask) or, without those, the IPv4 ID — each taken only when ≥ 95% of the flood's main
cluster has it. The filter is refused when it names nothing beyond protocol and port, or when it
would have matched more than `max_share` of the baseline (the service's, or the interface's when
the service has too few samples) or of the verified clients' samples.

First, do no harm (issue 25):
- *Evidence.* Fewer than MIN_BASELINE peacetime samples is no evidence: refused ("0.0 % of 0
  samples" accepted the lab's UDP client as a flood). A fingerprint whose every condition is one
  real clients share (a client TTL, a length, ordinary TCP flags, payload bytes: `rare_conditions`
  finds none) needs EVIDENCE_MIN samples (the rule of three at 3 %); a bare TCP segment with
  client flags needs a rarer condition whatever the baseline says — a client's ACK after a
  SYN-cookie handshake (no timestamp option) is exactly "length 54, ttl 64, flags ack", which a
  baseline of timestamped connections never shows.
- *Verified clients.* Sources with an established TCP connection in the round (unspoofable
  while XDP validates TCP state: `established`) and sources the service answered
  (xg_goodsrc_hash), seen passing in peacetime — learned two rounds late and never during an
  attack, since a spoofed flood is answered too. Their packets never count as flood, every
  fingerprint is checked against what they sent (`_Service.evidence`), a widen may match none of
  it, and a filter that drops one of them (its sampled drops, or the XDP counters of
  `VerifiedDrops`) is removed in that round and not reinstalled while the attack lasts.
- *Prompt lift.* A flood that stops for LIFT_S (1 s, at most `hold_s`) lifts its filters; if it
  comes back within REARM_S (a pulsed flood) the lifted filter is re-armed at once.

A flood that escapes the installed filters (it changed) gets another filter for what now passes
(adapt: widen, up to MAX_PER_SERVICE per service); a filter no sample has hit for `hold_s`
while the attack goes on is removed (adapt: narrow). Pinned filters (`xdpguard mitigations
pin`) stay. A refused service is derived again at most once a second, from at most DERIVE_MAX
samples (the daemon's CPU is the clients' CPU on a small box).

Mitigations are dynamic state: kernel filters with action XG_FA_MITIGATE after the operator's
(guard.write_mitigation_filters; `export` and `apply` never see them) and records in the
interface's state file under "mitigations" (what `xdpguard mitigations` shows and controls).
Every step (install, refused, adapt, lift, pin, del) is a line in events.jsonl: a record of
kind "mitigation", the later line of an id winning as for attack events.

Known limits: xg_filter has no destination-address field, so a mitigation filter matches its
protocol, port and fingerprint on every protected address of the interface; the baseline check
therefore also counts the interface's other traffic. Payload bytes are seen only within the
sample's snap length (128 bytes of the frame).
"""

from __future__ import annotations

import ipaddress
import random
import re
import struct
import time
import uuid
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ..nat import connlimit
from ..observe import events
from .. import guard, levels, policy, protection, state
from ..model import vocab
from ..kernel.abi import FILTERS_MAX, PAYLOAD_MATCH_MAX
from ..errors import UserError
from ..desired.diff import describe
from . import budgets

STATE_KEY = state.MITIGATIONS.key  # the old name (cli/status.py spells the key through it)
MAX_PER_SERVICE = 4
KEEP_LIFTED = 20  # lifted records kept in the state file (all are in events.jsonl)
HARMFUL_REASONS = frozenset({"clean", "ratelimit", "mitigation"})
CONSTANT_SHARE = 0.95  # a feature is part of the fingerprint when this share of the cluster has it
MIN_COVERAGE = 0.5  # a fingerprint must match at least this share of the round's flood samples
SPECIFIC_COVERAGE = 0.8  # a more specific fingerprint wins if it covers this share of the best one's
MIN_BASELINE = 20  # fewer baseline samples of a service: compare with the interface's instead
PAYLOAD_SCAN = 64  # payload offsets looked at for constant bytes
# "First, do no harm": what real clients share, and how much peacetime evidence a filter needs.
DEFAULT_TTLS = (64, 128, 255)  # the initial TTLs of real stacks (Linux/BSD, Windows, network gear)
TTL_HOPS = 32  # a real client arrives with its stack's TTL minus at most this many hops
CLIENT_BOUND = 0.03  # a client-shaped fingerprint needs evidence that ≤ 3 % of clients match it …
EVIDENCE_MIN = 100  # … i.e. 0 matches in ≥ 3 / CLIENT_BOUND peacetime samples (the rule of three, 95 %)
HEADER_SLACK = 6  # bytes past the TCP header of a "bare" segment (Ethernet padding to 60)
# TCP flags every client sends: ACK, PSH-ACK, FIN-ACK, FIN-PSH-ACK, RST, RST-ACK (its SYNs carry options)
CLIENT_FLAGS = frozenset({0x10, 0x18, 0x11, 0x19, 0x04, 0x14})
DERIVE_MAX = 1024  # flood samples a derivation looks at (a random subset: bounded daemon CPU)
EVIDENCE_MAX = 1024  # verified clients' samples kept per service
REFUSED_RETRY_S = 1.0  # a refused service is derived again at most this often while the flood lasts
REARM_S = 60.0  # a lifted filter comes back at once when its flood resumes within this long (pulsed floods)
LIFT_S = 1.0  # lifted after this long without flood (at most the settings' hold_s)


@dataclass(frozen=True)
class Settings:
    """What `[daemon]` (and `run`'s options) tune."""

    enabled: bool = True
    min_pps: float = 5000.0  # a service's unresolved packets/s that may be an attack
    factor: float = 4.0  # ... and at least this many times its peacetime rate
    max_share: float = 0.01  # of the peacetime baseline a fingerprint may match
    hold_s: float = 5.0  # lifted after this long below half of min_pps
    suppress_s: float = 300.0  # `mitigations del`: not reinstalled for this long
    min_samples: int = 8  # flood samples a fingerprint needs
    baseline_max: int = 4096  # samples kept per service

    def __post_init__(self):
        if not 0 < self.max_share < 1:
            raise UserError(f"invalid mitigation max share {self.max_share!r}: must be above 0 and below 1")
        if not self.min_pps > 0 or not self.factor >= 1:
            raise UserError("invalid mitigation rate: min_pps must be above 0 and factor at least 1")


# ---- what a sample shows ----


@dataclass(frozen=True)
class Features:
    """The parts of one sampled frame a filter can test (policy.h filter_matches)."""

    family: int
    dst: str
    proto: str  # tcp | udp | icmp | icmpv6 | number
    sport: int | None
    dport: int | None
    length: int  # the frame length (not the captured part)
    ttl: int
    ipid: int | None  # IPv4 only
    tcp_flags: int | None
    frame: bytes  # the captured bytes
    l3_off: int
    l4_off: int
    payload_off: int  # 0: unknown
    reason: str = "clean"
    kind: str = "pass"
    weight: int = 1  # packets this sample stands for

    @property
    def service(self) -> tuple[str, str, int]:
        return (self.dst, self.proto, self.dport or 0)

    @property
    def src(self) -> bytes:
        """The source address's bytes (as captured)."""
        at, n = (self.l3_off + 12, 4) if self.family == 4 else (self.l3_off + 8, 16)
        return self.frame[at : at + n]


def parse_frame(frame: bytes, length: int | None = None) -> dict | None:
    """Ethernet (+2 VLAN tags) → IPv4/IPv6 → TCP/UDP/ICMP offsets and fields, from captured bytes."""
    off, eth = 12, None
    for _ in range(3):
        if len(frame) < off + 2:
            return None
        eth = struct.unpack_from("!H", frame, off)[0]
        if eth in (0x8100, 0x88A8):
            off += 4
            continue
        break
    l3 = off + 2
    if eth == 0x0800:
        if len(frame) < l3 + 20:
            return None
        ihl = (frame[l3] & 0x0F) * 4
        proto, ttl, ipid = frame[l3 + 9], frame[l3 + 8], struct.unpack_from("!H", frame, l3 + 4)[0]
        frag = struct.unpack_from("!H", frame, l3 + 6)[0] & 0x1FFF
        l4 = l3 + ihl if not frag else 0
        fam = 4
    elif eth == 0x86DD:
        if len(frame) < l3 + 40:
            return None
        proto, ttl, ipid, l4, fam = frame[l3 + 6], frame[l3 + 7], None, l3 + 40, 6
    else:
        return None
    out = {
        "family": fam,
        "l3_off": l3,
        "l4_off": l4,
        "ttl": ttl,
        "ipid": ipid,
        "proto": proto,
        "sport": None,
        "dport": None,
        "tcp_flags": None,
        "payload_off": 0,
        "length": length if length is not None else len(frame),
    }
    if l4 and proto == 6 and len(frame) >= l4 + 20:
        out["sport"], out["dport"] = struct.unpack_from("!HH", frame, l4)
        out["tcp_flags"] = frame[l4 + 13]
        out["payload_off"] = l4 + (frame[l4 + 12] >> 4) * 4
    elif l4 and proto == 17 and len(frame) >= l4 + 8:
        out["sport"], out["dport"] = struct.unpack_from("!HH", frame, l4)
        out["payload_off"] = l4 + 8
    elif l4 and proto in (1, 58) and len(frame) >= l4 + 8:
        out["payload_off"] = l4 + 8
    return out


def features_of(sample) -> Features | None:
    """A sampling.PacketSample (or anything with its fields) → Features; None when it does not parse."""
    p = parse_frame(sample.data, sample.pkt_len)
    if p is None or not sample.family:
        return None
    return Features(
        p["family"],
        sample.dst,
        vocab.proto_name(p["proto"]),
        p["sport"],
        p["dport"],
        sample.pkt_len,
        p["ttl"],
        p["ipid"],
        p["tcp_flags"],
        bytes(sample.data),
        p["l3_off"],
        p["l4_off"],
        p["payload_off"],
        sample.reason,
        sample.kind,
        max(1, sample.sample_every),
    )


def matches(f: policy.Filter, x: Features) -> bool:
    """filter_matches() of policy.h on a sample. Payload bytes past the capture count as a
    match (a baseline check must not be fooled by what it cannot see)."""
    if f.proto:
        if f.proto == "icmp":
            if x.proto not in ("icmp", "icmpv6"):
                return False
        elif f.proto != x.proto:
            return False
    if not (f.length[0] <= x.length <= f.length[1] and f.ttl[0] <= x.ttl <= f.ttl[1]):
        return False
    ports = x.sport is not None
    for (lo, hi), v in ((f.sport, x.sport), (f.dport, x.dport)):
        if lo > 0 or hi < 65535:
            if not ports or not lo <= v <= hi:
                return False
    if f.tcp_flags[0]:
        if x.tcp_flags is None or x.tcp_flags & f.tcp_flags[0] != f.tcp_flags[1]:
            return False
    if f.payload:
        base = {"l3": x.l3_off, "l4": x.l4_off, "payload": x.payload_off}[f.payload_base]
        if not base:
            return False
        at = base + f.payload_off
        if at + len(f.payload) > x.length:
            return False  # the packet ends before: the data path never matches
        for i, (b, m) in enumerate(zip(f.payload, f.mask_bytes())):
            if at + i >= len(x.frame):
                return True  # past the capture: unknown, counted as a match
            if x.frame[at + i] & m != b & m:
                return False
    return True


TCP_SYN, TCP_RST, TCP_ACK = 0x02, 0x04, 0x10


def established(xs: Iterable[Features], tcpstate_enforced: bool) -> list[Features]:
    """The samples of established TCP connections: passed as clean, with ACK and without SYN or
    RST, while XDP validates TCP state for the address (Guard.tcpstate_enforced) — such a segment
    belongs to a recorded connection, which a spoofed source cannot have made. They are the
    real clients of the round even without a peacetime baseline: never flood samples, and a
    fingerprint matching them is refused."""
    if not tcpstate_enforced:
        return []
    return [
        x
        for x in xs
        if x.kind == "pass"
        and x.reason == "clean"
        and x.tcp_flags is not None
        and x.tcp_flags & TCP_ACK
        and not x.tcp_flags & (TCP_SYN | TCP_RST)
    ]


def not_from_clients(xs: Iterable[Features], clients: list[Features]) -> list[Features]:
    """The samples of `xs` whose source has no established connection among `clients`: what may be
    flood. (A flood spoofing a client's address only loses those packets from its fingerprint.)"""
    srcs = {x.src for x in clients}
    return [x for x in xs if x.src not in srcs]


def share_matching(f: policy.Filter, xs: list[Features]) -> float:
    return sum(1 for x in xs if matches(f, x)) / len(xs) if xs else 0.0


# ---- the fingerprint ----


@dataclass(frozen=True)
class Derivation:
    filter: policy.Filter | None
    coverage: float  # of the flood samples it matches
    baseline_share: float  # of the baseline it matches
    baseline_samples: int
    conditions: tuple[str, ...]
    refused: str | None = None  # why no filter

    def describe(self) -> str:
        return ", ".join(self.conditions) or "nothing shared"


def _mode(values: Iterable) -> tuple[object, float]:
    vals = [v for v in values]
    if not vals:
        return None, 0.0
    v, n = Tally(vals).most_common(1)[0]
    return v, n / len(vals)


def _payload_window(cluster: list[Features]) -> tuple[int, bytes, bytes] | None:
    """(offset from the payload start, bytes, mask) of the constant bytes of the cluster, at most
    16 from the first constant one; None when no byte is constant."""
    if not all(x.payload_off for x in cluster):
        return None
    avail = min(min(len(x.frame), x.length) - x.payload_off for x in cluster)
    const: dict[int, int] = {}
    for i in range(max(0, min(avail, PAYLOAD_SCAN))):
        v, share = _mode(x.frame[x.payload_off + i] for x in cluster)
        if share >= CONSTANT_SHARE:
            const[i] = v
    if not const:
        return None
    start = min(const)
    idx = [i for i in range(start, start + PAYLOAD_MATCH_MAX) if i in const]
    end = max(idx) + 1
    data = bytes(const.get(i, 0) for i in range(start, end))
    mask = bytes(0xFF if i in const else 0 for i in range(start, end))
    return start, data, mask


def _fingerprint(cluster: list[Features], proto: str, port: int) -> tuple[dict, list[str]]:
    """The filter fields (and their descriptions) that ≥ CONSTANT_SHARE of the cluster shares."""
    # (derive refuses other protocols: a filter without one would match every protocol)
    kw: dict = {"action": policy.MITIGATE, "proto": "icmp" if proto == "icmpv6" else proto}
    conds: list[str] = []
    if port and proto in ("tcp", "udp"):
        kw["dport"] = (port, port)
    for name, widest in (("length", 256), ("ttl", 32)):  # a range only when narrow
        vals = [getattr(x, name) for x in cluster]
        v, share = _mode(vals)
        if share >= CONSTANT_SHARE:
            kw[name] = (v, v)
            conds.append(f"{name} {v}")
            continue
        s = sorted(vals)
        lo, hi = s[int(len(s) * 0.02)], s[min(len(s) - 1, int(len(s) * 0.98))]
        inside = sum(1 for x in vals if lo <= x <= hi) / len(vals)
        if inside >= CONSTANT_SHARE and hi - lo <= widest:
            kw[name] = (lo, hi)
            conds.append(f"{name} {lo}-{hi}")
    if proto in ("tcp", "udp"):
        v, share = _mode(x.sport for x in cluster)
        if share >= CONSTANT_SHARE:
            kw["sport"] = (v, v)
            conds.append(f"sport {v}")
    if proto == "tcp":
        v, share = _mode(x.tcp_flags for x in cluster)
        if v is not None and share >= CONSTANT_SHARE:
            kw["tcp_flags"] = (0xFF, v)
            conds.append("flags " + (policy.format_tcp_flags(0xFF, v) or "none"))
    win = _payload_window(cluster)
    if win is not None:
        off, data, mask = win
        kw.update(
            payload=bytes(b & m for b, m in zip(data, mask)), payload_mask=mask, payload_base="payload", payload_off=off
        )
        conds.append(f"payload+{off} {data.hex()}" + ("" if mask == b"\xff" * len(mask) else f"/{mask.hex()}"))
    elif all(x.ipid is not None for x in cluster):
        v, share = _mode(x.ipid for x in cluster)
        if share >= CONSTANT_SHARE:
            kw.update(payload=struct.pack("!H", v), payload_mask=b"\xff\xff", payload_base="l3", payload_off=4)
            conds.append(f"ip id {v}")
    return kw, conds


def _gist(refused: str | None) -> str:
    """A refusal without its numbers: said once per attack, not once per changed percentage."""
    return re.sub(r"\d+(\.\d+)?", "#", refused or "")


def _client_ttl(lo: int, hi: int) -> bool:
    return any(t - TTL_HOPS <= hi and lo <= t for t in DEFAULT_TTLS)


def _header_only(x: Features) -> bool:
    return bool(x.payload_off) and x.length - x.payload_off <= HEADER_SLACK


def rare_conditions(kw: dict, cluster: list[Features], proto: str) -> list[str]:
    """The conditions of a fingerprint (_fingerprint's filter fields) that real clients do not
    share: a TTL no real stack arrives with, TCP flags no client sends (a SYN without options
    included), a constant well-known source port (reflection), a constant IPv4 ID other than 0
    (Linux sends 0 on unconnected DF datagrams). Length, a client's TTL, ordinary flags and
    payload bytes are what real clients share: a fingerprint of those alone needs evidence."""
    out = []
    if "ttl" in kw and not _client_ttl(*kw["ttl"]):
        out.append("ttl")
    if "tcp_flags" in kw:
        v = kw["tcp_flags"][1]
        if v == TCP_SYN:
            if cluster and all(x.payload_off - x.l4_off == 20 for x in cluster):
                out.append("syn without options")
        elif v not in CLIENT_FLAGS:
            out.append("flags")
    if "sport" in kw and kw["sport"][0] < 1024:
        out.append("sport")
    if kw.get("payload_base") == "l3" and kw.get("payload_off") == 4 and kw.get("payload") != b"\0\0":
        out.append("ip id")
    return out


def bare_segment(kw: dict, cluster: list[Features], proto: str) -> str | None:
    """'a bare ACK (length 54)' when the fingerprint is a TCP segment without payload and with
    client flags (or none named): real clients send these all the time, in shapes a baseline
    may not hold (a SYN-cookie handshake strips the timestamp option: 54-byte ACKs)."""
    if proto != "tcp" or kw.get("payload") or not cluster or not all(_header_only(x) for x in cluster):
        return None
    flags = kw.get("tcp_flags", (0, 0))[1]
    if "tcp_flags" in kw and flags not in CLIENT_FLAGS:
        return None
    name = (
        "flags " + "+".join(n for n, bit in policy.TCP_FLAGS.items() if flags & bit)
        if "tcp_flags" in kw
        else "any flags"
    )
    lo, hi = kw.get("length", (0, 65535))
    size = f"length {lo}" if lo == hi else f"length {lo}-{hi}" if hi < 65535 else "any length"
    return f"a bare TCP segment ({size}, {name})"


def _clusters(attack: list[Features]) -> list[list[Features]]:
    """Candidate flood clusters: everything, and the samples sharing the most common value of
    each feature (or first payload byte) when that value covers ≥ 30% of them."""
    out = [attack]
    keys: list[Callable[[Features], object]] = [
        lambda x, n=n: getattr(x, n) for n in ("length", "ttl", "sport", "tcp_flags", "ipid")
    ]
    keys.append(
        lambda x: x.frame[x.payload_off] if x.payload_off and x.payload_off < min(len(x.frame), x.length) else None
    )
    for key in keys:
        v, share = _mode(k for k in map(key, attack) if k is not None)
        n = sum(1 for x in attack if key(x) is not None)
        if v is not None and share * n >= 0.3 * len(attack):
            c = [x for x in attack if key(x) == v]
            if len(c) < len(attack) and all(c is not o and c != o for o in out):
                out.append(c)
    return out


def derive(
    attack: list[Features],
    baseline: list[Features],
    service: tuple[str, str, int],
    max_share: float,
    min_samples: int = 8,
    wider_baseline: list[Features] | None = None,
    clients: list[Features] = (),
    strict_clients: bool = False,
) -> Derivation:
    """The fingerprint of the flood in `attack` (samples of one service) that matches at most
    max_share of `baseline` (the service's peacetime samples; `wider_baseline`, the interface's,
    is used when the service has fewer than MIN_BASELINE, and checked too when it has more) and
    at most max_share of `clients` (the verified clients' packets: established connections,
    sources the service answered in peacetime; none of them with `strict_clients`, for a widen).

    First, do no harm: a baseline below MIN_BASELINE samples (the service's, the verified
    clients' and the interface's together) is no evidence
    and refuses; a fingerprint whose every condition is one real clients share (rare_conditions
    finds none) needs EVIDENCE_MIN samples, and is refused outright when it is a bare TCP segment
    (bare_segment: a client's ACK after a SYN-cookie handshake has exactly that shape, which a
    baseline of timestamped connections never shows).
    Every candidate cluster gets its fingerprint; the best accepted one (most of the flood, then
    the most specific) wins; with none accepted, the refusal of the one covering most."""
    _, proto, port = service
    if len(attack) > DERIVE_MAX:  # bounded daemon CPU: a random flood gives thousands of samples a round
        attack = random.Random(len(attack)).sample(attack, DERIVE_MAX)
    clients = list(clients)
    base = baseline if len(baseline) >= MIN_BASELINE or wider_baseline is None else wider_baseline
    if proto not in vocab.PROTO_NUMBERS:
        return Derivation(
            None,
            0.0,
            0.0,
            len(base),
            (),
            f"a filter cannot name IP protocol {proto}: it would match every protocol (block it: xdpguard proto)",
        )
    if len(attack) < min_samples:
        return Derivation(None, 0.0, 0.0, len(base), (), f"only {len(attack)} flood samples (need {min_samples})")
    wide = (
        wider_baseline
        if wider_baseline and base is not wider_baseline and len(wider_baseline) >= MIN_BASELINE
        else None
    )
    good: list[Derivation] = []
    bad: list[Derivation] = []
    for cluster in _clusters(attack):
        kw, conds = _fingerprint(cluster, proto, port)
        if not conds:
            bad.append(Derivation(None, 0.0, 0.0, len(base), (), "the flood shares nothing beyond protocol and port"))
            continue
        f = policy.Filter(**kw)
        cov = share_matching(f, attack)
        bshare = share_matching(f, base)
        if wide is not None:  # the filter has no destination address (see the module doc)
            bshare = max(bshare, share_matching(f, wide))
        d = Derivation(f, cov, bshare, len(base), tuple(conds))
        rare = rare_conditions(kw, cluster, proto)
        evidence = len(base) + len(clients) + (len(wide) if wide is not None else 0)
        cmax = 0.0 if strict_clients else max_share
        if cov < MIN_COVERAGE:
            bad.append(replace(d, filter=None, refused=f"matches only {cov:.0%} of the flood"))
        elif bshare > max_share:
            bad.append(
                replace(
                    d,
                    filter=None,
                    refused=f"would match {bshare:.1%} of the peacetime traffic "
                    f"(max {max_share:.1%}, {len(base)} samples)",
                )
            )
        elif clients and (cshare := share_matching(f, clients)) > cmax:
            bad.append(
                replace(
                    d,
                    filter=None,
                    refused=f"would match {cshare:.1%} of the verified clients' packets "
                    f"(established connections, answered sources; "
                    f"{len(clients)} samples)",
                )
            )
        elif evidence < MIN_BASELINE:
            bad.append(
                replace(
                    d,
                    filter=None,
                    refused=f"no peacetime baseline ({len(base)} samples): no evidence "
                    f"that real clients do not look like this",
                )
            )
        elif not rare and (bare := bare_segment(kw, cluster, proto)):
            bad.append(
                replace(
                    d,
                    filter=None,
                    refused=f"{bare} is what every TCP client sends (SYN-cookie "
                    f"handshakes have no timestamp option): refused without "
                    f"a rarer condition",
                )
            )
        elif not rare and evidence < EVIDENCE_MIN:
            bad.append(
                replace(
                    d,
                    filter=None,
                    refused=f"every condition is one real clients share and only "
                    f"{evidence} peacetime samples show they do not match "
                    f"(need {EVIDENCE_MIN})",
                )
            )
        else:
            good.append(d)
    if good:
        # The round's samples hold the real clients too: a fingerprint that also covers them
        # covers "more of the flood". So among the fingerprints covering at least
        # SPECIFIC_COVERAGE of the best coverage, the most specific wins (seen in the lab: a SYN
        # flood starting 2 s after the client, no baseline yet, got "length 54-144, ttl 64" from
        # all samples — every client packet — instead of "length 54, ttl 64, flags S").
        best = max(d.coverage for d in good)
        near = [d for d in good if d.coverage >= SPECIFIC_COVERAGE * best]
        return max(near, key=lambda d: (len(d.conditions), round(d.coverage, 2), -d.baseline_share))
    return max(bad, key=lambda d: (d.coverage, len(d.conditions)))


# ---- records (the state file) ----


def filter_to_json(f: policy.Filter) -> dict:
    return {
        "proto": f.proto,
        "sport": list(f.sport),
        "dport": list(f.dport),
        "length": list(f.length),
        "ttl": list(f.ttl),
        "tcp_flags": list(f.tcp_flags),
        "payload": f.payload.hex(),
        "mask": f.mask_bytes().hex() if f.payload else "",
        "base": f.payload_base,
        "offset": f.payload_off,
    }


def filter_from_json(d: dict) -> policy.Filter:
    return policy.Filter(
        action=policy.MITIGATE,
        proto=d.get("proto"),
        sport=tuple(d["sport"]),
        dport=tuple(d["dport"]),
        length=tuple(d["length"]),
        ttl=tuple(d["ttl"]),
        tcp_flags=tuple(d["tcp_flags"]),
        payload=bytes.fromhex(d.get("payload", "")),
        payload_mask=bytes.fromhex(d.get("mask", "")),
        payload_base=d.get("base", "payload"),
        payload_off=int(d.get("offset", 0)),
    )


def describe_filter(f: policy.Filter) -> str:
    return describe(f).removesuffix(" -> mitigate")


def read_records(iface: state.Iface) -> dict:
    return state.get(state.read_state(iface), state.MITIGATIONS)


def _write_records(iface: state.Iface, recs: dict) -> None:
    st = state.read_state(iface)
    if st is None:
        raise UserError(f"{iface.name} is not protected by xdpguard")
    now = time.time()
    recs["suppressed"] = {k: v for k, v in recs["suppressed"].items() if v > now}
    recs["lifted"] = recs["lifted"][-KEEP_LIFTED:]
    state.put(st, state.MITIGATIONS, recs)
    state.write_state(iface, st)


def service_key(protected: str, proto: str, port: int) -> str:
    return f"{protected} {proto}/{port}"


def log_record(rec: dict, path=None) -> None:
    """One line in events.jsonl (the attack events' log): the record as it is after this step."""
    events.append_record(rec, path)


def _step(rec: dict, step: str, detail: str, when: float | None = None) -> dict:
    rec.setdefault("steps", []).append({"t": round(when or time.time(), 3), "step": step, "detail": detail})
    rec["last_step"] = step
    return rec


def _realise(g, recs: dict) -> int:
    """The kernel's mitigation filters := the active records', in order (g: a Guard)."""
    fs = [filter_from_json(r["filter"]) for r in recs["active"]]
    return g.write_mitigation_filters(fs[:FILTERS_MAX])


# ---- what the CLI does (records + kernel: the interface lock, then the maps) ----


@dataclass(frozen=True)
class ListResult:
    iface: str
    mitigations: list[dict]
    lifted: list[dict]
    suppressed: dict[str, float]  # service → wall clock until which it is not reinstalled

    def to_dict(self) -> dict:
        return {
            "iface": self.iface,
            "mitigations": self.mitigations,
            "lifted": self.lifted,
            "suppressed": self.suppressed,
        }


def list_mitigations(ifname: str | None) -> ListResult:
    with protection.open_guard(ifname) as g:
        recs = read_records(g.iface)
        kernel = [filter_to_json(f) for f in g.read_mitigation_filters()]
        active = [{**r, "in_kernel": r["filter"] in kernel} for r in recs["active"]]
        return ListResult(
            g.iface.name, active, recs["lifted"], {k: v for k, v in recs["suppressed"].items() if v > time.time()}
        )


def _find(recs: dict, ident: str) -> dict:
    hits = [r for r in recs["active"] if r["id"] == ident] or [r for r in recs["active"] if r["id"].startswith(ident)]
    if len(hits) != 1:
        raise UserError(
            f"no active mitigation '{ident}' (see 'xdpguard mitigations list')"
            if not hits
            else f"'{ident}' names {len(hits)} mitigations; give more of the id"
        )
    return hits[0]


def pin(ifname: str | None, ident: str, on: bool = True) -> dict:
    state.require_root()
    iface = state.resolve_iface(protection.pick_iface(ifname))
    with state.iface_lock(iface):
        recs = read_records(iface)
        r = _find(recs, ident)
        if bool(r.get("pinned")) != on:
            r["pinned"] = on
            _step(r, "pin" if on else "unpin", "kept after the attack" if on else "lifted with the attack")
            _write_records(iface, recs)
            log_record(r)
        return r


def delete(ifname: str | None, ident: str, suppress_s: float = Settings.suppress_s) -> dict:
    state.require_root()
    iface = state.resolve_iface(protection.pick_iface(ifname))
    with state.iface_lock(iface), protection.Guard.open(iface) as g:
        recs = read_records(iface)
        r = _find(recs, ident)
        recs["active"] = [x for x in recs["active"] if x["id"] != r["id"]]
        key = service_key(r["protected"], r["proto"], r["port"])
        recs["suppressed"][key] = time.time() + suppress_s
        r["state"], r["end"] = "deleted", time.time()
        _step(r, "del", f"removed by the operator; not reinstalled on {key} for {suppress_s:g} s")
        recs["lifted"].append(r)
        _realise(g, recs)
        _write_records(iface, recs)
        log_record(r)
        return r


# ---- the engine (one per interface, in `xdpguard run`) ----


SrcId = tuple[int, bytes]  # (family, the source address's bytes)
VERIFIED_MAX = 65536  # verified sources the engine remembers (the oldest go first)
LEARN_MAX = 256  # known-good look-ups per round


def src_id(x: Features) -> SrcId:
    return (x.family, x.src)


VerifiedDrops = Callable[[object], dict[int, int]]
"""The verified-clients reader the engine expects: a Guard → {position of the mitigation filter in
the list last given to guard.write_mitigation_filters: packets from verified sources it dropped
(or, in monitor mode, would have) since that write}. None: not available (sampled evidence only)."""


def xdp_verified_drops(g) -> dict[int, int]:
    """The VerifiedDrops of the data path: guard.read_verified_drops' per-slot counters of the
    filter table (the operator's filters first, then the mitigations), renumbered from the first
    mitigation slot. The counters only grow and a slot outlives the filter in it: the engine takes
    its baseline right after every write (Engine._rebase), so a reused slot's history is no harm."""
    vd = g.read_verified_drops()
    table = g.read_filter_table()
    first = next((i for i, f in enumerate(table) if f.action == policy.MITIGATE), len(table))
    return {slot - first: hits.dropped for slot, (_f, hits) in vd.filters.items() if slot >= first and hits.dropped}


@dataclass
class _Service:
    baseline: deque = field(default_factory=deque)
    pending: deque = field(default_factory=deque)  # (round, [Features]) not yet committed
    rate: float = 0.0  # peacetime unresolved pps (EWMA)
    rate_rounds: int = 0
    attack_since: float | None = None  # wall clock of the first round above the trigger
    last_above: float = 0.0  # monotonic
    refused: str | None = None  # said once per attack
    last_try: float = -1e9  # monotonic time of the last refused derivation
    peak_pps: float = 0.0
    evidence: deque = field(default_factory=lambda: deque(maxlen=EVIDENCE_MAX))  # verified clients' samples
    harmed: list = field(default_factory=list)  # filters removed for dropping verified clients (this attack)
    rearm: list = field(default_factory=list)  # (record, monotonic time) lifted when the flood ended


class Engine:
    """Feeds on (Snapshot, samples) rounds of one interface; installs, adapts and lifts.
    `clock` is monotonic seconds and `wall` wall-clock seconds (fakes in tests); `report`
    gets a line per step. `known_good(g, [(family, addr)])` (g: the interface's Guard) says which sources the protected
    side answered (default: xg_goodsrc_hash); `verified_drops` is the XDP per-filter count of
    verified sources dropped (VerifiedDrops; None: the samples are the only evidence).

    Verified sources: those with an established TCP connection in the round (unspoofable while
    XDP validates TCP state), and those the service answered (known-good) seen passing in
    peacetime rounds, committed two rounds late and forgotten if an attack starts before (a
    spoofed flood's sources get answers too). Their packets are never flood, every fingerprint
    is checked against what they sent (`evidence`), and a filter that drops one of them is
    removed in the round it is seen and not reinstalled while the attack lasts."""

    def __init__(
        self,
        iface: state.Iface,
        g,
        settings: Settings = Settings(),
        report: Callable[[str], None] = lambda m: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        log: Callable[[dict], None] = log_record,
        known_good: Callable[[object, Iterable[SrcId]], set[SrcId]] = guard.Guard.known_good_sources,
        verified_drops: VerifiedDrops | None = None,
        tcpstate_on: Callable[[object, str], bool] | None = None,
    ):
        self.iface = iface
        self.g = g  # the interface's Guard (the map owner): every kernel read and write goes through it
        self.settings = settings
        self.report = report
        self.clock = clock
        self.wall = wall
        self.log = log
        self.known_good = known_good
        self.verified_drops = verified_drops
        self.tcpstate_on = tcpstate_on
        self.services: dict[tuple[str, str, int], _Service] = {}
        self.iface_baseline: deque = deque(maxlen=settings.baseline_max)
        self.iface_pending: deque = deque()
        self.verified: dict[SrcId, float] = {}  # verified source → monotonic time last confirmed
        self.verified_pending: deque = deque()  # (round, {SrcId}) learned in peacetime, not yet committed
        self.vd_base: dict[str, int] = {}  # record id → its verified_drops count at the last read
        self.last_hit: dict[str, float] = {}  # record id → monotonic time of its last sampled drop
        self.dropped: dict[str, int] = {}  # record id → packets its sampled drops stand for (kept between writes)
        self.rounds = 0
        self.peace = False  # no attack on the interface in the last round (budgets.py learns only then)
        self.feats: list[Features] = []  # the last round's parsed samples (the budget learner's lengths)
        self.unsettled = False  # a filter write since the last guard.settle_filters (DaemonHook)

    def _tcpstate(self, addr: str) -> bool:
        if self.tcpstate_on is not None:
            return self.tcpstate_on(self.g, addr)
        try:
            return self.g.tcpstate_enforced(ipaddress.ip_address(addr))
        except (OSError, ValueError):
            return False

    def _svc(self, key) -> _Service:
        s = self.services.get(key)
        if s is None:
            s = self.services[key] = _Service(deque(maxlen=self.settings.baseline_max))
        return s

    def _verify(self, ids: Iterable[SrcId], now: float) -> None:
        for i in ids:
            self.verified.pop(i, None)
            self.verified[i] = now  # most recent last
        while len(self.verified) > VERIFIED_MAX:
            del self.verified[next(iter(self.verified))]

    def _learn(self, feats: list[Features]) -> None:
        """Peacetime: the round's clean sources that the protected side answered (known-good)."""
        cand = list(
            dict.fromkeys(
                src_id(x) for x in feats if x.kind == "pass" and x.reason == "clean" and src_id(x) not in self.verified
            )
        )[:LEARN_MAX]
        if not cand:
            return
        try:
            good = self.known_good(self.g, cand)
        except (OSError, KeyError, UserError):
            return
        if good:
            self.verified_pending.append((self.rounds, set(good)))

    def _rebase(self, active: list[dict]) -> None:
        """After a write of the mitigation filters: each record's count starts at what its slot
        holds now (the XDP counters only grow, and a slot may have served another filter)."""
        self.vd_base = {}
        if self.verified_drops is None:
            return
        try:
            raw = self.verified_drops(self.g)
        except (OSError, KeyError, UserError):
            return
        self.vd_base = {r["id"]: int(raw.get(i, 0)) for i, r in enumerate(active)}

    def _verified_deltas(self, active: list[dict]) -> dict[str, int]:
        """Record id → verified sources its kernel filter dropped since the last read."""
        if self.verified_drops is None:
            return {}
        try:
            raw = self.verified_drops(self.g)
        except (OSError, KeyError, UserError):
            return {}
        out = {}
        for i, r in enumerate(active):
            cur = int(raw.get(i, 0))
            prev = self.vd_base.get(r["id"], 0)
            self.vd_base[r["id"]] = cur
            if cur > prev:
                out[r["id"]] = cur - prev
        return out

    def round(self, snap, samples) -> list[dict]:
        """One detection round. Returns the records changed in it."""
        self.rounds += 1
        now, wall = self.clock(), self.wall()
        st = self.settings
        feats = self.feats = [f for f in (features_of(s) for s in samples if s.reason != "bypass") if f is not None]
        total_pps = snap.rates["dropped"].pps + snap.rates["forwarded"].pps
        n_all = len(feats)
        scale = total_pps / n_all if n_all else 0.0
        by: dict[tuple, list[Features]] = {}
        for x in feats:
            by.setdefault(x.service, []).append(x)
        recs = read_records(self.iface)
        st_now = state.read_state(self.iface) or {}
        active = recs["active"]
        by_service: dict[tuple, list[dict]] = {}
        for r in active:
            by_service.setdefault((r["protected"], r["proto"], r["port"]), []).append(r)
        # verified sources: established connections now; answered sources learned in peacetime
        est_by = {key: established(xs, key[1] == "tcp" and self._tcpstate(key[0])) for key, xs in by.items()}
        self._verify((src_id(x) for xs in est_by.values() for x in xs), now)
        peace = self.peace = not active and all(s.attack_since is None for s in self.services.values())
        if peace:
            self._learn(feats)
        vset = self.verified
        vdrops = self._verified_deltas(active)
        changes: dict[str, dict] = {}
        installs: list[dict] = []
        removals: set[str] = set()
        clean_round: list[Features] = []
        for key in sorted(set(by) | set(by_service)):
            xs = by.get(key, [])
            svc = self._svc(key)
            harmful = [x for x in xs if x.reason in HARMFUL_REASONS or x.kind == "would_drop"]
            clients_now = [x for x in xs if src_id(x) in vset]
            svc.evidence.extend(clients_now)
            flood = [x for x in harmful if src_id(x) not in vset]
            passing = [x for x in flood if x.reason != "mitigation"]
            attack_pps = scale * len(flood)  # the verified clients' own packets are no flood
            passing_pps = scale * len(passing)
            mine = by_service.get(key, [])
            hurt: dict[str, int] = {}
            who: dict[str, set[str]] = {}
            for x in harmful:
                if x.reason == "mitigation":
                    for r in mine:
                        if matches(filter_from_json(r["filter"]), x):
                            self.last_hit[r["id"]] = now
                            self.dropped[r["id"]] = self.dropped.get(r["id"], r.get("dropped_est", 0)) + x.weight
                            r["dropped_est"] = self.dropped[r["id"]]
                            changes[r["id"]] = r
                            if src_id(x) in vset:
                                hurt[r["id"]] = hurt.get(r["id"], 0) + x.weight
                                who.setdefault(r["id"], set()).add(str(ipaddress.ip_address(x.src)))
                            break
            # first, do no harm: a filter that dropped verified clients goes now
            for r in list(mine):
                sampled, counted = hurt.get(r["id"], 0), vdrops.get(r["id"], 0)
                if (sampled or counted) and not r.get("pinned") and r not in installs:
                    srcs = ", ".join(sorted(who.get(r["id"], ()))[:3]) or "counted in XDP"
                    r["state"], r["end"] = "lifted", wall
                    r["verified_drops"] = r.get("verified_drops", 0) + max(sampled, counted)
                    _step(
                        r,
                        "adapt",
                        f"narrow: it dropped verified clients (~{sampled} sampled, {counted} counted "
                        f"in XDP; {srcs}); removed, not reinstalled while this attack lasts",
                    )
                    removals.add(r["id"])
                    changes[r["id"]] = r
                    svc.harmed.append(filter_from_json(r["filter"]))
                    mine = [m for m in mine if m is not r]
            trigger = max(st.min_pps, st.factor * svc.rate)
            above = passing_pps >= trigger and len(passing) >= 2
            if attack_pps >= st.min_pps / 2 and (mine or above):
                svc.last_above = now
            if above:
                svc.peak_pps = max(svc.peak_pps, attack_pps)
                if svc.attack_since is None:
                    svc.attack_since = wall - getattr(snap, "interval_s", 0.0)
                    svc.pending.clear()  # the flood's ramp never becomes baseline
                    self.iface_pending.clear()
                    self.verified_pending.clear()  # nor are its sources (answered by the service) clients
                supp = recs["suppressed"].get(service_key(*key), 0)
                if supp > wall or not levels.mitigation_on(st_now, key[0]):
                    pass  # deleted by the operator lately, or the address's level has no mitigation
                elif len(mine) >= MAX_PER_SERVICE:
                    pass
                elif not mine and (again := self._rearm(svc, passing, now)) is not None:
                    d, lifted_at = again
                    rec = self._new(key, d, attack_pps, wall, svc)
                    _step(
                        rec,
                        "install",
                        f"re-armed: the flood lifted {now - lifted_at:.1f} s ago is back; "
                        f"{d.describe()}; matches {d.coverage:.0%} of it",
                    )
                    installs.append(rec)
                    self.last_hit[rec["id"]] = now
                    mine = mine + [rec]
                elif svc.refused is not None and now - svc.last_try < REFUSED_RETRY_S:
                    pass  # refused a moment ago: derived again once a second at most (daemon CPU)
                else:
                    d = derive(
                        passing,
                        list(svc.baseline),
                        key,
                        st.max_share,
                        st.min_samples,
                        list(self.iface_baseline),
                        list(svc.evidence),
                        strict_clients=bool(mine),
                    )
                    if d.filter is not None and d.filter in svc.harmed:
                        d = replace(
                            d, filter=None, refused=f"{d.describe()} dropped verified clients earlier in this attack"
                        )
                    if d.filter is None:
                        if len(passing) >= st.min_samples:  # too few samples: try again next round
                            svc.last_try = now
                        if svc.refused != (said := _gist(d.refused)):  # once per reason, not per percentage
                            svc.refused = said
                            rec = self._new(key, d, attack_pps, wall, svc)
                            rec["state"], rec["end"] = "refused", wall
                            _step(rec, "refused", d.refused or "")
                            self.log(rec)
                            self.report(f"{self.iface.name}: mitigation refused on {service_key(*key)}: {d.refused}")
                    elif not any(filter_from_json(r["filter"]) == d.filter for r in mine):
                        svc.refused = None
                        rec = self._new(key, d, attack_pps, wall, svc)
                        step = "install" if not mine else "adapt"
                        detail = (
                            f"{d.describe()}; matches {d.coverage:.0%} of the flood, {d.baseline_share:.1%} "
                            f"of {d.baseline_samples} peacetime samples, none of {len(svc.evidence)} "
                            f"verified clients' samples"
                            if svc.evidence
                            else f"{d.describe()}; matches {d.coverage:.0%} of the flood, {d.baseline_share:.1%} "
                            f"of {d.baseline_samples} peacetime samples"
                        )
                        if mine:
                            detail = "widen: the flood changed; " + detail
                        _step(rec, step, detail)
                        installs.append(rec)
                        self.last_hit[rec["id"]] = now
                        mine = mine + [rec]
            elif not mine and attack_pps < st.min_pps / 2:
                if svc.attack_since is not None and now - svc.last_above >= st.hold_s:
                    self._end_attack(svc)
                if svc.attack_since is None:
                    svc.rate = passing_pps if svc.rate_rounds == 0 else 0.9 * svc.rate + 0.1 * passing_pps
                    svc.rate_rounds += 1
                    good = [x for x in xs if x.kind == "pass" and x.reason == "clean"]
                    svc.pending.append((self.rounds, good))
                    clean_round += good
            for r in mine:
                r["peak_pps"] = round(max(r.get("peak_pps", 0.0), attack_pps), 1)
            # adapt (narrow) and lift: promptly once the flood is gone (pulsed floods re-arm at once)
            quiet = now - svc.last_above >= min(st.hold_s, LIFT_S)
            for r in list(mine):
                if r.get("pinned") or r in installs:
                    continue
                if quiet:
                    r["state"], r["end"] = "lifted", wall
                    _step(r, "lift", f"the attack ended: below {st.min_pps / 2:g} pps for {min(st.hold_s, LIFT_S):g} s")
                    removals.add(r["id"])
                    changes[r["id"]] = r
                    svc.rearm = [(m, t) for m, t in svc.rearm if now - t < REARM_S][-MAX_PER_SERVICE + 1 :] + [(r, now)]
                elif now - self.last_hit.setdefault(r["id"], now) >= st.hold_s and len(mine) > 1:
                    r["state"], r["end"] = "lifted", wall
                    _step(r, "adapt", f"narrow: no flood packet matched for {st.hold_s:g} s; removed")
                    removals.add(r["id"])
                    changes[r["id"]] = r
                    mine = [m for m in mine if m is not r]
            if now - svc.last_above >= st.hold_s and not any(r.get("pinned") for r in mine):
                self._end_attack(svc)
        self._commit_baselines(clean_round, now)
        if installs or removals:
            self._apply(installs, removals, changes)
        elif changes and self.rounds % 5 == 0:  # hit estimates, now and then
            self._apply([], set(), changes)
        return installs + [r for r in active if r["id"] in removals]

    @staticmethod
    def _end_attack(svc: _Service) -> None:
        svc.attack_since, svc.refused, svc.peak_pps, svc.last_try = None, None, 0.0, -1e9
        svc.harmed.clear()

    def _rearm(self, svc: _Service, passing: list[Features], now: float):
        """A filter lifted lately whose flood is back (a pulsed flood): (Derivation, lift time) when
        it still covers the flood and none of the verified clients' samples, else None."""
        for r, t in reversed(svc.rearm):
            if now - t >= REARM_S:
                continue
            f = filter_from_json(r["filter"])
            cov = share_matching(f, passing)
            if cov < MIN_COVERAGE or f in svc.harmed or share_matching(f, list(svc.evidence)) > 0:
                continue
            return (
                Derivation(
                    f,
                    cov,
                    r.get("baseline_share", 0.0),
                    r.get("baseline_samples", 0),
                    tuple(r.get("fingerprint", "").split(", ")),
                ),
                t,
            )
        return None

    def _commit_baselines(self, clean_round: list[Features], now: float = 0.0) -> None:
        while self.verified_pending and self.verified_pending[0][0] <= self.rounds - 2:
            self._verify(self.verified_pending.popleft()[1], now)
        for svc in self.services.values():
            while svc.pending and svc.pending[0][0] <= self.rounds - 2:
                svc.baseline.extend(svc.pending.popleft()[1])
        self.iface_pending.append((self.rounds, clean_round))
        while self.iface_pending and self.iface_pending[0][0] <= self.rounds - 2:
            self.iface_baseline.extend(self.iface_pending.popleft()[1])

    def _new(self, key, d: Derivation, pps: float, wall: float, svc: _Service) -> dict:
        prot, proto, port = key
        return {
            "kind": "mitigation",
            "id": "m" + uuid.uuid4().hex[:11],
            "iface": self.iface.name,
            "protected": prot,
            "proto": proto,
            "port": port,
            "state": "active",
            "pinned": False,
            "start": wall,
            "end": None,
            "attack_since": svc.attack_since,
            "peak_pps": round(pps, 1),
            "filter": filter_to_json(d.filter) if d.filter else None,
            "fingerprint": d.describe(),
            "coverage": round(d.coverage, 4),
            "baseline_share": round(d.baseline_share, 4),
            "baseline_samples": d.baseline_samples,
            "top_reasons": [["mitigation", 0]],
            "dropped_est": 0,
        }

    def _apply(self, installs: list[dict], removals: set[str], changes: dict[str, dict]) -> None:
        try:
            with state.iface_lock(self.iface, timeout_s=2.0):
                recs = read_records(self.iface)
                keep = []
                for r in recs["active"]:  # the file's view wins: `mitigations del` may have removed one
                    if r["id"] in removals:
                        mine = changes.get(r["id"]) or r
                        recs["lifted"].append(mine)
                        continue
                    c = changes.get(r["id"])
                    if c is not None:
                        r = {**c, "pinned": r.get("pinned", False)}
                    keep.append(r)
                wall = self.wall()
                for rec in installs:
                    if recs["suppressed"].get(service_key(rec["protected"], rec["proto"], rec["port"]), 0) > wall:
                        continue
                    keep.append(rec)
                recs["active"] = keep
                fit = _realise(self.g, recs)
                self.unsettled = True
                self._rebase(keep[:fit])  # the reader counts from this write on
                if fit < len(keep):
                    recs["active"] = keep[:fit]
                _write_records(self.iface, recs)
        except UserError as exc:
            self.report(f"{self.iface.name}: mitigation not written this round: {exc.message}")
            return
        for rec in installs:
            if rec in recs["active"]:
                rec["top_reasons"] = [["mitigation", rec.get("dropped_est", 0)]]
                self.log(rec)
                self.report(
                    f"{self.iface.name}: mitigation {rec['id']} {rec['last_step']} on "
                    f"{service_key(rec['protected'], rec['proto'], rec['port'])}: {rec['steps'][-1]['detail']}"
                )
        for r in recs["lifted"]:
            if r["id"] in removals:
                r["top_reasons"] = [["mitigation", r.get("dropped_est", 0)]]
                self.log(r)
                self.report(f"{self.iface.name}: mitigation {r['id']} {r['last_step']}: {r['steps'][-1]['detail']}")
                self.last_hit.pop(r["id"], None)
                self.dropped.pop(r["id"], None)


def _settle(g) -> None:
    """guard.settle_filters under the interface lock, between rounds: the next change then writes
    only its own words into the generation not in use. A busy lock skips it (the next change is
    then written in full, which is only slower)."""
    try:
        with state.iface_lock(g.iface, timeout_s=0.2):
            g.settle_filters()
    except (OSError, UserError):  # (a write that failed half-way left no memory: the next one is whole)
        pass


class DaemonHook:
    """DetectionLoop's on_round for `xdpguard run`: one Engine per interface (when mitigation is
    enabled), and the nft connection limits' offenders banned in XDP (connlimit.py)."""

    def __init__(
        self,
        settings: Settings,
        report: Callable[[str], None] = lambda m: None,
        verified_drops: VerifiedDrops | None = None,
    ):
        self.settings = settings
        self.report = report
        self.verified_drops = verified_drops  # xdp_verified_drops in the daemon; None in tests without maps
        self.engines: dict[str, Engine] = {}
        self.learners: dict[str, budgets.BudgetLearner] = {}
        # DetectionLoop.active in the daemon: {(iface, address): True} of the open attacks (the
        # budget learner takes nothing while its interface has one); None in tests
        self.attacked: Callable[[], dict] | None = None

    def __call__(self, name: str, collector, snap, samples) -> None:
        g = collector.guard
        if self.settings.enabled:
            e = self.engines.get(name)
            if e is None or e.iface != g.iface:
                e = self.engines[name] = Engine(
                    g.iface, g, self.settings, self.report, verified_drops=self.verified_drops
                )
            e.g = g  # a collector re-opened after a failed round has a new Guard
            if e.unsettled:  # the last round's change, copied into the other generation now
                e.unsettled = False
                _settle(g)
            e.round(snap, samples)
            # the admission budgets follow each UDP and TCP service's peacetime (budgets.py); the
            # engine's view of peace is the one the learner trusts, so only with mitigation on
            learner = self.learners.setdefault(name, budgets.BudgetLearner(self.report))
            lengths: dict[tuple[str, int], list[int]] = {}
            for x in e.feats:  # parsed once, by the round
                if x.proto == "udp":
                    lengths.setdefault((x.dst, x.dport or 0), []).append(x.length)
            attacked = self.attacked() if self.attacked is not None else {}
            learner.round(g, e.peace and not any(k[0] == name for k in attacked), lengths)
        banned = connlimit.promote(g, connlimit.offenders())
        if banned:
            self.report(
                f"{name}: banned {len(banned)} source(s) over a connection limit in XDP (reason connlimit): "
                + ", ".join(banned[:5])
                + (" …" if len(banned) > 5 else "")
            )
