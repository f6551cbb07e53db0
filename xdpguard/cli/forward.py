"""`xdpguard forward add|del|list`: forward ports of a protective IP to hidden real servers.

A rule opens its ports in the XDP port policy (other TCP/UDP ports of that address are then
dropped with reason `port`) and DNATs new connections to its backends through the nftables
table `inet xdpguard`, rebuilt atomically on every change.
"""

from __future__ import annotations

import click

from xdpguard.core import fastfwd
from xdpguard.core.nat import forward as core
from xdpguard.core.verbs import imperative

from .output import Console, Result, human_bytes, json_option as _json
from .params import IFACE, iface_option as _iface

_protected = click.option(
    "--protected",
    default=None,
    metavar="ADDR",
    help="Protected address (default: the interface's only one of the backends' family).",
)
_proto = click.argument("proto", type=click.Choice(["tcp", "udp"]))
_range = click.argument("ports", metavar="PORT[-PORT]")


def _report(c: Console, res: core.ForwardChangeResult) -> None:
    verb = {"add": "added", "del": "removed"}[res.action]
    c.print(f"forward on {res.iface}: {verb} {res.key}" if res.changed else f"forward on {res.iface}: {res.key}")
    for n in res.notes:
        c.print(f"note: {n}")


@click.group()
def forward():
    """Forward ports of the protective IP to hidden real servers (NAT)."""


@forward.command("add")
@_proto
@_range
@click.option(
    "--to",
    "to",
    required=True,
    metavar="HOST:PORT[,HOST:PORT…]",
    help="Backends; IPv6 as [ADDR]:PORT; without a port the destination port is kept.",
)
@click.option("--weight", "weights", default=None, metavar="W[,W…]", help="One weight per backend (default 1).")
@click.option("--backup", default=None, metavar="HOST:PORT[,…]", help="Used only when every backend is down.")
@click.option(
    "--persist",
    "persist_s",
    type=click.IntRange(0, None),
    default=0,
    metavar="SECONDS",
    help="Keep a client on its backend for SECONDS after its last new connection.",
)
@click.option(
    "--preserve-client-ip",
    is_flag=True,
    help="Routed mode: no SNAT; backends see the client address and must route back via us.",
)
@click.option("--udp-probe", default=None, metavar="HEX", help="Health-check payload of a udp rule (default 'ping').")
@_protected
@_iface
@_json
def add(proto, ports, to, weights, backup, persist_s, preserve_client_ip, udp_probe, protected, iface):
    """Forward PROTO PORT[-PORT] of the protected address to --to backends."""
    return Result(
        imperative.forward_add(
            proto,
            ports,
            to,
            ifname=iface,
            protected=protected,
            weights=weights,
            backup=backup,
            persist_s=persist_s,
            preserve_client_ip=preserve_client_ip,
            udp_probe=udp_probe,
        ),
        _report,
    )


@forward.command("del")
@_proto
@_range
@_protected
@_iface
@_json
def delete(proto, ports, protected, iface):
    """Remove the forwarding rule PROTO PORT[-PORT]."""
    return Result(imperative.forward_delete(proto, ports, ifname=iface, protected=protected), _report)


@forward.command("list")
@_iface
@_json
def list_(iface):
    """Show the rules, their backends' health and traffic counters."""
    return Result(fastfwd.show(iface), _rules)


def _rules(c: Console, res: core.ForwardListResult) -> None:
    if not res.rules:
        c.print("no forwarding rules")
        return
    for r in res.rules:
        opts = [
            o
            for o in (
                f"persist {r.persist_s}s" if r.persist_s else "",
                "client ip kept" if r.preserve_client_ip else "",
                f"udp probe {r.udp_probe}" if r.udp_probe else "",
            )
            if o
        ]
        fast = f" + fast path {r.fast_packets} packets, {human_bytes(r.fast_bytes)}" if r.fast_packets else ""
        c.print(
            f"{r.key} on {r.iface}: {r.packets} packets, {human_bytes(r.bytes)}{fast}"
            + (f"  ({', '.join(opts)})" if opts else "")
        )
        for b in r.backends:
            c.print(f"  {b.endpoint}  weight {b.weight}{'  backup' if b.backup else ''}  {b.health}")


@forward.command("fastpath")
@click.argument("iface", type=IFACE)
@click.option(
    "--via",
    type=IFACE,
    default=None,
    help="The backend-side interface: the return program is attached there (native XDP).",
)
@click.option("--off", is_flag=True, help="Every flow back to the slow path, the return program off.")
@_json
def fastpath(iface, via, off):
    """(experimental) Move IFACE's established forwards onto the XDP fast path.

    Sets `fast_path.via` in IFACE's desired spec (`--off` clears it); the reconciler attaches
    the return program to --via, and `xdpguard run` moves established DNATs from conntrack onto
    the fast path every second (minus backends marked down; this command syncs once). Needs a
    program compiled with it: `attach --fast-forward`, or `upgrade IFACE --fast-forward`.
    nftables keeps the first packets and the end of every connection."""
    return Result(imperative.forward_fastpath(iface, via, off), _fastpath)


def _fastpath(c: Console, res: fastfwd.FastPathResult) -> None:
    c.print(
        f"fast path on {res.iface}: {res.flows} flows ({res.written} entries written, {res.deleted} deleted"
        + (f", {res.refreshed} conntrack timeouts refreshed)" if res.refreshed else ")")
    )
    for name, (packets, nbytes) in res.counters.items():
        c.print(f"  {name:4} {packets} packets, {human_bytes(nbytes)}")
    for n in res.notes:
        c.print(f"[yellow]note:[/] {n}")
