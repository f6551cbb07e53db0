#!/usr/bin/env python3
"""Benchmark the cleansing pipeline: every step enabled vs a bare XDP_DROP, and spoofed floods.

  .venv/bin/python scripts/bench_cleansing.py [--quick] [--sources N] [--json [FILE]]

Needs root and bcc. Nothing is attached: the programs run through BPF_PROG_TEST_RUN.

1. ns/packet (the kernel's mean over `repeat` back-to-back runs of one packet) of a bare XDP_DROP
   program compiled in the same run, and of xdpguard with EVERY step in force: allow and block
   lists holding entries (none covering the source), bans present, fragment policy, protocol
   blocking (of "other"), port policy, reflection ports, 64 feature filters that all get as far
   as the payload compare and none of which matches, per-source pps/bps, per-destination pps and
   SYN-rate buckets with auto-ban (limits so high they never drop), and a SYN threshold (not
   reached). Variants are interleaved over rounds, order rotated; medians and ratios are
   reported. Target: clean UDP ≤ 3× the bare drop.
   TCP state (tcpstate.h) is on too: an ACK of a recorded connection (table hit), a spoofed ACK
   (dropped `tcpstate`), the same ACK to an address with the step off (its cost is the
   difference), an IPv6 ACK behind a destination-options header (the extension-header walk), and
   the tc egress recorder itself on a reply (SCHED_CLS test run, an entry refreshed).
2. Spoofed flood: N (default 1,000,000) distinct IPv6 sources, one packet each, against a
   single-source flood of N packets. BPF_PROG_TEST_RUN repeats one packet, so both floods are run
   the same way: one test run per packet (repeat=1), the source rewritten in place between runs,
   and the kernel's own per-run duration summed. The per-run figure therefore includes the fixed
   cost of a repeat=1 test run (timer start/stop); the ratio compares like with like. Each new
   source costs LRU inserts (xg_bucket_lru; with SYN authentication active also xg_synseen_lru),
   and past XG_SOURCES_MAX the LRU evicts. Target: ratio ≤ 2×. Two floods: UDP (rate-limit buckets)
   and SYN with the threshold exceeded (buckets + first-SYN state, every SYN dropped).
3. After the floods: the authenticated sources (xg_synauth_hash) and allowlist entries written
   before them are all still there (those maps are plain hashes, not LRUs).
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xdpguard.core.kernel import abi  # noqa: E402
from xdpguard.core import guard, policy  # noqa: E402
from xdpguard.core.kernel.abi import MapName  # noqa: E402
from benchcases import OnePacketRunner  # noqa: E402  (scripts/)
from xdpguard.core.policy import AddressPolicy, Filter, GlobalPolicy, Limits, SynPolicy  # noqa: E402
from xdpguard.core.prefixes import Prefix  # noqa: E402
from xdpguard.core.guard import Guard  # noqa: E402
from xdpguard.core.testrun import TestBed, bare_drop_prog, interleaved_rounds  # noqa: E402

DST4, DST6 = "198.51.100.10", "2001:db8:ffff:fffe::10"
DST4_OFF = "198.51.100.11"  # same ports, TCP state validation off
SRC4, SRC6 = "192.0.2.7", "2001:db8:f100::1"
FLOOD_BASE = int(ipaddress.IPv6Address("2001:db8:f100::"))  # flood sources: FLOOD_BASE + i
AUTH_BASE = int(ipaddress.IPv6Address("2001:db8:a0a0::"))  # authenticated before the flood
ALLOW_BASE = int(ipaddress.IPv6Address("2001:db8:aaaa::"))  # allowlisted before the flood
KEEP = 1000  # authenticated and allowlisted sources that must survive the flood
XDP_DROP, XDP_PASS = 1, 2
HUGE = Limits(
    src_pps=policy.MAX_PPS, src_bps=policy.MAX_BPS, dst_pps=policy.MAX_PPS, syn_src_pps=policy.MAX_PPS, ban_s=60
)


def frame(src: str, dst: str, l4: str = "udp") -> bytes:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    l3 = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst, ttl=64)
    l4h = UDP(sport=40000, dport=53) if l4 == "udp" else TCP(sport=40000, dport=80, flags="S")
    pkt = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3 / l4h)
    return pkt + b"\x00" * max(0, 64 - len(pkt))  # 64-byte frames (without FCS)


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: str, dest_opts: bool = False) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
    from scapy.layers.l2 import Ether

    l3 = (
        (IPv6(src=src, dst=dst) / IPv6ExtHdrDestOpt() if dest_opts else IPv6(src=src, dst=dst))
        if ":" in src
        else IP(src=src, dst=dst, ttl=64)
    )
    pkt = bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3 / TCP(sport=sport, dport=dport, flags=flags)
    )
    return pkt + b"\x00" * max(0, 64 - len(pkt))


def all_steps_bed() -> TestBed:
    """A TestBed with every cleansing step in force and nothing that drops clean traffic."""
    bed = TestBed()
    bed.protect(DST4, DST6, DST4_OFF)
    bed.tcpstate(True)
    m = bed.maps
    # 64 filters; each passes the cheap checks and fails only at the payload compare.
    filters = tuple(Filter(payload=bytes([0xDE, 0xAD, 0xBE, i]), payload_off=i % 16) for i in range(abi.FILTERS_MAX))
    guard.write_global_policy(m, GlobalPolicy(drop_fragments=True, reflection=True, filters=filters))
    g = Guard(None, None, m)
    for a in (DST4, DST6, DST4_OFF):
        ip = ipaddress.ip_address(a)
        guard.write_address_policy(m, ip, AddressPolicy(frozenset({"other"}), HUGE, SynPolicy(policy.MAX_PPS)))
        g.change_ports([ip], "tcp", 80, 80, abi.PORT_BY_OPERATOR, True)
        g.change_ports([ip], "udp", 53, 53, abi.PORT_BY_OPERATOR, True)
        g.change_ports([ip], "tcp", 443, 443, abi.PORT_BY_OPERATOR, True)
    # Lists with entries in every map (none covers the sources), and a live ban of someone else.
    block = [Prefix(4, ipaddress.IPv4Address(0xC6120000 + (i << 8)).packed, 24) for i in range(500)]
    block += [Prefix(4, ipaddress.IPv4Address(0xC6130000 + i).packed, 32) for i in range(500)]
    block += [Prefix(6, ipaddress.IPv6Address((0x20010DB8BBBB << 80) + (i << 64)).packed, 64) for i in range(500)]
    block += [Prefix(6, ipaddress.IPv6Address((0x20010DB8BBBC << 80) + i).packed, 128) for i in range(500)]
    g.upsert("block", block, 0)
    allow = [Prefix(6, ipaddress.IPv6Address(ALLOW_BASE + i).packed, 128) for i in range(KEEP)]
    allow += [
        Prefix(4, ipaddress.IPv4Address("203.0.113.0").packed, 24),
        Prefix(6, ipaddress.IPv6Address(ALLOW_BASE).packed, 64),
    ]
    g.upsert("allow", allow, 0)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    m[MapName.BANS].set(policy.src_key(ipaddress.ip_address("203.0.113.99")), abi.Ban(now + 3600 * 10**9, 0, 10, 0))
    m[MapName.DPSTATE].set(ctypes.c_uint32(0), abi.DpState(abi.DP_HAS_BANS))
    guard.sweep_bans(m, now)  # as the daemon's sweep does: the ban bloom on, no operator ban noted
    guard.set_tcpstate_address(m, ipaddress.ip_address(DST4_OFF), False)
    for reply in (tcp_frame(DST4, SRC4, 80, 40000, "A"), tcp_frame(DST6, SRC6, 80, 40000, "A")):
        bed.egress(reply)  # record the connections the benchmark's ACKs belong to
    for i in range(KEEP):  # authenticated sources, for the eviction check
        m[MapName.SYNAUTH].set(policy.src_key(ipaddress.IPv6Address(AUTH_BASE + i)), abi.SynAuth(now + 3600 * 10**9))
    keep_verified(bed)
    return bed


def keep_verified(bed: TestBed) -> None:
    """The egress replies above made SRC4 and SRC6 verified (knowngood.h); keep them so for any
    number of runs: a verified client's privilege (40,000 packets, then 20,000/s) runs out within
    one round of 100,000 runs, after which its SYN is answered with a cookie SYN-ACK (XDP_TX, the
    TCP budget of 500 SYNs/s is spent) that BPF_PROG_TEST_RUN's next repeat meets as a packet to
    no protected address (bypass): the every-step SYN case measured a bypass at ~2x from there on.
    (The UDP budget stays out of reach, as TestBed sets it.)"""
    bed.write_verify_settings(
        policy.VerifySettings(tcp_pps=policy.MAX_PPS, tcp_burst=1 << 32, budget_udp_pps=policy.MAX_PPS)
    )


# ---------------------------------------------------------------- part 1


# ---------------------------------------------------------------- part 2


def reset_sources(bed: TestBed) -> None:
    """Empty the per-source LRUs and the SYN window (one syscall per entry, so it is slow)."""
    for name in (MapName.BUCKETS, MapName.SYNSEEN):
        m = bed.maps[name]
        keys = list(m.keys())
        for k in keys:
            m.delete(k)
    for slot in range(2):
        bed.maps[MapName.SYNWIN].set(ctypes.c_uint32(slot), abi.SynWin(0, 0))


def set_syn_threshold(bed: TestBed, pps: int) -> None:
    """No retransmission can authenticate within the bench (min age 60 s)."""
    ip = ipaddress.ip_address(DST6)
    syn = SynPolicy(pps, auth_min_ms=60_000, auth_max_ms=120_000)
    guard.write_address_policy(bed.maps, ip, AddressPolicy(frozenset({"other"}), HUGE, syn))


def survivors(bed: TestBed) -> dict[str, int]:
    auth = bed.maps[MapName.SYNAUTH]
    allow = bed.maps[MapName.ALLOW6H]
    a = sum(auth.get(policy.src_key(ipaddress.IPv6Address(AUTH_BASE + i))) is not None for i in range(KEEP))
    k = abi.Addr6()
    n = 0
    for i in range(KEEP):
        ctypes.memmove(ctypes.addressof(k), (ALLOW_BASE + i).to_bytes(16, "big"), 16)
        n += allow.get(k) is not None
    return {"synauth": a, "allow": n}


def early_flood_sources_left(bed: TestBed, sample: int = 1000) -> int:
    m = bed.maps[MapName.BUCKETS]
    return sum(m.get(policy.src_key(ipaddress.IPv6Address(FLOOD_BASE + 1 + i))) is not None for i in range(sample))


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and 100,000 sources")
    ap.add_argument("--sources", type=int, default=None, help="distinct sources of the spoofed flood")
    ap.add_argument("--json", nargs="?", const="-", default=None, help="write results as JSON (to FILE or stdout)")
    args = ap.parse_args(argv)
    n_rounds, repeat = (5, 20_000) if args.quick else (15, 100_000)
    n_src = args.sources or (100_000 if args.quick else 1_000_000)

    results: dict = {"rounds": n_rounds, "repeat": repeat, "sources": n_src}
    bare_obj, bare_fd = bare_drop_prog()
    bed = all_steps_bed()
    try:
        fd = bed.prog.prog_fd
        variants = {
            "bare XDP_DROP": (bare_fd, frame(SRC4, DST4), XDP_DROP),
            "all steps, UDP v4 clean": (fd, frame(SRC4, DST4), XDP_PASS),
            "all steps, UDP v6 clean": (fd, frame(SRC6, DST6), XDP_PASS),
            "all steps, TCP SYN v4 clean": (fd, frame(SRC4, DST4, "tcp"), XDP_PASS),
            "all steps, TCP ACK v4 recorded (clean)": (fd, tcp_frame(SRC4, DST4, 40000, 80, "A"), XDP_PASS),
            "all steps, TCP ACK v4 step off (clean)": (fd, tcp_frame(SRC4, DST4_OFF, 40000, 80, "A"), XDP_PASS),
            "all steps, TCP ACK v4 spoofed (tcpstate)": (fd, tcp_frame("192.0.2.99", DST4, 40001, 80, "A"), XDP_DROP),
            "all steps, TCP ACK v6 + dest opts (clean)": (fd, tcp_frame(SRC6, DST6, 40000, 80, "A", True), XDP_PASS),
            "all steps, TCP ACK v6 recorded (clean)": (fd, tcp_frame(SRC6, DST6, 40000, 80, "A"), XDP_PASS),
            "tc egress recorder, v4 reply": (bed.prog.egress_fd, tcp_frame(DST4, SRC4, 80, 40000, "A"), 0),
        }
        interleaved_rounds(variants, 1, repeat // 10)  # warm-up
        samples = interleaved_rounds(variants, n_rounds, repeat)
        med = {n: statistics.median(v) for n, v in samples.items()}
        base = med["bare XDP_DROP"]
        print(f"1. ns/packet, median of {n_rounds} interleaved rounds of {repeat:,} runs")
        for n, v in med.items():
            print(f"   {n:42s} {v:8.1f} ns   {v / base:5.2f}x bare")
        results["ns_per_packet"] = med
        results["ratio_vs_bare"] = {n: v / base for n, v in med.items()}
        step = med["all steps, TCP ACK v4 recorded (clean)"] - med["all steps, TCP ACK v4 step off (clean)"]
        print(f"   TCP state step (hit) costs {step:+.1f} ns/packet ({step / base:+.2f}x bare)")
        results["tcpstate_step_ns"] = step
        worst = max(v / base for n, v in med.items() if "clean" in n)
        print(f"   worst all-steps / bare = {worst:.2f}x  (target ≤ 3x: {'ok' if worst <= 3 else 'MISSED'})")

        print(f"2. flood, one test run per packet (repeat=1), mean of the kernel's per-run duration, {n_src:,} packets")
        floods = {}
        src_at = 14 + 8  # IPv6 source address in an untagged frame
        # SYN: the threshold (1/s) lets the first SYN of each second through.
        for kind, want_spoof, want_single, threshold in (
            ("udp", {XDP_PASS}, {XDP_PASS}, policy.MAX_PPS),
            ("syn", {XDP_DROP, XDP_PASS}, {XDP_DROP, XDP_PASS}, 1),
        ):
            set_syn_threshold(bed, threshold)
            runner = OnePacketRunner(fd, frame(SRC6, DST6, kind))
            reset_sources(bed)
            t0 = time.monotonic()
            single = runner.flood(n_src, src_at, 16, FLOOD_BASE, 0, want_single)  # same write, same address
            reset_sources(bed)
            spoofed = runner.flood(n_src, src_at, 16, FLOOD_BASE + 1, 1, want_spoof)
            left = early_flood_sources_left(bed)
            wall = time.monotonic() - t0
            floods[kind] = {
                "single_ns": single,
                "spoofed_ns": spoofed,
                "ratio": spoofed / single,
                "first_1000_sources_still_in_lru": left,
                "wall_s": wall,
            }
            print(
                f"   {kind.upper():4s} single source {single:7.1f} ns   {n_src:,} sources {spoofed:7.1f} ns   "
                f"ratio {spoofed / single:4.2f}x (target ≤ 2x: {'ok' if spoofed / single <= 2 else 'MISSED'})   "
                f"first 1000 flood sources still in xg_bucket_lru: {left}"
            )
        results["flood"] = floods
        s = survivors(bed)
        results["survivors"] = s
        print(
            f"3. after the floods: {s['synauth']}/{KEEP} authenticated sources and {s['allow']}/{KEEP} allowlist "
            f"host entries still present ({'ok' if s == {'synauth': KEEP, 'allow': KEEP} else 'EVICTED'})"
        )
    finally:
        bed.close()
        bare_obj.cleanup()
    if args.json:
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
