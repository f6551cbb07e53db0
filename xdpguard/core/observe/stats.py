"""Snapshots of one protected interface: what `top`, `stats`, detection and metrics show.

Counters are cumulative per-CPU sums read from xg_stats_pcpu; rates come from two reads and
the monotonic time between them. Top sources and ports come from the sampled packets of the
same interval (sampling.py): each one's share of the samples times the exact rate of the
traffic it was sampled from, so the figures are estimates at 1 in N and say so.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field

from . import fanout, sampling
from ..nat import forward
from .. import geo, protection, state
from ..errors import UserError
from ..l7 import engine as l7engine
from ..model import fastfwd as fastfwd_model
from ..result import as_dict as _as_dict

SERIES = ("received", "dropped", "passed", "forwarded")
HISTORY_LEN = 120


@dataclass(frozen=True)
class Rate:
    pps: float = 0.0
    bps: float = 0.0  # bits per second


@dataclass(frozen=True)
class CounterRow:
    kind: str
    reason: str
    packets: int  # cumulative
    bytes: int
    pps: float
    bps: float


@dataclass(frozen=True)
class ReasonRow:
    reason: str
    kind: str  # drop | would_drop
    pps: float
    bps: float
    share: float  # of all dropped (and would-drop) packets/s, 0..1


@dataclass(frozen=True)
class Talker:
    key: str  # source address, or proto/port
    pps: float  # estimate from samples
    bps: float
    share: float  # of the sampled packets, 0..1
    dropped_share: float  # of its samples that were dropped, 0..1
    top_reason: str


@dataclass(frozen=True)
class BackendRow:
    endpoint: str
    health: str
    weight: int
    backup: bool


@dataclass(frozen=True)
class RuleRow:
    key: str
    protected: str
    backends: list[BackendRow]
    packets: int  # nftables' rule counter (the slow path)
    bytes: int
    pps: float  # both paths
    bps: float
    fast_packets: int = 0  # the XDP fast path's (nftables never sees them)
    fast_bytes: int = 0


@dataclass(frozen=True)
class HttpRow:
    """One HTTP service HAProxy serves (l7/): its frontend's counters since HAProxy started,
    and the request rate over the last interval. challenged: 302 challenge answers; limited:
    requests denied (429, tarpit) by a limit or a rule; banned: sources banned in XDP for it
    (reason cc, every service of the interface)."""

    service: str
    requests: int
    requests_per_s: float
    challenged: int
    limited: int
    banned: int
    to_dict = _as_dict


@dataclass(frozen=True)
class AttackRow:
    id: str
    protected: str
    start: float  # wall clock
    end: float | None
    peak_pps: float
    peak_bps: float
    top_reasons: list[str]
    top_sources: list[str]


@dataclass(frozen=True)
class Snapshot:
    iface: str
    mode: str
    prog_id: int
    protected: list[str]
    monitor: bool
    time: float  # wall clock of the second read
    interval_s: float  # time between the two reads
    rates: dict[str, Rate]  # SERIES
    history: dict[str, list[float]]  # SERIES → pps, oldest first
    counters: list[CounterRow]
    reasons: list[ReasonRow]
    sources: list[Talker]
    ports: list[Talker]
    sample_every: int
    samples: int  # samples read in this interval
    samples_lost: int  # cumulative, ring full
    rules: list[RuleRow]
    lists: dict[str, int]  # block, allow, bans
    under_attack: bool
    attack_since: float | None  # wall clock
    attacked: list[str]  # protected addresses under attack
    events: list[AttackRow] = field(default_factory=list)
    dst_shares: dict[str, float] = field(default_factory=dict)  # protected address → share of samples
    samples_missed: int = 0  # cumulative: samples the daemon's fan-out or our buffer dropped for us
    sample_source: str = "ring"  # ring (read ourselves) | daemon (fanned out by `xdpguard run`)
    http: list[HttpRow] = field(default_factory=list)  # HTTP services behind HAProxy (l7/)
    countries: dict[str, list[Talker]] = field(default_factory=dict)  # dropped | passed → top source countries
    # verified clients and admission budgets (guard.verified_counters; `stats` only: it walks the verified map)
    verified: dict = field(default_factory=dict)
    to_dict = _as_dict


# ---- pure helpers ----

Counts = dict[tuple[str, str], tuple[int, int]]  # (kind, reason) → (packets, bytes)


def series_of(kind: str, reason: str) -> list[str]:
    """Which SERIES a (kind, reason) slot counts towards."""
    if reason == "bypass":
        return ["received", "passed"]
    out = ["received"]
    if kind == "drop":
        out.append("dropped")
    else:  # pass or would_drop: the packet went on to the protected address
        out += ["passed", "forwarded"]
    return out


def compute_rates(before: Counts, after: Counts, dt: float) -> tuple[dict[str, Rate], list[CounterRow]]:
    dt = max(dt, 1e-6)
    tot = {s: [0.0, 0.0] for s in SERIES}
    rows = []
    for key in sorted(set(before) | set(after)):
        p1, b1 = after.get(key, (0, 0))
        p0, b0 = before.get(key, (0, 0))
        dp, db = max(0, p1 - p0) / dt, max(0, b1 - b0) * 8 / dt
        if p1:
            rows.append(CounterRow(key[0], key[1], p1, b1, dp, db))
        for s in series_of(*key):
            tot[s][0] += dp
            tot[s][1] += db
    return {s: Rate(*v) for s, v in tot.items()}, rows


def drop_reasons(rows: list[CounterRow]) -> list[ReasonRow]:
    drops = [r for r in rows if r.kind in ("drop", "would_drop")]
    total = sum(r.pps for r in drops)
    out = [ReasonRow(r.reason, r.kind, r.pps, r.bps, (r.pps / total) if total else 0.0) for r in drops]
    # busiest first, then the cumulative count keeps idle reasons in a stable order
    cum = {(r.kind, r.reason): r.packets for r in drops}
    out.sort(key=lambda r: (-r.pps, -cum[(r.kind, r.reason)], r.reason))
    return out


def top_talkers(
    samples: list[sampling.PacketSample],
    rate: Rate,
    key: Callable[[sampling.PacketSample], str | None],
    limit: int = 10,
) -> list[Talker]:
    """Rank samples by key; scale each key's share of samples (and of sampled bytes) by the
    exact rate of the traffic they were sampled from."""
    keyed = [(key(s), s) for s in samples]
    keyed = [(k, s) for k, s in keyed if k is not None]
    if not keyed:
        return []
    n = len(keyed)
    nbytes = sum(s.pkt_len for _, s in keyed) or 1
    count: Tally[str] = Tally()
    by: Tally[str] = Tally()
    dropped: Tally[str] = Tally()
    reasons: dict[str, Tally[str]] = {}
    for k, s in keyed:
        count[k] += 1
        by[k] += s.pkt_len
        if s.dropped:
            dropped[k] += 1
        reasons.setdefault(k, Tally())[s.reason] += 1
    out = []
    for k, c in sorted(count.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]:
        out.append(
            Talker(
                k, rate.pps * c / n, rate.bps * by[k] / nbytes, c / n, dropped[k] / c, reasons[k].most_common(1)[0][0]
            )
        )
    return out


def source_key(s: sampling.PacketSample) -> str | None:
    return s.src if s.family else None


def port_key(s: sampling.PacketSample) -> str | None:
    if s.proto in ("tcp", "udp"):
        return f"{s.proto}/{s.dport}"
    return s.proto if s.family else None


def sparkline(values: list[float], width: int) -> str:
    """The last `width` values as block characters, scaled to their own maximum."""
    bars = "▁▂▃▄▅▆▇█"
    vals = values[-width:] if width > 0 else []
    top = max(vals, default=0.0)
    if top <= 0:
        return bars[0] * len(vals)
    return "".join(bars[min(7, int(v / top * 7.999))] for v in vals)


# ---- collection from the kernel ----


def read_counts(guard: protection.Guard) -> Counts:
    return guard.counts()


def _fast_rule_counts(guard: protection.Guard | None) -> dict[int, tuple[int, int]]:
    """Rule id → the fast path's (packets, bytes) of the rule (none without the fast path)."""
    if guard is None:
        return {}
    try:
        return guard.fastfwd_rule_counters() if guard.fastfwd_compiled() else {}
    except (UserError, OSError):
        return {}


def _rules(ifname: str, guard: protection.Guard | None = None) -> list[tuple]:
    """(key, protected, backends, nft packets, nft bytes, fast packets, fast bytes) per rule."""
    try:
        res = forward.show(ifname)
    except (UserError, OSError, RuntimeError):
        return []
    fast = _fast_rule_counts(guard)
    return [
        (
            r.key,
            r.protected,
            [BackendRow(b.endpoint, b.health, b.weight, b.backup) for b in r.backends],
            r.packets,
            r.bytes,
            *fast.get(fastfwd_model.rule_id(r.key), (0, 0)),
        )
        for r in res.rules
    ]


def _bans(guard: protection.Guard) -> int | None:
    """Dynamic and operator bans."""
    return guard.ban_count()


class Collector:
    """Reads one interface repeatedly; keeps the previous read and the rate history."""

    def __init__(
        self,
        ifname: str | None,
        sample_every: int | None = None,
        history_len: int = HISTORY_LEN,
        attack_source: Callable[[Snapshot], tuple[bool, float | None, list[str], list[AttackRow]]] | None = None,
        source=None,
    ):
        self.guard = protection.open_guard(ifname)
        self.ifname = self.guard.iface.name
        self.history: dict[str, list[float]] = {s: [] for s in SERIES}
        self.history_len = history_len
        self.attack_source = attack_source
        if sample_every is not None:
            self.guard.set_sample_every(sample_every)
        elif self.guard.sample_every() == 0:
            self.guard.set_sample_every(sampling.DEFAULT_SAMPLE_EVERY)
        # the samples: given (the daemon's own subscription), else the daemon's fan-out, else the ring
        self.reader = source if source is not None else fanout.open_source(self.guard)
        self._prev: tuple[float, Counts, dict[str, tuple[int, int]]] | None = None
        self._st = state.read_state(self.guard.iface) or {}
        self._country_of: geo.CountryOf | None = None  # opened at the first samples

    def close(self) -> None:
        self.reader.close()
        self.guard.close()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _http(self, dt: float) -> list[HttpRow]:
        rows = l7engine.stats()
        if not rows:
            return []
        out = http_rows(rows, getattr(self, "_http_prev", {}), dt, cc_bans(self.guard))
        self._http_prev = {r.service: r.requests for r in out}
        return out

    def _read(self) -> tuple[float, Counts, dict[str, tuple[int, int]]]:
        rules = {k: (p + fp, b + fb) for k, _, _, p, b, fp, fb in _rules(self.ifname, self.guard)}
        return time.monotonic(), read_counts(self.guard), rules

    def prime(self) -> None:
        self._prev = self._read()

    def collect(
        self, interval_s: float, sample_window_s: float | None = None, stop: Callable[[], bool] | None = None
    ) -> Snapshot:
        """Wait `interval_s` (draining samples for `sample_window_s` of it, default all of it),
        then read and return a Snapshot with rates over the time since the previous read.
        `stop()` is polled while waiting; when it returns True the wait ends early."""
        if self._prev is None:
            self.prime()
        start = time.monotonic()
        if self.reader.ended:  # the daemon went away: read the ring ourselves (or from the next one)
            self.reader.close()
            self.reader = fanout.open_source(self.guard)
        elif self.reader.takes_turns and fanout.socket_path().exists():  # a daemon came up: it owns the ring now
            stream = fanout.connect(self.ifname)
            if stream is not None:
                self.reader.close()
                self.reader = stream
        window = interval_s if sample_window_s is None else min(sample_window_s, interval_s)
        if not self.reader.takes_turns:  # a fan-out sees every sample: no need to leave the ring to others
            samples = self.reader.window(interval_s, stop=stop)
        else:
            samples = self.reader.window(window, wait_s=min(1.0, interval_s / 4)) if window > 0 else []
        while True:
            left = start + interval_s - time.monotonic()
            if left <= 0 or (stop is not None and stop()):
                break
            time.sleep(min(left, 0.05))
        return self.snapshot_from(samples)

    def snapshot_from(self, samples: list[sampling.PacketSample]) -> Snapshot:
        t1, c1, r1 = self._read()
        t0, c0, r0 = self._prev if self._prev is not None else (t1, c1, r1)
        self._prev = (t1, c1, r1)
        dt = t1 - t0
        rates, rows = compute_rates(c0, c1, dt)
        for s in SERIES:
            h = self.history[s]
            h.append(rates[s].pps)
            del h[: max(0, len(h) - self.history_len)]
        ours = [s for s in samples if s.reason != "bypass"]
        protected_rate = Rate(
            rates["dropped"].pps + rates["forwarded"].pps, rates["dropped"].bps + rates["forwarded"].bps
        )
        rules = []
        for key, prot, backends, pk, by, fpk, fby in _rules(self.ifname, self.guard):
            tp, tb = pk + fpk, by + fby  # the rates count both paths
            p0, b0 = r0.get(key, (tp, tb))
            rules.append(
                RuleRow(
                    key,
                    prot,
                    backends,
                    pk,
                    by,
                    max(0, tp - p0) / max(dt, 1e-6),
                    max(0, tb - b0) * 8 / max(dt, 1e-6),
                    fpk,
                    fby,
                )
            )
        cfg = self.guard.config()
        lists = {w: self.guard.list_size(w) for w in protection.LISTS}
        bans = _bans(self.guard)
        if bans is not None:
            lists["bans"] = bans
        _, lost = self.guard.sample_counters()
        snap = Snapshot(
            iface=self.ifname,
            mode=self.guard.att.mode,
            prog_id=self.guard.att.prog_id,
            protected=self.guard.protected(),
            monitor=bool(cfg.monitor_mask),
            time=time.time(),
            interval_s=dt,
            rates=rates,
            history={s: list(v) for s, v in self.history.items()},
            counters=rows,
            reasons=drop_reasons(rows),
            sources=top_talkers(ours, protected_rate, source_key),
            ports=top_talkers(ours, protected_rate, port_key),
            sample_every=self.guard.sample_every(),
            samples=len(ours),
            samples_lost=lost,
            rules=rules,
            lists=lists,
            under_attack=False,
            attack_since=None,
            attacked=[],
            events=[],
            dst_shares=_dst_shares(ours),
            samples_missed=self.reader.missed,
            sample_source=self.reader.via,
            countries=self._countries(ours, rates),
        )
        http = self._http(dt)
        if http:
            snap = _replace(snap, http=http)
        if self.attack_source is not None:
            active, since, attacked, events = self.attack_source(snap)
            snap = _replace(snap, under_attack=active, attack_since=since, attacked=attacked, events=events)
        return snap

    def _countries(self, ours: list[sampling.PacketSample], rates: dict[str, Rate]) -> dict[str, list[Talker]]:
        """Top countries of the sampled sources, dropped and passed (geo.py; {} without a database)."""
        if not ours:
            return {}
        if self._country_of is None:
            self._country_of = geo.CountryOf()
        of = self._country_of
        if not of.available:
            return {}
        key = lambda s: of(s.src) if s.family else None  # noqa: E731
        return {
            "dropped": top_talkers([s for s in ours if s.dropped], rates["dropped"], key),
            "passed": top_talkers([s for s in ours if not s.dropped], rates["forwarded"], key),
        }


def http_rows(rows, prev: dict[str, int], dt: float, banned: int) -> list[HttpRow]:
    """Pure: HttpRows from HAProxy's `show stat` rows (frontends named <service>_fe)."""
    out = []
    for r in rows:
        if r.name != "FRONTEND" or not r.proxy.endswith("_fe"):
            continue
        svc = r.proxy[: -len("_fe")]
        before = prev.get(svc, r.requests_total)
        out.append(
            HttpRow(
                svc,
                r.requests_total,
                max(0, r.requests_total - before) / max(dt, 1e-6),
                r.http_3xx,
                r.denied_requests,
                banned,
            )
        )
    return out


def with_verified(guard: protection.Guard, snap: Snapshot) -> Snapshot:
    """snap with the verified-client and do-no-harm counters (guard.verified_counters)."""
    return _replace(snap, verified=guard.verified_counters())


def cc_bans(guard: protection.Guard) -> int:
    """Dynamic bans with reason cc (HTTP offenders promoted by `xdpguard run`)."""
    return guard.cc_ban_count()


def _dst_shares(samples: list[sampling.PacketSample]) -> dict[str, float]:
    t = Tally(s.dst for s in samples if s.family)
    n = sum(t.values())
    return {d: c / n for d, c in t.items()} if n else {}


def _replace(snap: Snapshot, **kw) -> Snapshot:
    from dataclasses import replace

    return replace(snap, **kw)
