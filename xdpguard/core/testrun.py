"""Run the real XDP program on packets through BPF_PROG_TEST_RUN (tests and benchmarks).

A TestBed compiles and loads the program once, without attaching it anywhere, and gives
typed access to its maps. `verdict(packet)` runs one packet and reports the action and the
reason, found from the per-CPU counter slot that moved.
"""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass

from . import dataplane, guard, libbpf, policy
from .abi import (CFG_ENABLED, CFG_TCPSTATE, KIND_MAX, REASON_MAX, SK_SHIFT, SK_SLOTS, Config, Kind, ListEntry,
                  MapName, Reason, SrcSketch, TcpStateConfig)
from .maps import BpfMap
from .policy import ban_bloom_bit, new_protected, prot_key, src_key
from .prefixes import parse_prefix
from .guard import Guard, list_target

XDP_ACTIONS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}
BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_RINGBUF = 2, 6, 27


@dataclass(frozen=True)
class Verdict:
    action: str  # drop | pass | …
    kind: Kind
    reason: Reason


class TestBed:
    __test__ = False  # not a pytest class

    def __init__(self, defines: dict[str, int] | None = None):
        self.prog = dataplane.compile_program(defines)
        self.maps = {n: BpfMap(n, fd) for n, fd in self.prog.map_fds.items()}
        self._next_slot = 0  # SYN-window slot of the next protected address
        self.configure()
        self.budget_out_of_reach()

    def close(self) -> None:
        self.prog.close()

    def reset(self) -> None:
        """Every map back to what a fresh compile holds — arrays zeroed (one batch update each),
        hashes, LRUs and tries emptied — then the switches set as __init__ sets them: one compile
        can serve several test modules as if each had its own. (The sample ring buffer is left
        to its reader, which drains it.)"""
        for m in self.maps.values():
            kind = libbpf.map_info(m.fd).type
            if kind == BPF_MAP_TYPE_RINGBUF:
                continue
            if kind in (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY):
                n = m.max_entries
                keys = (ctypes.c_uint32 * n)(*range(n))
                per = ctypes.sizeof(m.value_type)
                if m.percpu:  # the kernel's per-CPU batch layout: each value rounded up to 8 bytes, per CPU
                    per = (per + 7) // 8 * 8 * m.ncpu
                vals = (ctypes.c_char * (per * n))()
                rc, done = libbpf.map_update_batch(m.fd, ctypes.addressof(keys), ctypes.addressof(vals), n)
                if rc != 0 or done != n:
                    raise libbpf.BpfError(-rc, f"map update batch on {m.name.value}")
            else:
                for k in list(m.keys()):
                    m.delete(k)
        self._next_slot = 0
        self.configure()
        self.budget_out_of_reach()

    def __enter__(self) -> TestBed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- policy setup --

    def configure(self, enabled: bool = True, monitor_mask: int = 0) -> None:
        """Set the switches; the lists mask follows what the list maps hold."""
        self.maps[MapName.CONFIG].set(ctypes.c_uint32(0), Config(CFG_ENABLED if enabled else 0, monitor_mask, 0))
        Guard(None, None, self.maps).sync_lists_mask()

    def budget_out_of_reach(self) -> None:
        """The admission budget for unverified UDP (budget.h) at its highest rate: a bed's cases
        repeat one packet from one unverified source far faster than the default budget admits,
        and measure or test the other steps. Tests of the budget write their own settings."""
        guard.write_verify_settings(self.maps, policy.VerifySettings(budget_udp_pps=policy.MAX_PPS))

    def protect(self, *addrs: str) -> None:
        for a in addrs:
            ip = ipaddress.ip_address(a)
            m = self.maps[MapName.PROT4 if ip.version == 4 else MapName.PROT6]
            if m.get(prot_key(ip)) is None:
                m.set(prot_key(ip), new_protected(self._next_slot))
                self._next_slot += 1

    def add(self, which: str, cidr: str, expires_ns: int = 0) -> None:
        p = parse_prefix(cidr).prefix
        name, key = list_target(which, p)
        self.maps[name].set(key, ListEntry(0, expires_ns, p.plen))
        Guard(None, None, self.maps).sync_lists_mask()

    def entry_hits(self, which: str, cidr: str) -> int | None:
        p = parse_prefix(cidr).prefix
        name, key = list_target(which, p)
        v = self.maps[name].get(key)
        return None if v is None else v.hits

    # -- the source sketch in front of the bucket LRU (abi.h xg_srcsk) --

    def clear_sketch(self) -> None:
        """Zero every slot of xg_srcsk_arr (one batch update)."""
        m = self.maps[MapName.SRCSKETCH]
        keys = (ctypes.c_uint32 * SK_SLOTS)(*range(SK_SLOTS))
        vals = (SrcSketch * SK_SLOTS)()
        rc, done = libbpf.map_update_batch(m.fd, ctypes.addressof(keys), ctypes.addressof(vals), SK_SLOTS)
        if rc != 0 or done != SK_SLOTS:
            raise libbpf.BpfError(-rc, "map update batch on xg_srcsk_arr")

    def sketch(self, src: str) -> SrcSketch:
        return self.maps[MapName.SRCSKETCH].get(ctypes.c_uint32(sketch_slot(src)))

    def sketch_hot(self, src: str, now_ns: int) -> None:
        """Put the source's slot on the bucket path through the window after now_ns's, as a
        packet of a source past its K does: its bucket is then consulted on every packet."""
        m = self.maps[MapName.SRCSKETCH]
        k = ctypes.c_uint32(sketch_slot(src))
        v = m.get(k)
        v.hot_until = (now_ns >> SK_SHIFT) + 1
        m.set(k, v)

    # -- counters and runs --

    def counters(self) -> dict[tuple[Kind, Reason], tuple[int, int]]:
        out = {}
        stats = self.maps[MapName.STATS]
        for kind in Kind:
            for reason in Reason:
                per_cpu = stats.get(ctypes.c_uint32(int(kind) * REASON_MAX + int(reason))) or []
                out[(kind, reason)] = (sum(c.packets for c in per_cpu), sum(c.bytes for c in per_cpu))
        return out

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
        cfg = self.maps[MapName.CONFIG].get(ctypes.c_uint32(0))
        cfg.flags = (cfg.flags | CFG_TCPSTATE) if on else (cfg.flags & ~CFG_TCPSTATE)
        self.maps[MapName.CONFIG].set(ctypes.c_uint32(0), cfg)
        self.maps[MapName.TCPCFG].set(ctypes.c_uint32(0), TcpStateConfig(grace_until_ns, 0, 0, 0, 0))

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
