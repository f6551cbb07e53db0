#!/usr/bin/env python3
"""Side-by-side per-packet cost of two versions of the XDP program, in one run (issue 14).

  .venv/bin/python scripts/bench_ab.py --base DIR [--rounds N] [--repeat N] [--flood N] [--insns]

DIR holds the other version's `bpf/` tree (e.g. `git archive REV bpf | tar -x -C DIR`); the
current tree is "new". Both programs are compiled in this process, set up by today's controller
code (a map the base program lacks is skipped), and run interleaved: every figure is the median
of rounds whose order rotates, each also as a ratio to a bare XDP_DROP run in the same rounds.
Cases: clean pass UDP v4 / v6; all steps with 64 header filters, and with 64 payload-only filters, UDP v4 and TCP SYN v4; floods
of one packet per BPF_PROG_TEST_RUN (repeat=1) with the source rewritten in place before every
run: one source, and sources that all differ (v6: consecutive addresses from a new /64 every round, so no
source repeats within the run; v4: 198.18.0.0/16, 65,536 distinct, cycled). --insns prints the
verifier's processed-instruction count of both programs. Needs root and bcc.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import benchcases  # noqa: E402  (scripts/: the benchmark cases)
from xdpguard.core.kernel import abi, dataplane, libbpf  # noqa: E402
from xdpguard.core import testrun  # noqa: E402
from xdpguard.core.kernel.abi import MapName  # noqa: E402
from benchcases import (  # noqa: E402
    DST4,
    DST6,
    SRC4,
    SRC6,
    XDP_DROP,
    XDP_PASS,
    OnePacketRunner,
    _all_steps,
    _set_filters,
    frame,
    header_filters,
    payload_filters,
)


class _PortValueV1(ctypes.Structure):
    """xg_port_value before the service record (the owners only; abi.h)."""

    _fields_ = [("flags", ctypes.c_uint64)]


# Values that grew at their end since an older base: the layout to open the base's map with (the
# controller writes today's value, whose head is the old one; a map the base lacks is skipped).
BEFORE = {MapName.PORTS: _PortValueV1}


@contextmanager
def tree(bpf_dir: Path | None):
    """Compile from another bpf/ tree; maps that tree does not declare are left out."""
    if bpf_dir is None:
        yield
        return
    saved = dataplane.BPF_DIR, dataplane.PROGRAM_SOURCE, dataplane.compile_program
    orig_compile = saved[2]
    dataplane.BPF_DIR = bpf_dir
    dataplane.PROGRAM_SOURCE = bpf_dir / "xdpguard.bpf.c"
    import bcc

    def compile_program(defines=None, pin_dir=None):
        text = dataplane.render_source(dict(defines or {}), bpf_dir / "xdpguard.bpf.c")
        b = bcc.BPF(text=text.encode(), cflags=["-Wno-unused-function", "-Wno-compare-distinct-pointer-types"])
        fn = b.load_func(abi.PROGRAM_FUNC.encode(), bcc.BPF.XDP)
        eg = b.load_func(abi.EGRESS_FUNC.encode(), bcc.BPF.SCHED_CLS)
        fds = {}
        for name in MapName:
            try:
                fds[name] = b.get_table(name.value.encode()).map_fd
            except KeyError:
                pass
        for name, value_t in BEFORE.items():  # a value that grew since: the base's layout
            if name in fds and libbpf.map_info(fds[name]).value_size == ctypes.sizeof(value_t):
                abi.MAP_LAYOUTS[name] = (abi.MAP_LAYOUTS[name][0], value_t, abi.MAP_LAYOUTS[name][2])
        return dataplane.LoadedProgram(bpf=b, prog_fd=fn.fd, map_fds=fds, egress_fd=eg.fd)

    dataplane.compile_program = compile_program
    layouts = dict(abi.MAP_LAYOUTS)
    try:
        yield
    finally:
        dataplane.BPF_DIR, dataplane.PROGRAM_SOURCE, _ = saved
        dataplane.compile_program = orig_compile
        abi.MAP_LAYOUTS.update(layouts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="directory holding the base version's bpf/")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--repeat", type=int, default=50_000)
    ap.add_argument("--flood", type=int, default=200_000, help="test runs per flood round")
    ap.add_argument("--flood-rounds", type=int, default=3, help="0: no flood cases")
    ap.add_argument("--insns", action="store_true")
    args = ap.parse_args(argv)
    say = lambda s: print(f"# {s}", file=sys.stderr, flush=True)  # noqa: E731
    with ExitStack() as stack:
        bare_obj, bare_fd = testrun.bare_drop_prog()
        stack.callback(bare_obj.cleanup)
        beds = {}
        for label, d in (("base", args.base / "bpf"), ("new", None)):
            with tree(d):
                say(f"compiling {label}")
                plain = stack.enter_context(testrun.TestBed())
                plain.protect(DST4, DST6)
                full = stack.enter_context(testrun.TestBed())
                _all_steps(full)
                _set_filters(full, header_filters(64), [])
                pay = stack.enter_context(testrun.TestBed())
                _all_steps(pay)
                _set_filters(pay, payload_filters(64), [])
            beds[label] = (plain, full, pay)
        if args.insns:
            for label, (plain, _, _) in beds.items():
                print(f"{label}: verified_insns {benchcases.verified_insns(plain.prog.prog_fd)}")
        udp4, udp6, syn4 = frame(SRC4, DST4), frame(SRC6, DST6), frame(SRC4, DST4, "tcp")
        V = benchcases.Variant
        variants = {"bare XDP_DROP": V(bare_fd, udp4, XDP_DROP)}
        for label, (plain, full, pay) in beds.items():
            variants[f"{label}: clean pass UDP v4"] = V(plain.prog.prog_fd, udp4, XDP_PASS)
            variants[f"{label}: clean pass UDP v6"] = V(plain.prog.prog_fd, udp6, XDP_PASS)
            variants[f"{label}: all steps 64 filters UDP v4"] = V(full.prog.prog_fd, udp4, XDP_PASS)
            variants[f"{label}: all steps 64 filters SYN v4"] = V(full.prog.prog_fd, syn4, XDP_PASS)
            variants[f"{label}: all steps 64 payload filters UDP v4"] = V(pay.prog.prog_fd, udp4, XDP_PASS)
            variants[f"{label}: all steps 64 payload filters SYN v4"] = V(pay.prog.prog_fd, syn4, XDP_PASS)
        say(f"repeat cases: {args.rounds} rounds of {args.repeat:,}")
        benchcases.rounds(variants, 1, max(1, args.repeat // 10))
        samples = benchcases.rounds(variants, args.rounds, args.repeat)
        med = {n: statistics.median(s) for n, s in samples.items()}
        base = med["bare XDP_DROP"]
        print(f"| case | ns/pkt | × bare drop |  (median of {args.rounds} interleaved rounds × {args.repeat:,})")
        print("|---|---:|---:|")
        for n in variants:
            print(f"| {n} | {med[n]:.1f} | {med[n] / base:.2f} |")

        if not args.flood_rounds:
            return 0
        # floods: one test run per packet, the source rewritten before each
        n = args.flood
        fl: dict[str, list[float]] = {}
        bare_run = OnePacketRunner(bare_fd, udp4)
        runners = {
            label: {4: OnePacketRunner(full.prog.prog_fd, udp4), 6: OnePacketRunner(full.prog.prog_fd, udp6)}
            for label, (_, full, _) in beds.items()
        }
        say(f"floods: {args.flood_rounds} rounds × {n:,} runs per case")
        for r in range(args.flood_rounds):
            order = list(runners) if r % 2 == 0 else list(reversed(runners))
            fl.setdefault("bare XDP_DROP (repeat=1)", []).append(
                bare_run.flood(n, 14 + 12, 4, benchcases.FLOOD4, 1, {XDP_DROP}, benchcases.FLOOD4_SPAN)
            )
            for label in order:
                ru = runners[label]
                fl.setdefault(f"{label}: flood v4 1 source", []).append(
                    ru[4].flood(n, 14 + 12, 4, benchcases.FLOOD4, 0, {XDP_PASS})
                )
                fl.setdefault(f"{label}: flood v4 65,536 sources", []).append(
                    ru[4].flood(n, 14 + 12, 4, benchcases.FLOOD4, 1, {XDP_PASS}, benchcases.FLOOD4_SPAN)
                )
                fl.setdefault(f"{label}: flood v6 1 source", []).append(
                    ru[6].flood(n, 14 + 8, 16, benchcases.FLOOD6, 0, {XDP_PASS})
                )
                first = benchcases.FLOOD6 + ((r * 2 + (label == "new")) << 64)  # never the same source twice
                fl.setdefault(f"{label}: flood v6 all distinct", []).append(
                    ru[6].flood(n, 14 + 8, 16, first, 1, {XDP_PASS})
                )
        fm = {k: statistics.median(v) for k, v in fl.items()}
        b1 = fm["bare XDP_DROP (repeat=1)"]
        print(
            f"\n| flood case ({n:,} runs of repeat=1, median of {args.flood_rounds}) | ns/pkt | × bare (repeat=1) "
            f"| × one source |"
        )
        print("|---|---:|---:|---:|")
        for k, v in fm.items():
            one = fm.get(k.replace("65,536 sources", "1 source").replace("all distinct", "1 source"))
            print(f"| {k} | {v:.1f} | {v / b1:.2f} | {v / one:.2f} |" if one else f"| {k} | {v:.1f} | {v / b1:.2f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
