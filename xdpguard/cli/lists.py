"""`xdpguard block …` and `xdpguard allow …`: one factory, two groups of the same shape."""

from __future__ import annotations

import click
from rich.table import Table

from xdpguard.core.verbs import imperative
from xdpguard.core import protection

from .output import Console, Result, json_option
from .params import CIDR, IN_FILE, SecondsType, iface_option

TTL = SecondsType(0, lo_open=True)  # the upper bound is the core's (protection.check_ttl)

_HELP = {
    "block": "Drop traffic from these sources to the protected addresses.",
    "allow": "Always pass traffic from these sources, skipping every later check.",
}


def _report(c: Console, res: protection.ListChangeResult) -> None:
    for n in res.normalised:
        c.print(f"note: normalised {n}" if "->" in n else f"note: {n}")
    if res.action == "del":
        c.print(f"{res.list}list on {res.iface}: removed {res.removed}")
        for m in res.missing:
            c.print(f"note: {m} was not in the {res.list}list")
    else:
        c.print(f"{res.list}list on {res.iface}: added {res.added}, refreshed {res.updated}")


def make_group(which: str) -> click.Group:
    iface_opt, json_opt = iface_option, json_option
    force_opt = click.option(
        "--force",
        is_flag=True,
        help=(
            "Take an entry for every address of a family (0.0.0.0/0, ::/0): "
            + (
                "it drops all traffic to the protected addresses."
                if which == "block"
                else "it turns the protection off."
            )
        ),
    )

    @click.group(name=which, help=_HELP[which])
    def group():
        pass

    @group.command("add")
    @click.argument("cidrs", nargs=-1, required=True, type=CIDR)
    @click.option("--ttl", type=TTL, default=None, metavar="SECONDS", help="Expire the entries after SECONDS.")
    @iface_opt
    @force_opt
    @json_opt
    def add(cidrs, ttl, iface, force):
        """Add CIDRs (IPv4 and IPv6) to the list; existing entries keep their hit counts."""
        return Result(imperative.list_add(which, iface, list(cidrs), ttl, force=force), _report)

    @group.command("del")
    @click.argument("cidrs", nargs=-1, required=True, type=CIDR)
    @iface_opt
    @json_opt
    def delete(cidrs, iface):
        """Remove CIDRs from the list."""
        return Result(imperative.list_del(which, iface, list(cidrs)), _report)

    @group.command("load")
    @click.argument("file", type=IN_FILE)
    @click.option("--ttl", type=TTL, default=None, metavar="SECONDS", help="Expire the entries after SECONDS.")
    @iface_opt
    @force_opt
    @json_opt
    def load(file, ttl, iface, force):
        """Load FILE: one CIDR per line, '#' comments, v4 and v6 mixed. All or nothing."""
        return Result(imperative.list_load(which, iface, file, ttl, force=force), _report)

    dynamic_opt = click.option(
        "--dynamic",
        is_flag=True,
        hidden=which != "block",
        help="Show the dynamic bans instead (as `xdpguard ban list`).",
    )

    @group.command("list")
    @iface_opt
    @json_opt
    @dynamic_opt
    def list_(iface, dynamic):
        """Show the entries with their hit counts and expiry."""
        if dynamic:
            if which != "block":
                raise click.UsageError("--dynamic only applies to the blocklist")
            from xdpguard.core.verbs import cleansing

            from .ban import render as render_bans

            return Result(cleansing.ban_list(iface), render_bans)
        return Result(protection.list_show(which, iface), _entries)

    return group


def _entries(c: Console, res: protection.ListResult) -> None:
    t = Table(box=None, pad_edge=False)
    t.add_column("prefix")
    t.add_column("hits", justify="right")
    t.add_column("expires in", justify="right")
    for e in res.entries:
        t.add_row(e.prefix, str(e.hits), "never" if e.expires_in_s is None else f"{e.expires_in_s:.0f} s")
    c.print(f"{res.list}list on {res.iface}: {len(res.entries)} entries")
    if res.entries:
        c.print(t)
