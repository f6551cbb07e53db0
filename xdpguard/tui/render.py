"""The dashboard: a pure render(snapshot, width, height) → rich renderable.

No I/O here: `xdpguard top` collects Snapshots (xdpguard.core.observe.stats) and hands them over; tests
render fixed Snapshots to a fixed-width console. Fits 80×24; more rows and columns give longer
lists, wider sparklines and side-by-side panels.
"""

from __future__ import annotations

import time

from rich.console import Group
from rich.table import Table
from rich.text import Text

from xdpguard.core.observe.stats import SERIES, Snapshot, sparkline


def fmt_rate(v: float, unit: str = "") -> str:
    """1234567 → '1.23M'; plain below 1000."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{suffix}{unit}"
    return f"{v:.0f}{unit}"


def fmt_duration(s: float) -> str:
    s = max(0, int(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _table(*cols: tuple[str, str], title: str | None = None) -> Table:
    t = Table(
        box=None,
        pad_edge=False,
        show_edge=False,
        padding=(0, 1),
        title=title,
        title_justify="left",
        title_style="bold",
        header_style="bold",
        expand=False,
    )
    for name, justify in cols:
        t.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")
    return t


def header(s: Snapshot, width: int) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append("xdpguard ", style="bold")
    t.append(f"{s.iface} ", style="bold cyan")
    t.append(f"{s.mode} prog {s.prog_id}")
    if s.monitor:
        t.append(" MONITOR", style="yellow")
    t.append("  ")
    if s.under_attack:
        since = f" for {fmt_duration(s.time - s.attack_since)}" if s.attack_since else ""
        t.append(f" UNDER ATTACK{since} ", style="bold white on red")
        if s.attacked:
            t.append(f" {', '.join(s.attacked)}", style="red")
    else:
        t.append(" NORMAL ", style="bold black on green")
    t.append("\n")
    t.append(f"protected {', '.join(s.protected) or '-'}", style="dim")
    stamp = time.strftime("%H:%M:%S", time.localtime(s.time))
    tail = f"  {stamp}  Δ{s.interval_s:.1f}s"
    t.append(tail, style="dim")
    return t


def rates(s: Snapshot, width: int) -> Table:
    spark_w = max(8, width - 40)
    t = _table(("rate", "left"), ("pps", "right"), ("bps", "right"), ("history (pps)", "left"))
    styles = {"received": "", "dropped": "red", "passed": "green", "forwarded": "cyan"}
    for name in SERIES:
        r = s.rates.get(name)
        pps, bps = (r.pps, r.bps) if r else (0.0, 0.0)
        t.add_row(
            Text(name, style=styles[name]),
            fmt_rate(pps),
            fmt_rate(bps, "b"),
            Text(sparkline(s.history.get(name, []), spark_w), style=styles[name]),
        )
    return t


def reasons(s: Snapshot, rows: int) -> Table:
    t = _table(("drop reason", "left"), ("pps", "right"), ("bps", "right"), ("share", "right"), ("total", "right"))
    totals = {(c.kind, c.reason): c.packets for c in s.counters}
    shown = s.reasons[:rows]
    for r in shown:
        label = r.reason if r.kind == "drop" else f"{r.reason} (would)"
        t.add_row(
            label,
            fmt_rate(r.pps),
            fmt_rate(r.bps, "b"),
            f"{r.share * 100:.0f}%",
            fmt_rate(totals.get((r.kind, r.reason), 0)),
        )
    if not shown:
        t.add_row(Text("no drops", style="dim"), "", "", "", "")
    return t


def talkers(s: Snapshot, which: str, rows: int) -> Table:
    items = s.sources if which == "sources" else s.ports
    title = "top sources" if which == "sources" else "top ports"
    t = _table((title, "left"), ("~pps", "right"), ("drop", "right"), ("reason", "left"))
    for x in items[:rows]:
        t.add_row(x.key, fmt_rate(x.pps), f"{x.dropped_share * 100:.0f}%", x.top_reason)
    if not items:
        t.add_row(Text("no samples" if s.sample_every else "sampling off", style="dim"), "", "", "")
    return t


def forwarding(s: Snapshot, rows: int, wide: bool) -> Table:
    t = _table(("forward", "left"), ("pps", "right"), ("bps", "right"), ("backends", "left"))
    styles = {"up": "green", "down": "red"}
    for r in s.rules[:rows]:
        bk = Text()
        if wide:
            for i, b in enumerate(r.backends):
                bk.append(" " if i else "")
                bk.append(f"{b.endpoint}{'(b)' if b.backup else ''}:{b.health}", style=styles.get(b.health, "yellow"))
        else:  # health counts only
            for i, h in enumerate(("up", "down", "unknown")):
                n = sum(1 for b in r.backends if b.health == h)
                if n:
                    bk.append(f"{' ' if len(bk) else ''}{n} {h}", style=styles.get(h, "yellow"))
        t.add_row(r.key, fmt_rate(r.pps), fmt_rate(r.bps, "b"), bk)
    return t


def events(s: Snapshot, rows: int) -> Table:
    t = _table(
        ("attack events", "left"),
        ("target", "left"),
        ("dur", "right"),
        ("peak pps", "right"),
        ("peak bps", "right"),
        ("reasons", "left"),
    )
    for e in list(reversed(s.events))[:rows]:
        start = time.strftime("%H:%M:%S", time.localtime(e.start))
        dur = fmt_duration((e.end if e.end is not None else s.time) - e.start)
        t.add_row(
            start + (" open" if e.end is None else ""),
            e.protected,
            dur,
            fmt_rate(e.peak_pps),
            fmt_rate(e.peak_bps, "b"),
            ",".join(e.top_reasons[:2]),
        )
    return t


def countries(s: Snapshot) -> Text | None:
    """One line: the top countries of the sampled sources, dropped and passed (geo database)."""
    parts = []
    for which in ("dropped", "passed"):
        items = (s.countries or {}).get(which) or []
        if items:
            parts.append(f"{which} " + ", ".join(f"{x.key} {fmt_rate(x.pps)}" for x in items[:5]))
    if not parts:
        return None
    return Text("countries: " + " · ".join(parts), no_wrap=True, overflow="ellipsis")


def footer(s: Snapshot) -> Text:
    lists = "  ".join(f"{k} {v}" for k, v in s.lists.items())
    samp = f"~ sampled 1/{s.sample_every} ({s.samples})" if s.sample_every else "sampling off"
    if s.samples_lost:
        samp += f", {fmt_rate(s.samples_lost)} lost"
    if s.samples_missed:  # dropped for us by the daemon's fan-out (we read too slowly)
        samp += f", {fmt_rate(s.samples_missed)} missed"
    return Text(f"{lists} · {samp} · q quits", style="dim", no_wrap=True, overflow="ellipsis")


def render(s: Snapshot, width: int = 80, height: int = 24):
    """The whole dashboard for a width×height screen."""
    width, height = max(60, width), max(20, height)
    # Fixed lines: header 2, rates 5, footer 1, blank separators. The rest is split between the
    # lists, which each show at least a few rows.
    geo_line = countries(s)
    budget = height - 2 - 5 - 1 - (1 if geo_line is not None else 0)
    wide = width >= 120
    n_rules = min(len(s.rules), max(1, budget // 8)) if s.rules else 0
    n_events = min(len(s.events), max(1, budget // 8)) if s.events else 0
    fixed = (1 + n_rules if n_rules else 0) + (1 + n_events if n_events else 0)
    rest = budget - fixed
    if wide:  # reasons | sources | ports side by side
        n_list = max(2, rest - 1)
        n_reasons = n_talk = n_list
    else:
        n_reasons = max(2, min(len(s.reasons) or 1, (rest - 2) // 2))
        n_talk = max(2, rest - 2 - (n_reasons + 1) - 1)
    parts: list = [header(s, width), rates(s, width)]
    if wide:
        g = Table.grid(padding=(0, 3))
        g.add_row(reasons(s, n_reasons), talkers(s, "sources", n_talk), talkers(s, "ports", n_talk))
        parts.append(g)
    else:
        parts.append(reasons(s, n_reasons))
        g = Table.grid(padding=(0, 2))
        g.add_row(talkers(s, "sources", n_talk), talkers(s, "ports", n_talk))
        parts.append(g)
    if n_rules:
        parts.append(forwarding(s, n_rules, wide))
    if n_events:
        parts.append(events(s, n_events))
    if geo_line is not None:
        parts.append(geo_line)
    parts.append(footer(s))
    return Group(*parts)


def plain(s: Snapshot, width: int = 100) -> str:
    """One plain-text snapshot (no TTY, --once, `stats`)."""
    from rich.console import Console

    c = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"), highlight=False)
    c.print(render(s, width, 10_000))
    return c.export_text()
