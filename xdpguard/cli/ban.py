"""`xdpguard ban list|add|del`: dynamic bans (reason `banned`), written by the data path itself
(rate limits and drop-ban filters with a ban) or by the operator; each expires by itself."""

from __future__ import annotations

import click
from rich.table import Table

from xdpguard.core.verbs import cleansing

from .params import COUNT, TEXT, iface_option
from .output import Console, Result, json_option


def render(c: Console, res: cleansing.BanResult) -> None:
    if res.action == "add":
        c.print(f"bans on {res.iface}: added or refreshed {res.changed}")
    elif res.action == "del":
        c.print(f"bans on {res.iface}: removed {res.changed}")
        for m in res.missing:
            c.print(f"note: {m} was not banned")
    c.print(f"dynamic bans on {res.iface}: {len(res.bans)}")
    if res.bans:
        t = Table(box=None, pad_edge=False)
        t.add_column("source")
        t.add_column("reason")
        t.add_column("hits", justify="right")
        t.add_column("expires in", justify="right")
        for b in res.bans:
            t.add_row(b.source, b.reason, str(b.hits), f"{b.expires_in_s:.0f} s")
        c.print(t)


@click.group()
def ban():
    """Dynamic bans of sources, with expiry."""


@ban.command("list")
@iface_option
@json_option
def list_(iface):
    """Show the bans in force with their cause, hits and remaining time."""
    return Result(cleansing.ban_list(iface), render)


@ban.command("add")
@click.argument("addrs", nargs=-1, required=True, type=TEXT, metavar="ADDR...")
@click.option("--ttl", type=COUNT, required=True, metavar="SECONDS", help="Ban for SECONDS (up to 7 days).")
@iface_option
@json_option
def add(addrs, ttl, iface):
    """Ban source ADDRs (IPv4 or IPv6) for --ttl seconds."""
    return Result(cleansing.ban_add(iface, list(addrs), ttl), render)


@ban.command("del")
@click.argument("addrs", nargs=-1, required=True, type=TEXT, metavar="ADDR...")
@iface_option
@json_option
def delete(addrs, iface):
    """Lift the bans of ADDRs."""
    return Result(cleansing.ban_del(iface, list(addrs)), render)
