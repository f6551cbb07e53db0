#!/usr/bin/env python3
"""xdpguard's benchmark suite, side by side with what operators would use instead.

  sudo scripts/bench [--quick | --smoke] [--out DIR] [--only 1,2,3,4,5]

Root; everything runs in network namespaces made (and removed) here; every traffic generator is
bounded in packet count and time. Prints a markdown table, writes the raw numbers as
``bench.json`` and the plots as ``bench.png`` into DIR (default bench-results/<timestamp>/).
Every figure is the median of interleaved rounds (the variants' order rotates each round); every
comparison is a ratio of figures measured in the same run. The machine may be shared and noisy:
the ratios, not the absolute numbers, are the meaningful output.

1. per-packet cost (BPF_PROG_TEST_RUN, 64-byte frames): a bare XDP_DROP, xdpguard per case
   (PACKET_CASES: a list of (name, setup, packet) that another case list can replace with
   ``--cases MODULE:FUNCTION``), and xdp-filter (xdp-tools) loaded by its own CLI on a veth in our
   namespace, run through ``bpftool prog run`` on the same packets; the verdicts must agree. Then
   1M random sources against one (the every-step case, one test run per packet, the source
   rewritten between runs), against a bare XDP_DROP run the same way.
2. drop throughput on a veth pair (generator → receiver, one blocked source, 64-byte UDP; the
   generator, probed once at start, is BPF_PROG_TEST_RUN in live-frames mode redirecting into the
   veth where the kernel allows it, else an AF_XDP socket, else trafgen: scripts/bench_gen.py; the
   table and the JSON name it, and its own cost, measured into a sink, is subtracted): no
   filter, iptables raw (legacy xtables), nft netdev ingress, ipset (from iptables raw), xdp-filter,
   xdpguard, and a bare XDP_DROP (the floor); packets/s and CPU ns per packet (the generator's
   process and ksoftirqd: on a veth the receiver's softirq work runs in the sender's context),
   also as "above the floor", i.e. what the receiver's filtering costs beyond the cheapest drop.
3. rule-count scaling: 1 … 1M blocked IPv6 prefixes (the flood source is one of them) for
   ip6tables rules (linear; capped, the cap is printed), ipset hash:net, an nft interval set, and
   xdpguard; drop throughput per count.
4. list loading of 1M prefixes: ``xdpguard block load`` (the real CLI against an attached
   program; the first round loads into an empty map, later rounds refresh) vs ``ipset restore``
   vs ``nft -f`` (each into a fresh set).
5. forwarding client → protector → backend (iperf3 throughput; ab request latency, a new TCP
   connection per request, p50/p99): xdpguard (XDP + its nft table) vs a hand-written nft DNAT vs
   the hand-written DNAT + a bare XDP_PASS; split: our nft table without XDP, and the hand-written
   DNAT plus the per-rule counter chain our table had before, and plus an empty forward chain.
6. the layer-7 engine's cost (scripts/bench_l7.py): HAProxy with our rules vs plain HAProxy vs
   nft DNAT, requests/s and CPU per request, a new connection per request and keep-alive.

xdpguard's program in 1-3 is compiled once (TestBed) and attached natively with ``ip link set
xdpdrv pinned`` for 2-3, its maps written the way ``xdpguard block add/load`` writes them.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import importlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import bench_cleansing  # noqa: E402  (the every-step bed and its frames)
import bench_gen  # noqa: E402  (the traffic generators of sections 2-3)
import bench_l7  # noqa: E402  (section 6: the layer-7 engine's cost)
from bench_gen import ksoftirqd_cpu_s  # noqa: E402

from xdpguard.core import guard  # noqa: E402
from xdpguard.core.kernel import libbpf  # noqa: E402
import benchcases  # noqa: E402
from benchcases import OnePacketRunner  # noqa: E402
from xdpguard.core.prefixes import parse_prefix  # noqa: E402
from xdpguard.core.guard import Guard  # noqa: E402
from xdpguard.core.testrun import TestBed, bare_drop_prog  # noqa: E402
from xdpguard.lab.netns import BED_BACKEND4, BED_CLIENT4, BED_GW4, BED_PROT4, Lab  # noqa: E402

XDP_DROP, XDP_PASS = 1, 2
ACTION = {XDP_DROP: "drop", XDP_PASS: "pass"}
DST4, DST6 = "198.51.100.10", "2001:db8:ffff:fffe::10"
CLEAN4, CLEAN6 = "192.0.2.7", "2001:db8:ffff:ffff::7"
HIT4, HIT6 = "198.18.0.1", "2001:db8:a000::1"  # the blocked flood sources
BPFFS = Path("/run/xdpguard/bpffs")
IPT, IP6T = ("iptables-legacy", "ip6tables-legacy") if shutil.which("iptables-legacy") else ("iptables", "ip6tables")


@dataclass(frozen=True)
class Profile:
    rounds: int  # interleaved rounds of every section
    repeat: int  # BPF_PROG_TEST_RUN repeat per call
    flood_count: int  # generator packet bound per run
    flood_s: float  # generator time bound per run
    counts: tuple[int, ...]  # section 3
    ipt_cap: int  # section 3: most ip6tables rules
    load_n: int  # section 4
    fwd_s: int  # section 5: iperf3 seconds (whole: iperf3 -t is an integer)
    requests: int  # section 5: ab requests
    sources: int  # section 1: distinct random sources of the many-sources run


PROFILES = {
    "full": Profile(
        5, 1_000_000, 5_000_000, 1.5, (1, 100, 10_000, 100_000, 1_000_000), 10_000, 1_000_000, 3, 500, 1_000_000
    ),
    "quick": Profile(3, 100_000, 1_000_000, 1.0, (1, 100, 10_000), 10_000, 10_000, 1, 300, 1_000_000),
    "smoke": Profile(1, 20_000, 100_000, 0.3, (1, 100), 100, 1_000, 1, 100, 20_000),
}


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def rotations(names: list[str], rounds: int):
    """Round r: the names rotated by r, every other round reversed."""
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        yield r, (order[::-1] if r % 2 else order)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 600)
    return subprocess.run(argv, **kw)


def nsx(ns: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return sh(["ip", "netns", "exec", ns, *argv], **kw)


# ---------------------------------------------------------------- packets and prefixes


def udp_frame(src: str, dst: str) -> bytes:
    return bench_cleansing.frame(src, dst, "udp")


def v6_prefixes(n: int, seed: int = 14) -> list[str]:
    """n distinct, non-overlapping IPv6 prefixes in 2001:db8::/32, HIT6/128 first: half /128s in
    2001:db8:a000::/36, half /64s in 2001:db8:b000::/36; the rest shuffled."""
    rng = random.Random(seed)
    base = 0x20010DB8 << 96
    hit = int(ipaddress.IPv6Address(HIT6))
    n64 = (n - 1) // 2
    mids = rng.sample(range(1 << 28), n64)
    out = [f"{ipaddress.IPv6Address(base | ((0xB << 28 | m) << 64))}/64" for m in mids]
    hosts: set[int] = {hit}
    while len(hosts) < n - n64:
        hosts.add(base | (0xA << 92) | rng.getrandbits(92))
    hosts.discard(hit)
    out += [f"{ipaddress.IPv6Address(a)}/128" for a in hosts]
    rng.shuffle(out)
    return [f"{HIT6}/128", *out][:n]


# ---------------------------------------------------------------- section 1: per-packet cases


@dataclass(frozen=True)
class PacketCase:
    """One per-packet case: ``setup`` builds (or returns the cached) TestBed it runs on; the
    packet must get ``action``. ``xdp_filter``: xdp-filter can express it (same verdict)."""

    name: str
    setup: Callable[[], TestBed]
    packet: bytes
    action: int
    xdp_filter: bool = False


_BEDS: dict[tuple[Callable, Path | None], TestBed] = {}


def bed_of(setup: Callable[[], TestBed], base: Path | None = None) -> TestBed:
    """The (cached) bed of a setup; with base, compiled from that directory's bpf/ instead
    (``--base``: the same cases on another version of the program, in the same rounds)."""
    if (setup, base) not in _BEDS:
        if base is None:
            _BEDS[setup, base] = setup()
        else:
            import bench_ab  # noqa: PLC0415  (its tree(): compile another bpf/)

            with bench_ab.tree(base / "bpf"):
                _BEDS[setup, base] = setup()
    return _BEDS[setup, base]


def basic_bed() -> TestBed:
    """DST4/DST6 protected; HIT4/32 and HIT6/128 blocked (the xdp-filter config matches)."""
    bed = TestBed()
    bed.protect(DST4, DST6)
    bed.add("block", f"{HIT4}/32")
    bed.add("block", f"{HIT6}/128")
    return bed


def every_step_bed() -> TestBed:
    return bench_cleansing.all_steps_bed()


def every_step_port_bed() -> TestBed:
    """The every-step bed with 64 port-keyed filters (one UDP port each, a length range, a payload
    signature: benchcases.header_filters) instead of the 64 payload-only ones."""
    bed = bench_cleansing.all_steps_bed()
    old = guard.read_global_policy(bed.maps)
    guard.write_global_policy(bed.maps, replace(old, filters=benchcases.header_filters(64)), old)
    return bed


def packet_cases() -> list[PacketCase]:
    """The default case list (the issue's table)."""
    s4, d4 = bench_cleansing.SRC4, bench_cleansing.DST4
    return [
        PacketCase("clean pass v4", basic_bed, udp_frame(CLEAN4, DST4), XDP_PASS, True),
        PacketCase("clean pass v6", basic_bed, udp_frame(CLEAN6, DST6), XDP_PASS, True),
        PacketCase("blocklist hit v4", basic_bed, udp_frame(HIT4, DST4), XDP_DROP, True),
        PacketCase("blocklist hit v6", basic_bed, udp_frame(HIT6, DST6), XDP_DROP, True),
        PacketCase(
            "every step, 64 filters, UDP v4 clean", every_step_bed, bench_cleansing.frame(s4, d4, "udp"), XDP_PASS
        ),
        PacketCase(
            "every step, 64 filters, TCP SYN v4 clean", every_step_bed, bench_cleansing.frame(s4, d4, "tcp"), XDP_PASS
        ),
        PacketCase(PORT_KEYED, every_step_port_bed, bench_cleansing.frame(s4, d4, "udp"), XDP_PASS),
    ]


PORT_KEYED = "every step, 64 port-keyed filters, UDP v4 clean"


def load_cases(spec: str | None) -> list[PacketCase]:
    if not spec:
        return packet_cases()
    mod, _, fn = spec.partition(":")
    return list(getattr(importlib.import_module(mod), fn or "packet_cases")())


class XdpFilter:
    """xdp-filter loaded by its own CLI on a veth in a namespace of ours; its program is run by
    id through ``bpftool prog run``."""

    def __init__(self, lab: Lab, ns: str, ifname: str, deny_src: list[str]):
        self.ns, self.ifname = ns, ifname
        # libxdp pins into the only bpffs `ip netns exec` leaves it (ours); `unload` keeps the pins
        pins = BPFFS / "xdp-filter"
        if not pins.exists():
            lab.defer("xdp-filter pins", subprocess.run, ["rm", "-rf", str(pins)], capture_output=True)
        nsx(ns, "xdp-filter", "load", ifname, "-m", "native")
        lab.defer(
            "xdp-filter unload",
            subprocess.run,
            ["ip", "netns", "exec", ns, "xdp-filter", "unload", ifname],
            capture_output=True,
        )
        for ip in deny_src:
            nsx(ns, "xdp-filter", "ip", ip, "-m", "src")
        link = json.loads(nsx(ns, "ip", "-j", "-d", "link", "show", "dev", ifname).stdout)[0]
        self.prog_id = int(link["xdp"]["prog"]["id"])
        self.tmp = Path(tempfile.mkdtemp(prefix="xgbench-xf-"))
        atexit.register(shutil.rmtree, self.tmp, True)

    def run(self, packet: bytes, repeat: int) -> tuple[int, float]:
        f = self.tmp / "pkt"
        f.write_bytes(packet)
        out = sh(["bpftool", "prog", "run", "id", str(self.prog_id), "data_in", str(f), "repeat", str(repeat)]).stdout
        m = re.search(r"Return value:\s*(\d+),\s*duration(?: \(average\))?:\s*(\d+)ns", out)
        if not m:
            raise RuntimeError(f"bpftool prog run: unexpected output {out!r}")
        return int(m.group(1)), float(m.group(2))


def section_packets(
    lab: Lab, p: Profile, cases: list[PacketCase], xf: XdpFilter | None, base: Path | None = None
) -> dict:
    bare_bpf, bare_fd = bare_drop_prog()
    runs: dict[str, Callable[[], float]] = {}

    def kernel_run(fd: int, pkt: bytes, want: int, name: str) -> Callable[[], float]:
        def go() -> float:
            rv, _, dur = libbpf.prog_test_run(fd, pkt, repeat=p.repeat)
            if rv != want:
                raise RuntimeError(f"{name}: XDP action {rv}, expected {want}")
            return float(dur)

        return go

    runs["bare XDP_DROP"] = kernel_run(bare_fd, udp_frame(HIT4, DST4), XDP_DROP, "bare")
    verdicts = {}
    for c in cases:
        bed = bed_of(c.setup)
        v = bed.verdict(c.packet)
        if v.action != ACTION[c.action]:
            raise SystemExit(f"bench: case {c.name!r} got {v.action}/{v.reason.label}, expected {ACTION[c.action]}")
        verdicts[c.name] = f"{v.action}/{v.reason.label}"
        runs[c.name] = kernel_run(bed.prog.prog_fd, c.packet, c.action, c.name)
        if base is not None:
            runs[f"base: {c.name}"] = kernel_run(bed_of(c.setup, base).prog.prog_fd, c.packet, c.action, c.name)
        if xf is not None and c.xdp_filter:
            rv, _ = xf.run(c.packet, 1)
            if rv != c.action:
                raise SystemExit(
                    f"bench: xdp-filter gives {ACTION.get(rv, rv)} on {c.name!r}, xdpguard {ACTION[c.action]}"
                )

            def xrun(pkt=c.packet, want=c.action, name=c.name) -> float:
                rv, dur = xf.run(pkt, p.repeat)
                if rv != want:
                    raise RuntimeError(f"xdp-filter {name}: action {rv}")
                return dur

            runs[f"xdp-filter: {c.name}"] = xrun
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _, order in rotations(list(runs), max(3, p.rounds * 2 - 1)):
        for k in order:
            samples[k].append(runs[k]())
    m = {k: med(v) for k, v in samples.items()}
    bare = m["bare XDP_DROP"]
    out = {"repeat": p.repeat, "bare_ns": bare, "cases": {}}
    for c in cases:
        row = {"ns": m[c.name], "x_bare": m[c.name] / bare, "verdict": verdicts[c.name], "samples": samples[c.name]}
        xk = f"xdp-filter: {c.name}"
        if xk in m:
            row.update(
                xdp_filter_ns=m[xk],
                xdp_filter_x_bare=m[xk] / bare,
                xdpguard_over_xdp_filter=m[c.name] / m[xk],
                xdp_filter_samples=samples[xk],
            )
        if base is not None:
            b = m[f"base: {c.name}"]
            row.update(base_ns=b, base_x_bare=b / bare, base_samples=samples[f"base: {c.name}"])
            if "xdp_filter_ns" in row:
                row["base_over_xdp_filter"] = b / row["xdp_filter_ns"]
        out["cases"][c.name] = row
    out["bare_samples"] = samples["bare XDP_DROP"]
    out["verifier_insns"] = benchcases.verified_insns(bed_of(every_step_bed).prog.prog_fd)
    out["sources"] = sources_runs(p, bare_fd)
    if base is not None:
        out["base"] = {
            "dir": str(base),
            "verifier_insns": benchcases.verified_insns(bed_of(every_step_bed, base).prog.prog_fd),
            "sources": sources_runs(p, bare_fd, base),
        }
    bare_bpf.cleanup()
    return out


SOURCES_STEP = 0x9E3779B97F4A7C15  # odd: i * step mod 2^88 is a permutation, every source differs


def sources_runs(p: Profile, bare_fd: int, base: Path | None = None) -> dict:
    """Many random sources against one (issue 27): the every-step bed on clean UDP v6, one
    BPF_PROG_TEST_RUN per packet with the source rewritten in place between runs, so xdpguard's
    per-source state really holds p.sources entries (sources scattered over 2001:db8:f100::/40,
    which no list of the bed covers); and a bare XDP_DROP run the same way, the yardstick."""
    c = bench_cleansing
    pkt = c.frame(c.SRC6, c.DST6, "udp")
    at, width, span, n_one = 14 + 8, 16, 1 << 88, min(p.sources, 200_000)
    bare = OnePacketRunner(bare_fd, pkt).flood(n_one, at, width, c.FLOOD_BASE, 0, {XDP_DROP})
    run = OnePacketRunner(bed_of(every_step_bed, base).prog.prog_fd, pkt)
    one = run.flood(n_one, at, width, c.FLOOD_BASE, 0, {XDP_PASS})
    many = run.flood(p.sources, at, width, c.FLOOD_BASE, SOURCES_STEP, {XDP_PASS}, span)
    log(f"  sources: one {one:.0f} ns, {p.sources:,} random {many:.0f} ns, bare (same way) {bare:.0f} ns")
    return {
        "case": "every step, 64 filters, UDP v6 clean",
        "sources": p.sources,
        "one_source_runs": n_one,
        "bare_ns": bare,
        "one_source_ns": one,
        "many_sources_ns": many,
        "one_x_bare": one / bare,
        "many_x_bare": many / bare,
        "many_x_one": many / one,
    }


# ---------------------------------------------------------------- sections 2-3: veth floods


# Issue 23: on some kernels BPF_PROG_TEST_RUN refuses live frames with EPERM, as root. On the
# Firecracker guest kernel 6.18.44-fc-v1300 the refusal comes between the upstream flag check
# (-EINVAL) and batch-size check (-E2BIG) of bpf_prog_test_run_xdp, for every XDP program: not
# upstream code, not a capability or sysctl the project could set in its own namespaces (the
# evidence: the "Issue 23" comment in scripts/bench_gen.py, and docs/bench-generator.md). The
# bench keeps live frames where the kernel allows them and falls back to AF_XDP, then trafgen.


class Unavailable(RuntimeError):
    """A section cannot run on this machine (a kernel feature it needs is refused); the message is
    the one-line reason the table and the JSON give instead of the figures."""


SINK_MAC = bytes.fromhex("02000000dead")  # nobody's: the sink drops the frame as PACKET_OTHERHOST


class Flood:
    """Generator namespace with one veth pair per receiver namespace, and a sink pair that
    measures the generator alone. The generator (scripts/bench_gen.py) is probed once: live frames
    (BPF_PROG_TEST_RUN, where the kernel allows it), else AF_XDP, else trafgen; the first that works
    runs every flood, bounded in count and time. The sink has no XDP program and no GRO, and the
    frames sent into it carry a MAC nobody has: its first protocol handler drops them, so a frame
    costs what the generator and veth_xmit cost and little else."""

    def __init__(self, lab: Lab, p: Profile, want: str = "auto"):
        self.lab, self.p = lab, p
        self.gen = lab.netns("bgen")
        self.rx: dict[str, tuple[str, str, str]] = {}  # variant → (rx ns, gen ifname, rx mac)
        self.sink = lab.netns("bsink")
        self.lab.veth(self.gen, "xggs", self.sink, "xgr0")
        self.refused: dict[str, str] = {}
        self.name: str | None = None
        self.proc: subprocess.Popen | None = None
        for kind in bench_gen.GENERATORS if want == "auto" else (want,):
            proc = lab.popen(
                self.gen,
                sys.executable,
                str(Path(__file__).resolve()),
                "--gen-worker",
                kind,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=str(REPO),
            )
            r = self._ask(proc, "probe xggs")
            if "ok" in r:
                self.name, self.proc = kind, proc
                break
            self.refused[kind] = r["error"]
            proc.stdin.close()
            proc.wait(timeout=30)
        self.cost: dict[str, dict] = {}  # section → the generator alone, measured in its rounds
        self.why = (
            None
            if self.name
            else "no traffic generator works here: " + "; ".join(f"{k}: {v}" for k, v in self.refused.items())
        )
        log(f"  generator: {self.name or 'none'}" + "".join(f"; {k} refused: {v}" for k, v in self.refused.items()))

    @staticmethod
    def _ask(proc: subprocess.Popen, line: str) -> dict:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        out = proc.stdout.readline()
        return json.loads(out) if out else {"error": f"the generator process died (exit {proc.wait(timeout=30)})"}

    def info(self) -> dict:
        """The JSON's "generator": which ran, why the better ones did not, and its own cost."""
        return {
            "name": self.name,
            "refused": self.refused,
            "cost": self.cost,
            **({"unavailable": self.why} if self.why else {}),
        }

    def receiver(self, variant: str) -> str:
        i = len(self.rx)
        ns = self.lab.netns(f"brx{i}")
        gif = f"xgg{i}"
        self.lab.veth(self.gen, gif, ns, "xgr0")
        # NAPI on the receiving veth (GRO on), so redirected frames reach it without an XDP program.
        nsx(ns, "ethtool", "-K", "xgr0", "gro", "on")
        mac = json.loads(nsx(ns, "ip", "-j", "link", "show", "dev", "xgr0").stdout)[0]["address"]
        self.rx[variant] = (ns, gif, mac)
        return ns

    def frame(self, variant: str, family: int) -> bytes:
        mac = bytes.fromhex(self.rx[variant][2].replace(":", ""))
        f = udp_frame(HIT4, DST4) if family == 4 else udp_frame(HIT6, DST6)
        return mac + f[6:]

    def delivered(self, gif: str) -> int:
        """Frames the receiver behind `gif` took. Live frames: the veth's XDP-transmit counter;
        skbs: its tx packets (on a veth, the frames its peer's NAPI processed)."""
        if self.name == bench_gen.LIVE:
            st = dict(
                ln.strip().split(": ")
                for ln in nsx(self.gen, "ethtool", "-S", gif).stdout.splitlines()[1:]
                if ": " in ln
            )
            return int(st.get("tx_queue_0_xdp_xmit", 0))
        return int(
            json.loads(nsx(self.gen, "ip", "-j", "-s", "link", "show", "dev", gif).stdout)[0]["stats64"]["tx"][
                "packets"
            ]
        )

    def require(self) -> None:
        """Raise Unavailable (the one-line reason) if no generator works here."""
        if self.proc is None:
            raise Unavailable(self.why)

    def _send(self, gif: str, frame: bytes) -> dict:
        self.require()
        r = self._ask(self.proc, f"send {gif} {self.p.flood_count} {self.p.flood_s} {frame.hex()}")
        if "error" in r:
            raise SystemExit(f"bench: {self.name}: {r['error']}")
        return r

    def run(self, variant: str, family: int) -> dict:
        """One bounded run into `variant`'s receiver. cpu_ns_per_pkt: the generator's CPU time
        (plus ksoftirqd's) per frame the receiver took: the receiver's softirq work runs in the
        sender's context and is charged to it (this kernel has no IRQ time accounting); other
        load on the machine is not."""
        _ns, gif, _ = self.rx[variant]
        c0 = self.delivered(gif)
        r = self._send(gif, self.frame(variant, family))
        took = self.delivered(gif) - c0
        cpu = r["cpu_s"] + r["ksoftirqd_s"]
        return {
            "pps": took / r["wall_s"],
            "sent": r["sent"],
            "delivered": took,
            "wall_s": r["wall_s"],
            "cpu_ns_per_pkt": cpu / max(took, 1) * 1e9,
        }

    def alone(self, family: int) -> dict:
        """One bounded run into the sink: the generator's own CPU per frame sent."""
        f = udp_frame(HIT4, DST4) if family == 4 else udp_frame(HIT6, DST6)
        r = self._send("xggs", SINK_MAC + f[6:])
        cpu = r["cpu_s"] + r["ksoftirqd_s"]
        return {
            "pps": r["sent"] / r["wall_s"],
            "sent": r["sent"],
            "wall_s": r["wall_s"],
            "cpu_ns_per_pkt": cpu / max(r["sent"], 1) * 1e9,
        }


def attach_prog(lab: Lab, ns: str, ifname: str, prog_fd: int, tag: str) -> None:
    pin = BPFFS / f"xgbench-{os.getpid()}-{tag}"
    libbpf.obj_pin(prog_fd, str(pin))
    atexit.register(lambda: pin.exists() and pin.unlink())
    nsx(ns, "ip", "link", "set", "dev", ifname, "xdpdrv", "pinned", str(pin))
    lab.defer(
        "xdp off", subprocess.run, ["ip", "-n", ns, "link", "set", "dev", ifname, "xdp", "off"], capture_output=True
    )
    pin.unlink()


def flush_ipset(ns: str) -> None:
    """Sets cannot be destroyed while rules use them; the namespace goes right after anyway."""
    for cmd in (IPT, IP6T):
        subprocess.run(["ip", "netns", "exec", ns, cmd, "-t", "raw", "-F"], capture_output=True)
    subprocess.run(["ip", "netns", "exec", ns, "ipset", "destroy"], capture_output=True)


DROP_VARIANTS = ("no filter", "iptables raw", "nft netdev ingress", "ipset", "xdp-filter", "xdpguard", "bare XDP_DROP")
FLOOR = "bare XDP_DROP"  # the cheapest possible drop: what is above it is the receiver's filtering cost


def setup_drop(lab: Lab, flood: Flood, bed: TestBed) -> dict[str, str]:
    """One receiver per variant, each dropping HIT4 (and, once section 3 loads them, HIT6)."""
    nss = {v: flood.rx[v][0] if v in flood.rx else flood.receiver(v) for v in DROP_VARIANTS if v != "xdp-filter"}
    nsx(nss["iptables raw"], IPT, "-t", "raw", "-A", "PREROUTING", "-s", f"{HIT4}/32", "-j", "DROP")
    nsx(
        nss["nft netdev ingress"],
        "nft",
        "-f",
        "-",
        input=(
            "table netdev xgbench {\n"
            "  set b4 { type ipv4_addr; flags interval; elements = { " + HIT4 + "/32 } }\n"
            "  set b6 { type ipv6_addr; flags interval; elements = { " + HIT6 + "/128 } }\n"
            "  chain in { type filter hook ingress device xgr0 priority -500; ip saddr @b4 drop; ip6 saddr @b6 drop; }\n}\n"
        ),
    )
    ns = nss["ipset"]
    nsx(ns, "ipset", "create", "xgb4", "hash:net", "family", "inet")
    nsx(ns, "ipset", "add", "xgb4", f"{HIT4}/32")
    nsx(ns, IPT, "-t", "raw", "-A", "PREROUTING", "-m", "set", "--match-set", "xgb4", "src", "-j", "DROP")
    lab.defer("ipset", flush_ipset, ns)
    attach_prog(lab, nss["xdpguard"], "xgr0", bed.prog.prog_fd, "drop")
    bare_bpf, bare_fd = bare_drop_prog()
    attach_prog(lab, nss[FLOOR], "xgr0", bare_fd, "bare")
    atexit.register(bare_bpf.cleanup)
    return nss


GEN_ALONE = "generator alone"  # a pseudo-variant: the generator into the sink, in the same rotation


def section_drop(flood: Flood, p: Profile) -> dict:
    flood.require()
    names = [*DROP_VARIANTS, GEN_ALONE]
    samples: dict[str, list[dict]] = {v: [] for v in names}
    for r, order in rotations(names, p.rounds):
        for v in order:
            samples[v].append(flood.alone(4) if v == GEN_ALONE else flood.run(v, 4))
        log(
            f"  drop round {r + 1}/{p.rounds}: "
            + ", ".join(f"{v} {samples[v][-1]['pps'] / 1e6:.2f}" for v in names)
            + " Mpps"
        )
    gen = med([s["cpu_ns_per_pkt"] for s in samples[GEN_ALONE]])
    flood.cost["2_drop"] = {"ns_per_pkt": gen, "rounds": samples[GEN_ALONE]}
    out = {}
    for v in DROP_VARIANTS:
        out[v] = {
            "pps": med([s["pps"] for s in samples[v]]),
            "cpu_ns_per_pkt": med([s["cpu_ns_per_pkt"] for s in samples[v]]),
            "rounds": samples[v],
        }
    floor = out[FLOOR]["cpu_ns_per_pkt"]
    for v in DROP_VARIANTS:
        r = out[v]
        r["cpu_s_per_M"] = r["cpu_ns_per_pkt"] / 1e3
        r["above_floor_ns"] = r["cpu_ns_per_pkt"] - floor
        r["minus_generator_ns"] = r["cpu_ns_per_pkt"] - gen
        r["x_iptables_raw_pps"] = r["pps"] / out["iptables raw"]["pps"]
        r["x_iptables_raw_cpu"] = r["cpu_ns_per_pkt"] / out["iptables raw"]["cpu_ns_per_pkt"]
        r["x_nft_ingress_cpu"] = r["cpu_ns_per_pkt"] / out["nft netdev ingress"]["cpu_ns_per_pkt"]
    for v in DROP_VARIANTS:
        r = out[v]
        for ref, tag in (("iptables raw", "iptables_raw"), ("nft netdev ingress", "nft_ingress")):
            den = out[ref]["above_floor_ns"]
            r[f"above_floor_x_{tag}"] = r["above_floor_ns"] / den if den > 0 else None
            den = out[ref]["minus_generator_ns"]
            r[f"minus_generator_x_{tag}"] = r["minus_generator_ns"] / den if den > 0 else None
    return out


SCALE_VARIANTS = ("ip6tables rules", "ipset", "nft set", "xdpguard")
SCALE_NS = {
    "ip6tables rules": "iptables raw",
    "ipset": "ipset",
    "nft set": "nft netdev ingress",
    "xdpguard": "xdpguard",
}


def load_scale(nss: dict[str, str], bed: TestBed, prefixes: list[str], have: int, n: int, cap: int, tmp: Path) -> dict:
    """Grow every mechanism from `have` to `n` prefixes (ip6tables only up to `cap`); seconds each."""
    secs = {}
    new = prefixes[have:n]
    # ip6tables: the whole rule list again, the flood source's rule LAST (the worst case of a scan).
    if n <= cap:
        f = tmp / "ip6t.rules"
        rules = [f"-A PREROUTING -s {c} -j DROP" for c in prefixes[1:n]] + [f"-A PREROUTING -s {prefixes[0]} -j DROP"]
        f.write_text("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + "\n".join(rules) + "\nCOMMIT\n")
        t0 = time.perf_counter()
        with open(f) as fh:
            nsx(nss["iptables raw"], f"{IP6T}-restore", stdin=fh)
        secs["ip6tables rules"] = time.perf_counter() - t0
    ns = nss["ipset"]
    if have == 0:
        nsx(ns, "ipset", "create", "xgb6", "hash:net", "family", "inet6", "hashsize", "1048576", "maxelem", "4194304")
        nsx(ns, IP6T, "-t", "raw", "-A", "PREROUTING", "-m", "set", "--match-set", "xgb6", "src", "-j", "DROP")
    f = tmp / "ipset.add"
    f.write_text("".join(f"add xgb6 {c}\n" for c in new))
    t0 = time.perf_counter()
    with open(f) as fh:
        nsx(ns, "ipset", "restore", stdin=fh)
    secs["ipset"] = time.perf_counter() - t0
    f = tmp / "nft.add"
    f.write_text("add element netdev xgbench b6 { " + ", ".join(new) + " }\n")
    t0 = time.perf_counter()
    nsx(nss["nft netdev ingress"], "nft", "-f", str(f))
    secs["nft set"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    Guard(None, None, bed.maps).upsert("block", [parse_prefix(c).prefix for c in new], 0)
    secs["xdpguard"] = time.perf_counter() - t0
    return secs


def section_scale(flood: Flood, nss: dict[str, str], bed: TestBed, p: Profile) -> dict:
    flood.require()
    prefixes = v6_prefixes(max(p.counts))
    tmp = Path(tempfile.mkdtemp(prefix="xgbench-sc-"))
    atexit.register(shutil.rmtree, tmp, True)
    # Section 2 dropped HIT6 through the small sets; start the v6 lists from nothing.
    nsx(nss["nft netdev ingress"], "nft", "flush", "set", "netdev", "xgbench", "b6")
    out: dict[str, dict] = {v: {} for v in SCALE_VARIANTS}
    gens: dict[str, dict] = {}
    flood.cost["3_scale"] = gens
    have = 0
    for n in p.counts:
        secs = load_scale(nss, bed, prefixes, have, n, p.ipt_cap, tmp)
        have = n
        names = [v for v in SCALE_VARIANTS if v != "ip6tables rules" or n <= p.ipt_cap]
        samples: dict[str, list[dict]] = {v: [] for v in [*names, GEN_ALONE]}
        for _, order in rotations([*names, GEN_ALONE], min(p.rounds, 3)):
            for v in order:
                samples[v].append(flood.alone(6) if v == GEN_ALONE else flood.run(SCALE_NS[v], 6))
        gen = med([x["cpu_ns_per_pkt"] for x in samples[GEN_ALONE]])
        gens[str(n)] = {"ns_per_pkt": gen, "rounds": samples[GEN_ALONE]}
        for v in names:
            cpu = med([x["cpu_ns_per_pkt"] for x in samples[v]])
            out[v][str(n)] = {
                "pps": med([x["pps"] for x in samples[v]]),
                "cpu_ns_per_pkt": cpu,
                "minus_generator_ns": cpu - gen,
                "rounds": samples[v],
                "grow_s": secs.get(v),
            }
        log(
            f"  scale {n:,}: " + ", ".join(f"{v} {out[v][str(n)]['cpu_ns_per_pkt']:.0f}" for v in names) + " CPU ns/pkt"
        )
    for v in SCALE_VARIANTS:
        first = out[v][str(p.counts[0])]
        for n, row in out[v].items():
            row["x_one_entry_pps"] = row["pps"] / first["pps"] if first["pps"] else None
            row["x_one_entry_cpu"] = row["cpu_ns_per_pkt"] / first["cpu_ns_per_pkt"]
    out["ip6tables_cap"] = p.ipt_cap
    return out


# ---------------------------------------------------------------- section 5: forwarding


PROT, CLIENT, BACKEND, GW = BED_PROT4, BED_CLIENT4, BED_BACKEND4, BED_GW4  # Lab.forward_bed's
FWD_PORTS = (5201, 80)
PLAIN_NFT = f"""
table inet plain {{
  chain pre {{ type nat hook prerouting priority dstnat; ip daddr {PROT} tcp dport {{ 5201, 80 }} dnat ip to {BACKEND}; }}
  chain post {{ type nat hook postrouting priority srcnat; ct status dnat ip daddr {BACKEND} masquerade; }}
}}
"""
# What our table's forward chain was before: one four-match counter rule per forwarding rule.


def old_counters(extra: list[int]) -> str:
    """What our table's forward chain was before: one four-match counter rule per forwarding
    rule (the measured ports' rules last, as if they had been added last)."""
    ports = [*extra, *FWD_PORTS]
    return (
        "table inet oldcount {\n"
        + "".join(f"  counter c{p} {{ }}\n" for p in ports)
        + "  chain forward { type filter hook forward priority 0;\n"
        + "".join(
            f"    ct status dnat ct original ip daddr {PROT} meta l4proto tcp ct original proto-dst {p} counter name c{p}\n"
            for p in ports
        )
        + "  }\n}\n"
    )


OUR_TABLE = """
import sys
from xdpguard.core.nat import nft as nat
from xdpguard.core.model.forwarding import make_rule
ports = [int(p) for p in sys.argv[3].split(",") if p] + [5201, 80]
rules = [make_rule("tcp", sys.argv[1], str(p), f"{sys.argv[2]}:{p}") for p in ports]
nat.NftApplier().apply(nat.build_ruleset(rules))
"""
FWD_VARIANTS = (
    "xdpguard",
    "nft DNAT",
    "nft DNAT + XDP_PASS",
    "our nft table, no XDP",
    "nft DNAT + old counter chain",
    "nft DNAT + empty forward chain",
)
# An empty base chain on the forward hook: what merely having a forward hook costs.
EMPTY_FORWARD = "table inet emptyfwd {\n  chain forward { type filter hook forward priority 0; }\n}\n"


def fwd_topology(lab: Lab, tag: str, budget: float, www: Path) -> tuple[str, str]:
    client, prot, backend = lab.forward_bed(tag)
    lab.popen(
        backend,
        "timeout",
        str(int(budget)),
        "iperf3",
        "-s",
        "-p",
        "5201",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lab.popen(
        backend,
        "timeout",
        str(int(budget)),
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        str(www),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return client, prot


def setup_forward(lab: Lab, budget: float, fwd_rules: int = 2) -> tuple[dict[str, str], str]:
    """fwd_rules: forwarding rules in "our nft table" and "old counter chain" (the two measured
    ones plus dummies on other ports), to show how the forward-path cost grows with them."""
    extra = list(range(20000, 20000 + max(0, fwd_rules - len(FWD_PORTS))))
    www = Path(tempfile.mkdtemp(prefix="xgbench-www-"))
    os.chmod(www, 0o755)
    (www / "index.html").write_text("ok\n")
    atexit.register(shutil.rmtree, www, True)
    clients, prots = {}, {}
    for i, v in enumerate(FWD_VARIANTS):
        clients[v], prots[v] = fwd_topology(lab, f"bf{i}", budget, www)
    xg = str(REPO / ".venv/bin/xdpguard")
    ns = prots["xdpguard"]
    nsx(ns, xg, "attach", "xgp0", "--protect", PROT)
    lab.defer("detach", subprocess.run, ["ip", "netns", "exec", ns, xg, "detach", "xgp0"], capture_output=True)
    for port in FWD_PORTS:
        nsx(ns, xg, "forward", "add", "tcp", str(port), "--to", f"{BACKEND}:{port}")
    for v in FWD_VARIANTS[1:]:
        lab.sysctl(prots[v], "net.ipv4.ip_forward", 1)
        if v == "our nft table, no XDP":
            nsx(prots[v], sys.executable, "-c", OUR_TABLE, PROT, BACKEND, ",".join(map(str, extra)), cwd=str(REPO))
            continue
        nsx(prots[v], "nft", "-f", "-", input=PLAIN_NFT)
        if v == "nft DNAT + old counter chain":
            nsx(prots[v], "nft", "-f", "-", input=old_counters(extra))
        if v == "nft DNAT + empty forward chain":
            nsx(prots[v], "nft", "-f", "-", input=EMPTY_FORWARD)
    import bcc  # noqa: PLC0415  (bcc is a distribution package, imported when needed)

    b = bcc.BPF(text=b"int pass_all(struct xdp_md *ctx) { return XDP_PASS; }")
    attach_prog(lab, prots["nft DNAT + XDP_PASS"], "xgp0", b.load_func(b"pass_all", bcc.BPF.XDP).fd, "pass")
    atexit.register(b.cleanup)
    return clients, ns


def fwd_once(client: str, p: Profile) -> dict:
    k0 = ksoftirqd_cpu_s()
    out = nsx(client, "iperf3", "-c", PROT, "-p", "5201", "-t", str(p.fwd_s), "-J", timeout=p.fwd_s + 30).stdout
    ksoftirqd = ksoftirqd_cpu_s() - k0
    end = json.loads(out)["end"]
    bps = end["sum_received"]["bits_per_second"]
    # CPU per byte: on veth the whole path (client stack, the protector's forwarding, the backend's
    # receive) runs in softirq, in the sending or the receiving iperf3's context (charged to it) or
    # in ksoftirqd; unlike the throughput this does not depend on how much CPU the shared machine
    # leaves us (ksoftirqd may carry some of other workers' softirq work).
    util = end["cpu_utilization_percent"]
    cpu_s = (util["host_total"] + util["remote_total"]) / 100 * end["sum_sent"]["seconds"] + ksoftirqd
    cpu_ns_per_kb = cpu_s * 1e9 / (end["sum_sent"]["bytes"] / 1e3)
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        ab = nsx(
            client,
            "ab",
            "-q",
            "-n",
            str(p.requests),
            "-c",
            "1",
            "-s",
            "5",
            "-e",
            f.name,
            f"http://{PROT}:80/",
            timeout=120,
        ).stdout
        pct = dict(line.split(",") for line in Path(f.name).read_text().splitlines()[1:])
    failed = int(re.search(r"Failed requests:\s*(\d+)", ab).group(1))
    # ab's 99th percentile can be garbage for small -n (an index past the data): bound it by the maximum.
    p50, p99, top = float(pct["50"]), float(pct["99"]), float(pct["100"])
    return {
        "gbps": bps / 1e9,
        "cpu_ns_per_kB": cpu_ns_per_kb,
        "p50_ms": p50,
        "p99_ms": min(max(p99, p50), top),
        "max_ms": top,
        "failed": failed,
    }


def section_forward(clients: dict[str, str], p: Profile) -> dict:
    names = list(FWD_VARIANTS)
    samples: dict[str, list[dict]] = {v: [] for v in names}
    for r, order in rotations(names, p.rounds):
        for v in order:
            samples[v].append(fwd_once(clients[v], p))
        log(
            f"  forward round {r + 1}/{p.rounds}: "
            + ", ".join(f"{v} {samples[v][-1]['gbps']:.2f}" for v in names)
            + " Gb/s"
        )
    out = {}
    for v in names:
        out[v] = {k: med([s[k] for s in samples[v]]) for k in ("gbps", "cpu_ns_per_kB", "p50_ms", "p99_ms")}
        out[v]["failed"] = sum(s["failed"] for s in samples[v])
        out[v]["rounds"] = samples[v]
    for v in names:
        for ref, tag in (("nft DNAT", "dnat"), ("nft DNAT + XDP_PASS", "xdp_pass")):
            out[v][f"gbps_x_{tag}"] = out[v]["gbps"] / out[ref]["gbps"]
            out[v][f"cpu_x_{tag}"] = out[v]["cpu_ns_per_kB"] / out[ref]["cpu_ns_per_kB"]
            out[v][f"p99_x_{tag}"] = out[v]["p99_ms"] / out[ref]["p99_ms"]
    return out


# ---------------------------------------------------------------- section 4: loading


def section_load(lab: Lab, xg_ns: str, p: Profile) -> dict:
    n = p.load_n
    prefixes = v6_prefixes(n, seed=41)
    tmp = Path(tempfile.mkdtemp(prefix="xgbench-ld-"))
    atexit.register(shutil.rmtree, tmp, True)
    (tmp / "block.txt").write_text("\n".join(prefixes) + "\n")
    (tmp / "ipset.restore").write_text(
        f"create xgl6 hash:net family inet6 hashsize {1 << max(10, (n - 1).bit_length())} maxelem {max(65536, 2 * n)}\n"
        + "".join(f"add xgl6 {c}\n" for c in prefixes)
    )
    (tmp / "set.nft").write_text(
        "table inet xgload {\n  set l6 { type ipv6_addr; flags interval; elements = {\n"
        + ",\n".join(prefixes)
        + "\n  } }\n}\n"
    )
    ns = lab.netns("bload")
    xg = str(REPO / ".venv/bin/xdpguard")

    def xdpguard() -> float:
        t0 = time.perf_counter()
        nsx(xg_ns, xg, "block", "load", str(tmp / "block.txt"), timeout=900)
        return time.perf_counter() - t0

    def ipset() -> float:
        subprocess.run(["ip", "netns", "exec", ns, "ipset", "destroy", "xgl6"], capture_output=True)
        t0 = time.perf_counter()
        with open(tmp / "ipset.restore") as fh:
            nsx(ns, "ipset", "restore", stdin=fh, timeout=900)
        return time.perf_counter() - t0

    def nft() -> float:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "xgload"], capture_output=True)
        t0 = time.perf_counter()
        nsx(ns, "nft", "-f", str(tmp / "set.nft"), timeout=900)
        return time.perf_counter() - t0

    lab.defer("ipset destroy", subprocess.run, ["ip", "netns", "exec", ns, "ipset", "destroy"], capture_output=True)
    runs = {"xdpguard block load": xdpguard, "ipset restore": ipset, "nft -f": nft}
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for r, order in rotations(list(runs), max(2, min(p.rounds, 3))):
        for k in order:
            samples[k].append(runs[k]())
        log(f"  load round {r + 1}: " + ", ".join(f"{k} {samples[k][-1]:.2f} s" for k in runs))
    out = {"prefixes": n, "families": "IPv6 only (half /64, half /128)"}
    out["xdpguard block load (empty map)"] = {
        "s": samples["xdpguard block load"][0],
        "samples": samples["xdpguard block load"][:1],
    }
    out["xdpguard block load (refresh)"] = {
        "s": med(samples["xdpguard block load"][1:]),
        "samples": samples["xdpguard block load"][1:],
    }
    out["ipset restore"] = {"s": med(samples["ipset restore"]), "samples": samples["ipset restore"]}
    out["nft -f"] = {"s": med(samples["nft -f"]), "samples": samples["nft -f"]}
    for k in ("xdpguard block load (empty map)", "xdpguard block load (refresh)", "ipset restore", "nft -f"):
        out[k]["x_ipset"] = out[k]["s"] / out["ipset restore"]["s"]
    return out


# ---------------------------------------------------------------- report


def generator_line(gen: dict) -> str:
    """ "generator: af_xdp (live-frames refused: ...)" for the table headings."""
    refused = "; ".join(f"{k} refused: {v}" for k, v in gen["refused"].items())
    return f"generator: {gen['name']}" + (f" ({refused})" if refused else "")


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def goals(doc: dict) -> list[tuple[str, str, str, bool | None]]:
    """The table of issue 27, from this run: (figure, measured, goal, met; None: not measured)."""
    rows: list[tuple[str, str, str, bool | None]] = []
    s = doc.get("1_per_packet") or {}
    cases = s.get("cases", {})

    base_keys = {"xdpguard_over_xdp_filter": "base_over_xdp_filter", "x_bare": "base_x_bare"}
    before: list[float] = []

    def ratios(names: list[str], key: str) -> list[float]:
        before[:] = [cases[n][base_keys[key]] for n in names if n in cases and base_keys[key] in cases[n]]
        return [cases[n][key] for n in names if n in cases and key in cases[n]]

    def row(figure: str, vals: list[float], goal: str, ok) -> None:
        shown = " / ".join(_x(v) for v in vals) if vals else "not measured"
        if vals and len(before) == len(vals):
            shown = " / ".join(_x(v) for v in before) + " → " + shown
        before.clear()
        rows.append((figure, shown, goal, ok(vals) if vals else None))

    row(
        "blocklist drop vs xdp-filter, same packet (v4 / v6)",
        ratios(["blocklist hit v4", "blocklist hit v6"], "xdpguard_over_xdp_filter"),
        "< 1× (stay ahead)",
        lambda v: max(v) < 1.0,
    )
    row(
        "clean pass vs a bare XDP_DROP (v4 / v6)",
        ratios(["clean pass v4", "clean pass v6"], "x_bare"),
        "≤ 2.5×",
        lambda v: max(v) <= 2.5,
    )
    row(
        "every step, 64 filters, vs a bare XDP_DROP (UDP / SYN)",
        ratios(["every step, 64 filters, UDP v4 clean", "every step, 64 filters, TCP SYN v4 clean"], "x_bare"),
        "≤ 4×",
        lambda v: max(v) <= 4.0,
    )
    row("every step, 64 port-keyed filters, test run", ratios([PORT_KEYED], "x_bare"), "≤ 4×", lambda v: max(v) <= 4.0)
    src = s.get("sources")
    bsrc = (s.get("base") or {}).get("sources")
    before[:] = [bsrc["many_x_one"]] if bsrc else []
    row(
        f"{src['sources']:,} random sources vs one source" if src else "1M random sources vs one source",
        [src["many_x_one"]] if src else [],
        "≤ 1.3×",
        lambda v: v[0] <= 1.3,
    )
    f = doc.get("5_forward") or {}
    xg = f.get("xdpguard") if "unavailable" not in f else None
    row(
        "forwarding vs plain DNAT + bare XDP_PASS, one TCP stream (throughput / CPU per kB)",
        [xg["gbps_x_xdp_pass"], xg["cpu_x_xdp_pass"]] if xg else [],
        "≥ 1× / ≤ 1×",
        lambda v: v[0] >= 1.0 and v[1] <= 1.0,
    )
    row(
        "forwarding vs plain DNAT without XDP (throughput)",
        [xg["gbps_x_dnat"]] if xg else [],
        "≥ 1.5×",
        lambda v: v[0] >= 1.5,
    )
    insns = s.get("verifier_insns")
    binsns = (s.get("base") or {}).get("verifier_insns")
    rows.append(
        (
            "verifier instructions, every-step program (1M limit)",
            (f"{binsns:,} → " if binsns else "") + (f"{insns:,}" if insns else "not measured"),
            "≤ 400,000",
            insns <= 400_000 if insns else None,
        )
    )
    return rows


def table(doc: dict) -> str:
    L: list[str] = []
    g = goals(doc)
    if any(ok is not None for *_, ok in g):
        L += [
            f"**Goals** (issue 27; measured in this run, kernel {doc.get('machine', {}).get('kernel', '?')})",
            "",
            "| figure | measured | goal | met |",
            "|---|---|---|---|",
        ]
        L += [
            f"| {fig} | {val} | {goal} | {'–' if ok is None else 'yes' if ok else 'no'} |" for fig, val, goal, ok in g
        ]
        L.append("")
    s = doc.get("1_per_packet")
    if s:
        L += [
            f"**1. Per-packet cost** (BPF_PROG_TEST_RUN, 64-byte frames, {s['repeat']:,} repeats; bare XDP_DROP "
            f"{s['bare_ns']:.0f} ns)",
            "",
            "| case | xdpguard ns/pkt | × bare drop | xdp-filter ns/pkt | xdpguard / xdp-filter |",
            "|---|---|---|---|---|",
        ]
        for name, r in s["cases"].items():
            xf = f"{r['xdp_filter_ns']:.0f} | {r['xdpguard_over_xdp_filter']:.2f}" if "xdp_filter_ns" in r else "– | –"
            L.append(f"| {name} | {r['ns']:.0f} | {r['x_bare']:.1f} | {xf} |")
        src = s.get("sources")
        if src:
            L += [
                "",
                f"Sources ({src['case']}; one test run per packet, the source rewritten between runs; "
                f"bare XDP_DROP run the same way {src['bare_ns']:.0f} ns):",
                "",
                "| sources | xdpguard ns/pkt | × bare drop | × one source |",
                "|---|---|---|---|",
                f"| 1 | {src['one_source_ns']:.0f} | {src['one_x_bare']:.1f} | 1.00 |",
                f"| {src['sources']:,} random | {src['many_sources_ns']:.0f} | {src['many_x_bare']:.1f} | "
                f"{src['many_x_one']:.2f} |",
            ]
        L.append("")
    s = doc.get("2_drop")
    if s and "unavailable" in s:
        L += [f"**2. Drop on a veth pair**: not run here: {s['unavailable']}", ""]
    elif s:
        gen = doc["generator"]
        cost = gen["cost"]["2_drop"]["ns_per_pkt"]
        L += [
            f"**2. Drop on a veth pair** (one blocked source, 64-byte UDP; {generator_line(gen)}). CPU = the sender's CPU "
            "time per packet, which on a veth includes the receiver's softirq work; *− generator* = minus the generator "
            f"alone ({cost:.0f} ns/pkt, into a sink that drops the frame at its first protocol handler), i.e. what the "
            "receiver costs; *above floor* = minus the same with a bare XDP_DROP receiver, i.e. what the receiver's "
            "filtering costs beyond the cheapest drop",
            "",
            "| receiver | Mpps | × iptables raw | CPU ns/pkt | − generator ns | × iptables raw | × nft ingress "
            "| above floor ns | × iptables raw | × nft ingress |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]

        def x(v):
            return "–" if v is None else f"{v:.2f}"

        for v in DROP_VARIANTS:
            r = s[v]
            L.append(
                f"| {v} | {r['pps'] / 1e6:.2f} | {r['x_iptables_raw_pps']:.2f} | {r['cpu_ns_per_pkt']:.0f} | "
                f"{r['minus_generator_ns']:.0f} | {x(r['minus_generator_x_iptables_raw'])} | "
                f"{x(r['minus_generator_x_nft_ingress'])} | {r['above_floor_ns']:.0f} | "
                f"{x(r['above_floor_x_iptables_raw'])} | {x(r['above_floor_x_nft_ingress'])} |"
            )
        if gen["name"] != bench_gen.LIVE:
            L += [
                "",
                f"({gen['name']} sends skbs: Mpps is bounded by the generator, compare the CPU columns; and an XDP "
                "receiver on a veth first copies each skb into a page-pool page, which a netfilter receiver does not: the "
                "bare XDP_DROP floor includes that copy.)",
            ]
        L.append("")
    s = doc.get("3_scale")
    if s and "unavailable" in s:
        L += [f"**3. Rule-count scaling**: not run here: {s['unavailable']}", ""]
    elif s:
        gen = doc["generator"]
        counts = sorted({int(n) for v in SCALE_VARIANTS for n in s[v]})
        L += [
            f"**3. Rule-count scaling** (IPv6 flood from one listed source; generator: {gen['name']}; CPU ns per dropped "
            f"packet as in 2; ip6tables capped at {s['ip6tables_cap']:,} rules, the matching rule last)",
            "",
            "| blocked prefixes | " + " | ".join(SCALE_VARIANTS) + " | generator alone |",
            "|---" * (len(SCALE_VARIANTS) + 2) + "|",
        ]
        for n in counts:
            cells = [
                f"{s[v][str(n)]['cpu_ns_per_pkt']:.0f} ({s[v][str(n)]['x_one_entry_cpu']:.2f}×)"
                if str(n) in s[v]
                else "–"
                for v in SCALE_VARIANTS
            ]
            L.append(f"| {n:,} | " + " | ".join(cells) + f" | {gen['cost']['3_scale'][str(n)]['ns_per_pkt']:.0f} |")
        L += ["", "(in brackets: × the same mechanism with 1 entry)", ""]
    s = doc.get("4_load")
    if s:
        L += [
            f"**4. Loading {s['prefixes']:,} prefixes** ({s['families']}; seconds)",
            "",
            "| path | s | × ipset restore |",
            "|---|---|---|",
        ]
        for k in ("xdpguard block load (empty map)", "xdpguard block load (refresh)", "ipset restore", "nft -f"):
            L.append(f"| {k} | {s[k]['s']:.2f} | {s[k]['x_ipset']:.2f} |")
        L.append("")
    s = doc.get("5_forward")
    if s:
        L += [
            "**5. Forwarding** client → protector → backend (iperf3, one TCP stream; CPU = both iperf3s' and ksoftirqd's CPU time per kB, "
            "which on veth includes the protector's forwarding; ab, a new connection per request)",
            "",
            "| protector | Gb/s | × nft DNAT | × DNAT + XDP_PASS | CPU ns/kB | × nft DNAT | × DNAT + XDP_PASS | p50 ms | p99 ms "
            "| p99 × nft DNAT |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v in FWD_VARIANTS:
            r = s[v]
            L.append(
                f"| {v} | {r['gbps']:.2f} | {r['gbps_x_dnat']:.2f} | {r['gbps_x_xdp_pass']:.2f} | {r['cpu_ns_per_kB']:.0f} | "
                f"{r['cpu_x_dnat']:.2f} | {r['cpu_x_xdp_pass']:.2f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['p99_x_dnat']:.2f} |"
            )
        L.append("")
    return "\n".join(L)


def plot(doc: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415  (Debian python3-matplotlib, only needed here)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), dpi=70)
    ax = axes[0][0]
    s = doc.get("1_per_packet")
    if s:
        names = list(s["cases"])
        y = range(len(names))
        ax.barh([i + 0.2 for i in y], [s["cases"][n]["ns"] for n in names], 0.4, label="xdpguard")
        ax.barh([i - 0.2 for i in y], [s["cases"][n].get("xdp_filter_ns", 0) for n in names], 0.4, label="xdp-filter")
        ax.axvline(s["bare_ns"], color="k", ls="--", label="bare XDP_DROP")
        ax.set_yticks(list(y), [n.replace("every step, ", "all steps,\n") for n in names], fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("ns / packet (log)")
        ax.set_title("1. per-packet cost")
        ax.legend(fontsize=7)
    s = doc.get("2_drop")
    if s and "unavailable" not in s:
        ax = axes[0][1]
        ax.bar(range(len(DROP_VARIANTS)), [s[v]["pps"] / 1e6 for v in DROP_VARIANTS])
        ax.set_xticks(range(len(DROP_VARIANTS)), [v.replace(" ", "\n", 1) for v in DROP_VARIANTS], fontsize=7)
        ax.set_ylabel("Mpps dropped")
        ax.set_title(f"2. drop throughput (veth; {doc['generator']['name']})")
        ax = axes[0][2]
        ax.bar(range(len(DROP_VARIANTS)), [s[v]["cpu_ns_per_pkt"] for v in DROP_VARIANTS], color="tab:orange")
        ax.set_xticks(range(len(DROP_VARIANTS)), [v.replace(" ", "\n", 1) for v in DROP_VARIANTS], fontsize=7)
        ax.set_ylabel("CPU ns per packet (generator + receiver)")
        ax.set_title("2. CPU per dropped packet")
    s = doc.get("3_scale")
    if s and "unavailable" not in s:
        ax = axes[1][0]
        for v in SCALE_VARIANTS:
            ns = sorted(int(n) for n in s[v])
            ax.plot(ns, [s[v][str(n)]["cpu_ns_per_pkt"] for n in ns], marker="o", label=v)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("blocked prefixes")
        ax.set_ylabel("CPU ns per dropped packet (log)")
        ax.set_title("3. rule-count scaling")
        ax.legend(fontsize=7)
    s = doc.get("4_load")
    if s:
        ax = axes[1][1]
        ks = ["xdpguard block load (empty map)", "xdpguard block load (refresh)", "ipset restore", "nft -f"]
        ax.bar(range(len(ks)), [s[k]["s"] for k in ks], color="tab:green")
        ax.set_xticks(
            range(len(ks)), ["xdpguard\n(empty)", "xdpguard\n(refresh)", "ipset\nrestore", "nft -f"], fontsize=7
        )
        ax.set_ylabel("seconds")
        ax.set_title(f"4. loading {s['prefixes']:,} prefixes")
    s = doc.get("5_forward")
    if s:
        ax = axes[1][2]
        x = range(len(FWD_VARIANTS))
        ax.bar(x, [s[v]["gbps"] for v in FWD_VARIANTS], color="tab:purple")
        ax.set_xticks(
            list(x),
            [
                "xdpguard",
                "nft\nDNAT",
                "DNAT +\nXDP_PASS",
                "our table\nno XDP",
                "DNAT + old\ncounters",
                "DNAT +\nempty fwd",
            ],
            fontsize=7,
        )
        ax.set_ylabel("Gb/s (one TCP stream)")
        ax2 = ax.twinx()
        ax2.plot(list(x), [s[v]["cpu_ns_per_kB"] for v in FWD_VARIANTS], "ko-")
        ax2.set_ylabel("CPU ns per kB (line)")
        ax.set_title("5. forwarding")
    for a in axes.flat:
        if not a.has_data():
            a.set_visible(False)
    fig.suptitle(f"xdpguard bench — {doc['machine']['kernel']}, {doc['machine']['cpus']} CPUs, {doc['profile']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- main


def section(doc: dict, key: str, title: str, run: Callable[[], dict]) -> None:
    """Run one section into doc[key]; one this machine cannot run (Unavailable) gets its one-line
    reason instead, and the others still run."""
    log(title)
    try:
        doc[key] = run()
    except Unavailable as e:
        log(f"  not run here: {e}")
        doc[key] = {"unavailable": str(e)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="short rounds, up to 10k prefixes")
    g.add_argument("--smoke", action="store_true", help="the smallest run that exercises every section (tests)")
    ap.add_argument("--out", type=Path, help="results folder (default bench-results/<timestamp>/)")
    ap.add_argument("--only", default="1,2,3,4,5,6", help="sections to run, e.g. 1,5")
    ap.add_argument("--cases", help="MODULE:FUNCTION returning the per-packet case list (default: the built-in one)")
    ap.add_argument(
        "--base",
        type=Path,
        metavar="DIR",
        help="section 1 also runs every case on the program in DIR/bpf (e.g. `git archive main bpf | tar -x "
        "-C DIR`), in the same rounds: the goals table shows base → this tree",
    )
    ap.add_argument(
        "--fwd-rules",
        type=int,
        default=2,
        metavar="N",
        help="forwarding rules in the 'our nft table' and 'old counter chain' variants (default 2)",
    )
    ap.add_argument(
        "--generator",
        choices=("auto", *bench_gen.GENERATORS),
        default="auto",
        help="traffic generator of sections 2-3 (default: the first this kernel allows, in this order)",
    )
    ap.add_argument("--gen-worker", choices=bench_gen.GENERATORS, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.gen_worker:
        return bench_gen.worker_main(a.gen_worker)
    prof_name = "smoke" if a.smoke else "quick" if a.quick else "full"
    p = PROFILES[prof_name]
    try:
        only = {int(x) for x in a.only.split(",")}
    except ValueError:
        ap.error("--only takes section numbers, e.g. 1,3")
    if not only <= {1, 2, 3, 4, 5, 6}:
        ap.error("--only: sections are 1 to 6")
    if not 2 <= a.fwd_rules <= 10_000:
        ap.error("--fwd-rules must be between 2 and 10,000")
    if os.geteuid() != 0:
        print("xdpguard: error: bench needs root (test runs, namespaces, nftables)", file=sys.stderr)
        return 2
    tools = {
        "bpftool": 1,
        "xdp-filter": 1,
        "ethtool": 2,
        IPT: 2,
        "ipset": 2,
        "nft": 2,
        "iperf3": 5,
        "ab": 5,
        "busybox": 5,
        "wrk": 6,
        "haproxy": 6,
    }
    missing = [t for t, sec in tools.items() if sec in only and not shutil.which(t)]
    if missing:
        print(f"xdpguard: error: missing {', '.join(missing)}: run scripts/setup.sh", file=sys.stderr)
        return 2
    out_dir = a.out or REPO / "bench-results" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.monotonic()
    load1 = os.getloadavg()[0]
    doc: dict = {
        "machine": {
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "loadavg_1m_at_start": load1,
            "model": next(
                (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
            ),
        },
        "profile": prof_name,
        "config": {**p.__dict__, "fwd_rules": a.fwd_rules},
        "note": "medians of interleaved rounds; shared, noisy machine: ratios, not absolute numbers, are meaningful",
    }
    log(
        f"xdpguard bench ({prof_name}): {doc['machine']['model']}, {doc['machine']['cpus']} CPUs, "
        f"kernel {doc['machine']['kernel']}, load {load1:.2f}; results in {out_dir}"
    )
    cases = load_cases(a.cases)
    with Lab(timeout=900) as lab:
        flood = Flood(lab, p, a.generator) if only & {1, 2, 3} else None
        if flood is not None:
            doc["generator"] = flood.info()
        if only & {1, 2}:
            xf = XdpFilter(lab, flood.receiver("xdp-filter"), "xgr0", [HIT4, HIT6])
        if 1 in only:
            section(doc, "1_per_packet", "1. per-packet cost", lambda: section_packets(lab, p, cases, xf, a.base))
        if only & {2, 3}:
            bed = bed_of(basic_bed)
            nss = setup_drop(lab, flood, bed) if flood.name else {}
            if 2 in only:
                section(
                    doc, "2_drop", f"2. drop throughput (veth; generator {flood.name})", lambda: section_drop(flood, p)
                )
            if 3 in only:
                section(
                    doc,
                    "3_scale",
                    f"3. rule-count scaling (generator {flood.name})",
                    lambda: section_scale(flood, nss, bed, p),
                )
            doc["generator"] = flood.info()
        xg_ns = None
        if 5 in only or 4 in only:
            budget = p.rounds * len(FWD_VARIANTS) * (p.fwd_s + p.requests * 0.02 + 10) + 1200
            log("5. forwarding (setup: compiles xdpguard)")
            clients, xg_ns = setup_forward(lab, budget, a.fwd_rules)
            if 5 in only:
                section(doc, "5_forward", "5. forwarding", lambda: section_forward(clients, p))
        if 4 in only:
            section(doc, "4_load", f"4. loading {p.load_n:,} prefixes", lambda: section_load(lab, xg_ns, p))
        if 6 in only:
            section(
                doc,
                "6_l7",
                "6. L7 cost (HAProxy + our rules, plain HAProxy, nft DNAT)",
                lambda: bench_l7.section_l7(lab, prof_name),
            )
    for b in _BEDS.values():
        b.close()
    doc["elapsed_s"] = time.monotonic() - t_start
    doc["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    md = table(doc) + bench_l7.table(doc.get("6_l7"))
    doc["table_md"] = md
    (out_dir / "bench.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / "bench.md").write_text(md + "\n")
    plot(doc, out_dir / "bench.png")
    print(md)
    print(
        f"\n{prof_name} run took {doc['elapsed_s']:.0f} s; load average {load1:.2f} → "
        f"{doc['machine']['loadavg_1m_at_end']:.2f}; results in {out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
