"""Protective-IP forwarding with the real CLI: XDP in front, nftables NAT to hidden backends.

Topology (the client has NO route to the backend networks):
    client ns  xgc0  198.18.0.1/24, .4/24          2001:db8:0:1::1/64, ::4/64
    prot ns    xgp0  198.18.0.2/24 (protected)      2001:db8:0:1::2/64 (protected)
               xgb1  198.18.1.1/24                  2001:db8:0:11::1/64
               xgb2  198.18.2.1/24                  2001:db8:0:12::1/64
    backend1   xgb0  198.18.1.2/24                  2001:db8:0:11::2/64   echo on tcp+udp 8080
    backend2   xgb0  198.18.2.2/24                  2001:db8:0:12::2/64   echo on tcp+udp 8080
The echo reply says "from <addr it saw>|payload": with SNAT that is the protector's address on
the backend's link (198.18.1.1 → backend1, 198.18.2.1 → backend2), in routed mode the client's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from xdpguard.lab import fastpath, flood
from xdpguard.lab.netns import Lab
from cli_assert import one_line_error as _one_line_error

pytestmark = pytest.mark.kernel

PY = sys.executable
PROT4, CLIENT4, OTHER4 = "198.18.0.2", "198.18.0.1", "198.18.0.4"
PROT6, CLIENT6, OTHER6 = "2001:db8:0:1::2", "2001:db8:0:1::1", "2001:db8:0:1::4"
B = {4: {1: "198.18.1.2", 2: "198.18.2.2"}, 6: {1: "2001:db8:0:11::2", 2: "2001:db8:0:12::2"}}
SEEN_AS = {"198.18.1.1": 1, "198.18.2.1": 2, "2001:db8:0:11::1": 1, "2001:db8:0:12::1": 2}
PROT = {4: PROT4, 6: PROT6}
CLIENT = {4: CLIENT4, 6: CLIENT6}
BPORT = 8080

# N requests, one fresh socket (and source port) each; prints [{"reply", "peer"}] as JSON.
CLIENT_SCRIPT = r"""
import json, socket, sys
proto, dst, port, n, timeout, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
out = []
for i in range(n):
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        if proto == "tcp":
            s.connect((dst, port)); s.sendall(b"ping"); data = s.recv(4096); peer = s.getpeername()[0]
        else:
            s.sendto(b"ping", (dst, port)); data, addr = s.recvfrom(4096); peer = addr[0]
        out.append({"reply": data.decode(), "peer": peer})
    except OSError as exc:
        out.append({"reply": None, "peer": None, "error": str(exc)})
    finally:
        s.close()
print(json.dumps(out))
"""

# $XDPGUARD_TEST_FASTPATH=1 runs every test of this file with the forwarding fast path on.
FASTPATH_ENV = "XDPGUARD_TEST_FASTPATH"
# The fast path's sync (fastfwd.sync) every 0.2 s for at most 120 s; a round that fails (before the
# attach, after the detach) is skipped.
FAST_SYNC = r"""
import sys, time
from xdpguard.core import fastfwd
from xdpguard.core.errors import UserError
end = time.monotonic() + 120
while time.monotonic() < end:
    try:
        fastfwd.sync(sys.argv[1])
    except UserError:
        pass
    time.sleep(0.2)
"""


@dataclass
class Topo:
    lab: Lab
    client: str
    prot: str
    backends: dict[int, str]
    servers: dict[int, subprocess.Popen] = field(default_factory=dict)
    iface: str = "xgp0"

    def xg(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = ["ip", "netns", "exec", self.prot, "xdpguard", *args]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"{args} exited {p.returncode}: {p.stderr.strip()}")
        return p

    def attach(self) -> None:
        fast = os.environ.get(FASTPATH_ENV) == "1"
        self.xg("attach", self.iface, "--protect", f"{PROT4},{PROT6}", *(["--fast-forward"] if fast else []))
        self.lab.defer("detach xdpguard", self.xg, "detach", self.iface, check=False)
        if fast:
            self.fast_path_on()

    def fast_path_on(self) -> None:
        """$XDPGUARD_TEST_FASTPATH=1: every test runs with the XDP fast path on (issue 27): the
        return program on xgb1 (backend 1's side; backend 2's answers take the slow path), a bare
        XDP_PASS on the backends' ends (redirected frames need one on a veth peer), and flows
        synced from conntrack every 0.2 s, as `xdpguard run` does every second."""
        for n in self.backends:
            self.lab.run(self.backends[n], PY, "-c", fastpath.XDP_PASS_LOADER, "xgb0", timeout=60)
        self.xg("forward", "fastpath", self.iface, "--via", "xgb1")
        self.lab.popen(self.prot, PY, "-c", FAST_SYNC, self.iface, stdout=subprocess.DEVNULL)

    def start_echo(self, n: int) -> None:
        srv = self.lab.popen(
            self.backends[n],
            PY,
            "-m",
            "xdpguard.lab.echo",
            "serve",
            "--port",
            str(BPORT),
            "--duration",
            "600",
            stdout=subprocess.PIPE,
            text=True,
        )
        assert "serving" in srv.stdout.readline()
        self.servers[n] = srv

    def stop_echo(self, n: int) -> None:
        srv = self.servers.pop(n)
        os.killpg(srv.pid, signal.SIGTERM)
        srv.wait(timeout=10)

    def requests(
        self, proto: str, dst: str, port: int, n: int = 1, src: str | None = None, timeout: float = 0.7
    ) -> list[dict]:
        src = src or (CLIENT6 if ":" in dst else CLIENT4)
        p = self.lab.run(
            self.client,
            PY,
            "-c",
            CLIENT_SCRIPT,
            proto,
            dst,
            str(port),
            str(n),
            str(timeout),
            src,
            timeout=n * timeout + 20,
        )
        return json.loads(p.stdout)

    def backends_seen(self, proto: str, fam: int, port: int, n: int = 1, src: str | None = None) -> list[int | None]:
        """Which backend answered each of n requests to the protective IP (None: no answer)."""
        out = []
        for r in self.requests(proto, PROT[fam], port, n, src):
            if r["reply"] is None:
                out.append(None)
                continue
            assert r["peer"] == PROT[fam], r  # answers come from the protective IP only
            assert r["reply"].endswith("|ping"), r
            seen = r["reply"].split("|")[0].removeprefix("from ")
            out.append(SEEN_AS.get(seen, seen))
        return out

    def status_counter(self, kind: str, reason: str) -> int:
        st = json.loads(self.xg("status", self.iface, "--json").stdout)[0]
        return sum(c["packets"] for c in st["counters"] if c["kind"] == kind and c["reason"] == reason)

    def forward_list(self) -> list[dict]:
        return json.loads(self.xg("forward", "list", "--json").stdout)["rules"]

    def nft_tables(self) -> str:
        return self.lab.run(self.prot, "nft", "list", "tables").stdout

    def sysctl(self, key: str) -> str:
        return self.lab.run(self.prot, "cat", "/proc/sys/" + key.replace(".", "/")).stdout.strip()

    def count_leaks(self, src: str = OTHER4) -> None:
        """Count the packets from `src` that get past XDP, in our own nft table (xgtest, at
        prerouting, in the protector's namespace: it goes with the lab): `leaked()`."""
        self.lab.run(
            self.prot,
            "nft",
            "-f",
            "-",
            input=(
                "table inet xgtest {\n counter leaked {}\n chain in {\n  type filter hook prerouting priority -300;\n"
                f"  ip saddr {src} counter name leaked\n }}\n}}\n"
            ),
        )

    def leaked(self) -> int:
        out = self.lab.run(self.prot, "nft", "-j", "list", "counter", "inet", "xgtest", "leaked").stdout
        return json.loads(out)["nftables"][1]["counter"]["packets"]

    def udp_flood(self, dport: int, count: int, duration: float, pps: int, src: str = OTHER4) -> subprocess.Popen:
        """A UDP flood from the client's `src` at PROT4 (xdpguard.lab.flood), bounded by `count`
        packets and `duration` seconds."""
        mac = json.loads(self.lab.run(self.prot, "ip", "-j", "link", "show", self.iface).stdout)[0]["address"]
        argv = flood.command("xgc0", mac, PROT4, "--src", src, dport=dport, pps=pps, duration=duration, count=count)
        return self.lab.popen(self.client, *argv, stdout=subprocess.DEVNULL)


@pytest.fixture
def topo(lab: Lab) -> Topo:
    client, prot = lab.netns("cli"), lab.netns("prot")
    backends = {1: lab.netns("be1"), 2: lab.netns("be2")}
    lab.veth(client, "xgc0", prot, "xgp0")
    for cidr in ("198.18.0.1/24", "198.18.0.4/24", "2001:db8:0:1::1/64", "2001:db8:0:1::4/64"):
        lab.addr(client, "xgc0", cidr)
    lab.addr(prot, "xgp0", "198.18.0.2/24")
    lab.addr(prot, "xgp0", "2001:db8:0:1::2/64")
    for n, ns in backends.items():
        lab.veth(prot, f"xgb{n}", ns, "xgb0")
        lab.addr(prot, f"xgb{n}", f"198.18.{n}.1/24")
        lab.addr(prot, f"xgb{n}", f"2001:db8:0:1{n}::1/64")
        lab.addr(ns, "xgb0", f"198.18.{n}.2/24")
        lab.addr(ns, "xgb0", f"2001:db8:0:1{n}::2/64")
    # forwarding starts off, so the test sees xdpguard turn it on and restore it
    lab.sysctl(prot, "net.ipv4.ip_forward", 0)
    lab.sysctl(prot, "net.ipv6.conf.all.forwarding", 0)
    t = Topo(lab, client, prot, backends)
    t.start_echo(1)
    t.start_echo(2)
    return t


def _b(fam: int, n: int, port: int = BPORT) -> str:
    host = B[fam][n]
    return f"[{host}]:{port}" if fam == 6 else f"{host}:{port}"


@pytest.mark.parametrize("fam", [4, 6])
def test_forward_block_port_policy_and_counters(topo: Topo, fam: int):
    topo.attach()
    # the client cannot reach the hidden backend itself
    assert topo.requests("tcp", B[fam][1], BPORT)[0]["reply"] is None
    assert topo.sysctl("net.ipv4.ip_forward") == "0"
    out = topo.xg("forward", "add", "tcp", "80", "--to", _b(fam, 1)).stdout
    assert "added tcp/" in out
    topo.xg("forward", "add", "udp", "53", "--to", _b(fam, 1))
    assert topo.sysctl("net.ipv4.ip_forward") == "1" and topo.sysctl("net.ipv6.conf.all.forwarding") == "1"
    assert topo.backends_seen("tcp", fam, 80, 3) == [1, 1, 1]
    assert topo.backends_seen("udp", fam, 53, 3) == [1, 1, 1]  # recvfrom: the protective IP answered

    # a port without a rule is dropped in XDP with reason `port`
    before = topo.status_counter("drop", "port")
    assert topo.backends_seen("tcp", fam, 81) == [None]
    assert topo.backends_seen("udp", fam, 54) == [None]
    assert topo.status_counter("drop", "port") >= before + 2

    # a blocked source gets nothing; another source keeps being forwarded
    topo.xg("block", "add", CLIENT[fam])
    assert topo.backends_seen("tcp", fam, 80) == [None]
    other = OTHER6 if fam == 6 else OTHER4
    assert topo.backends_seen("tcp", fam, 80, src=other) == [1]
    topo.xg("block", "del", CLIENT[fam])
    assert topo.backends_seen("tcp", fam, 80) == [1]

    rules = {r["key"]: r for r in topo.forward_list()}
    tcp = rules[f"tcp/{PROT[fam]}/80"]
    assert tcp["packets"] > 0 and tcp["bytes"] > 0
    assert [b["health"] for b in tcp["backends"]] == ["unknown"]
    ports = json.loads(topo.xg("port", "list", "--json").stdout)["ports"]
    assert any(p["lo"] == 80 and "forward" in p["by"] for p in ports)

    # deleting the last rule restores the sysctls and removes our table
    topo.xg("forward", "del", "tcp", "80")
    assert topo.backends_seen("tcp", fam, 80) == [None]
    topo.xg("forward", "del", "udp", "53")
    assert topo.sysctl("net.ipv4.ip_forward") == "0" and topo.sysctl("net.ipv6.conf.all.forwarding") == "0"
    assert "xdpguard" not in topo.nft_tables()
    assert topo.forward_list() == []


def test_balancing_and_persistence(topo: Topo):
    topo.attach()
    topo.xg("forward", "add", "tcp", "80", "--to", f"{_b(4, 1)},{_b(4, 2)}")
    seen = topo.backends_seen("tcp", 4, 80, 20)
    assert set(seen) == {1, 2}, seen
    topo.xg("forward", "del", "tcp", "80")
    topo.xg("forward", "add", "tcp", "80", "--to", f"{_b(4, 1)},{_b(4, 2)}", "--persist", "60")
    seen = topo.backends_seen("tcp", 4, 80, 12)
    assert None not in seen and len(set(seen)) == 1, seen
    # another client may land elsewhere but also sticks
    seen_other = topo.backends_seen("tcp", 4, 80, 6, src=OTHER4)
    assert None not in seen_other and len(set(seen_other)) == 1, seen_other


def test_routed_mode_keeps_client_address(topo: Topo):
    topo.attach()
    topo.lab.route(topo.backends[1], "198.18.0.0/24", "198.18.1.1")  # replies go back via the protector
    topo.xg("forward", "add", "tcp", "80", "--to", _b(4, 1), "--preserve-client-ip")
    topo.xg("forward", "add", "udp", "80", "--to", _b(4, 1), "--preserve-client-ip")
    for proto in ("tcp", "udp"):
        assert topo.backends_seen(proto, 4, 80) == [CLIENT4]  # the backend saw the real client


def _wait_for(pred, timeout: float, step: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


@pytest.mark.serial  # a backend marked down within 3 s
def test_health_failover_return_and_backup(topo: Topo):
    topo.attach()
    topo.xg("forward", "add", "tcp", "80", "--to", f"{_b(4, 1)},{_b(4, 2)}")
    topo.xg("forward", "add", "udp", "5353", "--to", _b(4, 1), "--backup", _b(4, 2), "--udp-probe", "70696e67")
    runner = topo.lab.popen(
        topo.prot,
        "xdpguard",
        "run",
        "--interval",
        "0.5",
        "--fall",
        "2",
        "--rise",
        "1",
        "--timeout",
        "0.3",
        "--duration",
        "60",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert "health checks every" in runner.stdout.readline()

    def health() -> dict[str, str]:
        return {f"{r['key']} {b['endpoint']}": b["health"] for r in topo.forward_list() for b in r["backends"]}

    assert _wait_for(lambda: set(health().values()) == {"up"}, 5), health()
    assert set(topo.backends_seen("tcp", 4, 80, 20)) == {1, 2}
    assert topo.backends_seen("udp", 4, 5353, 3) == [1, 1, 1]  # the backup waits

    topo.stop_echo(1)
    t0 = time.monotonic()
    assert _wait_for(lambda: health()[f"tcp/{PROT4}/80 {_b(4, 1)}"] == "down", 5), health()
    took = time.monotonic() - t0
    assert took < 3.0, took  # fall 2 × interval 0.5 + timeout, plus the listing
    assert topo.backends_seen("tcp", 4, 80, 10) == [2] * 10
    assert topo.backends_seen("udp", 4, 5353, 3) == [2, 2, 2]  # the backup took over

    topo.start_echo(1)
    assert _wait_for(lambda: health()[f"tcp/{PROT4}/80 {_b(4, 1)}"] == "up", 5), health()
    assert set(topo.backends_seen("tcp", 4, 80, 20)) == {1, 2}
    assert _wait_for(lambda: topo.backends_seen("udp", 4, 5353, 1) == [1], 3)


def test_detach_removes_rules_restores_sysctls_keeps_foreign_table(topo: Topo):
    topo.lab.run(topo.prot, "nft", "add", "table", "inet", "other")
    topo.lab.run(
        topo.prot,
        "nft",
        "add",
        "chain",
        "inet",
        "other",
        "c",
        "{ type filter hook input priority 10 ; policy accept ; }",
    )
    topo.lab.run(topo.prot, "nft", "add", "rule", "inet", "other", "c", "tcp", "dport", "4242", "counter")
    foreign = topo.lab.run(topo.prot, "nft", "list", "table", "inet", "other").stdout
    topo.attach()
    topo.xg("forward", "add", "tcp", "80", "--to", _b(4, 1))
    topo.xg("forward", "add", "tcp", "443", "--to", _b(6, 2))
    assert "table inet xdpguard" in topo.nft_tables()
    assert topo.sysctl("net.ipv4.ip_forward") == "1"
    out = topo.xg("detach", topo.iface).stdout
    assert "removed 2 forwarding rule(s)" in out
    assert "xdpguard" not in topo.nft_tables()
    assert topo.sysctl("net.ipv4.ip_forward") == "0" and topo.sysctl("net.ipv6.conf.all.forwarding") == "0"
    assert topo.lab.run(topo.prot, "nft", "list", "table", "inet", "other").stdout == foreign
    assert topo.backends_seen("tcp", 4, 80) == [None]


def test_bad_input_is_one_line_exit_2_and_applies_nothing(topo: Topo):
    topo.attach()
    topo.xg("forward", "add", "tcp", "80-90", "--to", _b(4, 1))
    before_rules = topo.forward_list()
    before_nft = topo.lab.run(topo.prot, "nft", "list", "table", "inet", "xdpguard").stdout
    b1 = _b(4, 1)
    cases = [
        (("tcp", "0", "--to", b1), "out of range"),
        (("tcp", "70000", "--to", b1), "out of range"),
        (("tcp", "100-95", "--to", b1), "reversed"),
        (("tcp", "85-100", "--to", b1), "overlaps"),
        (("tcp", "100", "--to", f"{PROT4}:80"), "protected address"),
        (("tcp", "100", "--to", "198.18.1.2:xx"), "198.18.1.2:xx"),
        (("tcp", "100", "--to", "nohost:80"), "nohost"),
        (("tcp", "100", "--to", f"{b1},{_b(4, 2)}", "--weight", "1"), "weight"),
        (("tcp", "100", "--to", b1, "--protected", "198.18.9.9"), "not a protected address"),
        (("udp", "100", "--to", b1, "--udp-probe", "zz"), "hex"),
    ]
    for args, needle in cases:
        _one_line_error(topo.xg("forward", "add", *args, check=False), needle)
    _one_line_error(topo.xg("forward", "del", "udp", "80", check=False), "no forwarding rule")
    assert topo.forward_list() == before_rules
    assert topo.lab.run(topo.prot, "nft", "list", "table", "inet", "xdpguard").stdout == before_nft
    # adding the same rule again is a success that changes nothing
    assert "unchanged" in topo.xg("forward", "add", "tcp", "80-90", "--to", b1).stdout
