"""`xdpguard top`: the live attack dashboard (poll → Snapshot → pure render → Live)."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import tty

import click

from xdpguard.core.observe import events, sampling, stats
from xdpguard.core import state

from .output import Console, Result, console, json_option, json_wanted
from .params import IFACE, SecondsType


@contextlib.contextmanager
def _cbreak(stream):
    """stdin in cbreak mode (keys arrive one by one, no echo) for the dashboard's lifetime."""
    if not stream.isatty():
        yield None
        return
    fd = stream.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def open_collector(iface: str | None, sample_every: int | None) -> stats.Collector:
    col = stats.Collector(iface, sample_every=sample_every)
    col.attack_source = events.AttackTracker(col.guard.iface)
    return col


def snapshot(snap: stats.Snapshot) -> Result:
    """One snapshot: JSON, or the dashboard's plain text."""
    return Result(snap, _plain)


def _plain(c: Console, snap: stats.Snapshot) -> None:
    from xdpguard.tui.render import plain

    width = max(80, min(160, c.width)) if sys.stdout.isatty() else 100
    sys.stdout.write(plain(snap, width))


@click.command()
@click.argument("iface", type=IFACE, required=False)
@click.option(
    "--interval",
    type=SecondsType(0.2, 60),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Refresh every SECONDS.",
)
@click.option("--once", is_flag=True, help="Print one plain snapshot and exit (also without a TTY).")
@json_option(help="One snapshot as JSON.")
@click.option(
    "--sample-every",
    type=click.IntRange(0, 1 << 24),
    default=None,
    metavar="N",
    help="Set the data path's sampling to 1 in N (0 = off). "
    f"Default: keep it, {sampling.DEFAULT_SAMPLE_EVERY} when off.",
)
def top(iface, interval, once, sample_every):
    """Live dashboard of IFACE: rates, drop reasons, top sources and ports, forwarding, attacks. q quits."""
    state.require_root()
    with open_collector(iface, sample_every) as col:
        if once or json_wanted() or not sys.stdout.isatty():
            return snapshot(col.collect(interval))
        _live(col, interval)
    return None


def _live(col: stats.Collector, interval: float) -> None:
    from rich.live import Live
    from rich.text import Text

    from xdpguard.tui.render import render

    c = console()
    quit_ = False

    with _cbreak(sys.stdin) as fd:

        def stop() -> bool:
            nonlocal quit_
            if fd is None:
                return False
            while select.select([fd], [], [], 0)[0]:
                ch = os.read(fd, 32)
                if not ch or b"q" in ch or b"Q" in ch:
                    quit_ = True
            return quit_

        with Live(
            Text(f"xdpguard top {col.ifname}: collecting…"), console=c, auto_refresh=False, screen=True, transient=True
        ) as live:
            live.refresh()
            while not quit_:
                snap = col.collect(interval, sample_window_s=interval / 2, stop=stop)
                if quit_:
                    break
                live.update(render(snap, c.width, c.height), refresh=True)
