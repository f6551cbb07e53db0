"""`xdpguard proto block|unblock|show`: drop whole protocols to protected addresses (reason `protocol`)."""

from __future__ import annotations

import click

from xdpguard.core.verbs import cleansing, imperative
from xdpguard.core import policy

from .limit import iface_option, protected_option
from .output import Console, Result, json_option

_proto = click.argument("proto", type=click.Choice(list(policy.PROTOCOLS), case_sensitive=False))


def render(c: Console, res: cleansing.ProtoResult) -> None:
    if res.action != "show":
        c.print(f"protocols on {res.iface}: {res.action} changed {res.changed} addresses")
    for addr, blocked in res.blocked.items():
        c.print(f"  {addr}: {'blocked ' + ', '.join(blocked) if blocked else 'nothing blocked'}")


@click.group()
def proto():
    """Block or unblock tcp, udp, icmp (ICMPv6 too) or other protocols."""


@proto.command("block")
@_proto
@protected_option
@iface_option
@json_option
def block(proto, protected, iface):
    """Drop PROTO to the protected address(es)."""
    return Result(imperative.proto_change(iface, proto, True, protected), render)


@proto.command("unblock")
@_proto
@protected_option
@iface_option
@json_option
def unblock(proto, protected, iface):
    """Let PROTO through again."""
    return Result(imperative.proto_change(iface, proto, False, protected), render)


@proto.command("show")
@iface_option
@json_option
def show(iface):
    """Show the blocked protocols of each protected address."""
    return Result(cleansing.proto_show(iface), render)
