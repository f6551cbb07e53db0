"""Upstream escalation: when the cluster together receives more for one protected address than
configured ([bgp] flowspec_pps / blackhole_pps), one elected node announces a FlowSpec rule
built from the attack's fingerprint (traffic-rate 0) or a blackhole route with the RTBH
community to the upstream router; the route is withdrawn after the traffic has stayed below
the threshold for [bgp] escalation_hold seconds.

Every node measures what it receives per protected address (`LoadMeter`: the same counters and
samples as `xdpguard top`, every 0.25 s) and keeps it in the store under load/<node>, on its
lease. The node holding the `escalate` lock (a key on its lease: a dead leader's lock expires
with it and another node takes over) sums the nodes' loads and `decide`s. With the store down
nothing is decided: routes already announced stay until it returns.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..kernel import dataplane
from ..observe import fanout, sampling, stats
from .. import protection
from ..model import vocab
from ..model.cluster import BgpSpec
from ..errors import UserError
from .bgp import Escalation

LOAD_EVERY_S = 0.25
DOMINANT_SHARE = 0.5  # a port (or protocol) in at least this share of the samples is the fingerprint


def fingerprint(ports: dict[str, float]) -> tuple[int | None, int | None]:
    """(protocol, destination port) that dominate an address's sampled traffic, else None."""
    total = sum(ports.values())
    if total <= 0:
        return None, None
    key, pps = max(ports.items(), key=lambda kv: (kv[1], kv[0]))
    proto_s, _, port_s = key.partition("/")
    if pps >= DOMINANT_SHARE * total:
        return vocab.PROTO_NUMBERS.get(proto_s), int(port_s) if port_s.isdigit() else None
    by_proto: dict[str, float] = {}
    for k, v in ports.items():
        p = k.partition("/")[0]
        by_proto[p] = by_proto.get(p, 0.0) + v
    p, v = max(by_proto.items(), key=lambda kv: (kv[1], kv[0]))
    return (vocab.PROTO_NUMBERS.get(p), None) if v >= DOMINANT_SHARE * total else (None, None)


@dataclass
class Active:
    escalation: Escalation
    since: float
    last_over: float
    peak_pps: float


def totals(loads: dict[str, dict]) -> dict[str, tuple[float, dict[str, float]]]:
    """Sum the nodes' loads (as store.parse_load returns them): address → (pps, port → pps)."""
    out: dict[str, tuple[float, dict[str, float]]] = {}
    for load in loads.values():
        for addr, e in (load.get("addresses") or {}).items():
            pps, ports = out.get(addr, (0.0, {}))
            merged = dict(ports)
            for k, v in (e.get("ports") or {}).items():
                merged[k] = merged.get(k, 0.0) + float(v)
            out[addr] = (pps + float(e.get("pps", 0.0)), merged)
    return out


def decide(
    bgp: BgpSpec,
    loads: dict[str, dict],
    active: dict[tuple[str, str], Active],
    now: float,
    allowed: Callable[[str], bool] = lambda a: False,
) -> tuple[dict[tuple[str, str], Active], list[str]]:
    """The escalations to announce after this round, and what changed (for the log). Keyed by
    (address, kind); a fingerprint is kept while its route stands (no flapping between rules).
    Only addresses `allowed` (the node's own [cluster] protect) are escalated: an upstream
    route for any other address is never announced, whatever the loads say."""
    out = dict(active)
    said = []
    for addr, (pps, ports) in totals(loads).items():
        if not allowed(addr):
            continue
        for kind, limit in (("flowspec", bgp.flowspec_pps), ("blackhole", bgp.blackhole_pps)):
            if not limit:
                continue
            key = (addr, kind)
            if pps >= limit:
                if key in out:
                    a = out[key]
                    a.last_over, a.peak_pps = now, max(a.peak_pps, pps)
                    continue
                proto, dport = fingerprint(ports) if kind == "flowspec" else (None, None)
                e = Escalation(ipaddress.ip_address(addr), kind, proto, dport)
                out[key] = Active(e, now, now, pps)
                said.append(
                    f"escalated: {e.describe()} ({pps:,.0f} pps to {addr} across the cluster, threshold {limit:,})"
                )
    for key, a in list(out.items()):
        if now - a.last_over >= bgp.escalation_hold_s:
            del out[key]
            said.append(
                f"escalation withdrawn: {a.escalation.describe()} (below threshold for "
                f"{bgp.escalation_hold_s} s; peak {a.peak_pps:,.0f} pps)"
            )
    return out, said


class LoadMeter:
    """What this node receives per protected address, measured in a thread every 0.25 s: the
    exact counters (received = dropped + forwarded) split between the addresses by the samples,
    the ports from the samples. Lighter than the `top` collector (no nft rules, list sizes or
    bans): it runs all the time."""

    def __init__(self, ifaces: list[str]):
        self.ifaces = list(ifaces)
        self.latest: dict[str, dict] = {}
        self.updated = 0.0
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> LoadMeter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        meters: dict[str, _IfaceMeter] = {}
        try:
            while not self._stop.is_set():
                out: dict[str, dict] = {}
                window = LOAD_EVERY_S / max(1, len(self.ifaces))
                for name in self.ifaces:
                    try:
                        m = meters.get(name)
                        if m is None or not m.current():
                            if m is not None:
                                m.close()
                            m = meters[name] = _IfaceMeter(name)
                        out.update(m.measure(window))
                        self.error = ""
                    except (UserError, OSError) as exc:
                        self.error = f"{name}: {getattr(exc, 'message', None) or exc}"
                        old = meters.pop(name, None)
                        if old is not None:
                            old.close()
                        self._stop.wait(LOAD_EVERY_S)
                self.latest = out
                self.updated = time.time()
        finally:
            for m in meters.values():
                m.close()


class _IfaceMeter:
    def __init__(self, name: str):
        self.guard = protection.open_guard(name)
        if self.guard.sample_every() == 0:
            self.guard.set_sample_every(sampling.DEFAULT_SAMPLE_EVERY)
        self.reader = fanout.open_source(self.guard)  # `xdpguard run`'s fan-out when it owns the ring
        self.prev = (time.monotonic(), stats.read_counts(self.guard))
        self.shares: dict[str, float] = {}

    def current(self) -> bool:
        """Still the attached program's maps (an upgrade swaps them)."""
        att = dataplane.query(self.guard.iface.index)
        return att is not None and att.prog_id == self.guard.att.prog_id and not self.reader.ended

    def close(self) -> None:
        self.reader.close()
        self.guard.close()

    def measure(self, window_s: float) -> dict[str, dict]:
        samples = [s for s in self.reader.window(window_s, wait_s=0.05) if s.reason != "bypass" and s.family]
        now, counts = time.monotonic(), stats.read_counts(self.guard)
        (t0, c0), self.prev = self.prev, (now, counts)
        rates, _ = stats.compute_rates(c0, counts, now - t0)
        total = rates["dropped"].pps + rates["forwarded"].pps
        protected = self.guard.protected()
        by_dst: dict[str, list] = {}
        for s in samples:
            by_dst.setdefault(s.dst, []).append(s)
        if samples:
            self.shares = {d: len(v) / len(samples) for d, v in by_dst.items()}
        out = {}
        for a in protected:
            share = 1.0 if len(protected) == 1 else self.shares.get(a, 0.0)
            pps = total * share
            ports = stats.top_talkers(by_dst.get(a, []), stats.Rate(pps, 0.0), stats.port_key, limit=8)
            out[a] = {"pps": round(pps, 1), "ports": {t.key: round(t.pps, 1) for t in ports}}
        return out
