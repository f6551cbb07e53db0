"""Issue 29, item 7: limits across nodes — HAProxy `peers` replication of stick tables, measured.

xdpguard spreads layer-7 evidence between nodes as bans through the store (reason `cc`, bounded:
test_cluster_lab measures the spread). The alternative the issue names is HAProxy's own `peers`
protocol. This script measures what `peers` would give, with Debian's HAProxy, in namespaces of
its own:

    client (source 198.18.33.1 on lo) ─ veth ─ node A ─ veth ─ node B ─ veth ─ client
                                          A and B peer over 198.18.30.0/30

Each node runs the same per-source limit as a CC frequency limit: a stick table keyed by source
with `http_req_rate(10s)`, 429 above LIMIT. The client sends ROUNDS requests, a new connection
each, alternating between the nodes, GAP_S apart. Three setups, each on fresh HAProxies:

    one node     every request to node A (the limit as designed)
    two, local   alternating, each node its own table
    two, peers   alternating, the table replicated by `peers`

and the time until node B's table shows a source that only node A has seen (peers' spread).
Prints one JSON object. Run as root on a machine with haproxy:

    .venv/bin/python scripts/l7_peers.py [--limit 20] [--rounds 120] [--gap 0.02]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xdpguard.lab.l7 import ALTERNATING_GET  # noqa: E402
from xdpguard.lab.netns import Lab  # noqa: E402

SRC, SRC2 = "198.18.33.1", "198.18.33.2"  # the client's own addresses (both nodes see the same)
NODE = {"a": ("198.18.31.1", "198.18.31.2", "198.18.30.1"), "b": ("198.18.32.1", "198.18.32.2", "198.18.30.2")}
PEER_PORT = 10000


def config(node: str, sock: Path, limit: int, peers: bool) -> str:
    listen, _, peer_addr = NODE[node]
    mesh = "".join(f"    peer {n} {NODE[n][2]}:{PEER_PORT}\n" for n in NODE)
    return (
        f"global\n    stats socket {sock} mode 600 level admin\n\n"
        "defaults\n    mode http\n    timeout client 5s\n    timeout server 5s\n    timeout connect 2s\n\n"
        + (f"peers mesh\n{mesh}\n" if peers else "")
        + "backend st\n    stick-table type ip size 10k expire 60s store http_req_rate(10s)"
        + (" peers mesh\n\n" if peers else "\n\n")
        + f"frontend fe\n    bind {listen}:80\n    http-request track-sc0 src table st\n"
        f"    http-request deny deny_status 429 if {{ sc_http_req_rate(0,st) gt {limit} }}\n"
        "    http-request return status 200 content-type text/plain string ok\n"
    )


def runtime(sock: Path, cmd: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        s.sendall(cmd.encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


class Bed:
    def __init__(self, lab: Lab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.client = lab.netns("pc")
        self.ns = {n: lab.netns(f"p{n}") for n in NODE}
        lab.veth(self.ns["a"], "xgpp0", self.ns["b"], "xgpp0")
        lab.addr(self.ns["a"], "xgpp0", f"{NODE['a'][2]}/30")
        lab.addr(self.ns["b"], "xgpp0", f"{NODE['b'][2]}/30")
        for i, (n, (listen, client_end, _)) in enumerate(NODE.items()):
            lab.veth(self.client, f"xgpc{i}", self.ns[n], "xgpn0")
            lab.addr(self.client, f"xgpc{i}", f"{client_end}/24")
            lab.addr(self.ns[n], "xgpn0", f"{listen}/24")
            for src in (SRC, SRC2):
                lab.route(self.ns[n], f"{src}/32", client_end)
        for src in (SRC, SRC2):
            lab.run(self.client, "ip", "address", "add", f"{src}/32", "dev", "lo")

    def start(self, tag: str, limit: int, peers: bool) -> dict[str, Path]:
        socks: dict[str, Path] = {}
        for n in NODE:
            socks[n] = self.tmp / f"{tag}-{n}.sock"
            cfg = self.tmp / f"{tag}-{n}.cfg"
            cfg.write_text(config(n, socks[n], limit, peers))
            subprocess.run(["haproxy", "-c", "-f", str(cfg)], check=True, capture_output=True)
            self.lab.popen(self.ns[n], "haproxy", "-db", "-L", n, "-f", str(cfg), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not all(s.exists() for s in socks.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("haproxy did not start")
            time.sleep(0.05)
        time.sleep(0.5 if peers else 0.1)  # the peers connect
        return socks

    def send(self, src: str, gap: float, targets: list[str]) -> list[int]:
        p = self.lab.run(
            self.client, sys.executable, "-c", ALTERNATING_GET, src, str(gap), "/", "", *targets, timeout=600
        )
        return json.loads(p.stdout)


def summary(statuses: list[int]) -> dict:
    first = next((i for i, s in enumerate(statuses) if s == 429), None)
    return {
        "sent": len(statuses),
        "answered_200": statuses.count(200),
        "refused_429": statuses.count(429),
        "failed": statuses.count(0),
        "200_before_first_429": first if first is not None else statuses.count(200),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=20, help="requests per 10 s per source (default 20)")
    ap.add_argument("--rounds", type=int, default=120, help="requests per setup (default 120)")
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between requests (default 0.02)")
    a = ap.parse_args(argv)
    a_dst, b_dst = NODE["a"][0], NODE["b"][0]
    out: dict = {"limit": a.limit, "rounds": a.rounds, "gap_s": a.gap}
    setups = (
        ("one node", False, [a_dst] * a.rounds),
        ("two, local", False, [a_dst, b_dst] * (a.rounds // 2)),
        ("two, peers", True, [a_dst, b_dst] * (a.rounds // 2)),
    )
    with tempfile.TemporaryDirectory(prefix="xgpeers-") as d, Lab(timeout=120) as lab:
        bed = Bed(lab, Path(d))
        for i, (name, peers, targets) in enumerate(setups):
            with Lab(timeout=120) as run:  # this setup's HAProxies, stopped before the next
                bed.lab = run
                socks = bed.start(f"s{i}", a.limit, peers)
                out[name] = summary(bed.send(SRC, a.gap, targets))
                if peers:  # the spread: one request at A from a new source, until B's table has it
                    spreads = []
                    for k in range(5):
                        src = SRC2
                        runtime(socks["a"], f"clear table st key {src}")
                        runtime(socks["b"], f"clear table st key {src}")
                        time.sleep(0.3)
                        t0 = time.monotonic()
                        bed.send(src, 0, [a_dst])
                        while src not in runtime(socks["b"], f"show table st key {src}"):
                            if time.monotonic() - t0 > 5:
                                break
                            time.sleep(0.005)
                        spreads.append(round(time.monotonic() - t0, 3))
                    out["peers_spread_s"] = spreads
            bed.lab = lab
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
