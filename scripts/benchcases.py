"""Per-packet benchmark cases of the XDP pipeline (issue 14), measured through BPF_PROG_TEST_RUN.

Every figure is a ratio to a bare `return XDP_DROP` program compiled in the same run. Two kinds
of case:

- *repeat cases*: one packet run `repeat` times back to back (the kernel's mean ns per run);
  variants are interleaved over rounds (order rotated, every other round reversed), and a
  variant may rewrite the maps before its run (filter sets of different sizes share one
  program);
- *flood cases*: packets whose source really varies per packet. BPF_PROG_TEST_RUN with repeat
  reuses one packet, so a flood is N test runs with repeat=1, the source rewritten in place
  between runs, and the kernel's own per-run durations summed. Each figure therefore includes
  the fixed cost of a repeat=1 run; a flood is compared with the same number of runs from one
  source (ratio), and with bare XDP_DROP run the same way.

`run_pipeline(quick=...)` builds the programs, runs every case and returns a `PipelineResult`
(`rows`: name, group, ns/pkt, × bare; `to_dict()`; `markdown()`). `scripts/bench_pipeline.py`
prints it. Needs root and bcc.
"""

from __future__ import annotations

import ctypes
import ipaddress
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace

from xdpguard.core.kernel import abi, libbpf
from xdpguard.core import guard, policy
from xdpguard.core.kernel.abi import MapName
from xdpguard.core.guard import Guard
from xdpguard.core.policy import AddressPolicy, Filter, GlobalPolicy, Limits, SynPolicy
from xdpguard.core.prefixes import Prefix
from xdpguard.core.testrun import TestBed, bare_drop_prog

XDP_DROP, XDP_PASS = 1, 2
DST4, DST6 = "198.51.100.10", "2001:db8:ffff:fffe::10"
SRC4, SRC6 = "192.0.2.7", "2001:db8:f100::1"
BLOCKED4, BLOCKED6 = "203.0.113.77", "2001:db8:bad0::77"
FLOOD4 = int(ipaddress.IPv4Address("198.18.0.0"))  # v4 flood sources: 198.18.0.0/16, FLOOD4 + i mod 65536
FLOOD4_SPAN = 65536
FLOOD6 = int(ipaddress.IPv6Address("2001:db8:f100::"))
HUGE = Limits(
    src_pps=policy.MAX_PPS, src_bps=policy.MAX_BPS, dst_pps=policy.MAX_PPS, syn_src_pps=policy.MAX_PPS, ban_s=60
)


def frame(src: str, dst: str, l4: str = "udp", dport: int | None = None, flags: str = "S", size: int = 64) -> bytes:
    """An Ethernet frame of `size` bytes (without FCS): UDP 40000→53 or TCP 40000→80."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    l3 = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst, ttl=64)
    l4h = UDP(sport=40000, dport=dport or 53) if l4 == "udp" else TCP(sport=40000, dport=dport or 80, flags=flags)
    pkt = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3 / l4h)
    return pkt + b"\x00" * max(0, size - len(pkt))


def header_filters(n: int, match_last: bool = False) -> tuple[Filter, ...]:
    """n filters that differ in header fields (a mitigation's typical rules: one UDP port each,
    a length range, a payload signature), none matching the benchmark's UDP packet to port 53
    — or, with match_last, only the last one does (a drop filter: first-match order matters)."""
    out = [
        Filter(proto="udp", dport=(1000 + i, 1000 + i), length=(60, 1500), payload=b"\xde\xad", payload_off=i % 8)
        for i in range(n)
    ]
    if match_last and n:
        out[-1] = Filter(proto="udp", dport=(53, 53), length=(60, 1500))
    return tuple(out)


def payload_filters(n: int) -> tuple[Filter, ...]:
    """n filters that every header check lets through and only a payload compare rejects (the
    worst case for any classifier that compares payload last; scripts/bench_cleansing.py's)."""
    return tuple(Filter(payload=bytes([0xDE, 0xAD, 0xBE, i & 0xFF]), payload_off=i % 16) for i in range(n))


def _set_filters(bed: TestBed, filters: tuple[Filter, ...], cur: list) -> None:
    """Write a filter set (through the controller's own writer) unless it is the one in place."""
    if cur and cur[0] == filters:
        return
    old = guard.read_global_policy(bed.maps)
    guard.write_global_policy(bed.maps, replace(old, filters=filters), old)
    cur[:] = [filters]


def _all_steps(bed: TestBed) -> None:
    """Every cleansing step in force, nothing that drops the benchmark's clean packets: lists with
    entries in every map (none covering the sources), a ban of someone else, fragment policy,
    protocol blocking (of "other"), port policy, reflection ports, TCP state, per-source pps/bps,
    per-destination and SYN-rate buckets with auto-ban (limits out of reach), a SYN threshold
    (not reached)."""
    bed.protect(DST4, DST6)
    bed.tcpstate(True)
    m = bed.maps
    guard.write_global_policy(m, GlobalPolicy(drop_fragments=True, reflection=True))
    g = Guard(None, None, m)
    for a in (DST4, DST6):
        ip = ipaddress.ip_address(a)
        guard.write_address_policy(m, ip, AddressPolicy(frozenset({"other"}), HUGE, SynPolicy(policy.MAX_PPS)))
        for proto, port in (("tcp", 80), ("udp", 53), ("tcp", 443)):
            g.change_ports([ip], proto, port, port, abi.PORT_BY_OPERATOR, True)
    block = [Prefix(4, ipaddress.IPv4Address(0xC6138000 + (i << 8)).packed, 24) for i in range(100)]  # 198.19.128/17
    block += [Prefix(4, ipaddress.IPv4Address(0xC6134000 + i).packed, 32) for i in range(100)]  # 198.19.64.x
    block += [Prefix(6, ipaddress.IPv6Address((0x20010DB8BBBB << 80) + (i << 64)).packed, 64) for i in range(100)]
    block += [Prefix(6, ipaddress.IPv6Address((0x20010DB8BBBC << 80) + i).packed, 128) for i in range(100)]
    g.upsert("block", block, 0)
    g.upsert(
        "allow",
        [
            Prefix(4, ipaddress.IPv4Address("203.0.113.0").packed, 24),
            Prefix(6, ipaddress.IPv6Address("2001:db8:aaaa::").packed, 64),
        ],
        0,
    )
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    m[MapName.BANS].set(policy.src_key(ipaddress.ip_address("203.0.113.99")), abi.Ban(now + 3600 * 10**9, 0, 10, 0))
    m[MapName.DPSTATE].set(ctypes.c_uint32(0), abi.DpState(abi.DP_HAS_BANS))
    guard.sweep_bans(m, now)  # as the daemon's sweep does: notes that no operator ban exists
    for sport, dst, src in ((80, DST4, SRC4), (80, DST6, SRC6)):
        bed.egress(tcp_reply(dst, src, sport, 40000))  # record the connections the ACK cases belong to
    # ... which also makes the sources verified: kept so for every run (bench_cleansing.keep_verified)
    bed.write_verify_settings(
        policy.VerifySettings(tcp_pps=policy.MAX_PPS, tcp_burst=1 << 32, budget_udp_pps=policy.MAX_PPS)
    )


def tcp_reply(src: str, dst: str, sport: int, dport: int) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    l3 = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst, ttl=64)
    pkt = bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / l3 / TCP(sport=sport, dport=dport, flags="A"))
    return pkt + b"\x00" * max(0, 64 - len(pkt))


# ---- the verifier's count ----


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info up to verified_insns (kernel 5.16+)."""

    u32, u64 = ctypes.c_uint32, ctypes.c_uint64
    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", u32),
        ("xlated_prog_len", u32),
        ("jited_prog_insns", u64),
        ("xlated_prog_insns", u64),
        ("load_time", u64),
        ("created_by_uid", u32),
        ("nr_map_ids", u32),
        ("map_ids", u64),
        ("name", ctypes.c_char * 16),
        ("ifindex", u32),
        ("gpl", u32),
        ("netns_dev", u64),
        ("netns_ino", u64),
        ("nr_jited_ksyms", u32),
        ("nr_jited_func_lens", u32),
        ("jited_ksyms", u64),
        ("jited_func_lens", u64),
        ("btf_id", u32),
        ("func_info_rec_size", u32),
        ("func_info", u64),
        ("nr_func_info", u32),
        ("nr_line_info", u32),
        ("line_info", u64),
        ("jited_line_info", u64),
        ("nr_jited_line_info", u32),
        ("line_info_rec_size", u32),
        ("jited_line_info_rec_size", u32),
        ("nr_prog_tags", u32),
        ("prog_tags", u64),
        ("run_time_ns", u64),
        ("run_cnt", u64),
        ("recursion_misses", u64),
        ("verified_insns", u32),
        ("pad", u32),
    ]


def prog_info(fd: int) -> _ProgInfo:
    info = _ProgInfo()
    n = ctypes.c_uint32(ctypes.sizeof(info))
    libbpf.lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n))
    return info


def verified_insns(fd: int) -> int:
    """The verifier's processed-instruction count of a loaded program (limit 1,000,000)."""
    return prog_info(fd).verified_insns


# ---- running ----


@dataclass
class Variant:
    fd: int
    packet: bytes
    want: int  # expected XDP action
    prepare: Callable[[], None] | None = None  # map writes before the variant's run (not timed)
    group: str = ""


def rounds(variants: dict[str, Variant], n_rounds: int, repeat: int) -> dict[str, list[float]]:
    """Interleaved rounds (order rotated, every other round reversed): the kernel's mean ns per
    run, per variant and round."""
    names = list(variants)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(n_rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        for n in order:
            v = variants[n]
            if v.prepare is not None:
                v.prepare()
            rv, _, dur = libbpf.prog_test_run(v.fd, v.packet, repeat=repeat)
            if rv != v.want:
                raise RuntimeError(f"{n}: XDP action {rv}, expected {v.want}")
            samples[n].append(float(dur))
    return samples


class OnePacketRunner:
    """BPF_PROG_TEST_RUN with repeat=1 on a packet buffer rewritten in place between runs."""

    def __init__(self, prog_fd: int, packet: bytes):
        self.fd = prog_fd
        self.n = len(packet)
        self.buf = ctypes.create_string_buffer(packet, self.n)
        self.out = ctypes.create_string_buffer(self.n + 256)
        self.opts = libbpf._TestRunOpts()
        self.opts.sz = ctypes.sizeof(libbpf._TestRunOpts)
        self.opts.data_in = ctypes.addressof(self.buf)
        self.opts.data_size_in = self.n
        self.opts.data_out = ctypes.addressof(self.out)
        self.opts.repeat = 1

    def flood(self, count: int, src_at: int, width: int, base: int, step: int, want: set[int], span: int = 0) -> float:
        """count runs; before run i the `width`-byte source at src_at becomes base + i*step
        (modulo span when given; step 0: one source). Mean of the kernel's per-run durations, ns."""
        total = 0
        buf, opts, fd = self.buf, self.opts, self.fd
        run, ref = libbpf.lib().bpf_prog_test_run_opts, ctypes.byref(self.opts)
        size_out = len(self.out)
        span = span or 1 << (8 * width)
        for i in range(count):
            buf[src_at : src_at + width] = (base + (i * step) % span).to_bytes(width, "big")
            opts.data_size_out = size_out
            if run(fd, ref) != 0:
                raise RuntimeError("BPF_PROG_TEST_RUN failed")
            if opts.retval not in want:
                raise RuntimeError(f"flood run {i} returned {opts.retval}, expected {want}")
            total += opts.duration
        return total / count


def _reset_sources(bed: TestBed) -> None:
    """Empty the per-source LRU maps (one syscall per entry: slow, so only between floods) and the
    source sketch in front of them."""
    for name in (MapName.BUCKETS, MapName.SYNSEEN):
        if name in bed.maps:
            m = bed.maps[name]
            for k in list(m.keys()):
                m.delete(k)
    if MapName.SRCSKETCH in bed.maps:
        bed.clear_sketch()


@dataclass(frozen=True)
class Row:
    name: str
    group: str
    ns: float
    x_bare: float
    note: str = ""


@dataclass
class PipelineResult:
    rounds: int
    repeat: int
    flood_packets: int
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "rounds": self.rounds,
            "repeat": self.repeat,
            "flood_packets": self.flood_packets,
            "seconds": round(self.seconds, 1),
            "rows": [asdict(r) for r in self.rows],
        }

    def markdown(self) -> str:
        out = ["| case | ns/pkt | × bare XDP_DROP | note |", "|---|---:|---:|---|"]
        for r in self.rows:
            out.append(f"| {r.name} | {r.ns:.1f} | {r.x_bare:.2f} | {r.note} |")
        return "\n".join(out)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


def _blocklist_bed(stack: ExitStack, entries: int, defines: dict | None) -> TestBed:
    """A bed protecting DST4/DST6 whose blocklist holds `entries` v4 hosts, v6 hosts, v4 /24s and
    v6 /64s each (the benchmark's blocked sources among them)."""
    bed = stack.enter_context(TestBed(defines))
    bed.protect(DST4, DST6)
    g = Guard(None, None, bed.maps)
    b4, b6 = int(ipaddress.IPv4Address(BLOCKED4)), int(ipaddress.IPv6Address(BLOCKED6))
    hosts4 = [Prefix(4, ipaddress.IPv4Address(b4).packed, 32)]
    hosts6 = [Prefix(6, ipaddress.IPv6Address(b6).packed, 128)]
    nets4 = [Prefix(4, ipaddress.IPv4Address("198.19.77.0").packed, 24)]
    nets6 = [Prefix(6, ipaddress.IPv6Address("2001:db8:bad1:77::").packed, 64)]
    for i in range(1, entries):
        hosts4.append(Prefix(4, ((0x0A000000 + i) & 0xFFFFFFFF).to_bytes(4, "big"), 32))  # 10.0.0.0/8
        hosts6.append(Prefix(6, (b6 + (i << 20)).to_bytes(16, "big"), 128))
        nets4.append(Prefix(4, ((0x0B000000 + (i << 8)) & 0xFFFFFFFF).to_bytes(4, "big"), 24))  # 11/8 and on
        nets6.append(Prefix(6, ((0x20010DB8C << 92) + (i << 64)).to_bytes(16, "big"), 64))
    g.upsert("block", hosts4 + hosts6 + nets4 + nets6, 0)
    return bed


def run_pipeline(
    quick: bool = False,
    defines: dict | None = None,
    big_list: int | None = None,
    flood_packets: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Build the programs, run every case, return the table (see the module docstring).

    quick: 5 rounds × 20,000 runs, 100,000 flood packets, a 100,000-entry big blocklist; else
    15 × 100,000, 1,000,000 and 1,000,000. defines: compile-time -D's for xdpguard's program."""
    say = progress or (lambda s: None)
    t0 = time.monotonic()
    n_rounds, repeat = (5, 20_000) if quick else (15, 100_000)
    n_flood = flood_packets or (100_000 if quick else 1_000_000)
    n_big = big_list or (100_000 if quick else 1_000_000)
    res = PipelineResult(n_rounds, repeat, n_flood)
    with ExitStack() as stack:
        bare_obj, bare_fd = bare_drop_prog()
        stack.callback(bare_obj.cleanup)
        say("compiling: plain bed")
        plain = stack.enter_context(TestBed(defines))
        plain.protect(DST4, DST6)
        say("compiling: all-steps bed")
        full = stack.enter_context(TestBed(defines))
        _all_steps(full)
        say(f"compiling: blocklist beds (1 and {n_big:,} entries per map)")
        small = _blocklist_bed(stack, 1, defines)
        big = _blocklist_bed(stack, n_big, defines)

        udp4, udp6 = frame(SRC4, DST4), frame(SRC6, DST6)
        pcur: list = []
        fcur: list = []
        V = Variant
        variants = {
            "bare XDP_DROP": V(bare_fd, udp4, XDP_DROP, group="yardstick"),
            "clean pass UDP v4": V(plain.prog.prog_fd, udp4, XDP_PASS, lambda: _set_filters(plain, (), pcur), "clean"),
            "clean pass UDP v6": V(plain.prog.prog_fd, udp6, XDP_PASS, lambda: _set_filters(plain, (), pcur), "clean"),
            "clean pass TCP SYN v4": V(
                plain.prog.prog_fd, frame(SRC4, DST4, "tcp"), XDP_PASS, lambda: _set_filters(plain, (), pcur), "clean"
            ),
        }
        for n in (1, 8, 64):
            variants[f"filters: {n} header filters, UDP v4 clean"] = V(
                plain.prog.prog_fd, udp4, XDP_PASS, lambda n=n: _set_filters(plain, header_filters(n), pcur), "filters"
            )
        variants["filters: 64 header filters, #64 matches (drop)"] = V(
            plain.prog.prog_fd, udp4, XDP_DROP, lambda: _set_filters(plain, header_filters(64, True), pcur), "filters"
        )
        for n in (1, 64):
            variants[f"filters: {n} payload-only filters, UDP v4 clean"] = V(
                plain.prog.prog_fd, udp4, XDP_PASS, lambda n=n: _set_filters(plain, payload_filters(n), pcur), "filters"
            )
        for what, fl in (("64 header filters", header_filters(64)), ("64 payload-only filters", payload_filters(64))):
            variants[f"all steps, {what}, UDP v4 clean"] = V(
                full.prog.prog_fd, udp4, XDP_PASS, lambda fl=fl: _set_filters(full, fl, fcur), "all steps"
            )
            variants[f"all steps, {what}, TCP SYN v4 clean"] = V(
                full.prog.prog_fd,
                frame(SRC4, DST4, "tcp"),
                XDP_PASS,
                lambda fl=fl: _set_filters(full, fl, fcur),
                "all steps",
            )
        variants["all steps, 64 header filters, UDP v6 clean"] = V(
            full.prog.prog_fd, udp6, XDP_PASS, lambda: _set_filters(full, header_filters(64), fcur), "all steps"
        )
        variants["all steps, 64 header filters, TCP ACK v4 recorded"] = V(
            full.prog.prog_fd,
            frame(SRC4, DST4, "tcp", flags="A"),
            XDP_PASS,
            lambda: _set_filters(full, header_filters(64), fcur),
            "all steps",
        )
        for label, bed in (("1 entry", small), (f"{n_big:,} entries", big)):
            for what, src, dst in (
                ("v4 host", BLOCKED4, DST4),
                ("v6 host", BLOCKED6, DST6),
                ("v4 /24", "198.19.77.5", DST4),
                ("v6 /64", "2001:db8:bad1:77::5", DST6),
            ):
                variants[f"blocklist hit {what}, {label}"] = V(
                    bed.prog.prog_fd, frame(src, dst), XDP_DROP, group="blocklist"
                )
        say(f"repeat cases: {len(variants)} variants, {n_rounds} rounds of {repeat:,} runs")
        rounds({k: v for k, v in variants.items()}, 1, max(1, repeat // 10))  # warm-up
        samples = rounds(variants, n_rounds, repeat)
        med = {n: statistics.median(s) for n, s in samples.items()}
        base = med["bare XDP_DROP"]
        for n, v in variants.items():
            res.rows.append(Row(n, v.group, med[n], med[n] / base))
        for n in list(med):
            if n.startswith("blocklist hit") and n.endswith(f"{n_big:,} entries"):
                one = n.replace(f"{n_big:,} entries", "1 entry")
                res.rows.append(
                    Row(
                        n.replace("blocklist hit", "blocklist ratio"),
                        "blocklist",
                        med[n],
                        med[n] / base,
                        f"{med[n] / med[one]:.2f}× the 1-entry list",
                    )
                )

        # Floods: per-source buckets (limits out of reach), one test run per packet.
        say(f"flood cases: {n_flood:,} packets each")
        _set_filters(full, header_filters(64), fcur)
        bare_run = OnePacketRunner(bare_fd, udp4)
        bare1 = bare_run.flood(min(n_flood, 200_000), 14 + 12, 4, FLOOD4, 1, {XDP_DROP}, FLOOD4_SPAN)
        res.rows.append(Row("flood yardstick: bare XDP_DROP, repeat=1 runs", "flood", bare1, bare1 / base))
        # v4 sources stay inside 198.18.0.0/16 (65,536 of them, cycled); v6 ones are all distinct.
        for fam, pkt, at, width, first, span in (
            (4, udp4, 14 + 12, 4, FLOOD4, FLOOD4_SPAN),
            (6, udp6, 14 + 8, 16, FLOOD6, 0),
        ):
            runner = OnePacketRunner(full.prog.prog_fd, pkt)
            _reset_sources(full)
            one = runner.flood(n_flood, at, width, first, 0, {XDP_PASS})
            _reset_sources(full)
            many = runner.flood(n_flood, at, width, first, 1, {XDP_PASS}, span)
            distinct = min(n_flood, span) if span else n_flood
            res.rows.append(
                Row(f"flood v{fam}, all steps: 1 source", "flood", one, one / bare1, "× the bare drop run the same way")
            )
            res.rows.append(
                Row(
                    f"flood v{fam}, all steps: {distinct:,} distinct sources",
                    "flood",
                    many,
                    many / bare1,
                    f"{many / one:.2f}× one source",
                )
            )
    res.seconds = time.monotonic() - t0
    return res


def cost_split(quick: bool = True, defines: dict | None = None, payload: bool = False) -> PipelineResult:
    """Where the all-steps cost goes: the all-steps UDP v4 clean case with its steps switched off
    one more at a time (map writes between runs, one program), beside bare XDP_DROP. The 64
    filters are header_filters (port-keyed), or with payload, payload_filters (payload-only)."""
    kind = "payload-only" if payload else "header"
    n_rounds, repeat = (5, 20_000) if quick else (11, 100_000)
    res = PipelineResult(n_rounds, repeat, 0)
    with ExitStack() as stack:
        bare_obj, bare_fd = bare_drop_prog()
        stack.callback(bare_obj.cleanup)
        bed = stack.enter_context(TestBed(defines))
        _all_steps(bed)
        fcur: list = []
        _set_filters(bed, payload_filters(64) if payload else header_filters(64), fcur)
        m = bed.maps
        ip = ipaddress.ip_address(DST4)
        pk = policy.prot_key(ip)
        full_cfg = m[MapName.CONFIG].get(ctypes.c_uint32(0))
        full_prot = m[MapName.PROT4].get(pk)
        full_dp = m[MapName.DPSTATE].get(ctypes.c_uint32(0)).flags

        def state(k: int) -> Callable[[], None]:
            def prepare() -> None:
                cfg = abi.Config.from_buffer_copy(full_cfg)
                prot = abi.Protected.from_buffer_copy(full_prot)
                if k >= 1:
                    cfg.lists_mask = 0
                m[MapName.DPSTATE].set(ctypes.c_uint32(0), abi.DpState(0 if k >= 2 else full_dp))
                if k >= 3:
                    cfg.filters_count = 0
                if k >= 4:
                    prot.lim = Limits(src_pps=policy.MAX_PPS).to_c()  # per-source bucket only
                if k >= 5:
                    prot.lim = Limits().to_c()
                    prot.syn = SynPolicy().to_c(prot.syn.slot)
                if k >= 6:
                    prot.flags &= ~abi.PROT_PORT_POLICY
                    cfg.flags &= ~(abi.CFG_REFLECTION | abi.CFG_TCPSTATE | abi.CFG_DROP_FRAGMENTS)
                m[MapName.CONFIG].set(ctypes.c_uint32(0), cfg)
                m[MapName.PROT4].set(pk, prot)

            return prepare

        labels = [
            f"all steps (64 {kind} filters)",
            "- lists (allow/block lookups)",
            "- bans (ban LRU lookup)",
            "- 64 filters",
            "- dst bucket, bps/SYN buckets (src pps bucket kept)",
            "- src bucket, SYN threshold",
            "- port policy, reflection, TCP state, fragments",
        ]
        udp4 = frame(SRC4, DST4)
        variants = {"bare XDP_DROP": Variant(bare_fd, udp4, XDP_DROP)}
        for k, lab in enumerate(labels):
            variants[lab] = Variant(bed.prog.prog_fd, udp4, XDP_PASS, state(k), "split")
        rounds(variants, 1, repeat // 10)
        med = {n: statistics.median(s) for n, s in rounds(variants, n_rounds, repeat).items()}
        base = med["bare XDP_DROP"]
        prev = None
        for n in variants:
            note = "" if prev is None or n == labels[0] else f"{med[prev] - med[n]:+.0f} ns for the step removed"
            res.rows.append(Row(n, "split", med[n], med[n] / base, note))
            prev = n if n != "bare XDP_DROP" else None
    return res
