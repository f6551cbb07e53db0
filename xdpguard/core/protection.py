"""The controller's verbs: attach, detach, status, allow/block list changes.

Each verb returns a frozen result object (rendered by the CLI as text or --json). Policy
verbs work from any later process: they find the program attached to the interface and open
its maps through the kernel, re-pinning them if the pins went missing. No compile.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import struct
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import dataplane, forwarding, levels, libbpf, migrate, policy, state, tcpstate, vocab
from .abi import (
    ABI_VERSION,
    CFG_ENABLED,
    PROTECTED_MAX,
    LISTS_MASK_BITS,
    Addr4,
    Addr6,
    Config,
    Kind,
    ListEntry,
    Lpm4Key,
    Lpm6Key,
    MapName,
    PORT_BY_FORWARD,
    PORT_BY_HTTP,
    PORT_BY_OPERATOR,
    PROT_PORT_POLICY,
    PortValue,
    Reason,
    stats_slot,
)
from .errors import UserError
from .maps import BpfMap
from .prefixes import Prefix, PrefixFile, parse_address, parse_prefix, read_prefix_file, whole_family

LISTS = ("block", "allow")
PROG_PIN = "xg_prog"  # the program itself, pinned beside its maps: a detached program can come back as it was
# (list, family, host entry?) → map. Host entries (/32, /128) live in exact hashes, which stay
# flat as a list grows; other prefixes in LPM tries.
LIST_MAPS = {
    ("block", 4, True): MapName.BLOCK4H,
    ("block", 6, True): MapName.BLOCK6H,
    ("allow", 4, True): MapName.ALLOW4H,
    ("allow", 6, True): MapName.ALLOW6H,
    ("block", 4, False): MapName.BLOCK4,
    ("block", 6, False): MapName.BLOCK6,
    ("allow", 4, False): MapName.ALLOW4,
    ("allow", 6, False): MapName.ALLOW6,
}
HOST_MAPS = {MapName.BLOCK4H, MapName.BLOCK6H, MapName.ALLOW4H, MapName.ALLOW6H}


def _is_host(p: Prefix) -> bool:
    return p.plen == (32 if p.family == 4 else 128)


def list_target(which: str, p: Prefix) -> tuple[MapName, object]:
    """The map a prefix belongs in and its key there."""
    name = LIST_MAPS[(which, p.family, _is_host(p))]
    if name in HOST_MAPS:
        k = Addr4() if p.family == 4 else Addr6()
        ctypes.memmove(ctypes.addressof(k), p.addr, len(p.addr))
        return name, k
    return name, _lpm_key(p)
ALL_REASONS_MASK = sum(1 << r for r in Reason if r.is_drop)


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # same clock as bpf_ktime_get_ns


def _as_dict(obj) -> dict:
    return asdict(obj)


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
class CounterView:
    kind: str
    reason: str
    packets: int
    bytes: int


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
class ListEntryView:
    prefix: str
    hits: int
    expires_in_s: float | None


@dataclass(frozen=True)
class ListResult:
    iface: str
    list: str
    entries: list[ListEntryView]
    to_dict = _as_dict


# ---- keys ----


def _lpm_key(p: Prefix):
    k = Lpm4Key() if p.family == 4 else Lpm6Key()
    k.prefixlen = p.plen
    ctypes.memmove(ctypes.addressof(k) + 4, p.addr, len(p.addr))
    return k


def _key_prefix(k, family: int) -> Prefix:
    plen = getattr(k, "prefixlen", 32 if family == 4 else 128)
    return Prefix(family, bytes(k.addr), plen)


PROTO_NUMBERS = {"tcp": 6, "udp": 17}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}


# ---- the guard of one interface ----


class Guard:
    """An interface protected by xdpguard, with its maps opened through the kernel."""

    def __init__(self, iface: state.Iface, att: dataplane.XdpAttachment, maps: dict[MapName, BpfMap]):
        self.iface = iface
        self.att = att
        self.maps = maps

    @classmethod
    def open(cls, iface: state.Iface) -> Guard:
        att = dataplane.query(iface.index)
        if not dataplane.is_ours(att):
            what = "no XDP program" if att is None else f"a foreign XDP program ({att.prog_name or att.prog_id})"
            raise UserError(f"{iface.name} is not protected by xdpguard ({what} attached); run 'xdpguard attach {iface.name}' first")
        fds = dataplane.map_fds_of_prog(att.prog_id)
        missing = [m.value for m in MapName if m not in fds]
        if missing:
            for fd in fds.values():
                os.close(fd)
            raise UserError(f"{iface.name}: attached xdpguard program lacks maps {missing}; detach and re-attach")
        g = cls(iface, att, {name: BpfMap(name, fd) for name, fd in fds.items()})
        g._repin_if_missing()
        return g

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _repin_if_missing(self) -> None:
        """Pins are a convenience (bpftool, other tools); restore them if a bpffs went away."""
        d = self.iface.pin_dir
        if self.pinned():
            return
        try:
            state.ensure_bpffs()
            pin_maps(self.iface, {n: m.fd for n, m in self.maps.items()})
            fd = libbpf.prog_get_fd_by_id(self.att.prog_id)
            try:
                libbpf.obj_pin(fd, str(d / PROG_PIN))
            finally:
                os.close(fd)
        except (UserError, OSError, libbpf.BpfError):
            pass

    def pinned(self) -> bool:
        d = self.iface.pin_dir
        return all((d / m.value).exists() for m in MapName) and (d / PROG_PIN).exists()

    # -- config --

    def config(self) -> Config:
        cfg = self.maps[MapName.CONFIG].get(ctypes.c_uint32(0))
        return cfg if cfg is not None else Config()

    def protected(self) -> list[str]:
        out = []
        for k in self.maps[MapName.PROT4].keys():
            out.append(str(ipaddress.IPv4Address(bytes(k.addr))))
        for k in self.maps[MapName.PROT6].keys():
            out.append(str(ipaddress.IPv6Address(bytes(k.addr))))
        return out

    # -- counters --

    def counters(self) -> list[CounterView]:
        stats = self.maps[MapName.STATS]
        out = []
        for kind in Kind:
            for reason in Reason:
                per_cpu = stats.get(ctypes.c_uint32(stats_slot(kind, reason))) or []
                pk = sum(c.packets for c in per_cpu)
                by = sum(c.bytes for c in per_cpu)
                if pk:
                    out.append(CounterView(kind.label, reason.label, pk, by))
        return out

    # -- lists --

    def list_maps(self, which: str) -> list[tuple[int, BpfMap]]:
        return [(fam, self.maps[LIST_MAPS[(which, fam, host)]]) for fam in (4, 6) for host in (True, False)]

    def list_entries(self, which: str) -> list[ListEntryView]:
        now = _now_ns()
        out = []
        for fam, m in self.list_maps(which):
            for k, v in m.items():
                if v.expires_ns and v.expires_ns <= now:
                    continue
                exp = round((v.expires_ns - now) / 1e9, 1) if v.expires_ns else None
                p = _key_prefix(k, fam)
                out.append((p, ListEntryView(str(p), v.hits, exp)))
        out.sort(key=lambda t: t[0])
        return [e for _, e in out]

    def list_size(self, which: str) -> int:
        return sum(len(m) for _, m in self.list_maps(which))

    def sweep_expired(self, which: str) -> int:
        now = _now_ns()
        n = 0
        for _, m in self.list_maps(which):
            dead = [k for k, v in m.items() if v.expires_ns and v.expires_ns <= now]
            for k in dead:
                n += m.delete(k)
        return n

    def sync_lists_mask(self) -> None:
        """Tell the data path which list maps hold entries, so it skips the empty ones."""
        mask = 0
        for name, bit in LISTS_MASK_BITS.items():
            for _ in self.maps[name].keys():
                mask |= bit
                break
        cfg = self.config()
        if cfg.lists_mask != mask:
            cfg.lists_mask = mask
            self.maps[MapName.CONFIG].set(ctypes.c_uint32(0), cfg)

    def upsert(self, which: str, prefixes: list[Prefix], expires_ns: int) -> tuple[int, int]:
        """Insert or refresh entries, all or nothing. An existing entry keeps its hit count and
        takes the new expiry. Returns (added, updated)."""
        added = updated = 0
        prefixes = list(dict.fromkeys(prefixes))  # duplicates in the input count once
        undo: list = []
        groups: dict[MapName, list[Prefix]] = {}
        for p in prefixes:
            groups.setdefault(LIST_MAPS[(which, p.family, _is_host(p))], []).append(p)
        try:
            for name, group in groups.items():
                a, u = _bulk_upsert(self.maps[name], group, expires_ns, undo)
                added += a
                updated += u
        except BaseException:
            _undo_upsert(undo)
            raise
        finally:
            self.sync_lists_mask()
        return added, updated

    # -- port policy --

    def protected_addrs(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address(a) for a in self.protected()]

    def open_ports(self) -> dict[tuple[str, str], list[tuple[int, int, int]]]:
        """(protected address, proto) → sorted (lo, hi, flags) runs of open ports."""
        runs: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
        by: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for k, v in self.maps[MapName.PORTS].items():
            raw = bytes(k.addr)[: 4 if k.family == 4 else 16]
            key = (str(ipaddress.ip_address(raw)), PROTO_NAMES.get(k.proto, str(k.proto)))
            by.setdefault(key, []).append((k.port, v.flags))
        for key, ports in by.items():
            ports.sort()
            out: list[tuple[int, int, int]] = []
            for port, flags in ports:
                if out and out[-1][1] == port - 1 and out[-1][2] == flags:
                    out[-1] = (out[-1][0], port, flags)
                else:
                    out.append((port, port, flags))
            runs[key] = out
        return dict(sorted(runs.items()))

    def change_ports(self, addrs, proto: str, lo: int, hi: int, by_bit: int, add: bool) -> int:
        """Open (add) or close ports lo..hi for `by_bit`'s owner on each address; keeps the
        address's port-policy flag in step (on while any port of it is open). Returns entries changed."""
        m = self.maps[MapName.PORTS]
        changed = 0
        for a in addrs:
            for port in range(lo, hi + 1):
                k = policy.port_key(a, proto, port)
                old = m.get(k)
                flags = old.flags if old is not None else 0
                new = flags | by_bit if add else flags & ~by_bit
                if new == flags:
                    continue
                changed += 1
                if new:
                    m.set(k, PortValue(new))
                else:
                    m.delete(k)
            self._sync_port_policy(a)
        return changed

    def _sync_port_policy(self, addr) -> None:
        fam = addr.version
        raw = addr.packed
        on = any(k.family == fam and bytes(k.addr)[: len(raw)] == raw for k in self.maps[MapName.PORTS].keys())
        pm = self.maps[MapName.PROT4 if fam == 4 else MapName.PROT6]
        pk = policy.prot_key(addr)
        cur = pm.get(pk)
        if cur is None:
            return
        flags = (cur.flags | PROT_PORT_POLICY) if on else (cur.flags & ~PROT_PORT_POLICY)
        if flags != cur.flags:
            cur.flags = flags  # the rest of the entry (limits, SYN policy) stays
            pm.set(pk, cur, libbpf.BPF_EXIST)

    def delete(self, which: str, prefixes: list[Prefix]) -> tuple[int, list[str]]:
        removed, missing = 0, []
        for p in prefixes:
            name, key = list_target(which, p)
            if self.maps[name].delete(key):
                removed += 1
            else:
                missing.append(str(p))
        self.sync_lists_mask()
        return removed, missing


def _bulk_upsert(m: BpfMap, group: list[Prefix], expires_ns: int, undo: list) -> tuple[int, int]:
    """Write unique prefixes of one map with one batch syscall per chunk. Existing entries keep
    their hit counts (read first, one lookup each; the map's own values tell an exact match,
    since every entry carries its prefix length). Registers its undo before writing.
    XXX: hits counted between that read and the batch write are lost (a refresh of 1M
    entries takes seconds)."""
    ks = ctypes.sizeof(m.key_type)
    vs = ctypes.sizeof(ListEntry)
    n = len(group)
    if m.name in HOST_MAPS:
        keys = bytearray(b"".join(p.addr for p in group))
    else:
        kfmt = struct.Struct(f"<I{ks - 4}s")
        keys = bytearray(ks * n)
        for i, p in enumerate(group):
            kfmt.pack_into(keys, i * ks, p.plen, p.addr)
    vfmt = struct.Struct("<QQII")
    vals = bytearray(vs * n)
    for i, p in enumerate(group):
        vfmt.pack_into(vals, i * vs, 0, expires_ns, p.plen, 0)
    kbuf = (ctypes.c_char * len(keys)).from_buffer(keys)
    vbuf = (ctypes.c_char * len(vals)).from_buffer(vals)
    kaddr, vaddr = ctypes.addressof(kbuf), ctypes.addressof(vbuf)

    existing: dict[int, ListEntry] = {}
    if not _map_empty(m):
        lookup = libbpf.lib().bpf_map_lookup_elem
        tmp = ListEntry()
        taddr = ctypes.addressof(tmp)
        host = m.name in HOST_MAPS
        for i, p in enumerate(group):
            if lookup(m.fd, kaddr + i * ks, taddr) == 0 and (host or tmp.prefixlen == p.plen):
                existing[i] = ListEntry(tmp.hits, tmp.expires_ns, tmp.prefixlen)
                vfmt.pack_into(vals, i * vs, tmp.hits, expires_ns, p.plen, 0)
    undo.append((m, bytes(keys), existing, n))
    pos = 0
    while pos < n:
        rc, cnt = libbpf.map_update_batch(m.fd, kaddr + pos * ks, vaddr + pos * vs, n - pos)
        pos += cnt
        if rc == 0:
            break
        _raise_update(m, rc)
    return n - len(existing), len(existing)


def _undo_upsert(undo: list) -> None:
    for m, blob, existing, n in reversed(undo):
        ks = ctypes.sizeof(m.key_type)
        for i in range(n):
            k = m.key_type.from_buffer_copy(blob, i * ks)
            old = existing.get(i)
            if old is not None:
                libbpf.map_update(m.fd, k, old)
            else:
                m.delete(k)


def _map_empty(m: BpfMap) -> bool:
    for _ in m.keys():
        return False
    return True


def _raise_update(m: BpfMap, rc: int):
    if rc in (-errno.E2BIG, -errno.ENOSPC, -errno.ENOMEM):
        raise UserError(f"list {m.name.value} is full ({m.max_entries} entries); nothing was changed")
    raise libbpf.BpfError(-rc, f"map update on {m.name.value}: {os.strerror(-rc)}")


def pin_maps(iface: state.Iface, fds: dict[MapName, int]) -> None:
    d = iface.pin_dir
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, fd in fds.items():
        p = d / name.value
        if p.exists():
            p.unlink()
        libbpf.obj_pin(fd, str(p))


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


def attach(ifname: str, protect: list[str], mode: str = "auto", monitor: bool = False, force: bool = False,
           defines: dict[str, int] | None = None, level: str | None = None) -> AttachResult:
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
        raise UserError(f"{iface.name} has a foreign XDP program attached (id {att.prog_id}, '{att.prog_name}'); "
                        f"use --force to replace it")
    return att


def attach_locked(iface: state.Iface, addrs, mode: str, monitor: bool, force: bool,
                  att: dataplane.XdpAttachment | None, defines: dict[str, int] | None = None,
                  level: str | None = None) -> AttachResult:
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
        maps[MapName.CONFIG].set(ctypes.c_uint32(0), Config(CFG_ENABLED, 0, 0, 0, ABI_VERSION))
        # The level's fragment policy too (interface-wide: every address gets the same level here).
        policy.write_global_policy(maps, policy.GlobalPolicy(
            drop_fragments=level is not None and levels.fragments_dropped([level]),
            monitor_mask=ALL_REASONS_MASK if monitor else 0))
        for slot, a in enumerate(addrs):
            maps[MapName.PROT4 if a.version == 4 else MapName.PROT6].set(policy.prot_key(a), policy.new_protected(slot))
            if level is not None:  # protected before anyone tunes it (levels.py)
                policy.write_address_policy(maps, a, levels.address_policy(level, policy.AddressPolicy()))
        pin_maps(iface, lp.map_fds)
        libbpf.obj_pin(lp.prog_fd, str(iface.pin_dir / PROG_PIN))
        libbpf.obj_pin(lp.egress_fd, str(iface.pin_dir / tcpstate.EGRESS_PIN))
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
        state.write_state(iface, {
            "iface": ifname,
            "ifindex": iface.index,
            "netns": iface.nskey,
            "prog_id": prog_id,
            "mode": took,
            "requested_mode": mode,
            "program_sha256": dataplane.program_sha256(defines),
            "protected": [str(a) for a in addrs],
            "monitor": monitor,
            "attached_at": time.time(),
            **({levels.STATE_KEY: {str(a): level for a in addrs}} if level is not None else {}),
        })
    finally:
        lp.close()
    return AttachResult(ifname, iface.index, prog_id, took, [str(a) for a in addrs], monitor,
                        str(iface.pin_dir), notes)


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
    return st.get("program_sha256") != dataplane.program_sha256(defines)


FILTER_VECTORS = frozenset({MapName.FSEL, MapName.FHEAD, MapName.FVEC, MapName.FDEF})


def refill_derived(plan: migrate.Plan, maps: dict[MapName, BpfMap]) -> None:
    """Before the swap: maps the new program derives from others, when they were not shared
    with the old program — the compiled filter vectors, from the ordered filter list (else the
    filters would be off until the next filter change). The maps' fds belong to the caller."""
    if any(s.name in FILTER_VECTORS and s.action != "keep" for s in plan.steps):
        policy.compile_filters(maps, tuple(policy.read_filter_table(maps)))


def _abi_version(config_fd: int) -> int:
    """xg_config.abi_version of a live config map, whatever its value size (fields are only
    ever appended to xg_config)."""
    shape = migrate.shape_of(config_fd)
    buf = ctypes.create_string_buffer(max(shape.value_size, ctypes.sizeof(Config)))
    if libbpf.lib().bpf_map_lookup_elem(config_fd, ctypes.byref(ctypes.c_uint32(0)), buf) != 0:
        return ABI_VERSION
    return Config.from_buffer_copy(buf.raw[: ctypes.sizeof(Config)]).abi_version or 1


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
        old = dataplane.map_fds_of_prog(att.prog_id)
        try:
            if MapName.CONFIG not in old:
                raise UserError(f"{ifname}: the attached program has no {MapName.CONFIG.value}; detach and re-attach")
            version = _abi_version(old[MapName.CONFIG])
            if version != ABI_VERSION:
                raise UserError(f"{ifname}: its maps have ABI version {version}, this xdpguard has {ABI_VERSION} and "
                                f"knows no migration; export, detach, attach and apply to move over")
            plan = migrate.plan(old, defines)
            if not force and not needs_upgrade(iface, defines) and not plan.changes_shapes:
                return UpgradeResult(ifname, "current", att.prog_id, att.prog_id, len(plan.by_action("keep")), [])
            return _upgrade_locked(iface, att, old, plan, defines)
        finally:
            for fd in old.values():
                os.close(fd)


def _upgrade_locked(iface: state.Iface, att: dataplane.XdpAttachment, old: dict[MapName, int],
                    plan: migrate.Plan, defines: dict[str, int] | None) -> UpgradeResult:
    ifname = iface.name
    state.ensure_bpffs()
    staging = iface.pin_dir / f"upgrade-{os.getpid()}"  # bpffs refuses names with a dot
    migrate.remove_staging(staging)
    iface.pin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        migrate.commit_pins(lp.map_fds, staging, iface.pin_dir)
        pin = iface.pin_dir / PROG_PIN
        if pin.exists():
            pin.unlink()
        libbpf.obj_pin(lp.prog_fd, str(pin))
        tcpstate.pin_egress(iface.pin_dir, lp.egress_fd)
        swap_notes = tcpstate.swap(iface.index, lp.egress_fd, {n: BpfMap(n, fd) for n, fd in lp.map_fds.items()})
        new = dataplane.query(iface.index)
        st = state.read_state(iface) or {}
        st.update(prog_id=new.prog_id if new else 0, program_sha256=dataplane.program_sha256(defines),
                  upgraded_at=time.time())
        state.write_state(iface, st)
    finally:
        migrate.remove_staging(staging)
        lp.close()
    return UpgradeResult(ifname, "upgraded", att.prog_id, new.prog_id if new else 0, len(kept),
                         sorted(n.value for n in plan.by_action("new") if n not in migrate.UNPINNED),
                         plan.notes() + swap_notes)


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
            return DetachResult(iface.name, None, ["no xdpguard program was attached; removed leftover pins and state",
                                                   *notes])
        what = "nothing is attached" if att is None else f"the attached program '{att.prog_name}' is not ours"
        raise UserError(f"{iface.name} is not protected by xdpguard ({what})")
    dataplane.detach(iface.index, att)
    state.remove_pins(iface)
    state.remove_state(iface)
    return DetachResult(iface.name, att.prog_id, notes)


def pick_iface(ifname: str | None) -> str:
    """--iface may be omitted when exactly one interface of this namespace is protected."""
    if ifname:
        return ifname
    ifs = state.protected_ifaces()
    if len(ifs) == 1:
        return ifs[0]
    if not ifs:
        raise UserError("no interface is protected in this network namespace; give --iface")
    raise UserError(f"several interfaces are protected ({', '.join(ifs)}); give --iface")


def open_guard(ifname: str | None) -> Guard:
    """The guard of an interface, for reading (no lock)."""
    state.require_root()
    return Guard.open(state.resolve_iface(pick_iface(ifname)))


@contextmanager
def locked_guard(ifname: str | None):
    """For a change: the interface lock first, then the maps (never the other way round, so a
    command never works on maps that a concurrent detach or upgrade is replacing)."""
    state.require_root()
    iface = state.resolve_iface(pick_iface(ifname))
    with state.iface_lock(iface):
        g = Guard.open(iface)
        try:
            yield g
        finally:
            g.close()


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
            out.append(StatusResult(
                iface=name, ifindex=g.iface.index, prog_id=g.att.prog_id, mode=g.att.mode,
                protected=g.protected(), monitor=bool(cfg.monitor_mask),
                list_sizes={w: g.list_size(w) for w in LISTS}, counters=counters, totals=totals,
                pinned=g.pinned(),
            ))
    return out


def check_whole_family(which: str, prefixes, force: bool) -> None:
    """A blocklist entry for every address drops all traffic to the protected addresses; an
    allowlist entry for every address turns the protection off. Either needs force."""
    wide = whole_family(prefixes)
    if wide and not force:
        what = "drops all traffic to the protected addresses" if which == "block" else \
            "lets every source skip every check (no protection left)"
        raise UserError(f"{which}list entry {wide[0]} covers every address of its family and {what}; "
                        f"give --force if you mean it")


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


def list_add(which: str, ifname: str | None, cidrs: list[str], ttl: float | None = None) -> ListChangeResult:
    prefixes, normalised = parse_many(cidrs)
    expires = check_ttl(ttl)
    with locked_guard(ifname) as g:
        g.sweep_expired(which)
        added, updated = g.upsert(which, prefixes, expires)
    return ListChangeResult(g.iface.name, which, "add", added, updated, 0, [], normalised)


def list_del(which: str, ifname: str | None, cidrs: list[str]) -> ListChangeResult:
    prefixes, normalised = parse_many(cidrs)
    with locked_guard(ifname) as g:
        removed, missing = g.delete(which, prefixes)
        g.sweep_expired(which)
    return ListChangeResult(g.iface.name, which, "del", 0, 0, removed, missing, normalised)


def list_load(which: str, ifname: str | None, path: str | Path, ttl: float | None = None,
              parsed: PrefixFile | None = None) -> ListChangeResult:
    """`parsed`: the file already read (read_prefix_file(path)), so a million lines are parsed once."""
    pf = read_prefix_file(path) if parsed is None else parsed
    expires = check_ttl(ttl)
    with locked_guard(ifname) as g:
        added, updated = g.upsert(which, pf.prefixes, expires)
    note = [f"{pf.normalised} prefixes had host bits set and were normalised"] if pf.normalised else []
    return ListChangeResult(g.iface.name, which, "load", added, updated, 0, [], note)


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


def _port_runs(g: Guard) -> list[PortRun]:
    out = []
    for (addr, proto), runs in g.open_ports().items():
        for lo, hi, flags in runs:
            by = [n for bit, n in ((PORT_BY_OPERATOR, "operator"), (PORT_BY_FORWARD, "forward"),
                                   (PORT_BY_HTTP, "http")) if flags & bit]
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
    if proto not in PROTO_NUMBERS:
        raise UserError(f"unknown protocol '{proto}': use tcp or udp")
    return parse_port_range(port_range)


def ports_change(ifname: str | None, proto: str, port_range: str, protected: str | None, open_: bool,
                 by_bit: int = PORT_BY_OPERATOR) -> PortResult:
    lo, hi = check_port_run(proto, port_range)
    with locked_guard(ifname) as g:
        addrs = _select_protected(g, protected)
        changed = g.change_ports(addrs, proto, lo, hi, by_bit, open_)
        return PortResult(g.iface.name, "open" if open_ else "close", changed, _port_runs(g))


def ports_list(ifname: str | None) -> PortResult:
    with open_guard(ifname) as g:
        return PortResult(g.iface.name, "list", 0, _port_runs(g))


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
            bans = policy.sweep_bans(g.maps, _now_ns())
            if time.monotonic() - _VERIFIED_SWEPT.get(name, -VERIFIED_SWEEP_S) >= VERIFIED_SWEEP_S:
                policy.sweep_verified(g.maps, _now_ns())  # expired verified clients; room for learning
                policy.sweep_dst_buckets(g.maps, _now_ns())  # idle per-port buckets: room again after a flood
                policy.sweep_budgets(g.maps, _now_ns())  # idle budgets of no open port (budget.h)
                _VERIFIED_SWEPT[name] = time.monotonic()
            out.append(SweepResult(name, entries, bans))
    return out
