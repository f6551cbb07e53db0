"""Issue 29, item 7: per-source limits across the nodes of a cluster through HAProxy `peers`,
with two HAProxies rendered by our code (haproxy_config.Peering) and owned by proc.Haproxy, each
in its own namespace:

    client (source 198.18.33.1 on lo) ─ veth ─ node a ─ veth ─ node b ─ veth ─ client
                                     a and b peer over 198.18.30.0/30 (their own addresses)

One source alternates between the nodes, a new connection per request, under a per-source
limit of LIMIT requests per 10 s on /api/ (429 beyond). With every stick table shared by
`peers` it gets about LIMIT answers, as from one node; with each node's own table (the same
configuration without Peering: local peer only) about twice that. The source carries a valid
challenge cookie (both nodes render with one secret), so nothing but the limit refuses it.

Bounded: ROUNDS requests, one connection each, 3 s timeouts; the lab and HAProxies are torn
down by the `lab` fixture.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from xdpguard.core.l7 import haproxy_config as hc
from xdpguard.core.l7 import runtime
from xdpguard.core.l7.proc import Haproxy
from xdpguard.core.l7.spec import HttpService, RateLimit
from xdpguard.lab.l7 import ALTERNATING_GET

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a limit shared by peers: replication timing

SRC = "198.18.33.1"
# node → (service address, client's end of its link, cluster address)
NODES = {"node1": ("198.18.31.1", "198.18.31.2", "198.18.30.1"), "node2": ("198.18.32.1", "198.18.32.2", "198.18.30.2")}
LIMIT = 20
ROUNDS = 60
GAP_S = 0.05
SECRET = bytes(range(32))


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{tool} is not installed (scripts/setup.sh installs it)")
        pytest.skip(f"{tool} is not installed")


def _cookie() -> str:
    exp = int(time.time()) + 3600
    mac = hmac.new(SECRET, f"{SRC}|{exp}|c".encode(), hashlib.sha256).hexdigest()
    return f"{hc.COOKIE}={exp}.c.{mac}"


def _service(listen: str) -> HttpService:
    return HttpService(
        name="web",
        listen=[listen],
        backends=[f"{listen}:8080"],
        health_path="/healthz",
        limits=[RateLimit("/api/", LIMIT, punish_s=0)],
    )


def _api_table(svc: HttpService) -> str:
    i = next(i for i, lim in enumerate(svc.effective_limits()) if lim.prefix == "/api/")
    return hc.limit_table(svc, i)


class Bed:
    def __init__(self, lab):
        _require("haproxy")
        self.lab = lab
        self.client = lab.netns("pc")
        self.ns = {n: lab.netns(f"p{n[-1]}") for n in NODES}
        a, b = (self.ns[n] for n in NODES)
        lab.veth(a, "xgpp0", b, "xgpp0")
        for n in NODES:
            lab.addr(self.ns[n], "xgpp0", f"{NODES[n][2]}/30")
        for i, (n, (listen, client_end, _)) in enumerate(NODES.items()):
            lab.veth(self.client, f"xgpc{i}", self.ns[n], "xgpn0")
            lab.addr(self.client, f"xgpc{i}", f"{client_end}/24")
            lab.addr(self.ns[n], "xgpn0", f"{listen}/24")
            lab.route(self.ns[n], f"{SRC}/32", client_end)
            lab.popen(
                self.ns[n],
                sys.executable,
                "-m",
                "xdpguard.lab.l7",
                "serve",
                "--port",
                "8080",
                "--bind",
                listen,
                "--duration",
                "300",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        lab.run(self.client, "ip", "address", "add", f"{SRC}/32", "dev", "lo")

    def tls(self) -> tuple[str, str]:
        """A throwaway CA-less pair: one self-signed certificate as both nodes' certificate and CA."""
        d = tempfile.mkdtemp(prefix="xg-pet-")
        self.lab.defer("remove the TLS files", shutil.rmtree, d, ignore_errors=True)
        cert, key, pem = (os.path.join(d, f) for f in ("c.crt", "c.key", "node.pem"))
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
            + ["-subj", "/CN=xdpguard-peers", "-keyout", key, "-out", cert],
            check=True,
            capture_output=True,
            timeout=60,
        )
        Path(pem).write_text(Path(cert).read_text() + Path(key).read_text())
        return pem, cert

    def start(self, tag: str, shared: bool, tls: tuple[str, str] | None = None) -> dict[str, Haproxy]:
        peers = tuple(hc.PeerNode(n, ipaddress.ip_address(c)) for n, (_, _, c) in NODES.items())
        hs = {}
        for n, (listen, _, _) in NODES.items():
            run_dir = tempfile.mkdtemp(prefix=f"xg-pe{tag}-")  # short: Unix socket paths
            self.lab.defer("remove the HAProxy run dir", shutil.rmtree, run_dir, ignore_errors=True)
            h = Haproxy(run_dir, self.ns[n])
            self.lab.defer("stop HAProxy", h.stop)
            svc = _service(listen)
            crt, ca = tls or (None, None)
            peering = hc.Peering(n, peers, crt=crt, ca=ca) if shared else None
            assert h.apply(hc.render([svc], run_dir=run_dir, secret=SECRET, peering=peering)) == "started"
            hs[n] = h
        deadline = time.monotonic() + 15
        while not all(h.synced() for h in hs.values()):  # the nodes have learned from each other
            assert time.monotonic() < deadline, "the peers did not finish their resync"
            time.sleep(0.1)
        return hs

    def send(self, targets: list[str]) -> list[int]:
        p = self.lab.run(
            self.client,
            sys.executable,
            "-c",
            ALTERNATING_GET,
            SRC,
            str(GAP_S),
            "/api/x",
            _cookie(),
            *targets,
            timeout=120,
        )
        return json.loads(p.stdout)


def test_a_source_alternating_between_two_nodes_meets_its_limit_once(lab):
    bed = Bed(lab)
    targets = [NODES[n][0] for n in NODES] * (ROUNDS // 2)
    got = {}
    for tag, shared, tls in (("l", False, None), ("s", True, None), ("t", True, bed.tls())):
        hs = bed.start(tag, shared, tls)
        statuses = bed.send(targets)
        assert statuses.count(0) == 0, statuses
        got[tag] = statuses.count(200)
        if shared:
            # both nodes' tables hold the source with (about) the cluster-wide count
            for n, h in hs.items():
                t = runtime.show_table(str(h.admin_socket), _api_table(_service(NODES[n][0])))
                e = next((e for e in t.entries if str(e.address) == SRC), None)
                assert e is not None and e.get("http_req_rate") >= ROUNDS - 4, (n, e)
        for h in hs.values():
            h.stop()
    print(
        f"\nlimit {LIMIT}/10 s, {ROUNDS} requests alternating: local tables {got['l']} answered, "
        f"peers {got['s']}, peers over TLS {got['t']}"
    )
    assert got["l"] >= 2 * LIMIT - 2, got  # the control: each node counted only its half
    assert LIMIT <= got["s"] <= LIMIT + 3, got  # shared: the limit holds as on one node
    assert LIMIT <= got["t"] <= LIMIT + 3, got  # the same over TLS (the cluster's certificate)
