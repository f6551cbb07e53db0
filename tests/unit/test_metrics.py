"""Prometheus names and labels of the custom collector, without a kernel (a fake Guard)."""

from __future__ import annotations

import re

import pytest

from prom_helpers import exported, install_fakes, samples, scrape_text  # (tests/unit is on sys.path)

from xdpguard import __version__
from xdpguard.core.observe import metrics


@pytest.fixture
def scrape(monkeypatch):
    install_fakes(monkeypatch)

    def do(active=None):
        text = scrape_text(active)
        return {(name, tuple(sorted(labels.items()))): value for name, labels, value, _ in samples(text)}, text

    return do


def test_names_labels_values(scrape):
    got, text = scrape({("xgp0", "198.18.0.2"): True})
    assert got[("xdpguard_packets_total", (("action", "drop"), ("iface", "xgp0"), ("reason", "blocklist")))] == 1500
    assert got[("xdpguard_bytes_total", (("action", "drop"), ("iface", "xgp0"), ("reason", "blocklist")))] == 96000
    assert got[("xdpguard_packets_total", (("action", "pass"), ("iface", "xgp0"), ("reason", "clean")))] == 20
    assert got[("xdpguard_list_entries", (("iface", "xgp0"), ("list", "block")))] == 3
    assert got[("xdpguard_list_entries", (("iface", "xgp0"), ("list", "allow")))] == 1
    rule = ("rule", "198.18.0.2 tcp 80")
    assert got[("xdpguard_backend_up", (("backend", "198.51.100.10:8080"), ("iface", "xgp0"), rule))] == 1
    assert got[("xdpguard_backend_up", (("backend", "198.51.100.11:8080"), ("iface", "xgp0"), rule))] == 0
    assert not any(k[0] == "xdpguard_backend_up" and ("backend", "198.51.100.12:8080") in k[1] for k in got)
    assert got[("xdpguard_forward_packets_total", (("iface", "xgp0"), rule))] == 5
    assert got[("xdpguard_forward_bytes_total", (("iface", "xgp0"), rule))] == 500
    assert got[("xdpguard_forward_fast_packets_total", (("iface", "xgp0"), rule))] == 7  # beside nftables'
    assert got[("xdpguard_forward_fast_bytes_total", (("iface", "xgp0"), rule))] == 900
    assert got[("xdpguard_attack_active", (("iface", "xgp0"), ("protected", "198.18.0.2")))] == 1
    assert got[("xdpguard_sample_ratio", (("iface", "xgp0"),))] == 1 / 64
    assert got[("xdpguard_samples_total", (("iface", "xgp0"),))] == 1000
    assert got[("xdpguard_samples_lost_total", (("iface", "xgp0"),))] == 7
    assert got[("xdpguard_build_info", (("version", __version__),))] == 1
    assert got[("xdpguard_http_requests_total", (("service", "www"),))] == 880
    assert got[("xdpguard_http_challenged_requests_total", (("service", "www"),))] == 120
    assert got[("xdpguard_http_limited_requests_total", (("service", "www"),))] == 40
    assert got[("xdpguard_country_packets_total", (("action", "drop"), ("country", "QY"), ("iface", "xgp0")))] == 4096
    assert "# TYPE xdpguard_packets_total counter" in text
    assert got[("xdpguard_verified_source_entries", (("iface", "xgp0"), ("kind", "tcp")))] == 12
    assert got[("xdpguard_budget_packets_total", (("iface", "xgp0"), ("result", "dropped")))] == 29100
    assert (
        got[
            (
                "xdpguard_verified_harm_packets_total",
                (("iface", "xgp0"), ("outcome", "exempted"), ("where", "mitigation")),
            )
        ]
        == 44
    )


def test_attack_inactive_is_zero(scrape):
    got, _ = scrape()
    assert got[("xdpguard_attack_active", (("iface", "xgp0"), ("protected", "198.18.0.2")))] == 0


@pytest.mark.parametrize(
    "text,out", [("127.0.0.1:9477", ("127.0.0.1", 9477)), (":9477", ("127.0.0.1", 9477)), ("[::1]:9000", ("::1", 9000))]
)
def test_parse_listen(text, out):
    assert metrics.parse_listen(text) == out


@pytest.mark.parametrize("bad", ["127.0.0.1", "host:0", "x:y"])
def test_parse_listen_rejects(bad):
    with pytest.raises(metrics.UserError if hasattr(metrics, "UserError") else Exception):
        metrics.parse_listen(bad)


def test_every_declared_family_is_served_with_its_type_and_labels(scrape):
    got = exported(scrape_text({("xgp0", "198.18.0.2"): True}))
    for m in metrics.METRICS:
        assert m.name in got, m.name
        kind, labels = got[m.name]
        assert kind == m.kind and labels == set(m.labels), (m.name, kind, labels)
    assert {n for n in got if n.startswith("xdpguard_")} == {m.name for m in metrics.METRICS}


NAME = re.compile(r"^xdpguard_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
LABEL = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
UNIT_WORDS = {"seconds", "bytes", "ratio", "packets", "entries", "samples", "info", "up", "active", "requests"}


@pytest.mark.parametrize("m", metrics.METRICS, ids=lambda m: m.name)
def test_names_follow_prometheus_conventions(m):
    """https://prometheus.io/docs/practices/naming/: snake_case, `_total` exactly on counters,
    base units in the name (bytes, seconds; no bits, ms or kb), a unitless fraction is `_ratio`."""
    assert NAME.match(m.name) and all(LABEL.match(la) and not la.startswith("__") for la in m.labels)
    assert m.name.endswith("_total") == (m.kind == "counter")
    words = m.name.removesuffix("_total").split("_")
    assert not {"bits", "bps", "pps", "ms", "kb", "mb", "percent", "every"} & set(words), m.name
    assert UNIT_WORDS & set(words), f"{m.name}: the name should say what it counts or measures (unit)"
    assert m.labels == tuple(dict.fromkeys(m.labels)) and "le" not in m.labels and "quantile" not in m.labels
