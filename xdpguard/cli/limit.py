"""`xdpguard limit set|clear|show`: per-source and per-destination token buckets, auto-ban.

Limits apply per protected address (default: every one of the interface) or, with --port
PROTO:PORT[-PORT], to those ports only (overriding the address's limits there). `limit set`
replaces the limits of its scope with exactly the rates given.
"""

from __future__ import annotations

import click

from xdpguard.core.verbs import cleansing, imperative
from xdpguard.core import policy
from xdpguard.core.errors import UserError

from .output import Console, Result, human_bytes, json_option
from .params import COUNT, TEXT, iface_option, protected_option

RATE = COUNT  # limits are whole numbers (packets, bytes, seconds)

_port = click.option(
    "--port",
    type=TEXT,
    default=None,
    metavar="PROTO:PORT[-PORT]",
    help="Only these ports (tcp:80, udp:27015-27020): per-port limits.",
)


def describe_limits(d: dict) -> str:
    parts = []
    if d["src_pps"]:
        parts.append(f"src {d['src_pps']:,} pps (burst {d['src_burst_pkts']:,})")
    if d["src_bps"]:
        parts.append(f"src {human_bytes(d['src_bps'])}/s (burst {human_bytes(d['src_burst_bytes'])})")
    if d["dst_pps"]:
        parts.append(f"dst {d['dst_pps']:,} pps (burst {d['dst_burst_pkts']:,})")
    if d["syn_src_pps"]:
        parts.append(f"syn/src {d['syn_src_pps']:,} pps (burst {d['syn_src_burst']:,})")
    if d["ban_s"]:
        parts.append(f"ban {d['ban_s']} s")
    return ", ".join(parts) or "no limit"


def render(c: Console, res: cleansing.LimitResult) -> None:
    if res.action != "show":
        c.print(f"limits on {res.iface}: {res.action} {res.changed} entries")
    if not res.limits:
        c.print(f"no rate limits on {res.iface}")
    for v in res.limits:
        c.print(f"  {v.protected} {v.scope}: {describe_limits(v.limits)}")


@click.group()
def limit():
    """Per-source pps/bps and per-destination pps limits (drop reason `ratelimit`)."""


@limit.command("set")
@protected_option
@_port
@click.option("--src-pps", type=RATE, default=0, help="Packets/s per source.")
@click.option("--src-burst", type=RATE, default=0, help="Bucket depth, packets (default: one second's worth).")
@click.option("--src-bps", type=RATE, default=0, help="Bytes/s per source (frame bytes).")
@click.option("--src-burst-bytes", type=RATE, default=0, help="Bucket depth, bytes (default: one second's worth).")
@click.option("--dst-pps", type=RATE, default=0, help="Packets/s to each protected address:port from all sources.")
@click.option("--dst-burst", type=RATE, default=0, help="Its bucket depth, packets.")
@click.option("--syn-src-pps", type=RATE, default=0, help="TCP SYNs/s per source (drop reason `syn`).")
@click.option("--syn-src-burst", type=RATE, default=0, help="Its bucket depth, SYNs.")
@click.option(
    "--unknown-share",
    "unknown_share",
    type=RATE,
    default=0,
    metavar="PCT",
    help="With --dst-pps: sources not known-good may use only PCT % of the bucket (1-99; "
    "drop reason `unknown`); the rest is kept for known-good clients. 0: off.",
)
@click.option(
    "--ban",
    "ban_s",
    type=RATE,
    default=0,
    metavar="SECONDS",
    help="Ban a source exceeding a per-source rate for SECONDS (drop reason `banned`).",
)
@iface_option
@json_option
def set_(
    protected,
    port,
    src_pps,
    src_burst,
    src_bps,
    src_burst_bytes,
    dst_pps,
    dst_burst,
    syn_src_pps,
    syn_src_burst,
    unknown_share,
    ban_s,
    iface,
):
    """Replace the limits of the protected address(es), or of their --port, with these rates."""
    lim = policy.Limits(
        src_pps,
        src_burst,
        src_bps,
        src_burst_bytes,
        dst_pps,
        dst_burst,
        syn_src_pps,
        syn_src_burst,
        ban_s,
        unknown_share,
    )
    return Result(imperative.limit_set(iface, lim, protected, port), render)


@limit.command("clear")
@protected_option
@_port
@click.option("--all-ports", is_flag=True, help="Also remove every per-port limit of the address(es).")
@iface_option
@json_option
def clear(protected, port, all_ports, iface):
    """Remove the limits of the protected address(es), or of their --port."""
    if port and all_ports:
        raise UserError("give --port or --all-ports, not both")
    return Result(imperative.limit_clear(iface, protected, port, all_ports), render)


@limit.command("show")
@iface_option
@json_option
def show(iface):
    """Show the limits in force."""
    return Result(cleansing.limit_show(iface), render)
