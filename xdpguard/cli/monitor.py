"""`xdpguard monitor on|off|show`: count drops as would_drop and pass them, per drop reason."""

from __future__ import annotations

import click

from xdpguard.core.verbs import cleansing, imperative
from xdpguard.core.kernel.abi import DROP_REASONS

from .params import iface_option
from .output import Console, Result, json_option

_reason = click.option(
    "--reason",
    "reasons",
    multiple=True,
    metavar="REASON",
    help=f"Only this drop reason (repeatable): {', '.join(DROP_REASONS)}. Default: all.",
)


def render(c: Console, res: cleansing.MonitorResult) -> None:
    what = "every drop reason" if res.all else (", ".join(res.reasons) or "nothing")
    c.print(
        f"monitor mode on {res.iface}: {what} {'passed and counted as would_drop' if res.reasons else '(enforcing)'}"
    )


@click.group()
def monitor():
    """Monitor mode: what would be dropped is passed and counted as would_drop."""


@monitor.command("on")
@_reason
@iface_option
@json_option
def on(reasons, iface):
    """Monitor (pass) the given drop reasons, or all."""
    return Result(imperative.monitor_change(iface, True, reasons), render)


@monitor.command("off")
@_reason
@iface_option
@json_option
def off(reasons, iface):
    """Enforce the given drop reasons again, or all."""
    return Result(imperative.monitor_change(iface, False, reasons), render)


@monitor.command("show")
@iface_option
@json_option
def show(iface):
    """Show which drop reasons are monitored."""
    return Result(cleansing.monitor_show(iface), render)
