"""deploy/prometheus/: the rules pass the real `promtool check rules` (lint included) and their
unit tests (`promtool test rules`), use only metrics xdpguard exports, and a real scrape passes
`promtool check metrics` (Prometheus' own naming lint)."""

from __future__ import annotations

import yaml

from prom_helpers import PROMETHEUS_SERIES, RULES, RULES_TEST, exported, full_scrape, metric_names, run_promtool

from xdpguard.core.observe import metrics


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules():
    p = run_promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


def test_promtool_test_rules():
    p = run_promtool("test", "rules", str(RULES_TEST))
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


def test_the_issue_s_alerts_exist():
    alerts = {r["alert"]: r for r in _rules() if "alert" in r}
    for name in (
        "XdpguardAttackActive",
        "XdpguardHighDropRate",
        "XdpguardBackendDown",
        "XdpguardSampleLoss",
        "XdpguardDaemonDown",
    ):
        assert name in alerts
        assert alerts[name]["labels"]["severity"] in ("warning", "critical")
        assert alerts[name]["annotations"]["summary"] and alerts[name]["annotations"]["description"]
    tested = {
        t["alertname"]
        for case in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    assert tested == set(alerts), "every alert has a promtool unit test"


def test_rules_name_only_exported_metrics(monkeypatch):
    served = set(exported(full_scrape(monkeypatch)))
    recorded = {r["record"] for r in _rules() if "record" in r}
    for r in _rules():
        unknown = metric_names(r["expr"]) - served - recorded - PROMETHEUS_SERIES
        assert not unknown, f"{r.get('alert') or r.get('record')}: {unknown}"
    for name in recorded:  # level:metric:operations, the metric part one we export
        level, metric, ops = name.split(":")
        assert level and ops and any(metric.startswith(m.name.removesuffix("_total")) for m in metrics.METRICS), name


def test_rule_tests_use_real_names_and_labels():
    """The unit tests' input series look like real scrapes: exported names, declared labels
    (plus the job and instance Prometheus adds)."""
    declared = {m.name: set(m.labels) for m in metrics.METRICS}
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for s in case["input_series"]:
            series = s["series"]
            name = series.split("{", 1)[0]
            labels = {kv.split("=", 1)[0].strip() for kv in series.split("{", 1)[1].rstrip("}").split('",') if kv}
            if name in PROMETHEUS_SERIES:
                assert labels == {"job", "instance"}, series
                continue
            assert name in declared, series
            assert labels == declared[name] | {"job", "instance"}, series


def test_promtool_check_metrics_accepts_a_real_scrape(monkeypatch):
    text = full_scrape(monkeypatch)
    p = run_promtool("check", "metrics", stdin=text)
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr


def test_metric_names_tokenizer():
    assert metric_names('sum by (iface, reason) (rate(xdpguard_packets_total{action="drop",reason!~"a|b"}[5m]))') == {
        "xdpguard_packets_total"
    }
    assert metric_names('a:b:c > 1 and on (instance) up{job="x"} unless absent(foo) or vector(0)') == {
        "a:b:c",
        "up",
        "foo",
    }
    assert metric_names("count(x offset 5m) / ignoring (le) group_left (a) y * 1e3") == {"x", "y"}


def test_example_config_checks():
    p = run_promtool("check", "config", str(RULES.parent / "prometheus.example.yml"))
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr
    assert str(RULES.name) in p.stdout  # it loaded and checked our rules too
