"""`xdpguard doctor`: check that this machine (and an interface) can run xdpguard."""

from __future__ import annotations

import click

from xdpguard.core.observe import doctor as core

from .exitcodes import ExitCode
from .output import Console, Result, json_option
from .params import IFACE

_STYLE = {core.OK: "[green]OK  [/]", core.WARN: "[yellow]WARN[/]", core.FAIL: "[red]FAIL[/]"}


@click.command()
@click.option(
    "--iface", "-i", type=IFACE, default=None, help="Also check this interface (driver, LRO, MTU, queues, native XDP)."
)
@click.option(
    "--try-attach",
    is_flag=True,
    help="Try a native XDP attach on --iface even in the host namespace (never on the default-route interface).",
)
@json_option
def doctor(iface, try_attach):
    """Check kernel, BTF, bpffs, headers, bcc, nftables (and --iface); exit 1 on any FAIL."""
    rep = core.gather(iface, try_attach=try_attach)
    return Result(rep, _checks, exit_code=int(ExitCode.ERROR) if rep.failed else 0)


def _checks(c: Console, rep: core.DoctorReport) -> None:
    for chk in rep.checks:
        c.print(
            f"{_STYLE[chk.status]} {chk.name:<15} {chk.detail}"
            + (f"\n     fix: {chk.fix}" if chk.fix and chk.status != core.OK else "")
        )
