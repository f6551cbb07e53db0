"""Prometheus names and labels of the custom collector, without a kernel (a fake Guard)."""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from xdpguard.core import forward, metrics, protection, state  # noqa: E402
from xdpguard.core.forward import BackendView, ForwardListResult, RuleView  # noqa: E402
from xdpguard.core.protection import CounterView  # noqa: E402


class FakeGuard:
    maps: dict = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def counters(self):
        return [CounterView("drop", "blocklist", 1500, 96000), CounterView("pass", "clean", 20, 1400)]

    def list_size(self, which):
        return {"block": 3, "allow": 1}[which]

    def protected(self):
        return ["198.18.0.2"]


@pytest.fixture
def scrape(monkeypatch):
    monkeypatch.setattr(protection.Guard, "open", classmethod(lambda cls, iface: FakeGuard()))
    monkeypatch.setattr(state, "resolve_iface", lambda name: state.Iface(name, 1, "net-1"))
    from xdpguard.core import sampling

    monkeypatch.setattr(sampling, "get_sample_every", lambda maps: 64)
    rules = [RuleView("198.18.0.2 tcp 80", "xgp0", "tcp", "198.18.0.2", "80",
                      [BackendView("198.51.100.10:8080", 1, False, "up"), BackendView("198.51.100.11:8080", 1, False, "down"),
                       BackendView("198.51.100.12:8080", 1, True, "unknown")], 0, False, None, 5, 500)]
    monkeypatch.setattr(forward, "show", lambda ifname=None: ForwardListResult(rules, {}, True))

    def do(active=None):
        reg = CollectorRegistry(auto_describe=False)
        reg.register(metrics.XdpguardCollector(attacks=lambda: active or {}, ifaces=lambda: ["xgp0"]))
        text = generate_latest(reg).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}, text
    return do


def test_names_labels_values(scrape):
    got, text = scrape({("xgp0", "198.18.0.2"): True})
    assert got[("xdpguard_packets_total", (("action", "drop"), ("iface", "xgp0"), ("reason", "blocklist")))] == 1500
    assert got[("xdpguard_bytes_total", (("action", "drop"), ("iface", "xgp0"), ("reason", "blocklist")))] == 96000
    assert got[("xdpguard_packets_total", (("action", "pass"), ("iface", "xgp0"), ("reason", "clean")))] == 20
    assert got[("xdpguard_list_entries", (("iface", "xgp0"), ("list", "block")))] == 3
    assert got[("xdpguard_list_entries", (("iface", "xgp0"), ("list", "allow")))] == 1
    assert got[("xdpguard_backend_up", (("backend", "198.51.100.10:8080"), ("rule", "198.18.0.2 tcp 80")))] == 1
    assert got[("xdpguard_backend_up", (("backend", "198.51.100.11:8080"), ("rule", "198.18.0.2 tcp 80")))] == 0
    assert not any(k[0] == "xdpguard_backend_up" and ("backend", "198.51.100.12:8080") in k[1] for k in got)
    assert got[("xdpguard_attack_active", (("iface", "xgp0"), ("protected", "198.18.0.2")))] == 1
    assert got[("xdpguard_sample_every", (("iface", "xgp0"),))] == 64
    assert "# TYPE xdpguard_packets_total counter" in text


def test_attack_inactive_is_zero(scrape):
    got, _ = scrape()
    assert got[("xdpguard_attack_active", (("iface", "xgp0"), ("protected", "198.18.0.2")))] == 0


@pytest.mark.parametrize("text,out", [("127.0.0.1:9477", ("127.0.0.1", 9477)), (":9477", ("127.0.0.1", 9477)),
                                      ("[::1]:9000", ("::1", 9000))])
def test_parse_listen(text, out):
    assert metrics.parse_listen(text) == out


@pytest.mark.parametrize("bad", ["127.0.0.1", "host:0", "x:y"])
def test_parse_listen_rejects(bad):
    with pytest.raises(metrics.UserError if hasattr(metrics, "UserError") else Exception):
        metrics.parse_listen(bad)
