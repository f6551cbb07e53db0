"""Automatic CC mode (issue 29): a service's level follows its backend's health.

`xdpguard run` reads HAProxy's `show stat` every tick; for each HTTP service its backend's rows
give the duration of each server's last health check (a fresh response time every 2 s: HAProxy's
own rtime averages the last 1024 requests and would lag by minutes after a flood), the answers
by class and whether a server is up. Against the service's own peacetime baseline (the check's
duration while nothing was wrong, an exponential average), the backend is *in trouble* when

    its response time is over max(FACTOR × baseline, baseline + EXTRA_MS), or
    more than ERROR_SHARE of the answers of the last tick were 5xx (at least MIN_ANSWERS), or
    no server of it is up.

In trouble for RAISE_AFTER_S, the level goes one step up (normal → strict: every unverified
source is challenged, verified browsers are not; strict → emergency: the JavaScript challenge);
again after every further RAISE_AFTER_S of trouble, up to emergency. Quiet for CALM_S, it comes
one step down, never below the operator's level. The automatic level is dynamic state: it is
never written into the desired state, an `apply` does not undo it and a restart starts from the
operator's level. Pure: `AutoLevel.step` takes readings and returns the level to serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import haproxy_config as hc
from .runtime import StatRow
from .spec import LEVELS, HttpService

FACTOR = 4.0
EXTRA_MS = 100
MIN_BASELINE_MS = 10
ERROR_SHARE = 0.2
MIN_ANSWERS = 20
RAISE_AFTER_S = 5.0
CALM_S = 60.0
BASELINE_WEIGHT = 0.1  # each calm reading moves the baseline this much
LEARN_BELOW = 2.0  # … if it is at most this many times the baseline


@dataclass(frozen=True)
class Reading:
    """A service backend's rows of `show stat` (cumulative counters as HAProxy gives them)."""

    rtime_ms: int  # the slowest last health check of its servers that are up
    answers: int  # hrsp_1xx..5xx and other, all together
    errors_5xx: int
    up: bool


def reading(rows: list[StatRow], svc: HttpService) -> Reading | None:
    """The service's backend in `show stat` rows (None: HAProxy does not show it)."""
    be = hc.backend_name(svc)
    total = next((r for r in rows if r.proxy == be and r.name == "BACKEND"), None)
    if total is None:
        return None
    servers = [r for r in rows if r.proxy == be and r.name not in ("BACKEND", "FRONTEND")]
    up = [r for r in servers if r.status.startswith("UP")]
    return Reading(
        max((r.check_ms for r in up), default=0),
        total.http_2xx + total.http_3xx + total.http_4xx + total.http_5xx,
        total.http_5xx,
        bool(up),
    )


@dataclass(frozen=True)
class Step:
    """A level change: what the event log and the daemon's output say."""

    service: str
    old: str
    new: str
    why: str


@dataclass
class _State:
    level: str
    baseline_ms: float | None = None
    trouble_since: float | None = None
    calm_since: float | None = None
    last_raise: float | None = None
    last: Reading | None = None


@dataclass
class AutoLevel:
    factor: float = FACTOR
    extra_ms: float = EXTRA_MS
    error_share: float = ERROR_SHARE
    raise_after_s: float = RAISE_AFTER_S
    calm_s: float = CALM_S
    states: dict[str, _State] = field(default_factory=dict)

    def trouble(self, st: _State, r: Reading) -> str:
        """Why the backend is in trouble now ('' when it is not)."""
        if not r.up:
            return "no server up"
        if st.last is not None:
            answers = r.answers - st.last.answers
            errors = r.errors_5xx - st.last.errors_5xx
            if answers >= MIN_ANSWERS and errors > self.error_share * answers:
                return f"{errors} of {answers} answers 5xx"
        if st.baseline_ms is not None:
            limit = max(self.factor * st.baseline_ms, st.baseline_ms + self.extra_ms)
            if r.rtime_ms > limit:
                return f"response time {r.rtime_ms} ms, baseline {st.baseline_ms:.0f} ms"
        return ""

    def step(self, service: str, operator_level: str, r: Reading | None, now: float) -> tuple[str, Step | None]:
        """The level to serve `service` at now, and the change it makes (None: no change)."""
        st = self.states.get(service)
        if st is None or LEVELS.index(st.level) < LEVELS.index(operator_level):
            st = self.states[service] = _State(operator_level, st.baseline_ms if st else None)
        if r is None:
            return st.level, None
        why = self.trouble(st, r)
        st.last = r
        old = st.level
        if why:
            st.calm_since = None
            if st.trouble_since is None:
                st.trouble_since = now
            since = max(st.trouble_since, st.last_raise or st.trouble_since)
            if now - since >= self.raise_after_s and st.level != LEVELS[-1]:
                st.level = LEVELS[LEVELS.index(st.level) + 1]
                st.last_raise = now
        else:
            st.trouble_since = None
            st.last_raise = None
            base = max(float(r.rtime_ms), MIN_BASELINE_MS)
            # peacetime: learn what normal looks like, from readings near it only (a flood that
            # builds its queue slowly must not drag the baseline up with it)
            if st.level == operator_level and (st.baseline_ms is None or base <= LEARN_BELOW * st.baseline_ms):
                st.baseline_ms = (
                    base if st.baseline_ms is None else (1 - BASELINE_WEIGHT) * st.baseline_ms + BASELINE_WEIGHT * base
                )
            if st.calm_since is None:
                st.calm_since = now
            elif st.level != operator_level and now - st.calm_since >= self.calm_s:
                st.level = LEVELS[LEVELS.index(st.level) - 1]
                st.calm_since = now
            why = "quiet"
        if st.level == old:
            return st.level, None
        return st.level, Step(service, old, st.level, why)
