"""The persistent lab behind `xdpguard lab up|down|status`: five namespaces with fixed names.

    client   eth0 198.18.0.10/24  2001:db8:0:1::10/64 ─┐
    attacker eth0 198.18.0.66/24  2001:db8:0:1::66/64 ─┤ inet: bridge br0 (the "internet")
    prot     xgp0 198.18.0.1/24   2001:db8:0:1::1/64  ─┘  ← xdpguard on xgp0; the protective IP
             xgb0 198.18.1.1/24   2001:db8:0:2::1/64  ─── backend eth0 198.18.1.2/24 2001:db8:0:2::2/64
                                                          HTTP on tcp 80, echo on tcp+udp 7

The client and attacker share one segment, so XDP on xgp0 sees both. Only connected routes exist:
nothing can leave the machine, and the client knows the protective IP only (the backend is
reached through the protector: tcp 80 is an HTTP service served by HAProxy on the protective IP,
v4 and v6; tcp 7, udp 7 and tcp 8080 (the web server again) are NATed forwards).

Unlike `netns.Lab` (per process), this lab outlives the command that built it: namespaces have
well-known names (xg-<name>-<role>, name "lab" unless $XDPGUARD_LAB_NAME), servers run detached
with a bounded lifetime, and a state file $XDPGUARD_RUN_DIR/lab.json records them. `down` works
from the names alone, so it also cleans up after a crash; `up` runs `down` first.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomli_w

from xdpguard.core import state as xgstate
from xdpguard.core.errors import UserError

from .netns import NETNS_DIR

ROLES = ("client", "attacker", "inet", "prot", "backend")
SERVER_LIFETIME_S = 3600  # servers exit by themselves after this
CMD_TIMEOUT_S = 60.0

PROT4, PROT6 = "198.18.0.1", "2001:db8:0:1::1"  # the protective IP
CLIENT4, CLIENT6 = "198.18.0.10", "2001:db8:0:1::10"
ATTACKER4, ATTACKER6 = "198.18.0.66", "2001:db8:0:1::66"
PROT_BACK4, PROT_BACK6 = "198.18.1.1", "2001:db8:0:2::1"
BACKEND4, BACKEND6 = "198.18.1.2", "2001:db8:0:2::2"
PROT_IFACE = "xgp0"  # the protector's client-facing interface, where XDP sits
HOST_IFACE = "eth0"  # client's, attacker's and backend's interface
HTTP_PORT, ECHO_PORT = 80, 7
NAT_HTTP_PORT = 8080  # the web server again, through a plain TCP forward (the NAT path)
#: (proto, port, backend) forwarded by the protector (NAT).
FORWARDS = (
    ("tcp", ECHO_PORT, f"{BACKEND4}:{ECHO_PORT}"),
    ("udp", ECHO_PORT, f"{BACKEND4}:{ECHO_PORT}"),
    ("udp", ECHO_PORT, f"[{BACKEND6}]:{ECHO_PORT}"),
    ("tcp", NAT_HTTP_PORT, f"{BACKEND4}:{HTTP_PORT}"),
)
#: The web service (tcp/80, v4 and v6) is an HTTP service: HAProxy on the protective IP (l7/),
#: behind XDP's cleansing. The lab's monitoring probe (probe.py, its User-Agent) is allowed past
#: the request limits, as an operator allows their own monitoring; it opens a connection per
#: request, hence the connection limits.
PROBE_AGENT = "xdpguard-lab-probe"
HTTP_SERVICES = (
    (
        PROT4,
        {
            "name": "www4",
            "port": HTTP_PORT,
            "backends": [f"{BACKEND4}:{HTTP_PORT}"],
            "level": "normal",
            "connections": {"concurrent": 1000, "new_per_10s": 100_000},
            "rule": [{"action": "allow", "user_agent_regex": f"^{PROBE_AGENT}/"}],
        },
    ),
    (
        PROT6,
        {
            "name": "www6",
            "port": HTTP_PORT,
            "backends": [f"[{BACKEND6}]:{HTTP_PORT}"],
            "level": "normal",
            "connections": {"concurrent": 1000, "new_per_10s": 100_000},
            "rule": [{"action": "allow", "user_agent_regex": f"^{PROBE_AGENT}/"}],
        },
    ),
)
#: What the plain NAT box of the "without xdpguard" comparison forwards (every service, by DNAT).
PLAIN_FORWARDS = (
    ("tcp", HTTP_PORT, f"{BACKEND4}:{HTTP_PORT}"),
    ("tcp", ECHO_PORT, f"{BACKEND4}:{ECHO_PORT}"),
    ("udp", ECHO_PORT, f"{BACKEND4}:{ECHO_PORT}"),
    ("tcp", HTTP_PORT, f"[{BACKEND6}]:{HTTP_PORT}"),
    ("udp", ECHO_PORT, f"[{BACKEND6}]:{ECHO_PORT}"),
)

_NAME_RE = re.compile(r"^[a-z0-9]{1,8}$")


class LabStateError(UserError):
    """The lab is not up (or only partly)."""


def lab_name() -> str:
    name = os.environ.get("XDPGUARD_LAB_NAME", "lab")
    if not _NAME_RE.match(name):
        raise UserError(f"invalid XDPGUARD_LAB_NAME '{name}' (1-8 lowercase letters or digits)")
    return name


def ns_name(role: str, name: str | None = None) -> str:
    return f"xg-{name or lab_name()}-{role}"


def namespaces(name: str | None = None) -> dict[str, str]:
    return {role: ns_name(role, name) for role in ROLES}


def state_file(name: str | None = None) -> Path:
    name = name or lab_name()
    return xgstate.run_root() / ("lab.json" if name == "lab" else f"lab-{name}.json")


def ns_exists(ns: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, ns))


def xdpguard_argv() -> list[str]:
    """How to run the xdpguard CLI of this installation."""
    exe = Path(sys.executable).parent / "xdpguard"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("xdpguard")
    return [found] if found else [sys.executable, "-c", "from xdpguard.cli.main import main; main()"]


# ---- results ----


@dataclass(frozen=True)
class ServerInfo:
    name: str
    ns: str
    pid: int
    argv: list[str]


@dataclass(frozen=True)
class LabUpResult:
    name: str
    namespaces: dict[str, str]
    servers: list[ServerInfo]
    protected: bool
    xdp_mode: str | None
    state_file: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabDownResult:
    name: str
    removed_namespaces: list[str]
    killed_pids: list[int]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabStatusResult:
    name: str
    up: bool
    namespaces: dict[str, bool]
    servers: list[dict]
    xdp: dict | None  # `xdpguard status --json` of xgp0, or None
    addresses: dict[str, str]
    state_file: str | None

    def to_dict(self) -> dict:
        return asdict(self)


# ---- commands ----


def _run(
    argv: list[str], *, check: bool = True, timeout: float = CMD_TIMEOUT_S, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and p.returncode != 0:
        detail = (p.stderr or p.stdout).strip()
        raise UserError(f"lab: {' '.join(argv)} exited {p.returncode}: {detail}")
    return p


def in_ns(ns: str, *argv: str, check: bool = True, timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return _run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout)


def xg(ns: str, *args: str, check: bool = True, timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run the xdpguard CLI inside `ns`."""
    return _run(["ip", "netns", "exec", ns, *xdpguard_argv(), *args], check=check, timeout=timeout)


def _check_addr(cidr: str) -> None:
    ip = ipaddress.ip_interface(cidr).ip
    ok = any(ip in ipaddress.ip_network(n) for n in ("198.18.0.0/15", "2001:db8::/32"))
    if not ok:
        raise UserError(f"lab: address {cidr} outside 198.18.0.0/15 and 2001:db8::/32")


def _addr(ns: str, ifname: str, cidr: str) -> None:
    _check_addr(cidr)
    argv = ["ip", "-n", ns, "addr", "add", cidr, "dev", ifname]
    if ":" in cidr:
        argv.append("nodad")
    _run(argv)


def _veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    _run(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
    for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
        _run(["ip", "-n", ns, "link", "set", ifname, "up"])
        # real checksums on every packet, as on a wire (netns.Lab does the same)
        in_ns(ns, "ethtool", "-K", ifname, "tx", "off", check=False)


# XDP_TX on veth needs the peer to receive through NAPI, i.e. to run an XDP program of its own
# (the kernel's xdp_synproxy selftest does the same): the bridge side of xgp0 gets an XDP_PASS
# program, so the SYN-ACKs of the SYN cookies (syncookie.h) leave the protector.
_PEER_XDP_PASS = (
    "import sys\nfrom bcc import BPF\n"
    "b = BPF(text=b'int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }')\n"
    "b.attach_xdp(sys.argv[1].encode(), b.load_func(b'xdp_pass', BPF.XDP), 0)\n"
)


def _peer_xdp_pass(ns: str, ifname: str) -> None:
    in_ns(ns, sys.executable, "-c", _PEER_XDP_PASS, ifname)


def _write_state(data: dict) -> None:
    path = state_file(data["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def read_state(name: str | None = None) -> dict | None:
    try:
        return json.loads(state_file(name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _start_server(ns: str, name: str, argv: list[str], log_dir: Path) -> ServerInfo:
    log = open(log_dir / f"{name}.log", "wb")
    try:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    return ServerInfo(name, ns, proc.pid, argv)


def _wait_ready(ns: str, addr: str, port: int, timeout_s: float = 10.0) -> None:
    code = (
        "import socket,sys,time\n"
        f"end=time.monotonic()+{timeout_s}\n"
        "while True:\n"
        "    try:\n"
        f"        socket.create_connection(({addr!r},{port}),0.5).close(); sys.exit(0)\n"
        "    except OSError:\n"
        "        if time.monotonic()>end: sys.exit(1)\n"
        "        time.sleep(0.1)\n"
    )
    if in_ns(ns, sys.executable, "-c", code, check=False, timeout=timeout_s + 5).returncode != 0:
        raise UserError(f"lab: nothing listens on {addr}:{port} in {ns} after {timeout_s:g} s")


def protect(name: str | None = None, *, monitor: bool = False, block_attacker: bool = False) -> str:
    """Attach xdpguard to the protector's xgp0 and add the forwarding rules; returns the XDP mode."""
    prot = ns_name("prot", name)
    args = ["attach", PROT_IFACE, "--protect", f"{PROT4},{PROT6}"]
    if monitor:
        args.append("--monitor")
    xg(prot, *args, timeout=120)
    for proto, port, to in FORWARDS:
        xg(prot, "forward", "add", proto, str(port), "--to", to)
    serve_http(name)
    if block_attacker:
        xg(prot, "block", "add", ATTACKER4, ATTACKER6)
    st = json.loads(xg(prot, "status", PROT_IFACE, "--json").stdout)
    return st[0]["mode"] if st else "?"


def serve_http(name: str | None = None, services=HTTP_SERVICES) -> None:
    """Declare the lab's HTTP services as an operator would: export the desired state, add the
    `[[interface.address.http]]` tables, apply it (HAProxy starts on the protective IP)."""
    prot = ns_name("prot", name)
    data = tomllib.loads(xg(prot, "export").stdout)
    iface = next(i for i in data["interface"] if i["name"] == PROT_IFACE)
    tables = iface.setdefault("address", [])
    for addr, svc in services:
        t = next((a for a in tables if a["address"] == addr), None)
        if t is None:
            t = {"address": addr}
            tables.append(t)
        t["http"] = [h for h in t.get("http", []) if h["name"] != svc["name"]] + [svc]
    path = state_file(name).parent / f"{name or lab_name()}-desired.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    try:
        xg(prot, "apply", "-f", str(path), timeout=120)
    finally:
        path.unlink(missing_ok=True)


BACKEND_RATE = "2mbit"  # a small real server's uplink (shape_backend)
COUNT_TABLE = "xglab"  # the backend's nft counters of marked (attack) packets


def shape_backend(name: str | None = None, rate: str = BACKEND_RATE) -> None:
    """Give the backend the limits of a small real server: its link from the protector is a
    token bucket of `rate` (tbf, 20 ms of queue: what does not fit is dropped, as on a full
    uplink), and it counts the attack-marked packets (DSCP CS1, see attack.py) that reach it
    (nft counters in the backend namespace, before anything else sees them)."""
    prot, backend = ns_name("prot", name), ns_name("backend", name)
    in_ns(
        prot, "tc", "qdisc", "replace", "dev", "xgb0", "root", "tbf", "rate", rate, "burst", "16kb", "latency", "20ms"
    )
    rules = (
        f"table inet {COUNT_TABLE} {{\n"
        "  counter attack {}\n  counter total {}\n"
        "  chain pre {\n    type filter hook prerouting priority -450; policy accept;\n"
        "    counter name total\n"
        "    ip dscp cs1 counter name attack\n    ip6 dscp cs1 counter name attack\n  }\n}\n"
    )
    _run(["ip", "netns", "exec", backend, "nft", "-f", "-"], input=rules)


PLAIN_TABLE = "xglabfwd"  # the plain forwarder of the "without xdpguard" comparison
#: The kernel's defaults, as on a box that only forwards (tcp_loose 1: conntrack adopts mid-stream TCP).
PLAIN_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.netfilter.nf_conntrack_tcp_loose": "1",
}


def plain_forward(name: str | None = None) -> None:
    """The protector WITHOUT xdpguard (detach first): the same ports forwarded to the backend by
    a plain nftables DNAT + masquerade, kernel default sysctls — a small site's NAT box."""
    prot = ns_name("prot", name)
    pre, post = [], []
    for proto, port, to in PLAIN_FORWARDS:
        fam, dst = ("ip6", PROT6) if to.startswith("[") else ("ip", PROT4)
        pre.append(f"    {fam} daddr {dst} {proto} dport {port} dnat {fam} to {to}")
        post.append(f"    ct status dnat {fam} daddr {to.rsplit(':', 1)[0].strip('[]')} masquerade")
    rules = (
        f"table inet {PLAIN_TABLE} {{\n"
        "  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n"
        + "\n".join(pre)
        + "\n  }\n  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n"
        + "\n".join(dict.fromkeys(post))
        + "\n  }\n}\n"
    )
    _run(["ip", "netns", "exec", prot, "nft", "-f", "-"], input=rules)
    for key, value in PLAIN_SYSCTLS.items():
        in_ns(prot, "sysctl", "-q", "-w", f"{key}={value}")


def plain_unforward(name: str | None = None) -> None:
    in_ns(ns_name("prot", name), "nft", "delete", "table", "inet", PLAIN_TABLE, check=False)


def backend_counts(name: str | None = None) -> dict[str, int]:
    """{"attack": marked packets the backend received, "total": every packet it received}."""
    p = in_ns(ns_name("backend", name), "nft", "-j", "list", "counters", "table", "inet", COUNT_TABLE)
    out = {}
    for item in json.loads(p.stdout)["nftables"]:
        c = item.get("counter")
        if c:
            out[c["name"]] = int(c["packets"])
    return out


def unprotect(name: str | None = None) -> bool:
    """Detach xdpguard (and its forwarding rules) from xgp0; False when nothing was attached."""
    prot = ns_name("prot", name)
    if not ns_exists(prot):
        return False
    return xg(prot, "detach", PROT_IFACE, check=False).returncode == 0


#: `lab up --small-backend`: the backend web server shaped like a small real server (issue 29):
#: this many requests at a time, each taking this long (at most 200 pages/s), instead of
#: Python's unbounded http.server
SMALL_BACKEND_WORKERS, SMALL_BACKEND_WORK_MS = 4, 20


def _web_server(life: str, www: Path, small: bool) -> list[str]:
    if small:
        return [
            "timeout",
            life,
            sys.executable,
            "-m",
            "xdpguard.lab.l7",
            "serve",
            "--port",
            str(HTTP_PORT),
            "--bind",
            "::",
            "--duration",
            life,
            "--workers",
            str(SMALL_BACKEND_WORKERS),
            "--work-ms",
            str(SMALL_BACKEND_WORK_MS),
        ]
    return [
        "timeout",
        life,
        sys.executable,
        "-m",
        "http.server",
        str(HTTP_PORT),
        "--bind",
        "::",
        "--directory",
        str(www),
    ]


def up(*, protected: bool = True, lifetime_s: float = SERVER_LIFETIME_S, small_backend: bool = False) -> LabUpResult:
    xgstate.require_root()
    name = lab_name()
    notes: list[str] = []
    if read_state(name) is not None or any(ns_exists(ns) for ns in namespaces(name).values()):
        res = down()
        notes.append(
            f"removed a previous lab first ({len(res.removed_namespaces)} namespaces, {len(res.killed_pids)} processes)"
        )
    ns = namespaces(name)
    data: dict = {"name": name, "namespaces": ns, "servers": [], "created_at": time.time(), "protected": False}
    _write_state(data)  # from here on, `down` finds everything even if we die half-way
    try:
        for role in ROLES:
            _run(["ip", "netns", "add", ns[role]])
            _run(["ip", "-n", ns[role], "link", "set", "lo", "up"])
        inet = ns["inet"]
        _run(["ip", "-n", inet, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", inet, "link", "set", "br0", "up"])
        for role, ifname, port in (
            ("client", HOST_IFACE, "xgi-cli"),
            ("attacker", HOST_IFACE, "xgi-atk"),
            ("prot", PROT_IFACE, "xgi-prot"),
        ):
            _veth(inet, port, ns[role], ifname)
            _run(["ip", "-n", inet, "link", "set", port, "master", "br0"])
        _peer_xdp_pass(inet, "xgi-prot")
        _veth(ns["prot"], "xgb0", ns["backend"], HOST_IFACE)
        for role, ifname, v4, v6 in (
            ("client", HOST_IFACE, CLIENT4, CLIENT6),
            ("attacker", HOST_IFACE, ATTACKER4, ATTACKER6),
            ("prot", PROT_IFACE, PROT4, PROT6),
        ):
            _addr(ns[role], ifname, f"{v4}/24")
            _addr(ns[role], ifname, f"{v6}/64")
        _addr(ns["prot"], "xgb0", f"{PROT_BACK4}/24")
        _addr(ns["prot"], "xgb0", f"{PROT_BACK6}/64")
        _addr(ns["backend"], HOST_IFACE, f"{BACKEND4}/24")
        _addr(ns["backend"], HOST_IFACE, f"{BACKEND6}/64")

        log_dir = state_file(name).parent / f"{name}-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        www = log_dir / "www"
        www.mkdir(exist_ok=True)
        (www / "index.html").write_text("<h1>xdpguard lab backend</h1>\n")
        life = str(int(lifetime_s))
        servers = [
            _start_server(ns["backend"], "http", _web_server(life, www, small_backend), log_dir),
            _start_server(
                ns["backend"],
                "echo",
                [sys.executable, "-m", "xdpguard.lab.echo", "serve", "--port", str(ECHO_PORT), "--duration", life],
                log_dir,
            ),
        ]
        data["servers"] = [asdict(s) for s in servers]
        _write_state(data)
        _wait_ready(ns["backend"], BACKEND4, HTTP_PORT)
        _wait_ready(ns["backend"], BACKEND4, ECHO_PORT)
        mode = None
        if protected:
            mode = protect(name)
            data["protected"] = True
            data["xdp_mode"] = mode
            _write_state(data)
    except BaseException:
        down()
        raise
    return LabUpResult(name, ns, servers, protected, mode, str(state_file(name)), notes)


def _ns_pids(ns: str) -> list[int]:
    p = _run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def _kill(pids: list[int], use_group: bool) -> list[int]:
    """TERM then KILL; returns the pids that were alive."""
    alive = []
    for pid in pids:
        try:
            (os.killpg if use_group else os.kill)(pid, signal.SIGTERM)
            alive.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(_alive(p) for p in alive):
        time.sleep(0.05)
    for pid in alive:
        if _alive(pid):
            try:
                (os.killpg if use_group else os.kill)(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return alive


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap our own children; others raise ChildProcessError
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def down() -> LabDownResult:
    """Remove the lab: detach xdpguard, kill servers, delete namespaces, pins, state. Idempotent."""
    xgstate.require_root()
    name = lab_name()
    ns = namespaces(name)
    notes: list[str] = []
    data = read_state(name) or {}
    prot = ns["prot"]
    prot_key = None
    if ns_exists(prot):
        prot_key = f"net-{os.stat(os.path.join(NETNS_DIR, prot)).st_ino}"
        if unprotect(name):
            notes.append(f"detached xdpguard from {prot}:{PROT_IFACE}")
    killed: list[int] = []
    recorded = [s["pid"] for s in data.get("servers", []) if _alive(s["pid"])]
    killed += _kill(recorded, use_group=True)
    for role in ROLES:
        if ns_exists(ns[role]):
            killed += _kill(_ns_pids(ns[role]), use_group=False)
    removed = []
    for role in reversed(ROLES):
        if ns_exists(ns[role]):
            _run(["ip", "netns", "del", ns[role]], check=False)
            removed.append(ns[role])
    if prot_key:  # what a detach that never ran would have removed
        notes += [f"removed leftover {d}" for d in xgstate.forget_netns(prot_key)]
    shutil.rmtree(state_file(name).parent / f"{name}-logs", ignore_errors=True)
    state_file(name).unlink(missing_ok=True)
    return LabDownResult(name, removed, sorted(set(killed)), notes)


def status() -> LabStatusResult:
    xgstate.require_root()
    name = lab_name()
    ns = namespaces(name)
    data = read_state(name)
    exists = {role: ns_exists(n) for role, n in ns.items()}
    servers = [{**s, "alive": _alive(s["pid"])} for s in (data or {}).get("servers", [])]
    xdp = None
    if exists["prot"]:
        p = xg(ns["prot"], "status", PROT_IFACE, "--json", check=False)
        if p.returncode == 0:
            st = json.loads(p.stdout)
            xdp = st[0] if st else None
    addresses = {
        "protective_ip": f"{PROT4}, {PROT6}",
        "client": f"{CLIENT4}, {CLIENT6}",
        "attacker": f"{ATTACKER4}, {ATTACKER6}",
        "backend (hidden)": f"{BACKEND4}, {BACKEND6}",
    }
    up_ = all(exists.values()) and bool(servers) and all(s["alive"] for s in servers)
    return LabStatusResult(
        name,
        up_,
        {ns[r]: e for r, e in exists.items()},
        servers,
        xdp,
        addresses,
        str(state_file(name)) if data is not None else None,
    )


def require_up(role: str) -> str:
    ns = ns_name(role)
    if not ns_exists(ns):
        raise LabStateError(f"the lab is not up ({ns} does not exist); run 'xdpguard lab up'")
    return ns
