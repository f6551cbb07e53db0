"""`xdpguard connlimit set|show|clear`: connection limits of forwarded services (nft, our table)."""

from __future__ import annotations

import click

from xdpguard.core.nat import connlimit, nft as nat
from xdpguard.core.verbs import imperative
from xdpguard.core.errors import UserError

from .output import Console, Result, json_option
from .params import iface_option, protected_option

_N = click.IntRange(0, 100_000_000)


def render(c: Console, res: connlimit.ConnLimitResult) -> None:
    if not res.limits:
        c.print(f"no connection limits on {res.iface}")
    for addr, lim in res.limits.items():
        parts = [f"{k.replace('_', '-')} {v}" for k, v in lim.items() if v and k != "ban_s"]
        c.print(
            f"{res.iface} {addr}: {', '.join(parts)}; offenders banned in XDP for {lim.get('ban_s')} s "
            "(with `xdpguard run`)",
            markup=False,
        )


@click.group(name="connlimit")
def connlimit_():
    """Connection limits of the forwarded services, enforced in nftables (conntrack)."""


@connlimit_.command("set")
@click.option("--new-per-source", type=_N, default=0, metavar="N", help="New connections/s per source.")
@click.option("--concurrent-per-source", type=_N, default=0, metavar="N", help="Open connections per source.")
@click.option("--new-total", type=_N, default=0, metavar="N", help="New connections/s to a service, all sources.")
@click.option(
    "--conntrack-budget",
    type=_N,
    default=0,
    metavar="N",
    help="Conntrack entries of a service, all sources (a spoofed flood cannot fill the table).",
)
@click.option(
    "--udp-timeout",
    "udp_timeout_s",
    type=click.IntRange(0, 3600),
    default=0,
    metavar="SECONDS",
    help="UDP: conntrack timeout of an unanswered flow (answered: twice that).",
)
@click.option(
    "--ban",
    "ban_s",
    type=click.IntRange(1, 86400),
    default=60,
    show_default=True,
    metavar="SECONDS",
    help="Sources over a per-source limit are banned in XDP this long (by `xdpguard run`).",
)
@protected_option
@iface_option
@json_option
def set_(new_per_source, concurrent_per_source, new_total, conntrack_budget, udp_timeout_s, ban_s, protected, iface):
    """Replace the connection limits of every forwarded service of the address(es)."""
    try:
        lim = nat.ConnLimits(new_per_source, concurrent_per_source, new_total, conntrack_budget, udp_timeout_s, ban_s)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return Result(imperative.connlimit_set(iface, lim, protected), render)


@connlimit_.command("clear")
@protected_option
@iface_option
@json_option
def clear(protected, iface):
    """Remove the connection limits of the address(es)."""
    return Result(imperative.connlimit_clear(iface, protected), render)


@connlimit_.command("show")
@iface_option
@json_option
def show(iface):
    """Show the connection limits."""
    return Result(connlimit.show(iface), render)
