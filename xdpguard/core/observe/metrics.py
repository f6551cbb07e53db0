"""Prometheus metrics for `xdpguard run --metrics`: a custom collector reading the maps at
scrape time. Counters are per-CPU arrays, read in O(1) at each scrape. List sizes are not:
counting a hash/LRU map walks it (262k entries for a full ban map), so they are cached for
SIZES_MAX_AGE_S; a scrape then walks no map most of the time, and each list map is counted
at most once per SIZES_MAX_AGE_S however often Prometheus scrapes. The ban LRU is counted
with batch lookups (BpfMap.count, ~12x faster than a walk).

Every exported family is declared once in METRICS (name, type, help, labels); the alerting and
recording rules in deploy/prometheus/ and the dashboard in deploy/grafana/ use only these
names, and tests/unit/test_dashboard.py checks it. Names follow Prometheus' conventions:
counters end in `_total`, units are base units named in the metric (`_bytes`), a unitless
fraction is a `_ratio`.

prometheus_client is imported lazily: only `run --metrics` needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from xdpguard import __version__

from .. import fastfwd, protection, state
from ..model import vocab
from . import stats
from ..l7 import engine as l7engine
from ..errors import UserError

ATTACK_NONE: Callable[[], dict[tuple[str, str], bool]] = lambda: {}
SIZES_MAX_AGE_S = 5.0  # xdpguard_list_entries is at most this old


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as exposed (a counter's with its _total)
    kind: str  # counter | gauge
    help: str
    labels: tuple[str, ...]


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "xdpguard_packets_total",
        "counter",
        "Packets seen by the XDP program, by verdict action and reason.",
        ("iface", "action", "reason"),
    ),
    MetricSpec(
        "xdpguard_bytes_total",
        "counter",
        "Bytes seen by the XDP program, by verdict action and reason.",
        ("iface", "action", "reason"),
    ),
    MetricSpec(
        "xdpguard_list_entries", "gauge", "Entries in the allow/block lists (and dynamic bans).", ("iface", "list")
    ),
    MetricSpec(
        "xdpguard_attack_active",
        "gauge",
        "1 while an attack event is open for the protected address, else 0.",
        ("iface", "protected"),
    ),
    MetricSpec(
        "xdpguard_sample_ratio",
        "gauge",
        "Share of verdicts the data path samples per CPU and (action, reason): 1/N for 1 in N, 0 = off.",
        ("iface",),
    ),
    MetricSpec("xdpguard_samples_total", "counter", "Packet samples written to the sample ring.", ("iface",)),
    MetricSpec(
        "xdpguard_samples_lost_total", "counter", "Packet samples lost because the sample ring was full.", ("iface",)
    ),
    MetricSpec(
        "xdpguard_samples_missed_total",
        "counter",
        "Packet samples the daemon's fan-out dropped for a reader (top, stats, capture, detection) that "
        "read too slowly.",
        ("iface",),
    ),
    MetricSpec(
        "xdpguard_backend_up",
        "gauge",
        "Backend health: 1 up, 0 down (backends not yet checked are omitted).",
        ("iface", "rule", "backend"),
    ),
    MetricSpec(
        "xdpguard_forward_packets_total",
        "counter",
        "Packets DNATed to the backends of a forwarding rule (nftables counter).",
        ("iface", "rule"),
    ),
    MetricSpec(
        "xdpguard_forward_bytes_total",
        "counter",
        "Bytes DNATed to the backends of a forwarding rule (nftables counter).",
        ("iface", "rule"),
    ),
    MetricSpec(
        "xdpguard_forward_fast_packets_total",
        "counter",
        "Packets of a forwarding rule's established flows the XDP fast path forwarded (both directions; "
        "nftables' counter never sees them).",
        ("iface", "rule"),
    ),
    MetricSpec(
        "xdpguard_forward_fast_bytes_total",
        "counter",
        "Bytes of a forwarding rule's established flows the XDP fast path forwarded (both directions).",
        ("iface", "rule"),
    ),
    MetricSpec(
        "xdpguard_http_requests_total",
        "counter",
        "HTTP requests HAProxy received for a service (since it started).",
        ("service",),
    ),
    MetricSpec(
        "xdpguard_http_challenged_requests_total",
        "counter",
        "HTTP requests answered with the challenge (302) by HAProxy.",
        ("service",),
    ),
    MetricSpec(
        "xdpguard_http_limited_requests_total",
        "counter",
        "HTTP requests HAProxy denied (429, tarpit) by a limit or a rule.",
        ("service",),
    ),
    MetricSpec(
        "xdpguard_cc_banned_entries", "gauge", "Sources banned in XDP as HTTP offenders (reason cc), now.", ("iface",)
    ),
    MetricSpec(
        "xdpguard_country_packets_total",
        "counter",
        "Packets by the country of their source (geo database), estimated from the daemon's samples: "
        "each sample counts for its 1-in-N. At most 10 countries per iface and action (the largest when "
        'labels were free; a label is kept), the rest as country="other".',
        ("iface", "action", "country"),
    ),
    MetricSpec(
        "xdpguard_verified_source_entries",
        "gauge",
        "Verified sources (a completed handshake: tcp; a peacetime answer: udp), by kind.",
        ("iface", "kind"),
    ),
    MetricSpec(
        "xdpguard_budget_packets_total",
        "counter",
        "UDP packets at the admission budgets of the services: unverified admitted or dropped, and "
        "verified (never charged). Per service entries may be swept when idle.",
        ("iface", "result"),
    ),
    MetricSpec(
        "xdpguard_verified_harm_packets_total",
        "counter",
        "First, do no harm: packets of verified sources a filter or step dropped (dropped) or let pass "
        "because they were verified (exempted).",
        ("iface", "where", "outcome"),
    ),
    MetricSpec("xdpguard_build_info", "gauge", "Always 1; the version of the serving xdpguard.", ("version",)),
)


def _import_prom():
    try:
        import prometheus_client  # noqa: F401
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        raise UserError("prometheus_client is not installed; run scripts/setup.sh") from None
    return CounterMetricFamily, GaugeMetricFamily


class XdpguardCollector:
    """Yields every family of METRICS, read from the kernel at each scrape."""

    def __init__(
        self,
        attacks: Callable[[], dict[tuple[str, str], bool]] = ATTACK_NONE,
        ifaces: Callable[[], list[str]] = state.protected_ifaces,
        sizes_max_age_s: float = SIZES_MAX_AGE_S,
        samples_missed: Callable[[], dict[str, int]] = dict,
        countries: Callable[[], dict[tuple[str, str, str], int]] = dict,
    ):
        self.samples_missed = samples_missed  # iface → cumulative (the daemon's fan-out; {} without one)
        self.countries = countries  # (iface, action, country) → estimated packets (geo.CountryTally)
        self.attacks = attacks
        self.ifaces = ifaces
        self.sizes_max_age_s = sizes_max_age_s
        self._sizes: dict[tuple[str, str], tuple[float, int]] = {}  # (iface, list) → (monotonic time, size)
        self.size_walks = 0  # how many list sizes were counted (map walks): for tests and benchmarks
        self._verified: dict[str, tuple[float, dict]] = {}  # iface → (monotonic time, guard.verified_counters)

    def _verified_counters(self, name: str, g) -> dict:
        """Guard.verified_counters walks the verified map: at most once per sizes_max_age_s, like the sizes."""
        now = time.monotonic()
        hit = self._verified.get(name)
        if hit is None or now - hit[0] >= self.sizes_max_age_s:
            hit = (now, g.verified_counters())
            self._verified[name] = hit
        return hit[1]

    def _size(self, name: str, which: str, count: Callable[[], int]) -> int:
        now = time.monotonic()
        hit = self._sizes.get((name, which))
        if hit is None or now - hit[0] >= self.sizes_max_age_s:
            hit = (now, count())
            self._sizes[(name, which)] = hit
            self.size_walks += 1
        return hit[1]

    def describe(self) -> Iterable:
        return []  # no describe-time collect: the registry would read the maps at registration

    def collect(self) -> Iterable:
        Counter, Gauge = _import_prom()
        fam = {
            m.name: (Counter if m.kind == "counter" else Gauge)(m.name, m.help, labels=list(m.labels)) for m in METRICS
        }
        active = self.attacks()
        missed = self.samples_missed()
        names = self.ifaces()
        for key in [k for k in self._sizes if k[0] not in names]:  # detached: forget its sizes
            del self._sizes[key]
        for name in names:
            try:
                g = protection.Guard.open(state.resolve_iface(name))
            except Exception:  # detached between listing and opening: skip it this scrape
                continue
            with g:
                for c in g.counters():
                    fam["xdpguard_packets_total"].add_metric([name, c.kind, c.reason], c.packets)
                    fam["xdpguard_bytes_total"].add_metric([name, c.kind, c.reason], c.bytes)
                for w in protection.LISTS:
                    fam["xdpguard_list_entries"].add_metric([name, w], self._size(name, w, lambda w=w: g.list_size(w)))
                if g.has_ban_maps():  # by name: a prefix match would find the ban bloom array too
                    fam["xdpguard_list_entries"].add_metric([name, "bans"], self._size(name, "bans", g.ban_count))
                every = g.sample_every()
                fam["xdpguard_sample_ratio"].add_metric([name], 1.0 / every if every else 0.0)
                taken, lost = g.sample_counters()
                fam["xdpguard_samples_total"].add_metric([name], taken)
                fam["xdpguard_samples_lost_total"].add_metric([name], lost)
                fam["xdpguard_samples_missed_total"].add_metric([name], missed.get(name, 0))
                fam["xdpguard_cc_banned_entries"].add_metric([name], stats.cc_bans(g))
                try:
                    vc = self._verified_counters(name, g)
                except Exception:  # a program without these maps (before an upgrade): none this scrape
                    vc = {}
                for kind, n in sorted(vc.get("verified", {}).items()):
                    fam["xdpguard_verified_source_entries"].add_metric([name, kind], n)
                for result, n in sorted(vc.get("budget", {}).items()):
                    fam["xdpguard_budget_packets_total"].add_metric([name, result], n)
                for where, h in sorted(vc.get("verified_drops", {}).items()):
                    for outcome in ("dropped", "exempted"):
                        fam["xdpguard_verified_harm_packets_total"].add_metric([name, where, outcome], h[outcome])
                for addr in g.protected():
                    fam["xdpguard_attack_active"].add_metric([name, addr], 1.0 if active.get((name, addr)) else 0.0)
        try:
            rules = fastfwd.show().rules  # nftables' counters, and the fast path's beside them
        except Exception:  # no nftables bindings, no table: no forwarding families this scrape
            rules = []
        for r in rules:
            fam["xdpguard_forward_packets_total"].add_metric([r.iface, r.key], r.packets)
            fam["xdpguard_forward_bytes_total"].add_metric([r.iface, r.key], r.bytes)
            fam["xdpguard_forward_fast_packets_total"].add_metric([r.iface, r.key], r.fast_packets)
            fam["xdpguard_forward_fast_bytes_total"].add_metric([r.iface, r.key], r.fast_bytes)
            for b in r.backends:
                if b.health in ("up", "down"):
                    fam["xdpguard_backend_up"].add_metric(
                        [r.iface, r.key, b.endpoint], 1.0 if b.health == "up" else 0.0
                    )
        for row in stats.http_rows(l7engine.stats(), {}, 1.0, 0):
            fam["xdpguard_http_requests_total"].add_metric([row.service], row.requests)
            fam["xdpguard_http_challenged_requests_total"].add_metric([row.service], row.challenged)
            fam["xdpguard_http_limited_requests_total"].add_metric([row.service], row.limited)
        for (name, action, cc), n in sorted(self.countries().items()):
            fam["xdpguard_country_packets_total"].add_metric([name, action, cc], n)
        fam["xdpguard_build_info"].add_metric([__version__], 1.0)
        yield from fam.values()


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9477', '[::1]:9477' or ':9477' (loopback) → (host, port); not resolved."""
    return vocab.parse_listen(text, "--metrics", resolve=False)


def serve(listen: str, collector: XdpguardCollector):
    """Start the HTTP endpoint in a daemon thread; returns (server, thread)."""
    _import_prom()
    from prometheus_client import CollectorRegistry, start_http_server

    host, port = parse_listen(listen)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    try:
        return start_http_server(port, addr=host, registry=reg)
    except OSError as exc:  # gaierror (a name that stopped resolving), EADDRINUSE, EADDRNOTAVAIL, EACCES
        raise UserError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
