"""`xdpguard attach`: compile, load and attach the XDP program to an interface."""

from __future__ import annotations

import click

from xdpguard.core.kernel import dataplane
from xdpguard.core.kernel.abi import FWD_DEFINE
from xdpguard.core import protection, reconcile

from .output import Console, Result, json_option
from .params import IFACE


@click.command()
@click.argument("iface", type=IFACE)
@click.option(
    "--protect",
    "protect",
    multiple=True,
    required=True,
    metavar="ADDR[,ADDR…]",
    help="Protected destination address(es), IPv4 or IPv6. Other destinations pass untouched.",
)
@click.option(
    "--mode",
    type=click.Choice(["auto", "native", "skb"]),
    default="auto",
    show_default=True,
    help="XDP mode; auto tries native and says so when it falls back to generic (skb).",
)
@click.option("--monitor", is_flag=True, help="Count drops as would_drop and pass everything.")
@click.option("--force", is_flag=True, help="Replace a foreign XDP program already on IFACE.")
@click.option(
    "--level",
    type=click.Choice(["loose", "normal", "strict", "none"]),
    default="normal",
    show_default=True,
    help="Protection level of addresses new to xdpguard (see `xdpguard level`; none: no limits until set).",
)
@click.option(
    "--fast-forward",
    is_flag=True,
    help="(experimental) Compile in the forwarding fast path (see `xdpguard forward fastpath`).",
)
@json_option
@click.option("--ebpf", is_flag=True, hidden=True, help="Print the final C program and exit.")
def attach(iface, protect, mode, monitor, force, level, fast_forward, ebpf):
    """Put the XDP filter on IFACE, protecting the given addresses."""
    defines = {FWD_DEFINE: 1} if fast_forward else None
    if ebpf:
        click.echo(dataplane.render_source(defines))
        return
    extra = {"defines": defines} if defines else {}
    return Result(
        reconcile.attach(
            iface,
            list(protect),
            mode=mode,
            monitor=monitor,
            force=force,
            level=None if level == "none" else level,
            **extra,
        ),
        _attached,
    )


def _attached(c: Console, res: protection.AttachResult) -> None:
    c.print(
        f"[green]attached[/] xdpguard to [bold]{res.iface}[/] (ifindex {res.ifindex}): "
        f"prog id {res.prog_id}, mode [bold]{res.mode}[/]{', MONITOR' if res.monitor else ''}"
    )
    c.print(f"protecting {', '.join(res.protected)}; maps pinned under {res.pin_dir}")
    for n in res.notes:
        c.print(f"[yellow]note:[/] {n}")
