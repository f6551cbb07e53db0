"""Python mirror of bpf/include/abi.h: reasons, verdict kinds, map names and layouts.

tests/unit/test_abi_sync.py parses the C header and fails when the two drift apart.
"""

from __future__ import annotations

import ctypes
import enum
import re
from collections.abc import Mapping
from pathlib import Path

ABI_VERSION = 1

BPF_DIR = Path(__file__).resolve().parents[3] / "bpf"
ABI_HEADER = BPF_DIR / "include" / "abi.h"
PROGRAM_SOURCE = BPF_DIR / "xdpguard.bpf.c"
PROGRAM_FUNC = "xdpguard_main"
EGRESS_FUNC = "xdpguard_egress"  # the tc egress recorder of the TCP state step (tcpstate.h)


class _ReasonBase(enum.IntEnum):
    _doc: str

    @property
    def label(self) -> str:
        """The reason's name in the CLI, the config, JSON and metrics: XG_REASON_FOO is `foo`."""
        return self.name.lower()

    @property
    def doc(self) -> str:
        """The reason's comment in abi.h, on one line."""
        return self._doc

    @property
    def is_drop(self) -> bool:
        """Every reason but the pass reasons (their abi.h comment starts with 'pass:') is a drop reason."""
        return not self._doc.startswith("pass:")


_REASON_RE = re.compile(r"^#define[ \t]+XG_REASON_(\w+)[ \t]+(\d+)[ \t]*(?:/\*(.*?)\*/)?", re.M | re.S)


def reasons_from_header(text: str) -> type[_ReasonBase]:
    """The Reason enum of an abi.h text: one member per `#define XG_REASON_<NAME> <n> /* comment */`
    (XG_REASON_MAX is the size of the reason dimension, not a reason), in the order of n."""
    found = sorted(
        (
            (int(m[2]), m[1], " ".join(re.sub(r"\n\s*\*", " ", m[3] or "").split()))
            for m in _REASON_RE.finditer(text)
            if m[1] != "MAX"
        )
    )
    cls = _ReasonBase("Reason", [(name, n) for n, name, _ in found], module=__name__, qualname="Reason")
    for n, _, doc in found:
        cls(n)._doc = doc
    return cls


def _header_define(text: str, name: str) -> int:
    m = re.search(rf"^#define[ \t]+{name}[ \t]+(\d+)", text, re.M)
    if m is None:
        raise RuntimeError(f"{ABI_HEADER}: no #define {name}")
    return int(m[1])


# The reasons are abi.h's, read here once: a reason added there (with a comment saying what it
# drops) is a member here, its label the lower-case name, with nothing to copy. The rest of this
# file is checked against the header by tests/unit/test_abi_sync.py.
_ABI_TEXT = ABI_HEADER.read_text()
Reason = reasons_from_header(_ABI_TEXT)
REASON_MAX = _header_define(_ABI_TEXT, "XG_REASON_MAX")
DROP_REASONS = tuple(r.label for r in Reason if r.is_drop)  # the one table of drop reason names, in order
ALL_DROP_MASK = sum(1 << r for r in Reason if r.is_drop)


class Kind(enum.IntEnum):
    PASS = 0
    DROP = 1
    WOULD_DROP = 2

    @property
    def label(self) -> str:
        return self.name.lower()


KIND_MAX = 3
STATS_SLOTS = KIND_MAX * REASON_MAX

CFG_ENABLED = 1 << 0
CFG_DROP_FRAGMENTS = 1 << 1
CFG_REFLECTION = 1 << 2
CFG_TCPSTATE = 1 << 3  # the tc egress recorder is attached: XDP validates TCP state

FILTERS_MAX = 64
PAYLOAD_MATCH_MAX = 16
PAYLOAD_OFF_MAX = 1024
SOURCES_MAX = 1048576
BANS_MAX = 262144
SYNAUTH_MAX = 262144
OPBANS_MAX = 65536

PROT_BLOCK_TCP = 1 << 1
PROT_BLOCK_UDP = 1 << 2
PROT_BLOCK_ICMP = 1 << 3
PROT_BLOCK_OTHER = 1 << 4
PROT_PORT_LIMITS = 1 << 5
PROT_TCPSTATE_OFF = 1 << 6  # TCP state validation off for this address (on while the port policy is)
PROT_GEO = 1 << 7  # a geo rule applies: xg_geoset_arr[syn.slot] (geo.h)
PROT_WATERMARK = 1 << 12  # some UDP port of the address is watermarked: xg_wm_hash (watermark.h)
PROT_SYN_COOKIE = 1 << 16  # SYN defence answers with SYN cookies (else: retransmission)
PROT_SYN_ALWAYS = 1 << 17  # SYN defence on at any SYN rate (else above syn_threshold_pps)

DP_HAS_BANS = 1 << 0
DP_OPBANS_EMPTY = 1 << 1  # set by sweep_bans when xg_opban_hash is empty; `ban add` clears it
DP_BAN_BLOOM = 1 << 2  # xg_banbloom_arr holds a bit for every ban (policy.enable_ban_bloom)
BANBLOOM_BITS = 1048576
# xg_lpf_arr, the lists' prefilter (abi.h XG_LPF_*; steps/lists.h lpf_miss, policy.lpf_bits)
LM_PREFILTER = 1 << 8  # xg_config.lists_mask: the prefilter holds a bit for every list entry
LPF_BITS, LPF_WORDS, LPF_V6_PLEN = 65536, 1024, 48
# xg_srcsk_arr, the source sketch in front of xg_bucket_lru (abi.h XG_SK_*; policy.h step_ratelimit)
SK_SLOTS = 65536
SK_SHIFT = 30
SK_MAX = 0x7FFFFFFF

FA_DROP, FA_PASS, FA_DROP_BAN = 1, 2, 3
FA_MITIGATE = 4  # an automatic mitigation filter (core/daemon/mitigation.py): drop as Reason.MITIGATION

# Feature filters compiled to per-field bit vectors (abi.h XG_FV_*): word offsets per generation.
FV_PROTO, FV_TTL, FV_FLAGS, FV_SPORT, FV_DPORT, FV_LEN = 0, 256, 512, 1024, 66561, 132098
FV_SLOTS = 197635
FV_NOTCP, FV_NOPORT = 256, 65536
FGENS = 2
FB_L3, FB_L4, FB_PAYLOAD = 0, 1, 2
# The payload index (abi.h XG_PV_*): byte positions, words per position, words per generation.
PPOS_MAX, PV_VALUES, PV_ABSENT = 32, 257, 256
PV_SLOTS = PPOS_MAX * PV_VALUES
PPOS_OFF_BITS = 12

PROTECTED_MAX = 1024
LIST_MAX = 2097152
PORTS_MAX = 262144
FLOWS_MAX = 262144
EMBRYOS_MAX = 65536
GOODSRC_MAX = 262144  # verified sources (knowngood.h)
GOOD_TTL_S = 86400  # a TCP-verified source
GOOD_UDP_TTL_S = 600  # a UDP-verified one
VF_TCP, VF_UDP = 1, 2  # xg_goodsrc.kind: how the source proved its address
VF_L7 = 4  # xg_goodsrc.kind: it passed a layer-7 challenge (the controller writes it, with VF_TCP)
SYNAUTH_SYNS = 8  # SYNs one retransmission authentication admits
# xg_vcfg_arr defaults (0 there = these)
VERIFIED_TCP_PPS, VERIFIED_TCP_BURST = 20000, 40000
VERIFIED_UDP_PPS, VERIFIED_UDP_BURST = 2000, 4000
UDP_PEACE_PPS, UDP_PEACE_HOLD_S = 5000, 30
SPOOF_BAN_S = 10
VC_NO_UDP_LEARN = 1  # xg_verify_config.flags: the controller saw an attack, no UDP learning
VC_NO_BUDGET = 2  # xg_verify_config.flags: no admission budget for unverified UDP or SYNs (budget.h)
BUDGET_UDP_PPS = 1000  # budget.h: unverified UDP units/s per service when nothing is set
BUDGET_TCP_SYNS = 500  # budget.h: unverified SYNs/s per TCP service below the SYN threshold when nothing is set (then the SYN defence)
BUDGET_UNIT_SHIFT = 7  # steps/budget.h: a unit is a packet of up to 1 << 7 bytes
BUDGET_UNIT_BYTES = 1 << BUDGET_UNIT_SHIFT  # a packet costs one unit per 128 bytes (frame length) started
BUDGET_BURST_DIV, BUDGET_BURST_MIN = 10, 64  # budget.h: burst min(rate, max(rate / DIV, MIN)) units
BUDGET_MAX = 16384  # services with a budget bucket of their own (xg_budget_hash)
GOODBLOOM_BITS = 1048576  # xg_vbloom_arr: bits over the verified sources
IPV6_EXT_MAX = 6

# ---- TCP state validation (tcpstate.h) ----
FLOW_EST, FLOW_FIN, FLOW_RST, FLOW_SYN = 1, 2, 3, 4
TS_EST_TIMEOUT_S, TS_FIN_TIMEOUT_S, TS_RST_TIMEOUT_S, TS_SYN_TIMEOUT_S = 10800, 120, 10, 20

PROT_PORT_POLICY = 1 << 0  # xg_protected.flags: only open TCP/UDP ports are reachable

# xg_port_value.flags: the owner bits are ours (the data path tests whether any is set: open),
# who opened the port; PORT_SLOT and PORT_LIMITS describe the service record (abi.h).
PORT_BY_OPERATOR = 1 << 0  # `xdpguard port open`
PORT_BY_FORWARD = 1 << 1  # a forwarding rule
PORT_BY_HTTP = 1 << 2  # an HTTP service served by HAProxy on the protective IP (l7/)
PORT_SLOT = 1 << 62  # xg_port_value.slot is valid: the record's limits and bucket in xg_svc_arr
PORT_LIMITS = 1 << 63  # xg_svc_arr[slot].lim overrides the address's limits
PORT_OWNERS = PORT_SLOT - 1  # bits 0..61: open when any is set


def stats_slot(kind: Kind, reason: Reason) -> int:
    return int(kind) * REASON_MAX + int(reason)


class Counter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class Config(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("monitor_mask", ctypes.c_uint64),
        ("lists_mask", ctypes.c_uint64),
        ("filters_count", ctypes.c_uint32),
        ("abi_version", ctypes.c_uint32),
    ]


class Limits(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint64)
        for n in (
            "src_pps",
            "src_burst_pkts",
            "src_bps",
            "src_burst_bytes",
            "dst_pps",
            "dst_burst_pkts",
            "syn_src_pps",
            "syn_src_burst",
        )
    ] + [("ban_s", ctypes.c_uint32), ("unknown_share_pct", ctypes.c_uint32)]


class SynPolicy(ctypes.Structure):
    _fields_ = [
        ("syn_threshold_pps", ctypes.c_uint64),
        ("auth_min_ms", ctypes.c_uint32),
        ("auth_max_ms", ctypes.c_uint32),
        ("auth_keep_s", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
    ]


class Protected(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("lim", Limits), ("syn", SynPolicy)]


class SrcKey(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 16), ("family", ctypes.c_uint32)]


class Bucket(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("last_ns", "pkt_tokens", "byte_tokens", "syn_last_ns", "syn_tokens")]


class DstBucket(ctypes.Structure):
    _fields_ = [("last_ns", ctypes.c_uint64), ("pkt_tokens", ctypes.c_uint64)]


class Ban(ctypes.Structure):
    _fields_ = [
        ("expires_ns", ctypes.c_uint64),
        ("hits", ctypes.c_uint64),
        ("reason", ctypes.c_uint32),
        ("verified_hits", ctypes.c_uint32),
    ]


class SynWin(ctypes.Structure):
    _fields_ = [("window_start_ns", ctypes.c_uint64), ("count", ctypes.c_uint64), ("defend_until_ns", ctypes.c_uint64)]


class SynSeen(ctypes.Structure):
    _fields_ = [
        ("first_ns", ctypes.c_uint64),
        ("seq", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("reserved", ctypes.c_uint16),
    ]


class SynAuth(ctypes.Structure):
    _fields_ = [("until_ns", ctypes.c_uint64), ("syns_left", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class DpState(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64)]


class SrcSketch(ctypes.Structure):
    _fields_ = [
        ("epoch", ctypes.c_uint32),
        ("hot_until", ctypes.c_uint32),
        ("pkts", ctypes.c_uint32 * 2),
        ("bytes", ctypes.c_uint32 * 2),
        ("syns", ctypes.c_uint32 * 2),
    ]


class Filter(ctypes.Structure):
    _fields_ = (
        [
            (n, ctypes.c_uint8)
            for n in (
                "proto",
                "action",
                "tcp_flags_mask",
                "tcp_flags_value",
                "ttl_min",
                "ttl_max",
                "payload_len",
                "payload_base",
            )
        ]
        + [
            (n, ctypes.c_uint16)
            for n in ("sport_min", "sport_max", "dport_min", "dport_max", "len_min", "len_max", "payload_off", "ban_s")
        ]
        + [("payload", ctypes.c_uint8 * 16), ("payload_mask", ctypes.c_uint8 * 16)]
    )


class FHead(ctypes.Structure):
    _fields_ = [
        ("live", ctypes.c_uint64),
        ("payload", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class PHead(ctypes.Structure):
    _fields_ = [
        ("indexed", ctypes.c_uint64),
        ("npos", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("pos", ctypes.c_uint16 * PPOS_MAX),
    ]


class FSel(ctypes.Structure):
    _fields_ = [("gen", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class Addr6(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 16)]


class Lpm4Key(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 4)]


class Lpm6Key(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


class ListEntry(ctypes.Structure):
    _fields_ = [
        ("hits", ctypes.c_uint64),
        ("expires_ns", ctypes.c_uint64),
        ("prefixlen", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class PortKey(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint8 * 16),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
    ]


class PortValue(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("slot", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class Svc(ctypes.Structure):
    """xg_svc_arr value: a service record's limits and destination bucket (abi.h xg_svc)."""

    _fields_ = [("lim", Limits), ("bkt", DstBucket)]


class FlowKey(ctypes.Structure):
    _fields_ = [
        ("client", ctypes.c_uint8 * 16),
        ("prot", ctypes.c_uint8 * 16),
        ("client_port", ctypes.c_uint16),
        ("prot_port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8 * 3),
    ]


class Flow(ctypes.Structure):
    _fields_ = [("expires_ns", ctypes.c_uint64), ("state", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class TcpStateConfig(ctypes.Structure):
    _fields_ = [("grace_until_ns", ctypes.c_uint64)] + [
        (n, ctypes.c_uint32) for n in ("est_timeout_s", "fin_timeout_s", "rst_timeout_s", "syn_timeout_s")
    ]


class CookieStats(ctypes.Structure):
    """xg_cookie_pcpu value (per CPU): the SYN cookie answers and ACK checks behind reason 14."""

    _fields_ = [(n, ctypes.c_uint64) for n in ("synack_sent", "ack_valid", "ack_bad", "failed")]


class GoodSrc(ctypes.Structure):
    """xg_goodsrc_hash value: a verified source, learned on tc egress (knowngood.h)."""

    _fields_ = [
        ("expires_ns", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("last_ns", ctypes.c_uint64),
        ("tokens", ctypes.c_uint64),
    ]


class VerifyConfig(ctypes.Structure):
    """xg_vcfg_arr[0]: verified-client budgets, UDP peacetime, the spoofable-ban cap (0 = default)."""

    _fields_ = [
        ("tcp_pps", ctypes.c_uint64),
        ("tcp_burst", ctypes.c_uint64),
        ("udp_pps", ctypes.c_uint64),
        ("udp_burst", ctypes.c_uint64),
        ("udp_peace_pps", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("spoof_ban_s", ctypes.c_uint32),
        ("budget_udp_pps", ctypes.c_uint32),
        ("budget_tcp_syns", ctypes.c_uint32),  # appended: an upgrade copies the map, the new field 0 (default)
        ("reserved", ctypes.c_uint32),
    ]


class Budget(ctypes.Structure):
    """xg_budget_hash / xg_budaddr_arr value: one service's admission budget (budget.h)."""

    _fields_ = [(n, ctypes.c_uint64) for n in ("last_ns", "tokens", "rate", "admitted", "dropped", "verified")]


class VDrop(ctypes.Structure):
    """xg_vdrop_pcpu value, per CPU: packets of verified sources dropped / exempted at one slot."""

    _fields_ = [("dropped", ctypes.c_uint64), ("exempted", ctypes.c_uint64)]


def vdrop_slots(filters_max: int = FILTERS_MAX, reason_max: int = REASON_MAX) -> int:
    """XG_VDROP_SLOTS: one per filter index, then one per reason."""
    return filters_max + reason_max


class MapName(str, enum.Enum):
    """Kernel names of the maps (≤ 15 chars); also the file names of their pins."""

    CONFIG = "xg_config_arr"
    STATS = "xg_stats_pcpu"
    PROT4 = "xg_prot4_hash"
    PROT6 = "xg_prot6_hash"
    PORTS = "xg_ports_hash"
    ALLOW4H = "xg_allow4_hash"
    ALLOW6H = "xg_allow6_hash"
    BLOCK4H = "xg_block4_hash"
    BLOCK6H = "xg_block6_hash"
    ALLOW4 = "xg_allow4_lpm"
    ALLOW6 = "xg_allow6_lpm"
    BLOCK4 = "xg_block4_lpm"
    BLOCK6 = "xg_block6_lpm"
    PORTLIM = "xg_portlim_hash"
    SVC = "xg_svc_arr"  # service records' limits and destination buckets, by xg_port_value.slot
    BUCKETS = "xg_bucket_lru"
    DSTBKT = "xg_dstbkt_hash"  # per-service buckets (open ports, ports with limits)
    DSTADDR = "xg_dstaddr_arr"  # per-address bucket (other ports; a full DSTBKT), by address slot
    BANS = "xg_ban_lru"
    OPBANS = "xg_opban_hash"  # operator bans (`ban add`): a plain hash, never evicted
    DPSTATE = "xg_dpstate_arr"
    REFLECT = "xg_reflect_arr"
    FILTERS = "xg_filters_arr"
    FSEL = "xg_fsel_arr"  # the compiled filters (bit vectors), two generations
    FHEAD = "xg_fhead_arr"
    FVEC = "xg_fvec_arr"
    FDEF = "xg_fdef_arr"
    PHEAD = "xg_phead_arr"  # the payload index (abi.h XG_PV_*), two generations
    PVEC = "xg_pvec_arr"
    BANBLOOM = "xg_banbloom_arr"  # bits over the banned sources: a clear bit skips the ban lookups
    SRCSKETCH = "xg_srcsk_arr"  # uncharged packets per source hash: sources far from a limit get no bucket
    LPF = "xg_lpf_arr"  # the lists' prefilter: bits per (list, family) over /16s and /48s (abi.h XG_LPF_*)
    SYNWIN = "xg_synwin_arr"
    SYNSEEN = "xg_synseen_lru"
    SYNAUTH = "xg_synauth_lru"  # retransmission-authenticated sources (soft)
    FLOWS = "xg_flow_lru"  # tcpstate.h
    EMBRYOS = "xg_embryo_lru"
    TCPCFG = "xg_tcpcfg_arr"
    COOKIES = "xg_cookie_pcpu"  # syncookie.h
    GOODSRC = "xg_goodsrc_hash"  # verified sources (knowngood.h)
    VCFG = "xg_vcfg_arr"
    GOODBLOOM = "xg_vbloom_arr"  # bits over the verified sources: a clear bit skips the lookup
    UDPWIN = "xg_udpwin_pcpu"  # UDP packets/s per address slot and CPU: peacetime for UDP learning
    UDPFLOOD = "xg_udpflood_arr"  # per address slot: under a UDP flood until (ns)
    VDROP = "xg_vdrop_pcpu"  # do-no-harm counters (policy.read_verified_drops)
    BUDGET = "xg_budget_hash"  # budget.h: admission budget per UDP service (unverified sources)
    BUDGETADDR = "xg_budaddr_arr"  # ... per address slot, for the ports of a full BUDGET
    GEO4 = "xg_geo4_lpm"  # geo.h: source prefix → country index
    GEO6 = "xg_geo6_lpm"
    GEOSET = "xg_geoset_arr"  # protected address slot → the countries its geo rule names
    WM = "xg_wm_hash"  # watermark.h: (address, UDP, port) → keys and parameters of a watermarked service
    WMCNT = "xg_wm_pcpu"  # watermark.h: WM_CNT_* → per-CPU packets
    SAMPLE_CFG = "xg_sample_cfg"  # sample.h
    SAMPLE_STATE = "xg_sample_pcpu"
    SAMPLES = "xg_samples"  # ring buffer: no key, no value (BpfMap sees sizes 0/0)


# ---- the forwarding fast path (bpf/include/steps/fastfwd.h; only with -D XG_FWD_FAST=1) ----
# Its maps and its second XDP program exist only in a program compiled with the flag, so they
# are not MapName members (every attach would look for them): guard.py opens them by these names.
FWD_DEFINE = "XG_FWD_FAST"
FWD_HEADER = BPF_DIR / "include" / "steps" / "fastfwd.h"
FWD_RETURN_FUNC = "xdpguard_fwd_return"  # XDP on the backend-side interface
FWD_IN_FUNC = "xdpguard_fwd_in"  # tail-called by the main program for a clean packet
FWD_PROG_ARRAY = "xg_fwd_prog"  # the tail call's program array: slot 0 → FWD_IN_FUNC
FWD_COUNTERS = ("in", "out", "end", "fib")  # XG_FWD_CNT_* in order


class FastFwdMap(str, enum.Enum):
    FLOWS = "xg_fwd_lru"  # 5-tuple → translation, two entries per flow
    COUNTERS = "xg_fwd_pcpu"  # XG_FWD_CNT_* → per-CPU packets and bytes
    RULES = "xg_fwd_rule"  # rule id → per-CPU packets and bytes of the rule's fast packets


class FwdKey(ctypes.Structure):
    """struct xg_fwd_key: addresses as their raw bytes, ports in network order (htons)."""

    _fields_ = [
        ("saddr", ctypes.c_uint8 * 4),
        ("daddr", ctypes.c_uint8 * 4),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class Fwd(ctypes.Structure):
    """struct xg_fwd: what a packet with the key becomes, the entry's direction, and when the
    data path last (to the second) sent one of its packets."""

    _fields_ = [
        ("saddr", ctypes.c_uint8 * 4),
        ("daddr", ctypes.c_uint8 * 4),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("dir", ctypes.c_uint32),
        ("seen_ns", ctypes.c_uint64),  # bpf_ktime_get_ns (CLOCK_MONOTONIC) of a recent fast packet
        ("rule_id", ctypes.c_uint32),  # model.fastfwd.rule_id of the flow's forwarding rule; 0: none
        ("pad", ctypes.c_uint32),
    ]


class FwdCounter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


FWD_LAYOUTS: dict[FastFwdMap, tuple[type, type, bool]] = {
    FastFwdMap.FLOWS: (FwdKey, Fwd, False),
    FastFwdMap.COUNTERS: (ctypes.c_uint32, FwdCounter, True),
    FastFwdMap.RULES: (ctypes.c_uint32, FwdCounter, True),
}


# Map name → (key type, value type, per-CPU). Key u32 maps use c_uint32 (array index, or a
# v4 address in network byte order, stored as its 4 raw bytes).
class Addr4(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 4)]


MAP_LAYOUTS: dict[MapName, tuple[type, type, bool]] = {
    MapName.CONFIG: (ctypes.c_uint32, Config, False),
    MapName.STATS: (ctypes.c_uint32, Counter, True),
    MapName.PROT4: (Addr4, Protected, False),
    MapName.PROT6: (Addr6, Protected, False),
    MapName.PORTS: (PortKey, PortValue, False),
    MapName.ALLOW4H: (Addr4, ListEntry, False),
    MapName.ALLOW6H: (Addr6, ListEntry, False),
    MapName.BLOCK4H: (Addr4, ListEntry, False),
    MapName.BLOCK6H: (Addr6, ListEntry, False),
    MapName.ALLOW4: (Lpm4Key, ListEntry, False),
    MapName.ALLOW6: (Lpm6Key, ListEntry, False),
    MapName.BLOCK4: (Lpm4Key, ListEntry, False),
    MapName.BLOCK6: (Lpm6Key, ListEntry, False),
    MapName.PORTLIM: (PortKey, Limits, False),
    MapName.SVC: (ctypes.c_uint32, Svc, False),
    MapName.BUCKETS: (SrcKey, Bucket, False),
    MapName.DSTBKT: (PortKey, DstBucket, False),
    MapName.DSTADDR: (ctypes.c_uint32, DstBucket, False),
    MapName.BANS: (SrcKey, Ban, False),
    MapName.OPBANS: (SrcKey, Ban, False),
    MapName.DPSTATE: (ctypes.c_uint32, DpState, False),
    MapName.REFLECT: (ctypes.c_uint32, ctypes.c_uint8, False),
    MapName.FILTERS: (ctypes.c_uint32, Filter, False),
    MapName.FSEL: (ctypes.c_uint32, FSel, False),
    MapName.FHEAD: (ctypes.c_uint32, FHead, False),
    MapName.FVEC: (ctypes.c_uint32, ctypes.c_uint64, False),
    MapName.FDEF: (ctypes.c_uint32, Filter, False),
    MapName.PHEAD: (ctypes.c_uint32, PHead, False),
    MapName.PVEC: (ctypes.c_uint32, ctypes.c_uint64, False),
    MapName.BANBLOOM: (ctypes.c_uint32, ctypes.c_uint64, False),
    MapName.SRCSKETCH: (ctypes.c_uint32, SrcSketch, False),
    MapName.LPF: (ctypes.c_uint32, ctypes.c_uint64, False),
    MapName.SYNWIN: (ctypes.c_uint32, SynWin, False),
    MapName.SYNSEEN: (SrcKey, SynSeen, False),
    MapName.SYNAUTH: (SrcKey, SynAuth, False),
    MapName.FLOWS: (FlowKey, Flow, False),
    MapName.EMBRYOS: (FlowKey, Flow, False),
    MapName.TCPCFG: (ctypes.c_uint32, TcpStateConfig, False),
    MapName.COOKIES: (ctypes.c_uint32, CookieStats, True),
    MapName.GOODSRC: (SrcKey, GoodSrc, False),
    MapName.VCFG: (ctypes.c_uint32, VerifyConfig, False),
    MapName.GOODBLOOM: (ctypes.c_uint32, ctypes.c_uint64, False),
    MapName.UDPWIN: (ctypes.c_uint32, SynWin, True),
    MapName.UDPFLOOD: (ctypes.c_uint32, ctypes.c_uint64, False),
    MapName.VDROP: (ctypes.c_uint32, VDrop, True),
    MapName.BUDGET: (PortKey, Budget, False),
    MapName.BUDGETADDR: (ctypes.c_uint32, Budget, False),
    MapName.SAMPLE_CFG: (ctypes.c_uint32, "SampleConfig", False),
    MapName.SAMPLE_STATE: (ctypes.c_uint32, "SampleState", True),
    MapName.SAMPLES: ("NoData", "NoData", False),
}

# Map name → (kernel map type, max_entries, map flags) as maps.h declares them. max_entries is
# an int or the name of the abi.h macro that sets it (those are -D overridable at compile time;
# "XG_STATS_SLOTS" is XG_KIND_MAX * XG_REASON_MAX). With MAP_LAYOUTS it is a map's whole shape,
# which an upgrade compares with the pinned maps of the program it replaces (migrate.py);
# tests/bpf/test_migrate.py checks it against a compiled program.
MAP_TYPES = {"hash": 1, "array": 2, "percpu_array": 6, "lru_hash": 9, "lpm_trie": 11, "ringbuf": 27}
F_NO_PREALLOC, F_NO_COMMON_LRU = 1 << 0, 1 << 1
MAP_SHAPES: dict[MapName, tuple[str, int | str, int]] = {
    MapName.CONFIG: ("array", 1, 0),
    MapName.STATS: ("percpu_array", "XG_STATS_SLOTS", 0),
    MapName.PROT4: ("hash", "XG_PROTECTED_MAX", 0),
    MapName.PROT6: ("hash", "XG_PROTECTED_MAX", 0),
    MapName.PORTS: ("hash", "XG_PORTS_MAX", 0),
    MapName.ALLOW4H: ("hash", "XG_LIST_MAX", F_NO_PREALLOC),
    MapName.ALLOW6H: ("hash", "XG_LIST_MAX", F_NO_PREALLOC),
    MapName.BLOCK4H: ("hash", "XG_LIST_MAX", F_NO_PREALLOC),
    MapName.BLOCK6H: ("hash", "XG_LIST_MAX", F_NO_PREALLOC),
    MapName.ALLOW4: ("lpm_trie", "XG_LIST_MAX", F_NO_PREALLOC),
    MapName.ALLOW6: ("lpm_trie", "XG_LIST_MAX", F_NO_PREALLOC),
    MapName.BLOCK4: ("lpm_trie", "XG_LIST_MAX", F_NO_PREALLOC),
    MapName.BLOCK6: ("lpm_trie", "XG_LIST_MAX", F_NO_PREALLOC),
    MapName.PORTLIM: ("hash", "XG_PORTS_MAX", 0),
    MapName.SVC: ("array", "XG_PORTS_MAX", 0),
    MapName.BUCKETS: ("lru_hash", "XG_SOURCES_MAX", F_NO_COMMON_LRU),
    MapName.DSTBKT: ("hash", "XG_PORTS_MAX", 0),
    MapName.DSTADDR: ("array", "XG_PROTECTED_MAX", 0),
    MapName.BANS: ("lru_hash", "XG_BANS_MAX", 0),
    MapName.OPBANS: ("hash", "XG_OPBANS_MAX", F_NO_PREALLOC),
    MapName.DPSTATE: ("array", 1, 0),
    MapName.REFLECT: ("array", 65536, 0),
    MapName.FILTERS: ("array", "XG_FILTERS_MAX", 0),
    MapName.SYNWIN: ("array", "XG_PROTECTED_MAX", 0),
    MapName.SYNSEEN: ("lru_hash", "XG_SOURCES_MAX", 0),
    MapName.SYNAUTH: ("lru_hash", "XG_SYNAUTH_MAX", F_NO_COMMON_LRU),
    MapName.FLOWS: ("lru_hash", "XG_FLOWS_MAX", F_NO_COMMON_LRU),
    MapName.EMBRYOS: ("lru_hash", "XG_EMBRYOS_MAX", F_NO_COMMON_LRU),
    MapName.TCPCFG: ("array", 1, 0),
    MapName.SAMPLE_CFG: ("array", 1, 0),
    MapName.SAMPLE_STATE: ("percpu_array", 1, 0),
    MapName.SAMPLES: ("ringbuf", "XG_SAMPLE_RING_BYTES", 0),
    MapName.FSEL: ("array", 1, 0),
    MapName.FHEAD: ("array", "XG_FGENS", 0),
    MapName.FVEC: ("array", "XG_FVEC_ENTRIES", 0),
    MapName.FDEF: ("array", "XG_FDEF_ENTRIES", 0),
    MapName.PHEAD: ("array", "XG_FGENS", 0),
    MapName.PVEC: ("array", "XG_PVEC_ENTRIES", 0),
    MapName.BANBLOOM: ("array", BANBLOOM_BITS // 64, 0),
    MapName.SRCSKETCH: ("array", "XG_SK_SLOTS", 0),
    MapName.LPF: ("array", 4 * LPF_WORDS, 0),
    MapName.COOKIES: ("percpu_array", 1, 0),
    MapName.GOODSRC: ("hash", "XG_GOODSRC_MAX", F_NO_PREALLOC),
    MapName.VCFG: ("array", 1, 0),
    MapName.GOODBLOOM: ("array", GOODBLOOM_BITS // 64, 0),
    MapName.UDPWIN: ("percpu_array", "XG_PROTECTED_MAX", 0),
    MapName.UDPFLOOD: ("array", "XG_PROTECTED_MAX", 0),
    MapName.VDROP: ("percpu_array", "XG_VDROP_SLOTS", 0),
    MapName.BUDGET: ("hash", "XG_BUDGET_MAX", 0),
    MapName.BUDGETADDR: ("array", "XG_PROTECTED_MAX", 0),
}
# Default of every size macro MAP_SHAPES names (abi.h's #ifndef defaults).
MAP_SIZE_DEFAULTS: dict[str, int] = {
    "XG_PROTECTED_MAX": PROTECTED_MAX,
    "XG_LIST_MAX": LIST_MAX,
    "XG_PORTS_MAX": PORTS_MAX,
    "XG_SOURCES_MAX": SOURCES_MAX,
    "XG_BANS_MAX": BANS_MAX,
    "XG_OPBANS_MAX": OPBANS_MAX,
    "XG_FILTERS_MAX": FILTERS_MAX,
    "XG_SYNAUTH_MAX": SYNAUTH_MAX,
    "XG_FLOWS_MAX": FLOWS_MAX,
    "XG_EMBRYOS_MAX": EMBRYOS_MAX,
    "XG_REASON_MAX": REASON_MAX,
    "XG_GOODSRC_MAX": GOODSRC_MAX,
    "XG_SK_SLOTS": SK_SLOTS,
    "XG_BUDGET_MAX": BUDGET_MAX,
}


def map_sizes(defines: Mapping[str, int] | None = None) -> dict[str, int]:
    """The size macros as a compile with these -D defines sees them."""
    d = {k: int((defines or {}).get(k, v)) for k, v in MAP_SIZE_DEFAULTS.items()}
    d["XG_STATS_SLOTS"] = KIND_MAX * d["XG_REASON_MAX"]
    d["XG_VDROP_SLOTS"] = d["XG_FILTERS_MAX"] + d["XG_REASON_MAX"]
    d["XG_SAMPLE_RING_BYTES"] = SAMPLE_RING_PAGES * 4096
    d["XG_FGENS"] = FGENS
    d["XG_FVEC_ENTRIES"] = FGENS * FV_SLOTS
    d["XG_FDEF_ENTRIES"] = FGENS * d["XG_FILTERS_MAX"]
    d["XG_PVEC_ENTRIES"] = FGENS * PV_SLOTS
    return d


# xg_config.lists_mask bit of each list map (XG_LM_* in abi.h).
LISTS_MASK_BITS: dict[MapName, int] = {
    MapName.ALLOW4H: 1 << 0,
    MapName.ALLOW4: 1 << 1,
    MapName.ALLOW6H: 1 << 2,
    MapName.ALLOW6: 1 << 3,
    MapName.BLOCK4H: 1 << 4,
    MapName.BLOCK4: 1 << 5,
    MapName.BLOCK6H: 1 << 6,
    MapName.BLOCK6: 1 << 7,
}

# C struct name in abi.h → ctypes mirror, for the sync test.
C_STRUCTS: dict[str, type] = {
    "xg_counter": Counter,
    "xg_config": Config,
    "xg_protected": Protected,
    "xg_addr6": Addr6,
    "xg_lpm4_key": Lpm4Key,
    "xg_lpm6_key": Lpm6Key,
    "xg_list_entry": ListEntry,
    "xg_port_key": PortKey,
    "xg_port_value": PortValue,
    "xg_svc": Svc,
    "xg_limits": Limits,
    "xg_syn_policy": SynPolicy,
    "xg_src_key": SrcKey,
    "xg_bucket": Bucket,
    "xg_dst_bucket": DstBucket,
    "xg_ban": Ban,
    "xg_synwin": SynWin,
    "xg_synseen": SynSeen,
    "xg_synauth": SynAuth,
    "xg_dpstate": DpState,
    "xg_srcsk": SrcSketch,
    "xg_filter": Filter,
    "xg_fhead": FHead,
    "xg_fsel": FSel,
    "xg_phead": PHead,
    "xg_flow_key": FlowKey,
    "xg_flow": Flow,
    "xg_tcpstate_config": TcpStateConfig,
    "xg_cookie_stats": CookieStats,
    "xg_goodsrc": GoodSrc,
    "xg_verify_config": VerifyConfig,
    "xg_vdrop": VDrop,
    "xg_budget": Budget,
}


# ---- region (geo) blocking (geo.h; abi.h XG_GEO_*) ----

GEO_CODES = 1296
GEO_WORDS = 32
GEO_MAX = 2097152
GEO_ONLY = 1 << 0
GEO_CC = 1 << 1


class GeoSet(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("bits", ctypes.c_uint64 * GEO_WORDS)]


MAP_LAYOUTS[MapName.GEO4] = (Lpm4Key, ctypes.c_uint32, False)
MAP_LAYOUTS[MapName.GEO6] = (Lpm6Key, ctypes.c_uint32, False)
MAP_LAYOUTS[MapName.GEOSET] = (ctypes.c_uint32, GeoSet, False)
MAP_SHAPES[MapName.GEO4] = ("lpm_trie", "XG_GEO_MAX", F_NO_PREALLOC)
MAP_SHAPES[MapName.GEO6] = ("lpm_trie", "XG_GEO_MAX", F_NO_PREALLOC)
MAP_SHAPES[MapName.GEOSET] = ("array", "XG_PROTECTED_MAX", 0)
MAP_SIZE_DEFAULTS["XG_GEO_MAX"] = GEO_MAX
C_STRUCTS["xg_geoset"] = GeoSet


# ---- UDP watermark (watermark.h; abi.h XG_WM_*) ----

WM_TAG_LEN = 12
WM_WINDOW_MAX = 64
WM_MAX = 4096
WM_CNT_PASS = 0
WM_CNT_PASS_OLD = 1
WM_CNT_SHORT = 2
WM_CNT_STALE = 3
WM_CNT_BAD = 4
WM_CNT_MAX = 8


class Wm(ctypes.Structure):
    _fields_ = [
        ("k0", ctypes.c_uint64),
        ("k1", ctypes.c_uint64),
        ("pk0", ctypes.c_uint64),
        ("pk1", ctypes.c_uint64),
        ("prev_until_s", ctypes.c_uint64),
        ("clock_off_ns", ctypes.c_uint64),
        ("step_s", ctypes.c_uint32),
        ("window", ctypes.c_uint32),
        ("skew", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


MAP_LAYOUTS[MapName.WM] = (PortKey, Wm, False)
MAP_LAYOUTS[MapName.WMCNT] = (ctypes.c_uint32, ctypes.c_uint64, True)
MAP_SHAPES[MapName.WM] = ("hash", "XG_WM_MAX", 0)
MAP_SHAPES[MapName.WMCNT] = ("percpu_array", "XG_WM_CNT_MAX", 0)
MAP_SIZE_DEFAULTS["XG_WM_MAX"] = WM_MAX
MAP_SIZE_DEFAULTS["XG_WM_CNT_MAX"] = WM_CNT_MAX
C_STRUCTS["xg_wm"] = Wm


# ---- sampling (sample.h; the block at the end of abi.h) ----

SAMPLE_SNAPLEN = 128
SAMPLE_RING_PAGES = 128


class SampleConfig(ctypes.Structure):
    _fields_ = [("sample_every", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class SampleState(ctypes.Structure):
    _fields_ = [("countdown", ctypes.c_uint64), ("taken", ctypes.c_uint64), ("lost", ctypes.c_uint64)]


class Sample(ctypes.Structure):
    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("sample_every", ctypes.c_uint32),
        ("pkt_len", ctypes.c_uint32),
        ("cap_len", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("src", ctypes.c_uint8 * 16),
        ("dst", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("kind", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("data", ctypes.c_uint8 * SAMPLE_SNAPLEN),
    ]


class NoData(ctypes.Structure):
    """Key and value of a ring buffer map: none (size 0)."""

    _fields_ = []


C_STRUCTS.update({"xg_sample_config": SampleConfig, "xg_sample_state": SampleState, "xg_sample": Sample})
for _name, (_k, _v, _pc) in list(MAP_LAYOUTS.items()):  # resolve the forward references above
    MAP_LAYOUTS[_name] = (
        globals()[_k] if isinstance(_k, str) else _k,
        globals()[_v] if isinstance(_v, str) else _v,
        _pc,
    )
