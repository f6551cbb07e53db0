"""`xdpguard origin-rules`: the real server's firewall rules that accept its service ports only from us."""

from __future__ import annotations

import click

from xdpguard.core.nat import origin

from .output import Result, json_option
from .params import iface_option


@click.command("origin-rules")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(origin.FORMATS)),
    default="nft",
    show_default=True,
    help="nft: a ruleset for `nft -f`; iptables: iptables/ip6tables commands.",
)
@iface_option
@json_option
def origin_rules(fmt, iface):
    """Print firewall rules for the real servers behind the forwards: their service ports accept
    only the protector's egress addresses (SNAT) or its MAC address (routed mode) and refuse
    everyone else, so the hidden server cannot be reached around the protection."""
    return Result(origin.origin_rules(fmt, iface), lambda c, res: click.echo(res.text, nl=False))
