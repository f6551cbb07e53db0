"""TCP state validation: the tc egress recorder's lifecycle and the step's switches.

`attach` calls `start` once the XDP program is attached: the recorder (xdpguard_egress, loaded
by the same compile, sharing the maps) goes onto the interface's clsact egress hook, the grace
period starts, and XG_CFG_TCPSTATE tells XDP that connections are being recorded. Until then —
and whenever the recorder cannot be attached — XDP does not validate TCP state (a table nobody
fills would drop every established connection). `detach` calls `stop`.

Per protected address the step is on while the address's port policy is (it has open ports or
forwards), unless XG_PROT_TCPSTATE_OFF is set (`set_address`).
"""

from __future__ import annotations

import ctypes
import time

from . import dataplane, libbpf
from .abi import CFG_TCPSTATE, PROT_TCPSTATE_OFF, MapName, TcpStateConfig
from .errors import UserError
from .policy import prot_key

# Connections older than the attach are unknown to the table; their packets pass for this long
# (the protected side's first packet in that time records them for good).
GRACE_S = 10


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # bpf_ktime_get_ns's clock


def start(ifindex: int, egress_fd: int, maps, grace_s: float = GRACE_S) -> list[str]:
    """Attach the recorder and switch the step on; returns notes (never raises for tc trouble:
    the step then stays off and the note says why)."""
    try:
        cur = dataplane.tc_query(ifindex)
        if cur is not None and not dataplane.tc_is_ours(cur):
            return [f"TCP state validation off: a foreign tc egress filter (prog id {cur.prog_id}) uses our handle"]
        dataplane.tc_attach(ifindex, egress_fd, replace=cur is not None)
    except libbpf.BpfError as exc:
        return [f"TCP state validation off: cannot attach the tc egress recorder ({exc.strerror})"]
    maps[MapName.TCPCFG].set(ctypes.c_uint32(0), TcpStateConfig(_now_ns() + int(grace_s * 1e9), 0, 0, 0, 0))
    cfg = maps[MapName.CONFIG].get(ctypes.c_uint32(0))
    cfg.flags |= CFG_TCPSTATE
    maps[MapName.CONFIG].set(ctypes.c_uint32(0), cfg)
    return []


def stop(ifindex: int) -> list[str]:
    """Remove our recorder from the egress hook (if it is there); returns notes."""
    try:
        if dataplane.tc_is_ours(dataplane.tc_query(ifindex)):
            dataplane.tc_detach(ifindex)
    except libbpf.BpfError as exc:
        return [f"could not remove the tc egress recorder: {exc.strerror}"]
    return []


def set_address(maps, addr, on: bool) -> None:
    """Switch the step for one protected address (it applies while its port policy is on)."""
    pm = maps[MapName.PROT4 if addr.version == 4 else MapName.PROT6]
    cur = pm.get(prot_key(addr))
    if cur is None:
        raise UserError(f"{addr} is not a protected address")
    cur.flags = (cur.flags & ~PROT_TCPSTATE_OFF) | (0 if on else PROT_TCPSTATE_OFF)
    pm.set(prot_key(addr), cur)
