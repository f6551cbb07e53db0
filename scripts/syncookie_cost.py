#!/usr/bin/env python3
"""Measure the SYN cookie answer against a bare XDP_DROP (moved here from tests/bpf/test_syncookie.py,
which keeps the behaviour: every run gives its action and the cookie counters move).

  .venv/bin/python scripts/syncookie_cost.py [--rounds N] [--json]

Needs root and bcc; nothing is attached (BPF_PROG_TEST_RUN). Four variants run interleaved over
rounds (order rotated, see testrun.interleaved_rounds), one run per call (repeat=1: the answer
rewrites the buffer into a SYN-ACK in place): a bare XDP_DROP program, a SYN answered with a cookie
SYN-ACK (XDP_TX), the client's ACK with a good cookie (XDP_PASS), with a bad one (XDP_DROP). The
kernel's own ns per run, medians, and ratios to the bare drop are printed. Speed is a ratio on a
given machine, not a bound: nothing is asserted.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from xdpguard.core.kernel import abi, libbpf  # noqa: E402
from xdpguard.core import guard, policy  # noqa: E402
from xdpguard.core.guard import Guard  # noqa: E402
from xdpguard.core.testrun import TestBed, bare_drop_prog, interleaved_rounds  # noqa: E402

PROT, CLIENT = "198.18.0.1", "203.0.113.7"
CMAC, PMAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (12345, 0)), ("NOP", None), ("WScale", 7)]


def syn(sport: int = 43000) -> bytes:
    return bytes(
        Ether(src=CMAC, dst=PMAC)
        / IP(src=CLIENT, dst=PROT)
        / TCP(sport=sport, dport=80, flags="S", seq=1000, options=SYN_OPTS)
    )


def ack_for(synack: bytes, bump: int = 0) -> bytes:
    t = Ether(synack)[TCP]
    return bytes(
        Ether(src=CMAC, dst=PMAC)
        / IP(src=CLIENT, dst=PROT)
        / TCP(sport=t.dport, dport=t.sport, flags="A", seq=t.ack, ack=(t.seq + 1 + bump) & 0xFFFFFFFF, window=502)
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3000, help="rounds of the four variants (default 3000)")
    ap.add_argument("--json", action="store_true", help="print the medians as JSON")
    args = ap.parse_args()
    with TestBed({"XG_FLOWS_MAX": 1024, "XG_EMBRYOS_MAX": 1024, "XG_LIST_MAX": 1024, "XG_PORTS_MAX": 1024}) as bed:
        bed.protect(PROT)
        addr = ipaddress.ip_address(PROT)
        Guard(None, None, bed.maps).change_ports([addr], "tcp", 80, 80, abi.PORT_BY_FORWARD, True)
        guard.write_address_policy(bed.maps, addr, policy.AddressPolicy(syn=policy.SynPolicy(always=True)))
        bed.tcpstate(True)
        keep, bare_fd = bare_drop_prog()
        frame = syn()
        answer = libbpf.prog_test_run(bed.prog.prog_fd, frame)[1]
        variants = {
            "bare XDP_DROP": (bare_fd, frame, XDP_DROP),
            "SYN → cookie SYN-ACK": (bed.prog.prog_fd, frame, XDP_TX),
            "ACK, good cookie": (bed.prog.prog_fd, ack_for(answer), XDP_PASS),
            "ACK, bad cookie": (bed.prog.prog_fd, ack_for(answer, bump=1), XDP_DROP),
        }
        res = interleaved_rounds(variants, rounds=args.rounds, repeat=1)
        del keep
    med = {n: statistics.median(v) for n, v in res.items()}
    base = med["bare XDP_DROP"]
    if args.json:
        print(json.dumps({"rounds": args.rounds, "median_ns": med}, indent=2))
    else:
        for n, v in med.items():
            print(f"{n:24s} {v:7.1f} ns/packet  ({v / base:5.1f}× bare drop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
