"""TCP state validation: the tc egress recorder's lifecycle and the step's switches.

`attach` calls `start` once the XDP program is attached: the recorder (xdpguard_egress, loaded
by the same compile, sharing the maps) goes onto the interface's clsact egress hook, the
connections that already exist are seeded into the table (established local sockets from
/proc/net/tcp{,6}, assured established conntrack entries from /proc/net/nf_conntrack: both
completed a handshake, so a spoofed flood cannot have made them), a short grace period starts
for anything the seed missed, and XG_CFG_TCPSTATE tells XDP that connections are being recorded. Until then —
and whenever the recorder cannot be attached — XDP does not validate TCP state (a table nobody
fills would drop every established connection). `detach` calls `stop`.

Per protected address the step is on while the address's port policy is (it has open ports or
forwards), unless XG_PROT_TCPSTATE_OFF is set (Guard.set_tcpstate_address). The switches and the
connection table are guard.py's; this module runs the recorder and finds what to seed.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import time
from pathlib import Path

from .kernel import dataplane, libbpf
from . import guard, state
from .model import vocab
from .kernel.abi import TS_EST_TIMEOUT_S, FlowKey

# Connections older than the attach are unknown to the table; their packets pass for this long
# (the protected side's first packet in that time records them for good). $XDPGUARD_TCP_GRACE
# sets it (seconds, 0 to 3600): longer for a host whose idle connections the seed may miss,
# shorter where nothing predates the attach (the test labs wait it out).
GRACE_S = 10.0
GRACE_ENV = "XDPGUARD_TCP_GRACE"


def attach_grace_s() -> float:
    """$XDPGUARD_TCP_GRACE (seconds, 0..3600), else GRACE_S; a bad value is a one-line error."""
    text = os.environ.get("XDPGUARD_TCP_GRACE")
    if text is None or not text.strip():
        return GRACE_S
    return vocab.parse_seconds(text, GRACE_ENV, 0, 3600)


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
    notes = []
    seeded = seed(maps, existing_connections(set(guard.protected_addresses(maps))))
    if seeded:
        notes.append(f"TCP state: recorded {seeded} existing connection(s)")
    guard.set_tcpstate(maps, True, _now_ns() + int(grace_s * 1e9))
    return notes


def swap(ifindex: int, egress_fd: int, maps) -> list[str]:
    """For an upgrade: the new recorder replaces ours in place (one tc call). The connection
    table and the grace deadline are the shared maps' and stay as they are: no grace window opens
    in the middle of an attack. When ours was not attached, this is a start."""
    try:
        cur = dataplane.tc_query(ifindex)
        if cur is not None and dataplane.tc_is_ours(cur):
            dataplane.tc_attach(ifindex, egress_fd, replace=True)
            return []
    except libbpf.BpfError as exc:
        return [f"the tc egress recorder was not replaced ({exc.strerror}); the old one stays"]
    return start(ifindex, egress_fd, maps)


def stop(ifindex: int) -> list[str]:
    """Remove our recorder from the egress hook (if it is there); returns notes."""
    try:
        if dataplane.tc_is_ours(dataplane.tc_query(ifindex)):
            dataplane.tc_detach(ifindex)
    except libbpf.BpfError as exc:
        return [f"could not remove the tc egress recorder: {exc.strerror}"]
    return []


def repair(iface: state.Iface) -> str | None:
    """For `xdpguard run`'s drift checks: put the recorder back from its pin when something
    removed it (without it new connections' handshakes are no longer recorded, and XDP would drop
    their ACKs). Returns a report line when it repaired something."""
    try:
        cur = dataplane.tc_query(iface.index)
        if cur is not None:  # ours: nothing to do; foreign at our handle: not ours to replace
            return (
                None
                if dataplane.tc_is_ours(cur)
                else f"a foreign tc egress filter (prog id {cur.prog_id}) took the recorder's place"
            )
        fd = guard.pinned_egress_fd(iface)
    except libbpf.BpfError:
        return None
    try:
        dataplane.tc_attach(iface.index, fd)
    except libbpf.BpfError as exc:
        return f"the tc egress recorder was removed and could not be put back: {exc.strerror}"
    finally:
        os.close(fd)
    return "the tc egress recorder was removed; put it back"


# ---- seeding the connections that exist before the attach ----

# (client address, client port, protected address, protected port)
Conn = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, ipaddress.IPv4Address | ipaddress.IPv6Address, int]
TCP_ESTABLISHED = "01"  # /proc/net/tcp st


def _proc_addr(text: str):
    """/proc/net/tcp{,6} address: hex words in host (little-endian) order, then :port."""
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip, int(port, 16)


def parse_proc_tcp(text: str, protected: set) -> list[Conn]:
    """Established sockets whose local address is protected."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 4 or f[3] != TCP_ESTABLISHED:
            continue
        (laddr, lport), (raddr, rport) = _proc_addr(f[1]), _proc_addr(f[2])
        if laddr in protected:
            out.append((raddr, rport, laddr, lport))
    return out


def parse_nf_conntrack(text: str, protected: set) -> list[Conn]:
    """Assured established TCP conntrack entries whose original destination is protected."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 6 or f[2] != "tcp" or "ESTABLISHED" not in f or "[ASSURED]" not in f:
            continue
        kv: dict[str, str] = {}
        for item in f:
            k, eq, v = item.partition("=")
            if eq and k not in kv:  # the first src/dst/sport/dport: the original direction
                kv[k] = v
        try:
            dst = ipaddress.ip_address(kv["dst"])
            if dst in protected:
                out.append((ipaddress.ip_address(kv["src"]), int(kv["sport"]), dst, int(kv["dport"])))
        except (KeyError, ValueError):
            continue
    return out


def existing_connections(protected: set, proc: Path = Path("/proc/net")) -> list[Conn]:
    """The connections of protected addresses that exist now, in this network namespace."""
    out: list[Conn] = []
    for name, parse in (("tcp", parse_proc_tcp), ("tcp6", parse_proc_tcp), ("nf_conntrack", parse_nf_conntrack)):
        try:
            out += parse((proc / name).read_text(), protected)
        except OSError:  # no IPv6, no conntrack: nothing to seed from there
            continue
    return list(dict.fromkeys(out))


def flow_key(conn: Conn) -> FlowKey:
    client, cport, prot, pport = conn
    k = FlowKey()
    ctypes.memmove(ctypes.addressof(k), client.packed, len(client.packed))
    ctypes.memmove(ctypes.addressof(k) + 16, prot.packed, len(prot.packed))
    k.client_port, k.prot_port, k.family = cport, pport, prot.version
    return k


def seed(maps, conns: list[Conn]) -> int:
    """Record connections as established (the data path refreshes them from then on)."""
    return guard.seed_flows(
        maps, [flow_key(c) for c in conns if c[0].version == c[2].version], _now_ns() + TS_EST_TIMEOUT_S * 10**9
    )
