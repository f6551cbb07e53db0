#!/usr/bin/env python3
"""The XDP forwarding fast path against nftables, side by side in one run (issue 27, part 2).

  sudo .venv/bin/python scripts/bench_fastpath.py [--rounds 3] [--seconds 3] [--requests-s 3]

Three identical topologies (xdpguard/lab/fastpath.py): `plain` (nft DNAT + masquerade, no XDP),
`xdp` (xdpguard attached, nftables NAT behind it), `fast` (xdpguard --fast-forward: established
flows rewritten and redirected in XDP, both directions). Per round and variant, interleaved:

- stream: one TCP connection client → backend sink, established, then (fast: `forward fastpath`
  once, so the flow is on the fast path) --seconds of 64 KiB writes: Gb/s; then the same with
  --streams connections in parallel (the fast path learns them all with the one sync);
- rps: new TCP connection per request (connect, 4 bytes, echo, close) for --requests-s seconds
  or --requests requests: requests/s. A connection lives ~0.1 ms, far shorter than any conntrack poll: on `fast` these
  never reach the fast path (the slow path carries them whole) — measured to show what the
  lookup costs a miss, not as a fast-path figure.

Medians over rounds, and ratios to `plain` and to `xdp`. Everything lives in lab namespaces
removed at exit; every generator stops by itself. The machine may be shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xdpguard.lab import fastpath  # noqa: E402
from xdpguard.lab.netns import Lab  # noqa: E402

STREAM = r"""
import socket, sys, threading, time
k = int(sys.argv[3])
conns = [socket.create_connection((sys.argv[1], 5001), timeout=5) for _ in range(k)]
for s in conns:
    s.sendall(b"x" * 65536)
print("ready", flush=True)
sys.stdin.readline()
dur = float(sys.argv[2]); sent = [0] * k
def run(i):
    buf = b"x" * (1 << 16); t0 = time.monotonic()
    while time.monotonic() - t0 < dur:
        sent[i] += conns[i].send(buf)
t0 = time.monotonic()
ts = [threading.Thread(target=run, args=(i,)) for i in range(k)]
for t in ts: t.start()
for t in ts: t.join()
el = time.monotonic() - t0
for s in conns:
    s.shutdown(socket.SHUT_WR); s.close()
print(sum(sent) / el, flush=True)
"""

RPS = r"""
import socket, sys, time
dur, cap = float(sys.argv[2]), int(sys.argv[3]); n = 0; t0 = time.monotonic()
while time.monotonic() - t0 < dur and n < cap:
    s = socket.create_connection((sys.argv[1], 7), timeout=2)
    s.sendall(b"ping"); s.recv(4096); s.close(); n += 1
print(n / (time.monotonic() - t0))
"""


def stream(t: fastpath.Topo, seconds: float, k: int = 1) -> tuple[float, dict | None]:
    p = t.lab.popen(
        t.client, fastpath.PY, "-c", STREAM, fastpath.PROT, str(seconds), str(k), stdin=-1, stdout=-1, text=True
    )
    assert p.stdout.readline().strip() == "ready"
    before = t.sync()["counters"] if t.variant == "fast" else None
    p.stdin.write("\n")
    p.stdin.flush()
    bps = float(p.stdout.readline())
    p.wait(timeout=30)
    fast = None
    if t.variant == "fast":
        after = t.sync()["counters"]
        fast = {k: after[k][0] - before[k][0] for k in after}
    return bps, fast


def rps(t: fastpath.Topo, seconds: float, cap: int) -> float:
    """Requests/s over at most `seconds` and `cap` requests (each takes a client port and a
    conntrack entry that lingers in TIME_WAIT: uncapped, later rounds run out and stall)."""
    argv = ("-c", RPS, fastpath.PROT, str(seconds), str(cap))
    return float(t.lab.run(t.client, fastpath.PY, *argv, timeout=seconds + 30).stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--requests-s", type=float, default=3.0)
    ap.add_argument("--requests", type=int, default=3000, help="at most this many requests per round")
    ap.add_argument("--streams", type=int, default=8, help="parallel TCP streams of the second figure")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    budget = a.rounds * 3 * (2 * a.seconds + a.requests_s + 15) + 120
    figures = ("gbps", f"gbps_{a.streams}", "rps")
    results = {v: {**{f: [] for f in figures}, "fast_packets": []} for v in fastpath.VARIANTS}
    with Lab(timeout=120) as lab:
        topos = [fastpath.build(lab, v, budget) for v in fastpath.VARIANTS]
        for r in range(a.rounds):
            for t in topos[r % 3 :] + topos[: r % 3]:
                bps, fast = stream(t, a.seconds)
                results[t.variant]["gbps"].append(bps * 8 / 1e9)
                if fast is not None:
                    results[t.variant]["fast_packets"].append(fast)
                bps, _ = stream(t, a.seconds, a.streams)
                results[t.variant][f"gbps_{a.streams}"].append(bps * 8 / 1e9)
                results[t.variant]["rps"].append(rps(t, a.requests_s, a.requests))
    med = {v: {k: statistics.median(results[v][k]) for k in figures} for v in results}
    ratios = {f"fast/{base}": {k: med["fast"][k] / med[base][k] for k in figures} for base in ("plain", "xdp")}
    ratios["xdp/plain"] = {k: med["xdp"][k] / med["plain"][k] for k in figures}
    print(json.dumps(results), file=sys.stderr)  # every round, whatever happens below
    if a.json:
        print(json.dumps({"median": med, "ratios": ratios, "rounds": results}, indent=2))
        return 0
    n = a.streams
    print(f"{a.rounds} interleaved rounds, medians: TCP streams for {a.seconds:g} s; a new connection per request")
    print(f"{'':12} {'1 stream':>12} {f'{n} streams':>12} {'requests/s':>12}")
    for v in fastpath.VARIANTS:
        m = med[v]
        print(f"{v:12} {m['gbps']:>7.2f} Gb/s {m[f'gbps_{n}']:>7.2f} Gb/s {m['rps']:>12.0f}")
    for name, rr in ratios.items():
        print(f"{name:12} {rr['gbps']:>11.2f}x {rr[f'gbps_{n}']:>11.2f}x {rr['rps']:>11.2f}x")
    print("fast path packets per stream round (in/out/end/fib):", results["fast"]["fast_packets"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
