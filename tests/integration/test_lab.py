"""The netns lab itself: two namespaces joined by a veth pair reach each other over IPv4 and IPv6,
and close() removes everything it made."""

from __future__ import annotations

import os

import pytest

from xdpguard.lab.netns import NETNS_DIR, Lab, LabError, leftover_namespaces

pytestmark = pytest.mark.kernel


def _ping(lab: Lab, ns: str, address: str) -> None:
    result = lab.run(ns, "ping", "-c", "2", "-W", "1", address, check=False, timeout=10)
    assert result.returncode == 0, f"ping {address} from {ns} failed:\n{result.stdout}{result.stderr}"


def test_two_namespaces_ping_both_ways_and_close_removes_them() -> None:
    lab = Lab()
    try:
        a = lab.netns("lab-a")
        b = lab.netns("lab-b")
        lab.veth(a, "veth-a", b, "veth-b")
        lab.addr(a, "veth-a", "198.18.0.1/30")
        lab.addr(b, "veth-b", "198.18.0.2/30")
        lab.addr(a, "veth-a", "2001:db8:0:1::1/64")
        lab.addr(b, "veth-b", "2001:db8:0:1::2/64")

        offload = lab.run(a, "ethtool", "-k", "veth-a").stdout
        assert "tx-checksumming: off" in offload

        _ping(lab, a, "198.18.0.2")
        _ping(lab, b, "198.18.0.1")
        _ping(lab, a, "2001:db8:0:1::2")
        _ping(lab, b, "2001:db8:0:1::1")

        names = lab.namespaces
        assert all(os.path.exists(os.path.join(NETNS_DIR, name)) for name in names)
    finally:
        lab.close()

    assert not any(os.path.exists(os.path.join(NETNS_DIR, name)) for name in names)
    assert leftover_namespaces(pid=os.getpid()) == []
    lab.close()  # idempotent


def test_close_tolerates_resources_already_gone(lab: Lab) -> None:
    ns = lab.netns("gone")
    peer = lab.netns("peer")
    lab.veth(ns, "v0", peer, "v1")
    lab.sysctl(ns, "net.ipv4.ip_forward", 1)
    assert lab.run(ns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    sleeper = lab.popen(ns, "sleep", "60")
    # Pull resources out from under the lab: its undos must not raise.
    lab._cmd(["ip", "netns", "del", ns])
    lab.close()
    assert sleeper.poll() is not None
    assert leftover_namespaces(pid=os.getpid()) == []


def test_refuses_foreign_namespaces_and_addresses(lab: Lab) -> None:
    ns = lab.netns("guard")
    with pytest.raises(LabError):
        lab.addr("not-ours", "lo", "198.18.0.1/32")
    with pytest.raises(LabError):
        lab.addr(ns, "lo", "10.0.0.1/8")
    with pytest.raises(LabError):
        lab.route(ns, "default", "192.168.1.1")
    with pytest.raises(LabError):
        lab.sysctl(ns, "kernel.panic", 0)
    with pytest.raises(LabError):
        lab.veth(ns, "a-name-longer-than-15", ns, "x")
