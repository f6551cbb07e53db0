#!/usr/bin/env python3
"""The UDP watermark's per-packet cost, side by side in one run (root; nothing is attached):

  .venv/bin/python scripts/bench_watermark.py [--rounds N] [--repeat N] [--singles N] [--json FILE]

BPF_PROG_TEST_RUN, Ethernet + IPv4 + UDP frames with 64 bytes of data, one protected address:
1. with repeat (medians of interleaved rounds): a datagram to a port that is not watermarked (the
   address has a watermarked port: one flag test and one hash lookup), the same with no watermark
   on the address at all (flag test only), an unmarked datagram to the watermarked port (dropped:
   the MAC is computed and wrong), a mark of a stale epoch (dropped before any hash), and a bare
   XDP_DROP as the yardstick.
2. the pass path (a valid mark: SipHash, checksum update, tail adjust): a run strips the mark,
   and BPF_PROG_TEST_RUN's repeat runs again on the stripped frame. So the frame carries NESTED
   marks (mark(mark(…(data)))), one per repetition: each run checks and strips the outermost one.
   Beside it, the same frames without the watermark pass plain. Repeat = the nesting depth.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from xdpguard.core import guard  # noqa: E402
from xdpguard.core import watermark as wm  # noqa: E402
from xdpguard.core.testrun import TestBed, bare_drop_prog, interleaved_rounds  # noqa: E402
from xdpguard.sdk import watermark as sdk  # noqa: E402

PROT, OTHER = "198.18.0.1", "198.18.0.2"
PORT, PLAIN_PORT = 7777, 7778
XDP_DROP, XDP_PASS = 1, 2
KEY = bytes(range(16))


def frame(data: bytes, dst=PROT, port=PORT) -> bytes:
    return bytes(Ether() / IP(src="198.18.5.5", dst=dst) / UDP(sport=40000, dport=port) / data)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=20000)
    ap.add_argument("--depth", type=int, default=100, help="nested marks = repeat of the pass-path runs")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    data = bytes(range(64))
    spec = wm.WatermarkSpec(PORT, "/x")
    out: dict = {}
    with TestBed() as bed:
        bed.protect(PROT, OTHER)
        guard.write_watermark_service(bed.maps, ipaddress.ip_address(PROT), PORT, wm.value(KEY, spec))
        keep, bare_fd = bare_drop_prog()
        fd = bed.prog.prog_fd
        now = time.time()
        bad = bytearray(sdk.mark(data, KEY, now, port=PORT))
        bad[-1] ^= 1
        bad = bytes(bad)
        variants = {
            "no watermark on the address": (fd, frame(data, OTHER), XDP_PASS),
            "other port of a watermarked address": (fd, frame(data, port=PLAIN_PORT), XDP_PASS),
            "unmarked to the watermarked port (drop: epoch 0 is stale)": (fd, frame(data + bytes(12)), XDP_DROP),
            "bad MAC, current epoch (drop: one SipHash)": (fd, frame(bad), XDP_DROP),
            "stale mark (drop before hashing)": (fd, frame(sdk.mark(data, KEY, now - 3600, port=PORT)), XDP_DROP),
            "bare XDP_DROP": (bare_fd, frame(data), XDP_DROP),
        }
        samples = interleaved_rounds(variants, a.rounds, a.repeat)
        out["repeat"] = {n: statistics.median(v) for n, v in samples.items()}
        nested = data
        for _ in range(a.depth):
            nested = sdk.mark(nested, KEY, port=PORT)
        deep = {
            "valid mark: checked, stripped, passed (nested marks)": (fd, frame(nested), XDP_PASS),
            "the same frame, address not watermarked": (fd, frame(nested, OTHER), XDP_PASS),
        }
        out["nested"] = {n: statistics.median(v) for n, v in interleaved_rounds(deep, a.rounds, a.depth).items()}
        # with the previous key in force a bad MAC costs two hashes (the worst flood during a rotation)
        guard.write_watermark_service(
            bed.maps,
            ipaddress.ip_address(PROT),
            PORT,
            wm.value(bytes(16), wm.rotated(spec, "/y", now), previous=KEY, now=now),
        )
        two = {"bad MAC during a rotation's overlap (drop: two SipHashes)": (fd, frame(bad), XDP_DROP)}
        out["overlap"] = {n: statistics.median(v) for n, v in interleaved_rounds(two, a.rounds, a.repeat).items()}
        out["counters"] = guard.watermark_counters(bed.maps)
    for part in ("repeat", "overlap", "nested"):
        for n, v in out[part].items():
            print(f"{v:8.1f} ns  {n}")
    print("data-path counters:", out["counters"])
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
