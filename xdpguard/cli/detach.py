"""`xdpguard detach`: remove the program, its pins and state from an interface."""

from __future__ import annotations

import click

from xdpguard.core import protection, reconcile

from .output import Console, Result, json_option
from .params import IFACE


@click.command()
@click.argument("iface", type=IFACE)
@json_option
def detach(iface):
    """Remove xdpguard from IFACE: program, pinned maps and state file."""
    return Result(reconcile.detach(iface), _detached)


def _detached(c: Console, res: protection.DetachResult) -> None:
    if res.prog_id is not None:
        c.print(
            f"[green]detached[/] xdpguard from [bold]{res.iface}[/] (prog id {res.prog_id}); pins and state removed"
        )
    for n in res.notes:
        c.print(f"note: {n}")
