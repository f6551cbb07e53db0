"""Prometheus metrics for `xdpguard run --metrics`: a custom collector reading the maps at
scrape time (nothing is cached between scrapes, so a scrape is as fresh as `stats --json`).

prometheus_client is imported lazily: only `run --metrics` needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from . import protection, state

ATTACK_NONE: Callable[[], dict[tuple[str, str], bool]] = lambda: {}


def _import_prom():
    try:
        import prometheus_client  # noqa: F401
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        from .errors import UserError

        raise UserError("prometheus_client is not installed; run scripts/setup.sh") from None
    return CounterMetricFamily, GaugeMetricFamily


class XdpguardCollector:
    """Yields xdpguard_packets_total, xdpguard_bytes_total{iface,action,reason},
    xdpguard_list_entries{iface,list}, xdpguard_backend_up{rule,backend},
    xdpguard_attack_active{iface,protected} and xdpguard_sample_every{iface}."""

    def __init__(self, attacks: Callable[[], dict[tuple[str, str], bool]] = ATTACK_NONE,
                 ifaces: Callable[[], list[str]] = state.protected_ifaces):
        self.attacks = attacks
        self.ifaces = ifaces

    def describe(self) -> Iterable:
        return []  # no describe-time collect: the registry would read the maps at registration

    def collect(self) -> Iterable:
        from . import forward, sampling

        Counter, Gauge = _import_prom()
        packets = Counter("xdpguard_packets", "Packets seen by the XDP program, by verdict action and reason.",
                          labels=["iface", "action", "reason"])
        bytes_ = Counter("xdpguard_bytes", "Bytes seen by the XDP program, by verdict action and reason.",
                         labels=["iface", "action", "reason"])
        lists = Gauge("xdpguard_list_entries", "Entries in the allow/block lists (and dynamic bans).",
                      labels=["iface", "list"])
        backend = Gauge("xdpguard_backend_up", "Backend health: 1 up, 0 down (unknown backends are omitted).",
                        labels=["rule", "backend"])
        attack = Gauge("xdpguard_attack_active", "1 while an attack event is open for the protected address.",
                       labels=["iface", "protected"])
        sample = Gauge("xdpguard_sample_every", "Sampling: 1 in N verdicts per CPU (0 = off).", labels=["iface"])
        active = self.attacks()
        for name in self.ifaces():
            try:
                g = protection.Guard.open(state.resolve_iface(name))
            except Exception:  # detached between listing and opening: skip it this scrape
                continue
            with g:
                for c in g.counters():
                    packets.add_metric([name, c.kind, c.reason], c.packets)
                    bytes_.add_metric([name, c.kind, c.reason], c.bytes)
                for w in protection.LISTS:
                    lists.add_metric([name, w], g.list_size(w))
                for mname, m in g.maps.items():
                    if mname.value.startswith("xg_ban"):
                        lists.add_metric([name, "bans"], len(m))
                sample.add_metric([name], sampling.get_sample_every(g.maps))
                for addr in g.protected():
                    attack.add_metric([name, addr], 1.0 if active.get((name, addr)) else 0.0)
        try:
            for r in forward.show().rules:
                for b in r.backends:
                    if b.health in ("up", "down"):
                        backend.add_metric([r.key, b.endpoint], 1.0 if b.health == "up" else 0.0)
        except Exception:
            pass
        yield from (packets, bytes_, lists, backend, attack, sample)


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9477', '[::1]:9477' or ':9477' (loopback) → (host, port)."""
    from .errors import UserError

    t = text.strip()
    if t.startswith("["):
        host, _, port = t[1:].partition("]:")
    else:
        host, _, port = t.rpartition(":")
    host = host or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise UserError(f"invalid --metrics '{text}': use HOST:PORT") from None
    if not 1 <= p <= 65535:
        raise UserError(f"invalid --metrics '{text}': port {p} is outside 1-65535")
    return host, p


def serve(listen: str, collector: XdpguardCollector):
    """Start the HTTP endpoint in a daemon thread; returns (server, thread)."""
    _import_prom()
    from prometheus_client import CollectorRegistry, start_http_server

    host, port = parse_listen(listen)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return start_http_server(port, addr=host, registry=reg)
