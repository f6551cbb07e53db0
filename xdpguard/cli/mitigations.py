"""`xdpguard mitigations list|pin|del`: the filters `xdpguard run` installed by itself.

A mitigation drops one flood at one service (reason `mitigation`) and is lifted when the flood
ends; `pin` keeps it after the attack, `del` removes it now and keeps it from coming back on
that service for a while. They are dynamic state: `export` and `apply` never show or touch them.
"""

from __future__ import annotations

import time

import click
from rich.table import Table

from xdpguard.core.daemon import mitigation

from .output import Console, Result, json_option
from .params import TEXT, SecondsType, iface_option


def _when(ts) -> str:
    return "-" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def _one(r: dict, verb: str) -> Result:
    return Result(
        r,
        lambda c, r: c.print(
            f"mitigation {r['id']} on {r['protected']} {r['proto']}/{r['port']}: {verb}", markup=False
        ),
    )


@click.group(name="mitigations")
def mitigations():
    """Automatic mitigation filters installed by `xdpguard run`."""


@mitigations.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also the recently lifted and deleted ones.")
@iface_option
@json_option
def list_(show_all, iface):
    """Show the active mitigations (and with --all the recently lifted)."""
    return Result(mitigation.list_mitigations(iface), lambda c, res: _table(c, res, show_all))


def _table(c: Console, res: mitigation.ListResult, show_all: bool) -> None:
    rows = res.mitigations + (res.lifted if show_all else [])
    if not rows:
        c.print(f"no {'' if show_all else 'active '}mitigations on {res.iface}")
        return
    t = Table(box=None, pad_edge=False)
    for col in ("id", "service", "state", "since", "peak pps", "dropped (est.)", "fingerprint"):
        t.add_column(col, no_wrap=col != "fingerprint")
    for r in rows:
        st = r.get("state", "?") + (" pinned" if r.get("pinned") else "")
        if r.get("in_kernel") is False:
            st += " (not in the kernel)"
        t.add_row(
            r["id"],
            f"{r['protected']} {r['proto']}/{r['port']}",
            st,
            _when(r.get("start")),
            f"{r.get('peak_pps', 0):,.0f}",
            f"{r.get('dropped_est', 0):,}",
            r.get("fingerprint", ""),
        )
    c.print(t)
    for k, until in sorted(res.suppressed.items()):
        c.print(f"{k}: not mitigated until {_when(until)} (deleted by the operator)", markup=False)


@mitigations.command("pin")
@click.argument("ident", metavar="ID", type=TEXT)
@click.option("--off", is_flag=True, help="Unpin: lift it with the attack again.")
@iface_option
@json_option
def pin(ident, off, iface):
    """Keep mitigation ID after its attack ends (until `mitigations del`)."""
    r = mitigation.pin(iface, ident, not off)
    return _one(r, "unpinned" if off else "pinned")


@mitigations.command("del")
@click.argument("ident", metavar="ID", type=TEXT)
@click.option(
    "--suppress",
    "suppress_s",
    type=SecondsType(0, 86400),
    default=mitigation.Settings.suppress_s,
    show_default=True,
    metavar="SECONDS",
    help="Do not mitigate that service again for SECONDS.",
)
@iface_option
@json_option
def delete(ident, suppress_s, iface):
    """Remove mitigation ID now."""
    r = mitigation.delete(iface, ident, suppress_s)
    return _one(r, f"deleted (not reinstalled for {suppress_s:g} s)")
