"""`xdpguard filter add|del|list`: packet feature filters (reason `feature`), first match wins.

Every given condition must hold: protocol, source/destination port, frame length and TTL
ranges, TCP flags ('syn,!ack': SYN set, ACK clear), and up to 16 payload bytes (under a
mask) at an offset from the L3 header, the L4 header or the L4 payload.
"""

from __future__ import annotations

import click

from xdpguard.core.kernel import abi
from xdpguard.core.verbs import cleansing, imperative
from xdpguard.core import policy
from xdpguard.core.model import vocab
from xdpguard.core.model.vocab import parse_hex, parse_range
from xdpguard.core.errors import UserError

from .params import iface_option
from .output import Console, Result, json_option


def render(c: Console, res: cleansing.FilterResult) -> None:
    if res.action == "add":
        c.print(f"filters on {res.iface}: added filter {res.index}")
    elif res.action == "del":
        c.print(f"filters on {res.iface}: deleted filter {res.index}")
    c.print(f"{len(res.filters)} of {res.capacity} filters on {res.iface}, evaluated in order:")
    for v in res.filters:
        c.print(f"  {v.index:>2}. {v.summary}")


@click.group(name="filter")
def filter_():
    """Packet feature filters: drop (or pass, or drop and ban) matching packets."""


@filter_.command("add")
@click.option(
    "--proto",
    type=click.Choice(sorted(vocab.FILTER_PROTOS), case_sensitive=False),
    default=None,
    help="Only this protocol (icmp matches ICMPv6 too).",
)
@click.option("--sport", metavar="R", help="Source port or range (TCP/UDP).")
@click.option("--dport", metavar="R", help="Destination port or range (TCP/UDP).")
@click.option("--len", "length", metavar="R", help="Frame length range in bytes, as XDP sees it.")
@click.option("--ttl", metavar="R", help="TTL / hop limit range.")
@click.option("--tcp-flags", metavar="FLAGS", help="e.g. 'syn,!ack': SYN set and ACK clear, others any.")
@click.option("--payload", metavar="HEX", help=f"Up to {abi.PAYLOAD_MATCH_MAX} bytes to match.")
@click.option("--mask", metavar="HEX", help="Mask for --payload (default all ones), as long as it.")
@click.option(
    "--base",
    type=click.Choice(list(policy.BASES)),
    default="payload",
    show_default=True,
    help="Where --offset counts from.",
)
@click.option("--offset", type=int, default=0, show_default=True, help="Byte offset of --payload from --base.")
@click.option(
    "--action",
    type=click.Choice(list(policy.ACTIONS)),
    required=True,
    help="drop; pass (skip rate limits and the SYN defence); drop-ban (and ban the source).",
)
@click.option("--ban", "ban_s", type=int, default=0, metavar="SECONDS", help="Ban length for drop-ban.")
@click.option("--position", type=int, default=None, metavar="N", help="Insert as filter N (1 = first; default last).")
@iface_option
@json_option
def add(proto, sport, dport, length, ttl, tcp_flags, payload, mask, base, offset, action, ban_s, position, iface):
    """Add a filter."""
    if ban_s and action != "drop-ban":
        raise UserError("--ban only goes with --action drop-ban")
    if mask and not payload:
        raise UserError("--mask needs --payload")
    flt = policy.Filter(
        action=action,
        proto=proto.lower() if proto else None,
        sport=parse_range("--sport", sport, (0, 65535)),
        dport=parse_range("--dport", dport, (0, 65535)),
        length=parse_range("--len", length, (0, 65535)),
        ttl=parse_range("--ttl", ttl, (0, 255)),
        tcp_flags=policy.parse_tcp_flags(tcp_flags) if tcp_flags else (0, 0),
        payload=parse_hex("--payload", payload),
        payload_mask=parse_hex("--mask", mask),
        payload_base=base,
        payload_off=offset,
        ban_s=ban_s,
    )
    if flt.tcp_flags[0] and flt.proto not in (None, "tcp"):
        raise UserError("--tcp-flags only match TCP; drop --proto or use --proto tcp")
    return Result(imperative.filter_add(iface, flt, position), render)


@filter_.command("del")
@click.argument("index", type=int)
@iface_option
@json_option
def delete(index, iface):
    """Delete filter INDEX (as shown by `filter list`); later ones move up."""
    return Result(imperative.filter_del(iface, index), render)


@filter_.command("list")
@iface_option
@json_option
def list_(iface):
    """Show the filters in evaluation order."""
    return Result(cleansing.filter_list(iface), render)
