"""deploy/grafana/xdpguard.json: what gen_dashboard.py writes; a well-formed dashboard; every
expression parses with promtool, names only metrics xdpguard exports, and selects series from a
real scrape of the collector (promtool test rules over that scrape)."""

from __future__ import annotations

import json
import re
import runpy

import pytest

from prom_helpers import (
    DASHBOARD,
    PROMETHEUS_SERIES,
    exported,
    full_scrape,
    grafana_to_promql,
    metric_names,
    run_promtool,
    samples,
)

GEN = DASHBOARD.parent / "gen_dashboard.py"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def expressions(d: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and template variable."""
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for a in d["annotations"]["list"]:
        if "expr" in a:
            out.append((f"annotation {a['name']!r}", a["expr"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            assert m, f"variable {v['name']}: {q}"
            out.append((f"variable ${v['name']}", m.group(1)))
    return out


def test_json_is_what_the_generator_writes():
    assert DASHBOARD.read_text() == runpy.run_path(str(GEN))["render"](), (
        "run: python3 deploy/grafana/gen_dashboard.py deploy/grafana/xdpguard.json"
    )


def test_well_formed():
    d = _dashboard()
    assert d["uid"] and d["title"] == "xdpguard" and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "job", "instance", "iface"} <= names
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and p["targets"], p["title"]
            assert p.get("description"), p["title"]
    for where, expr in expressions(d):
        if "rate(" in expr:
            assert "[$__rate_interval]" in expr, where
        if "xdpguard_" in expr and not where.startswith("variable"):
            for sel in re.findall(r"xdpguard_\w+\{([^}]*)\}", expr):  # every panel follows the variables
                assert 'instance=~"$instance"' in sel and 'job=~"$job"' in sel, where


def test_the_issue_s_views_are_there():
    """Received/dropped/forwarded in pps and bps, drops by reason, attacks, backends, sampling."""
    text = " ".join(e for _, e in expressions(_dashboard()))
    for needle in (
        "rate(xdpguard_packets_total",
        "rate(xdpguard_bytes_total",
        "sum by (reason)",
        'action="drop"',
        "xdpguard_attack_active",
        "xdpguard_backend_up",
        "xdpguard_samples_lost_total",
        "xdpguard_forward_packets_total",
        "xdpguard_list_entries",
    ):
        assert needle in text, needle


def test_expressions_name_only_exported_metrics(monkeypatch):
    served = set(exported(full_scrape(monkeypatch)))
    for where, expr in expressions(_dashboard()):
        names = metric_names(grafana_to_promql(expr))
        assert names, where
        assert not names - served - PROMETHEUS_SERIES, f"{where}: {names - served - PROMETHEUS_SERIES}"


def test_expressions_parse_and_select_series_of_a_real_scrape(monkeypatch, tmp_path):
    """Each expression E becomes an alert `count(E) > 0` over input series taken from a real
    scrape of the collector (counters rising, gauges constant, with the job/instance labels of
    a target): promtool must parse every one, and each must fire, i.e. select something."""
    exprs = expressions(_dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"alert": f"Dash{i}", "expr": f"count({grafana_to_promql(e)}) > 0"}
                    for i, (_, e) in enumerate(exprs)
                ],
            }
        ]
    }
    rules_file = tmp_path / "dashboard.rules.yml"
    rules_file.write_text(json.dumps(rules))  # JSON is YAML
    p = run_promtool("check", "rules", str(rules_file))
    assert p.returncode == 0, p.stdout + p.stderr

    target = {"job": "xdpguard", "instance": "pg1:9477"}
    series = [{"series": 'up{job="xdpguard",instance="pg1:9477"}', "values": "1x20"}]
    for name, labels, value, kind in samples(full_scrape(monkeypatch)):
        lab = ",".join(f'{k}="{v}"' for k, v in sorted({**labels, **target}.items()))
        step = max(1, int(value)) if kind == "counter" else 0
        series.append({"series": f"{name}{{{lab}}}", "values": f"{value:g}+{step}x20"})
    tests = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": f"Dash{i}", "exp_alerts": [{"exp_labels": {}}]}
                    for i in range(len(exprs))
                ],
            }
        ],
    }
    tests_file = tmp_path / "dashboard.test.yml"
    tests_file.write_text(json.dumps(tests))
    p = run_promtool("test", "rules", str(tests_file))
    if p.returncode != 0:
        empty = [exprs[int(i)][0] for i in re.findall(r"alertname: Dash(\d+)", p.stdout + p.stderr)]
        pytest.fail(f"selected nothing from a real scrape: {empty}\n{p.stdout}{p.stderr}")
