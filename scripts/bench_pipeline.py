#!/usr/bin/env python3
"""Per-packet cost of xdpguard's pipeline against a bare XDP_DROP, case by case (issue 14).

  .venv/bin/python scripts/bench_pipeline.py [--quick] [--json [FILE]]
  .venv/bin/python scripts/bench_pipeline.py --split    # benchcases.cost_split: the cost step by step

Needs root and bcc; nothing is attached (BPF_PROG_TEST_RUN). The cases are
scripts/benchcases.run_pipeline: interleaved rounds, medians, every figure also as a ratio
to the bare XDP_DROP program compiled in the same run. Floods run one test run per packet with
the source rewritten between runs (sources really vary per packet).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchcases import cost_split, run_pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds, 100,000 flood packets and list entries")
    ap.add_argument("--flood", type=int, default=None, help="packets (= distinct sources) per flood")
    ap.add_argument("--big-list", type=int, default=None, help="entries per blocklist map of the big list")
    ap.add_argument("--json", nargs="?", const="-", default=None, help="write results as JSON (to FILE or stdout)")
    ap.add_argument(
        "--split",
        action="store_true",
        help="only the cost split, step by step (64 port-keyed, then 64 payload-only filters)",
    )
    args = ap.parse_args(argv)
    if args.split:
        for payload in (False, True):
            res = cost_split(quick=True, payload=payload)
            print(f"median of {res.rounds} interleaved rounds of {res.repeat:,} runs")
            print(res.markdown() + "\n")
        return 0
    res = run_pipeline(
        quick=args.quick,
        big_list=args.big_list,
        flood_packets=args.flood,
        progress=lambda s: print(f"# {s}", file=sys.stderr, flush=True),
    )
    print(
        f"median of {res.rounds} interleaved rounds of {res.repeat:,} runs; floods: {res.flood_packets:,} "
        f"test runs of one packet each ({res.seconds:.0f} s)"
    )
    print(res.markdown())
    if args.json:
        text = json.dumps(res.to_dict(), indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
