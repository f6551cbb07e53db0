"""`xdpguard geo block|allow|only|clear|mode|show`: region (geo) blocking per protected address
(drop reason `geo`). The country database: XDPGUARD_GEO_DB, else Debian's libloc-database."""

from __future__ import annotations

import click

from xdpguard.core import geo as core_geo
from xdpguard.core.verbs import georules

from .output import Console, Result, json_option
from .params import TEXT, iface_option, protected_option

_codes = click.argument("countries", nargs=-1, required=True, type=TEXT, metavar="COUNTRY...")
_force = click.option(
    "--force", is_flag=True, help="Allow a rule that drops this host's management address (by its country)."
)


def render(c: Console, res: georules.GeoResult) -> None:
    c.print(f"geo rules on {res.iface} (database {res.database}):", markup=False)
    for addr, r in res.rules.items():
        c.print(f"  {addr}: {r['text'] if r else 'no geo rule'}", markup=False)
    for n in res.notes:
        c.print(f"  note: {n}", markup=False)


@click.group()
def geo():
    """Drop (or challenge) traffic to protected addresses by the country of its source."""


def _verb(action: str, doc: str):
    @geo.command(action, help=doc)
    @_codes
    @protected_option
    @iface_option
    @_force
    @json_option
    def cmd(countries, protected, iface, force):
        return Result(georules.change(iface, action, list(countries), protected, force=force), render)

    return cmd


_verb(
    "block", "Drop sources in COUNTRY... (ISO 3166-1 codes, e.g. CN RU); under an `only` rule: stop letting them pass."
)
_verb("allow", "Let sources in COUNTRY... pass again; under an `only` rule: add them to those that pass.")
_verb("only", "Drop every source NOT in COUNTRY... (unknown sources too): for a business in one country.")


@geo.command("clear")
@protected_option
@iface_option
@json_option
def clear(protected, iface):
    """Remove the geo rule."""
    return Result(georules.clear(iface, protected), render)


@geo.command("mode")
@click.argument("mode", type=click.Choice(list(core_geo.MODES)))
@protected_option
@iface_option
@json_option
def mode(mode, protected, iface):
    """drop: drop in XDP; cc: challenge at layer 7 on the ports HAProxy serves (the rest of those
    sources' traffic is dropped in XDP; without an HTTP service cc drops like drop)."""
    return Result(georules.set_mode(iface, mode, protected), render)


@geo.command("show")
@iface_option
@json_option
def show(iface):
    """Show the geo rule of each protected address and the database in use."""
    return Result(georules.show(iface), render)
