#!/usr/bin/env python3
"""Forwarding through the protective IP: xdpguard (XDP + its NAT table) vs plain nftables DNAT.

  sudo .venv/bin/python scripts/bench_forward.py [--rounds 5] [--seconds 2] [--requests 200]

Two identical namespace topologies are built side by side (client → protector → backend, the
client has no route to the backend): in one the protector runs `xdpguard attach` + `xdpguard
forward add tcp 5001,7 …`, in the other a hand-written `table inet plain` with the same DNAT and
masquerade and no XDP. Per round and variant (interleaved):

- throughput: one TCP stream client → backend through the protector for --seconds (bytes/s);
- latency: --requests sequential requests, each a NEW TCP connection (connect, send, echo back,
  close), so every one goes through conntrack + DNAT; median and p99 in ms.

A fourth, `xg-nft-only`, is xdpguard's own NAT table with its XDP program taken off: the
difference to `plain` is what our nft ruleset (the forward chain's counter rule)
costs. A third topology, `xdp-pass`, is the plain one plus a bare `XDP_PASS` program attached natively
to the same interface: it separates what native XDP on a veth costs by itself (the veth then
hands XDP one linear buffer per packet instead of GSO super-packets) from what xdpguard's
program adds.

The machine may be shared and noisy: medians over rounds and the xdpguard/plain ratios are the
meaningful output. Everything lives in lab namespaces removed at exit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xdpguard.lab.netns import BED_BACKEND4, BED_CLIENT4, BED_GW4, BED_PROT4, Lab  # noqa: E402

PY = sys.executable
PROT, CLIENT, BACKEND, GW = BED_PROT4, BED_CLIENT4, BED_BACKEND4, BED_GW4  # Lab.forward_bed's

SINK = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001)); s.listen(16); s.settimeout(float(sys.argv[1]))
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        c, _ = s.accept()
    except OSError:
        break
    c.settimeout(30)
    try:
        while c.recv(1 << 20):
            pass
    except OSError:
        pass
    c.close()
"""

STREAM = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 5001), timeout=5)
buf = b"x" * (1 << 16); n = 0; dur = float(sys.argv[2]); t0 = time.monotonic()
while time.monotonic() - t0 < dur:
    n += s.send(buf)
s.shutdown(socket.SHUT_WR); s.close()
print(n / (time.monotonic() - t0))
"""

REQUESTS = r"""
import json, socket, sys, time
out = []
for i in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    s = socket.create_connection((sys.argv[1], 7), timeout=2)
    s.sendall(b"ping"); s.recv(4096); s.close()
    out.append((time.perf_counter() - t0) * 1000)
print(json.dumps(out))
"""

PLAIN_NFT = f"""
table inet plain {{
  chain pre {{ type nat hook prerouting priority dstnat; ip daddr {PROT} tcp dport {{ 5001, 7 }} dnat ip to {BACKEND}; }}
  chain post {{ type nat hook postrouting priority srcnat; ct status dnat ip daddr {BACKEND} masquerade; }}
}}
"""


XDP_PASS_LOADER = r"""
import socket, sys
from bcc import BPF
from xdpguard.core.kernel import libbpf
b = BPF(text=b"int pass_all(struct xdp_md *ctx) { return XDP_PASS; }")
fn = b.load_func(b"pass_all", BPF.XDP)
libbpf.xdp_attach(socket.if_nametoindex(sys.argv[1]), fn.fd, libbpf.XDP_FLAGS_DRV_MODE)
"""


def build(lab: Lab, name: str, duration: float) -> tuple[str, str]:
    client, prot, backend = lab.forward_bed(name)
    lab.popen(
        backend,
        PY,
        "-m",
        "xdpguard.lab.echo",
        "serve",
        "--port",
        "7",
        "--duration",
        str(duration),
        stdout=subprocess.DEVNULL,
    )
    lab.popen(backend, PY, "-c", SINK, str(duration), stdout=subprocess.DEVNULL)
    return client, prot


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    budget = a.rounds * 2 * (a.seconds + a.requests * 0.05 + 5) + 60
    with Lab(timeout=120) as lab:
        xc, xp = build(lab, "bx", budget)
        pc, pp = build(lab, "bp", budget)
        ac, ap_ = build(lab, "ba", budget)
        nc, np_ = build(lab, "bn", budget)
        xg = ["ip", "netns", "exec", xp, str(REPO / ".venv/bin/xdpguard")]
        subprocess.run([*xg, "attach", "xgp0", "--protect", PROT], check=True, capture_output=True)
        lab.defer("detach", subprocess.run, [*xg, "detach", "xgp0"], capture_output=True)
        for port in ("5001", "7"):
            subprocess.run(
                [*xg, "forward", "add", "tcp", port, "--to", f"{BACKEND}:{port}"], check=True, capture_output=True
            )
        # xg-nft-only: xdpguard's NAT table with the XDP program taken off again by hand.
        xgn = ["ip", "netns", "exec", np_, str(REPO / ".venv/bin/xdpguard")]
        subprocess.run([*xgn, "attach", "xgp0", "--protect", PROT], check=True, capture_output=True)
        lab.defer("detach", subprocess.run, [*xgn, "detach", "xgp0"], capture_output=True)
        for port in ("5001", "7"):
            subprocess.run(
                [*xgn, "forward", "add", "tcp", port, "--to", f"{BACKEND}:{port}"], check=True, capture_output=True
            )
        lab.run(np_, "ip", "link", "set", "xgp0", "xdp", "off")
        for ns in (pp, ap_):
            lab.sysctl(ns, "net.ipv4.ip_forward", 1)
            lab.run(ns, "nft", "-f", "-", input=PLAIN_NFT)
        lab.run(ap_, PY, "-c", XDP_PASS_LOADER, "xgp0", timeout=60)
        lab.defer(
            "xdp off", subprocess.run, ["ip", "-n", ap_, "link", "set", "xgp0", "xdp", "off"], capture_output=True
        )
        variants = [("xdpguard", xc), ("plain", pc), ("xdp-pass", ac), ("xg-nft-only", nc)]
        results: dict[str, dict[str, list[float]]] = {v: {"bps": [], "p50": [], "p99": []} for v, _ in variants}
        for r in range(a.rounds):
            for variant, client in variants[r % len(variants) :] + variants[: r % len(variants)]:
                bps = float(lab.run(client, PY, "-c", STREAM, PROT, str(a.seconds), timeout=a.seconds + 30).stdout)
                lat = sorted(json.loads(lab.run(client, PY, "-c", REQUESTS, PROT, str(a.requests), timeout=120).stdout))
                results[variant]["bps"].append(bps)
                results[variant]["p50"].append(statistics.median(lat))
                results[variant]["p99"].append(lat[min(len(lat) - 1, int(len(lat) * 0.99))])
    med = {v: {k: statistics.median(xs) for k, xs in m.items()} for v, m in results.items()}
    ratio = {k: med["xdpguard"][k] / med["plain"][k] for k in ("bps", "p50", "p99")}
    ratio_pass = {k: med["xdpguard"][k] / med["xdp-pass"][k] for k in ("bps", "p50", "p99")}
    if a.json:
        print(
            json.dumps(
                {
                    "median": med,
                    "ratio_xdpguard_over_plain": ratio,
                    "ratio_xdpguard_over_xdp_pass": ratio_pass,
                    "rounds": results,
                },
                indent=2,
            )
        )
        return 0
    print(f"{a.rounds} interleaved rounds; medians")
    print(f"{'':10} {'throughput':>14} {'latency p50':>12} {'latency p99':>12}")
    for v, _ in variants:
        m = med[v]
        print(f"{v:10} {m['bps'] * 8 / 1e9:>10.2f} Gb/s {m['p50']:>9.3f} ms {m['p99']:>9.3f} ms")
    print(f"{'ratio':10} {ratio['bps']:>14.2f} {ratio['p50']:>12.2f} {ratio['p99']:>12.2f}   (xdpguard / plain)")
    print(
        f"{'ratio':10} {ratio_pass['bps']:>14.2f} {ratio_pass['p50']:>12.2f} {ratio_pass['p99']:>12.2f}"
        "   (xdpguard / plain + bare XDP_PASS)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
