"""Python mirror of bpf/include/abi.h: reasons, verdict kinds, map names and layouts.

tests/unit/test_abi_sync.py parses the C header and fails when the two drift apart.
"""

from __future__ import annotations

import ctypes
import enum
from pathlib import Path

ABI_VERSION = 1

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
ABI_HEADER = BPF_DIR / "include" / "abi.h"
PROGRAM_SOURCE = BPF_DIR / "xdpguard.bpf.c"
PROGRAM_FUNC = "xdpguard_main"


class Reason(enum.IntEnum):
    BYPASS = 0
    CLEAN = 1
    ALLOWLIST = 2
    BLOCKLIST = 3
    BANNED = 4
    MALFORMED = 5
    FRAGMENT = 6
    PROTOCOL = 7
    PORT = 8
    REFLECTION = 9
    FEATURE = 10
    RATELIMIT = 11
    SYN = 12

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def is_drop(self) -> bool:
        return self >= Reason.BLOCKLIST


REASON_MAX = 16


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

PROTECTED_MAX = 1024
LIST_MAX = 2097152
PORTS_MAX = 262144

PROT_PORT_POLICY = 1 << 0  # xg_protected.flags: only open TCP/UDP ports are reachable

# xg_port_value.flags bits are ours (the data path only tests presence): who opened the port.
PORT_BY_OPERATOR = 1 << 0  # `xdpguard port open`
PORT_BY_FORWARD = 1 << 1  # a forwarding rule


def stats_slot(kind: Kind, reason: Reason) -> int:
    return int(kind) * REASON_MAX + int(reason)


class Counter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class Config(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("monitor_mask", ctypes.c_uint64), ("lists_mask", ctypes.c_uint64)]


class Protected(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64)]


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
    _fields_ = [("flags", ctypes.c_uint64)]


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
}

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
}
