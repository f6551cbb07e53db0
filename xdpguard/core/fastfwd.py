"""The forwarding fast path (experimental, off by default): established forwards in XDP.

`xdpguard attach IFACE --fast-forward` compiles the program with kernel.abi.FWD_DEFINE: the main
program then sends a `clean` packet of a known flow straight to its backend (rewritten and
redirected, bpf/include/steps/fastfwd.h), and a second XDP program, pinned beside it, does the
same for the backends' answers once it is attached to the backend-side interface.

nftables stays the slow path and the source of truth: a flow's first packets are DNATed and
masqueraded by it as always; `sync` then reads conntrack (netlink, pyroute2) and makes the fast
path's table hold exactly the flows conntrack has as assured (TCP: established) DNATs from a
protected address, minus those to a backend the health checks mark down. The NAT mapping is
read rather than predicted because only conntrack knows the source port the masquerade picked
(and which backend a random or persistent choice took): the simplest correct source. A flow
whose conntrack entry is gone (expired, deleted) leaves the table at the next sync; a TCP
SYN/FIN/RST takes its flow out of the table in the data path at once, so conntrack sees the
end of every connection.

The switch is desired state (InterfaceSpec.fast_path, `[interface.fast_path] via = "IF"`):
`xdpguard forward fastpath IFACE --via IF` is an edit of the spec (verbs.imperative), realised by
the reconciler's writer through `realise` (the return program attached to the backend-side
interface, the tail-call slot refilled from its pin when drift emptied it, the namespace's
nf_conntrack_tcp_be_liberal set: conntrack does not see the fast-pathed segments, so without it
the FIN that goes back to the slow path is out of its window: invalid, not NATed). The flows are
dynamic state: `sync` moves them from conntrack, once per verb and once a second in `xdpguard run`
for every interface whose stored spec has the fast path on.

Conntrack sees none of a fast flow's packets, so `sync` refreshes its timeout from the data
path's per-entry seen_ns (model.refresh_due): an active UDP flow stays on its backend and on the
fast path past nf_conntrack_udp_timeout_stream, an idle one expires as if conntrack had seen it.

nftables' per-rule counters never see a fast packet: each entry carries its rule's id
(model.rule_id) and the data path counts into xg_fwd_rule; `show` (`forward list`) puts them
beside nftables'.

XXX (not built yet): IPv6; a one-armed protector (backends behind the protected interface itself:
their answers reach the main program, not a return program, and take the slow path); conntrack
events instead of a full dump per second.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from dataclasses import asdict, dataclass, field, replace

from . import guard, state
from .errors import UserError
from .kernel import dataplane, libbpf
from .model import fastfwd as model
from .nat import forward

BE_LIBERAL = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"


@dataclass(frozen=True)
class FastPathResult:
    iface: str
    via: str | None
    return_prog_id: int
    flows: int  # flows in the table after the sync
    written: int
    deleted: int
    counters: dict[str, tuple[int, int]]
    notes: list[str] = field(default_factory=list)
    refreshed: int = 0  # conntrack entries whose timeout this sync refreshed (active fast flows)

    def to_dict(self) -> dict:
        return asdict(self)


def read_conntrack() -> list[model.CtRecord]:
    """Every IPv4 conntrack entry of this network namespace, as the fast path reads it."""
    try:
        from pyroute2 import Conntrack
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        raise UserError("pyroute2 is not importable; run scripts/setup.sh") from None
    out = []
    ct = Conntrack()
    try:
        for e in ct.dump_entries():
            o, r = e.tuple_orig, e.tuple_reply
            if o.proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                continue
            out.append(
                model.CtRecord(
                    o.proto,
                    (o.saddr, o.sport, o.daddr, o.dport),
                    (r.saddr, r.sport, r.daddr, r.dport),
                    e.status or 0,
                    e.protoinfo.state if e.protoinfo is not None else None,
                    e.timeout,
                )
            )
    finally:
        ct.close()
    return out


def down_backends(iface_name: str) -> set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(address, port) of every backend the health checks mark down, for the interface's rules."""
    states = forward._iface_states()
    rules = [sr for sr in forward.all_rules(states) if sr.iface == iface_name]
    healthy = forward.healthy_map(states, rules)
    out = set()
    for sr in rules:
        up = set(healthy.get(sr.rule.key, ()))
        for b in sr.rule.backends:
            if b not in up:
                out.update((b.host, sr.rule.target_port(b, p)) for p in range(sr.rule.port_lo, sr.rule.port_hi + 1))
    return out


def _attach_return(iface: state.Iface, via: state.Iface) -> tuple[int, list[str]]:
    """The pinned return program on `via` (native XDP; an older one of ours is replaced)."""
    try:
        fd = guard.pinned_fwd_fd(iface)
    except libbpf.BpfError:
        raise UserError(f"{iface.name}: no fast-path return program pinned; attach with --fast-forward first") from None
    try:
        info, _ = libbpf.prog_info(fd)
        cur = dataplane.query(via.index)
        if cur is not None and cur.prog_id == info.id:
            return info.id, []
        if cur is not None and cur.prog_name != dataplane.FWD_RETURN_KERNEL_NAME:
            raise UserError(
                f"{via.name} has a foreign XDP program attached (id {cur.prog_id}, '{cur.prog_name}'); "
                f"the fast path's return program needs it"
            )
        try:
            if cur is not None:
                dataplane.replace(via.index, fd, cur)
            else:
                libbpf.xdp_attach(via.index, fd, libbpf.XDP_FLAGS_DRV_MODE | libbpf.XDP_FLAGS_UPDATE_IF_NOEXIST)
        except libbpf.BpfError as exc:
            raise UserError(f"{via.name}: attaching the fast path's return program failed: {exc.strerror}") from None
        return info.id, [f"attached the fast path's return program (id {info.id}) to {via.name}"]
    finally:
        os.close(fd)


def _set_be_liberal() -> list[str]:
    try:
        with open(BE_LIBERAL) as f:
            if f.read().strip() == "1":
                return []
        with open(BE_LIBERAL, "w") as f:
            f.write("1")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return ["nf_conntrack is not loaded: nf_conntrack_tcp_be_liberal not set"]
        raise UserError(f"cannot set {BE_LIBERAL}: {exc.strerror}") from None
    return ["set net.netfilter.nf_conntrack_tcp_be_liberal=1 in this namespace (fast-pathed segments bypass conntrack)"]


# ---- the desired spec's `fast_path` (InterfaceSpec.fast_path: the backend-side interface) ----


def check(g: guard.Guard, via: str | None) -> None:
    """Refuse (one UserError, nothing written) a fast path the interface cannot have: `via` not
    an interface of this namespace, the protected interface itself, or a program compiled
    without the fast path."""
    if via is None:
        return
    if via == g.iface.name:
        raise UserError(f"{via}: the fast path's --via must be the backend-side interface, not the protected one")
    state.resolve_iface(via)
    if not g.fastfwd_compiled():
        raise UserError(
            f"{g.iface.name}: the attached program has no forwarding fast path; "
            f"`xdpguard upgrade {g.iface.name} --fast-forward` compiles it in"
        )


def realise(g: guard.Guard, old: str | None, new: str | None) -> list[str]:
    """Make the kernel hold the spec's fast path (the caller holds the interface lock): on, the
    tail-call slot filled (a lost pin repaired), the return program on `new`, conntrack liberal
    for TCP windows; off, every flow back on the slow path (the table emptied). A return program
    on `old` (another interface) is taken off."""
    notes: list[str] = []
    if new is not None:
        check(g, new)
        notes += g.repair_fastfwd()
        notes += _attach_return(g.iface, state.resolve_iface(new))[1]
        notes += _set_be_liberal()
    elif g.fastfwd_compiled():
        _, deleted = g.sync_fastfwd([])
        if deleted:
            notes.append(f"{deleted} fast-path entries removed: every flow back on the slow path")
    if old is not None and old != new:
        try:
            if dataplane.fwd_return_detach(state.resolve_iface(old).index):
                notes.append(f"detached the fast path's return program from {old}")
        except UserError:
            pass  # the interface went away, and the program with it
    return notes


def intact(g: guard.Guard, via: str) -> bool:
    """The daemon's cheap check: is the fast path of a spec with `via` realised as it was?"""
    return g.fastfwd_via() == via


# ---- the flows: conntrack → the table (dynamic state, like bans; the map owner writes it) ----


CT_FULL_TIMEOUTS = {  # what conntrack gives an established flow's entry on each packet
    socket.IPPROTO_TCP: "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
    socket.IPPROTO_UDP: "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream",
}


def full_timeouts() -> dict[int, int]:
    """This namespace's established (TCP) and stream (UDP) conntrack timeouts, seconds."""
    out = {}
    for proto, path in CT_FULL_TIMEOUTS.items():
        try:
            with open(path) as f:
                out[proto] = int(f.read().strip())
        except (OSError, ValueError):
            continue  # nf_conntrack not loaded: nothing to refresh
    return out


def refresh_conntrack(due) -> int:
    """Set conntrack's timeout of each (NatFlow, seconds) in `due` (an entry gone meanwhile is
    skipped: the next sync takes its flow off the fast path). → how many were set."""
    if not due:
        return 0
    from pyroute2 import Conntrack
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    done = 0
    ct = Conntrack()
    try:
        for f, seconds in due:
            orig = NFCTAttrTuple(
                saddr=str(f.client), daddr=str(f.protected), proto=f.proto, sport=f.client_port, dport=f.protected_port
            )
            try:
                ct.entry("set", timeout=seconds, tuple_orig=orig)
            except NetlinkError as exc:
                if exc.code == errno.ENOENT:
                    continue
                raise UserError(f"refreshing conntrack's timeout of a fast flow failed: {exc}") from None
            done += 1
    finally:
        ct.close()
    return done


def sync_guard(g: guard.Guard) -> tuple[int, int, int, int]:
    """The fast path's table made to match conntrack's established DNATs of the interface's
    protected addresses (minus backends marked down), and conntrack's timeouts of the flows the
    fast path carried refreshed (model.refresh_due). → (flows, written, deleted, refreshed)."""
    records = read_conntrack()
    flows = model.select_flows(records, g.protected_addrs(), down_backends(g.iface.name))
    rules = _rules(g.iface)
    g.sync_fastfwd_rules({model.rule_id(r[4]) for r in rules})  # before the flows that count into them
    written, deleted = g.sync_fastfwd(flows, model.flow_rule_ids(flows, rules))
    due = model.refresh_due(flows, model.ct_timeouts(records), g.fastfwd_seen(), time.monotonic_ns(), full_timeouts())
    return len(flows), written, deleted, refresh_conntrack(due)


def _rules(iface: state.Iface) -> list[tuple[str, object, int, int, str]]:
    """The interface's forwarding rules as model.fastfwd.flow_rule_ids takes them."""
    return [
        (sr.rule.proto, sr.rule.protected, sr.rule.port_lo, sr.rule.port_hi, sr.rule.key)
        for sr in forward.stored_rules(iface.name, state.read_state(iface))
    ]


def show(ifname: str | None = None) -> forward.ForwardListResult:
    """`forward list`: nftables' rules and counters (forward.show), with each rule's fast-path
    packets and bytes beside nftables' (which never see them) on interfaces with the fast path."""
    res = forward.show(ifname)
    fast: dict[str, tuple[int, int]] = {}
    for name in sorted({r.iface for r in res.rules}):
        try:
            with guard.Guard.open(state.resolve_iface(name)) as g:
                if not g.fastfwd_compiled():
                    continue
                by_id = g.fastfwd_rule_counters()
        except UserError:
            continue  # gone meanwhile: nftables' view is still worth listing
        for r in res.rules:
            if r.iface == name and model.rule_id(r.key) in by_id:
                fast[r.key] = by_id[model.rule_id(r.key)]
    if not fast:
        return res
    views = [
        replace(r, fast_packets=fast.get(r.key, (0, 0))[0], fast_bytes=fast.get(r.key, (0, 0))[1]) for r in res.rules
    ]
    return replace(res, rules=views)


def sync(ifname: str) -> FastPathResult:
    """One round of sync_guard under the interface lock (`xdpguard run`, once a second, for
    every interface whose desired spec has the fast path on)."""
    state.require_root()
    iface = state.resolve_iface(ifname)
    with state.iface_lock(iface):
        with guard.Guard.open(iface) as g:
            if not g.fastfwd_compiled():
                raise UserError(
                    f"{ifname}: the attached program has no forwarding fast path (attach with --fast-forward)"
                )
            flows, written, deleted, refreshed = sync_guard(g)
            counters = g.fastfwd_counters()
    return FastPathResult(ifname, None, 0, flows, written, deleted, counters, [], refreshed)


def sync_enabled(names) -> list[FastPathResult]:
    """`sync` for each of these interfaces (the daemon passes those whose desired spec has
    `fast_path`)."""
    return [sync(name) for name in names]
