"""Writes deploy/grafana/xdpguard.json, the Grafana dashboard over xdpguard's metrics.

    python3 deploy/grafana/gen_dashboard.py deploy/grafana/xdpguard.json

Edit this file, not the JSON: tests/unit/test_dashboard.py fails when the JSON is not what this
script writes, when an expression does not parse (promtool) or selects nothing from a real
scrape, and when it names a metric xdpguard does not export. Panels select with the dashboard's
$job / $instance / $iface variables and use $__rate_interval for rates.
"""

import json
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
S = 'job=~"$job",instance=~"$instance",iface=~"$iface"'
R = "$__rate_interval"
panels = []
pid = [0]
y = [0]


def nid():
    pid[0] += 1
    return pid[0]


def row(title):
    panels.append(
        {
            "type": "row",
            "title": title,
            "id": nid(),
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]},
            "panels": [],
        }
    )
    y[0] += 1


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def ts(title, desc, targets, unit, x, w, h=8, stack=False, extra=None):
    p = {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "id": nid(),
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y[0]},
        "targets": [target(e, l, chr(65 + i)) for i, (e, l) in enumerate(targets)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 20 if stack else 5,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                    "showPoints": "never",
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "calcs": ["max", "lastNotNull"],
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }
    if extra:
        p.update(extra)
    panels.append(p)


def stat(title, desc, expr, legend, unit, x, w, h=4, thresholds=None, mappings=None):
    panels.append(
        {
            "type": "stat",
            "title": title,
            "description": desc,
            "id": nid(),
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": x, "y": y[0]},
            "targets": [dict(target(expr, legend, "A"), instant=True, range=False)],
            "fieldConfig": {
                "defaults": {
                    "unit": unit,
                    "mappings": mappings or [],
                    "thresholds": {"mode": "absolute", "steps": thresholds or [{"color": "green", "value": None}]},
                },
                "overrides": [],
            },
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "background",
                "graphMode": "none",
                "textMode": "auto",
                "justifyMode": "auto",
                "orientation": "auto",
            },
        }
    )


row("Overview")
stat(
    "Addresses under attack",
    "Protected addresses with an open attack event (xdpguard run's detection).",
    f"sum(xdpguard_attack_active{{{S}}})",
    "",
    "none",
    0,
    4,
    thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
)
stat(
    "Dropped",
    "Packets/s dropped by XDP, every reason.",
    f'sum(rate(xdpguard_packets_total{{{S},action="drop"}}[{R}]))',
    "",
    "pps",
    4,
    4,
)
stat(
    "Forwarded to the protected addresses",
    "Packets/s that passed XDP towards a protected address (clean, allowlist, would_drop).",
    f'sum(rate(xdpguard_packets_total{{{S},action=~"pass|would_drop",reason!="bypass"}}[{R}]))',
    "",
    "pps",
    8,
    4,
)
stat(
    "Drop share",
    "Of the traffic to protected addresses, the share XDP dropped.",
    f'sum(rate(xdpguard_packets_total{{{S},action="drop"}}[{R}])) / sum(rate(xdpguard_packets_total{{{S},reason!="bypass"}}[{R}]))',
    "",
    "percentunit",
    12,
    4,
)
stat(
    "Backends down",
    "Checked backends whose health check fails (xdpguard run).",
    f"count(xdpguard_backend_up{{{S}}} == 0) or vector(0)",
    "",
    "none",
    16,
    4,
    thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
)
stat(
    "xdpguard up",
    "Prometheus' scrape of `xdpguard run --metrics` (0: the daemon is down; the data path keeps filtering).",
    'min(up{job=~"$job",instance=~"$instance"})',
    "",
    "none",
    20,
    4,
    thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
    mappings=[{"type": "value", "options": {"0": {"text": "DOWN"}, "1": {"text": "UP"}}}],
)
y[0] += 4

row("Traffic")
ts(
    "Packets/s: received, dropped, forwarded",
    "Everything XDP saw on the interfaces; what it dropped; what went on to protected addresses; bypass = not for a protected address.",
    [
        (f"sum by (instance, iface) (rate(xdpguard_packets_total{{{S}}}[{R}]))", "received {{instance}} {{iface}}"),
        (
            f'sum by (instance, iface) (rate(xdpguard_packets_total{{{S},action="drop"}}[{R}]))',
            "dropped {{instance}} {{iface}}",
        ),
        (
            f'sum by (instance, iface) (rate(xdpguard_packets_total{{{S},action=~"pass|would_drop",reason!="bypass"}}[{R}]))',
            "forwarded {{instance}} {{iface}}",
        ),
        (
            f'sum by (instance, iface) (rate(xdpguard_packets_total{{{S},reason="bypass"}}[{R}]))',
            "bypass {{instance}} {{iface}}",
        ),
    ],
    "pps",
    0,
    12,
)
ts(
    "Bits/s: received, dropped, forwarded",
    "The same in bits per second (xdpguard_bytes_total × 8).",
    [
        (f"8 * sum by (instance, iface) (rate(xdpguard_bytes_total{{{S}}}[{R}]))", "received {{instance}} {{iface}}"),
        (
            f'8 * sum by (instance, iface) (rate(xdpguard_bytes_total{{{S},action="drop"}}[{R}]))',
            "dropped {{instance}} {{iface}}",
        ),
        (
            f'8 * sum by (instance, iface) (rate(xdpguard_bytes_total{{{S},action=~"pass|would_drop",reason!="bypass"}}[{R}]))',
            "forwarded {{instance}} {{iface}}",
        ),
    ],
    "bps",
    12,
    12,
)
y[0] += 8
ts(
    "Dropped packets/s by reason",
    "Which step of the XDP pipeline dropped the attack (blocklist, banned, port, reflection, feature, ratelimit, syn, ...).",
    [(f'sum by (reason) (rate(xdpguard_packets_total{{{S},action="drop"}}[{R}]))', "{{reason}}")],
    "pps",
    0,
    12,
    stack=True,
)
ts(
    "Dropped bits/s by reason",
    "Dropped traffic by reason, in bits per second.",
    [(f'8 * sum by (reason) (rate(xdpguard_bytes_total{{{S},action="drop"}}[{R}]))', "{{reason}}")],
    "bps",
    12,
    12,
    stack=True,
)
y[0] += 8
ts(
    "Monitor mode: would drop, by reason",
    "Packets/s that a reason in monitor mode let through but would have dropped.",
    [(f'sum by (reason) (rate(xdpguard_packets_total{{{S},action="would_drop"}}[{R}]))', "{{reason}}")],
    "pps",
    0,
    12,
    stack=True,
)
ts(
    "Passed packets/s by reason",
    "clean (every check passed), allowlist, bypass.",
    [(f'sum by (reason) (rate(xdpguard_packets_total{{{S},action="pass"}}[{R}]))', "{{reason}}")],
    "pps",
    12,
    12,
    stack=True,
)
y[0] += 8

row("Attacks")
panels.append(
    {
        "type": "state-timeline",
        "title": "Attack state per protected address",
        "description": "1 (red) while an attack event is open for the address (xdpguard events).",
        "id": nid(),
        "datasource": DS,
        "gridPos": {"h": 8, "w": 24, "x": 0, "y": y[0]},
        "targets": [
            target(
                f"max by (instance, iface, protected) (xdpguard_attack_active{{{S}}})",
                "{{protected}} ({{instance}} {{iface}})",
                "A",
            )
        ],
        "fieldConfig": {
            "defaults": {
                "unit": "none",
                "min": 0,
                "max": 1,
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "quiet", "color": "green"},
                            "1": {"text": "UNDER ATTACK", "color": "red"},
                        },
                    }
                ],
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
                },
            },
            "overrides": [],
        },
        "options": {
            "showValue": "never",
            "mergeValues": True,
            "rowHeight": 0.9,
            "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
        },
    }
)
y[0] += 8

row("Forwarding")
panels.append(
    {
        "type": "table",
        "title": "Backend health",
        "description": "1 up, 0 down; backends not yet checked are not listed.",
        "id": nid(),
        "datasource": DS,
        "gridPos": {"h": 8, "w": 8, "x": 0, "y": y[0]},
        "targets": [dict(target(f"xdpguard_backend_up{{{S}}}", "", "A"), instant=True, range=False, format="table")],
        "fieldConfig": {
            "defaults": {
                "mappings": [
                    {
                        "type": "value",
                        "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "up", "color": "green"}},
                    }
                ],
                "custom": {"cellOptions": {"type": "color-text"}},
            },
            "overrides": [],
        },
        "transformations": [
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "__name__": True, "job": True},
                    "renameByName": {"Value": "health"},
                },
            }
        ],
        "options": {"showHeader": True},
    }
)
ts(
    "Forwarded packets/s per rule",
    "Packets DNATed to the backends of each forwarding rule (nftables counters).",
    [(f"sum by (instance, rule) (rate(xdpguard_forward_packets_total{{{S}}}[{R}]))", "{{rule}} ({{instance}})")],
    "pps",
    8,
    8,
)
ts(
    "Forwarded bits/s per rule",
    "The same in bits per second.",
    [(f"8 * sum by (instance, rule) (rate(xdpguard_forward_bytes_total{{{S}}}[{R}]))", "{{rule}} ({{instance}})")],
    "bps",
    16,
    8,
)
y[0] += 8

row("Lists and sampling")
ts(
    "List entries",
    "Allow/block list entries and dynamic bans.",
    [(f"sum by (instance, iface, list) (xdpguard_list_entries{{{S}}})", "{{list}} ({{instance}} {{iface}})")],
    "short",
    0,
    8,
)
ts(
    "Sampling: 1 in N",
    "The data path samples 1 in N verdicts per CPU and (action, reason) for top sources and ports.",
    [(f"1 / (xdpguard_sample_ratio{{{S}}} > 0)", "1 in N ({{instance}} {{iface}})")],
    "short",
    8,
    8,
)
ts(
    "Samples/s written and lost",
    "Lost: the sample ring was full (top sources and per-address detection see less).",
    [
        (f"sum by (instance, iface) (rate(xdpguard_samples_total{{{S}}}[{R}]))", "written {{instance}} {{iface}}"),
        (f"sum by (instance, iface) (rate(xdpguard_samples_lost_total{{{S}}}[{R}]))", "lost {{instance}} {{iface}}"),
    ],
    "short",
    16,
    8,
)
y[0] += 8


def var(name, label, query, all_=True):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"PrometheusVariableQueryEditor-{name}"},
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": all_,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "options": [],
        "regex": "",
    }


dash = {
    "title": "xdpguard",
    "uid": "xdpguard-overview",
    "description": "xdpguard DDoS protective IP: traffic, drops by reason, attacks, forwarding, lists and sampling "
    "(metrics of `xdpguard run --metrics`).",
    "tags": ["xdpguard", "ddos", "xdp"],
    "editable": True,
    "graphTooltip": 1,
    "timezone": "browser",
    "schemaVersion": 38,
    "version": 1,
    "refresh": "10s",
    "liveNow": False,
    "time": {"from": "now-1h", "to": "now"},
    "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"], "quick_ranges": []},
    "templating": {
        "list": [
            {
                "name": "datasource",
                "label": "Prometheus",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
                "options": [],
            },
            var("job", "job", "label_values(xdpguard_build_info, job)"),
            var("instance", "instance", 'label_values(xdpguard_build_info{job=~"$job"}, instance)'),
            var("iface", "interface", 'label_values(xdpguard_packets_total{job=~"$job",instance=~"$instance"}, iface)'),
        ]
    },
    "annotations": {
        "list": [
            {
                "builtIn": 1,
                "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True,
                "hide": True,
                "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts",
                "type": "dashboard",
            },
            {
                "name": "Attacks",
                "datasource": DS,
                "enable": True,
                "iconColor": "red",
                "expr": f"max by (instance, iface, protected) (xdpguard_attack_active{{{S}}}) == 1",
                "step": "15s",
                "titleFormat": "attack",
                "textFormat": "{{protected}} on {{instance}} {{iface}}",
                "useValueForTime": False,
            },
        ]
    },
    "links": [],
    "panels": panels,
}


def render() -> str:
    return json.dumps(dash, indent=2) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "deploy/grafana/xdpguard.json", "w") as f:
        f.write(render())
