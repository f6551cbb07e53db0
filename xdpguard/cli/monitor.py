"""`xdpguard monitor on|off|show`: count drops as would_drop and pass them, per drop reason."""

from __future__ import annotations

import click

from xdpguard.core import cleansing, imperative
from xdpguard.core.abi import DROP_REASONS

from .params import iface_option, json_option
from .output import console, emit_json

_reason = click.option("--reason", "reasons", multiple=True, metavar="REASON",
                       help=f"Only this drop reason (repeatable): {', '.join(DROP_REASONS)}. "
                            "Default: all.")


def render(res: cleansing.MonitorResult, as_json: bool) -> None:
    if as_json:
        emit_json(res)
        return
    what = "every drop reason" if res.all else (", ".join(res.reasons) or "nothing")
    console().print(f"monitor mode on {res.iface}: {what} "
                    f"{'passed and counted as would_drop' if res.reasons else '(enforcing)'}")


@click.group()
def monitor():
    """Monitor mode: what would be dropped is passed and counted as would_drop."""


@monitor.command("on")
@_reason
@iface_option
@json_option
def on(reasons, iface, as_json):
    """Monitor (pass) the given drop reasons, or all."""
    render(imperative.monitor_change(iface, True, reasons), as_json)


@monitor.command("off")
@_reason
@iface_option
@json_option
def off(reasons, iface, as_json):
    """Enforce the given drop reasons again, or all."""
    render(imperative.monitor_change(iface, False, reasons), as_json)


@monitor.command("show")
@iface_option
@json_option
def show(iface, as_json):
    """Show which drop reasons are monitored."""
    render(cleansing.monitor_show(iface), as_json)
