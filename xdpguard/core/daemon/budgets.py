"""Admission budgets learned from peacetime (issue 25, item 2; the data path is steps/budget.h).

Each UDP service has one token bucket for the packets of unverified sources, and each TCP
service one for the SYNs of unverified sources below its address's SYN threshold (past it a SYN
meets the SYN defence: a cookie, or retransmission authentication). Their rates were one number
for every service (the operator's `verify set --budget-udp-pps`, else 1,000 units/s; 500 SYN/s
compiled in): a DNS-like service that sees 5,000 new clients/s in peacetime lost most of them to
its own budget during a flood, a web service with 2,000 new clients/s sent three in four of them
to cookies (no window scaling, no SACK) or, on IPv6, to a one-second retransmission, and a
service that never sees one gave a flood the whole budget for nothing.

Both are learned the same way, per (protocol, address, port); a TCP service's unit is one SYN
and its floor is `verify set --budget-tcp-syns`, else 500/s.

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
floor; the verified clients are never charged either way. UDP rates are in units (a packet of
up to 128 bytes, budget.h): the packets/s the counters give are scaled by the mean units per
packet of the service's sampled frames. TCP rates are SYNs/s; a TCP service's counters see only
the SYNs below its address's SYN threshold (above it the SYN defence answers every unverified
SYN), so an address busy past its threshold learns from its quieter seconds.

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


UNIT = {"udp": "units/s", "tcp": "SYN/s"}


class BudgetLearner:
    """One per interface, called each detection round from mitigation.DaemonHook."""

    def __init__(self, report: Callable[[str], None] = lambda m: None, clock: Callable[[], float] = time.monotonic):
        self.report = report
        self.clock = clock
        self.services: dict[tuple[str, str, int], _Service] = {}  # (proto, protected, port)
        self.last = -EVERY_S

    def round(self, g, peace: bool, lengths: dict[tuple[str, int], list[int]] | None = None) -> list[tuple]:
        """Read the budgets, learn in peace, write the rates that moved. `lengths`: sampled
        frame lengths per (protected, port) of this round (UDP). Returns the (protected, port,
        old, new, proto) rates written."""
        now = self.clock()
        if now - self.last < EVERY_S:
            return []
        self.last = now
        views = g.read_budgets()
        vs = g.read_verify_settings()
        floors = {"udp": vs.budget_udp_pps or abi.BUDGET_UDP_PPS, "tcp": vs.budget_tcp_syns or abi.BUDGET_TCP_SYNS}
        changed = []
        seen = set()
        for v in views:
            # tcp/7 and udp/7 are two services (two entries of xg_budget_hash): never one reading
            key = (v.proto, v.protected, v.port)
            floor = floors[v.proto]
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
                per = units_per_packet((lengths or {}).get((v.protected, v.port), [])) if v.proto == "udp" else 1.0
                s.pending = offered / dt * per  # a SYN is one unit
            if pending is not None:
                s.observe(now, pending)
            # the growth limit counts from what this learner put in force (an entry swept and
            # made again reads 0, and gets its learned rate back at once)
            in_force = s.written if s.written is not None else (v.rate or floor)
            want = s.target(floor, in_force, now)
            new = 0 if want == floor else want
            have = v.rate or floor
            if new != v.rate and abs(want - have) > MIN_CHANGE * have:
                if g.write_budget_rate(v.protected, v.port, new, v.proto):
                    if want > in_force:
                        s.raised = now
                    s.written = want
                    changed.append((v.protected, v.port, v.rate, new, v.proto))
        for key in set(self.services) - seen:  # swept by the data path's owner: start again
            del self.services[key]
        for prot, port, old, new, proto in changed:
            floor = floors[proto]
            self.report(
                f"budget {proto} {prot}:{port}: {old or floor:,} -> {new or floor:,} {UNIT[proto]} "
                f"(learned from peacetime: {HEADROOM:g} x its peak, floor {floor:,})"
            )
        return changed
