"""Backend health checks for `xdpguard run`.

Every interval each backend of each forwarding rule of this network namespace is probed: a TCP
connect for TCP rules; for UDP rules a datagram (the rule's probe payload, default ``ping``) that
must be answered by any reply. A backend goes ``down`` after ``fall`` failures in a row and
``up`` after ``rise`` successes in a row (it starts ``unknown``, which counts as healthy for the
NAT). When the set of healthy backends of a rule changes, the health is written to the state
file (interface lock) and the NAT table is rebuilt atomically (NAT lock): a down backend leaves
the choice, a backup takes over when every primary is down, a backend that recovers returns.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import forward
from .. import state
from ..errors import UserError
from ..model.forwarding import Backend, ForwardRule


@dataclass(frozen=True)
class HealthParams:
    interval_s: float = 2.0
    timeout_s: float = 1.0
    rise: int = 2
    fall: int = 3

    def check(self) -> None:
        if not 0.05 <= self.interval_s <= 3600:
            raise UserError(f"--interval {self.interval_s:g} must be between 0.05 and 3600 s")
        if not 0.01 <= self.timeout_s <= 60:
            raise UserError(f"--timeout {self.timeout_s:g} must be between 0.01 and 60 s")
        for name, v in (("rise", self.rise), ("fall", self.fall)):
            if not 1 <= v <= 100:
                raise UserError(f"--{name} {v} must be between 1 and 100")


@dataclass(frozen=True)
class Transition:
    iface: str
    rule: str
    backend: str
    old: str
    new: str


@dataclass
class _Track:
    health: str = "unknown"
    ok_run: int = 0
    fail_run: int = 0


@dataclass(frozen=True)
class Target:
    iface: str
    rule: ForwardRule
    backend: Backend
    payload: bytes
    stored: str = "unknown"  # the health the state file holds (from an earlier run)

    @property
    def key(self) -> tuple[str, str]:
        return self.rule.key, forward.endpoint(self.rule, self.backend)


def probe(target: Target, timeout_s: float) -> bool:
    """One health probe of one backend: True when it answered."""
    b = target.backend
    port = target.rule.target_port(b, target.rule.port_lo)
    fam = socket.AF_INET6 if b.host.version == 6 else socket.AF_INET
    kind = socket.SOCK_STREAM if target.rule.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, kind)
    s.settimeout(timeout_s)
    try:
        s.connect((str(b.host), port))
        if kind == socket.SOCK_DGRAM:
            s.send(target.payload)
            s.recv(65535)
        return True
    except OSError:
        return False
    finally:
        s.close()


@dataclass
class HealthChecker:
    params: HealthParams
    prober: Callable[[Target, float], bool] = probe
    tracks: dict[tuple[str, str, str], _Track] = field(default_factory=dict)

    def targets(self) -> list[Target]:
        out = []
        states = forward._iface_states()
        for sr in forward.all_rules(states):
            health = states[sr.iface].get(forward.HEALTH_KEY, {}).get(sr.rule.key, {})
            for b in sr.rule.backends:
                stored = health.get(forward.endpoint(sr.rule, b), "unknown")
                out.append(Target(sr.iface, sr.rule, b, sr.probe_payload, stored))
        return out

    def round(self) -> list[Transition]:
        """Probe every backend once; record and apply what changed; return the transitions."""
        targets = self.targets()
        if not targets:
            return []
        with ThreadPoolExecutor(max_workers=min(32, len(targets))) as pool:
            results = list(pool.map(lambda t: self.prober(t, self.params.timeout_s), targets))
        changes: list[Transition] = []
        live = set()
        for t, ok in zip(targets, results):
            k = (t.iface, *t.key)
            live.add(k)
            tr = self.tracks.setdefault(k, _Track(health=t.stored))
            if ok:
                tr.ok_run, tr.fail_run = tr.ok_run + 1, 0
                new = "up" if tr.ok_run >= self.params.rise else tr.health
            else:
                tr.fail_run, tr.ok_run = tr.fail_run + 1, 0
                new = "down" if tr.fail_run >= self.params.fall else tr.health
            if new != tr.health:
                changes.append(Transition(t.iface, t.rule.key, t.key[1], tr.health, new))
                tr.health = new
        for k in set(self.tracks) - live:
            del self.tracks[k]
        if changes:
            self._store_and_apply({c.iface for c in changes})
        return changes

    def _store_and_apply(self, ifaces: set[str]) -> None:
        ns = state.netns_key()
        for name in sorted(ifaces):
            iface = state.Iface(name, 0, ns)
            with state.iface_lock(iface):
                st = state.read_state(iface)
                if st is None:
                    continue  # detached meanwhile
                health: dict[str, dict[str, str]] = {}
                for (ifn, rule_key, ep), tr in self.tracks.items():
                    if ifn == name:
                        health.setdefault(rule_key, {})[ep] = tr.health
                state.put(st, state.FORWARD_HEALTH, health)
                state.write_state(iface, st)
        with forward.nat_lock():
            states = forward._iface_states()
            rules = forward.all_rules(states)
            if rules:
                forward.apply_rules(forward._applier(), states, rules)


def run(
    params: HealthParams,
    once: bool = False,
    duration_s: float | None = None,
    report: Callable[[Transition], None] = lambda t: None,
) -> int:
    """Check until `duration_s` passed (None: forever) or after one round with `once`.
    Returns the number of rounds."""
    params.check()
    state.require_root()
    if once:  # one round decides: a single success is up, a single failure is down
        params = HealthParams(params.interval_s, params.timeout_s, 1, 1)
    checker = HealthChecker(params)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    rounds = 0
    while True:
        start = time.monotonic()
        for t in checker.round():
            report(t)
        rounds += 1
        if once:
            return rounds
        nxt = start + params.interval_s
        if deadline is not None and nxt >= deadline:
            time.sleep(max(0.0, deadline - time.monotonic()))
            return rounds
        time.sleep(max(0.0, nxt - time.monotonic()))
