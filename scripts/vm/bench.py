#!/usr/bin/env python3
"""Drop throughput and CPU per dropped packet in the VM: xdpguard (native XDP on virtio_net) vs
iptables raw PREROUTING vs nft netdev ingress, one after the other in one run.

The flood comes from the host-side namespace of `scripts/vm.sh` (trafgen on the tap, bounded in
packets AND time): UDP from 198.18.20.1 to the protective IP 198.18.20.2. In the guest each
method drops exactly that source; its own counter says how many packets it dropped, /proc/stat how
much guest CPU (all CPUs: user+system+irq+softirq) the flood cost. Rates are per second of flood.
Under TCG the absolute numbers are an emulator's: compare the methods with each other only.

Usage (via scripts/vm.sh bench [PACKETS]): bench.py --vm-sh scripts/vm.sh --netns NS --tap TAP
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time

SRC, DST, GUEST_MAC = "198.18.20.1", "198.18.20.2", "52:54:00:18:14:02"
METHODS = ("xdpguard", "iptables-raw", "nft-ingress")
XG = "/vagrant/.venv/bin/xdpguard"
MARK = "XDPG-BENCH-MARK"

SETUP = {
    "xdpguard": f"{XG} attach eth1 --protect {DST} --mode native >/dev/null && {XG} block add {SRC}/32 >/dev/null",
    "iptables-raw": f"iptables -t raw -I PREROUTING -i eth1 -s {SRC} -d {DST} -j DROP",
    "nft-ingress": (
        "nft 'add table netdev xgbench; add chain netdev xgbench in { type filter hook ingress device eth1 "
        f"priority -500; }}; add rule netdev xgbench in ip saddr {SRC} counter drop'"
    ),
}
COUNT = {
    "xdpguard": f"{XG} block list --json",
    "iptables-raw": "iptables -t raw -nvxL PREROUTING",
    "nft-ingress": "nft -j list table netdev xgbench",
}
TEARDOWN = {
    "xdpguard": f"{XG} detach eth1 >/dev/null",
    "iptables-raw": f"iptables -t raw -D PREROUTING -i eth1 -s {SRC} -d {DST} -j DROP",
    "nft-ingress": "nft delete table netdev xgbench",
}


def dropped(method: str, text: str) -> int:
    if method == "xdpguard":
        data = json.loads(text)
        entries = data if isinstance(data, list) else data.get("entries", data.get("blocklist", []))
        return sum(int(e.get("hits", 0)) for e in entries if e.get("prefix", "").startswith(SRC))
    if method == "iptables-raw":
        for line in text.splitlines():
            f = line.split()
            if len(f) > 8 and f[2] == "DROP" and f[7] == SRC:
                return int(f[0])
        return 0
    for item in json.loads(text)["nftables"]:
        for e in item.get("rule", {}).get("expr", []):
            if "counter" in e:
                return int(e["counter"]["packets"])
    return 0


class Bench:
    def __init__(self, vm_sh: str, netns: str, tap: str):
        self.vm_sh, self.netns, self.tap = vm_sh, netns, tap
        self.hz = 100

    def guest(self, cmd: str) -> str:
        p = subprocess.run(
            ["bash", self.vm_sh, "ssh", f"sudo sh -c {json.dumps(cmd)}"],
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        if p.returncode != 0:
            raise RuntimeError(f"guest: {cmd}: {p.stderr.strip() or p.stdout.strip()}")
        return p.stdout

    @staticmethod
    def busy(stat_line: str) -> int:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in stat_line.split()[1:8])
        return user + nice + system + irq + softirq

    def flood(self, packets: int, seconds: float) -> float:
        cfg = "{ eth(da=%s), ipv4(saddr=%s, daddr=%s, ttl=64), udp(sp=40000, dp=9), fill(0x41, 18) }" % (
            GUEST_MAC,
            SRC,
            DST,
        )
        with tempfile.NamedTemporaryFile("w", suffix=".cfg") as f:
            f.write(cfg)
            f.flush()
            t0 = time.monotonic()
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    "timeout",
                    "-s",
                    "INT",
                    str(seconds),
                    "trafgen",
                    "--dev",
                    self.tap,
                    "--conf",
                    f.name,
                    "--num",
                    str(packets),
                    "--cpus",
                    "1",
                    "--no-sock-mem",
                ],
                capture_output=True,
                timeout=seconds + 30,
                stdin=subprocess.DEVNULL,
            )
            return time.monotonic() - t0

    def clean(self) -> None:
        """Best effort: no method left from an interrupted run."""
        for m in METHODS:
            try:
                self.guest(f"{TEARDOWN[m]} 2>/dev/null")
            except RuntimeError:
                pass

    def measure(self, method: str, packets: int, seconds: float, flood: bool = True) -> dict:
        """One guest command around the flood: count, /proc/stat, sleep, /proc/stat, count. Only
        the sleep (the flood and what the guest does for it) lies between the two /proc/stat
        reads; ssh and the counter commands do not."""
        window = seconds + 5
        cmd = (
            f"{COUNT[method]}; echo {MARK}; head -n 1 /proc/stat; sleep {window}; head -n 1 /proc/stat; "
            f"echo {MARK}; {COUNT[method]}"
        )
        p = subprocess.Popen(
            ["bash", self.vm_sh, "ssh", f"sudo sh -c {json.dumps(cmd)}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        head = []
        while True:  # wait for the first /proc/stat read: the window is open
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"guest: {cmd}: {p.stderr.read()}")
            head.append(line)
            if line.startswith("cpu "):
                break
        wall = self.flood(packets, seconds) if flood else 0.0
        rest, err = p.communicate(timeout=window + 120)
        if p.returncode != 0:
            raise RuntimeError(f"guest: {cmd}: {err}")
        count0 = "".join(head).split(MARK)[0]
        stat1, count1 = rest.split(MARK, 1)
        n = dropped(method, count1) - dropped(method, count0)
        cpu_s = (self.busy(stat1.strip().splitlines()[0]) - self.busy(head[-1])) / self.hz
        return {
            "method": method,
            "sent": packets if flood else 0,
            "dropped": n,
            "flood_s": round(wall, 2),
            "drop_pps": round(n / wall) if wall else 0,
            "cpu_s": round(cpu_s, 2),
            "cpu_ns_per_drop": round(cpu_s * 1e9 / n) if n else None,
        }

    def run(self, method: str, packets: int, seconds: float, idle_cpu_s: float = 0.0) -> dict:
        self.guest(SETUP[method])
        try:
            r = self.measure(method, packets, seconds)
        finally:
            self.guest(TEARDOWN[method])
        # what the guest burns in the same window without a flood (timers, TCG overhead) is not the method's
        cpu = max(0.0, r["cpu_s"] - idle_cpu_s)
        r["cpu_s"] = round(cpu, 2)
        r["cpu_ns_per_drop"] = round(cpu * 1e9 / r["dropped"]) if r["dropped"] else None
        return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vm-sh", required=True)
    ap.add_argument("--netns", required=True)
    ap.add_argument("--tap", required=True)
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    b = Bench(a.vm_sh, a.netns, a.tap)
    b.clean()
    b.hz = int(b.guest("getconf CLK_TCK").strip() or 100)
    b.guest(SETUP["iptables-raw"])
    try:
        idle = b.measure("iptables-raw", 0, a.seconds, flood=False)["cpu_s"]
    finally:
        b.guest(TEARDOWN["iptables-raw"])
    rows = [b.run(m, a.packets, a.seconds, idle) for m in METHODS]
    if a.json:
        print(json.dumps({"idle_cpu_s": idle, "rows": rows}, indent=2))
        return
    print(f"guest CPU in the same window without a flood (subtracted): {idle:.2f} s")
    base = rows[0]
    print(
        f"{'method':<14}{'dropped':>10}{'flood s':>9}{'drop pps':>11}{'guest CPU s':>13}{'CPU ns/drop':>13}"
        f"{'pps vs xdpguard':>17}"
    )
    for r in rows:
        ratio = r["drop_pps"] / base["drop_pps"] if base["drop_pps"] else float("nan")
        print(
            f"{r['method']:<14}{r['dropped']:>10}{r['flood_s']:>9}{r['drop_pps']:>11}{r['cpu_s']:>13}"
            f"{r['cpu_ns_per_drop'] or '-':>13}{ratio:>16.2f}x"
        )


if __name__ == "__main__":
    main()
