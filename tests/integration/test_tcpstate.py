"""TCP state validation in the lab, with a real attack tool (Debian's hping3): a spoofed ACK flood
and a Xmas/FIN flood at the FORWARDED web port (tcp/80 → backend) while a real client opens a new
HTTP connection per request through the protective IP. The flood is dropped in XDP with reason
`tcpstate`, the client keeps working, and few attack packets reach the backend (counted there by
tcpdump on the flood's TCP window, 777, which no real stack uses here).

Spoofed sources stay inside 198.18.0.0/15 (hping3 -a; its --rand-source would use any address).
Every hping3 run is bounded by packet count (-c) and by time (timeout)."""

from __future__ import annotations

import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from cli_assert import FLOOD_WINDOW, CliLab, hping_flood, hping_sent, lab_up, needs_hping3, under_flood
from xdpguard.lab import topology

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing

FLOOD_COUNT = 60_000
FLOOD_TIMEOUT_S = 6
SPOOFED = ("198.18.5.5", "198.18.6.6")


# The attach grace period (XDPGUARD_TCP_GRACE; 10 s by default): the lab waits it out.
GRACE_S = 2


class Lab(CliLab):
    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path, "t", GRACE_S)

    def set_tcpstate(self, on: bool) -> None:
        code = (
            "import ipaddress; from xdpguard.core import protection\n"
            f"g = protection.open_guard('{topology.PROT_IFACE}')\n"
            f"g.set_tcpstate_address(ipaddress.ip_address('{topology.PROT4}'), {on})\n"
        )
        p = self.in_ns("prot", sys.executable, "-c", code)
        assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    needs_hping3()
    with lab_up(Lab(tmp_path_factory.mktemp("tcpstate"))) as lb:
        time.sleep(GRACE_S + 1)  # the attach grace period for connections older than it
        yield lb


def _under_flood(lab: Lab, flags: list[str]) -> tuple[dict, dict, int, int]:
    """(probe result, drops moved, attack packets seen at the backend, packets hping3 sent) for
    one flood."""
    flood = partial(hping_flood, lab, flags, SPOOFED, FLOOD_COUNT // len(SPOOFED), "u20", FLOOD_TIMEOUT_S)
    r = under_flood(lab, flood, lambda: lab.http_probe(FLOOD_TIMEOUT_S - 1.5, timeout=2), FLOOD_TIMEOUT_S)
    return r.probe, r.moved, r.at_backend, r.sent


def test_recorder_attached_and_tcp_loose_off(lab):
    p = lab.in_ns("prot", "tc", "filter", "show", "dev", topology.PROT_IFACE, "egress")
    assert "xdpguard_egress" in p.stdout and "direct-action" in p.stdout, p.stdout
    p = lab.in_ns("prot", "sysctl", "-n", "net.netfilter.nf_conntrack_tcp_loose")
    assert p.stdout.strip() == "0"


@pytest.mark.parametrize("kind,flags", [("ack", ["-A"]), ("xmas", ["-F", "-P", "-U"]), ("fin", ["-F"])])
def test_flood_at_forwarded_port_is_dropped_as_tcpstate(lab, kind, flags):
    res, moved, at_backend, _ = _under_flood(lab, flags)
    dropped = moved.get("tcpstate", 0)
    print(
        f"{kind}: client {res['ok']}/{res['sent']} ok, {res['ok'] / res['elapsed_s']:.0f} req/s, "
        f"p99 {res['p99_ms']} ms; tcpstate drops {dropped}; attack packets at the backend {at_backend}"
    )
    assert dropped >= 5000, moved
    assert at_backend <= 0.01 * dropped, (at_backend, dropped)
    assert res["sent"] > 50 and res["success_pct"] >= 95, res


def test_per_address_off_switch_leaves_the_flood_to_conntrack(lab):
    """With the step switched off for the protected address (`Guard.set_tcpstate_address`), the ACK
    flood that test_flood_at_forwarded_port_is_dropped_as_tcpstate sees dropped is not judged by
    it: not one `tcpstate` drop while the flood really runs (hping3's own count), and the switch
    back on drops it again. (The client's rate with the step on and off is a lab measurement, not
    a test: it used to be printed here.)"""
    lab.set_tcpstate(False)
    try:
        off, moved_off, _, sent_off = _under_flood(lab, ["-A"])
    finally:
        lab.set_tcpstate(True)
    assert sent_off >= 5000, sent_off
    assert moved_off.get("tcpstate", 0) == 0, moved_off
    # back on: the same flood is dropped as tcpstate again (one short burst is enough)
    before = lab.drops().get("tcpstate", 0)
    p = lab.in_ns(
        "attacker",
        "timeout",
        "10",
        "hping3",
        "-q",
        "-A",
        "-w",
        str(FLOOD_WINDOW),
        "-a",
        SPOOFED[0],
        "-p",
        str(topology.HTTP_PORT),
        "-c",
        "500",
        "-i",
        "u200",
        topology.PROT4,
        timeout=20,
    )
    sent = hping_sent(p.stderr)
    assert sent >= 400, p.stderr
    assert lab.drops().get("tcpstate", 0) - before >= 0.9 * sent


SERVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.0.1", 2222)); s.listen(1); s.settimeout(60)
c, _ = s.accept(); c.settimeout(60)
print("accepted", flush=True)
while True:
    d = c.recv(100)
    if not d:
        break
    c.sendall(d)
"""
CLIENT = """
import socket, sys
c = socket.create_connection(("198.18.0.1", 2222), timeout=5)
c.sendall(b"one"); assert c.recv(100) == b"one"
print("first", flush=True)
sys.stdin.readline()  # the test re-attaches meanwhile; the connection stays idle
c.settimeout(3)
c.sendall(b"two")
try:
    print("second", c.recv(100).decode(), flush=True)
except OSError as exc:
    print("second failed", exc, flush=True)
"""


def test_connection_older_than_the_attach_is_seeded(lab):
    """An idle connection to a local service on a protected port, opened before the attach, keeps
    working after the grace period: attach seeded it from /proc/net/tcp. (Runs last: it detaches
    and re-attaches without the lab's forwarding rules.)"""
    prot = ["ip", "netns", "exec", lab.ns("prot")]
    srv = subprocess.Popen(
        [*prot, "timeout", "60", sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    cli = None
    try:
        time.sleep(0.5)
        assert lab.in_ns("prot", *topology.xdpguard_argv(), "detach", topology.PROT_IFACE).returncode == 0
        cli = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns("client"), "timeout", "60", sys.executable, "-c", CLIENT],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
        )
        assert cli.stdout.readline().strip() == "first"
        p = lab.in_ns(
            "prot",
            *topology.xdpguard_argv(),
            "attach",
            topology.PROT_IFACE,
            "--protect",
            f"{topology.PROT4},{topology.PROT6}",
        )
        assert p.returncode == 0 and "recorded 1 existing connection" in p.stdout + p.stderr, p.stdout + p.stderr
        assert lab.in_ns("prot", *topology.xdpguard_argv(), "port", "open", "tcp", "2222").returncode == 0
        time.sleep(GRACE_S + 1)  # past the grace period: only the seeded entry admits the client now
        before = lab.drops().get("tcpstate", 0)
        cli.stdin.write("\n")
        cli.stdin.flush()
        assert cli.stdout.readline().strip() == "second two"
        assert lab.drops().get("tcpstate", 0) == before
    finally:
        for proc in (cli, srv):
            if proc is not None:
                proc.kill()
                proc.wait(timeout=10)
