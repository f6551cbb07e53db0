"""`xdpguard cluster run|status|ban|unban|apply|bird-config|rotate-secret`: many nodes, one
protective IP."""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading

import click
from rich.table import Table

from typing import TYPE_CHECKING

from xdpguard.core.desired.load import DEFAULT_PATH

# The cluster code (etcd3gw, requests, urllib3: ~400 modules, ~0.5 s of every `xdpguard` start
# on a loaded machine) is imported by the cluster verbs that run, not by every command.
if TYPE_CHECKING:
    from xdpguard.core.cluster import ops

from .limit import RATE
from .output import Console, Result, console, json_option
from .params import CONFIG_FILE, OUT_FILE, SecondsType

config_option = click.option(
    "--config",
    "config_path",
    type=CONFIG_FILE,
    default=str(DEFAULT_PATH),
    show_default=True,
    metavar="FILE",
    help="The node's config file with its [cluster] (and [bgp]) section.",
)


@click.group()
def cluster():
    """A cluster of protector nodes: desired state and bans in etcd, the protective IP over BGP."""


@cluster.command()
@config_option
@click.option(
    "--duration", type=SecondsType(0.1), default=None, metavar="SECONDS", help="Exit after SECONDS (tests, the lab)."
)
def run(config_path, duration):
    """Run this node: realise the store's desired state, apply and spread bans, announce when healthy."""
    from xdpguard.core.cluster import node as cnode
    from xdpguard.core.cluster import ops

    desired = ops.load(config_path)
    c = console()
    # markup=False: a report quotes config and store text ("[cluster] protect"), never rich markup
    agent = cnode.NodeAgent(desired, report=lambda m: (c.print(m, markup=False, highlight=False), sys.stdout.flush()))
    stop = threading.Event()

    def on_term(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: where is it stuck?
    c.print(
        f"node {desired.cluster.node} of cluster {desired.cluster.name}: store {', '.join(desired.cluster.endpoints)}"
    )
    agent.run(stop, duration)
    c.print("stopped (the kernel keeps enforcing what is realised)")


@cluster.command()
@config_option
@json_option
def status(config_path):
    """Every node: applied revision, in sync or not, health, BGP sessions, announcing or not."""
    from xdpguard.core.cluster import ops

    return Result(ops.status(ops.load(config_path)), _status)


def _status(c: Console, res: ops.ClusterStatus) -> None:
    c.print(
        f"cluster {res.cluster}: store revision {res.revision}, desired state at {res.state_revision}; "
        f"interfaces {', '.join(res.interfaces) or 'none'}; {res.bans} ban(s); "
        f"{res.announcing} of {len(res.nodes)} node(s) announcing"
    )
    t = Table(box=None, pad_edge=False)
    for col in ("node", "applied", "sync", "health", "announce", "bgp", "bans"):
        t.add_column(col)
    for n in res.nodes:
        bgp = ", ".join(f"{k} {v.get('state', '?')}" for k, v in sorted(n.bgp.items())) or "-"
        t.add_row(
            n.node,
            str(n.applied_revision),
            "yes" if n.in_sync else "[yellow]behind[/]",
            "ready" if n.ready else "[red]not ready[/]: " + "; ".join(n.reasons),
            ", ".join(n.announced) if n.announcing else "no",
            bgp,
            str(n.bans),
        )
    c.print(t)
    for n in res.nodes:
        if n.rejected or n.bans_failed:
            c.print(
                f"[yellow]{n.node}: skipped {n.rejected} store value(s), {n.bans_failed} ban(s) not applied; "
                "see its log[/]"
            )
        if n.escalation_leader:
            c.print(
                f"upstream escalation decided by {n.node}: "
                + (", ".join(n.escalations) if n.escalations else "nothing announced")
            )


@cluster.command("ban")
@click.argument("addrs", nargs=-1, required=True, metavar="ADDR...")
@click.option("--ttl", type=RATE, required=True, metavar="SECONDS", help="Ban for SECONDS, cluster-wide.")
@config_option
@json_option
def ban_(addrs, ttl, config_path):
    """Ban source ADDRs on every node (through the store; on this node at once)."""
    from xdpguard.core.cluster import ops

    return Result(
        ops.ban(ops.load(config_path), list(addrs), ttl),
        lambda c, res: c.print(
            f"banned {', '.join(res.addresses)} for {ttl:g} s cluster-wide (store revision {res.revision})"
            + (f"; here on {', '.join(res.local)} at once" if res.local else "")
        ),
    )


@cluster.command()
@click.argument("addrs", nargs=-1, required=True, metavar="ADDR...")
@config_option
@json_option
def unban(addrs, config_path):
    """Lift the bans of ADDRs on every node."""
    from xdpguard.core.cluster import ops

    return Result(ops.unban(ops.load(config_path), list(addrs)), _unbanned)


def _unbanned(c: Console, res: ops.BanChange) -> None:
    c.print(f"lifted {len(res.addresses) - len(res.missing)} ban(s) cluster-wide (store revision {res.revision})")
    for m in res.missing:
        c.print(f"note: {m} was not banned in the store")


@cluster.command()
@click.argument("file", type=CONFIG_FILE)
@click.option("--prune", is_flag=True, help="Also remove interfaces the store holds and FILE does not.")
@config_option
@json_option
def apply(file, prune, config_path):
    """Make FILE's [[interface]] sections the cluster's desired state (every node realises them)."""
    from xdpguard.core.cluster import ops

    return Result(
        ops.apply(ops.load(config_path), file, prune),
        lambda c, res: c.print(
            f"stored {', '.join(res.interfaces)}"
            + (f", removed {', '.join(res.removed)}" if res.removed else "")
            + f" (store revision {res.revision})"
        ),
    )


@cluster.command("rotate-secret")
@config_option
@json_option
def rotate_secret(config_path):
    """A new challenge secret for every node; cookies signed with the previous one pass until they expire."""
    from xdpguard.core.cluster import ops

    return Result(
        ops.rotate_secret(ops.load(config_path)),
        lambda c, res: c.print(
            f"challenge secret rotated (store revision {res.revision}); the previous one checks cookies "
            f"for {res.keep_s} s more, the longest challenge lifetime"
        ),
    )


@cluster.command("bird-config")
@config_option
@click.option(
    "--withdrawn/--announced",
    default=True,
    show_default=True,
    help="Render with the protective addresses withdrawn (as `cluster run` starts) or announced.",
)
@click.option("--output", type=OUT_FILE, default=None, help="Write to FILE instead of stdout.")
def bird_config(config_path, withdrawn, output):
    """Print the BIRD config `cluster run` manages (to start BIRD with)."""
    from xdpguard.core.cluster import bgp, ops

    text = ops.bird_config(ops.load(config_path), withdrawn)
    if output:
        bgp.write_config(output, text)
    else:
        click.echo(text, nl=False)
