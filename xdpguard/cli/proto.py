"""`xdpguard proto block|unblock|show`: drop whole protocols to protected addresses (reason `protocol`)."""

from __future__ import annotations

import click

from xdpguard.core import cleansing, imperative, policy

from .limit import iface_option, json_option, protected_option
from .output import console, emit_json

_proto = click.argument("proto", type=click.Choice(list(policy.PROTOCOLS), case_sensitive=False))


def render(res: cleansing.ProtoResult, as_json: bool) -> None:
    if as_json:
        emit_json(res)
        return
    c = console()
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
def block(proto, protected, iface, as_json):
    """Drop PROTO to the protected address(es)."""
    render(imperative.proto_change(iface, proto, True, protected), as_json)


@proto.command("unblock")
@_proto
@protected_option
@iface_option
@json_option
def unblock(proto, protected, iface, as_json):
    """Let PROTO through again."""
    render(imperative.proto_change(iface, proto, False, protected), as_json)


@proto.command("show")
@iface_option
@json_option
def show(iface, as_json):
    """Show the blocked protocols of each protected address."""
    render(cleansing.proto_show(iface), as_json)
