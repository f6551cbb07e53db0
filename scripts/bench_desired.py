#!/usr/bin/env python3
"""Desired state, measured (issue 9): apply/diff/export of a big config, drift repair latency,
the daemon's idle CPU, and what passes unfiltered while the program is upgraded under a flood.

    sudo .venv/bin/python scripts/bench_desired.py [--entries 1000000] [--quick]

Runs in a private namespace lab (198.18.0.0/15, no route off the machine), bounded in time,
and cleans up after itself. Prints a markdown table; absolute numbers depend on the machine
(2 shared cores here), so every figure says what it includes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xdpguard.lab.netns import Lab

PY = sys.executable
PROT, CLIENT, BLOCKED = "198.18.0.2", "198.18.0.1", "198.18.0.4"


def xg(lab: Lab, ns: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return lab.run(ns, "xdpguard", *args, timeout=timeout)


def timed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def big_config(entries: int, filters: int, forwards: int) -> str:
    lines = [
        "[[interface]]",
        'name = "xgp0"',
        f'protect = ["{PROT}", "2001:db8:0:1::2"]',
        f'block = ["{BLOCKED}/32"]',
        'block_files = ["LISTFILE"]',
        "",
    ]
    lines += ["[[interface.address]]", f'address = "{PROT}"', "limits = { src_pps = 100000 }", ""]
    for i in range(filters):
        lines += ["[[interface.filter]]", 'action = "drop"', 'proto = "udp"', f'dport = "{20000 + i}"', ""]
    for i in range(forwards):
        lines += ["[[interface.forward]]", 'proto = "tcp"', f'ports = "{1000 + i}"', 'to = ["198.18.1.2:8080"]', ""]
    return "\n".join(lines)


def list_file(path: Path, n: int) -> None:
    """n distinct host prefixes from the lab ranges: /32s of 198.18.0.0/15 first, then /128s of
    2001:db8::/32."""
    with open(path, "w") as f:
        k = 0
        for i in range(min(n, 131072 - 16)):
            v = (198 << 24) | (18 << 16) | (i + 16)
            f.write(f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}\n")
            k += 1
        i = 0
        while k < n:
            f.write(f"2001:db8:{(i >> 32) & 0xFFFF:x}:{(i >> 16) & 0xFFFF:x}:{i & 0xFFFF:x}::1/128\n")
            i += 1
            k += 1


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100k entries, fewer rounds (about a minute)")
    args = ap.parse_args()
    entries = 100_000 if args.quick else args.entries
    rounds = 3 if args.quick else 5
    rows: list[tuple[str, str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="xg-bench-desired-"))
    # a private state dir (the store, records, events.jsonl), removed with tmp: the machine's own
    # /var/lib/xdpguard is never written
    os.environ.setdefault("XDPGUARD_STATE_DIR", str(tmp / "state"))
    with Lab(timeout=900) as lab:
        lab.defer("remove temp dir", shutil.rmtree, tmp, True)
        cli, prot, be = lab.netns("cli"), lab.netns("prot"), lab.netns("be")
        lab.veth(cli, "xgc0", prot, "xgp0")
        lab.veth(prot, "xgb1", be, "xgb0")
        for cidr in (f"{CLIENT}/24", f"{BLOCKED}/24"):
            lab.addr(cli, "xgc0", cidr)
        lab.addr(prot, "xgp0", f"{PROT}/24")
        lab.addr(prot, "xgp0", "2001:db8:0:1::2/64")
        lab.addr(prot, "xgb1", "198.18.1.1/24")
        lab.addr(be, "xgb0", "198.18.1.2/24")
        list_file(tmp / "list.txt", entries)
        cfg = tmp / "big.toml"
        cfg.write_text(big_config(entries, 64, 100).replace("LISTFILE", str(tmp / "list.txt")))
        # on close (lab.run refuses once the lab is closing): the namespace would take the XDP
        # program with it, but not xdpguard's records of it
        lab.defer(
            "detach",
            subprocess.run,
            ["ip", "netns", "exec", prot, "xdpguard", "detach", "xgp0"],
            capture_output=True,
            timeout=120,
        )

        t_apply = timed(lambda: xg(lab, prot, "apply", "-f", str(cfg)))
        rows.append(
            (
                f"apply, empty box → {entries:,} list entries, 64 filters, 100 forwards (compile included)",
                f"{t_apply:.1f} s",
            )
        )
        t_noop = [timed(lambda: xg(lab, prot, "apply", "-f", str(cfg))) for _ in range(rounds)]
        rows.append(
            ("apply of the same file again (no changes; reads the kernel)", f"{statistics.median(t_noop):.1f} s")
        )
        t_diff = [timed(lambda: xg(lab, prot, "diff", "-f", str(cfg))) for _ in range(rounds)]
        rows.append(("diff of that file", f"{statistics.median(t_diff):.1f} s"))
        t_exp = [
            timed(lambda: xg(lab, prot, "export", "--overwrite", "-o", str(tmp / "exp.toml"))) for _ in range(rounds)
        ]
        rows.append(("export", f"{statistics.median(t_exp):.1f} s"))
        t_rec = [
            timed(lambda: xg(lab, prot, "limit", "set", "--src-pps", "50000", "--protected", PROT))
            for _ in range(rounds)
        ]
        rows.append(("an imperative verb (limit set), recording into the store", f"{statistics.median(t_rec):.2f} s"))

        # the daemon: idle CPU, drift repair
        small = tmp / "small.toml"
        small.write_text(big_config(0, 4, 4).replace('block_files = ["LISTFILE"]', ""))
        xg(lab, prot, "apply", "-f", str(small))
        log = open(tmp / "daemon.log", "w")
        d = lab.popen(
            prot,
            "xdpguard",
            "run",
            "--config",
            str(small),
            "--no-detect",
            "--duration",
            "600",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while "health checks every" not in (tmp / "daemon.log").read_text():
            assert time.monotonic() < deadline, (tmp / "daemon.log").read_text()
            time.sleep(0.2)
        time.sleep(2)
        idle_s = 10 if args.quick else 30
        c0, t0 = cpu_ticks(d.pid), time.monotonic()
        time.sleep(idle_s)
        c1, t1 = cpu_ticks(d.pid), time.monotonic()
        hz = os.sysconf("SC_CLK_TCK")
        rows.append(
            (
                f"daemon idle CPU over {idle_s} s (drift check every 0.5 s, health checks every 2 s, 4 forwards)",
                f"{100 * (c1 - c0) / hz / (t1 - t0):.2f} % of one core",
            )
        )

        def until(pred, timeout=20.0) -> float:
            t = time.monotonic()
            while not pred():
                if time.monotonic() - t > timeout:
                    return float("nan")
                time.sleep(0.01)
            return time.monotonic() - t

        def nft_present() -> bool:
            return "xdpguard" in lab.run(prot, "nft", "list", "tables").stdout

        def xdp_present() -> bool:
            return '"xdp"' in lab.run(prot, "ip", "-j", "-d", "link", "show", "xgp0").stdout

        nft, xdp = [], []
        for _ in range(rounds):
            lab.run(prot, "nft", "flush", "ruleset")
            nft.append(until(nft_present))
            lab.run(prot, "ip", "link", "set", "dev", "xgp0", "xdp", "off")
            xdp.append(until(xdp_present))
            time.sleep(0.5)
        rows.append(
            (
                "drift repair: `nft flush ruleset` → table back (median, max)",
                f"{statistics.median(nft):.2f} s, {max(nft):.2f} s",
            )
        )
        rows.append(
            (
                "drift repair: `ip link set xdp off` → our program back (median, max)",
                f"{statistics.median(xdp):.2f} s, {max(xdp):.2f} s",
            )
        )
        os.killpg(d.pid, signal.SIGTERM)
        d.wait(timeout=30)
        log.close()

        # upgrade under a flood from a blocked source: what gets past XDP?
        lab.run(
            prot,
            "nft",
            "-f",
            "-",
            input=(
                "table inet xgbench {\n counter leaked {}\n chain in {\n  type filter hook prerouting priority -300;\n"
                f"  ip saddr {BLOCKED} counter name leaked\n }}\n}}\n"
            ),
        )
        lab.defer(
            "nft bench table",
            subprocess.run,
            ["ip", "netns", "exec", prot, "nft", "delete", "table", "inet", "xgbench"],
            capture_output=True,
            timeout=60,
        )
        mac = json.loads(lab.run(prot, "ip", "-j", "link", "show", "xgp0").stdout)[0]["address"]
        flood = lab.popen(
            cli,
            PY,
            "-m",
            "xdpguard.lab.flood",
            "--iface",
            "xgc0",
            "--dst-mac",
            mac,
            "--dst",
            PROT,
            "--kind",
            "udp",
            "--src",
            BLOCKED,
            "--dport",
            "7",
            "--count",
            "5000000",
            "--duration",
            "40",
            "--pps",
            "50000",
            "--json",
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)
        swaps = [timed(lambda: xg(lab, prot, "upgrade", "xgp0", "--force")) for _ in range(2 if args.quick else 3)]
        out, _ = flood.communicate(timeout=90)  # the flood ends by itself (--duration)
        leaked = json.loads(lab.run(prot, "nft", "-j", "list", "counter", "inet", "xgbench", "leaked").stdout)
        packets = leaked["nftables"][1]["counter"]["packets"]
        sent = json.loads(out.strip().splitlines()[-1])["sent"] if out.strip() else 0
        rows.append(
            (
                f"upgrade under a {50_000:,} pps flood from a blocked source: {len(swaps)} atomic swaps "
                f"(median {statistics.median(swaps):.1f} s each, compile included)",
                f"{packets} of {sent:,} packets passed unfiltered",
            )
        )

    print("| measure | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
