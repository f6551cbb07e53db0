"""Verified clients in the lab (issue 25): a real client's TCP connection through the protective
IP survives a SYN flood spoofed FROM ITS OWN ADDRESS (Debian's hping3 -a), with a per-source SYN
limit that bans for 60 s. The flood's excess is dropped (`syn`), but the client, verified by its
established connection (knowngood.h), is banned for nothing: its request, begun before the
flood on the same connection, is answered right after it. (On 295e7bd the flood got the client
banned for 60 s, and the ban, checked before TCP state, cut its connection.)

Every hping3 run is bounded by packet count (-c) and by time (timeout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_assert import CliLab
from xdpguard.lab import topology

pytestmark = pytest.mark.kernel

FLOOD_COUNT = 620  # the review's count
FLOOD_TIMEOUT_S = 8

# One HTTP request across the flood, on one connection: its first line before (the backend's
# kernel ACKs it: the protected side's ACK verifies the client on tc egress), the end of its
# headers after. The lab's http.server waits for them without a timeout.
CLIENT_CODE = f"""
import socket, sys
s = socket.create_connection(("{topology.PROT4}", {topology.HTTP_PORT}), timeout=5)
s.sendall(b"GET / HTTP/1.0\\r\\n")
print("first ok", flush=True)
sys.stdin.readline()  # the flood is over
s.settimeout(5)
try:
    s.sendall(b"Host: lab\\r\\n\\r\\n")
    data = s.recv(200)
    print("second", "ok" if data.startswith(b"HTTP/1.0 200") else repr(data), flush=True)
except OSError as exc:
    print("second", type(exc).__name__, flush=True)
"""

SET_LIMITS = f"""
import dataclasses, ipaddress
from xdpguard.core import policy, protection
g = protection.open_guard("{topology.PROT_IFACE}")
a = ipaddress.ip_address("{topology.PROT4}")
cur = g.read_address_policy(a)
lim = dataclasses.replace(cur.limits, syn_src_pps=10, syn_src_burst=20, ban_s=60)
g.write_address_policy(a, dataclasses.replace(cur, limits=lim))
"""

READ_BANS = f"""
import json, time
from xdpguard.core import policy, protection
g = protection.open_guard("{topology.PROT_IFACE}")
print(json.dumps([b.source for b in g.read_bans(time.clock_gettime_ns(time.CLOCK_MONOTONIC))]))
"""


GRACE_S = 2  # the attach grace period of this lab (XDPGUARD_TCP_GRACE), as in test_tcpstate


class Lab(CliLab):
    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path, "v", GRACE_S)

    def py(self, role: str, code: str) -> str:
        p = self.in_ns(role, sys.executable, "-c", code)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def drops(self) -> dict[str, int]:
        p = self.in_ns("prot", *topology.xdpguard_argv(), "status", topology.PROT_IFACE, "--json")
        assert p.returncode == 0, p.stderr
        return {c["reason"]: c["packets"] for c in json.loads(p.stdout)[0]["counters"] if c["kind"] == "drop"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if shutil.which("hping3") is None:
        pytest.fail("hping3 is missing; run scripts/setup.sh") if os.environ.get("CI") else pytest.skip("no hping3")
    lb = Lab(tmp_path_factory.mktemp("verified"))
    try:
        lb.xg("lab", "up")
        time.sleep(GRACE_S + 1)  # the attach grace period (XDPGUARD_TCP_GRACE): TCP state is judged from here on
        yield lb
    finally:
        lb.xg("lab", "down", check=False)
    assert not [r for r in topology.ROLES if topology.ns_exists(lb.ns(r))]


def test_spoofed_syn_flood_from_a_clients_address_leaves_its_connection_alive(lab):
    lab.py("prot", SET_LIMITS)
    client = subprocess.Popen(["ip", "netns", "exec", lab.ns("client"), "timeout", "60", sys.executable, "-c",
                               CLIENT_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=lab.env)
    try:
        assert client.stdout.readline().split() == ["first", "ok"]
        time.sleep(0.5)  # the protected side's ACK has passed tc egress: the client is verified
        before = lab.drops()
        flood = lab.in_ns("attacker", "timeout", str(FLOOD_TIMEOUT_S), "hping3", "-q", "-S", "-a", topology.CLIENT4,
                          "-p", str(topology.HTTP_PORT), "-c", str(FLOOD_COUNT), "-i", "u2000", topology.PROT4,
                          timeout=FLOOD_TIMEOUT_S + 10)
        assert "packets transmitted" in flood.stdout + flood.stderr, flood.stderr
        after = lab.drops()
        assert after.get("syn", 0) > before.get("syn", 0)  # the per-source SYN limit held the flood
        assert topology.CLIENT4 not in json.loads(lab.py("prot", READ_BANS))  # ... and banned nobody verified
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.stdout.readline().split() == ["second", "ok"]  # the same connection, right after
        assert after.get("banned", 0) == before.get("banned", 0)
    finally:
        client.kill()
        client.communicate(timeout=10)
