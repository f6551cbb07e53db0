"""The cluster lab (`xdpguard lab up --nodes 3`) with real BIRD, real etcd and real XDP:

- the router's route to the protective IP has one next hop per node, and clients get through;
- a node whose BIRD dies, whose link goes down, whose `cluster run` dies (the TUN liveness
  device) or whose backends become unreachable is gone from the router; times are measured;
- a ban on node 1 is in every node's ban map within 1 s (p50/p99 over 50 bans);
- an HTTP offender's ban (reason cc) on node 1 is spread and dropped on the other nodes;
- with etcd stopped, nodes keep enforcing and announcing, a ban found meanwhile is queued; after
  etcd returns the nodes converge within 5 s;
- `lab down` leaves nothing: no namespace, no BIRD, no etcd, no agent, no file.

Measured numbers are printed (run with -s to see them); asserts are the issue's bounds with the
margin this shared machine needs, never speed claims.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_assert import run_cli
from xdpguard.core.cluster import node as cnode
from xdpguard.core.l7 import runtime, spec
from xdpguard.lab import cluster as lc
from xdpguard.lab import topology

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing

NODES = 3


@dataclass
class Cluster:
    name: str
    env: dict[str, str]
    run_dir: Path
    started: list[subprocess.Popen]

    def ns(self, role: str) -> str:
        return f"xg-{self.name}-{role}"

    def xg(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_cli(self.env, *args, check=check, timeout=timeout)

    def xg_in(self, role: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run_in(role, *topology.xdpguard_argv(), *args, check=check, timeout=timeout)

    def run_in(self, role: str, *argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *argv],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"{role}: {' '.join(argv)} exited {p.returncode}: {p.stderr.strip()}")
        return p

    def start_in(self, role: str, *argv: str) -> subprocess.Popen:
        log = open(self.run_dir / f"cluster-{self.name}" / "logs" / f"test-{role}-{len(self.started)}.log", "wb")
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        self.started.append(p)
        return p

    def config(self, i: int) -> str:
        return str(self.run_dir / f"cluster-{self.name}" / f"node{i}.toml")

    def file(self, name: str) -> Path:
        return self.run_dir / f"cluster-{self.name}" / name

    def hops(self) -> dict[str, list[str]]:
        return lc.router_next_hops(self.name)

    def hops4(self) -> list[str]:
        return self.hops()[lc.PROT4]

    def wait_hops(self, n: int, timeout_s: float = 30.0) -> dict[str, list[str]]:
        end = time.monotonic() + timeout_s
        while True:
            h = self.hops()
            if all(len(v) == n for v in h.values()):
                return h
            if time.monotonic() > end:
                raise AssertionError(f"router next hops after {timeout_s:g} s: {h}, want {n} each")
            time.sleep(0.1)

    def status(self) -> dict:
        return json.loads(self.xg_in("node1", "cluster", "status", "--json", "--config", self.config(1)).stdout)

    def pid_of(self, role: str, needle: str) -> int:
        pids = subprocess.run(["ip", "netns", "pids", self.ns(role)], capture_output=True, text=True, timeout=10).stdout
        for pid in pids.split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except FileNotFoundError:
                continue
            if needle in cmd and not cmd.startswith("timeout"):
                return int(pid)
        raise AssertionError(f"no process matching {needle!r} in {self.ns(role)}")


def time_until(cond, timeout_s: float, poll_s: float = 0.002) -> float:
    """Seconds until cond() is true (polled); raises after timeout_s."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not within {timeout_s:g} s")
        time.sleep(poll_s)
    return time.monotonic() - t0


def _leftovers(name: str, run_dir: Path) -> list[str]:
    out = (
        [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(f"xg-{name}-")]
        if os.path.isdir("/run/netns")
        else []
    )
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"cluster-{name}" in cmd and str(os.getpid()) != pid:
            out.append(f"process {pid}: {cmd[:120]}")
    if (run_dir / f"cluster-{name}").exists():
        out.append(f"directory {run_dir / f'cluster-{name}'}")
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    run_dir = tmp_path_factory.mktemp("clusterrun")
    name = f"c{os.getpid() % 1_000_000}"
    env = {**os.environ, "XDPGUARD_LAB_NAME": name, "XDPGUARD_RUN_DIR": str(run_dir)}
    c = Cluster(name, env, run_dir, [])
    try:
        c.xg("lab", "up", "--nodes", str(NODES), "--lifetime", "1800")
        yield c
    finally:
        keep = os.environ.get("XDPGUARD_TEST_KEEP_LOGS")  # a directory: the lab's logs are copied there
        if keep:
            shutil.copytree(run_dir / f"cluster-{name}" / "logs", Path(keep) / name, dirs_exist_ok=True)
        c.xg("lab", "down", check=False)
        for p in c.started:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    left = _leftovers(name, run_dir)
    assert not left, f"lab down left things behind: {left}"


def _healthy(c: Cluster) -> None:
    c.wait_hops(NODES, 60)


# ---- the tests, in the order they run (each leaves the cluster as it found it) ----


def test_router_has_one_next_hop_per_node_and_clients_get_through(cluster):
    c = cluster
    hops = c.wait_hops(NODES)
    assert hops[lc.PROT4] == sorted(lc.node_links(i)["node4"] for i in range(1, NODES + 1))
    assert hops[lc.PROT6] == sorted(lc.node_links(i)["node6"] for i in range(1, NODES + 1))
    for url in ("http://198.18.0.1/", "http://[2001:db8:0:1::1]/"):
        p = c.run_in("client", "curl", "-s", "-g", "-m", "3", url)
        assert "cluster lab backend" in p.stdout
    # The status is each node's last heartbeat (sent every ~0.5 s): right after the router has
    # every next hop, a node's heartbeat may still be from before its session came up (CI saw
    # "2 announcing" with 3 hops at the router), so wait up to 5 s for one that says so.
    said = {}

    def all_said() -> bool:
        said.update(c.status())
        return said["announcing"] == NODES

    try:
        time_until(all_said, 5, 0.1)
    except AssertionError:
        pass  # the asserts below say what the last status held
    st = said
    assert [n["node"] for n in st["nodes"]] == [f"node{i}" for i in range(1, NODES + 1)]
    assert all(n["announcing"] and n["ready"] and n["in_sync"] for n in st["nodes"]), st
    assert st["announcing"] == NODES
    # identical path attributes: the router merged them into one ECMP route (it would not otherwise)
    out = subprocess.run(
        ["birdc", "-s", str(c.file("bird-router.ctl")), "show", "route", "all", f"{lc.PROT4}/32"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert out.count("BGP.as_path: 65001") == NODES


def test_killed_bird_is_gone_from_the_router(cluster):
    c = cluster
    _healthy(c)
    victim = lc.node_links(3)["node4"]
    pid = int(c.file("bird-node3.pid").read_text().split()[0])
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    gone = time_until(lambda: victim not in c.hops4(), 5)
    print(f"\nBIRD of node3 killed: gone from the router after {gone * 1000:.1f} ms")
    assert gone < 1.0  # the TCP session closes at once; the target is 100 ms
    assert len(c.hops4()) == NODES - 1
    conf = c.file("bird-node3.conf")
    c.start_in(
        "node3", "bird", "-f", "-c", str(conf), "-s", str(c.file("bird-node3.ctl")), "-P", str(c.file("bird-node3.pid"))
    )
    back = time_until(lambda: victim in c.hops4(), 30, 0.05)
    print(f"BIRD of node3 restarted: back at the router after {back:.2f} s (agent reconfigures it)")
    del t0


def test_link_down_is_gone_from_the_router(cluster):
    c = cluster
    _healthy(c)
    victim = lc.node_links(2)["node4"]
    t0 = time.monotonic()
    c.run_in("node2", "ip", "link", "set", lc.NODE_IFACE, "down")
    try:
        gone = time_until(lambda: victim not in c.hops4(), 5)
        print(f"\nnode2's link down: gone from the router after {gone * 1000:.1f} ms")
        assert gone < 1.0
        p = c.run_in("client", "curl", "-s", "-m", "3", "http://198.18.0.1/")
        assert "cluster lab backend" in p.stdout
    finally:
        c.run_in("node2", "ip", "link", "set", lc.NODE_IFACE, "up")
    # the link is back but the kernel dropped the routes via it: node2 reaches its backends, not its
    # clients — it must not announce (require_routes)
    try:
        time_until(
            lambda: any(
                "no route to 198.18.8.0/24" in r
                for n in c.status()["nodes"]
                if n["node"] == "node2"
                for r in n["reasons"]
            ),
            10,
            0.2,
        )
        assert victim not in c.hops4()
    finally:
        lc.restore_node_routes(2, c.name)
    back = time_until(lambda: victim in c.hops4(), 30, 0.05)
    print(f"node2's link up and its routes back: announcing again after {back:.2f} s")
    # every flow answers again, node2's included (24 source ports spread over all nodes)
    for port in range(42000, 42024):
        p = c.run_in("client", "curl", "-s", "-m", "2", "--local-port", str(port), "http://198.18.0.1/", check=False)
        assert "cluster lab backend" in p.stdout, f"client port {port}: no answer"
    del t0


def test_dead_agent_stops_attracting_traffic(cluster):
    """SIGKILL of `cluster run`: the kernel deletes its TUN device, BIRD drops the static routes
    via it, the router loses the node; a restarted agent adopts the attached program."""
    c = cluster
    _healthy(c)
    victim = lc.node_links(3)["node4"]
    pid = c.pid_of("node3", "cluster run")
    os.kill(pid, signal.SIGKILL)
    gone = time_until(lambda: victim not in c.hops4(), 5)
    print(f"\nagent of node3 SIGKILLed: gone from the router after {gone * 1000:.1f} ms")
    assert gone < 1.0
    # the data path does not depend on the agent: node3 still filters (its program is attached)
    st = json.loads(c.xg_in("node3", "status", lc.NODE_IFACE, "--json").stdout)
    assert st and st[0]["prog_id"]
    c.start_in("node3", *topology.xdpguard_argv(), "cluster", "run", "--config", c.config(3), "--duration", "900")
    back = time_until(lambda: victim in c.hops4(), 30, 0.05)
    print(f"agent of node3 restarted: announced again after {back:.2f} s")


def test_unhealthy_backends_withdraw_the_node(cluster):
    c = cluster
    _healthy(c)
    victim = lc.node_links(2)["node4"]
    c.run_in("node2", "ip", "link", "set", "xgb0", "down")
    try:
        gone = time_until(lambda: victim not in c.hops4(), 10, 0.02)
        print(f"\nnode2's backends unreachable: withdrawn after {gone:.2f} s (probes every 0.5 s, fall 2)")
        # the node key follows within a heartbeat (1 s)
        time_until(lambda: not {n["node"]: n for n in c.status()["nodes"]}["node2"]["announcing"], 5, 0.2)
        st = {n["node"]: n for n in c.status()["nodes"]}
        assert st["node2"]["reasons"], st["node2"]
        assert st["node1"]["announcing"]
    finally:
        c.run_in("node2", "ip", "link", "set", "xgb0", "up")
    time_until(lambda: victim in c.hops4(), 30, 0.05)


POLLER = r"""
import json, sys, time, ipaddress
from xdpguard.core.kernel import abi; from xdpguard.core import policy, protection, state
addrs = json.loads(sys.argv[1]); out = sys.argv[2]; end = time.monotonic() + float(sys.argv[3])
g = protection.Guard.open(state.resolve_iface("xgp0"))
maps = [g.maps[n] for n in (abi.MapName.OPBANS, abi.MapName.BANS) if n in g.maps]  # operator bans, data path bans
seen = {}
keys = {a: policy.src_key(ipaddress.ip_address(a)) for a in addrs}
open(out + ".ready", "w").close()
while len(seen) < len(addrs) and time.monotonic() < end:
    for a, k in keys.items():
        if a not in seen and any(m.get(k) is not None for m in maps):
            seen[a] = time.time()
    time.sleep(0.001)
json.dump(seen, open(out, "w"))
"""

PUBLISHER = r"""
import json, sys, time
from xdpguard.core.desired.load import load
from xdpguard.core.cluster.store import ClusterStore
d, _ = load(sys.argv[1]); addrs = json.loads(sys.argv[2]); out = sys.argv[3]
st = ClusterStore(d.cluster)
sent = {}
for a in addrs:
    sent[a] = time.time()
    st.put_ban(a, 60, "operator", "node1")
    time.sleep(0.02)
json.dump(sent, open(out, "w"))
"""


def test_ban_on_node1_reaches_every_node_within_a_second(cluster):
    c = cluster
    _healthy(c)
    addrs = [f"198.18.9.{i}" for i in range(1, 51)]
    outs = {i: c.file(f"seen-node{i}.json") for i in range(1, NODES + 1)}
    pollers = [
        c.start_in(f"node{i}", sys.executable, "-c", POLLER, json.dumps(addrs), str(outs[i]), "30")
        for i in range(1, NODES + 1)
    ]
    time_until(lambda: all(Path(str(o) + ".ready").exists() for o in outs.values()), 30, 0.05)
    sent_file = c.file("sent.json")
    c.run_in("node1", sys.executable, "-c", PUBLISHER, c.config(1), json.dumps(addrs), str(sent_file))
    for p in pollers:
        p.wait(timeout=40)
    sent = json.loads(sent_file.read_text())
    lat = []
    for i, o in outs.items():
        seen = json.loads(o.read_text())
        missing = [a for a in addrs if a not in seen]
        assert not missing, f"node{i} never got bans {missing[:5]}"
        lat += [seen[a] - sent[a] for a in addrs]
    lat.sort()
    p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(
        f"\nban propagation over {len(addrs)} bans x {NODES} nodes: p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms"
    )
    assert p99 < 1.0
    # and unban through the CLI lifts them everywhere
    c.xg_in("node1", "cluster", "unban", *addrs, "--config", c.config(1))
    for i in range(1, NODES + 1):

        def clear(i=i):
            bans = json.loads(c.xg_in(f"node{i}", "ban", "list", "--json").stdout)["bans"]
            return not any(b["source"] in addrs for b in bans)

        time_until(clear, 10, 0.2)


EXPIRY_POLLER = r"""
import json, sys, time, ipaddress
from xdpguard.core.kernel import abi; from xdpguard.core import policy, protection, state
addr, out, end = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
g = protection.Guard.open(state.resolve_iface("xgp0"))
maps = [g.maps[n] for n in (abi.MapName.OPBANS, abi.MapName.BANS) if n in g.maps]
k = policy.src_key(ipaddress.ip_address(addr))
seen = gone = None
open(out + ".ready", "w").close()
while gone is None and time.monotonic() < end:
    now_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    vs = [m.get(k) for m in maps]
    present = any(v is not None and v.expires_ns > now_ns for v in vs)  # an expired entry no longer drops
    if present and seen is None:
        seen = time.time()
    elif not present and seen is not None:
        gone = time.time()
    time.sleep(0.002)
json.dump({"seen": seen, "gone": gone}, open(out, "w"))
"""


def test_ban_expiry_is_cluster_wide(cluster):
    """A ban's lease ends in etcd; every node lifts it within TTL + 1 s of the ban."""
    c = cluster
    ttl = 3
    addr = "198.18.9.200"
    outs = {i: c.file(f"expiry-node{i}.json") for i in range(1, NODES + 1)}
    pollers = [
        c.start_in(f"node{i}", sys.executable, "-c", EXPIRY_POLLER, addr, str(outs[i]), "20")
        for i in range(1, NODES + 1)
    ]
    time_until(lambda: all(Path(str(o) + ".ready").exists() for o in outs.values()), 30, 0.05)
    sent = time.time()
    c.xg_in("node2", "cluster", "ban", addr, "--ttl", str(ttl), "--config", c.config(2))
    for p in pollers:
        p.wait(timeout=30)
    res = {i: json.loads(o.read_text()) for i, o in outs.items()}
    assert all(r["seen"] and r["gone"] for r in res.values()), res
    worst = max(r["gone"] for r in res.values()) - sent
    per_node = ", ".join(f"{r['gone'] - sent:.2f}" for r in res.values())
    print(f"\n{ttl} s ban: lifted on every node {worst:.2f} s after the ban command started (per node: {per_node})")
    # TTL + 1 s, from the start of a CLI command that itself takes a good part of a second here
    assert worst <= ttl + 1 + 1.0


CC_BAN = r"""
import json, sys, time
from xdpguard.core import protection, state
with protection.Guard.open(state.resolve_iface("xgp0")) as g:  # what `xdpguard run` does (l7/bans.py)
    t = time.time()
    new = g.promote_cc_bans([(sys.argv[1], float(sys.argv[2]))])
json.dump({"banned": t, "new": new}, open(sys.argv[3], "w"))
"""


def test_a_cc_ban_on_one_node_drops_the_source_on_every_node(cluster):
    """Issue 29, step 7: an HTTP offender banned on node1 (reason cc, as `xdpguard run` bans it
    from HAProxy's stick tables) is spread through the store (it completed handshakes here:
    not spoofed) and dropped in XDP on every node; the spread copy is short (SPREAD_TTL_S)."""
    c = cluster
    _healthy(c)
    # the attacker completes real connections through the nodes (24 source ports: ECMP spreads them)
    for port in range(46000, 46024):
        c.run_in(
            "attacker",
            "curl",
            "-s",
            "-m",
            "2",
            "-o",
            "/dev/null",
            "--local-port",
            str(port),
            "http://198.18.0.1/",
            check=False,
        )
    outs = {i: c.file(f"cc-node{i}.json") for i in (2, 3)}
    pollers = [
        c.start_in(f"node{i}", sys.executable, "-c", EXPIRY_POLLER, lc.ATTACKER4, str(outs[i]), "8") for i in (2, 3)
    ]
    time_until(lambda: all(Path(str(o) + ".ready").exists() for o in outs.values()), 30, 0.05)
    try:
        done = c.file("cc-ban.json")
        c.run_in("node1", sys.executable, "-c", CC_BAN, lc.ATTACKER4, "300", str(done))
        for p in pollers:
            p.wait(timeout=30)
        banned = json.loads(done.read_text())
        assert banned["new"] == [lc.ATTACKER4], banned
        seen = {i: json.loads(o.read_text())["seen"] for i, o in outs.items()}
        assert all(seen.values()), f"the cc ban never reached {seen}"
        after = {i: t - banned["banned"] for i, t in seen.items()}
        print(
            "\ncc ban on node1 → in XDP's ban map on " + ", ".join(f"node{i} after {t:.2f} s" for i, t in after.items())
        )
        assert max(after.values()) < 3.0  # a local-ban poll (0.5 s) + the store's watch, with this machine's margin
        for i in (2, 3):
            b = next(
                b
                for b in json.loads(c.xg_in(f"node{i}", "ban", "list", "--json").stdout)["bans"]
                if b["source"] == lc.ATTACKER4
            )
            assert b["reason"] == "cc" and b["expires_in_s"] <= cnode.SPREAD_TTL_S + 2, b
        assert (
            c.run_in(
                "attacker", "curl", "-s", "-m", "1", "http://198.18.0.1/", "--local-port", "46100-46200", check=False
            ).returncode
            != 0
        )  # dropped on whichever node the flow lands
    finally:
        c.xg_in("node1", "cluster", "unban", lc.ATTACKER4, "--config", c.config(1), check=False)
        for i in range(1, NODES + 1):
            c.xg_in(f"node{i}", "ban", "del", lc.ATTACKER4, check=False)
    time_until(
        lambda: c.run_in("attacker", "curl", "-s", "-m", "1", "http://198.18.0.1/", check=False).returncode == 0,
        10,
        0.2,
    )


L7_CLIENT = r"""
import http.client, json, sys, time
dst, port, path, n, gap, cookie = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
sports = [int(p) for p in sys.argv[7].split(",")] if len(sys.argv) > 7 else []
out = []
for i in range(n):
    c = http.client.HTTPConnection(dst, port, timeout=3, source_address=("", sports[i]) if sports else None)
    try:
        c.request("GET", path, headers={"Connection": "close", **({"Cookie": cookie} if cookie else {})})
        r = c.getresponse()
        out.append([r.status, r.getheader("Set-Cookie") or ""])
    except OSError:
        out.append([0, ""])
    finally:
        c.close()
    time.sleep(gap)
print(json.dumps(out))
"""

L7_FILES = r"""
import json
from xdpguard.core.l7 import engine
h = engine.haproxy()
print(json.dumps({"admin": str(h.admin_socket), "config": str(h.config)}))
"""


STEER_PORT = 47000  # + i: the attacker's source port the router sends to node i (_steer)


def _steer(c: Cluster, on: bool) -> None:
    """Policy routes on the router: the attacker's TCP flow from source port STEER_PORT + i goes
    to node i. (ECMP cannot be steered by choosing ports in the lab: a veth keeps the sender's
    random per-connection hash, which the router's multipath hash then takes as it is.)"""
    for i in range(1, NODES + 1):
        table, prio = str(200 + i), str(900 + i)
        if on:
            c.run_in("router", "ip", "route", "replace", lc.PROT4, "via", lc.node_links(i)["node4"], "table", table)
            c.run_in(
                "router", "ip", "rule", "add", "priority", prio, "from", lc.ATTACKER4,
                "ipproto", "tcp", "sport", str(STEER_PORT + i), "lookup", table,
            )  # fmt: skip
        else:
            c.run_in("router", "ip", "rule", "del", "priority", prio, check=False)
            c.run_in("router", "ip", "route", "flush", "table", table, check=False)


def _l7_get(c: Cluster, path: str, n: int, gap_s: float, cookie: str = "") -> list[list]:
    """n requests from the client, a new connection each (ECMP spreads them over the nodes)."""
    argv = [sys.executable, "-c", L7_CLIENT, lc.PROT4, str(lc.HTTP_L7_PORT), path, str(n), str(gap_s), cookie]
    return json.loads(c.run_in("client", *argv, timeout=120).stdout)


def test_one_l7_policy_one_secret_and_per_source_limits_across_nodes(cluster):
    """Issue 29, item 7, in the cluster lab: the cluster's desired state declares an HTTP service
    (port 8080, /api/ limited to 20 requests per 10 s per source) and every node serves it with
    HAProxy, rendered alike from the store, with one challenge secret (the store's) and every
    stick table shared by `peers` (TLS, the nodes' certificates). One client source, a new
    connection per request, spread by ECMP over the three nodes: a cookie issued by one node
    passes on every node (never challenged again), and /api/ answers the limit once (20), not
    once per node."""
    c = cluster
    _healthy(c)
    for page in ("private/a", "api/x"):  # the pages asked for, on the backend (its http.server's directory)
        c.file(f"www/{page}").parent.mkdir(exist_ok=True)
        c.file(f"www/{page}").write_text("ok\n")
    with_http = c.file("desired-http.toml")
    with_http.write_text(lc.desired_toml() + lc.http_toml())
    c.xg_in("node1", "cluster", "apply", str(with_http), "--config", c.config(1))
    files: dict[int, dict] = {}
    try:
        files = {
            i: json.loads(c.run_in(f"node{i}", sys.executable, "-c", L7_FILES).stdout) for i in range(1, NODES + 1)
        }

        def ready() -> bool:  # every node serves it, its peer sessions to the others up
            try:
                return all(
                    runtime.command(f["admin"], "show peers", timeout=2.0).count("last_status=ESTA") >= NODES - 1
                    and all(runtime.parse_show_peers(runtime.command(f["admin"], "show peers", timeout=2.0)).values())
                    for f in files.values()
                )
            except (runtime.RuntimeApiError, OSError):
                return False

        waited = time_until(ready, 60, 0.2)
        configs = {i: Path(f["config"]).read_text() for i, f in files.items()}
        # one policy: every node's HAProxy is the same but for its own name and address among the peers
        body = {i: t[t.index("\nbackend ") :] for i, t in configs.items()}
        assert len(set(body.values())) == 1, "the nodes render different policies"
        keys = {i: [ln for ln in t.splitlines() if "proc.xg_key" in ln] for i, t in configs.items()}
        assert len({tuple(k) for k in keys.values()}) == 1 and keys[1], "the nodes sign with different secrets"
        for i, t in configs.items():
            assert f"localpeer node{i}" in t and " ssl crt " in t and "verify required" in t, t[:600]

        def served() -> dict[int, int]:
            return {
                i: next(
                    r.requests_total
                    for r in runtime.show_stat(f["admin"])
                    if r.proxy == "web_fe" and r.name == "FRONTEND"
                )
                for i, f in files.items()
            }

        # a browser passes the challenge on whichever node it lands, and then on every node
        first = _l7_get(c, "/private/a", 1, 0)[0]
        assert first[0] == 302 and first[1].startswith("xgc="), first
        cookie = first[1].split(";", 1)[0]
        before = served()
        private = _l7_get(c, "/private/a", 12, 0.02, cookie)
        mid = served()
        # one source over the limit, its requests spread over the nodes
        api = _l7_get(c, "/api/x", 60, 0.05, cookie)
        after = served()
        spread_private = {i: mid[i] - before[i] for i in files}
        spread_api = {i: after[i] - mid[i] for i in files}
        codes = [s for s, _ in api]
        answered = codes.count(200)
        per_node = sum(min(n, lc.API_LIMIT) for n in spread_api.values())  # what a table per node would answer
        print(
            f"\nHAProxy on {NODES} nodes ready {waited:.1f} s after `cluster apply`; cookie from one node, "
            f"12 requests over the nodes {spread_private}: {[s for s, _ in private]}; /api/ limit "
            f"{lc.API_LIMIT}/10 s, 60 requests over the nodes {spread_api}: {answered} answered "
            f"(a table per node: {per_node}), {codes.count(429)} × 429"
        )
        assert [s for s, _ in private] == [200] * 12, private  # no node challenged it again
        assert sum(1 for n in spread_private.values() if n) >= 2, spread_private
        assert codes.count(0) == 0 and 302 not in codes, codes
        assert sum(1 for n in spread_api.values() if n >= 5) >= 2, spread_api  # really spread over nodes
        assert per_node >= lc.API_LIMIT + 10, spread_api  # where a table per node would let more through
        # the limit, once for the cluster. Peers replicate asynchronously: a request that lands on a
        # node before the others' counts have arrived is answered. The lead's integration run at load
        # ~8 (another engineer's tests in parallel) answered 27 (spread unknown); alone at load 3.5,
        # 20. Slack 8 is still well below what a table per node answers (asserted >= 30 above).
        assert lc.API_LIMIT <= answered <= lc.API_LIMIT + 8, codes
        assert answered < per_node, (answered, per_node)
        assert codes.count(429) == 60 - answered, codes

        # a bot that never passes the challenge: one request to each node (policy routes on the
        # router). No node alone challenged it CHALLENGES_UNPASSED times; the cluster did (the
        # count is shared), and every node's `cluster run` bans it in XDP (cc)
        assert NODES >= spec.CHALLENGES_UNPASSED
        ports = [STEER_PORT + i for i in range(1, NODES + 1)]
        _steer(c, True)
        before = served()
        bot = c.run_in(
            "attacker",
            *(sys.executable, "-c", L7_CLIENT, lc.PROT4, str(lc.HTTP_L7_PORT), "/private/a"),
            *(str(NODES), "0.3", "", ",".join(map(str, ports))),
        )
        spread_bot = {i: n - before[i] for i, n in served().items()}
        assert [s for s, _ in json.loads(bot.stdout)] == [302] * NODES, bot.stdout
        assert spread_bot == {i: 1 for i in range(1, NODES + 1)}, (ports, spread_bot)  # one challenge per node
        t0 = time.monotonic()

        def cc_banned() -> set[int]:
            out = set()
            for i in range(1, NODES + 1):
                bans = json.loads(c.xg_in(f"node{i}", "ban", "list", "--json").stdout)["bans"]
                if any(b["source"] == lc.ATTACKER4 and b["reason"] == "cc" for b in bans):
                    out.add(i)
            return out

        time_until(lambda: cc_banned() == set(range(1, NODES + 1)), 15, 0.2)
        print(
            f"a bot challenged once on each node ({NODES} in all, a ban at {spec.CHALLENGES_UNPASSED}): banned in "
            f"XDP (cc) on every node {time.monotonic() - t0:.1f} s after its last request"
        )
    finally:
        _steer(c, False)
        c.xg_in("node1", "cluster", "apply", str(c.file("desired.toml")), "--config", c.config(1), check=False)
        if files:
            time_until(lambda: not any(Path(f["admin"]).exists() for f in files.values()), 30, 0.2)  # HAProxy stopped
        c.xg_in("node1", "cluster", "unban", lc.ATTACKER4, "--config", c.config(1), check=False)
        for i in range(1, NODES + 1):
            c.xg_in(f"node{i}", "ban", "del", lc.ATTACKER4, check=False)


def test_store_down_nodes_keep_enforcing_and_converge_when_it_returns(cluster):
    c = cluster
    _healthy(c)
    c.xg_in("node1", "cluster", "ban", lc.ATTACKER4, "--ttl", "120", "--config", c.config(1))
    time_until(
        lambda: c.run_in("attacker", "curl", "-s", "-m", "1", "http://198.18.0.1/", check=False).returncode != 0, 5, 0.1
    )
    data = json.loads(c.file("lab.json").read_text())
    etcd_argv = next(s["argv"] for s in data["servers"] if s["name"] == "etcd1")
    os.kill(c.pid_of("etcd1", "etcd --name"), signal.SIGKILL)
    time.sleep(2)
    # enforcing and announcing with what they have
    assert len(c.hops4()) == NODES
    assert c.run_in("attacker", "curl", "-s", "-m", "1", "http://198.18.0.1/", check=False).returncode != 0
    assert "cluster lab backend" in c.run_in("client", "curl", "-s", "-m", "3", "http://198.18.0.1/").stdout
    # a node restarted while the store is down enforces and announces its local snapshot
    victim = lc.node_links(3)["node4"]
    os.kill(c.pid_of("node3", "cluster run"), signal.SIGKILL)
    time_until(lambda: victim not in c.hops4(), 5)
    c.start_in("node3", *topology.xdpguard_argv(), "cluster", "run", "--config", c.config(3), "--duration", "900")
    back = time_until(lambda: victim in c.hops4(), 30, 0.05)
    print(f"\nnode3's agent restarted with etcd down: announcing its snapshot after {back:.2f} s")
    assert (
        c.run_in(
            "attacker", "curl", "-s", "-m", "1", "http://198.18.0.1/", "--local-port", "45000-45100", check=False
        ).returncode
        != 0
    )
    # a ban made on node2 alone while the store is down stays there: an operator's local ban is not
    # spread (`cluster ban` is the cluster-wide one; only connlimit bans of established sources
    # spread, see node.spread_local_bans and the unit tests)
    c.xg_in("node2", "ban", "add", "198.18.9.77", "--ttl", "120")
    assert c.xg_in("node1", "cluster", "status", "--config", c.config(1), check=False).returncode == 2
    time.sleep(1)
    c.start_in("etcd1", *etcd_argv)
    t0 = time.monotonic()

    def converged():
        try:
            st = c.status()
        except AssertionError:
            return False
        nodes = st["nodes"]
        return len(nodes) == NODES and all(n["in_sync"] and n["pending_writes"] == 0 for n in nodes) and st["bans"] >= 1

    t = time_until(converged, 20, 0.2)
    print(f"\netcd back: nodes converged after {time.monotonic() - t0:.2f} s (status answered in sync at {t:.2f} s)")
    assert time.monotonic() - t0 < 10

    def local_bans(i):
        return {b["source"] for b in json.loads(c.xg_in(f"node{i}", "ban", "list", "--json").stdout)["bans"]}

    time.sleep(1.5)  # three rounds of spread_local_bans
    assert "198.18.9.77" in local_bans(2) and all("198.18.9.77" not in local_bans(i) for i in (1, 3))
    c.xg_in("node2", "ban", "del", "198.18.9.77")
    c.xg_in("node1", "cluster", "unban", lc.ATTACKER4, "--config", c.config(1))


BURST = r"""
import json, random, sys, time
from xdpguard.core.desired.load import load
from xdpguard.core.cluster.store import ClusterStore, parse_desired
from xdpguard.lab import cluster as lc
d, _ = load(sys.argv[1]); n = int(sys.argv[2]); out = sys.argv[3]
st = ClusterStore(d.cluster)
rnd = random.Random(12)
base = lc.desired_toml()
for i in range(n):
    block = sorted({f"198.18.{rnd.randrange(200, 250)}.{rnd.randrange(1, 255)}/32" for _ in range(rnd.randrange(0, 20))})
    lim = rnd.choice(["", "src_pps = 1000", "src_pps = 5000, dst_pps = 100000"])
    text = base.replace("\n\n", "\nblock = " + json.dumps(block) + "\n\n", 1)
    if lim:
        text += f'[[interface.address]]\naddress = "{lc.PROT4}"\nlimits = {{ {lim} }}\n'
    spec = parse_desired("burst", text.encode())
    rev = st.put_desired(spec)
json.dump({"revision": rev, "sent": time.time(), "text": text}, open(out, "w"))
"""

CONSISTENT = r"""
import json, sys, time
from xdpguard.core import reconcile
from xdpguard.core.cluster.store import parse_desired
src, out, end = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
import os
while not os.path.exists(src) and time.monotonic() < end:
    time.sleep(0.05)
want = parse_desired("burst", json.load(open(src))["text"].encode())
ok = None
while time.monotonic() < end:
    if reconcile.export_iface("xgp0") == want:
        ok = time.time()
        break
    time.sleep(0.02)
json.dump({"consistent": ok}, open(out, "w"))
"""


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")


def test_burst_of_200_policy_changes_converges_on_every_node(cluster):
    c = cluster
    _healthy(c)
    src = c.file("burst.json")
    outs = {i: c.file(f"burst-node{i}.json") for i in range(1, NODES + 1)}
    pollers = [
        c.start_in(f"node{i}", sys.executable, "-c", CONSISTENT, str(src), str(outs[i]), "120")
        for i in range(1, NODES + 1)
    ]
    agents = {i: c.pid_of(f"node{i}", "cluster run") for i in range(1, NODES + 1)}
    cpu0 = {i: _cpu_s(pid) for i, pid in agents.items()}
    t0 = time.time()
    c.run_in("node1", sys.executable, "-c", BURST, c.config(1), "200", str(src), timeout=120)
    sent = json.loads(src.read_text())
    for p in pollers:
        p.wait(timeout=150)
    cpu = {i: _cpu_s(pid) - cpu0[i] for i, pid in agents.items()}
    idle0 = {i: _cpu_s(pid) for i, pid in agents.items()}
    time.sleep(2.0)
    idle = {i: (_cpu_s(pid) - idle0[i]) / 2.0 for i, pid in agents.items()}
    res = {i: json.loads(o.read_text())["consistent"] for i, o in outs.items()}
    assert all(res.values()), res
    worst = max(res.values()) - sent["sent"]
    print(
        f"\n200 policy changes in {sent['sent'] - t0:.2f} s; every node's maps equal the last one "
        f"{max(worst, 0):.2f} s after it was written"
    )
    print(
        "agent CPU for the 200 changes (incl. its idle loop over the same time): "
        + ", ".join(f"node{i} {v:.2f} s ({v * 5:.1f} s per 1,000 changes)" for i, v in cpu.items())
        + "; idle afterwards: "
        + ", ".join(f"node{i} {v * 100:.0f} %" for i, v in idle.items())
    )

    def same_revision():
        nodes = c.status()["nodes"]
        return all(n["applied_revision"] >= sent["revision"] for n in nodes)

    t = time_until(same_revision, 10, 0.2)
    print(f"every node reports applied revision >= {sent['revision']} (status polled {t:.2f} s later)")
    assert worst < 2.0
    # back to the lab's own policy
    c.xg_in("node1", "cluster", "apply", str(c.file("desired.toml")), "--config", c.config(1))


def test_frozen_bird_is_noticed_by_bfd(cluster):
    """SIGSTOP: the TCP session stays open, only BFD (50 ms x 6 here) notices."""
    c = cluster
    _healthy(c)
    victim = lc.node_links(3)["node4"]
    pid = int(c.file("bird-node3.pid").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        gone = time_until(lambda: victim not in c.hops4(), 5)
        print(
            f"\nBIRD of node3 frozen: gone from the router after {gone * 1000:.1f} ms "
            f"(BFD detection time {lc.BFD_INTERVAL_MS * lc.BFD_MULTIPLIER} ms)"
        )
        assert gone < 1.0  # the issue: 500 ms with BFD; the margin is for this shared machine
    finally:
        os.kill(pid, signal.SIGCONT)
    back = time_until(lambda: victim in c.hops4(), 30, 0.05)
    print(f"BIRD of node3 thawed: back after {back:.2f} s")


def test_never_fewer_than_min_nodes_announce(cluster):
    """Every backend unreachable: every node is unhealthy, yet withdrawals are taken one at a
    time under the store's lock and stop at min_nodes (1 in the lab): never zero next hops."""
    c = cluster
    _healthy(c)
    c.run_in("backend", "ip", "link", "set", "br0", "down")
    fewest, samples = NODES, []
    try:
        # probes time out (0.3 s each, 5 forwards) and fall is 2: each node decides after ~3 s
        t0 = time.monotonic()
        one_since = None
        while time.monotonic() - t0 < 20:
            n = len(c.hops4())
            samples.append(n)
            fewest = min(fewest, n)
            if n == 1:
                one_since = one_since or time.monotonic()
                if time.monotonic() - one_since > 3:
                    break
            else:
                one_since = None
            time.sleep(0.01)
        st = c.status()
        print(
            f"\nall backends down: next hops went {NODES} -> {samples[-1]} (fewest {fewest} in {len(samples)} samples); "
            f"announcing: {[n['node'] for n in st['nodes'] if n['announcing']]}"
        )
        assert fewest >= 1
        assert samples[-1] == 1
        kept = [n for n in st["nodes"] if n["announcing"]]
        assert len(kept) == 1 and "min_nodes" in kept[0]["announce_note"], kept
    finally:
        c.run_in("backend", "ip", "link", "set", "br0", "up")
    c.wait_hops(NODES, 30)


UDP_FLOWS = r"""
import json, selectors, socket, sys, time
n_flows, interval, duration, out = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
socks = []
for i in range(n_flows):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("198.18.8.10", 41000 + i))
    s.connect(("198.18.0.1", 7))
    s.setblocking(False)
    socks.append(s)
sel = selectors.DefaultSelector()
for i, s in enumerate(socks):
    sel.register(s, selectors.EVENT_READ, i)
replies = [[] for _ in socks]
sent = 0
t0 = time.monotonic()
next_send = t0
open(out + ".ready", "w").close()
while time.monotonic() - t0 < duration:
    now = time.monotonic()
    if now >= next_send:
        for s in socks:
            try:
                s.send(b"ping"); sent += 1
            except OSError:
                pass
        next_send += interval
    for key, _ in sel.select(timeout=max(0.0, next_send - time.monotonic())):
        try:
            while True:
                key.fileobj.recv(2048)
                replies[key.data].append(time.monotonic() - t0)
        except OSError:
            pass
gaps = []
for r in replies:
    pts = [0.0, *r, duration]
    gaps.append(max(b - a for a, b in zip(pts, pts[1:])))
json.dump({"sent": sent, "received": sum(len(r) for r in replies), "max_gap": gaps}, open(out, "w"))
"""


CLEAN_PACKETS = r"""
import json
from xdpguard.core import protection; from xdpguard.core.observe import stats
with protection.open_guard("xgp0") as g:
    print(json.dumps(stats.read_counts(g)[("pass", "clean")][0]))
"""


def _clean_packets(c: Cluster, i: int) -> int:
    """Packets node i's XDP passed as clean (to a protected address): what went through it."""
    return int(c.run_in(f"node{i}", sys.executable, "-c", CLEAN_PACKETS).stdout)


def test_client_barely_notices_a_node_dying(cluster):
    """UDP flows from the client (ECMP spreads them over the nodes), 5 ms apart per flow; node1's
    link goes down mid-run (its flows are lost until the router moves them), then node2's agent is
    SIGKILLed (the data path does not need it: its flows move without a loss)."""
    c = cluster
    _healthy(c)
    out = c.file("flows.json")
    before = _clean_packets(c, 1)
    prober = c.start_in("client", sys.executable, "-c", UDP_FLOWS, "24", "0.005", "5", str(out))
    time_until(lambda: Path(str(out) + ".ready").exists(), 30, 0.05)
    time.sleep(1.0)
    # the premise: node1 carries some of the flows when its link goes down (ECMP, 24 flows, 3 nodes)
    through_node1 = _clean_packets(c, 1) - before
    assert through_node1 > 0, "no flow went through node1: the test would prove nothing"
    try:
        c.run_in("node1", "ip", "link", "set", lc.NODE_IFACE, "down")
        time.sleep(1.5)
        os.kill(c.pid_of("node2", "cluster run"), signal.SIGKILL)
        prober.wait(timeout=30)
    finally:
        c.run_in("node1", "ip", "link", "set", lc.NODE_IFACE, "up")
        lc.restore_node_routes(1, c.name)
    res = json.loads(out.read_text())
    gaps = sorted(res["max_gap"])
    lost = res["sent"] - res["received"]
    print(
        f"\nnode1's link down, then node2's agent killed, under {len(gaps)} UDP flows: worst flow paused "
        f"{gaps[-1] * 1000:.0f} ms, {sum(1 for g in gaps if g > 0.05)} flows paused > 50 ms; "
        f"{lost} of {res['sent']} probes lost"
    )
    c.start_in("node2", *topology.xdpguard_argv(), "cluster", "run", "--config", c.config(2), "--duration", "900")
    c.wait_hops(NODES, 30)
    # `lost > 0` is no proof that flows went through node1 (that is asserted above, from node1's
    # own counters): the router stops using node1's next hop within milliseconds of the carrier
    # loss (BIRD's `check link on` drops the session and its routes at once), often before any of
    # node1's flows sends its next probe (5 ms apart), so 0 lost is a correct outcome.
    print(f"probes through node1 before its link went down: {through_node1}; lost while it was down: {lost}")
    # the issue: 200 ms of probe loss. Asserted loosely (the prober is one Python process on a
    # shared, at times overloaded machine, and its own stalls count as pauses); the worst is printed.
    assert lost < res["sent"] * 0.05
    assert gaps[len(gaps) // 2] < 1.0


def _router_birdc(c: Cluster, *args: str) -> str:
    return subprocess.run(
        ["birdc", "-s", str(c.file("bird-router.ctl")), *args], capture_output=True, text=True, timeout=10
    ).stdout


def _router_route4(c: Cluster) -> str:
    return c.run_in("router", "ip", "-4", "route", "show", lc.PROT4).stdout


def _flood(c: Cluster, pps: int, seconds: int) -> subprocess.Popen:
    """A spoofed UDP flood at udp/7 through the router, from 128 sources (198.18.8.128/25)."""
    return c.start_in(
        "attacker", *lc.flood_argv(pps, seconds, "--spoof", "198.18.8.128/25", "--sources", "128", name=c.name)
    )


def test_attack_escalates_upstream_and_is_withdrawn_after(cluster):
    """A spoofed UDP flood at the protective IP, spread by ECMP over the nodes: above
    lc.FLOWSPEC_PPS across the cluster the elected node announces a FlowSpec rule with the
    flood's fingerprint (udp, dport 7, traffic-rate 0) — the router's flow table holds it;
    above lc.BLACKHOLE_PPS a /32 with the RTBH community, which the router turns into a kernel
    blackhole route. Both are withdrawn once the flood has been below for the hold time."""
    c = cluster
    _healthy(c)
    leaders = [n["node"] for n in c.status()["nodes"] if n.get("escalation_leader")]
    assert len(leaders) == 1, c.status()
    t0 = time.monotonic()
    flood = _flood(c, 2 * lc.FLOWSPEC_PPS, 8)
    try:
        seen = time_until(lambda: f"{lc.PROT4}/32" in _router_birdc(c, "show", "route", "table", "rflow4"), 8, 0.02)
        table = _router_birdc(c, "show", "route", "table", "rflow4", "all")
        print(
            f"\nFlowSpec rule at the router {seen:.2f} s after a {2 * lc.FLOWSPEC_PPS} pps flood began "
            f"(threshold {lc.FLOWSPEC_PPS} pps across {NODES} nodes):\n{table}"
        )
        assert "proto 17" in table and "dport 7" in table, table
        assert "(generic, 0x80060000, 0x0)" in table, table  # traffic-rate 0
        assert "blackhole" not in _router_route4(c)
        assert len(c.hops4()) == NODES  # the plain announcement still spreads over every node
    finally:
        flood.wait(timeout=30)
    ended = time.monotonic()
    gone = time_until(
        lambda: f"{lc.PROT4}/32" not in _router_birdc(c, "show", "route", "table", "rflow4"),
        lc.ESCALATION_HOLD_S + 10,
        0.05,
    )
    print(f"FlowSpec rule withdrawn {gone:.2f} s after the flood ended (hold {lc.ESCALATION_HOLD_S} s)")
    assert gone >= lc.ESCALATION_HOLD_S - 1.0
    assert time.monotonic() - t0 < 60

    flood = _flood(c, 2 * lc.BLACKHOLE_PPS, 6)
    try:
        seen = time_until(lambda: "blackhole" in _router_route4(c), 8, 0.02)
        route = _router_birdc(c, "show", "route", f"{lc.PROT4}/32", "all")
        print(f"blackhole route at the router {seen:.2f} s after a {2 * lc.BLACKHOLE_PPS} pps flood began:\n{route}")
        assert "(65535,666)" in route, route
    finally:
        flood.wait(timeout=30)
    ended = time.monotonic()
    back = time_until(
        lambda: "blackhole" not in _router_route4(c) and len(c.hops4()) == NODES, lc.ESCALATION_HOLD_S + 15, 0.05
    )
    print(f"blackhole withdrawn, {NODES} next hops again {back:.2f} s after the flood ended")
    time_until(
        lambda: f"{lc.PROT4}/32" not in _router_birdc(c, "show", "route", "table", "rflow4"),
        lc.ESCALATION_HOLD_S + 10,
        0.05,
    )
    log = "".join(p.read_text(errors="replace") for p in (c.run_dir / f"cluster-{c.name}" / "logs").glob("*node*"))
    assert "escalated: flowspec 198.18.0.1 udp/7" in log and "escalated: blackhole 198.18.0.1" in log
    assert "escalation withdrawn: blackhole 198.18.0.1" in log
    assert ended - t0 < 120


def test_overloaded_node_prepends_rather_than_vanishes(cluster):
    """One flow (one source, one port pair: ECMP puts it on one node) above lc.OVERLOAD_PPS: that
    node says it is overloaded and keeps announcing, with its AS prepended: the router keeps its
    route as a longer path; once the flow is gone the plain paths come back on every node."""
    c = cluster
    _healthy(c)
    pps = int(1.5 * lc.OVERLOAD_PPS)
    flood = c.start_in("attacker", *lc.flood_argv(pps, 6, "--src", lc.ATTACKER4, "--sport", "40000", name=c.name))
    longer = f"BGP.as_path: {lc.NODE_AS} {lc.NODE_AS} {lc.NODE_AS} {lc.NODE_AS}"
    try:
        seen = time_until(lambda: longer in _router_birdc(c, "show", "route", "all", f"{lc.PROT4}/32"), 8, 0.02)
        routes = _router_birdc(c, "show", "route", "all", f"{lc.PROT4}/32")
        print(
            f"\nan overloaded node prepended its AS {seen:.2f} s after a {pps} pps single-flow flood began:\n{routes}"
        )
        # an overloaded node is still there, as a longer path (`seen`), and says so itself: it
        # prepends, it does not withdraw. Which nodes: the one the flow hashed to first, then others.
        # Its prepending makes the router drop it from the ECMP set, so the single flow moves to
        # another node, which is overloaded in turn and prepends too (each keeps prepending for
        # OVERLOAD_CALM_S after its load falls): in run 2 of this test all three were overloaded when
        # the status was read. So neither "exactly one node" nor "the others keep plain paths" holds
        # for a single flow; both were claims of the old docstring, never asserted.
        # The status is each node's last heartbeat: the one that prepended may not have published
        # since (CI once read every status 0.6-1.x s old, from before the prepend), so wait for one.
        said = []

        def overloaded_said() -> bool:
            said[:] = c.status()["nodes"]
            return any(n["overloaded"] for n in said)

        time_until(overloaded_said, 5, 0.1)
        nodes = said
        over = [n for n in nodes if n["overloaded"]]
        assert over and all(n["announcing"] for n in over), nodes
        assert longer in routes
        print(
            "nodes:",
            [(n["node"], n["ready"], n["reasons"], n["overloaded"]) for n in nodes],
            f"routes at the router: {routes.count('BGP.as_path:')}",
        )
    finally:
        flood.wait(timeout=30)
    back = time_until(
        lambda: longer not in _router_birdc(c, "show", "route", "all", f"{lc.PROT4}/32") and len(c.hops4()) == NODES,
        20,
        0.05,
    )
    print(f"plain paths and {NODES} next hops again {back:.2f} s after the flood ended")


LIST_SIZE = r"""
import json, sys
from xdpguard.core import protection
with protection.open_guard("xgp0") as g:
    print(json.dumps({"block": g.list_size("block")}))
"""


def test_a_100k_blocklist_reaches_every_node_through_chunks(cluster):
    """A desired interface with 100,000 block entries: too big for one etcd key (1.5 MiB), so
    the list goes into content-addressed chunks and the desired key names them. Every node's
    blocklist holds all of them; then the lab's own policy comes back and the chunks go."""
    c = cluster
    _healthy(c)
    n = 100_000
    lst = c.file("block-100k.txt")
    lst.write_text("".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(n)))
    desired = (
        c.file("desired.toml")
        .read_text()
        .replace(f'name = "{lc.NODE_IFACE}"\n', f'name = "{lc.NODE_IFACE}"\nblock_files = ["{lst}"]\n', 1)
    )
    big = c.file("desired-100k.toml")
    big.write_text(desired)
    t0 = time.monotonic()
    c.xg_in("node1", "cluster", "apply", str(big), "--config", c.config(1), timeout=300)
    put = time.monotonic() - t0

    def sizes():
        return [
            json.loads(c.run_in(f"node{i}", sys.executable, "-c", LIST_SIZE).stdout)["block"]
            for i in range(1, NODES + 1)
        ]

    t = time_until(lambda: all(s >= n for s in sizes()), 120, 0.5)
    print(f"\n{n:,} block entries: `cluster apply` {put:.2f} s, in every node's blocklist {t:.2f} s later")
    c.xg_in("node1", "cluster", "apply", str(c.file("desired.toml")), "--config", c.config(1))
    time_until(lambda: all(s == 0 for s in sizes()), 120, 0.5)
    keys = c.run_in(
        "etcd1",
        *lc.etcdctl_argv(c.name, tls=c.file("tls")),
        "get",
        "--prefix",
        "--keys-only",
        f"/xdpguard/{c.name}/state/chunks/",
    ).stdout.split()
    assert keys == [], keys  # no desired key names a chunk any more: collected
    assert "cluster lab backend" in c.run_in("client", "curl", "-s", "-m", "3", "http://198.18.0.1/").stdout
