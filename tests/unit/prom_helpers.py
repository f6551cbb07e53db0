"""Shared by the metrics, rules and dashboard tests: the real collector over a fake Guard (no
kernel), the real promtool, and the metric names a PromQL expression selects."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "xdpguard.rules.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "tests" / "xdpguard.rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "xdpguard.json"

# Series Prometheus itself adds for every target; the rules may use them.
PROMETHEUS_SERIES = {"up"}


def promtool() -> str:
    """Path of Debian's promtool (package prometheus, installed by scripts/setup.sh). Missing:
    a skip locally, a failure under CI=true."""
    path = shutil.which("promtool")
    if path is None:
        msg = "promtool not found (Debian package prometheus); run scripts/setup.sh"
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return path


def run_promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], input=stdin, capture_output=True, text=True, timeout=120, cwd=cwd)


# ---- a fake Guard under the real collector ----


class FakeGuard:
    """What protection.Guard shows the collector: counters, list sizes, protected addresses."""

    def __init__(self, counters=None, protected=("198.18.0.2",)):
        from xdpguard.core.protection import CounterView

        self._counters = counters or [
            CounterView("drop", "blocklist", 1500, 96000),
            CounterView("pass", "clean", 20, 1400),
        ]
        self._protected = list(protected)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def counters(self):
        return self._counters

    def list_size(self, which):
        return {"block": 3, "allow": 1}[which]

    def protected(self):
        return self._protected

    def sample_every(self):
        return 64

    def sample_counters(self):
        return 1000, 7

    def has_ban_maps(self):
        return False

    def cc_ban_count(self):
        return 0

    def verified_counters(self):
        return {
            "verified": {"tcp": 12, "udp": 3},
            "budget": {"admitted": 900, "dropped": 29100, "verified": 2500},
            "verified_drops": {"mitigation": {"dropped": 0, "exempted": 44}},
        }

    def fastfwd_compiled(self):
        return True

    def fastfwd_rule_counters(self):
        """The XDP fast path's per-rule counters: 7 packets, 900 bytes for the one rule."""
        from xdpguard.core.model.fastfwd import rule_id

        return {rule_id("198.18.0.2 tcp 80"): (7, 900)}


def every_counter():
    """A counter for every (action, reason) pair the data path can report."""
    from xdpguard.core.kernel.abi import Kind, Reason
    from xdpguard.core.protection import CounterView

    out = []
    for kind in Kind:
        for reason in Reason:
            if kind is Kind.PASS and reason.is_drop or kind is not Kind.PASS and not reason.is_drop:
                continue
            out.append(CounterView(kind.label, reason.label, 1000 + int(reason) * 10, 64_000 + int(reason) * 640))
    return out


def install_fakes(monkeypatch, guard: FakeGuard | None = None) -> None:
    """Make the real collector read `guard` and one forwarding rule with an up, a down and an
    unchecked backend, sampling 1 in 64 with 1000 samples taken and 7 lost."""
    from xdpguard.core.nat import forward
    from xdpguard.core import protection, state
    from xdpguard.core.nat.forward import BackendView, ForwardListResult, RuleView

    g = guard or FakeGuard()
    monkeypatch.setattr(protection.Guard, "open", classmethod(lambda cls, iface: g))
    monkeypatch.setattr(state, "resolve_iface", lambda name: state.Iface(name, 1, "net-1"))
    rules = [
        RuleView(
            "198.18.0.2 tcp 80",
            "xgp0",
            "tcp",
            "198.18.0.2",
            "80",
            [
                BackendView("198.51.100.10:8080", 1, False, "up"),
                BackendView("198.51.100.11:8080", 1, False, "down"),
                BackendView("198.51.100.12:8080", 1, True, "unknown"),
            ],
            0,
            False,
            None,
            5,
            500,
        )
    ]
    monkeypatch.setattr(forward, "show", lambda ifname=None: ForwardListResult(rules, {}, True))
    from xdpguard.core.l7 import engine, runtime

    monkeypatch.setattr(
        engine,
        "stats",
        lambda: [
            runtime.StatRow("www_fe", "FRONTEND", "OPEN", 3, 900, 880, 40, 700, 60, 0, 120),
            runtime.StatRow("www_be", "BACKEND", "UP", 0, 700, 700, 0, 700, 0, 0, 0),
        ],
    )


def scrape_text(active=None, ifaces=("xgp0",)) -> str:
    """One scrape (text exposition) of the real collector, over whatever install_fakes set."""
    from prometheus_client import CollectorRegistry, generate_latest

    from xdpguard.core.observe import metrics

    reg = CollectorRegistry(auto_describe=False)
    reg.register(
        metrics.XdpguardCollector(
            attacks=lambda: active or {},
            ifaces=lambda: list(ifaces),
            countries=lambda: {("xgp0", "drop", "QY"): 4096, ("xgp0", "pass", "QZ"): 256},
        )
    )
    return generate_latest(reg).decode()


def samples(text: str) -> list[tuple[str, dict[str, str], float, str]]:
    """(sample name, labels, value, family type) of a scrape's text."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, dict(s.labels), s.value, fam.type) for fam in text_string_to_metric_families(text) for s in fam.samples
    ]


def exported(text: str) -> dict[str, tuple[str, set[str]]]:
    """Sample name → (family type, label names) of a scrape's text (a family without samples
    is listed too: the collector declared it)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, tuple[str, set[str]]] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name + "_total" if fam.type == "counter" else fam.name, (fam.type, set()))
        for s in fam.samples:
            if not s.name.endswith("_created"):
                out.setdefault(s.name, (fam.type, set()))[1].update(s.labels)
    return out


def full_scrape(monkeypatch) -> str:
    """A scrape with a series in every family: every (action, reason) counter, an IPv4 address
    under attack next to an idle IPv6 one, up/down backends."""
    install_fakes(monkeypatch, FakeGuard(every_counter(), ("198.18.0.2", "2001:db8::2")))
    return scrape_text({("xgp0", "198.18.0.2"): True})


# ---- PromQL: which metric names does an expression select? ----

_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:$])[a-zA-Z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, aggregations,
    keywords, label names (inside {} or by/on(...)) or strings. Also `{__name__="x"}`."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    e = _STRING.sub('""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = _GROUPING.sub(" ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    for m in _IDENT.finditer(e):
        word = m.group(0)
        if word.lower() in _KEYWORDS or re.match(r"\s*\(", e[m.end() :]):
            continue
        names.add(word)
    return names


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced so promtool can parse it."""
    e = expr.replace("$__rate_interval", "1m").replace("${__rate_interval}", "1m")
    e = re.sub(r"\$__(interval|range)\b", "1m", e)
    return re.sub(r"\$\{?(\w+)\}?", ".+", e)
