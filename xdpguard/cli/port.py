"""`xdpguard port open|close|list`: the port policy of protected addresses.

Once any port of a protected address is open (here or by a forwarding rule), only its open
TCP/UDP ports are reachable; everything else to it is dropped in XDP with reason `port`.
"""

from __future__ import annotations

import click

from xdpguard.core.verbs import imperative
from xdpguard.core import protection

from .output import Console, Result, json_option as _json
from .params import iface_option as _iface, protected_option as _protected

_proto = click.argument("proto", type=click.Choice(["tcp", "udp"]))
_range = click.argument("ports", metavar="PORT[-PORT]")


def _render(c: Console, res: protection.PortResult) -> None:
    if res.action != "list":
        c.print(f"ports on {res.iface}: {res.action} changed {res.changed} entries")
    if not res.ports:
        c.print(f"no port policy on {res.iface}: every port of the protected addresses is reachable")
    for r in res.ports:
        rng = str(r.lo) if r.lo == r.hi else f"{r.lo}-{r.hi}"
        c.print(f"  {r.protected} {r.proto} {rng}  (by {', '.join(r.by)})")


@click.group()
def port():
    """Open and close ports of the protected addresses (the XDP port policy)."""


@port.command("open")
@_proto
@_range
@_protected
@_iface
@_json
def open_(proto, ports, protected, iface):
    """Open PROTO PORT[-PORT] on the protected address(es)."""
    return Result(imperative.ports_change(iface, proto, ports, protected, True), _render)


@port.command("close")
@_proto
@_range
@_protected
@_iface
@_json
def close(proto, ports, protected, iface):
    """Close ports opened with `port open` (ports of forwarding rules stay open)."""
    return Result(imperative.ports_change(iface, proto, ports, protected, False), _render)


@port.command("list")
@_iface
@_json
def list_(iface):
    """Show the open ports."""
    return Result(protection.ports_list(iface), _render)
