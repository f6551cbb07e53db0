"""`xdpguard report`: one attack event as a self-contained HTML page (and a PNG), drawn from the
event log (events.py) and the daemon's rolling history (history.py).

The page holds: the event (id, interface, protected address, start, end, duration, triggers),
its peaks, received / dropped / forwarded pps and bps over time with the drops stacked by
reason (the event's span shaded), what was dropped by which step, the cleansing policy in force
(as recorded by the daemon), the top sources, ports and countries (sampled estimates; the
countries when a geo database is there), and the legitimate traffic forwarded during the
attack next to before it. Plots are PNGs rendered by matplotlib's
Agg backend and embedded as base64, so the file opens anywhere, offline.

matplotlib is imported when a report is rendered (like bcc and prometheus_client: only this
command needs it; Debian's python3-matplotlib).
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from . import capture, events, history
from ..errors import UserError

MAX_REASONS_PLOTTED = 6
PNG_DPI = 100


@dataclass(frozen=True)
class Summary:
    """What the page says, computed from the history records of the event's window."""

    tier: str
    records: int
    peak_pps: float
    peak_drop_pps: float
    peak_bps: float
    received_packets: float
    dropped_packets: float
    forwarded_packets: float
    forwarded_bytes: float
    forwarded_pps_during: float
    forwarded_pps_before: float | None
    reasons: list[list]  # [reason, packets]
    sources: list[list]  # [address, packets estimate]
    ports: list[list]  # [proto/port, packets estimate]
    samples: int
    samples_missed: int
    policies: list[dict] = field(default_factory=list)  # {"t", "policy"} in force during the event
    countries_dropped: list[list] = field(default_factory=list)  # [country, packets estimate] (geo database)
    countries_passed: list[list] = field(default_factory=list)


@dataclass(frozen=True)
class ReportResult:
    event: dict
    summary: Summary
    html_file: str | None
    png_file: str | None
    html_bytes: int
    png_bytes: int
    render_s: float

    def to_dict(self) -> dict:
        return asdict(self)


# ---- picking the event and its records ----


def pick_event(event_id: str | None, iface: str | None = None) -> dict:
    evs = events.read_log(iface=iface)
    if not evs:
        raise UserError(
            f"no attack events in {events.log_path()}"
            + (f" for {iface}" if iface else "")
            + "; `xdpguard run` opens them"
        )
    if event_id is None:
        return evs[-1]
    hits = [e for e in evs if str(e.get("id", "")).startswith(event_id)]
    if not hits:
        raise UserError(f"no attack event '{event_id}' in {events.log_path()} (see `xdpguard events`)")
    if len(hits) > 1 and not any(e["id"] == event_id for e in hits):
        raise UserError(f"'{event_id}' matches {len(hits)} events; give more of the id")
    return next((e for e in hits if e["id"] == event_id), hits[0])


def event_span(ev: dict, now: float | None = None) -> tuple[float, float]:
    start = float(ev.get("start", 0))
    end = ev.get("end")
    return start, float(end) if end is not None else (now if now is not None else time.time())


def margins(start: float, end: float) -> float:
    """Context shown before and after the event: a tenth of it, 10 s to 10 min."""
    return min(600.0, max(10.0, (end - start) / 10))


def records_for(ev: dict, root=None, now: float | None = None) -> tuple[str, list[dict], float, float]:
    iface = ev.get("iface", "?")
    start, end = event_span(ev, now)
    m = margins(start, end)
    if iface not in history.recorded_ifaces(root):
        raise UserError(
            f"no daemon history for {iface} in {history.iface_dir(iface, root)}: "
            "`xdpguard run` (with detection) records it"
        )
    tier, recs = history.window(iface, start - m, end + m, root)
    if not recs:
        raise UserError(
            f"the daemon history of {iface} holds nothing from {_ts(start)} to {_ts(end)} "
            "(it keeps 1 h at 1 s, 1 day at 10 s, 1 week at 60 s)"
        )
    return tier, recs, start, end


# ---- the numbers ----


def _during(recs: list[dict], start: float, end: float) -> list[dict]:
    """Records whose interval overlaps [start, end]."""
    return [r for r in recs if r["t"] >= start and r["t"] - r["dt"] <= end]


def summarise(tier: str, recs: list[dict], start: float, end: float, policies: list[dict] | None = None) -> Summary:
    during = _during(recs, start, end) or recs
    before = [r for r in recs if r["t"] < start]
    pk = [history.peaks(r) for r in during]

    def total(series: str, i: int = 0) -> float:
        return sum(r[series][i] * r["dt"] for r in during)

    reasons: dict[str, float] = {}
    sources: dict[str, float] = {}
    ports: dict[str, float] = {}
    cdrop: dict[str, float] = {}
    cpass: dict[str, float] = {}
    for r in during:
        for key, acc in (("cd", cdrop), ("cp", cpass)):
            for k, p in r.get(key, []):
                acc[k] = acc.get(k, 0.0) + p * r["dt"]
        for k, (p, _) in r.get("r", {}).items():
            reasons[k] = reasons.get(k, 0.0) + p * r["dt"]
        for k, p in r.get("src", []):
            sources[k] = sources.get(k, 0.0) + p * r["dt"]
        for k, p in r.get("port", []):
            ports[k] = ports.get(k, 0.0) + p * r["dt"]

    def top(d: dict[str, float], n: int) -> list[list]:
        return [[k, round(v)] for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:n] if v > 0]

    dur = sum(r["dt"] for r in during) or 1e-9
    bdur = sum(r["dt"] for r in before)
    fwd_before = sum(r["fwd"][0] * r["dt"] for r in before) / bdur if bdur else None
    pols = policies or []
    in_force = [p for p in pols if p["t"] <= start][-1:] + [p for p in pols if start < p["t"] <= end]
    return Summary(
        tier=tier,
        records=len(during),
        peak_pps=max((p[0] for p in pk), default=0.0),
        peak_drop_pps=max((p[1] for p in pk), default=0.0),
        peak_bps=max((p[2] for p in pk), default=0.0),
        received_packets=round(total("rx")),
        dropped_packets=round(total("drop")),
        forwarded_packets=round(total("fwd")),
        forwarded_bytes=round(total("fwd", 1) / 8),
        forwarded_pps_during=round(total("fwd") / dur, 2),
        forwarded_pps_before=None if fwd_before is None else round(fwd_before, 2),
        reasons=top(reasons, 20),
        sources=top(sources, 10),
        ports=top(ports, 10),
        samples=sum(r.get("ns", 0) for r in during),
        samples_missed=sum(r.get("nm", 0) for r in during),
        policies=in_force,
        countries_dropped=top(cdrop, 10),
        countries_passed=top(cpass, 10),
    )


# ---- the pictures ----


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("matplotlib is not installed (Debian python3-matplotlib); run scripts/setup.sh") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    return plt, mdates, FuncFormatter


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI)
    plt.close(fig)
    return buf.getvalue()


def _si(v: float) -> str:
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= f:
            return f"{v / f:.3g}{unit}"
    return f"{v:.3g}"


def traffic_png(ev: dict, recs: list[dict], start: float, end: float) -> bytes:
    """Three panels over time: pps and bps (received and forwarded as lines, drops stacked by
    reason), and the forwarded (legitimate) traffic alone on its own scale."""
    plt, mdates, FuncFormatter = _pyplot()

    xs = [datetime.fromtimestamp(r["t"], tz=timezone.utc) for r in recs]
    totals: dict[str, float] = {}
    for r in recs:
        for k, (p, _) in r.get("r", {}).items():
            totals[k] = totals.get(k, 0.0) + p * r["dt"]
    shown = [k for k, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:MAX_REASONS_PLOTTED]]
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True, gridspec_kw={"height_ratios": [3, 3, 2]})
    for ax, i, unit in ((axes[0], 0, "packets/s"), (axes[1], 1, "bits/s")):
        stack = [[r.get("r", {}).get(k, [0.0, 0.0])[i] for r in recs] for k in shown]
        other = [max(0.0, r["drop"][i] - sum(r.get("r", {}).get(k, [0.0, 0.0])[i] for k in shown)) for r in recs]
        labels = [f"dropped: {k}" for k in shown]
        if any(v > 0 for v in other):
            stack.append(other)
            labels.append("dropped: other")
        if stack:
            ax.stackplot(xs, *stack, labels=labels, alpha=0.7, step="pre")
        ax.step(xs, [r["rx"][i] for r in recs], where="pre", color="black", linewidth=1.2, label="received")
        ax.step(
            xs,
            [r["fwd"][i] for r in recs],
            where="pre",
            color="tab:green",
            linewidth=1.6,
            label="forwarded (legitimate)",
        )
        ax.axvspan(
            datetime.fromtimestamp(start, tz=timezone.utc),
            datetime.fromtimestamp(end, tz=timezone.utc),
            color="tab:red",
            alpha=0.08,
            label="attack event",
        )
        ax.set_ylabel(unit)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _si(v)))
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    # the legitimate traffic on its own scale (next to a flood it would be a line at zero)
    ax, bx = axes[2], axes[2].twinx()
    ax.step(xs, [r["fwd"][0] for r in recs], where="pre", color="tab:green", linewidth=1.6, label="forwarded pps")
    bx.step(
        xs,
        [r["fwd"][1] for r in recs],
        where="pre",
        color="tab:blue",
        linewidth=1.0,
        linestyle="--",
        label="forwarded bps",
    )
    ax.axvspan(
        datetime.fromtimestamp(start, tz=timezone.utc),
        datetime.fromtimestamp(end, tz=timezone.utc),
        color="tab:red",
        alpha=0.08,
    )
    ax.set_ylabel("forwarded packets/s")
    bx.set_ylabel("forwarded bits/s")
    for a in (ax, bx):
        a.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _si(v)))
        a.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=ax.get_lines() + bx.get_lines(), loc="upper left", fontsize=8)
    axes[0].set_title(f"{ev.get('iface', '?')} → {ev.get('protected', '?')}: attack {ev.get('id', '?')}")
    axes[0].legend(loc="upper left", fontsize=8, ncol=2)
    axes[2].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=timezone.utc))
    axes[2].set_xlabel("time (UTC)")
    fig.tight_layout()
    return _png(fig, plt)


def talkers_png(summary: Summary) -> bytes | None:
    """Top sources and ports as horizontal bars (estimated packets during the event)."""
    if not summary.sources and not summary.ports:
        return None
    plt, _, _ = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, rows, title in ((axes[0], summary.sources, "top sources"), (axes[1], summary.ports, "top ports")):
        rows = rows[:8][::-1]
        ax.barh([k for k, _ in rows], [v for _, v in rows], color="tab:orange")
        ax.set_title(f"{title} (estimated packets, sampled)")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig, plt)


# ---- the page ----


def _ts(t: float | None) -> str:
    if t is None:
        return "open"
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(head: list[str], rows: list[list]) -> str:
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


CSS = """body{font-family:sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:85%}
.num{font-variant-numeric:tabular-nums}"""


def render_html(ev: dict, s: Summary, pngs: list[tuple[bytes, str]], start: float, end: float) -> str:
    e = html.escape
    dur = end - start
    ended = ev.get("end")
    facts = [
        ["event", ev.get("id", "?")],
        ["interface", ev.get("iface", "?")],
        ["protected", ev.get("protected", "?")],
        ["start", _ts(start)],
        ["end", _ts(ended) if ended is not None else f"open (report at {_ts(end)})"],
        ["duration", f"{dur:.1f} s"],
        ["triggers", ", ".join(ev.get("triggers", [])) or "-"],
        ["state", ev.get("state", "?")],
    ]
    peaks = [
        ["received pps", f"{s.peak_pps:,.0f}", f"{ev.get('peak_pps', 0):,.0f}"],
        ["dropped pps", f"{s.peak_drop_pps:,.0f}", f"{ev.get('peak_drop_pps', 0):,.0f}"],
        ["received bps", _si(s.peak_bps), _si(ev.get("peak_bps", 0))],
    ]
    before = "-" if s.forwarded_pps_before is None else f"{s.forwarded_pps_before:,.1f}"
    legit = [
        ["forwarded packets during the event", f"{s.forwarded_packets:,.0f}"],
        ["forwarded bytes during the event", f"{s.forwarded_bytes:,.0f}"],
        ["forwarded pps during (mean)", f"{s.forwarded_pps_during:,.1f}"],
        ["forwarded pps before (mean)", before],
        ["received packets during", f"{s.received_packets:,.0f}"],
        ["dropped packets during", f"{s.dropped_packets:,.0f}"],
    ]
    drop_total = sum(n for _, n in s.reasons) or 1
    reasons = [[k, f"{n:,}", f"{100 * n / drop_total:.1f}%"] for k, n in s.reasons]
    srcs = [[k, f"{n:,}"] for k, n in s.sources] or [["-", "-"]]
    ports = [[k, f"{n:,}"] for k, n in s.ports] or [["-", "-"]]
    ev_srcs = [[k, f"{p:,.0f}"] for k, p in ev.get("top_sources", [])] or [["-", "-"]]
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>xdpguard attack report {e(str(ev.get('id', '?')))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Attack on {e(str(ev.get('protected', '?')))} ({e(str(ev.get('iface', '?')))})</h1>",
        _table(["", ""], facts),
        "<h2>Peaks</h2>",
        _table(["", "history (per record)", "event (detector)"], peaks),
        "<h2>Traffic over time</h2>",
        *[_img(p, alt) for p, alt in pngs],
        f"<p>History tier {e(s.tier)}, {s.records} record(s) during the event; "
        f"{s.samples:,} packet samples, {s.samples_missed:,} missed.</p>",
        "<h2>Legitimate traffic forwarded</h2>",
        _table(["", ""], legit),
        "<h2>Steps that dropped (estimated packets)</h2>",
        _table(["step (drop reason)", "packets", "share"], reasons or [["-", "-", "-"]]),
        "<h2>Top sources (sampled estimates)</h2>",
        _table(["source", "packets"], srcs),
        "<h3>Detector's top sources (peak pps)</h3>",
        _table(["source", "peak pps"], ev_srcs),
        "<h2>Top ports</h2>",
        _table(["proto/port", "packets"], ports),
        *_countries_html(s),
        "<h2>Mitigations configured</h2>",
    ]
    if s.policies:
        for p in s.policies:
            parts.append(f"<p>in force from {e(_ts(p['t']))}:</p><pre>{e(p['policy'])}</pre>")
    else:
        parts.append("<p>not recorded (the daemon records the policy every 30 s)</p>")
    parts.append(f"<p><small>generated by xdpguard at {e(_ts(time.time()))}</small></p></body></html>")
    return "\n".join(parts) + "\n"


def _countries_html(s: Summary) -> list[str]:
    """Top countries of the dropped and passed samples side by side; nothing without a geo database."""
    if not s.countries_dropped and not s.countries_passed:
        return []
    n = max(len(s.countries_dropped), len(s.countries_passed))
    cell = lambda rows, i: [rows[i][0], f"{rows[i][1]:,}"] if i < len(rows) else ["", ""]  # noqa: E731
    rows = [cell(s.countries_dropped, i) + cell(s.countries_passed, i) for i in range(n)]
    return [
        "<h2>Top countries (sampled estimates, geo database)</h2>",
        _table(["dropped: country", "packets", "passed: country", "packets"], rows),
    ]


# ---- the verb ----


def _write(path: str, data: bytes, overwrite: bool) -> None:
    fd = capture.create_output(path, overwrite)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def build(
    event_id: str | None = None,
    html_path: str | None = None,
    png_path: str | None = None,
    iface: str | None = None,
    overwrite: bool = False,
    root=None,
) -> ReportResult:
    """Render the report of one event (the latest by default) into html_path and/or png_path
    (never through a symlink; an existing file only with overwrite)."""
    if html_path is None and png_path is None:
        raise UserError("give -o FILE (HTML) and/or --png FILE")
    if html_path is not None and png_path is not None and os.path.abspath(html_path) == os.path.abspath(png_path):
        raise UserError("-o and --png name the same file")
    t0 = time.monotonic()
    if not history.recorded_ifaces(root):
        raise UserError(
            f"no daemon history in {root or history.history_root()}: `xdpguard run` (with detection) records it"
        )
    ev = pick_event(event_id, iface)
    tier, recs, start, end = records_for(ev, root)
    s = summarise(tier, recs, start, end, history.read_policies(history.iface_dir(ev.get("iface", "?"), root)))
    main_png = traffic_png(ev, recs, start, end)
    pngs = [(main_png, "received, dropped by reason and forwarded traffic over time")]
    bars = talkers_png(s)
    if bars is not None:
        pngs.append((bars, "top sources and ports"))
    page = render_html(ev, s, pngs, start, end).encode() if html_path is not None else b""
    render_s = time.monotonic() - t0
    written: list[str] = []
    try:
        if html_path is not None:
            _write(html_path, page, overwrite)
            written.append(html_path)
        if png_path is not None:
            _write(png_path, main_png, overwrite)
            written.append(png_path)
    except BaseException:
        if not overwrite:  # leave nothing half-done behind: the files were ours
            for p in written:
                try:
                    os.unlink(p)
                except OSError:
                    pass
        raise
    return ReportResult(ev, s, html_path, png_path, len(page), len(main_png) if png_path else 0, round(render_s, 3))
