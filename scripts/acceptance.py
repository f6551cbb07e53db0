#!/usr/bin/env python3
"""Issue 13's acceptance run, as an operator would do it: `xdpguard lab up` (attach + forward add,
nothing tuned) with the backend shaped like a small server, `xdpguard run` as the daemon, a real
client (ApacheBench, one request at a time, a new HTTP connection each), and Debian's own attack tools (hping3, t50,
nping) flooding the FORWARDED ports from spoofed sources — each flood bounded by a packet count
and by time. The yardstick is the control run: the same hping3 flood at a CLOSED port (dropped at
once by the port policy), which shows what the generator alone costs this machine; every attack
run has its own control run just before it, and its share is taken against that one.

    scripts/acceptance.py [--duration 6] [--rounds N] [--only TEXT ...] [--client ab|probe] [--json FILE]

Prints a markdown table: per attack the packets the tool sent, the client's rate (share of the
control's), p99, slow connections (>= 900 ms: a SYN retransmission), attack packets at the backend
(DSCP CS1, counted in the backend's namespace), XDP's drops by reason and the protector's
conntrack table at its peak during the flood (with the change from just before it: the client's
own closed connections stay there for nf_conntrack's TIME_WAIT); and, when the daemon
installs automatic mitigations, how long after the start one appeared and after the end it went.
Root; runs in its own namespace lab; leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xdpguard.lab import probe, topology  # noqa: E402

P = topology.PROT4
TOS = "0x20"  # DSCP CS1: counted at the backend as attack traffic


def hping(*flags: str) -> list[str]:
    return ["hping3", "-q", "--flood", "--rand-source", "--tos", TOS, *flags, P]


ATTACKS = [
    ("control: SYN at closed tcp/9999", hping("-S", "-p", "9999")),
    ("SYN tcp/80", hping("-S", "-p", "80")),
    ("ACK tcp/80", hping("-A", "-p", "80")),
    ("Xmas tcp/80", hping("-F", "-P", "-U", "-p", "80")),
    ("UDP udp/7", hping("--udp", "-p", "7", "-d", "64")),
    ("fragments udp/7", hping("--udp", "-p", "7", "-d", "600", "-f")),
    ("mixed (t50 T50)", ["t50", P, "--flood", "--turbo", "--protocol", "T50", "--dport", "80", "--tos", "32"]),
    ("RST tcp/80 (nping)", ["nping", "--tcp", "--flags", "rst", "-p", "80", "--rate", "20000", "-c", "400000",
                            "-S", "198.18.200.9", "--tos", "32", "-q", "-N", P]),
]


def counters() -> dict[tuple[str, str], int]:
    p = topology.xg(topology.ns_name("prot"), "status", topology.PROT_IFACE, "--json", check=False)
    if p.returncode != 0:
        return {}
    st = json.loads(p.stdout)
    return {(c["kind"], c["reason"]): c["packets"] for c in (st[0]["counters"] if st else [])}


class MitigationWatch(threading.Thread):
    """Follows the daemon's events.jsonl (every mitigation step is a line there, with its time):
    cheap, unlike polling `xdpguard mitigations list` (a CLI start, ~0.5 s of CPU, ten times a
    second took most of a core from the client and the generator in every row)."""

    def __init__(self, log: Path):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0
        self.active: set[str] = set()
        self.changes: list[tuple[float, int]] = []  # (wall time of the step, active mitigations after it)

    def poll(self) -> None:
        if not self.log.exists():
            return
        with self.log.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a torn last line waits for the next poll
        self.offset += end
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("kind") != "mitigation" or not rec.get("steps"):
                continue
            step = rec["steps"][-1]
            if step["step"] in ("lift", "del"):
                self.active.discard(rec["id"])
            elif step["step"] != "refused":
                self.active.add(rec["id"])
            self.changes.append((step["t"], len(self.active)))

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            self.stop.wait(0.2)
        self.poll()


def conntrack_count() -> int:
    p = topology.in_ns(topology.ns_name("prot"), "cat", "/proc/sys/net/netfilter/nf_conntrack_count", check=False)
    return int(p.stdout.strip() or 0)


class ConntrackWatch(threading.Thread):
    """The protector's conntrack table size, twice a second: its peak while the flood runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, conntrack_count())
            self.stop.wait(0.5)


def ab_client(duration: float) -> probe.ProbeResult:
    """ApacheBench in the client namespace: one request at a time, a new TCP connection each
    (HTTP/1.0, no keep-alive), 1.5 s timeout, per-request times from its -g file."""
    with tempfile.NamedTemporaryFile(prefix="xdpguard-ab-", suffix=".tsv", delete=False) as tf:
        gfile = tf.name
    try:
        t0 = time.monotonic()
        p = subprocess.run(["ip", "netns", "exec", topology.require_up("client"), "ab", "-q", "-r", "-c", "1",
                            "-n", "10000000", "-t", f"{duration:.1f}", "-s", "2", "-g", gfile, f"http://{P}/"],
                           capture_output=True, text=True, timeout=duration + 30, stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - t0
        times = []
        for line in Path(gfile).read_text().splitlines()[1:]:
            f = line.split("\t")
            if len(f) >= 5:
                times.append(float(f[4]))  # ttime: the whole request, connect included (ms)
    finally:
        os.unlink(gfile)
    m = re.search(r"Complete requests:\s+(\d+)", p.stdout)
    failed = re.search(r"Failed requests:\s+(\d+)", p.stdout)
    took = re.search(r"Time taken for tests:\s+([\d.]+)", p.stdout)
    done = int(m[1]) if m else 0
    bad = int(failed[1]) if failed else (0 if m else 1)
    ok = max(done - bad, 0)
    span = float(took[1]) if took else elapsed
    return probe.ProbeResult(proto="http", dst=P, port=80, sent=done, ok=ok,
                             success_pct=100.0 * ok / done if done else 0.0,
                             p50_ms=probe.percentile(times, 50), p99_ms=probe.percentile(times, 99),
                             max_ms=max(times) if times else None, elapsed_s=span,
                             errors={"failed": bad} if bad else {},
                             slow=sum(1 for t in times if t >= 900))


def client(kind: str, duration: float) -> probe.ProbeResult:
    if kind == "ab":
        return ab_client(duration)
    return probe.in_lab("http", 1_000_000, timeout=1.5, interval=0.0, duration=duration)


def cpu_ticks(pid: int | None) -> tuple[int, int, int]:
    """(the daemon's user+system ticks, the machine's softirq ticks, all ticks) from /proc."""
    own = 0
    if pid is not None:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            own = int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            pass
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return own, cpu[6], sum(cpu)


def one(name: str, argv: list[str], duration: float, daemon_pid: int | None = None, kind: str = "ab",
        settle: float = 12.0) -> dict:
    before, b0 = counters(), topology.backend_counts()
    c0 = cpu_ticks(daemon_pid)
    watch = MitigationWatch(Path(os.environ["XDPGUARD_STATE_DIR"]) / "events.jsonl")
    watch.start()
    ct0 = conntrack_count()
    ct = ConntrackWatch()
    ct.start()
    t0 = time.time()
    gen = subprocess.Popen(["ip", "netns", "exec", topology.ns_name("attacker"), "timeout", "-s", "INT",
                            str(duration + 1), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           stdin=subprocess.DEVNULL, start_new_session=True)
    time.sleep(1.0)
    res = client(kind, duration - 1.0)
    c1 = cpu_ticks(daemon_pid)
    out, _ = gen.communicate(timeout=duration + 30)
    t_end = time.time()
    ct.stop.set()
    ct.join()
    hz = os.sysconf("SC_CLK_TCK")
    span = max(res.elapsed_s, 1e-6)
    daemon_cpu = 100.0 * (c1[0] - c0[0]) / hz / span  # % of one core while the client ran
    softirq = 100.0 * (c1[1] - c0[1]) / max(c1[2] - c0[2], 1)  # % of all CPUs
    time.sleep(settle)  # mitigations must be lifted within 10 s of the end
    watch.stop.set()
    watch.join()
    after, b1 = counters(), topology.backend_counts()
    moved = {f"{k[0]} {k[1]}": v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    sent = re.search(r"(\d+) packets transmitted", out or "")
    on = next((t - t0 for t, n in watch.changes if n > 0 and t >= t0), None)
    off = next((t - t_end for t, n in watch.changes if t >= t_end and n == 0), None) if on is not None else None
    received = sum(v for k, v in moved.items() if not k.endswith("bypass"))
    return {"attack": name, "tool": argv[0], "sent": int(sent[1]) if sent else None, "received": received,
            "probe": res.to_dict(), "drops": {k: v for k, v in moved.items() if k.startswith("drop")},
            "backend": b1["attack"] - b0["attack"], "mitigation_on_s": on, "mitigation_off_s": off,
            "daemon_cpu_pct": round(daemon_cpu, 1), "softirq_pct": round(softirq, 1),
            "conntrack_before": ct0, "conntrack_peak": ct.peak}


def rate(r: dict) -> float:
    return r["probe"]["ok"] / max(r["probe"]["elapsed_s"], 1e-6)


def median_round(rs: list[dict]) -> dict:
    """The round with the median share of its own control (each attack run has a control run
    just before it: this 2-core machine's spare CPU drifts within minutes)."""
    return sorted(rs, key=share)[len(rs) // 2]


def share(r: dict) -> float:
    return rate(r) / max(rate(r["control"]), 1e-6) if r.get("control") else 1.0


def row(r: dict) -> str:
    p = r["probe"]
    rate = p["ok"] / max(p["elapsed_s"], 1e-6)
    pct = 100 * share(r)
    drops = ", ".join(f"{k.split()[1]} {v:,}" for k, v in sorted(r["drops"].items(), key=lambda kv: -kv[1])[:3])
    att = r["received"] or r["sent"] or 0
    back = f"{r['backend']:,} ({100 * r['backend'] / att:.2f} %)" if att else f"{r['backend']:,}"
    mit = "-" if r["mitigation_on_s"] is None else (
        f"on +{r['mitigation_on_s']:.1f} s, off +{r['mitigation_off_s']:.1f} s" if r["mitigation_off_s"] is not None
        else f"on +{r['mitigation_on_s']:.1f} s, still on")
    p99 = "-" if p["p99_ms"] is None else f"{p['p99_ms']:.0f}"
    return (f"| {r['attack']} | {r['received']:,} | {rate:,.0f} ({pct:.0f} %) | {p['success_pct']:.1f} % | {p99} | "
            f"{p.get('slow', 0)} | {back} | {drops or '-'} | {mit} | {r.get('daemon_cpu_pct', 0):.0f} % | "
            f"{r.get('softirq_pct', 0):.0f} % | {r['conntrack_peak']:,} ({r['conntrack_peak'] - r['conntrack_before']:+,}) |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per flood (2 to 30)")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="run only the attacks whose name contains TEXT (repeatable; the control always runs)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the whole list this many times (1 to 5); each row is the round with the median rate")
    ap.add_argument("--client", choices=("ab", "probe"), default="ab",
                    help="the legitimate client: ApacheBench (default) or xdpguard's own Python probe")
    a = ap.parse_args()
    rounds = min(max(a.rounds, 1), 5)
    attacks = [x for i, x in enumerate(ATTACKS) if i == 0 or not a.only or any(o in x[0] for o in a.only)]
    duration = min(max(a.duration, 2.0), 30.0)
    os.environ.setdefault("XDPGUARD_LAB_NAME", f"acc{os.getpid() % 100000}")
    # a private state dir: the daemon's event log and the lab's records go there and with it
    own_state = "XDPGUARD_STATE_DIR" not in os.environ
    if own_state:
        os.environ["XDPGUARD_STATE_DIR"] = tempfile.mkdtemp(prefix="xdpguard-acceptance-")
    daemon = None
    results: list[dict] = []
    try:
        up = topology.up(protected=True)
        topology.shape_backend()
        prot = topology.ns_name("prot")
        daemon = subprocess.Popen(["ip", "netns", "exec", prot, *topology.xdpguard_argv(), "run"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
        time.sleep(11)  # the TCP-state grace after attach
        base = client(a.client, duration - 1.0)
        base_ct = conntrack_count()
        print(f"lab up (XDP {up.xdp_mode}); no attack: {probe.describe(base)}", flush=True)
        for rnd in range(rounds):
            for name, argv in attacks[1:]:
                ctl = one(attacks[0][0], attacks[0][1], duration, daemon.pid, a.client, settle=2.0)
                print(f"{ctl['attack']}: {probe.describe(probe.ProbeResult(**ctl['probe']))}", flush=True)
                r = one(name, argv, duration, daemon.pid, a.client) | {"round": rnd, "control": ctl}
                results.append(r)
                print(f"{name}: {probe.describe(probe.ProbeResult(**r['probe']))} "
                      f"({100 * share(r):.0f} % of the control just before)", flush=True)
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=30)
        topology.down()
        if own_state:
            shutil.rmtree(os.environ["XDPGUARD_STATE_DIR"], ignore_errors=True)
    rows = [median_round([r for r in results if r["attack"] == name]) for name, _ in attacks[1:]]
    controls = sorted((r["control"] for r in results), key=rate)
    print("\n| attack | packets at XDP | client req/s (of control) | answered | p99 ms | slow (>= 0.9 s) | "
          "attack pkts at backend | XDP drops | automatic mitigation | daemon CPU (of a core) | softirq (of all) | "
          "conntrack peak (change) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| no attack | - | {base.ok / max(base.elapsed_s, 1e-6):,.0f} | {base.success_pct:.1f} % | "
          f"{base.p99_ms or 0:.0f} | {base.slow} | - | - | - | - | - | {base_ct:,} |")
    print(row(controls[len(controls) // 2]).replace("(100 %)", f"(median of {len(controls)} runs)", 1))
    for r in rows:
        print(row(r))
    if rounds > 1:
        print("\nclient req/s per round (share of the control run just before it): " + "; ".join(
            f"{name}: " + ", ".join(f"{rate(r):.0f} ({100 * share(r):.0f} %)" for r in results if r["attack"] == name)
            for name, _ in attacks[1:]))
    if a.json:
        Path(a.json).write_text(json.dumps({"base": base.to_dict(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
