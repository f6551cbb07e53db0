#!/usr/bin/env python3
"""What observability costs: the data path with sampling off / 1 in 256 / 1 in 64 / 1 in 1, and the
dashboard's own CPU during an attack.

  sudo .venv/bin/python scripts/bench_observability.py [--rounds 30] [--top-seconds 10] [--json]

1. ns/packet through BPF_PROG_TEST_RUN (kernel's mean over `repeat` runs) of a blocklisted UDP
   packet (the spoofed-flood case) and a clean pass, with sample_every = 0, 64 and 1, interleaved
   over rounds in the same run; medians. The ring is drained between runs, so every sample is a
   real ring write (repeat is kept below the ring's capacity).
2. `xdpguard top --interval 1` under a pty for --top-seconds during a bounded UDP flood in a
   namespace lab (198.18.0.0/15), attacker blocklisted: CPU seconds (user+sys, from wait4) per
   second of wall time, minus its start-up cost (`top --once`, measured the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from xdpguard.core import guard  # noqa: E402
from xdpguard.core.observe import sampling  # noqa: E402
from xdpguard.core.kernel.abi import MapName  # noqa: E402
from xdpguard.core.testrun import TestBed  # noqa: E402

PROT, ATTACKER, CLIENT = "198.18.0.2", "198.18.0.5", "198.18.0.1"
MODES = (0, 256, 64, 1)


def bench_datapath(rounds: int, repeat: int) -> dict:
    pkts = {
        "blocklist_drop": bytes(Ether() / IP(src=ATTACKER, dst=PROT) / UDP(sport=4444, dport=53) / Raw(b"A" * 64)),
        "clean_pass": bytes(Ether() / IP(src=CLIENT, dst=PROT) / UDP(sport=4444, dport=53) / Raw(b"A" * 64)),
    }
    res: dict[str, dict[int, list[int]]] = {k: {m: [] for m in MODES} for k in pkts}
    with TestBed() as tb:
        tb.protect(PROT)
        tb.add("block", ATTACKER)
        with sampling.SampleReader(tb.maps[MapName.SAMPLES].fd) as reader:
            for pkt in pkts.values():  # warm up
                tb.run(pkt, repeat=repeat)
            for _ in range(rounds):
                for name, pkt in pkts.items():
                    for mode in MODES:
                        guard.set_sample_every(tb.maps, mode)
                        reader.drain()
                        _, ns = tb.run(pkt, repeat=repeat)
                        res[name][mode].append(ns)
            taken, lost = guard.sample_counters(tb.maps)
            guard.set_sample_every(tb.maps, 0)
            reader.drain()
    out = {name: {f"sample_every_{m}": statistics.median(v) for m, v in modes.items()} for name, modes in res.items()}
    out["samples_taken"], out["samples_lost"] = taken, lost
    return out


FLOOD = """
import socket, sys, time
src, dst, pps, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0))
sent, start, limit = 0, time.monotonic(), int(pps * secs)
while sent < limit and time.monotonic() - start < secs:
    due = min(limit, int((time.monotonic() - start) * pps) + 100)
    while sent < due:
        try: s.sendto(b"A" * 64, (dst, 53))
        except OSError: pass
        sent += 1
    time.sleep(0.002)
print(sent)
"""


def _run_pty(argv: list[str], env: dict, seconds: float | None) -> tuple[float, float]:
    """Run argv on a pty (rows 30, cols 100); after `seconds` press q. Returns (cpu s, wall s)."""
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    deadline = t0 + (seconds or 30) + 15
    status = None
    while time.monotonic() < deadline:
        try:
            while os.read(master, 65536):  # keep the pty drained
                import select

                if not select.select([master], [], [], 0)[0]:
                    break
        except OSError:
            pass
        if seconds is not None and time.monotonic() - t0 >= seconds:
            os.write(master, b"q")
            seconds = None
        pid, st, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            status = ru
            break
        time.sleep(0.05)
    if status is None:
        p.kill()
        _, _, status = os.wait4(p.pid, 0)
    os.close(master)
    return status.ru_utime + status.ru_stime, time.monotonic() - t0


def bench_top(seconds: float, flood_pps: int) -> dict:
    from xdpguard.lab.netns import Lab

    with Lab() as lab, tempfile.TemporaryDirectory() as sd:
        atk, prot = lab.netns("batk"), lab.netns("bprot")
        lab.veth(atk, "xga0", prot, "xgp0")
        lab.addr(atk, "xga0", "198.18.0.5/29")
        lab.addr(prot, "xgp0", "198.18.0.2/29")
        env = {**os.environ, "XDPGUARD_STATE_DIR": sd, "TERM": "xterm-256color"}
        xg = ["ip", "netns", "exec", prot, str(REPO / ".venv/bin/xdpguard")]
        subprocess.run([*xg, "attach", "xgp0", "--protect", PROT], check=True, env=env, capture_output=True)
        lab.defer("detach", subprocess.run, [*xg, "detach", "xgp0"], env=env, capture_output=True)
        subprocess.run([*xg, "block", "add", ATTACKER], check=True, env=env, capture_output=True)
        flood = lab.popen(
            atk,
            sys.executable,
            "-c",
            FLOOD,
            ATTACKER,
            PROT,
            str(flood_pps),
            str(seconds + 8),
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)
        once_cpu, once_wall = _run_pty([*xg, "top", "xgp0", "--once", "--interval", "0.2"], env, None)
        cpu, wall = _run_pty([*xg, "top", "xgp0", "--interval", "1"], env, seconds)
        sent = int(flood.communicate(timeout=seconds + 30)[0].strip())
    steady = max(0.0, cpu - once_cpu) / max(1e-6, wall - once_wall)
    return {
        "top_cpu_s": round(cpu, 3),
        "top_wall_s": round(wall, 2),
        "startup_cpu_s": round(once_cpu, 3),
        "steady_cpu_percent": round(steady * 100, 2),
        "flood_packets": sent,
        "flood_pps": round(sent / (seconds + 8)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=2000, help="runs per measurement (below the ring's ~2600 records)")
    ap.add_argument("--top-seconds", type=float, default=10.0)
    ap.add_argument("--flood-pps", type=int, default=20_000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    dp = bench_datapath(a.rounds, a.repeat)
    top = bench_top(a.top_seconds, a.flood_pps)
    if a.json:
        print(json.dumps({"datapath_ns_per_packet": dp, "top": top}, indent=2))
        return
    print(f"data path, ns/packet (median of {a.rounds} interleaved rounds × {a.repeat} runs)")
    for name in ("blocklist_drop", "clean_pass"):
        v = dp[name]
        base = v["sample_every_0"] or 1
        print(
            f"  {name:15s} off {v['sample_every_0']:6.1f}   1/256 {v['sample_every_256']:6.1f} "
            f"({v['sample_every_256'] / base:.2f}x)   1/64 {v['sample_every_64']:6.1f} "
            f"({v['sample_every_64'] / base:.2f}x)   1/1 {v['sample_every_1']:6.1f} ({v['sample_every_1'] / base:.2f}x)"
        )
    print(f"  samples taken {dp['samples_taken']}, lost {dp['samples_lost']}")
    print(
        f"top --interval 1 for {top['top_wall_s']} s during a {top['flood_pps']} pps flood: "
        f"{top['top_cpu_s']} CPU s total, start-up {top['startup_cpu_s']} s, steady {top['steady_cpu_percent']}% of a CPU"
    )


if __name__ == "__main__":
    main()
