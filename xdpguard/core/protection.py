"""The program's lifecycle (attach, upgrade, detach), status, the list and port shows, and the
validators and result types of the list and port verbs (imperative.py edits the spec).

Each verb returns a frozen result object (rendered by the CLI as text or --json). The maps are
opened, read and written only through guard.py (the map owner). No click, no rich.
"""

from __future__ import annotations

import ipaddress
import os
import time
from dataclasses import dataclass, field

from .kernel import dataplane, libbpf, migrate
from . import guard, levels, state, tcpstate
from .model import vocab
from .guard import (
    CounterView,
    Guard,
    ListEntryView,
    _now_ns,
    locked_guard,  # noqa: F401
    open_guard,
    pick_iface,  # noqa: F401
)
from .kernel.abi import (
    ABI_VERSION,
    FWD_DEFINE,
    PROTECTED_MAX,
    MapName,
    PORT_BY_FORWARD,
    PORT_BY_HTTP,
    PORT_BY_OPERATOR,
)
from .errors import UserError
from .kernel.maps import BpfMap
from .prefixes import Prefix, parse_address, parse_prefix, whole_family
from .result import as_dict as _as_dict

LISTS = ("block", "allow")


# ---- results ----


@dataclass(frozen=True)
class AttachResult:
    iface: str
    ifindex: int
    prog_id: int
    mode: str
    protected: list[str]
    monitor: bool
    pin_dir: str
    notes: list[str] = field(default_factory=list)
    to_dict = _as_dict


@dataclass(frozen=True)
class DetachResult:
    iface: str
    prog_id: int | None
    notes: list[str] = field(default_factory=list)
    to_dict = _as_dict


@dataclass(frozen=True)
class StatusResult:
    iface: str
    ifindex: int
    prog_id: int
    mode: str
    protected: list[str]
    monitor: bool
    list_sizes: dict[str, int]
    counters: list[CounterView]
    totals: dict[str, dict[str, int]]
    pinned: bool
    to_dict = _as_dict


@dataclass(frozen=True)
class ListChangeResult:
    iface: str
    list: str
    action: str  # add | del | load
    added: int
    updated: int
    removed: int
    missing: list[str]
    normalised: list[str]  # "given -> stored"
    to_dict = _as_dict


@dataclass(frozen=True)
class ListResult:
    iface: str
    list: str
    entries: list[ListEntryView]
    to_dict = _as_dict


# ---- the guard of one interface ----


# ---- verbs ----


def parse_protect(addrs: list[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = []
    for a in addrs:
        for part in a.split(","):
            if part.strip():
                out.append(parse_address(part, "protected address"))
    if not out:
        raise UserError("--protect needs at least one address")
    out = list(dict.fromkeys(out))
    if len(out) > PROTECTED_MAX:
        raise UserError(f"too many protected addresses: {len(out)}, at most {PROTECTED_MAX}")
    return out


def attach(
    ifname: str,
    protect: list[str],
    mode: str = "auto",
    monitor: bool = False,
    force: bool = False,
    defines: dict[str, int] | None = None,
    level: str | None = None,
) -> AttachResult:
    if mode not in ("auto", "native", "skb"):
        raise UserError(f"invalid mode '{mode}': use auto, native or skb")
    if level is not None:
        levels.preset(level)  # refuse a bad level before anything is compiled
    addrs = parse_protect(protect)
    state.require_root()
    iface = state.resolve_iface(ifname)
    with state.iface_lock(iface):
        att = check_attachable(iface, force)
        return attach_locked(iface, addrs, mode, monitor, force, att, defines, level)


def check_attachable(iface: state.Iface, force: bool) -> dataplane.XdpAttachment | None:
    """What is attached to `iface` now, when an attach may go ahead (nothing, or a foreign program
    with `force`); a UserError otherwise."""
    att = dataplane.query(iface.index)
    if dataplane.is_ours(att):
        raise UserError(f"{iface.name} is already protected by xdpguard (prog id {att.prog_id}); detach it first")
    if att is not None and not force:
        raise UserError(
            f"{iface.name} has a foreign XDP program attached (id {att.prog_id}, '{att.prog_name}'); "
            f"use --force to replace it"
        )
    return att


DEFINES_KEY = state.DEFINES.key  # the interface record's: the compile-time features of the attached program
KEPT_DEFINES = (FWD_DEFINE,)  # features, not sizes: an upgrade compiles them in again


def kept_defines(defines: dict[str, int] | None) -> dict:
    """The part of an attach's -D defines its record keeps for upgrades (KEPT_DEFINES)."""
    kept = {k: v for k, v in (defines or {}).items() if k in KEPT_DEFINES}
    return {DEFINES_KEY: kept} if kept else {}


def attach_locked(
    iface: state.Iface,
    addrs,
    mode: str,
    monitor: bool,
    force: bool,
    att: dataplane.XdpAttachment | None,
    defines: dict[str, int] | None = None,
    level: str | None = None,
) -> AttachResult:
    """Compile, fill and attach a fresh program (the caller holds the interface lock and has
    checked what is attached: nothing, or a foreign program it may replace with `force`)."""
    grace_s = tcpstate.attach_grace_s()  # a bad $XDPGUARD_TCP_GRACE is refused before anything changes
    ifname = iface.name
    notes: list[str] = []
    if att is not None:
        notes.append(f"replaced foreign XDP program id {att.prog_id} ('{att.prog_name}')")
    # Leftovers of an earlier attach whose program is gone.
    state.remove_pins(iface)
    state.remove_state(iface)
    state.ensure_bpffs()
    state.private_dir(iface.pin_dir)

    lp = dataplane.compile_program(defines, pin_dir=iface.pin_dir)
    try:
        maps = {n: BpfMap(n, fd) for n, fd in lp.map_fds.items()}
        guard.init_fresh(maps, addrs, level, monitor)
        guard.pin_program(iface, lp.map_fds, lp.prog_fd, lp.egress_fd, lp.fwd_fd, lp.fwd_array_fd, lp.fwd_in_fd)
        try:
            took, note = dataplane.attach(ifname, iface.index, lp.prog_fd, mode, replace=att if force else None)
        except BaseException:
            state.remove_pins(iface)
            raise
        if note:
            notes.append(note)
        notes += tcpstate.start(iface.index, lp.egress_fd, maps, grace_s)
        new = dataplane.query(iface.index)
        prog_id = new.prog_id if new else 0
        state.write_state(
            iface,
            {
                "iface": ifname,
                "ifindex": iface.index,
                "netns": iface.nskey,
                "prog_id": prog_id,
                "mode": took,
                "requested_mode": mode,
                "program_sha256": dataplane.program_sha256(defines),
                **kept_defines(defines),  # the features an upgrade compiles in again
                "protected": [str(a) for a in addrs],
                "monitor": monitor,
                "attached_at": time.time(),
                **({levels.STATE_KEY: {str(a): level for a in addrs}} if level is not None else {}),
            },
        )
    finally:
        lp.close()
    return AttachResult(ifname, iface.index, prog_id, took, [str(a) for a in addrs], monitor, str(iface.pin_dir), notes)


@dataclass(frozen=True)
class UpgradeResult:
    iface: str
    action: str  # upgraded | current
    old_prog_id: int
    prog_id: int
    maps_kept: int
    maps_new: list[str]
    notes: list[str] = field(default_factory=list)
    to_dict = _as_dict


def needs_upgrade(iface: state.Iface, defines: dict[str, int] | None = None) -> bool:
    st = state.read_state(iface) or {}
    if defines is None:  # what it was attached with (a fast-path program is not older for having it)
        defines = state.get(st, state.DEFINES) or None
    return st.get("program_sha256") != dataplane.program_sha256(defines)


FILTER_VECTORS = frozenset({MapName.FSEL, MapName.FHEAD, MapName.FVEC, MapName.FDEF, MapName.PHEAD, MapName.PVEC})


def refill_derived(plan: migrate.Plan, maps: dict[MapName, BpfMap]) -> None:
    """Before the swap: maps the new program derives from others, when they were not shared
    with the old program — the compiled filter vectors, from the ordered filter list (else the
    filters would be off until the next filter change), and the service records' slots and
    limits, from the open ports and xg_portlim_hash. The maps' fds belong to the caller."""
    if any(s.name in FILTER_VECTORS and s.action != "keep" for s in plan.steps):
        guard.compile_filters(maps, tuple(guard.read_filter_table(maps)))
    # the service records (steps/port.h): a program before xg_svc_arr had the owners only
    if any(s.name in (MapName.PORTS, MapName.SVC) and s.action != "keep" for s in plan.steps):
        guard.refill_service_records(maps)
    # the lists' prefilter (steps/lists.h): a new bitmap is empty, and the carried-over config may trust it
    if any(s.name == MapName.LPF and s.action != "keep" for s in plan.steps):
        guard.lpf_rebuild(maps)


def upgrade(ifname: str, defines: dict[str, int] | None = None, force: bool = False) -> UpgradeResult:
    """Swap the attached program for this xdpguard's, without a gap: the new program is compiled
    against the old one's pinned maps (every list, hit counter, ban, bucket, SYN state and
    counter stays where it is) and replaces the old one atomically. A map whose shape changed
    is carried over into a new map just before the swap (migrate.py says how, and refuses —
    changing nothing — what it cannot carry)."""
    state.require_root()
    iface = state.resolve_iface(ifname)
    with state.iface_lock(iface):
        att = dataplane.query(iface.index)
        if not dataplane.is_ours(att):
            raise UserError(f"{ifname} is not protected by xdpguard; nothing to upgrade")
        if defines is None:  # what it was attached with (the fast path's -D stays on)
            defines = (state.read_state(iface) or {}).get(DEFINES_KEY) or None
        old = dataplane.map_fds_of_prog(att.prog_id)
        try:
            version = guard.abi_version(old)
            if version is None:
                raise UserError(f"{ifname}: the attached program has no {MapName.CONFIG.value}; detach and re-attach")
            if version != ABI_VERSION:
                raise UserError(
                    f"{ifname}: its maps have ABI version {version}, this xdpguard has {ABI_VERSION} and "
                    f"knows no migration; export, detach, attach and apply to move over"
                )
            plan = migrate.plan(old, defines)
            if not force and not needs_upgrade(iface, defines) and not plan.changes_shapes:
                return UpgradeResult(ifname, "current", att.prog_id, att.prog_id, len(plan.by_action("keep")), [])
            return _upgrade_locked(iface, att, old, plan, defines)
        finally:
            for fd in old.values():
                os.close(fd)


def _upgrade_locked(
    iface: state.Iface,
    att: dataplane.XdpAttachment,
    old: dict[MapName, int],
    plan: migrate.Plan,
    defines: dict[str, int] | None,
) -> UpgradeResult:
    ifname = iface.name
    state.ensure_bpffs()
    staging = guard.upgrade_staging(iface)
    try:
        migrate.stage(plan, old, staging)
        lp = dataplane.compile_program(defines, pin_dir=staging)
    except BaseException:
        migrate.remove_staging(staging)
        raise
    try:
        new_ids = {n: libbpf.map_info(fd).id for n, fd in lp.map_fds.items()}
        kept = plan.by_action("keep")
        lost = [n.value for n in kept if new_ids.get(n) != libbpf.map_info(old[n]).id]
        if lost:
            raise UserError(f"{ifname}: the new program did not reuse maps {lost}; nothing was changed")
        migrate.copy(plan, old, lp.map_fds)
        refill_derived(plan, {n: BpfMap(n, fd) for n, fd in lp.map_fds.items()})
        try:
            dataplane.replace(iface.index, lp.prog_fd, att)
        except libbpf.BpfError as exc:
            raise UserError(f"{ifname}: atomic replace failed ({exc.strerror}); the old program stays") from None
        guard.commit_upgrade_pins(
            iface, lp.map_fds, staging, lp.prog_fd, lp.egress_fd, lp.fwd_fd, lp.fwd_array_fd, lp.fwd_in_fd
        )
        swap_notes = tcpstate.swap(iface.index, lp.egress_fd, {n: BpfMap(n, fd) for n, fd in lp.map_fds.items()})
        new = dataplane.query(iface.index)
        st = state.read_state(iface) or {}
        st.update(
            prog_id=new.prog_id if new else 0, program_sha256=dataplane.program_sha256(defines), upgraded_at=time.time()
        )
        # an upgrade that compiled the fast path in keeps it
        state.put(st, state.DEFINES, {k: v for k, v in (defines or {}).items() if k in KEPT_DEFINES})
        state.write_state(iface, st)
    finally:
        migrate.remove_staging(staging)
        lp.close()
    return UpgradeResult(
        ifname,
        "upgraded",
        att.prog_id,
        new.prog_id if new else 0,
        len(kept),
        sorted(n.value for n in plan.by_action("new") if n not in migrate.UNPINNED),
        plan.notes() + swap_notes,
    )


def detach(ifname: str) -> DetachResult:
    """Program, pins and the interface record; the NAT side is the caller's (reconcile.detach)."""
    state.require_root()
    iface = state.resolve_iface(ifname)
    with state.iface_lock(iface):
        return detach_locked(iface)


def detach_locked(iface: state.Iface, notes: list[str] | None = None) -> DetachResult:
    notes = list(notes or []) + tcpstate.stop(iface.index)
    att = dataplane.query(iface.index)
    had_state = iface.state_file.exists() or iface.pin_dir.exists()
    if not dataplane.is_ours(att):
        if had_state:
            state.remove_pins(iface)
            state.remove_state(iface)
            return DetachResult(
                iface.name, None, ["no xdpguard program was attached; removed leftover pins and state", *notes]
            )
        what = "nothing is attached" if att is None else f"the attached program '{att.prog_name}' is not ours"
        raise UserError(f"{iface.name} is not protected by xdpguard ({what})")
    notes += fwd_return_off(iface)
    dataplane.detach(iface.index, att)
    state.remove_pins(iface)
    state.remove_state(iface)
    return DetachResult(iface.name, att.prog_id, notes)


def fwd_return_off(iface: state.Iface) -> list[str]:
    """The fast path's return program off every interface it is attached to (its flow table
    would otherwise keep rewriting backends' answers for a program that is gone): found from the
    kernel, by the id of the interface's pinned return program."""
    rid = guard.pinned_fwd_id(iface)
    notes = []
    for name in dataplane.attached_to(rid) if rid else []:
        try:
            if dataplane.fwd_return_detach(state.resolve_iface(name).index):
                notes.append(f"detached the fast path's return program from {name}")
        except UserError:
            pass
    return notes


def status(ifname: str | None) -> list[StatusResult]:
    state.require_root()
    names = [ifname] if ifname else state.protected_ifaces()
    out = []
    for name in names:
        with Guard.open(state.resolve_iface(name)) as g:
            cfg = g.config()
            counters = g.counters()
            totals: dict[str, dict[str, int]] = {}
            for c in counters:
                t = totals.setdefault(c.kind, {"packets": 0, "bytes": 0})
                t["packets"] += c.packets
                t["bytes"] += c.bytes
            out.append(
                StatusResult(
                    iface=name,
                    ifindex=g.iface.index,
                    prog_id=g.att.prog_id,
                    mode=g.att.mode,
                    protected=g.protected(),
                    monitor=bool(cfg.monitor_mask),
                    list_sizes={w: g.list_size(w) for w in LISTS},
                    counters=counters,
                    totals=totals,
                    pinned=g.pinned(),
                )
            )
    return out


def check_whole_family(which: str, prefixes, force: bool) -> None:
    """A blocklist entry for every address drops all traffic to the protected addresses; an
    allowlist entry for every address turns the protection off. Either needs force."""
    wide = whole_family(prefixes)
    if wide and not force:
        what = (
            "drops all traffic to the protected addresses"
            if which == "block"
            else "lets every source skip every check (no protection left)"
        )
        raise UserError(
            f"{which}list entry {wide[0]} covers every address of its family and {what}; give --force if you mean it"
        )


def parse_many(cidrs: list[str]) -> tuple[list[Prefix], list[str]]:
    prefixes, normalised = [], []
    for c in cidrs:
        p = parse_prefix(c)
        if p.normalised_from is not None:
            normalised.append(f"{p.normalised_from} -> {p.prefix}")
        prefixes.append(p.prefix)
    return prefixes, normalised


def check_ttl(ttl: float | None) -> int:
    if ttl is None:
        return 0
    if not 0 < ttl <= 10 * 365 * 86400:  # also refuses nan
        raise UserError(f"invalid --ttl {ttl:g}: must be between 1 s and 10 years")
    return _now_ns() + int(ttl * 1e9)


def list_show(which: str, ifname: str | None) -> ListResult:
    with open_guard(ifname) as g:
        return ListResult(g.iface.name, which, g.list_entries(which))


# ---- port policy verbs ----


@dataclass(frozen=True)
class PortRun:
    protected: str
    proto: str
    lo: int
    hi: int
    by: list[str]  # operator | forward


@dataclass(frozen=True)
class PortResult:
    iface: str
    action: str  # open | close | list
    changed: int
    ports: list[PortRun]
    to_dict = _as_dict


parse_port_range = vocab.parse_port_range  # one port-range parser


def port_runs(g: Guard) -> list[PortRun]:
    out = []
    for (addr, proto), runs in g.open_ports().items():
        for lo, hi, flags in runs:
            by = [
                n
                for bit, n in ((PORT_BY_OPERATOR, "operator"), (PORT_BY_FORWARD, "forward"), (PORT_BY_HTTP, "http"))
                if flags & bit
            ]
            out.append(PortRun(addr, proto, lo, hi, by))
    return out


def _select_protected(g: Guard, protected: str | None):
    addrs = g.protected_addrs()
    if protected is None:
        return addrs
    a = parse_address(protected, "protected address")
    if a not in addrs:
        raise UserError(f"{a} is not a protected address of {g.iface.name} (protected: {', '.join(map(str, addrs))})")
    return [a]


def check_port_run(proto: str, port_range: str) -> tuple[int, int]:
    if proto not in vocab.PORT_PROTOS:
        raise UserError(f"unknown protocol '{proto}': use tcp or udp")
    return parse_port_range(port_range)


def ports_list(ifname: str | None) -> PortResult:
    with open_guard(ifname) as g:
        return PortResult(g.iface.name, "list", 0, port_runs(g))


# ---- expiry sweep (run by `xdpguard run`; the data path enforces expiry without it) ----


@dataclass(frozen=True)
class SweepResult:
    iface: str
    list_entries: int  # expired allow/block entries removed
    bans: int  # expired dynamic bans removed
    to_dict = _as_dict


# The sweeps of the verified clients and the per-port buckets read whole maps (a full
# xg_goodsrc_hash: 0.4-1.8 s, tests/bpf/test_verified.py): at most once a minute per interface,
# whatever the sweep interval (their entries live for minutes to a day).
VERIFIED_SWEEP_S = 60.0
_VERIFIED_SWEPT: dict[str, float] = {}


def sweep_expired(ifname: str | None = None) -> list[SweepResult]:
    """Remove expired list entries and bans on one interface (or every protected one of this
    network namespace), under each interface's lock. Keeps `block list` sizes and the data
    path's has-bans flag honest between list commands. Without an interface, one whose program
    is gone or foreign is skipped quietly: the daemon's drift check reports that, once."""
    state.require_root()
    out = []
    for name in [ifname] if ifname else state.protected_ifaces():
        if ifname is None:
            try:
                if not dataplane.is_ours(dataplane.query(state.resolve_iface(name).index)):
                    continue
            except UserError:
                continue
        with locked_guard(name) as g:
            entries = g.sweep_expired("block") + g.sweep_expired("allow")
            if entries:
                g.sync_lists_mask()
            bans = g.sweep_bans(_now_ns())
            if time.monotonic() - _VERIFIED_SWEPT.get(name, -VERIFIED_SWEEP_S) >= VERIFIED_SWEEP_S:
                g.sweep_verified(_now_ns())  # expired verified clients; room for learning
                g.sweep_dst_buckets(_now_ns())  # idle per-port buckets: room again after a flood
                g.sweep_budgets(_now_ns())  # idle budgets of no open port (budget.h)
                _VERIFIED_SWEPT[name] = time.monotonic()
            out.append(SweepResult(name, entries, bans))
    return out
