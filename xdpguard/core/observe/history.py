"""The daemon's rolling traffic history, on disk, for `xdpguard report`.

`xdpguard run` turns each detection snapshot of an interface (one a second by default) into
one record: received / dropped / forwarded / passed pps and bps, dropped pps and bps by reason,
the sampled top sources and ports, the top countries of the dropped (`cd`) and passed (`cp`)
samples when a geo database is there, the samples seen, the protected addresses under attack.
Records go into three tiers under the namespace's state directory,
`<netns_state_dir>/history/<iface>/`:

    tier  resolution  kept for   share of the size cap
    1s    1 s         1 hour     1/2
    10s   10 s        1 day      3/10
    60s   60 s        1 week     1/5

A coarse record is `merge()` of the 1 s records of its bucket (time-weighted means, peaks kept
as maxima, sources and ports averaged over the bucket, attacked addresses united); `downsample()`
is the same over a whole list. Each tier is a sequence of segment files `<start>.jsonl`, one JSON
record a line, written with one O_APPEND write each (fdatasync every FSYNC_EVERY records): a
crash mid-write tears at most the last line, which the reader skips and the next writer cuts
off before it appends. A tier never holds more than its share of `cap_bytes`: a segment is
closed when it reaches 1/8 of that share (or spans 1/6 of the tier's retention), and the oldest
segments go as soon as the tier would otherwise exceed its share or they hold only records older
than its retention. A restarted daemon rebuilds the coarse buckets it was filling from the 1 s
tier, so a restart loses no coarse data that the 1 s tier still holds.

Policy in force (the interface's cleansing policy as TOML: its desired spec as stored, what
`export` would print, without lists) is kept beside the tiers in `policy.jsonl`, a line each time it changes, so a report can
say which mitigations were configured during an attack.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from .. import state, store
from ..errors import UserError
from ..model.desired import Desired
from ..desired.dump import to_toml

DEFAULT_CAP_BYTES = 64 << 20  # all tiers of one interface together
FSYNC_EVERY = 10  # records between two fdatasyncs of a tier's segment
TOP_N = 5  # sources and ports kept per record
POLICY_EVERY_S = 30.0  # how often the recorder looks for a changed policy
POLICY_KEEP = 100  # policy changes kept per interface


@dataclass(frozen=True)
class Tier:
    name: str
    step_s: int  # resolution
    keep_s: int  # retention
    share: float  # of the size cap


TIERS = (Tier("1s", 1, 3600, 0.5), Tier("10s", 10, 86400, 0.3), Tier("60s", 60, 7 * 86400, 0.2))
SERIES = ("rx", "drop", "fwd", "pass")  # received, dropped, forwarded, passed: [pps, bps]


def history_root() -> Path:
    return state.state_root() / state.netns_key() / "history"


def iface_dir(iface: str, root: Path | None = None) -> Path:
    return (root or history_root()) / iface


# ---- records (pure) ----


def record_of(snap, attacked: Iterable[str] = (), missed: int = 0) -> dict:
    """One history record from a stats.Snapshot."""
    rates = snap.rates
    names = {"rx": "received", "drop": "dropped", "fwd": "forwarded", "pass": "passed"}
    rec: dict = {"t": round(snap.time, 3), "dt": round(snap.interval_s, 4)}
    for short, long in names.items():
        rec[short] = [round(rates[long].pps, 2), round(rates[long].bps, 1)]
    reasons: dict[str, list[float]] = {}
    for r in snap.reasons:
        if r.pps > 0 or r.bps > 0:
            key = r.reason if r.kind == "drop" else f"{r.reason} (would drop)"
            reasons[key] = [round(r.pps, 2), round(r.bps, 1)]
    rec["r"] = reasons
    rec["src"] = [[t.key, round(t.pps, 2)] for t in snap.sources[:TOP_N]]
    rec["port"] = [[t.key, round(t.pps, 2)] for t in snap.ports[:TOP_N]]
    countries = getattr(snap, "countries", None) or {}  # the geo database's (stats.Collector._countries)
    for key, which in (("cd", "dropped"), ("cp", "passed")):
        if countries.get(which):
            rec[key] = [[t.key, round(t.pps, 2)] for t in countries[which][:TOP_N]]
    rec["ns"] = int(snap.samples)
    rec["nm"] = int(missed)
    rec["atk"] = sorted(set(attacked))
    return rec


def peaks(rec: dict) -> tuple[float, float, float]:
    """(received pps, dropped pps, received bps) at their highest within the record."""
    pk = rec.get("pk")
    if pk:
        return pk[0], pk[1], pk[2]
    return rec["rx"][0], rec["drop"][0], rec["rx"][1]


def merge(recs: list[dict]) -> dict:
    """One record for several consecutive ones: time-weighted means, peaks as maxima."""
    if len(recs) == 1 and "pk" in recs[0]:
        return dict(recs[0])
    total = sum(max(r["dt"], 0.0) for r in recs) or 1e-9
    w = [max(r["dt"], 0.0) / total for r in recs]
    out: dict = {"t": max(r["t"] for r in recs), "dt": round(total, 4)}
    for s in SERIES:
        out[s] = [
            round(sum(wi * r[s][0] for wi, r in zip(w, recs)), 2),
            round(sum(wi * r[s][1] for wi, r in zip(w, recs)), 1),
        ]
    pk = [peaks(r) for r in recs]
    out["pk"] = [max(p[0] for p in pk), max(p[1] for p in pk), max(p[2] for p in pk)]
    reasons: dict[str, list[float]] = {}
    for wi, r in zip(w, recs):
        for k, (p, b) in r.get("r", {}).items():
            acc = reasons.setdefault(k, [0.0, 0.0])
            acc[0] += wi * p
            acc[1] += wi * b
    out["r"] = {k: [round(p, 2), round(b, 1)] for k, (p, b) in sorted(reasons.items())}
    for key in ("src", "port", "cd", "cp"):
        acc: dict[str, float] = {}
        for wi, r in zip(w, recs):
            for k, p in r.get(key, []):
                acc[k] = acc.get(k, 0.0) + wi * p
        if acc or key in ("src", "port"):  # the countries only where a geo database named them
            out[key] = [[k, round(p, 2)] for k, p in sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]]
    out["ns"] = sum(r.get("ns", 0) for r in recs)
    out["nm"] = sum(r.get("nm", 0) for r in recs)
    out["atk"] = sorted({a for r in recs for a in r.get("atk", [])})
    return out


def bucket_of(t: float, step_s: int) -> int:
    """The bucket a record belongs to: the one its interval ends in ([k·step, (k+1)·step))."""
    return math.floor(t / step_s)


def downsample(recs: list[dict], step_s: int) -> list[dict]:
    """Records (oldest first) merged per bucket of step_s seconds."""
    out: list[dict] = []
    group: list[dict] = []
    for r in recs:
        if group and bucket_of(r["t"], step_s) != bucket_of(group[0]["t"], step_s):
            out.append(merge(group))
            group = []
        group.append(r)
    if group:
        out.append(merge(group))
    return out


# ---- segments ----


def _segments(d: Path) -> list[tuple[float, Path]]:
    """A tier's segment files, oldest first (named by their first record's time)."""
    out = []
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    for n in names:
        if n.endswith(".jsonl"):
            try:
                out.append((float(n[:-6]), d / n))
            except ValueError:
                continue
    return sorted(out)


def read_lines(path: Path) -> list[dict]:
    """The records of one segment; a torn or garbled line is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("t"), (int, float)):
            out.append(rec)
    return out


def _cut_torn_tail(path: Path) -> None:
    """A segment that does not end in a newline was torn by a crash: cut the partial line."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            pos = size
            while pos > 0:
                step = min(4096, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    f.truncate(pos - step + i + 1)
                    return
                pos -= step
            f.truncate(0)
    except FileNotFoundError:
        pass


class _TierWriter:
    def __init__(self, d: Path, tier: Tier, cap_bytes: int):
        self.d = d
        self.tier = tier
        self.cap = max(4096, int(cap_bytes * tier.share))
        self.seg_cap = max(1024, self.cap // 8)
        self.seg_span = max(tier.step_s, tier.keep_s // 6)
        self.fd: int | None = None
        self.seg_start = 0.0
        self.seg_bytes = 0
        self.unsynced = 0
        state.private_dir(d)
        self.segs = [(t, p, p.stat().st_size) for t, p in _segments(d)]
        if self.segs:
            t, p, _ = self.segs[-1]
            _cut_torn_tail(p)
            self.segs[-1] = (t, p, p.stat().st_size)

    def total(self) -> int:
        return sum(s for _, _, s in self.segs)

    def last(self) -> dict | None:
        for _, p, _ in reversed(self.segs):
            recs = read_lines(p)
            if recs:
                return recs[-1]
        return None

    def _open(self, t: float) -> None:
        if self.fd is None and self.segs:  # continue the last segment when it has room
            st, p, size = self.segs[-1]
            if size < self.seg_cap and t - st < self.seg_span:
                self.fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                self.seg_start, self.seg_bytes = st, size
                return
        self._close_fd()
        start = max(t, self.segs[-1][0] + 0.001) if self.segs else t
        p = self.d / f"{start:.3f}.jsonl"
        self.fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.segs.append((float(f"{start:.3f}"), p, 0))
        self.seg_start, self.seg_bytes = self.segs[-1][0], 0

    def _close_fd(self) -> None:
        if self.fd is not None:
            if self.unsynced:
                os.fdatasync(self.fd)
                self.unsynced = 0
            os.close(self.fd)
            self.fd = None

    def _prune(self, now: float, room: int) -> None:
        """Drop the oldest closed segments: over the share (leaving `room`), or past retention."""
        while len(self.segs) > 1:
            (_, p0, _), (t1, _, _) = self.segs[0], self.segs[1]
            if self.total() + room > self.cap or t1 < now - self.tier.keep_s:
                try:
                    p0.unlink()
                except FileNotFoundError:
                    pass
                del self.segs[0]
            else:
                break

    def append(self, rec: dict) -> None:
        line = (json.dumps(rec, separators=(",", ":"), sort_keys=True) + "\n").encode()
        if len(line) > self.seg_cap:  # cannot happen with TOP_N entries; never break the cap for it
            return
        t = rec["t"]
        if self.fd is not None and (self.seg_bytes + len(line) > self.seg_cap or t - self.seg_start >= self.seg_span):
            self._close_fd()
            self._open(t)
        elif self.fd is None:
            self._open(t)
        self._prune(t, len(line))
        os.write(self.fd, line)
        self.seg_bytes += len(line)
        st, p, _ = self.segs[-1]
        self.segs[-1] = (st, p, self.seg_bytes)
        self.unsynced += 1
        if self.unsynced >= FSYNC_EVERY:
            os.fdatasync(self.fd)
            self.unsynced = 0

    def close(self) -> None:
        self._close_fd()


class Recorder:
    """Writes one interface's history (the daemon's detection thread calls `add`)."""

    def __init__(
        self,
        iface: str,
        root: Path | None = None,
        cap_bytes: int = DEFAULT_CAP_BYTES,
        policy_source: Callable[[str], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.iface = iface
        # the namespace's directory through netns_state_dir: marked with its owner, so a namespace
        # that reuses a dead one's inode never adopts its history
        self.d = iface_dir(iface, root if root is not None else state.netns_state_dir() / "history")
        state.private_dir(self.d)
        self.writers = {t.name: _TierWriter(self.d / t.name, t, cap_bytes) for t in TIERS}
        self.pending: dict[str, list[dict]] = {t.name: [] for t in TIERS[1:]}
        self.policy_source = policy_source
        self.clock = clock
        self._policy_at = -math.inf
        self._policy_hash = _last_policy_hash(self.d)
        self._rebuild_pending()

    def _rebuild_pending(self) -> None:
        """Refill the coarse buckets a previous daemon was filling from the 1 s tier."""
        fine = self.writers["1s"]
        for tier in TIERS[1:]:
            last = self.writers[tier.name].last()
            after = bucket_of(last["t"], tier.step_s) if last else -math.inf
            for _, p, _ in fine.segs:
                for r in read_lines(p):
                    if bucket_of(r["t"], tier.step_s) > after:
                        self._coarse(tier, r)

    def _coarse(self, tier: Tier, rec: dict) -> None:
        group = self.pending[tier.name]
        if group and bucket_of(rec["t"], tier.step_s) != bucket_of(group[0]["t"], tier.step_s):
            self.writers[tier.name].append(merge(group))
            group.clear()
        group.append(rec)

    def add(self, rec: dict) -> None:
        self.writers["1s"].append(rec)
        for tier in TIERS[1:]:
            self._coarse(tier, rec)
        if self.policy_source is not None and self.clock() - self._policy_at >= POLICY_EVERY_S:
            self._policy_at = self.clock()
            try:
                text = self.policy_source(self.iface)
            except (UserError, OSError):
                text = None
            if text is not None:
                self.note_policy(rec["t"], text)

    def note_policy(self, t: float, text: str) -> None:
        h = hashlib.sha256(text.encode()).hexdigest()[:16]
        if h == self._policy_hash:
            return
        self._policy_hash = h
        p = self.d / "policy.jsonl"
        lines = [json.dumps(e, sort_keys=True) for e in read_policies(self.d)[-(POLICY_KEEP - 1) :]]
        lines.append(json.dumps({"t": t, "hash": h, "policy": text}, sort_keys=True))
        state.write_durably(p, ("\n".join(lines) + "\n").encode())

    def bytes_on_disk(self) -> int:
        return sum(w.total() for w in self.writers.values())

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


class Keeper:
    """The daemon's recorders, one per interface (DetectionLoop's on_snapshot)."""

    def __init__(
        self,
        cap_bytes: int = DEFAULT_CAP_BYTES,
        policy_source: Callable[[str], str | None] | None = None,
        report: Callable[[str], None] = lambda m: None,
    ):
        self.cap_bytes = cap_bytes
        self.policy_source = policy_source if policy_source is not None else policy_text
        self.report = report
        self.recorders: dict[str, Recorder] = {}
        self._missed: dict[str, int] = {}
        self.failed: str | None = None

    def __call__(self, iface: str, snap, attacked: list[str]) -> None:
        try:
            r = self.recorders.get(iface)
            if r is None:
                r = self.recorders[iface] = Recorder(iface, cap_bytes=self.cap_bytes, policy_source=self.policy_source)
            missed = max(0, snap.samples_missed - self._missed.get(iface, 0))
            self._missed[iface] = snap.samples_missed
            r.add(record_of(snap, attacked, missed))
            self.failed = None
        except Exception as exc:  # a full disk (or any trouble here) stops the history, never detection
            msg = f"history of {iface}: {getattr(exc, 'strerror', None) or exc}"
            if msg != self.failed:
                self.failed = msg
                self.report(msg)

    def close(self) -> None:
        for r in self.recorders.values():
            r.close()
        self.recorders.clear()


def read_policies(d: Path) -> list[dict]:
    return [e for e in read_lines(d / "policy.jsonl") if isinstance(e.get("policy"), str)]


def _last_policy_hash(d: Path) -> str | None:
    pol = read_policies(d)
    return pol[-1].get("hash") if pol else None


def policy_text(iface: str) -> str | None:
    """The interface's cleansing policy as `export` would write it (no lists): its desired spec
    as stored (every verb stores its edit before the reconciler realises it; the history reads
    the store, never the kernel); None when the store has no spec of it."""
    spec = store.stored_interface(iface)
    if spec is None:
        return None
    return to_toml(Desired(interfaces=(replace(spec, block=frozenset(), allow=frozenset()),)))


# ---- reading ----


def recorded_ifaces(root: Path | None = None) -> list[str]:
    r = root or history_root()
    try:
        return sorted(p.name for p in r.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UserError(f"cannot read the history in {r}: {exc.strerror}") from None


def read_tier(
    iface: str, tier: str, start: float = -math.inf, end: float = math.inf, root: Path | None = None
) -> list[dict]:
    """Records of one tier with start <= t <= end, oldest first."""
    segs = _segments(iface_dir(iface, root) / tier)
    out: list[dict] = []
    for i, (t0, p) in enumerate(segs):
        t_next = segs[i + 1][0] if i + 1 < len(segs) else math.inf
        if t_next < start or t0 > end + 3600:
            continue
        out += [r for r in read_lines(p) if start <= r["t"] <= end]
    out.sort(key=lambda r: r["t"])
    return out


def oldest(iface: str, tier: str, root: Path | None = None) -> float | None:
    """Time of the oldest record a tier still holds."""
    for _, p in _segments(iface_dir(iface, root) / tier):
        recs = read_lines(p)
        if recs:
            return recs[0]["t"]
    return None


def window(iface: str, start: float, end: float, root: Path | None = None) -> tuple[str, list[dict]]:
    """(tier, records) for [start, end]: the finest tier that reaches back to `start` (or as far
    back as any tier does), else the finest one with any record in the window; ('', []) when
    there is none."""
    firsts = {t.name: oldest(iface, t.name, root) for t in TIERS}
    known = [f for f in firsts.values() if f is not None]
    if not known:
        return "", []
    since = max(start, min(known))
    best: tuple[str, list[dict]] = ("", [])
    for tier in TIERS:
        first = firsts[tier.name]
        if first is None:
            continue
        recs = read_tier(iface, tier.name, start, end, root)
        if not recs:
            continue
        if first <= since + 2 * tier.step_s:
            return tier.name, recs
        if not best[1]:
            best = (tier.name, recs)
    return best
