"""The cluster lab with three etcd members (`lab up --nodes 2 --etcd 3`): losing one member,
even the one the nodes talk to, costs nothing (the nodes move to another endpoint and resync);
losing quorum leaves the nodes enforcing what they have; `lab down` leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest
from test_cluster_lab import Cluster, _leftovers, time_until

from xdpguard.lab import cluster as lc

pytestmark = pytest.mark.kernel

NODES = 2


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    run_dir = tmp_path_factory.mktemp("cluster3run")
    name = f"e{os.getpid() % 1_000_000}"
    env = {**os.environ, "XDPGUARD_LAB_NAME": name, "XDPGUARD_RUN_DIR": str(run_dir)}
    c = Cluster(name, env, run_dir, [])
    try:
        c.xg("lab", "up", "--nodes", str(NODES), "--etcd", "3", "--lifetime", "900")
        yield c
    finally:
        c.xg("lab", "down", check=False)
        for p in c.started:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    left = _leftovers(name, run_dir)
    assert not left, f"lab down left things behind: {left}"


def _banned(c: Cluster, i: int, addr: str) -> bool:
    return any(b["source"] == addr for b in json.loads(c.xg_in(f"node{i}", "ban", "list", "--json").stdout)["bans"])


def test_losing_one_member_costs_nothing_losing_quorum_keeps_enforcing(cluster3):
    c = cluster3
    c.wait_hops(NODES, 60)
    st = c.status()
    assert all(n["in_sync"] for n in st["nodes"]) and len(st["nodes"]) == NODES
    data = json.loads(c.file("lab.json").read_text())
    argv = {s["name"]: s["argv"] for s in data["servers"] if s["name"].startswith("etcd")}
    assert sorted(argv) == ["etcd1", "etcd2", "etcd3"]
    # etcd1 is every node's first endpoint: the one their watches are on
    os.kill(c.pid_of("etcd1", "etcd --name"), signal.SIGKILL)
    t0 = time.monotonic()
    c.xg_in("node1", "cluster", "ban", "198.18.9.31", "--ttl", "60", "--config", c.config(1))
    t = time_until(lambda: _banned(c, 2, "198.18.9.31"), 10, 0.1)
    print(f"\netcd1 killed: a ban from node1 reached node2 {time.monotonic() - t0:.2f} s later (seen at {t:.2f} s)")
    assert len(c.hops4()) == NODES
    # quorum lost (2 of 3 down): the nodes keep enforcing and announcing
    os.kill(c.pid_of("etcd2", "etcd --name"), signal.SIGKILL)
    time.sleep(3)
    assert len(c.hops4()) == NODES
    assert _banned(c, 2, "198.18.9.31")
    assert "cluster lab backend" in c.run_in("client", "curl", "-s", "-m", "3", "http://198.18.0.1/").stdout
    # both back: every node in sync again
    c.start_in("etcd1", *argv["etcd1"])
    c.start_in("etcd2", *argv["etcd2"])
    t0 = time.monotonic()

    def synced():
        try:
            st = c.status()
        except AssertionError:
            return False
        return len(st["nodes"]) == NODES and all(n["in_sync"] for n in st["nodes"])

    t = time_until(synced, 30, 0.2)
    print(f"etcd1 and etcd2 back: every node in sync {t:.2f} s later")
    c.xg_in("node1", "cluster", "unban", "198.18.9.31", "--config", c.config(1))
    time_until(lambda: not _banned(c, 2, "198.18.9.31"), 10, 0.2)
