"""The demo's second act: many nodes, one protective IP. Three protector nodes announce
198.18.0.1 over BGP to a router (BIRD, ECMP, BFD), policy and bans come through etcd; a spoofed
flood runs through the router to all of them while a client opens a new HTTP connection per
request; mid-attack one node dies (its link goes down and every process in it is killed) — the
router drops it within milliseconds and the client barely notices.

Run by xdpguard.lab.demo after the single-box act (`--no-cluster` skips it)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from . import cluster as lc
from . import probe
from . import topology as topo

NODES = 3
FLOOD_PPS = 5_000
VICTIM = 2


def _pids_in(ns: str) -> list[int]:
    p = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
    return [int(x) for x in p.stdout.split()]


def _probe(duration: float) -> subprocess.Popen:
    argv = probe.command(lc.PROT4, "http", count=1_000_000, timeout=1.0, interval=0.005, duration=duration)
    return subprocess.Popen(
        ["ip", "netns", "exec", topo.ns_name("client"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _result(p: subprocess.Popen, timeout: float) -> probe.ProbeResult:
    out, err = p.communicate(timeout=timeout)
    return probe.result_of(out, err, p.returncode)


def _flood(seconds: float) -> subprocess.Popen:
    argv = lc.flood_argv(FLOOD_PPS, seconds, "--spoof", "198.18.128.0/17", "--sources", "4096")
    return subprocess.Popen(
        ["ip", "netns", "exec", topo.ns_name("attacker"), *argv, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def kill_node(i: int) -> float:
    """Node i dies: its uplink goes down and every process in its namespace is SIGKILLed.
    Returns the seconds until the router has no route through it any more."""
    ns = topo.ns_name(f"node{i}")
    gone = lc.node_links(i)["node4"]
    t0 = time.monotonic()
    subprocess.run(["ip", "-n", ns, "link", "set", lc.NODE_IFACE, "down"], check=True, timeout=10)
    for pid in _pids_in(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while gone in lc.router_next_hops().get(lc.PROT4, []):
        if time.monotonic() - t0 > 10:
            break
        time.sleep(0.002)
    return time.monotonic() - t0


def run(say: Callable[[str], None], duration: float) -> dict:
    say(
        f"\n== many nodes, one protective IP: lab up --nodes {NODES} (a router with BIRD: ECMP over the nodes, "
        "BFD; each node: xdpguard + BIRD announcing 198.18.0.1; policy and bans from etcd)"
    )
    up = lc.up(NODES)
    hops = lc.wait_next_hops(NODES, timeout_s=60)
    say(
        f"the router's route to {lc.PROT4}: {len(hops[lc.PROT4])} next hops ({', '.join(hops[lc.PROT4])}); "
        f"{up.nodes} nodes announcing"
    )
    base = _result(_probe(duration), duration + 30)
    say(f"client before the attack: {probe.describe(base)}")
    total = 3 * duration
    say(
        f"a spoofed UDP flood at udp/7 ({FLOOD_PPS:,} pps, 4,096 sources) runs through the router for {total:g} s; "
        f"the client keeps requesting; after {duration:g} s node{VICTIM} dies (link down, every process killed)"
    )
    flood = _flood(total)
    try:
        time.sleep(0.5)
        before = _result(_probe(duration - 0.5), duration + 30)
        around = _probe(duration)
        killed: dict = {}
        t = threading.Timer(duration / 2, lambda: killed.update(s=kill_node(VICTIM)))
        t.start()
        during = _result(around, duration + 30)
        t.join()
        after = _result(_probe(duration - 0.5), duration + 30)
    finally:
        flood.wait(timeout=total + 30)
    hops = lc.router_next_hops()
    gone_ms = killed.get("s", float("nan")) * 1000
    say(f"under the flood, 3 nodes:        {probe.describe(before)}")
    say(f"node{VICTIM} dies mid-way:            {probe.describe(during)}")
    say(f"under the flood, 2 nodes left:   {probe.describe(after)}")
    say(
        f"the router dropped node{VICTIM} {gone_ms:.0f} ms after it died; next hops now: "
        f"{', '.join(hops.get(lc.PROT4, []))}"
    )
    lost = during.sent - during.ok
    say(
        f"the client lost {lost} of {during.sent} requests around the node's death "
        f"(requests in flight on node{VICTIM} when it died, and new ones while the router still sent to it)"
    )
    return {
        "base": base,
        "before": before,
        "during": during,
        "after": after,
        "gone_ms": gone_ms,
        "next_hops": hops.get(lc.PROT4, []),
    }


def down(say: Callable[[str], None]) -> None:
    res = lc.down()
    say(f"cluster lab down: removed {len(res.get('removed_namespaces', []))} namespaces; nothing left behind")
