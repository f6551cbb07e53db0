"""`xdpguard doctor`: check that this machine (and an interface) can run xdpguard."""

from __future__ import annotations

import click

from xdpguard.core import doctor as core

from .exitcodes import ExitCode
from .output import console, emit_json
from .params import IFACE

_STYLE = {core.OK: "[green]OK  [/]", core.WARN: "[yellow]WARN[/]", core.FAIL: "[red]FAIL[/]"}


@click.command()
@click.option("--iface", "-i", type=IFACE, default=None,
              help="Also check this interface (driver, LRO, MTU, queues, native XDP).")
@click.option("--try-attach", is_flag=True,
              help="Try a native XDP attach on --iface even in the host namespace (never on the default-route interface).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(iface, try_attach, as_json):
    """Check kernel, BTF, bpffs, headers, bcc, nftables (and --iface); exit 1 on any FAIL."""
    rep = core.gather(iface, try_attach=try_attach)
    if as_json:
        emit_json(rep)
    else:
        c = console()
        for chk in rep.checks:
            c.print(f"{_STYLE[chk.status]} {chk.name:<15} {chk.detail}" + (f"\n     fix: {chk.fix}" if chk.fix and
                                                                             chk.status != core.OK else ""))
    if rep.failed:
        raise click.exceptions.Exit(int(ExitCode.ERROR))
