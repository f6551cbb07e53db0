"""`xdpguard lab up|down|status|attack|probe`: a namespace lab with an attacker, a client, the
protector and a hidden backend, plus bounded attacks and a legitimate client's measurements."""

from __future__ import annotations

import click

from xdpguard.lab import attack as lab_attack
from xdpguard.lab import cluster as lab_cluster
from xdpguard.lab import probe as lab_probe
from xdpguard.lab import topology

from .output import Console, Result, json_option as _json
from .params import SecondsType


@click.group()
def lab():
    """A self-contained namespace lab (198.18.0.0/15, 2001:db8::/32; no route off the machine)."""


@lab.command()
@click.option("--no-protect", is_flag=True, help="Do not attach xdpguard (no forwarding either).")
@click.option(
    "--lifetime",
    type=click.IntRange(10, 86400),
    default=topology.SERVER_LIFETIME_S,
    metavar="SECONDS",
    help="The backend servers exit by themselves after SECONDS.",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, lab_cluster.MAX_NODES),
    default=None,
    metavar="N",
    help="Build the cluster lab instead: a BGP router, N protector nodes, etcd.",
)
@click.option(
    "--etcd",
    type=click.Choice(["1", "3"]),
    default="1",
    show_default=True,
    help="With --nodes: etcd members (3 for the fault tests).",
)
@click.option(
    "--small-backend",
    is_flag=True,
    help="Shape the backend web server like a small real server (4 requests at a time, 20 ms each).",
)
@_json
def up(no_protect, lifetime, nodes, etcd, small_backend):
    """Build the lab (removing a previous one first) and protect it with xdpguard."""
    if nodes is not None:
        return Result(lab_cluster.up(nodes, lifetime_s=lifetime, etcd=int(etcd)), _cluster_up)
    if lab_cluster.exists():
        lab_cluster.down()
    return Result(topology.up(protected=not no_protect, lifetime_s=lifetime, small_backend=small_backend), _up)


def _up(c: Console, res: topology.LabUpResult) -> None:
    for n in res.notes:
        c.print(f"note: {n}")
    c.print(f"lab '{res.name}' is up: {', '.join(res.namespaces.values())}")
    c.print(
        f"  protective IP {topology.PROT4}, {topology.PROT6} on {res.namespaces['prot']}:{topology.PROT_IFACE}"
        + (
            f" (xdpguard attached, mode {res.xdp_mode}; HTTP tcp 80 through HAProxy, forwarding tcp 7, "
            f"udp 7, tcp 8080 to the backend)"
            if res.protected
            else " (NOT protected)"
        )
    )
    c.print(f"  client {topology.CLIENT4}, attacker {topology.ATTACKER4}, backend {topology.BACKEND4} (hidden)")
    c.print("  servers: " + ", ".join(f"{s.name} pid {s.pid}" for s in res.servers))
    c.print(f"  state: {res.state_file}; remove everything with 'xdpguard lab down'")


@lab.command()
@_json
def down():
    """Remove the lab: detach xdpguard, stop servers, delete namespaces and state."""
    if lab_cluster.exists():
        return Result(
            lab_cluster.down(),
            lambda c, cres: c.print(
                f"cluster lab '{cres['name']}' removed: {len(cres['removed_namespaces'])} namespaces, "
                f"{len(cres['killed_pids'])} processes stopped"
            ),
        )
    return Result(topology.down(), _down)


def _down(c: Console, res: topology.LabDownResult) -> None:
    for n in res.notes:
        c.print(f"note: {n}")
    if res.removed_namespaces:
        c.print(
            f"lab '{res.name}' removed: {len(res.removed_namespaces)} namespaces, "
            f"{len(res.killed_pids)} processes stopped"
        )
    else:
        c.print(f"lab '{res.name}' was not up; nothing to remove")


@lab.command()
@_json
def status():
    """Show which namespaces, servers and XDP program of the lab exist."""
    if lab_cluster.exists():
        return Result(lab_cluster.status(), _cluster_status)
    return Result(topology.status(), _status)


def _status(c: Console, res: topology.LabStatusResult) -> None:
    _print_parts(c, f"lab '{res.name}'", res.up, res.namespaces, res.servers, "server ")
    if res.xdp:
        drops = {cv["reason"]: cv["packets"] for cv in res.xdp["counters"] if cv["kind"] in ("drop", "would_drop")}
        c.print(
            f"  xdpguard on {topology.PROT_IFACE}: prog id {res.xdp['prog_id']}, mode {res.xdp['mode']}"
            f"{' MONITOR' if res.xdp['monitor'] else ''}; drops "
            + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none")
        )
    elif any(res.namespaces.values()):
        c.print("  xdpguard: not attached")
    if any(res.namespaces.values()):
        for role, addr in res.addresses.items():
            c.print(f"  {role}: {addr}")


@lab.command()
@click.argument("kind", type=click.Choice(lab_attack.KINDS))
@click.option("--pps", type=click.IntRange(1, None), default=None, help="Rate limit (default: as fast as possible).")
@click.option(
    "--duration",
    type=SecondsType(0.1, lab_attack.MAX_DURATION_S),
    default=5.0,
    show_default=True,
    help="Stop after this many seconds.",
)
@click.option(
    "--sources",
    type=click.IntRange(1, lab_attack.MAX_SOURCES),
    default=None,
    help="Distinct source addresses (1 = the attacker's own for udp-flood/icmp-flood; default 256 spoofed).",
)
@click.option(
    "--count",
    type=click.IntRange(1, lab_attack.MAX_COUNT),
    default=None,
    help="Stop after this many packets (default: pps × duration, or 20 million).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Destination port (default per kind).")
@click.option("--cpus", type=click.IntRange(1, 64), default=1, show_default=True, help="trafgen processes.")
@_json
def attack(kind, pps, duration, sources, count, port, cpus):
    """Send a bounded attack of KIND from the attacker namespace to the protective IP."""
    return Result(
        lab_attack.run(kind, pps=pps, duration=duration, sources=sources, count=count, port=port, cpus=cpus),
        lambda c, res: c.print(lab_attack.describe(res)),
    )


@lab.command()
@click.option("--count", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--proto", type=click.Choice(["tcp", "udp", "http"]), default="http", show_default=True)
@click.option("--ipv6", is_flag=True, help="Use the IPv6 protective address.")
@click.option("--timeout", type=SecondsType(0.01, 30), default=1.0, show_default=True, help="Per request, seconds.")
@click.option("--interval", type=SecondsType(0, 10), default=0.0, help="Pause between requests, seconds.")
@click.option(
    "--duration", type=SecondsType(0.1, 3600), default=60.0, show_default=True, help="Stop after this many seconds."
)
@_json
def probe(count, proto, ipv6, timeout, interval, duration):
    """A legitimate client's success rate and latency through the protective IP."""
    if proto == "tcp" and ipv6:
        raise click.UsageError("tcp echo is forwarded on IPv4 only; use --proto http or udp with --ipv6")
    return Result(
        lab_probe.in_lab(proto, count, family=6 if ipv6 else 4, timeout=timeout, interval=interval, duration=duration),
        lambda c, res: c.print(lab_probe.describe(res)),
    )


def _cluster_up(c: Console, res: lab_cluster.ClusterUpResult) -> None:
    for n in res.notes:
        c.print(f"note: {n}")
    c.print(f"cluster lab '{res.name}' is up: {res.nodes} node(s), {len(res.namespaces)} namespaces")
    for dst, hops in res.next_hops.items():
        c.print(f"  router: {dst} via {', '.join(hops) or 'nothing'} ({len(hops)} next hop(s))")
    etcd_urls = lab_cluster.etcd_urls(sum(1 for r in res.namespaces if r.startswith("etcd")))
    c.print(f"  client {lab_cluster.CLIENT4}, attacker {lab_cluster.ATTACKER4}, etcd {', '.join(etcd_urls)}")
    c.print(f"  node configs, BIRD configs, logs: {res.run_dir}; remove everything with 'xdpguard lab down'")


def _print_parts(c, title: str, up: bool, namespaces: dict[str, bool], servers: list[dict], kind: str = "") -> None:
    """What `lab status` shows of either lab: up or not, each namespace, each server process."""
    c.print(f"{title}: {'[green]up[/]' if up else '[yellow]not (fully) up[/]'}")
    for ns, present in namespaces.items():
        c.print(f"  netns {ns}: {'present' if present else 'absent'}")
    for s in servers:
        c.print(f"  {kind}{s['name']} pid {s['pid']}: {'running' if s['alive'] else 'gone'}")


def _cluster_status(c: Console, res: lab_cluster.ClusterStatusResult) -> None:
    _print_parts(c, f"cluster lab '{res.name}' ({res.nodes} nodes)", res.up, res.namespaces, res.servers)
    for dst, hops in res.next_hops.items():
        c.print(f"  router: {dst} via {', '.join(hops) or 'nothing'}")
