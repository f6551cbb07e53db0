"""Attack detection: thresholds per protected address, attack events, their log and hook.

Thresholds (packets/s and bits/s, overall and per drop reason; 0 = none) live in the
interface's state file under "attack". A protected address whose measured rates cross any
threshold opens an attack event; the event closes once every rate stayed below for `hold_s`.
Each event keeps start, end, peak pps/bps, top reasons, sources and ports; its start and end
are appended to $XDPGUARD_STATE_DIR/events.jsonl (one JSON object a line, the later line of an
id wins), and an optional hook command gets the event JSON on stdin at start and end.

Per-address rates: with one protected address the interface's exact counters are its own;
with several, each address gets its share of the sampled packets (an estimate at 1 in N); an
interval without samples keeps the last sampled split, and an address never sampled gets
nothing (it is not "under attack" just because its interface is).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import state
from ..model import vocab
from .stats import AttackRow, Collector
from ..errors import UserError
from ..model.thresholds import DEFAULT_HOLD_S, DEFAULT_THRESHOLDS, EventConfig, Measure, Thresholds, exceeded  # noqa: F401 (old home)

STATE_KEY = state.ATTACK.key  # the old name (reconcile.py spells the key through it)
HOOK_TIMEOUT_S = 30.0


def load_config(iface: state.Iface) -> EventConfig:
    try:
        return state.get(state.read_state(iface), state.ATTACK)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise UserError(f"state of {iface.name}: bad attack thresholds: {exc}") from None


def set_config(iface: state.Iface, update: Callable[[EventConfig], EventConfig]) -> EventConfig:
    with state.iface_lock(iface):
        st = state.read_state(iface)
        if st is None:
            raise UserError(f"{iface.name} is not protected by xdpguard; run 'xdpguard attach {iface.name}' first")
        cfg = update(state.get(st, state.ATTACK))
        state.put(st, state.ATTACK, cfg)
        state.write_state(iface, st)
    return cfg


parse_rate = vocab.parse_rate  # '1000', '10k', '1.5M', '2G'; finite, ≥ 0 (0 switches a threshold off)


# ---- events ----


@dataclass
class AttackEvent:
    id: str
    iface: str
    protected: str
    start: float  # wall clock
    end: float | None = None
    state: str = "open"  # open | closed
    peak_pps: float = 0.0
    peak_bps: float = 0.0
    peak_drop_pps: float = 0.0
    peak_drop_bps: float = 0.0
    triggers: list[str] = field(default_factory=list)
    top_reasons: list[list] = field(default_factory=list)  # [reason, estimated packets]
    top_sources: list[list] = field(default_factory=list)  # [address, peak pps]
    top_ports: list[list] = field(default_factory=list)  # [proto/port, peak pps]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["duration_s"] = round((self.end if self.end is not None else time.time()) - self.start, 3)
        return d


@dataclass
class _Open:
    event: AttackEvent
    last_above: float  # detector clock
    reasons: Tally = field(default_factory=Tally)
    sources: dict[str, float] = field(default_factory=dict)
    ports: dict[str, float] = field(default_factory=dict)


class Detector:
    """Turns per-interval measures into attack events. `clock` is monotonic seconds (a fake in
    tests); `wall` stamps the events; `sink(phase, event)` receives 'start' and 'end'."""

    def __init__(
        self,
        iface: str,
        config: EventConfig,
        sink: Callable[[str, AttackEvent], None] = lambda p, e: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.iface = iface
        self.config = config
        self.sink = sink
        self.clock = clock
        self.wall = wall
        self.open: dict[str, _Open] = {}

    def active(self) -> list[AttackEvent]:
        return [o.event for o in self.open.values()]

    def update(self, measures: dict[str, Measure], interval_s: float) -> list[tuple[str, AttackEvent]]:
        now = self.clock()
        out: list[tuple[str, AttackEvent]] = []
        for addr in sorted(set(measures) | set(self.open)):
            m = measures.get(addr, Measure())
            hit = exceeded(self.config.for_address(addr), m)
            o = self.open.get(addr)
            if hit and o is None:
                ev = AttackEvent(uuid.uuid4().hex[:12], self.iface, addr, self.wall(), triggers=hit)
                o = self.open[addr] = _Open(ev, now)
                out.append(("start", ev))
            if o is None:
                continue
            ev = o.event
            if hit:
                o.last_above = now
                ev.triggers = sorted(set(ev.triggers) | set(hit))
            ev.peak_pps = max(ev.peak_pps, m.pps)
            ev.peak_bps = max(ev.peak_bps, m.bps)
            ev.peak_drop_pps = max(ev.peak_drop_pps, m.drop_pps)
            ev.peak_drop_bps = max(ev.peak_drop_bps, m.drop_bps)
            for r, (p, _) in m.reasons.items():
                o.reasons[r] += p * interval_s
            for s, p in m.sources.items():
                o.sources[s] = max(o.sources.get(s, 0.0), p)
            for s, p in m.ports.items():
                o.ports[s] = max(o.ports.get(s, 0.0), p)
            ev.top_reasons = [[r, round(n)] for r, n in o.reasons.most_common(5) if n > 0]
            ev.top_sources = [[s, round(p, 1)] for s, p in sorted(o.sources.items(), key=lambda kv: -kv[1])[:10]]
            ev.top_ports = [[s, round(p, 1)] for s, p in sorted(o.ports.items(), key=lambda kv: -kv[1])[:10]]
            if not hit and now - o.last_above >= self.config.hold_s:
                ev.end = self.wall()
                ev.state = "closed"
                del self.open[addr]
                out.append(("end", ev))
        for phase, ev in out:
            self.sink(phase, ev)
        return out

    def close_all(self) -> list[tuple[str, AttackEvent]]:
        """On shutdown: close what is open (so the log never keeps a dangling event)."""
        out = []
        for addr, o in list(self.open.items()):
            o.event.end = self.wall()
            o.event.state = "closed"
            o.event.triggers = sorted(set(o.event.triggers) | {"controller stopped"})
            del self.open[addr]
            out.append(("end", o.event))
            self.sink("end", o.event)
        return out


def measures_from_snapshot(snap, known_shares: dict[str, float] | None = None) -> dict[str, Measure]:
    """Per protected address rates from a stats.Snapshot (exact for a single address).

    With several addresses the interface's counters are split by each address's share of the
    interval's samples; an interval without samples uses `known_shares` (the last sampled
    split, kept by `Attribution`), and with neither an address gets no rates at all: it has no
    evidence of traffic, so it must not inherit the whole interface's attack (an IPv6 address
    that received nothing during an IPv4-only flood is not under attack). Top sources go only
    to addresses of their own family."""
    rates = snap.rates
    drop_p, drop_b = rates["dropped"].pps, rates["dropped"].bps
    # would_drop (monitor mode) is an attack too: it would have been dropped.
    wd = [r for r in snap.reasons if r.kind == "would_drop"]
    drop_p += sum(r.pps for r in wd)
    drop_b += sum(r.bps for r in wd)
    tot_p = rates["dropped"].pps + rates["forwarded"].pps
    tot_b = rates["dropped"].bps + rates["forwarded"].bps
    reasons: dict[str, tuple[float, float]] = {}
    for r in snap.reasons:
        p, b = reasons.get(r.reason, (0.0, 0.0))
        reasons[r.reason] = (p + r.pps, b + r.bps)
    ports = {t.key: t.pps for t in snap.ports}
    if len(snap.protected) <= 1:
        return {
            a: Measure(tot_p, tot_b, drop_p, drop_b, reasons, {t.key: t.pps for t in snap.sources}, ports)
            for a in snap.protected
        }
    shares = getattr(snap, "dst_shares", None) or known_shares or {}
    out = {}
    for a in snap.protected:
        k = shares.get(a, 0.0)
        if not k:
            out[a] = Measure()
            continue
        fam = _family(a)
        out[a] = Measure(
            tot_p * k,
            tot_b * k,
            drop_p * k,
            drop_b * k,
            {r: (p * k, b * k) for r, (p, b) in reasons.items()},
            {t.key: t.pps for t in snap.sources if _family(t.key) == fam},
            ports,
        )
    return out


def _family(addr: str) -> int:
    return 6 if ":" in addr else 4


class Attribution:
    """measures_from_snapshot over successive snapshots of one interface, remembering the last
    sampled split between its protected addresses for the intervals that had no samples."""

    def __init__(self) -> None:
        self.shares: dict[str, float] = {}

    def __call__(self, snap) -> dict[str, Measure]:
        if getattr(snap, "dst_shares", None):
            self.shares = dict(snap.dst_shares)
        return measures_from_snapshot(snap, self.shares)


# ---- the log and the hook ----


def log_path() -> Path:
    return state.events_log_path()


def append_record(rec: dict, path: Path | None = None) -> None:
    """One record (an attack event's or a mitigation's) in the log, stamped with this namespace."""
    state.append_log_line(path or log_path(), {**rec, "netns": state.netns_key()})


def append_log(ev: AttackEvent, path: Path | None = None) -> None:
    append_record(ev.to_dict(), path)


def read_log(path: Path | None = None, iface: str | None = None, this_netns: bool = True) -> list[dict]:
    """Events, oldest first; the last line of each id wins."""
    path = path or log_path()
    events: dict[str, dict] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    ns = state.netns_key()
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue  # a torn last line of a crashed writer
        if not isinstance(d, dict) or "id" not in d:
            continue
        if this_netns and d.get("netns") not in (None, ns):
            continue
        if iface is not None and d.get("iface") != iface:
            continue
        events[d["id"]] = d
    return sorted(events.values(), key=lambda d: d.get("start", 0))


class HookRunner:
    """Runs the hook command (no shell: split like a shell would) with the event on stdin.

    A hook can never stop detection: a command that does not split, a program that is gone or
    not executable, a hook that fails or hangs (killed after HOOK_TIMEOUT_S) is recorded in
    `error` and otherwise ignored. (Set-time validation, vocab.parse_hook, refuses most of
    these; a state file edited by hand or a program removed later still gets here.)"""

    def __init__(self, command: str | None):
        self.error: str | None = None
        try:
            self.argv = shlex.split(command) if command else None
        except ValueError as exc:
            self.argv, self.error = None, f"hook {command!r} not run: {exc}"
        self.running: list[subprocess.Popen] = []

    def __call__(self, phase: str, ev: AttackEvent) -> None:
        self.reap()
        if not self.argv:
            return
        env = {**os.environ, "XDPGUARD_EVENT_PHASE": phase, "XDPGUARD_EVENT_ID": ev.id}
        try:
            p = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:  # ValueError: a NUL byte in argv
            self.error = f"hook {self.argv[0]!r} not run: {getattr(exc, 'strerror', None) or exc}"
            return
        try:
            p.stdin.write(json.dumps({"phase": phase, **ev.to_dict()}).encode())
            p.stdin.close()
        except OSError:
            pass
        p._xg_deadline = time.monotonic() + HOOK_TIMEOUT_S  # type: ignore[attr-defined]
        self.running.append(p)

    def reap(self, wait: bool = False) -> None:
        keep = []
        for p in self.running:
            if wait:
                try:
                    p.wait(timeout=max(0.0, p._xg_deadline - time.monotonic()))  # type: ignore[attr-defined]
                except subprocess.TimeoutExpired:
                    pass
            if p.poll() is None:
                if time.monotonic() > p._xg_deadline:  # type: ignore[attr-defined]
                    p.kill()
                    p.wait()
                else:
                    keep.append(p)
        self.running = keep


# ---- what `top` and `run` use ----


def _row(d: dict):
    return AttackRow(
        d.get("id", "?"),
        d.get("protected", "?"),
        float(d.get("start", 0)),
        None if d.get("end") is None else float(d["end"]),
        float(d.get("peak_pps", 0)),
        float(d.get("peak_bps", 0)),
        [r[0] for r in d.get("top_reasons", [])],
        [s[0] for s in d.get("top_sources", [])],
    )


class AttackTracker:
    """For a dashboard: attack state from the event log (written by `xdpguard run`) and from a
    detector of its own over the same snapshots (no log, no hook), so the state shows without
    `run` too. Called with each Snapshot; returns (active, since, attacked addresses, events)."""

    def __init__(self, iface: state.Iface, recent: int = 10):
        self.iface = iface
        self.detector = Detector(iface.name, load_config(iface))
        self.attribution = Attribution()
        self.recent = recent

    def __call__(self, snap):
        self.detector.update(self.attribution(snap), snap.interval_s)
        logged = read_log(iface=snap.iface)
        open_logged = [d for d in logged if d.get("state") == "open"]
        mine = self.detector.active()
        rows = [_row(d) for d in logged[-self.recent :]]
        if not open_logged:
            rows += [_row(e.to_dict()) for e in mine]
        starts = [float(d["start"]) for d in open_logged] + [e.start for e in mine]
        attacked = sorted({d.get("protected", "?") for d in open_logged} | {e.protected for e in mine})
        return bool(starts), (min(starts) if starts else None), attacked, rows


class DetectionLoop:
    """Attack detection for every protected interface of this network namespace (run's thread)."""

    def __init__(
        self,
        interval_s: float = 1.0,
        overrides: Thresholds | None = None,
        hold_s: float | None = None,
        hook: str | None = None,
        report: Callable[[str, AttackEvent], None] = lambda p, e: None,
        source_for: Callable[[str], object] | None = None,
        on_snapshot: Callable[[str, object, list[str]], None] | None = None,
        on_round: Callable[[str, object, object, list], None] | None = None,
    ):
        self.source_for = source_for  # iface → its sample source (the daemon's fan-out); None: Collector's own
        self.on_snapshot = on_snapshot  # (iface, snapshot, attacked addresses) after each round: the history
        self.interval_s = interval_s
        self.on_round = on_round  # (iface, Collector, Snapshot, samples): automatic mitigation (mitigation.py)
        self.overrides = overrides
        self.hold_s = hold_s
        self.hook = hook
        self.report = report
        self.detectors: dict[str, Detector] = {}
        self.attributions: dict[str, Attribution] = {}
        self.collectors: dict[str, object] = {}
        self.hooks: dict[str, HookRunner] = {}
        self.errors: dict[str, str] = {}

    def problems(self) -> dict[str, str]:
        """What went wrong per interface: its last failed round, or its hook's last failure."""
        out = {name: h.error for name, h in self.hooks.items() if h.error}
        out.update(self.errors)
        return out

    def active(self) -> dict[tuple[str, str], bool]:
        return {(d.iface, e.protected): True for d in list(self.detectors.values()) for e in d.active()}

    def _config(self, iface: state.Iface) -> EventConfig:
        cfg = load_config(iface)
        if self.overrides is not None and not self.overrides.is_empty():
            cfg = EventConfig(self.overrides, {}, cfg.hold_s, cfg.hook)
        if self.hold_s is not None:
            cfg = EventConfig(cfg.default, cfg.addresses, self.hold_s, cfg.hook)
        if self.hook is not None:
            cfg = EventConfig(cfg.default, cfg.addresses, cfg.hold_s, self.hook)
        return cfg

    def _sink(self, name: str):
        def sink(phase: str, ev: AttackEvent) -> None:
            append_log(ev)
            self.hooks[name](phase, ev)
            self.report(phase, ev)

        return sink

    def _ensure(self, name: str) -> None:
        if name in self.collectors:
            return
        iface = state.resolve_iface(name)
        cfg = self._config(iface)
        self.hooks[name] = HookRunner(cfg.hook)
        col = Collector(name, source=self.source_for(name) if self.source_for is not None else None)
        col.prime()
        self.collectors[name] = col
        self.detectors[name] = Detector(name, cfg, sink=self._sink(name))
        self.attributions[name] = Attribution()

    def _drop(self, name: str) -> None:
        col = self.collectors.pop(name, None)
        if col is not None:
            col.close()
        self.attributions.pop(name, None)
        det = self.detectors.pop(name, None)
        if det is not None:
            det.close_all()
        h = self.hooks.pop(name, None)
        if h is not None:
            h.reap(wait=True)

    def tick(self) -> None:
        """One detection round over every interface (each collect waits interval_s)."""
        names = state.protected_ifaces()
        for gone in set(self.collectors) - set(names):
            self._drop(gone)
        if not names:
            time.sleep(self.interval_s)
            return
        per = self.interval_s / len(names)
        for name in names:
            try:
                self._ensure(name)
                col = self.collectors[name]
                if self.on_round is None:
                    snap = col.collect(per, sample_window_s=per / 2)
                else:  # the round's samples go to the mitigation engine too (half the round, as
                    # collect() reads: the other half leaves the stream to `top` and `capture`)
                    t0 = time.monotonic()
                    samples = col.reader.window(per / 2, wait_s=min(1.0, per / 4))
                    left = t0 + per - time.monotonic()
                    if left > 0:
                        time.sleep(left)
                    snap = col.snapshot_from(samples)
                    self.on_round(name, col, snap, samples)
                self.detectors[name].update(self.attributions[name](snap), snap.interval_s)
                if self.on_snapshot is not None:
                    self.on_snapshot(name, snap, [e.protected for e in self.detectors[name].active()])
                self.hooks[name].reap()
                self.errors.pop(name, None)
            except (UserError, OSError) as exc:
                self.errors[name] = str(getattr(exc, "message", exc))
                self._drop(name)
                time.sleep(per)
            except Exception as exc:  # detection of the other interfaces, and of this one next round, goes on
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                self._drop(name)
                time.sleep(per)

    def close(self) -> None:
        for name in list(self.collectors):
            self._drop(name)
