"""`xdpguard origin-rules`: the real server's firewall rules that accept its service ports only from us."""

from __future__ import annotations

import click

from xdpguard.core import origin

from .output import emit_json
from .params import iface_option, json_option


@click.command("origin-rules")
@click.option("--format", "fmt", type=click.Choice(list(origin.FORMATS)), default="nft", show_default=True,
              help="nft: a ruleset for `nft -f`; iptables: iptables/ip6tables commands.")
@iface_option
@json_option
def origin_rules(fmt, iface, as_json):
    """Print firewall rules for the real servers behind the forwards: their service ports accept
    only the protector's egress addresses (SNAT) or its MAC address (routed mode) and refuse
    everyone else, so the hidden server cannot be reached around the protection."""
    res = origin.origin_rules(fmt, iface)
    if as_json:
        emit_json(res)
    else:
        click.echo(res.text, nl=False)
