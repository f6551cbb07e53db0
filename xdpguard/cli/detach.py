"""`xdpguard detach`: remove the program, its pins and state from an interface."""

from __future__ import annotations

import click

from xdpguard.core import reconcile

from .output import console, emit_json
from .params import IFACE


@click.command()
@click.argument("iface", type=IFACE)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def detach(iface, as_json):
    """Remove xdpguard from IFACE: program, pinned maps and state file."""
    res = reconcile.detach(iface)
    if as_json:
        emit_json(res)
        return
    c = console()
    if res.prog_id is not None:
        c.print(f"[green]detached[/] xdpguard from [bold]{res.iface}[/] (prog id {res.prog_id}); pins and state removed")
    for n in res.notes:
        c.print(f"note: {n}")
