"""The real server stays hidden, and only we can reach it (issue 28, part 3).

On the demo's lab (`xdpguard lab up`: client and attacker on one segment, the protector NATing
to the backend 198.18.1.2 / 2001:db8:0:2::2), everything the client and the attacker receive is
captured while they go through the demo's main scenarios plus the failure paths: every forward
(HTTP v4/v6, echo TCP/UDP), an HTTP error page, a TCP reset from a closed backend port, ICMP
port unreachable from a backend port nobody serves (v4 and v6), and a backend host that is down
(what a failed health check looks like on the wire: ICMP host unreachable from the protector).
The backend's addresses must appear nowhere in what they received: not in IP headers, not in the
headers ICMP errors quote, not in HTTP headers or bodies (packed or as text); the protector's
own addresses on the backend link not in any IP or quoted header.

The same holds when the backend's services fail while they are health-checked (the daemon's
checks on the NAT path, HAProxy's on the HTTP service), and on the cluster lab (two nodes behind
one router, ECMP: the flows spread over both).

Then `xdpguard origin-rules` is applied on the backend, and a host that reaches the backend
around the protector (a namespace wired straight to it) is refused, while clients through the
protector are still served (the toggle pattern: reaches → rules → refused; through us → served).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, IPerror, TCP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPerror6, IPv6
from scapy.utils import rdpcap

from xdpguard.lab import cluster as LC
from xdpguard.lab import topology as T

pytestmark = pytest.mark.kernel

DEAD4 = "198.18.1.99"  # on the backend link, no host: the protector's ARP fails
HIDDEN = [T.BACKEND4, T.BACKEND6, DEAD4]  # anywhere in a packet, packed or as text
# The protector's own addresses on the backend link are what SNAT shows the backend: never in a
# header the client gets (IP, quoted by ICMP). The lab's echo server deliberately answers "from
# <the peer it saw>|…", so in that payload (the application's choice) it may appear.
INTERNAL = {T.PROT_BACK4, T.PROT_BACK6}
EXTRA_FORWARDS = [
    ("tcp", "8081", f"{T.BACKEND4}:8081"),  # nothing listens: the backend resets
    ("udp", "8082", f"{T.BACKEND4}:8082"),  # nothing listens: ICMP port unreachable
    ("udp", "8082", f"[{T.BACKEND6}]:8082"),
    ("tcp", "8083", f"{DEAD4}:8083"),  # the backend host is down
    ("udp", "8084", f"{DEAD4}:8084"),
]

# The scenarios one host goes through; prints {name: outcome} as JSON. Bounded: every socket has
# a timeout and each scenario runs once.
SCENARIOS = r"""
import json, socket, sys, urllib.request, urllib.error
p4, p6 = sys.argv[1], sys.argv[2]
out = {}
def http(name, url):
    try:
        r = urllib.request.urlopen(url, timeout=3); out[name] = [r.status, r.read().decode(errors="replace")[:40]]
    except urllib.error.HTTPError as e:
        out[name] = [e.code, e.read().decode(errors="replace")[:40]]
    except OSError as e:
        out[name] = ["error", str(e)]
def talk(name, fam, kind, dst, port, timeout=3):
    s = socket.socket(fam, kind); s.settimeout(timeout)
    try:
        s.connect((dst, port))
        s.send(b"hello")
        out[name] = ["reply", s.recv(4096).decode(errors="replace")[:40]]
    except OSError as e:
        out[name] = ["error", type(e).__name__]
    finally:
        s.close()
http("http4", f"http://{p4}/")
http("http6", f"http://[{p6}]/")
http("http404", f"http://{p4}/no-such-page")
talk("echo_tcp4", socket.AF_INET, socket.SOCK_STREAM, p4, 7)
talk("echo_udp4", socket.AF_INET, socket.SOCK_DGRAM, p4, 7)
talk("echo_udp6", socket.AF_INET6, socket.SOCK_DGRAM, p6, 7)
talk("reset", socket.AF_INET, socket.SOCK_STREAM, p4, 8081)
talk("unreach_udp4", socket.AF_INET, socket.SOCK_DGRAM, p4, 8082)
talk("unreach_udp6", socket.AF_INET6, socket.SOCK_DGRAM, p6, 8082)
talk("down_tcp", socket.AF_INET, socket.SOCK_STREAM, p4, 8083, timeout=6)
talk("down_udp", socket.AF_INET, socket.SOCK_DGRAM, p4, 8084, timeout=6)
print(json.dumps(out))
"""

# The same probes, chosen by name (argv[3:]), for the health-check failures: prints {name: outcome}.
PROBES = (
    SCENARIOS.split('http("http4"')[0]
    + r"""
one = {"http4": lambda: http("http4", f"http://{p4}/"), "http6": lambda: http("http6", f"http://[{p6}]/"),
       "nat_http4": lambda: http("nat_http4", f"http://{p4}:8080/"),
       "echo_tcp4": lambda: talk("echo_tcp4", socket.AF_INET, socket.SOCK_STREAM, p4, 7),
       "echo_udp4": lambda: talk("echo_udp4", socket.AF_INET, socket.SOCK_DGRAM, p4, 7),
       "echo_udp6": lambda: talk("echo_udp6", socket.AF_INET6, socket.SOCK_DGRAM, p6, 7)}
for name in sys.argv[3:]:
    one[name]()
print(json.dumps(out))
"""
)

GET = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).status)"

CONNECT = r"""
import socket, sys
s = socket.socket(); s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("connected")
except OSError as e:
    print(type(e).__name__)
"""


def _run(argv, env, timeout=120, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv} exited {p.returncode}: {p.stderr.strip()}")
    return p


@pytest.fixture
def demo(tmp_path: Path):
    name = f"geo{os.getpid() % 100000}"
    env = {**os.environ, "XDPGUARD_LAB_NAME": name, "XDPGUARD_RUN_DIR": str(tmp_path / "run")}
    xg = [*T.xdpguard_argv()]
    rogue = f"xg-{name}-rogue"
    try:
        _run([*xg, "lab", "up"], env, timeout=300)
        yield name, env
    finally:
        subprocess.run(["ip", "netns", "del", rogue], capture_output=True)
        _run([*xg, "lab", "down"], env, check=False)
        left = (
            [n for n in os.listdir("/run/netns") if n.startswith(f"xg-{name}-")] if os.path.isdir("/run/netns") else []
        )
        assert not left, left


def _ns(name: str, role: str) -> str:
    return f"xg-{name}-{role}"


def _in(name, role, env, *argv, check=True, timeout=60) -> subprocess.CompletedProcess:
    return _run(["ip", "netns", "exec", _ns(name, role), *argv], env, timeout=timeout, check=check)


def _capture(name: str, role: str, path: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            _ns(name, role),
            "timeout",
            "120",
            "tcpdump",
            "-i",
            T.HOST_IFACE,
            "-U",
            "-n",
            "-s",
            "0",
            "-c",
            "20000",
            "-w",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = p.stderr.readline()
    assert "listening on" in line, line
    return p


def _packed(a: str) -> bytes:
    import ipaddress

    return ipaddress.ip_address(a).packed


def test_backend_address_never_reaches_client_or_attacker(demo, tmp_path: Path):
    name, env = demo
    prot = _ns(name, "prot")
    for proto, port, to in EXTRA_FORWARDS:
        _run(["ip", "netns", "exec", prot, *T.xdpguard_argv(), "forward", "add", proto, port, "--to", to], env)
    pcaps = {role: tmp_path / f"{role}.pcap" for role in ("client", "attacker")}
    caps = {role: _capture(name, role, p) for role, p in pcaps.items()}
    try:
        results = {
            role: json.loads(
                _in(name, role, env, sys.executable, "-c", SCENARIOS, T.PROT4, T.PROT6, timeout=120).stdout
            )
            for role in ("client", "attacker")
        }
        time.sleep(0.5)
    finally:
        for p in caps.values():
            p.send_signal(signal.SIGINT)
            p.wait(timeout=20)

    for role, r in results.items():  # the scenarios did what they are about
        assert r["http4"][0] == 200 and r["http6"][0] == 200 and r["http404"][0] == 404, (role, r)
        assert r["echo_tcp4"][0] == "reply" and r["echo_udp4"][0] == "reply" and r["echo_udp6"][0] == "reply", r
        assert r["reset"] == ["error", "ConnectionRefusedError"], (role, r)
        assert r["unreach_udp4"] == ["error", "ConnectionRefusedError"], (role, r)
        assert r["unreach_udp6"] == ["error", "ConnectionRefusedError"], (role, r)
        assert r["down_tcp"][0] == "error" and r["down_udp"][0] == "error", (role, r)

    for role, path in pcaps.items():
        pkts = _scan(role, path)
        assert len(pkts) > 20, (role, len(pkts))
        seen = {"http200": False, "rst": False, "icmp4_quote": False, "icmp6_quote": False, "icmp4_down": False}
        for pkt in pkts:
            if pkt.haslayer(TCP) and bytes(pkt[TCP].payload).startswith(b"HTTP/1.0 200"):
                seen["http200"] = True
            if pkt.haslayer(TCP) and pkt[TCP].flags & 0x04 and pkt.haslayer(IP) and pkt[IP].src == T.PROT4:
                seen["rst"] = True
            if pkt.haslayer(ICMP) and pkt.haslayer(IPerror) and pkt[ICMP].type == 3:
                assert pkt[IP].src == T.PROT4 and pkt[IPerror].dst == T.PROT4, pkt.show(dump=True)
                seen["icmp4_quote" if pkt[ICMP].code == 3 else "icmp4_down"] = True
            if pkt.haslayer(ICMPv6DestUnreach) and pkt.haslayer(IPerror6):
                assert pkt[IPv6].src == T.PROT6 and pkt[IPerror6].dst == T.PROT6, pkt.show(dump=True)
                seen["icmp6_quote"] = True
        assert all(seen.values()), (role, seen)


# The backend's services fail at once (what a crashed server behind a host firewall answers):
# TCP with ICMP host unreachable, UDP with ICMP port unreachable, v4 and v6.
BACKEND_DOWN = """table inet xgdown {
  chain input {
    type filter hook input priority -10; policy accept;
    tcp dport { 7, 80 } reject with icmpx type host-unreachable
    udp dport 7 reject with icmpx type port-unreachable
  }
}
"""


def _scan(role: str, path: Path, internal=INTERNAL) -> list:
    """The packets `role` received, each checked: no hidden address anywhere (packed or as text),
    no backend-side address of the protector (`internal`) in an IP header or an ICMP error's
    quoted header."""
    forbidden = [(a, _packed(a)) for a in HIDDEN] + [(a, a.encode()) for a in HIDDEN]
    pkts = rdpcap(str(path))
    for pkt in pkts:
        raw = bytes(pkt)
        for text, pattern in forbidden:
            assert pattern not in raw, f"{role} received {text} ({pattern!r}) in {pkt.summary()}"
        for layer in (IP, IPerror, IPv6, IPerror6):
            if pkt.haslayer(layer):
                assert {pkt[layer].src, pkt[layer].dst}.isdisjoint(internal), f"{role}: {pkt.summary()}"
    return pkts


def test_health_check_failures_never_show_the_backend(demo, tmp_path: Path):
    """The backend's services fail while `xdpguard run` checks them and HAProxy checks its server:
    first the backend's own ICMP errors reach the clients (un-NATed: quoting the protective IP),
    then the checks mark the backends down: the NAT drops new connections, HAProxy answers its 503
    page. Whatever client and attacker received on the way shows no backend address."""
    name, env = demo
    pcaps = {role: tmp_path / f"down-{role}.pcap" for role in ("client", "attacker")}
    daemon = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            _ns(name, "prot"),
            *T.xdpguard_argv(),
            "run",
            "--interval",
            "0.5",
            "--timeout",
            "0.3",
            "--fall",
            "2",
            "--no-detect",
            "--duration",
            "90",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    caps = {}
    try:
        probe = lambda role, *names: json.loads(
            _in(
                name,
                role,
                env,
                sys.executable,
                "-c",
                PROBES,
                T.PROT4,  # noqa: E731
                T.PROT6,
                *names,
                timeout=120,
            ).stdout
        )
        every = ("http4", "http6", "nat_http4", "echo_tcp4", "echo_udp4", "echo_udp6")
        before = probe("client", *every)
        assert all(v[0] in (200, "reply") for v in before.values()), before
        caps = {role: _capture(name, role, p) for role, p in pcaps.items()}
        p = subprocess.run(
            ["ip", "netns", "exec", _ns(name, "backend"), "nft", "-f", "-"],
            input=BACKEND_DOWN,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert p.returncode == 0, p.stderr
        first = {role: probe(role, "echo_tcp4", "echo_udp4", "echo_udp6") for role in pcaps}
        end = time.monotonic() + 40  # HAProxy: 3 failed checks 2 s apart; the daemon: fall 2 at 0.5 s
        while time.monotonic() < end:  # (until then HAProxy retries the connection: a slow 503)
            r = probe("client", "http4", "http6")
            if r["http4"][0] == 503 and r["http6"][0] == 503:
                break
            time.sleep(0.5)
        down = {role: probe(role, *every) for role in pcaps}
        time.sleep(0.5)
    finally:
        for c in caps.values():
            c.send_signal(signal.SIGINT)
            c.wait(timeout=20)
        daemon.terminate()
        log, _ = daemon.communicate(timeout=30)
    for role in pcaps:  # the failures did what they are about
        f, d = first[role], down[role]
        assert f["echo_tcp4"][0] == "error" and f["echo_tcp4"][1] != "TimeoutError", (role, f)  # the ICMP error
        assert f["echo_udp4"] == ["error", "ConnectionRefusedError"] and f["echo_udp6"][0] == "error", (role, f)
        assert d["http4"][0] == 503 and d["http6"][0] == 503, (role, d, log)  # HAProxy's page: no server left
        assert d["echo_tcp4"] == ["error", "TimeoutError"] and d["nat_http4"][0] == "error", (role, d, log)
    assert "-> down" in log, log

    for role, path in pcaps.items():
        seen = {"icmp4_host": False, "icmp4_port": False, "icmp6": False, "http503": False}
        for pkt in _scan(role, path):
            if pkt.haslayer(ICMP) and pkt.haslayer(IPerror) and pkt[ICMP].type == 3:
                assert pkt[IP].src == T.PROT4 and pkt[IPerror].dst == T.PROT4, pkt.show(dump=True)
                seen["icmp4_port" if pkt[ICMP].code == 3 else "icmp4_host"] = True
            if pkt.haslayer(ICMPv6DestUnreach) and pkt.haslayer(IPerror6):
                assert pkt[IPv6].src == T.PROT6 and pkt[IPerror6].dst == T.PROT6, pkt.show(dump=True)
                seen["icmp6"] = True
            if pkt.haslayer(TCP) and bytes(pkt[TCP].payload).startswith(b"HTTP/1.1 503"):
                seen["http503"] = True  # its headers and body are in the raw bytes scanned above
        assert all(seen.values()), (role, seen)


def test_origin_rules_refuse_whoever_goes_around_the_protector(demo):
    name, env = demo
    prot, backend, rogue = _ns(name, "prot"), _ns(name, "backend"), _ns(name, "rogue")
    # a host wired straight to the real server: it knows the hidden address and goes around us
    _run(["ip", "netns", "add", rogue], env)
    _run(["ip", "link", "add", "xgr0", "netns", backend, "type", "veth", "peer", "name", "eth0", "netns", rogue], env)
    _in(name, "backend", env, "ip", "addr", "add", "198.18.3.1/24", "dev", "xgr0")
    _in(name, "backend", env, "ip", "link", "set", "xgr0", "up")
    _run(["ip", "-n", rogue, "addr", "add", "198.18.3.2/24", "dev", "eth0"], env)
    _run(["ip", "-n", rogue, "link", "set", "eth0", "up"], env)
    _run(["ip", "-n", rogue, "link", "set", "lo", "up"], env)
    _run(["ip", "-n", rogue, "route", "add", "198.18.1.0/24", "via", "198.18.3.1"], env)

    def around() -> str:
        return _run(
            ["ip", "netns", "exec", rogue, sys.executable, "-c", CONNECT, T.BACKEND4, str(T.HTTP_PORT)], env
        ).stdout.strip()

    def through() -> str:
        return _in(name, "client", env, sys.executable, "-c", CONNECT, T.PROT4, str(T.HTTP_PORT)).stdout.strip()

    assert around() == "connected"  # without the rules the hidden server is reachable around us
    xg = ["ip", "netns", "exec", prot, *T.xdpguard_argv()]
    ipt = _run([*xg, "origin-rules", "--format", "iptables"], env).stdout
    assert f"-d {T.BACKEND4} -p tcp -m multiport --dports 7,80 -s {T.PROT_BACK4} -j ACCEPT" in ipt, ipt
    rules = _run([*xg, "origin-rules"], env).stdout
    js = json.loads(_run([*xg, "origin-rules", "--json"], env).stdout)
    assert {(s["backend"], s["proto"]) for s in js["services"]} >= {(T.BACKEND4, "tcp"), (T.BACKEND6, "udp")}
    assert all(T.PROT_BACK4 in s["sources"] or T.PROT_BACK6 in s["sources"] for s in js["services"]), js
    p = subprocess.run(
        ["ip", "netns", "exec", backend, "nft", "-f", "-"], input=rules, capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 0, (p.stderr, rules)

    assert around() == "ConnectionRefusedError"  # refused: TCP reset from the real server
    assert through() == "connected"  # clients through the protector are still served
    for url in (f"http://{T.PROT4}/", f"http://[{T.PROT6}]/"):
        r = _in(name, "client", env, sys.executable, "-c", GET, url)
        assert r.stdout.strip() == "200", (url, r.stdout, r.stderr)


@pytest.fixture
def cluster2(tmp_path: Path):
    name = f"hoc{os.getpid() % 10000}"
    env = {**os.environ, "XDPGUARD_LAB_NAME": name, "XDPGUARD_RUN_DIR": str(tmp_path / "run")}
    try:
        _run([*T.xdpguard_argv(), "lab", "up", "--nodes", "2", "--lifetime", "900"], env, timeout=400)
        yield name, env
    finally:
        _run([*T.xdpguard_argv(), "lab", "down"], env, check=False, timeout=300)
        left = (
            [n for n in os.listdir("/run/netns") if n.startswith(f"xg-{name}-")] if os.path.isdir("/run/netns") else []
        )
        assert not left, left


def test_cluster_never_shows_the_backend(cluster2, tmp_path: Path):
    """Two nodes announce the protective IP, the router spreads the flows over both (ECMP); the
    clients go through every forward, then the backend's services fail (its ICMP errors through
    either node, then the nodes' health checks withdraw them): no backend address, and no node's
    backend-side address, in anything client and attacker received."""
    name, env = cluster2
    nodes = (1, 2)
    end = time.monotonic() + 90
    while not all(len(v) == 2 for v in LC.router_next_hops(name).values()):
        assert time.monotonic() < end, LC.router_next_hops(name)
        time.sleep(0.5)
    internal = INTERNAL | {LC.node_links(i)[k] for i in nodes for k in ("back4", "back6", "mgmt4")}
    pcaps = {role: tmp_path / f"cluster-{role}.pcap" for role in ("client", "attacker")}
    caps = {role: _capture(name, role, p) for role, p in pcaps.items()}
    every = ("http4", "http6", "echo_tcp4", "echo_udp4", "echo_udp6")
    probe = lambda role, *names: json.loads(
        _in(
            name,
            role,
            env,
            sys.executable,
            "-c",
            PROBES,
            T.PROT4,
            T.PROT6,  # noqa: E731
            *names,
            timeout=120,
        ).stdout
    )
    try:
        served = {role: [probe(role, *every) for _ in range(4)] for role in pcaps}  # new source ports: both nodes
        p = subprocess.run(
            ["ip", "netns", "exec", _ns(name, "backend"), "nft", "-f", "-"],
            input=BACKEND_DOWN,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert p.returncode == 0, p.stderr
        failed = {
            role: [probe(role, "echo_tcp4", "echo_udp4", "echo_udp6", "http4") for _ in range(3)] for role in pcaps
        }
        time.sleep(0.5)
    finally:
        for c in caps.values():
            c.send_signal(signal.SIGINT)
            c.wait(timeout=20)
    for role in pcaps:
        assert all(v[0] in (200, "reply") for r in served[role] for v in r.values()), (role, served[role])
        assert all(v[0] == "error" for r in failed[role] for v in r.values()), (role, failed[role])
    for i in nodes:  # both nodes forwarded: their NAT counted connections
        out = _in(name, f"node{i}", env, "nft", "list", "counters", "table", "inet", "xdpguard").stdout
        assert any(int(n) > 0 for n in re.findall(r"packets (\d+)", out)), (i, out)
    for role, path in pcaps.items():
        pkts = _scan(role, path, internal)
        assert len(pkts) > 20, (role, len(pkts))
        seen = {"http200": False, "icmp4": False, "icmp6": False}
        for pkt in pkts:
            if pkt.haslayer(TCP) and bytes(pkt[TCP].payload).startswith(b"HTTP/1.0 200"):
                seen["http200"] = True
            if pkt.haslayer(ICMP) and pkt.haslayer(IPerror) and pkt[IPerror].dst == T.PROT4:
                seen["icmp4"] = True  # the backend's error, un-NATed by a node
            if pkt.haslayer(ICMPv6DestUnreach) and pkt.haslayer(IPerror6) and pkt[IPerror6].dst == T.PROT6:
                seen["icmp6"] = True
        assert all(seen.values()), (role, seen)
