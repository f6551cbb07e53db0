"""Admission budgets learned from peacetime (issue 25, item 2; the data path is steps/budget.h).

Each UDP service has one token bucket for the packets of unverified sources. Its rate was one
number for every service (the operator's `verify set --budget-udp-pps`, else 1,000 units/s): a
DNS-like service that sees 5,000 new clients/s in peacetime lost most of them to its own budget
during a flood, and a service that never sees one gave a flood 1,000/s for nothing.

The daemon now learns each service's rate from its peacetime counters. Every detection round
(at most every EVERY_S) it reads the budgets (admitted, dropped per service). In a round with no
open attack on the interface (the detector's, DetectionLoop.active, and the engine's), the
service's unverified units/s is a reading, kept if the next round is peaceful too. What the
budget dropped counts in a reading only while it dropped less than it admitted (a real client a
little over the floor; a flood the budget holds back is no baseline).

The rate written is HEADROOM x the highest reading of the last WINDOW_S (per-minute maxima),
never below the floor (the operator's setting, else the default: what a service gets before any
baseline exists) and never above CEILING_X x the floor; a rise at most doubles the rate in force,
once per GROWTH_S. A rate equal to the floor is written as 0, so that a later `verify set`
applies to it at once.

What this cannot stop: an attacker who raises the unverified traffic slowly, below the detection
thresholds, raises the budget with it, doubling at most once per GROWTH_S up to CEILING_X x the
floor; the verified clients are never charged either way. Rates are in units (a packet of up to
128 bytes, budget.h): the packets/s the counters give are scaled by the mean units per packet of
the service's sampled frames.

Only the map owner writes: Guard.read_budgets / Guard.write_budget_rate.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..kernel import abi

HEADROOM = 2.0  # the learned rate over the peacetime peak
CEILING_X = 20  # at most this many times the floor
WINDOW_S = 3600.0  # how long a peak is remembered
BUCKET_S = 60.0  # a peak is kept per minute
MIN_CHANGE = 0.10  # a rate is rewritten when the target moved by more than this share
UNIT_BYTES = 1 << 7  # budget.h XG_BUDGET_UNIT_SHIFT
GROWTH_S = 600.0  # a rise at most doubles the rate, once per this long
EVERY_S = 2.0  # the budgets are read at most this often (a full xg_budget_hash is 16,384 entries)


@dataclass
class _Service:
    t: float  # when `admitted`/`dropped` were read
    admitted: int
    dropped: int
    peaks: deque = field(default_factory=deque)  # (minute start, highest units/s in it)
    written: int | None = None  # the rate (units/s) this learner last put in force (None: not yet)
    pending: float | None = None  # the last round's reading, kept if this round is peaceful too
    raised: float = -1e18  # when the rate was last raised (GROWTH_S)

    def observe(self, now: float, units_s: float) -> None:
        minute = now - now % BUCKET_S
        if self.peaks and self.peaks[-1][0] == minute:
            self.peaks[-1] = (minute, max(self.peaks[-1][1], units_s))
        else:
            self.peaks.append((minute, units_s))
        while self.peaks and self.peaks[0][0] < now - WINDOW_S:
            self.peaks.popleft()

    def target(self, floor: int, have: int, now: float) -> int:
        """HEADROOM x the peak, within [floor, CEILING_X x floor]; a rise at most doubles the
        rate in force, once per GROWTH_S (a slow ramp, or a reading that was a flood after all)."""
        peak = max((u for _, u in self.peaks), default=0.0)
        want = min(max(floor, math.ceil(HEADROOM * peak)), CEILING_X * floor)
        if want > have:
            if now - self.raised < GROWTH_S:
                return have
            want = min(want, 2 * have)
        return want


def units_per_packet(lengths: list[int]) -> float:
    """Mean budget units of the sampled frames of one service (1 without samples)."""
    if not lengths:
        return 1.0
    return sum(max(1, -(-n // UNIT_BYTES)) for n in lengths) / len(lengths)


class BudgetLearner:
    """One per interface, called each detection round from mitigation.DaemonHook."""

    def __init__(self, report: Callable[[str], None] = lambda m: None, clock: Callable[[], float] = time.monotonic):
        self.report = report
        self.clock = clock
        self.services: dict[tuple[str, int], _Service] = {}
        self.last = -EVERY_S

    def round(self, g, peace: bool, lengths: dict[tuple[str, int], list[int]] | None = None) -> list[tuple]:
        """Read the budgets, learn in peace, write the rates that moved. `lengths`: sampled
        frame lengths per (protected, port) of this round. Returns the (protected, port, old,
        new) rates written."""
        now = self.clock()
        if now - self.last < EVERY_S:
            return []
        self.last = now
        # the UDP services only: a TCP service's budget (new connections below the SYN threshold,
        # budget.h budget_syn_admit) keeps its compiled-in rate; nothing is learned for it yet
        views = [v for v in g.read_budgets() if v.proto == "udp"]
        floor = g.read_verify_settings().budget_udp_pps or abi.BUDGET_UDP_PPS
        changed = []
        seen = set()
        for v in views:
            key = (v.protected, v.port)
            seen.add(key)
            s = self.services.get(key)
            if s is None:
                self.services[key] = _Service(now, v.admitted, v.dropped, written=v.rate or None)
                continue
            dt = now - s.t
            d_adm, d_drop = v.admitted - s.admitted, v.dropped - s.dropped
            s.t, s.admitted, s.dropped = now, v.admitted, v.dropped
            # Counters that went back: the entry was swept and made again (its rate is 0 again).
            # A reading is kept only when the next round is peaceful too (a flood's first round
            # comes before its detection: CI saw a 30 kpps flood learned as peacetime, the budget
            # raised to 20 x the floor, and the web client at 0 %). What the budget dropped counts
            # only while it dropped less than it admitted (a real client a little over the floor;
            # a flood the budget is holding back is not a baseline).
            pending, s.pending = s.pending, None
            if dt > 3 * EVERY_S:  # a reading confirmed this late says nothing about its round
                pending = None
            if not peace or dt <= 0 or d_adm < 0 or d_drop < 0:
                pending = None
            else:
                offered = d_adm + (d_drop if d_drop <= d_adm else 0)
                s.pending = offered / dt * units_per_packet((lengths or {}).get(key, []))
            if pending is not None:
                s.observe(now, pending)
            # the growth limit counts from what this learner put in force (an entry swept and
            # made again reads 0, and gets its learned rate back at once)
            in_force = s.written if s.written is not None else (v.rate or floor)
            want = s.target(floor, in_force, now)
            new = 0 if want == floor else want
            have = v.rate or floor
            if new != v.rate and abs(want - have) > MIN_CHANGE * have:
                if g.write_budget_rate(v.protected, v.port, new):
                    if want > in_force:
                        s.raised = now
                    s.written = want
                    changed.append((v.protected, v.port, v.rate, new))
        for key in set(self.services) - seen:  # swept by the data path's owner: start again
            del self.services[key]
        for prot, port, old, new in changed:
            self.report(
                f"budget udp {prot}:{port}: {old or floor:,} -> {new or floor:,} units/s "
                f"(learned from peacetime: {HEADROOM:g} x its peak, floor {floor:,})"
            )
        return changed
