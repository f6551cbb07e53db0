#!/usr/bin/env python3
"""Benchmark xdpguard's data path and blocklist loading, side by side with references.

  .venv/bin/python scripts/bench.py [--quick] [--prefixes N] [--json [FILE]]

Needs root and bcc. Nothing is attached to an interface: the XDP programs run through
BPF_PROG_TEST_RUN. ipset runs only inside a private network namespace made (and deleted) here.

1. ns/packet (kernel's mean over `repeat` runs) of a bare XDP_DROP program, xdpguard on a clean
   pass, on a blocklist hit with 1 entry and with N entries (v4 and v6 sources).
2. Wall time to load N prefixes the way `xdpguard block load` does (read_prefix_file + Guard.upsert)
   into an empty map and into a map already holding them (refresh), next to `ipset restore` of the
   same prefixes into hash:net sets.

The machine may be shared and noisy: variants are interleaved over several rounds and medians
are reported. Ratios, not absolute numbers, are the meaningful output.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xdpguard.core.kernel import libbpf  # noqa: E402
from xdpguard.core.prefixes import read_prefix_file  # noqa: E402
from xdpguard.core.guard import Guard  # noqa: E402
from xdpguard.core.testrun import TestBed, bare_drop_prog, interleaved_rounds  # noqa: E402

# Addresses: blocklist entries from 198.18.0.0/15 and 2001:db8::/32; packet destinations and
# clean sources from TEST-NETs / a reserved 2001:db8 /64 that no entry covers.
DST4, DST6 = "198.51.100.10", "2001:db8:ffff:fffe::10"
CLEAN4, CLEAN6 = "192.0.2.7", "2001:db8:ffff:ffff::7"
RESERVED_V6_64 = 0xFFFFFFFF  # bits 32..63 of 2001:db8:ffff:ffff::/64 — never blocklisted
V4_BASE = int.from_bytes(socket.inet_aton("198.18.0.0"), "big")
V6_BASE = 0x20010DB8 << 96
SET4, SET6 = "xgb4", "xgb6"


# ---------------------------------------------------------------- prefix set


def make_prefixes(n: int, seed: int = 2544) -> tuple[list[str], dict]:
    """n distinct CIDR strings, shuffled. IPv4 gets up to half of n, capped at what
    198.18.0.0/15 holds as /32s plus /24s (131,072 + 512); IPv6 (2001:db8::/32) the rest, half
    /64s with random bits 32..63 and half /128s with random host bits."""
    rng = random.Random(seed)
    v4_pool = [(V4_BASE + i, 32) for i in range(1 << 17)] + [(V4_BASE + (i << 8), 24) for i in range(512)]
    n4 = min(len(v4_pool), n // 2)
    v4 = rng.sample(v4_pool, n4)
    n6 = n - n4
    n64, n128 = n6 // 2, n6 - n6 // 2
    mids = rng.sample(range(1 << 32), n64 + 1)
    mids = [m for m in mids if m != RESERVED_V6_64][:n64]
    v6_64 = [(V6_BASE | (m << 64), 64) for m in mids]
    v6_128: set[int] = set()
    while len(v6_128) < n128:
        a = V6_BASE | rng.getrandbits(96)
        if (a >> 64) & 0xFFFFFFFF != RESERVED_V6_64:
            v6_128.add(a)
    out = [f"{socket.inet_ntoa(a.to_bytes(4, 'big'))}/{p}" for a, p in v4]
    out += [f"{socket.inet_ntop(socket.AF_INET6, a.to_bytes(16, 'big'))}/{p}" for a, p in v6_64]
    out += [f"{socket.inet_ntop(socket.AF_INET6, a.to_bytes(16, 'big'))}/128" for a in sorted(v6_128)]
    rng.shuffle(out)
    mix = {
        "total": len(out),
        "v4_/32": sum(1 for _, p in v4 if p == 32),
        "v4_/24": sum(1 for _, p in v4 if p == 24),
        "v6_/64": len(v6_64),
        "v6_/128": len(v6_128),
    }
    assert len(set(out)) == n == len(out)
    return out, mix


def pick_sources(cidrs: list[str], rng: random.Random) -> dict[str, str]:
    """Packet sources that hit: a listed v4 /32, a listed v6 /128, an address inside a listed /64."""

    def pick(suffix: str) -> str:
        cands = [c for c in cidrs if c.endswith(suffix) and (":" in c) == (suffix != "/32")]
        return rng.choice(cands)

    p64 = pick("/64").split("/")[0]
    inside64 = socket.inet_ntop(
        socket.AF_INET6, (int.from_bytes(socket.inet_pton(socket.AF_INET6, p64), "big") | 0x1234).to_bytes(16, "big")
    )
    return {"v4": pick("/32").split("/")[0], "v6": pick("/128").split("/")[0], "v6_in64": inside64}


# ---------------------------------------------------------------- packets and programs


def udp_packet(src: str, dst: str) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    l3 = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst, ttl=64)
    pkt = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3 / UDP(sport=40000, dport=53))
    return pkt + b"\x00" * max(0, 64 - len(pkt))  # 64-byte frames (without FCS)


def new_bed() -> TestBed:
    bed = TestBed()
    bed.protect(DST4, DST6)
    return bed


def guard_on(bed: TestBed) -> Guard:
    """The Guard of `xdpguard block load`, over a TestBed's maps instead of an attached program's."""
    return Guard(None, None, bed.maps)


# ---------------------------------------------------------------- ipset in a private netns


class Netns:
    def __init__(self):
        self.name = f"xgbench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        atexit.register(self.close)

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], **kw)

    def destroy_sets(self) -> None:
        for s in (SET4, SET6):
            self.run(["ipset", "destroy", s], capture_output=True, check=False)

    def close(self) -> None:
        if self.name and os.path.exists(f"/run/netns/{self.name}"):
            self.destroy_sets()
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        self.name = ""


def write_ipset_file(path: Path, cidrs: list[str]) -> None:
    n4 = sum(1 for c in cidrs if ":" not in c)
    n6 = len(cidrs) - n4

    def hashsize(n: int) -> int:  # generous, so ipset never resizes (kinder to ipset, not to us)
        return max(1024, 1 << max(0, (n - 1).bit_length()))

    with open(path, "w") as fh:
        fh.write(f"create {SET4} hash:net family inet hashsize {hashsize(n4)} maxelem {max(65536, 2 * n4)}\n")
        fh.write(f"create {SET6} hash:net family inet6 hashsize {hashsize(n6)} maxelem {max(65536, 2 * n6)}\n")
        for c in cidrs:
            fh.write(f"add {SET6 if ':' in c else SET4} {c}\n")


# ---------------------------------------------------------------- timing helpers


class Phase:
    """Wall, user CPU and system CPU (kernel) time of a block, for this process and children."""

    def __enter__(self):
        self._r0 = resource.getrusage(resource.RUSAGE_SELF)
        self._c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.user = (r1.ru_utime - self._r0.ru_utime) + (c1.ru_utime - self._c0.ru_utime)
        self.sys = (r1.ru_stime - self._r0.ru_stime) + (c1.ru_stime - self._c0.ru_stime)


class BatchTimer:
    """Times libbpf.map_update_batch (the empty-map insert: one syscall per map) without
    changing what it does; installed only in this process."""

    def __init__(self):
        self.seconds = 0.0
        self._orig = libbpf.map_update_batch

    def __enter__(self):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return self._orig(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0

        libbpf.map_update_batch = timed
        return self

    def __exit__(self, *exc):
        libbpf.map_update_batch = self._orig


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------- part 2: loading


def load_round(prefix_file: Path, expect: int) -> tuple[TestBed, dict]:
    """`xdpguard block load` into a fresh (empty) map, then again into the now full map."""
    bed = new_bed()
    g = guard_on(bed)
    res = {}
    for label in ("empty", "refresh"):
        with Phase() as parse:
            pf = read_prefix_file(prefix_file)
        with BatchTimer() as bt, Phase() as ups:
            added, updated = g.upsert("block", pf.prefixes, 0)
        if (added, updated) != ((expect, 0) if label == "empty" else (0, expect)):
            raise SystemExit(f"bench: {label} load gave added={added} updated={updated}, expected {expect}")
        res[label] = {
            "total_s": parse.wall + ups.wall,
            "parse_s": parse.wall,
            "upsert_s": ups.wall,
            "upsert_sys_s": ups.sys,  # kernel CPU time inside the upsert (the inserts themselves)
            "upsert_user_s": ups.user,
            "batch_syscall_s": bt.seconds,  # wall time inside bpf_map_update_batch (empty path)
        }
        del pf
    return bed, res


def ipset_round(ns: Netns, ipset_file: Path, expect: int) -> dict:
    ns.destroy_sets()
    with open(ipset_file, "rb") as fh, Phase() as ph:
        ns.run(["ipset", "restore"], stdin=fh, check=True)
    got = 0
    for s in (SET4, SET6):
        out = ns.run(["ipset", "list", "-t", s], capture_output=True, text=True, check=True).stdout
        got += int(next(line.split(":")[1] for line in out.splitlines() if line.startswith("Number of entries")))
    if got != expect:
        raise SystemExit(f"bench: ipset holds {got} entries, expected {expect}")
    ns.destroy_sets()
    return {"total_s": ph.wall, "user_s": ph.user, "sys_s": ph.sys}


# ---------------------------------------------------------------- part 1: per-packet cost


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer rounds and repeats; 100,000 prefixes unless --prefixes")
    ap.add_argument("--prefixes", type=int, help="blocklist size (default 1,000,000)")
    ap.add_argument("--rounds", type=int, help="BPF_PROG_TEST_RUN rounds (default 11, quick 3)")
    ap.add_argument("--load-rounds", type=int, help="load rounds (default 3, quick 1)")
    ap.add_argument("--repeat", type=int, help="BPF_PROG_TEST_RUN repeat per call (default 1e6, quick 1e5)")
    ap.add_argument(
        "--json", nargs="?", const="-", metavar="FILE", help="also write results as JSON (to FILE, or stdout)"
    )
    a = ap.parse_args(argv)
    n = a.prefixes or (100_000 if a.quick else 1_000_000)
    rounds = a.rounds or (3 if a.quick else 11)
    load_rounds = a.load_rounds or (1 if a.quick else 3)
    repeat = a.repeat or (100_000 if a.quick else 1_000_000)
    if n < 4 or n > 2_000_000:
        ap.error("--prefixes must be between 4 and 2,000,000 (per-family map size is 2,097,152)")
    if os.geteuid() != 0:
        print("bench: needs root (BPF_PROG_TEST_RUN, ipset in a netns)", file=sys.stderr)
        return 2

    t_start = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run atexit cleanup on kill
    kernel = os.uname().release
    cpus = os.cpu_count()
    print(
        f"xdpguard bench — kernel {kernel}, {cpus} CPUs, {n:,} prefixes, "
        f"test-run {rounds} rounds x {repeat:,} repeats, load {load_rounds} round(s)"
    )
    print("note: the machine may be shared and noisy; ratios, not absolute numbers, are the meaningful output.")

    cidrs, mix = make_prefixes(n)
    src = pick_sources(cidrs, random.Random(7))
    print("prefix mix: " + ", ".join(f"{k} {v:,}" for k, v in mix.items()))

    ns = Netns()
    tmp = tempfile.TemporaryDirectory(prefix="xgbench-")
    beds: list[TestBed] = []
    big = None
    try:
        prefix_file = Path(tmp.name) / "block.txt"
        ipset_file = Path(tmp.name) / "ipset.restore"
        prefix_file.write_text("# xdpguard bench blocklist\n" + "\n".join(cidrs) + "\n")
        write_ipset_file(ipset_file, cidrs)
        del cidrs

        # ---- part 2: loading (interleaved with ipset, order alternating) ----
        loads: dict[str, list[dict]] = {"empty": [], "refresh": [], "ipset": []}
        for r in range(load_rounds):
            steps = ["xdp", "ipset"] if r % 2 == 0 else ["ipset", "xdp"]
            for s in steps:
                if s == "ipset":
                    loads["ipset"].append(ipset_round(ns, ipset_file, n))
                    continue
                if big is not None:
                    big.close()
                    big = None
                big, res = load_round(prefix_file, n)
                loads["empty"].append(res["empty"])
                loads["refresh"].append(res["refresh"])
            print(
                f"  load round {r + 1}/{load_rounds}: empty {loads['empty'][-1]['total_s']:.2f} s, "
                f"refresh {loads['refresh'][-1]['total_s']:.2f} s, ipset {loads['ipset'][-1]['total_s']:.2f} s",
                flush=True,
            )
        ns.close()

        # ---- part 1: per-packet cost ----
        small = new_bed()
        beds.append(small)
        small.add("block", f"{src['v4']}/32")
        small.add("block", f"{src['v6']}/128")
        bare_bpf, bare_fd = bare_drop_prog()
        pk = {
            "v4_hit": udp_packet(src["v4"], DST4),
            "v6_hit": udp_packet(src["v6"], DST6),
            "v6_in64": udp_packet(src["v6_in64"], DST6),
            "v4_clean": udp_packet(CLEAN4, DST4),
            "v6_clean": udp_packet(CLEAN6, DST6),
        }
        # Check every variant takes the intended path before timing it.
        expect = [
            (small, "v4_clean", "pass", "clean"),
            (small, "v6_clean", "pass", "clean"),
            (big, "v4_clean", "pass", "clean"),
            (big, "v6_clean", "pass", "clean"),
            (small, "v4_hit", "drop", "blocklist"),
            (small, "v6_hit", "drop", "blocklist"),
            (big, "v4_hit", "drop", "blocklist"),
            (big, "v6_hit", "drop", "blocklist"),
            (big, "v6_in64", "drop", "blocklist"),
        ]
        for bed, p, action, reason in expect:
            v = bed.verdict(pk[p])
            if v.action != action or v.reason.label != reason:
                raise SystemExit(f"bench: {p} gave {v}, expected {action}/{reason}")
        DROP, PASS = 1, 2
        variants = {
            "bare XDP_DROP (v4 pkt)": (bare_fd, pk["v4_hit"], DROP),
            "bare XDP_DROP (v6 pkt)": (bare_fd, pk["v6_hit"], DROP),
            "clean pass v4": (small.prog.prog_fd, pk["v4_clean"], PASS),
            "clean pass v6": (small.prog.prog_fd, pk["v6_clean"], PASS),
            f"clean pass v4, {n:,} listed": (big.prog.prog_fd, pk["v4_clean"], PASS),
            f"clean pass v6, {n:,} listed": (big.prog.prog_fd, pk["v6_clean"], PASS),
            "block hit v4, 1 entry": (small.prog.prog_fd, pk["v4_hit"], DROP),
            "block hit v6, 1 entry": (small.prog.prog_fd, pk["v6_hit"], DROP),
            f"block hit v4 /32, {n:,} entries": (big.prog.prog_fd, pk["v4_hit"], DROP),
            f"block hit v6 /128, {n:,} entries": (big.prog.prog_fd, pk["v6_hit"], DROP),
            f"block hit v6 in /64, {n:,} entries": (big.prog.prog_fd, pk["v6_in64"], DROP),
        }
        samples = interleaved_rounds(variants, rounds, repeat)
        bare_bpf.cleanup()
    finally:
        for b in [big, *beds]:
            if b is not None:
                b.close()
        ns.close()
        tmp.cleanup()

    ns_med = {k: med(v) for k, v in samples.items()}
    keys = list(variants)
    bare4, bare6, clean4, clean6, cbig4, cbig6, hit4, hit6, big4, big6, big64 = (ns_med[k] for k in keys)
    ratios = {
        "block hit 1 entry / bare drop, v4 (target <= 2.5)": hit4 / bare4,
        "block hit 1 entry / bare drop, v6 (target <= 2.5)": hit6 / bare6,
        f"block hit {n:,} / bare drop, v4 (target <= 2.5)": big4 / bare4,
        f"block hit {n:,} / bare drop, v6 (target <= 2.5)": big6 / bare6,
        f"block hit {n:,} / 1 entry, v4 (target <= 1.3)": big4 / hit4,
        f"block hit {n:,} / 1 entry, v6 (target <= 1.3)": big6 / hit6,
        "clean pass / bare drop, v4": clean4 / bare4,
        "clean pass / bare drop, v6": clean6 / bare6,
        f"clean pass with {n:,} listed / with 1, v4": cbig4 / clean4,
        f"clean pass with {n:,} listed / with 1, v6": cbig6 / clean6,
    }

    def lmed(kind: str, field: str) -> float:
        return med([x[field] for x in loads[kind]])

    load = {k: {f: lmed(k, f) for f in loads[k][0]} for k in loads}
    load_ratios = {
        "xdpguard empty load / ipset restore": load["empty"]["total_s"] / load["ipset"]["total_s"],
        "xdpguard refresh load / ipset restore": load["refresh"]["total_s"] / load["ipset"]["total_s"],
    }

    # ---- report ----
    w = max(len(k) for k in keys) + 2
    print(f"\n1. BPF_PROG_TEST_RUN, 64-byte UDP, median of {rounds} x {repeat:,} runs (ns/packet)")
    print(f"   {'variant':<{w}}{'median':>8}{'min':>8}{'max':>8}   vs bare")
    for k in keys:
        bare = bare6 if "v6" in k else bare4
        s = samples[k]
        print(f"   {k:<{w}}{ns_med[k]:>8.1f}{min(s):>8.0f}{max(s):>8.0f}   {ns_med[k] / bare:>5.2f}x")
    w2 = max(len(k) for k in ratios) + 2
    print("\n   ratios")
    for k, v in ratios.items():
        print(f"   {k:<{w2}}{v:>6.2f}")

    print(f"\n2. Loading {n:,} prefixes, median of {load_rounds} round(s) (seconds)")
    print(f"   {'path':<34}{'total':>8}{'parse':>8}{'upsert':>8}{'kernel':>8}{'batch':>8}")
    for k, label in (("empty", "xdpguard block load, empty map"), ("refresh", "xdpguard block load, refresh")):
        d = load[k]
        batch = f"{d['batch_syscall_s']:>8.2f}" if k == "empty" else f"{'-':>8}"
        print(
            f"   {label:<34}{d['total_s']:>8.2f}{d['parse_s']:>8.2f}{d['upsert_s']:>8.2f}{d['upsert_sys_s']:>8.2f}{batch}"
        )
    d = load["ipset"]
    print(f"   {'ipset restore (hash:net, netns)':<34}{d['total_s']:>8.2f}{'':>8}{'':>8}{d['sys_s']:>8.2f}")
    print("   parse = read_prefix_file; upsert = Guard.upsert (dedupe, key packing, syscalls); kernel = system")
    print("   CPU time in the upsert (ipset: in the ipset process); batch = wall time inside bpf_map_update_batch")
    for k, v in load_ratios.items():
        print(f"   {k:<40}{v:>6.2f}")
    elapsed = time.perf_counter() - t_start
    print(f"\nbench took {elapsed:.0f} s")

    if a.json:
        doc = {
            "kernel": kernel,
            "cpus": cpus,
            "note": "shared, noisy machine: ratios, not absolute numbers, are the meaningful output",
            "config": {
                "prefixes": n,
                "rounds": rounds,
                "repeat": repeat,
                "load_rounds": load_rounds,
                "packet_bytes": 64,
            },
            "prefix_mix": mix,
            "sources": src,
            "testrun_ns": {k: {"median": ns_med[k], "samples": samples[k]} for k in keys},
            "testrun_ratios": ratios,
            "load_s": load,
            "load_rounds_detail": loads,
            "load_ratios": load_ratios,
            "elapsed_s": elapsed,
        }
        text = json.dumps(doc, indent=2)
        if a.json == "-":
            print(text)
        else:
            Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
