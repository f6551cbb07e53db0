"""The cluster lab behind `xdpguard lab up --nodes N`: N protector nodes behind one router.

    client   eth0 198.18.8.10/24 ─┐ br-up (in the router)  router 198.18.8.1/24 2001:db8:8::1/64
    attacker eth0 198.18.8.66/24 ─┘                         BIRD: ECMP (merge paths), BFD, AS 65000
                                                            fib_multipath_hash_policy=1
    router xgr-n<i> 198.18.<16+i>.1/24 2001:db8:<100+i>::1/64 ─── node<i> xgp0 .2 / ::2  (XDP here)
    node<i>  lo 198.18.0.1/32 2001:db8:0:1::1/128 (the protective IP, on every node)
             BIRD AS 65001 announcing it (identical attributes on every node), BFD 20 ms × 3
             `xdpguard cluster run` (realise from etcd, bans, health → BGP)
             xgb0 198.18.1.<10+i>/24 ─── br0 in backend: 198.18.1.2/24 2001:db8:0:2::2/64 (HTTP 80, echo 7)
             xgm0 198.18.4.<10+i>/24 ─── br-mgmt (in the router, no address) ─── etcd1 198.18.4.2:2379

etcd speaks TLS only and wants a client certificate (--client-cert-auth), to clients and to its
peers: `up` makes a throwaway CA, a certificate for the etcd members and one per node (and one
for the lab itself) with the openssl CLI, in $XDPGUARD_RUN_DIR/cluster-<lab>/tls/ (0700, keys
0600); `down` removes them with the rest.

Everything is in 198.18.0.0/15 and 2001:db8::/32; no namespace has a default route. Names:
xg-<lab>-router, xg-<lab>-node<i>, xg-<lab>-etcd1, xg-<lab>-client, -attacker, -backend. Files
(BIRD configs and sockets, node configs, etcd data, logs) live in $XDPGUARD_RUN_DIR/cluster-<lab>/.
`down` works from the names alone (it also cleans up after a crash): it stops every process in
those namespaces, detaches xdpguard, deletes the namespaces, pins, records and files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xdpguard.core import state as xgstate
from xdpguard.core.errors import UserError

from . import flood
from . import topology as topo
from .netns import NETNS_DIR

MAX_NODES = 8
ROUTER_AS, NODE_AS = 65000, 65001
PROT4, PROT6 = topo.PROT4, topo.PROT6
CLIENT4, CLIENT6 = "198.18.8.10", "2001:db8:8::10"
ATTACKER4, ATTACKER6 = "198.18.8.66", "2001:db8:8::66"
ROUTER_UP4, ROUTER_UP6 = "198.18.8.1", "2001:db8:8::1"
BACKEND4, BACKEND6 = topo.BACKEND4, topo.BACKEND6
ETCD4 = "198.18.4.2"  # etcd1; etcd<k> is 198.18.4.<1+k>
ETCD_URL = f"https://{ETCD4}:2379"
MAX_ETCD = 3
TLS_DAYS = 2  # the lab's certificates outlive any lab (--lifetime is at most a day)


def etcd_addr(k: int) -> str:
    return f"198.18.4.{1 + k}"


def etcd_urls(members: int) -> list[str]:
    return [f"https://{etcd_addr(k)}:2379" for k in range(1, members + 1)]


NODE_IFACE = topo.PROT_IFACE  # "xgp0": the node's uplink, where XDP sits
# BFD: 50 ms x 6 = 300 ms to notice a frozen node. 20 ms x 3 flapped here: BIRD's BFD is a user
# process, and on a shared 2-core machine a 60 ms scheduling stall is not rare.
BFD_INTERVAL_MS, BFD_MULTIPLIER = 50, 6
# Upstream escalation in the lab: a FlowSpec rule above 4 kpps to one protected address across
# the cluster, a blackhole route above 15 kpps; withdrawn after 3 s below (short, for the tests).
FLOWSPEC_PPS, BLACKHOLE_PPS, ESCALATION_HOLD_S = 4000, 15000, 3
OVERLOAD_PPS = 6000  # one node receiving more prepends its AS path (x3)
AGENT_LIFETIME_S = topo.SERVER_LIFETIME_S
HTTP_L7_PORT = 8080  # http_toml: the cluster's HTTP service (HAProxy on every node), beside the DNAT of port 80
API_LIMIT = 20  # http_toml: requests per 10 s per source on /api/

FIXED_ROLES = ("router", "etcd1", "etcd2", "etcd3", "client", "attacker", "backend")


def node_links(i: int) -> dict[str, str]:
    """Addresses of node i's router link, backend link and management link."""
    return {
        "router4": f"198.18.{16 + i}.1",
        "node4": f"198.18.{16 + i}.2",
        "router6": f"2001:db8:{0x100 + i:x}::1",
        "node6": f"2001:db8:{0x100 + i:x}::2",
        "back4": f"198.18.1.{10 + i}",
        "back6": f"2001:db8:0:2::{10 + i:x}",
        "mgmt4": f"198.18.4.{10 + i}",
    }


def roles(nodes: int, etcd: int = 1) -> list[str]:
    return [
        "router",
        *[f"etcd{k}" for k in range(1, etcd + 1)],
        "client",
        "attacker",
        "backend",
        *[f"node{i}" for i in range(1, nodes + 1)],
    ]


def run_dir(name: str | None = None) -> Path:
    return xgstate.run_root() / f"cluster-{name or topo.lab_name()}"


def state_file(name: str | None = None) -> Path:
    return run_dir(name) / "lab.json"


def node_config_path(i: int, name: str | None = None) -> Path:
    return run_dir(name) / f"node{i}.toml"


def tls_dir(name: str | None = None) -> Path:
    return run_dir(name) / "tls"


def tls_files(who: str, name: str | None = None) -> dict[str, str]:
    """CA, certificate and key of `who` (etcd, node<i>, lab) in the lab's TLS directory."""
    t = tls_dir(name)
    return {"ca": str(t / "ca.crt"), "cert": str(t / f"{who}.crt"), "key": str(t / f"{who}.key")}


def etcdctl_argv(name: str | None = None, endpoint: str = ETCD_URL, tls: Path | None = None) -> list[str]:
    """etcdctl against the lab's etcd, with the lab's own client certificate (in `tls`, default
    the lab's TLS directory under $XDPGUARD_RUN_DIR)."""
    t = tls if tls is not None else tls_dir(name)
    return [
        "etcdctl",
        "--endpoints",
        endpoint,
        "--cacert",
        str(t / "ca.crt"),
        "--cert",
        str(t / "lab.crt"),
        "--key",
        str(t / "lab.key"),
    ]


def _openssl(t: Path, *args: str) -> None:
    p = subprocess.run(["openssl", *args], cwd=t, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"lab: openssl {args[0]} failed: {last}")


def make_tls(name: str, nodes: int) -> Path:
    """A throwaway CA; a certificate for the etcd members (server and client use: etcd's gateway
    and its peers connect with it), one per node and one for the lab (client use). Keys 0600."""
    if shutil.which("openssl") is None:
        raise UserError("lab: openssl not found: run scripts/setup.sh (Debian openssl)")
    t = tls_dir(name)
    t.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(t, 0o700)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    old = os.umask(0o077)
    try:
        _openssl(
            t,
            "req",
            "-x509",
            *ec,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            str(TLS_DAYS),
            "-subj",
            f"/CN=xdpguard cluster lab {name} CA",
        )
        sans = ",".join(f"IP:{etcd_addr(k)}" for k in range(1, MAX_ETCD + 1)) + ",IP:127.0.0.1"
        # client certificates carry no CommonName: with user/password auth enabled, etcd 3.4's HTTP
        # gateway refuses a client certificate that has one ("CommonName ... will be ignored")
        leaves = {
            "etcd": ("/CN=xdpguard-lab-etcd", f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={sans}\n"),
            "lab": ("/O=xdpguard lab/OU=lab", "extendedKeyUsage=clientAuth\n"),
            **{
                # serverAuth too: a node's HAProxy is a TLS server to the other nodes' peers
                f"node{i}": (f"/O=xdpguard lab/OU=node{i}", "extendedKeyUsage=serverAuth,clientAuth\n")
                for i in range(1, nodes + 1)
            },
        }
        for who, (subj, ext) in leaves.items():
            (t / f"{who}.ext").write_text(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n" + ext
            )
            _openssl(t, "req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", subj)
            _openssl(
                t,
                "x509",
                "-req",
                "-in",
                f"{who}.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                f"{who}.crt",
                "-days",
                str(TLS_DAYS),
                "-extfile",
                f"{who}.ext",
            )
            (t / f"{who}.csr").unlink()
            (t / f"{who}.ext").unlink()
    finally:
        os.umask(old)
    for f in t.glob("*.key"):
        os.chmod(f, 0o600)
    return t


def read_state(name: str | None = None) -> dict | None:
    try:
        return json.loads(state_file(name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_state(data: dict) -> None:
    p = state_file(data["name"])
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(p)


# ---- configs ----


def desired_toml() -> str:
    """The cluster's desired state the lab puts into etcd: the protective IP on xgp0 of every node,
    forwarded to the hidden backend as in the single-box lab."""
    fwd = "".join(
        f'[[interface.forward]]\nproto = "{proto}"\nports = "{port}"\nprotected = "{prot}"\nto = ["{to}"]\n\n'
        for proto, port, to, prot in (
            ("tcp", topo.HTTP_PORT, f"{BACKEND4}:{topo.HTTP_PORT}", PROT4),
            ("tcp", topo.ECHO_PORT, f"{BACKEND4}:{topo.ECHO_PORT}", PROT4),
            ("udp", topo.ECHO_PORT, f"{BACKEND4}:{topo.ECHO_PORT}", PROT4),
            ("tcp", topo.HTTP_PORT, f"[{BACKEND6}]:{topo.HTTP_PORT}", PROT6),
            ("udp", topo.ECHO_PORT, f"[{BACKEND6}]:{topo.ECHO_PORT}", PROT6),
        )
    )
    return f'[[interface]]\nname = "{NODE_IFACE}"\nprotect = ["{PROT4}", "{PROT6}"]\n\n' + fwd


def http_toml(port: int = HTTP_L7_PORT) -> str:
    """The cluster's HTTP service as `[[interface.address.http]]` (appended to desired_toml by
    the tests that want HAProxy on the nodes): the protective IPv4 address on `port`, passed to
    the hidden backend's web server; /private/ always challenged, /api/ limited per source to
    API_LIMIT requests per 10 s (429 beyond, no punishment)."""
    return (
        f'[[interface.address]]\naddress = "{PROT4}"\n\n'
        f'[[interface.address.http]]\nname = "web"\nport = {port}\nbackends = ["{BACKEND4}:{topo.HTTP_PORT}"]\n'
        'level = "normal"\n\n'
        '[[interface.address.http.rule]]\naction = "challenge"\npath_prefix = "/private/"\n\n'
        f'[[interface.address.http.limit]]\nprefix = "/api/"\nrequests = {API_LIMIT}\nwindow = 10\naction = "deny"\n'
        "punish = 0\n"
    )


def node_toml(i: int, name: str, min_nodes: int = 1, etcd: int = 1, nodes: int = 1) -> str:
    d = run_dir(name)
    ln = node_links(i)
    tls = tls_files(f"node{i}", name)
    peers = [f"node{k}={node_links(k)['mgmt4']}" for k in range(1, max(nodes, i) + 1)]
    return (
        f"# node{i} of cluster lab '{name}' (written by xdpguard lab up --nodes)\n"
        "[daemon]\nhealth_interval = 0.5\nhealth_timeout = 0.3\nrise = 2\nfall = 2\n\n"
        f'[cluster]\nname = "{name}"\nnode = "node{i}"\nendpoints = {json.dumps(etcd_urls(etcd))}\nnode_ttl = 3\n'
        "resync_interval = 300\n"
        f"ca = {json.dumps(tls['ca'])}\ncert = {json.dumps(tls['cert'])}\nkey = {json.dumps(tls['key'])}\n"
        "# what the store may ask of this node: protect the protective IP, forward to the backends\n"
        f'protect = ["{PROT4}/32", "{PROT6}/128"]\nbackends = ["198.18.1.0/24", "2001:db8:0:2::/64"]\n'
        "# HAProxy's stick tables shared by every node (over TLS with the node's certificate)\n"
        f"peers = {json.dumps(peers)}\n\n"
        f'[bgp]\nlocal_as = {NODE_AS}\nrouter_id = "{ln["node4"]}"\n'
        f'neighbors = [{{ address = "{ln["router4"]}", as = {ROUTER_AS} }}, '
        f'{{ address = "{ln["router6"]}", as = {ROUTER_AS} }}]\n'
        f'announce = ["{PROT4}", "{PROT6}"]\nbfd = true\nbfd_interval = {BFD_INTERVAL_MS}\n'
        f"bfd_multiplier = {BFD_MULTIPLIER}\nhold = 3\nmin_nodes = {min_nodes}\n"
        f"flowspec_pps = {FLOWSPEC_PPS}\nblackhole_pps = {BLACKHOLE_PPS}\nescalation_hold = {ESCALATION_HOLD_S}\n"
        f"overload_pps = {OVERLOAD_PPS}\n"
        'require_routes = ["198.18.8.0/24", "2001:db8:8::/64"]\n'
        f'bird_config = "{d}/bird-node{i}.conf"\nbird_socket = "{d}/bird-node{i}.ctl"\n'
        'liveness_interface = "xgvip0"\n'
    )


def router_bird_conf(nodes: int) -> str:
    """The upstream router: ECMP over the nodes' announcements; a route with the RTBH community
    (65535:666) becomes a kernel blackhole route that wins; FlowSpec rules are kept in its flow
    tables (Linux cannot enforce them: the table is what a test checks)."""
    L = [
        "# BIRD of the cluster lab's router: learns the protective IP from every node, installs ECMP",
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
        f"router id {ROUTER_UP4};",
        "flow4 table rflow4;",
        "flow6 table rflow6;",
        "filter xg_rtbh { if (65535,666) ~ bgp_community then { bgp_local_pref = 1000; dest = RTD_BLACKHOLE; } "
        "accept; }",
        "protocol device { scan time 10; }",
        "protocol kernel k4 { ipv4 { export all; import none; }; merge paths on; }",
        "protocol kernel k6 { ipv6 { export all; import none; }; merge paths on; }",
        "protocol bfd rbfd {",
        f'  interface "xgr-n*" {{ min rx interval {BFD_INTERVAL_MS} ms; min tx interval {BFD_INTERVAL_MS} ms; '
        f"idle tx interval 300 ms; multiplier {BFD_MULTIPLIER}; }};",
        "}",
        f"template bgp xgnode {{ local as {ROUTER_AS}; bfd on; check link on; hold time 3; connect retry time 1; "
        "error wait time 1, 5; }",
    ]
    for i in range(1, nodes + 1):
        ln = node_links(i)
        L += [
            f"protocol bgp node{i}v4 from xgnode {{ neighbor {ln['node4']} as {NODE_AS}; "
            "ipv4 { import filter xg_rtbh; export none; }; flow4 { table rflow4; import all; export none; }; }",
            f"protocol bgp node{i}v6 from xgnode {{ neighbor {ln['node6']} as {NODE_AS}; "
            "ipv6 { import filter xg_rtbh; export none; }; flow6 { table rflow6; import all; export none; }; }",
        ]
    return "\n".join(L) + "\n"


# ---- results ----


@dataclass(frozen=True)
class ClusterUpResult:
    name: str
    nodes: int
    namespaces: dict[str, str]
    servers: list[dict]
    next_hops: dict[str, list[str]]
    run_dir: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClusterStatusResult:
    name: str
    up: bool
    nodes: int
    namespaces: dict[str, bool]
    servers: list[dict]
    next_hops: dict[str, list[str]]
    run_dir: str | None

    def to_dict(self) -> dict:
        return asdict(self)


# ---- helpers ----


def _start(ns: str, name: str, argv: list[str], log_dir: Path) -> dict:
    s = topo._start_server(ns, name, argv, log_dir)
    return asdict(s)


def router_next_hops(name: str | None = None) -> dict[str, list[str]]:
    """The router's kernel next hops towards the protective IP, per family."""
    out = {}
    router = topo.ns_name("router", name)
    for fam, dst in (("4", PROT4), ("6", PROT6)):
        p = topo._run(["ip", f"-{fam}", "-n", router, "-j", "route", "show", dst], check=False)
        hops = []
        try:
            for r in json.loads(p.stdout or "[]"):
                if r.get("gateway"):
                    hops.append(r["gateway"])
                for nh in r.get("nexthops", []):
                    hops.append(nh["gateway"])
        except (ValueError, KeyError):
            pass
        out[dst] = sorted(hops)
    return out


def flood_argv(pps: int, seconds: float, *source: str, name: str | None = None) -> list[str]:
    """A spoofed UDP flood at the protective IP's udp/7 from the attacker through the router
    (xdpguard.lab.flood), bounded by pps × seconds packets and by `seconds`; `source` is its
    --spoof/--sources or --src/--sport. To run in the attacker's namespace."""
    link = topo._run(["ip", "-n", topo.ns_name("router", name), "-j", "link", "show", "xgu-atk"])
    mac = json.loads(link.stdout)[0]["address"]
    return flood.command("eth0", mac, PROT4, *source, dport=7, pps=pps, duration=seconds)


def wait_next_hops(n: int, name: str | None = None, timeout_s: float = 60.0) -> dict[str, list[str]]:
    end = time.monotonic() + timeout_s
    while True:
        hops = router_next_hops(name)
        if all(len(h) == n for h in hops.values()) or time.monotonic() > end:
            return hops
        time.sleep(0.2)


def restore_node_routes(i: int, name: str | None = None) -> None:
    """Node i's routes back to the clients' segment. The kernel deletes a route through an
    interface that goes down; after `ip link set xgp0 up` call this again (the tests do)."""
    n, ln = topo.ns_name(f"node{i}", name), node_links(i)
    topo._run(["ip", "-n", n, "route", "replace", "198.18.8.0/24", "via", ln["router4"]])
    topo._run(["ip", "-6", "-n", n, "route", "replace", "2001:db8:8::/64", "via", ln["router6"]])


def _wait_etcd(ns: str, url: str = ETCD_URL, timeout_s: float = 30.0, name: str | None = None) -> None:
    f = tls_files("lab", name)
    code = (
        "import json,ssl,sys,time,urllib.request\n"
        f"ctx=ssl.create_default_context(cafile={f['ca']!r}); ctx.load_cert_chain({f['cert']!r}, {f['key']!r})\n"
        f"end=time.monotonic()+{timeout_s}\n"
        "while True:\n"
        "    try:\n"
        f"        r=urllib.request.urlopen(urllib.request.Request('{url}/v3/maintenance/status',"
        "data=b'{}',method='POST'),timeout=1,context=ctx); json.load(r); sys.exit(0)\n"
        "    except Exception:\n"
        "        if time.monotonic()>end: sys.exit(1)\n"
        "        time.sleep(0.2)\n"
    )
    if topo.in_ns(ns, sys.executable, "-c", code, check=False, timeout=timeout_s + 5).returncode != 0:
        raise UserError(f"lab: etcd in {ns} does not answer on {url} after {timeout_s:g} s")


def _require_tools() -> None:
    missing = [t for t in ("bird", "birdc", "etcd", "openssl") if shutil.which(t) is None]
    if missing:
        raise UserError(
            f"lab: {', '.join(missing)} not found: run scripts/setup.sh (Debian bird2, etcd-server, openssl)"
        )


def exists(name: str | None = None) -> bool:
    name = name or topo.lab_name()
    return (
        read_state(name) is not None
        or topo.ns_exists(topo.ns_name("router", name))
        or topo.ns_exists(topo.ns_name("node1", name))
    )


# ---- up / down / status ----


def etcd_argv(k: int, members: int, data_dir: Path, life: str) -> list[str]:
    """etcd member k: TLS with client certificates for clients and peers alike."""
    a = etcd_addr(k)
    t = data_dir / "tls"
    cluster = ",".join(f"etcd{j}=https://{etcd_addr(j)}:2380" for j in range(1, members + 1))
    return [
        "timeout",
        life,
        "etcd",
        "--name",
        f"etcd{k}",
        "--data-dir",
        str(data_dir / f"etcd{k}"),
        "--listen-client-urls",
        f"https://{a}:2379,https://127.0.0.1:2379",
        "--advertise-client-urls",
        f"https://{a}:2379",
        "--listen-peer-urls",
        f"https://{a}:2380",
        "--initial-advertise-peer-urls",
        f"https://{a}:2380",
        "--initial-cluster",
        cluster,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        f"xg-{data_dir.name}",
        "--cert-file",
        str(t / "etcd.crt"),
        "--key-file",
        str(t / "etcd.key"),
        "--trusted-ca-file",
        str(t / "ca.crt"),
        "--client-cert-auth",
        "--peer-cert-file",
        str(t / "etcd.crt"),
        "--peer-key-file",
        str(t / "etcd.key"),
        "--peer-trusted-ca-file",
        str(t / "ca.crt"),
        "--peer-client-cert-auth",
        "--log-level",
        "warn",
        "--logger",
        "zap",
    ]


def up(
    nodes: int, *, lifetime_s: float = AGENT_LIFETIME_S, min_nodes: int = 1, etcd: int = 1, wait_s: float = 60.0
) -> ClusterUpResult:
    xgstate.require_root()
    if not 1 <= nodes <= MAX_NODES:
        raise UserError(f"--nodes must be 1 to {MAX_NODES}, got {nodes}")
    if etcd not in (1, MAX_ETCD):
        raise UserError(f"--etcd must be 1 or {MAX_ETCD} members, got {etcd}")
    _require_tools()
    name = topo.lab_name()
    notes: list[str] = []
    if exists(name):
        res = down()
        notes.append(f"removed a previous cluster lab first ({len(res['removed_namespaces'])} namespaces)")
    if topo.read_state(name) is not None or topo.ns_exists(topo.ns_name("prot", name)):
        topo.down()
        notes.append("removed the single-node lab of the same name first")
    ns = {r: topo.ns_name(r, name) for r in roles(nodes, etcd)}
    d = run_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    logs = d / "logs"
    logs.mkdir(exist_ok=True)
    data: dict = {
        "name": name,
        "nodes": nodes,
        "etcd": etcd,
        "namespaces": ns,
        "servers": [],
        "created_at": time.time(),
    }
    _write_state(data)  # from here on `down` finds everything, even if we die half-way
    try:
        make_tls(name, nodes)
        for r in ns.values():
            topo._run(["ip", "netns", "add", r])
            topo._run(["ip", "-n", r, "link", "set", "lo", "up"])
            # an interface set down keeps its IPv6 addresses (the link-down tests set it up again)
            topo.in_ns(
                r, "sysctl", "-qw", "net.ipv6.conf.all.keep_addr_on_down=1", "net.ipv6.conf.default.keep_addr_on_down=1"
            )
        router = ns["router"]
        for br in ("br-up", "br-mgmt"):
            topo._run(["ip", "-n", router, "link", "add", br, "type", "bridge"])
            topo._run(["ip", "-n", router, "link", "set", br, "up"])
        topo._run(["ip", "-n", ns["backend"], "link", "add", "br0", "type", "bridge"])
        topo._run(["ip", "-n", ns["backend"], "link", "set", "br0", "up"])
        for key, value in (
            ("net.ipv4.ip_forward", 1),
            ("net.ipv6.conf.all.forwarding", 1),
            ("net.ipv4.fib_multipath_hash_policy", 1),
            ("net.ipv6.fib_multipath_hash_policy", 1),
        ):
            topo.in_ns(router, "sysctl", "-qw", f"{key}={value}")
        topo._addr(router, "br-up", f"{ROUTER_UP4}/24")
        topo._addr(router, "br-up", f"{ROUTER_UP6}/64")
        for role, v4, v6, port in (
            ("client", CLIENT4, CLIENT6, "xgu-cli"),
            ("attacker", ATTACKER4, ATTACKER6, "xgu-atk"),
        ):
            topo._veth(router, port, ns[role], "eth0")
            topo._run(["ip", "-n", router, "link", "set", port, "master", "br-up"])
            topo._addr(ns[role], "eth0", f"{v4}/24")
            topo._addr(ns[role], "eth0", f"{v6}/64")
            topo._run(["ip", "-n", ns[role], "route", "add", "198.18.0.0/24", "via", ROUTER_UP4])
            topo._run(["ip", "-6", "-n", ns[role], "route", "add", "2001:db8:0:1::/64", "via", ROUTER_UP6])
        for k in range(1, etcd + 1):
            topo._veth(router, f"xgm-etcd{k}", ns[f"etcd{k}"], "eth0")
            topo._run(["ip", "-n", router, "link", "set", f"xgm-etcd{k}", "master", "br-mgmt"])
            topo._addr(ns[f"etcd{k}"], "eth0", f"{etcd_addr(k)}/24")
        topo._addr(ns["backend"], "br0", f"{BACKEND4}/24")
        topo._addr(ns["backend"], "br0", f"{BACKEND6}/64")
        for i in range(1, nodes + 1):
            n, ln = ns[f"node{i}"], node_links(i)
            topo._veth(router, f"xgr-n{i}", n, NODE_IFACE)
            topo._addr(router, f"xgr-n{i}", f"{ln['router4']}/24")
            topo._addr(router, f"xgr-n{i}", f"{ln['router6']}/64")
            topo._addr(n, NODE_IFACE, f"{ln['node4']}/24")
            topo._addr(n, NODE_IFACE, f"{ln['node6']}/64")
            topo._addr(n, "lo", f"{PROT4}/32")
            topo._addr(n, "lo", f"{PROT6}/128")
            restore_node_routes(i, name)
            topo._veth(n, "xgb0", ns["backend"], f"xgb-n{i}")
            topo._run(["ip", "-n", ns["backend"], "link", "set", f"xgb-n{i}", "master", "br0"])
            topo._addr(n, "xgb0", f"{ln['back4']}/24")
            topo._addr(n, "xgb0", f"{ln['back6']}/64")
            topo._veth(n, "xgm0", router, f"xgm-n{i}")
            topo._run(["ip", "-n", router, "link", "set", f"xgm-n{i}", "master", "br-mgmt"])
            topo._addr(n, "xgm0", f"{ln['mgmt4']}/24")
            node_config_path(i, name).write_text(node_toml(i, name, min_nodes, etcd, nodes))

        life = str(int(lifetime_s))
        www = d / "www"
        www.mkdir(exist_ok=True)
        (www / "index.html").write_text("<h1>xdpguard cluster lab backend</h1>\n")
        servers = [
            *[_start(ns[f"etcd{k}"], f"etcd{k}", etcd_argv(k, etcd, d, life), logs) for k in range(1, etcd + 1)],
            _start(
                ns["backend"],
                "http",
                [
                    "timeout",
                    life,
                    sys.executable,
                    "-m",
                    "http.server",
                    str(topo.HTTP_PORT),
                    "--bind",
                    "::",
                    "--directory",
                    str(www),
                ],
                logs,
            ),
            _start(
                ns["backend"],
                "echo",
                [sys.executable, "-m", "xdpguard.lab.echo", "serve", "--port", str(topo.ECHO_PORT), "--duration", life],
                logs,
            ),
        ]
        data["servers"] = servers
        _write_state(data)
        rconf = d / "bird-router.conf"
        rconf.write_text(router_bird_conf(nodes))
        servers.append(
            _start(
                router,
                "bird-router",
                [
                    "timeout",
                    life,
                    "bird",
                    "-f",
                    "-c",
                    str(rconf),
                    "-s",
                    str(d / "bird-router.ctl"),
                    "-P",
                    str(d / "bird-router.pid"),
                ],
                logs,
            )
        )
        for k in range(1, etcd + 1):
            _wait_etcd(ns[f"etcd{k}"], f"https://{etcd_addr(k)}:2379", name=name)
        topo._wait_ready(ns["backend"], BACKEND4, topo.HTTP_PORT)
        topo._wait_ready(ns["backend"], BACKEND4, topo.ECHO_PORT)
        (d / "desired.toml").write_text(desired_toml())
        topo.xg(ns["node1"], "cluster", "apply", str(d / "desired.toml"), "--config", str(node_config_path(1, name)))
        for i in range(1, nodes + 1):
            n = ns[f"node{i}"]
            conf = d / f"bird-node{i}.conf"
            # the node's BIRD starts with the routes withdrawn; `cluster run` takes it from there
            topo.xg(
                n,
                "cluster",
                "bird-config",
                "--config",
                str(node_config_path(i, name)),
                "--withdrawn",
                "--output",
                str(conf),
            )
            servers.append(
                _start(
                    n,
                    f"bird-node{i}",
                    [
                        "timeout",
                        life,
                        "bird",
                        "-f",
                        "-c",
                        str(conf),
                        "-s",
                        str(d / f"bird-node{i}.ctl"),
                        "-P",
                        str(d / f"bird-node{i}.pid"),
                    ],
                    logs,
                )
            )
            servers.append(
                _start(
                    n,
                    f"agent-node{i}",
                    [
                        *topo.xdpguard_argv(),
                        "cluster",
                        "run",
                        "--config",
                        str(node_config_path(i, name)),
                        "--duration",
                        life,
                    ],
                    logs,
                )
            )
        data["servers"] = servers
        _write_state(data)
        hops = wait_next_hops(nodes, name, wait_s)
        if any(len(h) != nodes for h in hops.values()):
            notes.append(f"after {wait_s:g} s the router has {hops} as next hops, not {nodes} each; see {logs}")
    except BaseException:
        down()
        raise
    return ClusterUpResult(name, nodes, ns, servers, hops, str(d), notes)


def _lab_namespaces(name: str) -> list[str]:
    """Every namespace of the cluster lab `name` that exists, found by name."""
    prefix = f"xg-{name}-"
    try:
        present = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    fixed = {f"{prefix}{r}" for r in FIXED_ROLES}
    return sorted(
        n for n in present if n in fixed or (n.startswith(prefix + "node") and n[len(prefix) + 4 :].isdigit())
    )


def down() -> dict:
    """Remove the cluster lab: agents first (they withdraw), then xdpguard, BIRD, etcd, servers,
    the namespaces, pins, records and files. Idempotent; works from the names alone."""
    xgstate.require_root()
    name = topo.lab_name()
    data = read_state(name) or {}
    present = _lab_namespaces(name)
    killed: list[int] = []
    notes: list[str] = []
    agents = [s["pid"] for s in data.get("servers", []) if s["name"].startswith("agent-") and topo._alive(s["pid"])]
    killed += topo._kill(agents, use_group=True)
    keys = {}
    for n in present:
        keys[n] = f"net-{os.stat(os.path.join(NETNS_DIR, n)).st_ino}"
        if n.rsplit("-", 1)[-1].startswith("node"):
            killed += topo._kill([p for p in topo._ns_pids(n)], use_group=False)  # a stray agent
            if topo.xg(n, "detach", NODE_IFACE, check=False).returncode == 0:
                notes.append(f"detached xdpguard from {n}:{NODE_IFACE}")
    recorded = [s["pid"] for s in data.get("servers", []) if topo._alive(s["pid"])]
    killed += topo._kill(recorded, use_group=True)
    for n in present:
        killed += topo._kill(topo._ns_pids(n), use_group=False)
    removed = []
    for n in present:
        topo._run(["ip", "netns", "del", n], check=False)
        removed.append(n)
    for key in keys.values():  # what a detach that never ran would have removed
        notes += [f"removed leftover {dd}" for dd in xgstate.forget_netns(key)]
    shutil.rmtree(run_dir(name), ignore_errors=True)
    return {"name": name, "removed_namespaces": removed, "killed_pids": sorted(set(killed)), "notes": notes}


def status() -> ClusterStatusResult:
    xgstate.require_root()
    name = topo.lab_name()
    data = read_state(name)
    nodes = (data or {}).get("nodes", 0)
    present = set(_lab_namespaces(name))
    want = [topo.ns_name(r, name) for r in roles(nodes, (data or {}).get("etcd", 1))] if nodes else sorted(present)
    servers = [{**s, "alive": topo._alive(s["pid"])} for s in (data or {}).get("servers", [])]
    hops = router_next_hops(name) if topo.ns_name("router", name) in present else {}
    up_ = bool(data) and all(n in present for n in want) and all(s["alive"] for s in servers)
    return ClusterStatusResult(
        name, up_, nodes, {n: n in present for n in want}, servers, hops, str(run_dir(name)) if data else None
    )
