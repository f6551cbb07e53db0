"""Run the real XDP program on packets through BPF_PROG_TEST_RUN (tests and benchmarks).

A TestBed compiles and loads the program once, without attaching it anywhere; it is the Guard
of that program's maps (guard.py does their I/O). `verdict(packet)` runs one packet and reports
the action and the reason, found from the per-CPU counter slot that moved.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .kernel import dataplane, libbpf
from . import policy
from .kernel.abi import KIND_MAX, SK_SHIFT, SK_SLOTS, Kind, Reason, SrcSketch
from .guard import Guard
from .kernel.maps import BpfMap
from .policy import ban_bloom_bit, src_key
from .prefixes import parse_prefix

XDP_ACTIONS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}


@dataclass(frozen=True)
class Verdict:
    action: str  # drop | pass | …
    kind: Kind
    reason: Reason


class TestBed(Guard):
    """The map owner (a Guard without an interface) of a private program: compiled and loaded,
    never attached. Its runs, its switches and its resets; the map I/O is guard.py's."""

    __test__ = False  # not a pytest class

    def __init__(self, defines: dict[str, int] | None = None):
        self.prog = dataplane.compile_program(defines)
        super().__init__(None, None, {n: BpfMap(n, fd) for n, fd in self.prog.map_fds.items()})
        self.configure()
        self.budget_out_of_reach()

    def close(self) -> None:
        self.prog.close()  # (the program's object owns the map fds)

    def reset(self) -> None:
        """Every map back to what a fresh compile holds (guard.clear_maps), then the switches set
        as __init__ sets them: one compile can serve several test modules as if each had its own."""
        self.clear_maps()
        self.configure()
        self.budget_out_of_reach()

    # -- policy setup --

    def configure(self, enabled: bool = True, monitor_mask: int = 0) -> None:
        """Set the switches; the lists mask follows what the list maps hold."""
        self.reset_config(enabled, monitor_mask)

    def budget_out_of_reach(self) -> None:
        """The admission budget for unverified UDP (budget.h) at its highest rate: a bed's cases
        repeat one packet from one unverified source far faster than the default budget admits,
        and measure or test the other steps. Tests of the budget write their own settings."""
        self.write_verify_settings(policy.VerifySettings(budget_udp_pps=policy.MAX_PPS))

    def protect(self, *addrs: str) -> None:
        """Protect each address not protected yet, with the first free SYN-window slot."""
        have = set(self.protected_addrs())
        for a in addrs:
            ip = ipaddress.ip_address(a)
            if ip not in have:
                self.add_protected(ip)
                have.add(ip)

    def add(self, which: str, cidr: str, expires_ns: int = 0) -> None:
        self.set_list_entry(which, parse_prefix(cidr).prefix, expires_ns)

    def entry_hits(self, which: str, cidr: str) -> int | None:
        return self.list_entry_hits(which, parse_prefix(cidr).prefix)

    # -- the source sketch in front of the bucket LRU (abi.h xg_srcsk) --

    def sketch(self, src: str) -> SrcSketch:
        return self.read_sketch(sketch_slot(src))

    def sketch_hot(self, src: str, now_ns: int) -> None:
        """Put the source's slot on the bucket path through the window after now_ns's, as a
        packet of a source past its K does: its bucket is then consulted on every packet."""
        self.set_sketch_hot(sketch_slot(src), (now_ns >> SK_SHIFT) + 1)

    # -- counters and runs --

    def counters(self) -> dict[tuple[Kind, Reason], tuple[int, int]]:  # (Guard.counters: the non-zero ones, named)
        return self.counter_table()

    def run(self, packet: bytes, repeat: int = 1) -> tuple[int, int]:
        """(XDP return code, mean ns per run)."""
        rv, _, dur = libbpf.prog_test_run(self.prog.prog_fd, packet, repeat=repeat)
        return rv, dur

    def egress(self, packet: bytes, repeat: int = 1) -> tuple[int, int]:
        """Run the tc egress recorder on one frame leaving the protected interface:
        (tc return code, mean ns per run). It records connections into the shared maps."""
        rv, _, dur = libbpf.prog_test_run(self.prog.egress_fd, bytes(packet), repeat=repeat)
        return rv, dur

    def tcpstate(self, on: bool = True, grace_until_ns: int = 0) -> None:
        """Switch TCP state validation as attach does once the recorder is attached."""
        self.set_tcpstate(on, grace_until_ns)

    def verdict(self, packet: bytes) -> Verdict:
        before = self.counters()
        rv, _ = self.run(bytes(packet))
        after = self.counters()
        moved = [k for k in after if after[k][0] != before[k][0]]
        if len(moved) != 1:
            raise AssertionError(f"expected exactly one counter slot to move, got {moved}")
        kind, reason = moved[0]
        pk = after[moved[0]][0] - before[moved[0]][0]
        by = after[moved[0]][1] - before[moved[0]][1]
        if pk != 1 or by != len(packet):
            raise AssertionError(f"counter moved by {pk} packets / {by} bytes for one {len(packet)}-byte packet")
        return Verdict(XDP_ACTIONS.get(rv, str(rv)), kind, reason)


def sketch_slot(src: str) -> int:
    """The source's slot in xg_srcsk_arr (xg_src_hash of policy.h, as ban_bloom_bit)."""
    return ban_bloom_bit(src_key(ipaddress.ip_address(src))) & (SK_SLOTS - 1)


def bare_drop_prog() -> tuple[object, int]:
    """A bare `return XDP_DROP` program, compiled in the same run: the benchmarks' yardstick.
    Returns (bcc object to keep alive, prog fd)."""
    import bcc

    b = bcc.BPF(text=b"int bare_drop(struct xdp_md *ctx) { return XDP_DROP; }")
    return b, b.load_func(b"bare_drop", bcc.BPF.XDP).fd


def interleaved_rounds(variants: dict[str, tuple[int, bytes, int]], rounds: int, repeat: int) -> dict[str, list[float]]:
    """variants: name → (prog fd, packet, expected XDP action). Each round runs every variant once,
    in an order rotated (and every other round reversed) so drift on a noisy machine spreads
    evenly. Returns the kernel's mean ns per run, per variant and round."""
    names = list(variants)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        for n in order:
            fd, pkt, want = variants[n]
            rv, _, dur = libbpf.prog_test_run(fd, pkt, repeat=repeat)
            if rv != want:
                raise RuntimeError(f"{n} returned XDP action {rv}, expected {want}")
            samples[n].append(float(dur))
    return samples


assert KIND_MAX == len(Kind)
