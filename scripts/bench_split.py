#!/usr/bin/env python3
"""Where a packet's cost goes, piece by piece: the program compiled with its pieces taken out one
more at a time (issue 27 item 1).

  sudo .venv/bin/python scripts/bench_split.py [--rounds N] [--repeat N] [--cases clean,every] [--bpf DIR]

benchcases.cost_split switches steps off through the maps, which leaves what no map switches off
(the verified lookup, the peacetime counter, the scratch copy, the counters): this removes pieces
from the C text instead. Each variant is a copy of bpf/ (or DIR/bpf) with every patch up to its
own applied (ABLATIONS, in order: from the end of the pipeline back to the parse), compiled into
the clean-pass bed (protected addresses, one blocked host per family: bench_suite.basic_bed) and
the every-step bed (64 payload filters: bench_cleansing.all_steps_bed). All variants run
interleaved in the same rounds beside a bare XDP_DROP; a row's "step" column is what the piece it
removes cost, i.e. the difference to the row above. Map sizes are cut (SPLIT_DEFINES). Measurement only: nothing here is a program
that runs anywhere. A patch that no longer finds its text stops the run (keep them in step with
the code). Needs root and bcc.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import bench_ab  # noqa: E402  (tree(): compile another bpf/)
import bench_cleansing  # noqa: E402
import benchcases  # noqa: E402
from benchcases import XDP_DROP, XDP_PASS, Variant  # noqa: E402
from xdpguard.core.kernel import dataplane  # noqa: E402
from xdpguard.core.testrun import TestBed, bare_drop_prog  # noqa: E402

# Smaller preallocated maps than a real attach (LRUs of 1M sources, 262,144 service records):
# 32 programs at full size hold ~11 GB of kernel memory, which the shared machine does not have
# (the first full-size run was OOM-killed). A lookup's cost hardly depends on the table's size.
SPLIT_DEFINES = {
    "XG_SOURCES_MAX": 65536,
    "XG_FLOWS_MAX": 65536,
    "XG_BANS_MAX": 65536,
    "XG_SYNAUTH_MAX": 65536,
    "XG_PORTS_MAX": 16384,
}

MAIN = "xdpguard.bpf.c"
STATS = "include/stats.h"

# (label, [(file under bpf/, regex, replacement, occurrences)]), cumulative in this order.
ABLATIONS: list[tuple[str, list[tuple[str, str, str, int]]]] = [
    ("the whole program", []),
    ("- sampling's config lookup", [(STATS, r"#ifndef XG_SPEC_NO_SAMPLING", "#if 0", 1)]),
    (
        "- the verdict counter",
        [(STATS, r"struct xg_counter \*cnt = xg_stats_pcpu\.lookup\(&slot\);", "struct xg_counter *cnt = 0;", 1)],
    ),
    ("- SYN defence", [(MAIN, r"return step_synauth\(cfg, prot, p, now\);", "return XG_CONTINUE;", 1)]),
    (
        "- limits copy, rate limits",
        [
            (MAIN, r"__builtin_memcpy\(lim, limits_for\(prot, p\), sizeof\(\*lim\)\);", "", 1),
            (MAIN, r"XG_STEP\(step_ratelimit\([^;]*\)\);", "", 1),
        ],
    ),
    ("- budget", [(MAIN, r"XG_STEP\(step_budget\(prot, p, now\)\);", "", 1)]),
    (
        "- TCP state",
        [(MAIN, r"r = step_tcpstate\(cfg, prot, p, now\);", "r = XG_CONTINUE;", 1)],
    ),
    ("- feature filters", [(MAIN, r"r = step_feature\(ctx, cfg, p, &skip_rest, now\);", "r = XG_CONTINUE;", 1)]),
    (
        "- scratch copy (steps b on the stack)",
        [
            (
                MAIN,
                r"__u32 zero = 0;\s*struct xg_pkt_scratch \*q = xg_pkt_pcpu\.lookup\(&zero\);\s*if \(!q\)\s*"
                r"return XG_CONTINUE;[^\n]*\n\s*__builtin_memcpy\(&q->p, p, sizeof\(q->p\)\);\s*p = &q->p;\s*"
                r"r = policy_steps_b\(ctx, cfg, prot, p, &q->lim, now\);",
                "struct xg_limits lim_;\n    r = policy_steps_b(ctx, cfg, prot, p, &lim_, now);",
                1,
            )
        ],
    ),
    (
        "- port record, reflection",
        [(MAIN, r"XG_STEP\(step_port\(prot, p\)\);", "", 1), (MAIN, r"XG_STEP\(step_reflection\(cfg, p\)\);", "", 1)],
    ),
    (
        "- tcpflags, geo, fragment, watermark, protocol",
        [
            (MAIN, r"XG_STEP\(step_tcpflags\(p\)\);", "", 1),
            (MAIN, r"XG_STEP\(step_geo\(prot, p\)\);", "", 1),
            (MAIN, r"XG_STEP\(step_fragment\(cfg, p\)\);", "", 1),
            (MAIN, r"r = step_watermark\(ctx, prot, p\);", "r = XG_CONTINUE;", 1),
            (MAIN, r"XG_STEP\(step_protocol\(prot, p\)\);", "", 1),
        ],
    ),
    ("- UDP peacetime counter", [(MAIN, r"kg_udp_count\(prot, xg_now\(now\)\);", ";", 1)]),
    ("- verified lookup (bloom, clock)", [(MAIN, r"\n    kg_lookup\(p, now\);", "\n", 1)]),
    (
        "- the rest of the policy steps",
        [(MAIN, r"reason = policy_steps\(ctx, cfg, prot, &p, &now\);", "reason = XG_CONTINUE;", 1)],
    ),
    ("- bans (state flag)", [(MAIN, r"reason = step_banned\(&p, &now\);", "reason = XG_CONTINUE;", 2)]),
    ("- allow/block lists", [(MAIN, r"reason = step_lists\([^;]*\);", "reason = XG_CONTINUE;", 2)]),
]


def variant_tree(src: Path, upto: int, root: Path) -> Path:
    """A copy of src (a bpf/ tree) with the patches of ABLATIONS[0..upto] applied; returns the
    directory holding it as bpf/ (what bench_ab.tree takes)."""
    d = root / f"v{upto:02d}"
    shutil.copytree(src, d / "bpf")
    for _, patches in ABLATIONS[: upto + 1]:
        for rel, rx, new, count in patches:
            f = d / "bpf" / rel
            text, n = re.subn(rx, new, f.read_text())
            if n != count:
                raise SystemExit(f"bench_split: {rel}: /{rx}/ matched {n} times, expected {count}")
            f.write_text(text)
    return d


def basic_bed() -> TestBed:
    """bench_suite.basic_bed's: both addresses protected, one blocked host per family."""
    bed = TestBed()
    bed.protect(bench_cleansing.DST4, bench_cleansing.DST6)
    bed.add("block", "198.18.0.1/32")
    bed.add("block", "2001:db8:a000::1/128")
    return bed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--repeat", type=int, default=50_000)
    ap.add_argument("--cases", default="clean,every", help="clean (clean pass UDP v4/v6), every (every step UDP/SYN)")
    ap.add_argument("--bpf", type=Path, default=REPO / "bpf", help="the bpf/ tree to take apart (default: this one)")
    ap.add_argument("--upto", type=int, default=len(ABLATIONS) - 1, help="last ablation to build")
    args = ap.parse_args(argv)
    say = lambda s: print(f"# {s}", file=sys.stderr, flush=True)  # noqa: E731
    want = set(args.cases.split(","))
    c = bench_cleansing
    packets = {}
    if "clean" in want:
        packets["clean UDP v4"] = ("clean", c.frame("192.0.2.7", c.DST4, "udp"))
        packets["clean UDP v6"] = ("clean", c.frame("2001:db8:ffff:ffff::7", c.DST6, "udp"))
    if "every" in want:
        packets["every step UDP v4"] = ("every", c.frame(c.SRC4, c.DST4, "udp"))
        packets["every step SYN v4"] = ("every", c.frame(c.SRC4, c.DST4, "tcp"))
    labels = [lab for lab, _ in ABLATIONS[: args.upto + 1]]
    with ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="xgsplit-"))
        stack.callback(shutil.rmtree, root, True)
        bare_obj, bare_fd = bare_drop_prog()
        stack.callback(bare_obj.cleanup)
        variants = {"bare XDP_DROP": Variant(bare_fd, packets[next(iter(packets))][1], XDP_DROP)}
        insns = {}
        for i, lab in enumerate(labels):
            d = variant_tree(args.bpf, i, root)
            say(f"compiling {i}: {lab}")
            beds = {}
            with bench_ab.tree(d / "bpf"):
                compile_ab = dataplane.compile_program
                dataplane.compile_program = lambda defines=None, pin_dir=None: compile_ab(
                    {**SPLIT_DEFINES, **(defines or {})}, pin_dir
                )
                if "clean" in want:
                    beds["clean"] = stack.enter_context(basic_bed())
                if "every" in want:
                    beds["every"] = stack.enter_context(c.all_steps_bed())
            if "every" in beds:
                insns[lab] = benchcases.verified_insns(beds["every"].prog.prog_fd)
            for name, (bed, pkt) in packets.items():
                variants[f"{i}|{name}"] = Variant(beds[bed].prog.prog_fd, pkt, XDP_PASS)
        say(f"{len(variants)} variants, {args.rounds} rounds of {args.repeat:,}")
        benchcases.rounds(variants, 1, max(1, args.repeat // 10))
        med = {n: statistics.median(s) for n, s in benchcases.rounds(variants, args.rounds, args.repeat).items()}
    bare = med["bare XDP_DROP"]
    names = list(packets)
    print(f"bare XDP_DROP {bare:.1f} ns; median of {args.rounds} interleaved rounds × {args.repeat:,}")
    print("| variant | " + " | ".join(f"{n}: ns (× bare) | step" for n in names) + (" | verifier |" if insns else " |"))
    print("|---|" + "---:|---:|" * len(names) + ("---:|" if insns else ""))
    for i, lab in enumerate(labels):
        cells = []
        for n in names:
            v = med[f"{i}|{n}"]
            step = "" if i == 0 else f"{med[f'{i - 1}|{n}'] - v:+.1f}"
            cells.append(f"{v:.1f} ({v / bare:.2f}) | {step}")
        tail = f" | {insns[lab]:,} |" if insns else " |"
        print(f"| {lab} | " + " | ".join(cells) + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
