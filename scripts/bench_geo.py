#!/usr/bin/env python3
"""Geo rules, measured side by side in one run (root; nothing is attached anywhere):

  .venv/bin/python scripts/bench_geo.py [--rounds N] [--repeat N] [--json FILE]

1. loading: the whole world (every country of the database) into the two tries, and a typical
   rule (two countries): networks read from the database, then written to the maps (seconds),
   prefixes per family, and the tries' kernel memory (memlock of /proc/self/fdinfo).
2. per-packet cost (BPF_PROG_TEST_RUN, 64-byte UDP frames, the whole world loaded): a protected
   address without a geo rule (one flag test), one with a rule whose country the source is not in
   (LPM lookup + bit test, then every later step), one whose rule drops the source, and a bare
   XDP_DROP as the yardstick. Medians of interleaved rounds; the differences are what matters.
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

from xdpguard.core import geo, guard  # noqa: E402
from xdpguard.core.kernel.abi import MapName  # noqa: E402
from xdpguard.core.testrun import TestBed, bare_drop_prog, interleaved_rounds  # noqa: E402

PLAIN, RULED = "198.18.0.1", "198.18.0.2"
XDP_DROP, XDP_PASS = 1, 2


def memlock(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0


def frame(src: str, dst: str) -> bytes:
    f = bytes(Ether() / IP(src=src, dst=dst) / UDP(sport=4000, dport=53) / (b"x" * 18))
    return f[:64] if len(f) >= 64 else f + bytes(64 - len(f))


def first_host(db: geo.GeoDB, cc: str) -> str:
    for fam, addr, plen, c in db.networks([cc]):
        if fam == 4 and plen <= 24:
            return str(ipaddress.ip_address(addr) + 1)
    raise SystemExit(f"no IPv4 network of {cc} in {db.path}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--repeat", type=int, default=200000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    db = geo.GeoDB.open()
    out: dict = {"database": db.describe()}
    world = sorted(db.codes())
    with TestBed() as bed:
        bed.protect(PLAIN, RULED)
        for label, codes in (
            ("two countries (CN, RU)", ["CN", "RU"]),
            (f"whole world ({len(world)} countries)", world),
        ):
            t0 = time.perf_counter()
            nets = db.networks(codes)
            t1 = time.perf_counter()
            n4, n6 = guard.load_tries(bed.maps, type("Fixed", (), {"networks": lambda self, c: nets})(), codes)
            t2 = time.perf_counter()
            out[label] = {
                "read_s": round(t1 - t0, 2),
                "write_s": round(t2 - t1, 2),
                "prefixes4": n4,
                "prefixes6": n6,
                "memlock_bytes": memlock(bed.maps[MapName.GEO4].fd) + memlock(bed.maps[MapName.GEO6].fd),
            }
            print(
                f"{label}: {n4} IPv4 + {n6} IPv6 prefixes; read {t1 - t0:.2f} s, written {t2 - t1:.2f} s; "
                f"tries {out[label]['memlock_bytes'] / 2**20:.1f} MiB",
                flush=True,
            )
        # the whole world is loaded: per-packet cost
        de, us = first_host(db, "DE"), first_host(db, "US")
        guard.write_spec(bed.maps, ipaddress.ip_address(RULED), geo.GeoSpec(frozenset({"DE"})))
        keep, bare = bare_drop_prog()
        fd = bed.prog.prog_fd
        variants = {
            "no geo rule (pass)": (fd, frame(us, PLAIN), XDP_PASS),
            "geo rule, source passes": (fd, frame(us, RULED), XDP_PASS),
            "geo rule, source dropped": (fd, frame(de, RULED), XDP_DROP),
            "bare XDP_DROP": (bare, frame(de, RULED), XDP_DROP),
        }
        ns = interleaved_rounds(variants, args.rounds, args.repeat)
        med = {k: statistics.median(v) for k, v in ns.items()}
        out["ns_per_packet"] = med
        print("\n| case | ns/packet (median) |\n| --- | ---: |")
        for k, v in med.items():
            print(f"| {k} | {v:.1f} |")
        print(
            f"\ngeo lookup cost (rule, passes - no rule): {med['geo rule, source passes'] - med['no geo rule (pass)']:+.1f} ns"
        )
        del keep
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
