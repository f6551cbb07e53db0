#!/usr/bin/env python3
"""What a mitigation-filter change costs the controller (issue 27): guard.write_mitigation_filters
of this tree and of a base tree, side by side in one run, and guard.read_global_policy.

    sudo .venv/bin/python scripts/bench_filters.py [--base DIR | --base-rev REV] [--rounds N] [--passes N]

Each side is a child interpreter with its tree first on sys.path that compiles and loads the real
program (testrun.TestBed: a private program run by BPF_PROG_TEST_RUN, never attached, no interface
or namespace touched) and times the same cases on its maps; the parent runs the two sides' passes
alternately (so a load change hits both) and prints medians and ratios. No assertions.

The base tree is DIR, or REV (default: the merge base of HEAD and main) extracted with
`git archive` into a temporary directory. The cases, for tables of 1, 8 and 64 mitigation
filters shaped like the engine's (one UDP service each, a length and TTL range, any source port,
every fourth with a payload window), the last filter going through an attack's cycle:
- install: the last filter appears in the slot a filter was lifted from (every cycle another
  attack, another service: tables never seen, their words computed afresh; a free slot costs
  the same: free slots accept any source port, as the fingerprints do);
- install over one port: the same, where the generation it is written into holds a filter for
  one source port in that slot (the worst case: 65,535 source-port words change);
- widen: its length range widens by 100;
- lift: it goes;
- unchanged: the same list again (the engine's every round, the reconciler's every 30 s);
- "cold": the same, with the Guard's memory dropped before each call (a new Guard, or another
  writer in between: what the CLI or a restarted daemon pays);
- "settled": the same, with guard.settle_filters (untimed: the daemon calls it between rounds)
  before each call, so the generation written holds the change before (a base without it: as
  its plain case).
Each timed call changes the table from the state before it; a generation is written two changes
after it was last written (one with "settled"). "words" counts the __u64 words of the batch writes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = (1, 8, 64)


# ---- one side (the child): this interpreter's xdpguard, whichever tree it came from ----


def _side(rounds: int) -> None:
    from dataclasses import replace

    from xdpguard.core import guard
    from xdpguard.core.kernel import libbpf
    from xdpguard.core.policy import MITIGATE, Filter, GlobalPolicy
    from xdpguard.core.testrun import TestBed

    written = [0]
    real_batch = libbpf.map_update_batch

    def counting(fd, keys_ptr, values_ptr, count, *a, **kw):
        written[0] += count
        return real_batch(fd, keys_ptr, values_ptr, count, *a, **kw)

    libbpf.map_update_batch = counting  # guard.py calls it through the module

    def fingerprint(i: int, wide: int = 0, attack: int = 0) -> Filter:
        port = 1000 + (i + 97 * attack) % 60000  # (another attack, another service: a table never seen)
        f = Filter(action=MITIGATE, proto="udp", dport=(port, port), length=(100, 200 + i + wide), ttl=(30, 60))
        if i % 4 == 3:  # (the mask spelt out, as the engine writes it and the maps give it back)
            f = replace(f, payload=bytes([i & 0xFF, 0xAB]), payload_mask=b"\xff\xff", payload_base="payload")
        return f

    attacks = iter(range(1, 1 << 30))

    def cycle(n: int) -> list[tuple[str, list[Filter]]]:
        """One attack on the last filter's service: (the change, the table after it)."""
        head = [fingerprint(i) for i in range(n - 1)]
        k = next(attacks)
        return [
            ("install", head + [fingerprint(n - 1, 0, k)]),
            ("widen", head + [fingerprint(n - 1, 100, k)]),
            ("lift", head),
        ]

    def cases(n: int) -> dict[str, Callable[[], list[tuple[str, list[Filter]]]]]:
        head = [fingerprint(i) for i in range(n - 1)]
        return {"attack": lambda: cycle(n), "unchanged": lambda: [("unchanged", head + [fingerprint(n - 1)])]}

    bed = TestBed()
    m = bed.maps
    guard.write_global_policy(m, GlobalPolicy(), None)
    memos = getattr(guard, "_MEMOS", None)  # (the base tree may have no memory, nor settle)
    settle = getattr(guard, "settle_filters", None)
    if settle is not None:
        guard.SETTLE_AFTER_S = 0.0
    print(json.dumps({"ready": True, "guard": guard.__file__}), flush=True)
    for line in sys.stdin:
        if line.strip() != "pass":
            break
        out: dict[str, dict] = {}
        for n in SIZES:
            for name, states_of in cases(n).items():
                for variant in ("", " cold", " settled"):
                    if variant == " settled" and name == "unchanged":
                        continue
                    start = states_of()[-1][1]
                    guard.write_mitigation_filters(m, start)  # untimed: the cycle's start
                    guard.write_mitigation_filters(m, start)
                    for _ in range(rounds):
                        for change, table in states_of():
                            if variant == " cold" and memos is not None:
                                memos.clear()
                            if variant == " settled" and settle is not None:
                                settle(m)  # untimed: the daemon does it between rounds
                            written[0] = 0
                            t0 = time.perf_counter()
                            guard.write_mitigation_filters(m, table)
                            dt = time.perf_counter() - t0
                            row = out.setdefault(f"{n} {change}{variant}", {"ms": [], "words": []})
                            row["ms"].append(dt * 1e3)
                            row["words"].append(written[0])
            head = [fingerprint(i) for i in range(n - 1)]
            decoy = replace(fingerprint(n - 1), sport=(7, 7))  # one source port, in that slot
            for variant in ("", " cold"):
                for _ in range(rounds):
                    guard.write_mitigation_filters(m, head + [decoy])  # untimed: both generations
                    guard.write_mitigation_filters(m, head)
                    if variant == " cold" and memos is not None:
                        memos.clear()
                    written[0] = 0
                    t0 = time.perf_counter()
                    guard.write_mitigation_filters(m, head + [fingerprint(n - 1, 0, next(attacks))])
                    dt = time.perf_counter() - t0
                    row = out.setdefault(f"{n} install over one port{variant}", {"ms": [], "words": []})
                    row["ms"].append(dt * 1e3)
                    row["words"].append(written[0])
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                guard.read_global_policy(m)
                times.append(time.perf_counter() - t0)
            out[f"{n} read_global_policy"] = {"ms": [t * 1e3 for t in times], "words": [0]}
        guard.write_mitigation_filters(m, [])
        print(json.dumps(out), flush=True)
    bed.close()


# ---- the parent: two sides, alternate passes, one table ----


class Side:
    def __init__(self, name: str, tree: Path):
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--side", "--rounds", str(ARGS.rounds)],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = json.loads(self._line())
        if not str(hello["guard"]).startswith(str(tree)):
            sys.exit(f"bench_filters: error: the {name} side imported {hello['guard']}, not {tree}'s")
        self.runs: dict[str, dict[str, list]] = {}

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"bench_filters: error: the {self.name} side ended (exit {self.proc.wait()})")
        return line

    def one_pass(self) -> None:
        self.proc.stdin.write("pass\n")
        self.proc.stdin.flush()
        for k, v in json.loads(self._line()).items():
            r = self.runs.setdefault(k, {"ms": [], "words": []})
            r["ms"] += v["ms"]
            r["words"] += v["words"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def _base_tree(tmp: str) -> Path:
    if ARGS.base:
        return Path(ARGS.base).resolve()
    out = Path(tmp) / "base"
    out.mkdir()
    rev = ARGS.base_rev or _git("merge-base", "HEAD", "main")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench_filters: error: needs root (it loads the program with BPF_PROG_TEST_RUN)")
    with tempfile.TemporaryDirectory(prefix="xg-bench-filters-") as tmp:
        base = Side("base", _base_tree(tmp))
        this = Side("this tree", REPO)
        try:
            for _ in range(ARGS.passes):
                base.one_pass()
                this.one_pass()
        finally:
            base.close()
            this.close()
    label = ARGS.base or ARGS.base_rev or f"{_git('merge-base', 'HEAD', 'main')[:10]} (where this branch left main)"
    print(f"guard.write_mitigation_filters / read_global_policy, median ms of {ARGS.rounds * ARGS.passes} calls")
    print(f"before: {label}; after: {REPO}\n")
    print("| case | before ms | after ms | before/after | words before | words after |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, a in this.runs.items():
        b = base.runs[k]
        am, bm = statistics.median(a["ms"]), statistics.median(b["ms"])
        print(
            f"| {k} | {bm:.2f} | {am:.2f} | {bm / am:.1f}× | "
            f"{statistics.median(b['words']):,.0f} | {statistics.median(a['words']):,.0f} |"
        )
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps({"base": base.runs, "this": this.runs}, indent=1))


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="the base tree (a checkout or export of another xdpguard)")
    p.add_argument(
        "--base-rev", help="without --base: this git revision, exported (default: where this branch left main)"
    )
    p.add_argument("--rounds", type=int, default=8, help="timed calls per case and pass (default 8)")
    p.add_argument("--passes", type=int, default=2, help="alternate passes per side (default 2)")
    p.add_argument("--json", help="write the raw numbers here")
    p.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    ARGS = _args()
    if ARGS.side:
        _side(ARGS.rounds)
    else:
        main()
