"""`xdpguard stats`: one snapshot of everything the dashboard shows."""

from __future__ import annotations

import click

from xdpguard.core.observe import sampling
from xdpguard.core import state
from xdpguard.core.observe import stats as core_stats

from .params import IFACE, SecondsType
from .output import json_option
from .top import open_collector, snapshot


@click.command()
@click.argument("iface", type=IFACE, required=False)
@click.option(
    "--interval",
    type=SecondsType(0.1, 60),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Rates are measured over SECONDS (two reads).",
)
@click.option(
    "--sample-every",
    type=click.IntRange(0, 1 << 24),
    default=None,
    metavar="N",
    help="Set the data path's sampling to 1 in N (0 = off); it stays so. Default: keep it, "
    f"{sampling.DEFAULT_SAMPLE_EVERY} when off.",
)
@json_option
def stats(iface, interval, sample_every):
    """Counters, rates, drop reasons, top sources/ports, forwarding, lists and attack state of IFACE."""
    state.require_root()
    with open_collector(iface, sample_every) as col:
        return snapshot(core_stats.with_verified(col.guard, col.collect(interval)))
