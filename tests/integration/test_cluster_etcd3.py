"""The cluster lab with three etcd members (`lab up --nodes 2 --etcd 3`): losing one member,
even the one the nodes talk to, costs nothing (the nodes move to another endpoint and resync);
losing quorum leaves the nodes enforcing what they have; `lab down` leaves nothing.

And the store's trust boundary with one real etcd (TLS, --client-cert-auth, then user/password
auth) in a namespace of its own: a node without a client certificate, or without the user and
password once auth is on, is refused; a plain-http store is refused unless insecure."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cluster_lab import Cluster, _leftovers, time_until

from xdpguard.core.l7 import secret as S
from xdpguard.lab import cluster as lc
from xdpguard.lab import topology

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


# ---- the trust boundary with a real etcd: TLS, client certificates, user/password auth ----
#
# One etcd (no lab) in a namespace of its own, TLS only with --client-cert-auth, certificates
# from the lab's own helper (a throwaway CA): light, seconds, not the 3-node cluster above.

TLS_URL = "https://127.0.0.1:2379"


@dataclass
class TlsEtcd:
    ns: str
    dir: Path
    tls: Path
    env: dict[str, str]

    def node_config(
        self,
        name: str,
        *,
        cert: bool = True,
        user: str | None = None,
        password: str | None = None,
        endpoint: str = TLS_URL,
        extra: str = "",
    ) -> str:
        lines = ["[cluster]", 'name = "tls"', 'node = "n1"', f'endpoints = ["{endpoint}"]']
        if endpoint.startswith("https://"):
            lines.append(f'ca = "{self.tls / "ca.crt"}"')
        if cert:
            lines += [f'cert = "{self.tls / "node1.crt"}"', f'key = "{self.tls / "node1.key"}"']
        if user is not None:
            pw = self.dir / f"{name}.pw"
            pw.write_text(f"{password}\n")
            os.chmod(pw, 0o600)
            lines += [f'user = "{user}"', f'password_file = "{pw}"']
        p = self.dir / f"{name}.toml"
        p.write_text("\n".join(lines) + "\n" + extra)
        return str(p)

    def xg(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *topology.xdpguard_argv(), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                "etcdctl",
                "--endpoints",
                TLS_URL,
                "--cacert",
                str(self.tls / "ca.crt"),
                "--cert",
                str(self.tls / "lab.crt"),
                "--key",
                str(self.tls / "lab.key"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {p.stderr.strip()}")
        return p


def _one_error(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("xdpguard: error: "), (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory) -> Iterator[TlsEtcd]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("etcd") is None or shutil.which("openssl") is None:
        pytest.skip("needs etcd and openssl (scripts/setup.sh)")
    d = tmp_path_factory.mktemp("tlsetcd")
    name = f"t{os.getpid() % 1_000_000}"
    env = {**os.environ, "XDPGUARD_LAB_NAME": name, "XDPGUARD_RUN_DIR": str(d)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDPGUARD_RUN_DIR", str(d))
        tls = lc.make_tls(name, 1)
    ns = f"xg-{name}-tls"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    proc = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=10)
        log = open(d / "etcd.log", "wb")
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "timeout",
                "600",
                "etcd",
                "--name",
                "t",
                "--data-dir",
                str(d / "data"),
                "--listen-client-urls",
                TLS_URL,
                "--advertise-client-urls",
                TLS_URL,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "t=http://127.0.0.1:2380",
                "--cert-file",
                str(tls / "etcd.crt"),
                "--key-file",
                str(tls / "etcd.key"),
                "--trusted-ca-file",
                str(tls / "ca.crt"),
                "--client-cert-auth",
                "--log-level",
                "warn",
                "--logger",
                "zap",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        e = TlsEtcd(ns, d, tls, env)
        time_until(lambda: e.etcdctl("endpoint", "health", check=False).returncode == 0, 30, 0.2)
        yield e
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], timeout=10)
        shutil.rmtree(tls, ignore_errors=True)
    assert not os.path.exists(f"/run/netns/{ns}")


def test_keys_are_private_to_the_lab(tls_etcd):
    keys = sorted(tls_etcd.tls.glob("*.key"))
    assert {k.name for k in keys} >= {"ca.key", "etcd.key", "node1.key", "lab.key"}
    assert all(k.stat().st_mode & 0o777 == 0o600 for k in keys)
    assert tls_etcd.tls.stat().st_mode & 0o777 == 0o700


def test_a_node_without_a_client_certificate_is_refused_by_etcd(tls_etcd):
    e = tls_etcd
    ok = e.xg("cluster", "status", "--json", "--config", e.node_config("good"))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["cluster"] == "tls"
    err = _one_error(
        e.xg("cluster", "ban", "198.18.9.41", "--ttl", "30", "--config", e.node_config("nocert", cert=False))
    )
    assert "TLS failed" in err and "no client certificate given" in err, err
    assert e.etcdctl("get", "--prefix", "--keys-only", "/xdpguard/tls/").stdout.strip() == ""  # nothing written
    # plain http to the same store: refused before anything is sent (and etcd speaks only TLS anyway)
    err = _one_error(
        e.xg("cluster", "status", "--config", e.node_config("plain", cert=False, endpoint="http://127.0.0.1:2379"))
    )
    assert "is not TLS" in err and "insecure = true" in err, err
    # with the certificate, a ban goes through
    assert e.xg("cluster", "ban", "198.18.9.41", "--ttl", "30", "--config", e.node_config("good")).returncode == 0
    assert (
        "/xdpguard/tls/state/bans/198.18.9.41" in e.etcdctl("get", "--prefix", "--keys-only", "/xdpguard/tls/").stdout
    )


def test_hostile_store_values_are_skipped_and_logged_by_a_running_node(tls_etcd):
    """Anyone who got a certificate (or an old etcd without TLS) writes hostile keys: `cluster
    run` logs and skips each and keeps running; a good ban next to them is applied."""
    e = tls_etcd
    desired = lc.desired_toml().replace('name = "xgp0"\n', 'name = "xgp0"\nallow = ["0.0.0.0/0"]\n', 1)
    e.etcdctl("put", "/xdpguard/tls/state/desired/xgp0", desired + '\n[interface.events]\nhook = "/bin/sh -c id"\n')
    e.etcdctl("put", "/xdpguard/tls/state/bans/198.18.9.60", '{"ttl": 60, "expires": 1e300, "reason": "syn"}')
    e.etcdctl("put", "/xdpguard/tls/state/bans/198.18.9.61", "[not json")
    conf = e.node_config(
        "run",
        extra='protect = ["198.18.0.1/32", "2001:db8:0:1::1/128"]\nbackends = ["198.18.1.0/24", "2001:db8:0:2::/64"]\n',
    )
    p = subprocess.run(
        ["ip", "netns", "exec", e.ns, *topology.xdpguard_argv(), "cluster", "run", "--config", conf, "--duration", "3"],
        capture_output=True,
        text=True,
        env=e.env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0 and "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    assert "store: skipped /xdpguard/tls/state/desired/xgp0: " in p.stdout and "events.hook" in p.stdout, p.stdout
    assert "store: skipped /xdpguard/tls/state/bans/198.18.9.60: " in p.stdout, p.stdout
    assert "store: skipped /xdpguard/tls/state/bans/198.18.9.61: " in p.stdout, p.stdout
    assert "synced with the store" in p.stdout
    e.etcdctl("del", "--prefix", "/xdpguard/tls/state/")


LOCAL_SECRET = r"""
from xdpguard.core.l7 import engine, secret
s = engine.secrets()
print(secret.to_json(s))
print(oct(engine.secret_path().stat().st_mode & 0o777))
"""


def test_one_challenge_secret_for_the_whole_cluster(tls_etcd):
    """Issue 29, item 7: the first node's own challenge secret becomes the cluster's (created
    once, create-if-absent), a second node takes it instead of its own; `cluster rotate-secret`
    makes a new one and keeps the previous a cookie lifetime, and the nodes take that; a node
    that cannot reach the store keeps the last secret it had. The secret is never in a dump
    (`cluster status`), and a node's copy is 0600. (Two nodes: one namespace, a state directory
    each.)"""
    e = tls_etcd
    e.etcdctl("del", "--prefix", "/xdpguard/tls/")
    conf = e.node_config("secret")
    states = {n: e.dir / f"state-{n}" for n in ("a", "b")}

    def in_node(n: str, *argv: str) -> subprocess.CompletedProcess:
        p = subprocess.run(
            ["ip", "netns", "exec", e.ns, *argv],
            capture_output=True,
            text=True,
            env={**e.env, "XDPGUARD_STATE_DIR": str(states[n])},
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert p.returncode == 0 and "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
        return p

    def local(n: str) -> tuple[S.Secrets, str]:
        out, mode = in_node(n, sys.executable, "-c", LOCAL_SECRET).stdout.splitlines()
        return S.from_json(out, n), mode

    def run(n: str, config: str = conf) -> str:
        return in_node(n, *topology.xdpguard_argv(), "cluster", "run", "--config", config, "--duration", "2").stdout

    def stored() -> S.Secrets:
        return S.from_json(e.etcdctl("get", "--print-value-only", "/xdpguard/tls/state/secret/l7").stdout, "etcd")

    own_a, own_b = local("a")[0], local("b")[0]
    assert own_a != own_b
    assert "this node's is now the cluster's" in run("a")
    assert stored() == own_a and local("a") == (own_a, "0o600")
    run("b")
    assert stored() == own_a and local("b") == (own_a, "0o600")  # b took the cluster's, not its own
    rot = json.loads(e.xg("cluster", "rotate-secret", "--json", "--config", conf).stdout)
    new = stored()
    assert new.current != own_a.current and new.previous == own_a.current, rot
    assert rot["keep_s"] == 3600 and abs(new.previous_until - (time.time() + 3600)) < 60, rot
    assert "rotated" in run("b") and local("b")[0] == new
    # the store unreachable: the node keeps the last secret it had
    gone = e.node_config("secret-gone", endpoint="https://127.0.0.1:1")
    run("a", gone)
    assert local("a")[0] == own_a
    assert "rotated" in run("a") and local("a")[0] == new  # and takes the rotation once it is back
    # in no dump: not in the status, not in the rotation's own answer
    status = e.xg("cluster", "status", "--json", "--config", conf).stdout
    for text in (status, json.dumps(rot)):
        for k in (new.current, own_a.current):
            assert base64.b64encode(k).decode() not in text and k.hex() not in text
    e.etcdctl("del", "--prefix", "/xdpguard/tls/")


def test_user_and_password_auth(tls_etcd):
    """Runs last: it turns etcd's auth on. A client certificate alone is not enough any more; the
    right user and password are; a wrong password is one error line."""
    e = tls_etcd
    e.etcdctl("user", "add", "root:rootpw-lab")
    e.etcdctl("user", "grant-role", "root", "root")
    e.etcdctl("user", "add", "xgnode:nodepw-lab")
    e.etcdctl("role", "add", "xgnode")
    e.etcdctl("role", "grant-permission", "xgnode", "--prefix=true", "readwrite", "/xdpguard/tls/")
    e.etcdctl("user", "grant-role", "xgnode", "xgnode")
    e.etcdctl("auth", "enable")
    err = _one_error(e.xg("cluster", "status", "--config", e.node_config("certonly")))
    assert "refused us" in err and "user name is empty" in err, err
    err = _one_error(e.xg("cluster", "status", "--config", e.node_config("badpw", user="xgnode", password="wrong")))
    assert "refused user 'xgnode'" in err and "authentication failed" in err, err
    good = e.node_config("auth", user="xgnode", password="nodepw-lab")
    p = e.xg("cluster", "ban", "198.18.9.42", "--ttl", "30", "--config", good)
    assert p.returncode == 0, p.stderr
    st = e.xg("cluster", "status", "--json", "--config", good)
    assert st.returncode == 0 and json.loads(st.stdout)["bans"] >= 1, st.stderr


ESTABLISHED = r"""
import json, socket, time
from pyroute2 import Conntrack
from scapy.all import IP, TCP, conf, send
from xdpguard.core.cluster import node
conf.verb = 0
srv = socket.socket(); srv.bind(("127.0.0.1", 7000)); srv.listen()
c = socket.create_connection(("127.0.0.1", 7000)); a, _ = srv.accept(); c.send(b"x"); a.recv(1); a.send(b"y"); c.recv(1)
# a spoofed SYN from 127.0.0.5: conntrack sees it, but no handshake is ever completed from there
send(IP(src="127.0.0.5", dst="127.0.0.1") / TCP(sport=40000, dport=7000, flags="S"), iface="lo")
time.sleep(0.2)
with Conntrack() as ct:
    seen = sorted({str(e.tuple_orig.saddr) for e in ct.dump_entries()})
print(json.dumps({"seen": seen, "real": node.established_tcp("127.0.0.1"), "spoofed": node.established_tcp("127.0.0.5")}))
"""


def test_spread_evidence_is_a_completed_handshake(tmp_path):
    """node.established_tcp, the check before a ban is spread: true for a source that completed a
    TCP handshake here, false for one that only sent a SYN (a spoofed source cannot do more)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    ns = f"xg-t{os.getpid() % 1_000_000}-ct"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["nft", "add", "table", "inet", "xgt"],
            ["nft", "add", "chain", "inet", "xgt", "c", "{ type filter hook input priority 0; }"],
            ["nft", "add", "rule", "inet", "xgt", "c", "ct", "state", "established", "accept"],
        ):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, timeout=10)
        p = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", ESTABLISHED],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert p.returncode == 0, p.stderr
        res = json.loads(p.stdout)
        assert "127.0.0.5" in res["seen"]  # the spoofed SYN is in conntrack: the check below means something
        assert res["real"] is True and res["spoofed"] is False, res
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=10)
