"""Make the kernel match desired state, and read desired state back from the kernel.

- `export_live()` reads what is realised (program, maps, the interface records) as a
  config.Desired; `export` of that re-applies to nothing.
- `realise(spec)` makes one interface match its spec: attaches when nothing is attached (after a
  reboot), otherwise adopts the attached program and writes only the differences — map entries
  in place, the nft table in one batch, the sysctls. Never detach-then-attach. Idempotent.
- `apply(desired)` stores the desired state (fsynced) first, then realises every interface; if
  any part fails, every touched interface and the store go back to what they were.

Dynamic state (bans, list entries with a TTL, health, counters) is left alone throughout.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import json
import socket
import struct
from dataclasses import asdict, dataclass, field, replace

from .kernel import abi, dataplane
from . import fastfwd, geo, levels, policy, protection, state, store
from .kernel.abi import FWD_DEFINE
from .model.desired import (
    AddressSpec,
    Desired,
    ForwardSpec,
    InterfaceSpec,
    norm_port_runs,
    norm_port_limits,
    norm_interface,
    ALL_DROP_MASK,
)
from .desired.load import http_services, load
from .desired.diff import diff
from .desired.dump import to_toml
from .model import vocab
from .observe import events
from .nat import forward
from .errors import UserError
from . import watermark as wmark
from .l7 import engine as l7engine
from .prefixes import Prefix
from .result import as_dict as _as_dict

MAX_PORT_RANGE_WRITES = 65536 * 2


# ---- reading what is realised ----


_LIST_VALUE = struct.Struct("<QQII")  # abi.ListEntry: hits, expires_ns, prefixlen, reserved


def _permanent(g: protection.Guard, which: str) -> frozenset[Prefix]:
    """The list's entries without an expiry (entries with one are dynamic), from raw batch dumps."""
    out: set[Prefix] = set()
    vs = _LIST_VALUE.size
    for fam, m in g.list_maps(which):
        keys, values, n = m.dump_raw()
        alen = 4 if fam == 4 else 16
        ks = len(keys) // n if n else 0
        host = ks == alen  # exact hashes are keyed by the bare address; tries by (prefixlen, addr)
        for i in range(n):
            _, expires, plen, _ = _LIST_VALUE.unpack_from(values, i * vs)
            if expires:
                continue
            addr = keys[i * ks : i * ks + ks] if host else keys[i * ks + 4 : i * ks + 4 + alen]
            out.add(Prefix(fam, addr, plen))
    return frozenset(out)


def export_guard(g: protection.Guard, lists: bool = True, stored: InterfaceSpec | None = None) -> InterfaceSpec:
    """The interface's realised desired state. With lists=False the permanent list entries are
    taken from `stored` (a verb that did not touch lists need not walk a million entries)."""
    st = state.read_state(g.iface) or {}
    runs = g.open_ports()
    plims = g.read_port_limits()
    addrs = []
    lv = st.get(levels.STATE_KEY, {})
    cls = st.get(forward.CONNLIMIT_KEY) or {}
    wms = g.watermarks()
    for a in g.protected_addrs():
        pol = g.read_address_policy(a)
        opened = [
            (proto, lo, hi)
            for (addr, proto), rs in runs.items()
            if addr == str(a)
            for lo, hi, flags in rs
            if flags & abi.PORT_BY_OPERATOR
        ]
        pl = [(proto, port, port, lim) for (addr, proto, port), lim in plims.items() if addr == str(a)]
        addrs.append(
            AddressSpec(
                a,
                frozenset(pol.blocked),
                pol.limits.effective(),
                pol.syn,
                norm_port_runs(opened),
                norm_port_limits(pl),
                lv.get(str(a)) if lv.get(str(a)) in levels.PRESETS else None,
                forward.stored_connlimit(cls.get(str(a))),
                geo=g.geo_of(a),
                watermark=wmark.exported(state.get(st, state.WATERMARK), wms, a),
            )
        )
    glob = g.read_global_policy()
    if lists or stored is None:
        block, allow = _permanent(g, "block"), _permanent(g, "allow")
    else:
        block, allow = stored.block, stored.allow
    fwd = tuple(ForwardSpec(sr.rule, sr.udp_probe) for sr in forward.stored_rules(g.iface.name, st))
    http = l7engine.from_record(g.iface.name, st.get(l7engine.HTTP_KEY))
    addrs = [replace(a, http=http.get(a.address, ())) for a in addrs]
    return norm_interface(
        InterfaceSpec(
            g.iface.name,
            st.get("requested_mode", "auto"),
            tuple(addrs),
            glob,
            block,
            allow,
            fwd,
            events.EventConfig.from_json(st.get(events.STATE_KEY)),
            replace(g.read_verify_settings(), udp_learning=True),
            g.fastfwd_via(),
        )
    )  # the switch is the daemon's


def export_iface(name: str, lists: bool = True) -> InterfaceSpec | None:
    """None when xdpguard does not protect `name` (nothing or something foreign attached)."""
    iface = state.resolve_iface(name)
    att = dataplane.query(iface.index)
    if not dataplane.is_ours(att):
        return None
    with protection.Guard.open(iface) as g:
        return export_guard(g, lists, store.stored_interface(name) if not lists else None)


def export_live() -> Desired:
    """Every interface xdpguard protects in this namespace, plus the stored daemon settings."""
    state.require_root()
    stored = store.load()
    specs = []
    for name in sorted(set(state.protected_ifaces()) | {i.name for i in stored.interfaces}):
        try:
            state.resolve_iface(name)
        except UserError:
            continue  # the interface went away (a corrupt record of one that is here is an error)
        spec = export_iface(name)
        if spec is not None:
            specs.append(spec)
    return Desired(tuple(sorted(specs, key=lambda s: s.name)), stored.daemon)


def protection_ifaces() -> list[str]:
    """Interfaces with an interface record or a stored spec in this namespace."""
    names = set(state.protected_ifaces())
    try:
        names |= {i.name for i in store.load().interfaces}
    except UserError:
        pass
    return sorted(names)


# ---- making the kernel match ----


def _port_set(runs) -> set[tuple[str, int]]:
    return {(p, n) for p, lo, hi in runs for n in range(lo, hi + 1)}


def _port_limit_map(pls) -> dict[tuple[str, int], policy.Limits]:
    return {(p, n): lim for p, lo, hi, lim in pls for n in range(lo, hi + 1)}


def _change_ports(g, addr, ports: set[tuple[str, int]], add: bool) -> None:
    by: dict[str, list[int]] = {}
    for p, n in ports:
        by.setdefault(p, []).append(n)
    for proto, nums in by.items():
        for lo, hi in vocab.runs(nums):
            g.change_ports([addr], proto, lo, hi, abi.PORT_BY_OPERATOR, add)


def _write_address(g, old: AddressSpec | None, new: AddressSpec) -> None:
    a = new.address
    if old is None or (old.blocked, old.limits, old.syn) != (new.blocked, new.limits, new.syn):
        g.write_address_policy(a, new.policy)
    oldp = _port_set(old.open_ports) if old else set()
    newp = _port_set(new.open_ports)
    _change_ports(g, a, newp - oldp, True)
    _change_ports(g, a, oldp - newp, False)
    oldl = _port_limit_map(old.port_limits) if old else {}
    newl = _port_limit_map(new.port_limits)
    for (proto, n), lim in newl.items():
        if oldl.get((proto, n)) != lim:
            g.write_port_limits(a, proto, n, n, lim)
    for proto, n in oldl.keys() - newl.keys():
        g.write_port_limits(a, proto, n, n, None)


def _remove_address(g, old: AddressSpec) -> None:
    a = old.address
    _change_ports(g, a, _port_set(old.open_ports), False)
    for proto, n in _port_limit_map(old.port_limits):
        g.write_port_limits(a, proto, n, n, None)
    g.remove_protected(a)


def _write_recorded(g: protection.Guard, f: state.Field, realise) -> tuple[list[str], bool]:
    """Write the kernel, then the one field of the interface record that says what it holds:
    realise(st) → (the field's new value, notes), with st the record before. → (notes, whether
    the field changed)."""
    rec, notes = realise(state.read_state(g.iface) or {})
    return notes, state.write_field(g.iface, f, rec)


def write_geo(g: protection.Guard, addresses) -> list[str]:
    """The geo rules of the interface's addresses and the tries of their countries (geo.py)."""
    notes, changed = _write_recorded(g, state.GEO, lambda st: geo.realise(g, addresses, st))
    if changed and any(a.http for a in addresses):  # mode cc: HAProxy's geo map (l7/haproxy_config.py)
        notes += [f"HAProxy {l7engine.realise(l7engine.services_of(forward._iface_states()))} (geo)"]
    return notes


def write_watermark(g: protection.Guard, addresses) -> list[str]:
    """The watermarked UDP services of the interface's addresses (watermark.py): keys read from
    their files into xg_wm_hash; the record keeps file names, never keys."""
    return _write_recorded(g, state.WATERMARK, lambda st: (wmark.record(addresses), g.realise_watermarks(addresses)))


def _write_events(g, cfg: events.EventConfig) -> None:
    st = state.read_state(g.iface) or {}
    st[events.STATE_KEY] = cfg.to_json()
    st["protected"] = [str(a) for a in g.protected_addrs()]
    state.write_state(g.iface, st)


def _http_ports(spec: InterfaceSpec) -> set[tuple]:
    return {(a.address, svc.port) for a in spec.addresses for svc in a.http}


def _write_http(g, old: InterfaceSpec, new: InterfaceSpec) -> bool:
    """The HTTP services' record and their ports (PORT_BY_HTTP: to the local stack, no NAT).
    True when they changed (the caller rebuilds the NAT table and realises HAProxy)."""
    if [a.http for a in old.addresses if a.http] == [a.http for a in new.addresses if a.http]:
        return False
    st = state.read_state(g.iface) or {}
    st[l7engine.HTTP_KEY] = [
        r for a in new.addresses for r in l7engine.record(replace(svc, listen=(a.address,)) for svc in a.http)
    ]
    state.write_state(g.iface, st)
    oldp, newp = _http_ports(old), _http_ports(new)
    for addr, port in sorted(newp - oldp, key=str):
        g.change_ports([addr], "tcp", port, port, abi.PORT_BY_HTTP, True)
    for addr, port in sorted(oldp - newp, key=str):
        g.change_ports([addr], "tcp", port, port, abi.PORT_BY_HTTP, False)
    return True


@dataclass
class ListIO:
    """A list verb's own entries, for write_differences: `upsert` (with expires_ns; 0 is
    permanent) writes every named entry even when the spec already held it (a refresh keeps its
    hit count), `delete` removes every named entry, a dynamic one too. Filled in with the counts."""

    which: str
    upsert: list[Prefix] | None = None
    expires_ns: int = 0
    delete: list[Prefix] | None = None
    added: int = 0
    updated: int = 0
    removed: int = 0
    missing: list[str] = field(default_factory=list)


def write_differences(
    g: protection.Guard, old: InterfaceSpec, new: InterfaceSpec, rebuild_nat: bool = False, io: ListIO | None = None
) -> list[str]:
    """Write what differs between `old` (realised) and `new` into g's maps, nft and records.
    Order: new addresses, policies, ports, list additions, forwards, list removals, events,
    removed addresses — so a source blocked in both never passes, and no port is closed
    before the rule that needs it is gone. `io`: a list verb's named entries (ListIO)."""
    notes = []
    if new.fast_path != old.fast_path:
        fastfwd.check(g, new.fast_path)  # refused before anything is written
    for a in new.addresses:
        if old.address(a.address) is None:
            g.add_protected(a.address)
    if old.global_ != new.global_:
        g.write_global_policy(new.global_, old.global_)
    if old.verify != new.verify:  # the daemon's UDP-learning switch stays as it is
        g.write_verify_settings(replace(new.verify, udp_learning=g.read_verify_settings().udp_learning))
    for a in new.addresses:
        _write_address(g, old.address(a.address), a)
    if [(a.address, a.geo) for a in old.addresses] != [(a.address, a.geo) for a in new.addresses]:
        notes += write_geo(g, new.addresses)
    if [(a.address, a.watermark) for a in old.addresses] != [(a.address, a.watermark) for a in new.addresses]:
        notes += write_watermark(g, new.addresses)
    for which in ("block", "allow"):
        if io is not None and io.which == which and io.upsert is not None:
            io.added, io.updated = g.upsert(which, io.upsert, io.expires_ns)  # every named entry, refreshed
        elif getattr(new, which) - getattr(old, which):
            g.upsert(which, sorted(getattr(new, which) - getattr(old, which)), 0)
    http_changed = _write_http(g, old, new)
    rebuild_nat = rebuild_nat or http_changed  # the SYN-cookie rules of the HTTP ports live in the NAT table
    want = {str(a.address): asdict(a.connlimit) for a in new.addresses if a.connlimit is not None}
    st = state.read_state(g.iface) or {}
    if (st.get(forward.CONNLIMIT_KEY) or {}) != want:
        st[forward.CONNLIMIT_KEY] = want
        state.write_state(g.iface, st)
        rebuild_nat = True  # the connlimit chain lives in the NAT table
    if old.forwards != new.forwards or rebuild_nat:
        notes += forward.set_rules(g, [(f.rule, f.udp_probe) for f in new.forwards], rebuild=rebuild_nat)
    for which in ("block", "allow"):
        gone = getattr(old, which) - getattr(new, which)
        if io is not None and io.which == which and io.upsert is not None:
            gone -= set(io.upsert)  # refreshed with a TTL: dynamic from now on, not deleted
        if io is not None and io.which == which and io.delete is not None:
            io.removed, io.missing = g.delete(which, io.delete)  # every named entry, dynamic ones too
        elif gone:
            g.delete(which, sorted(gone))
    for a in old.addresses:
        if new.address(a.address) is None:
            _remove_address(g, a)
    if http_changed:
        res = l7engine.realise(l7engine.services_of(forward._iface_states()))
        notes.append(f"HAProxy {res}: {len(http_services([new]))} HTTP service(s) on {new.name}")
    if old.events != new.events or {str(a) for a in old.protected} != {str(a) for a in new.protected}:
        _write_events(g, new.events)
    if [a.level for a in old.addresses] != [a.level for a in new.addresses] or {str(a) for a in old.protected} != {
        str(a) for a in new.protected
    }:
        st = state.read_state(g.iface) or {}
        st[levels.STATE_KEY] = {str(a.address): a.level for a in new.addresses if a.level is not None}
        state.write_state(g.iface, st)
    if old.fast_path != new.fast_path:  # after the forwards: the flows it takes are theirs
        notes += fastfwd.realise(g, old.fast_path, new.fast_path)
    if old.mode != new.mode:
        st = state.read_state(g.iface) or {}
        st["requested_mode"] = new.mode
        state.write_state(g.iface, st)
        if new.mode != "auto" and g.att.mode != new.mode:
            notes.append(f"{new.name}: attached in {g.att.mode} mode; mode {new.mode} takes effect at the next attach")
    return notes


@dataclass(frozen=True)
class RealiseResult:
    iface: str
    action: str  # attached | updated | unchanged | foreign | missing
    notes: list[str] = field(default_factory=list)
    to_dict = _as_dict


def foreign_note(name: str, att: dataplane.XdpAttachment) -> str:
    return (
        f"WARNING: {name}: a foreign XDP program (id {att.prog_id}, '{att.prog_name}') replaced xdpguard; "
        f"the protected addresses are NOT filtered by xdpguard. Not fighting over it: detach it, or "
        f"`xdpguard attach --force`."
    )


def realise(spec: InterfaceSpec, rebuild_nat: bool = False, force: bool = False, lists: bool = True) -> RealiseResult:
    """Make one interface match `spec`. Takes the interface lock before it opens any map. With
    lists=False the list maps are not walked (the daemon's periodic check: cheap at 1M entries)."""
    try:
        iface = state.resolve_iface(spec.name)
    except UserError as exc:
        return RealiseResult(spec.name, "missing", [exc.message])
    with state.iface_lock(iface):
        att = dataplane.query(iface.index)
        action = "updated"
        notes: list[str] = []
        if att is None or (force and not dataplane.is_ours(att)):
            res = protection.attach_locked(
                iface, spec.protected, spec.mode, monitor=False, force=force, att=att, defines=fast_defines(spec)
            )
            notes += res.notes
            action = "attached"
        elif not dataplane.is_ours(att):
            return RealiseResult(spec.name, "foreign", [foreign_note(spec.name, att)])
        with protection.Guard.open(iface) as g:
            live = export_guard(g, lists or action == "attached", stored=spec)
            if action == "attached":
                # the fresh program protects the addresses with default policy; forwards and
                # events of an earlier life of the interface record are gone with it
                live = replace(
                    live,
                    forwards=(),
                    events=events.EventConfig(),
                    mode=spec.mode,
                    addresses=tuple(replace(a, http=()) for a in live.addresses),
                )
            if live == spec and not rebuild_nat:
                return RealiseResult(spec.name, "unchanged" if action != "attached" else action, notes)
            notes += write_differences(g, live, spec, rebuild_nat)
    return RealiseResult(spec.name, action, notes)


def fast_defines(spec: InterfaceSpec | None, defines: dict[str, int] | None = None) -> dict[str, int] | None:
    """The -D defines of a compile for `spec`: a spec with the fast path on needs the program
    compiled with it (kernel.abi.FWD_DEFINE), whatever else was asked."""
    if spec is None or spec.fast_path is None:
        return defines
    return {**(defines or {}), FWD_DEFINE: 1}


def _detach_quietly(name: str) -> list[str]:
    try:
        return detach(name).notes
    except UserError as exc:
        return [exc.message]


# ---- management address guard ----


def management_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses of the interfaces that carry a default route in this namespace."""
    from pyroute2 import IPRoute  # a third-party import kept lazy like bcc (startup cost)

    out = set()
    with IPRoute() as ipr:
        idx = set()
        for fam in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_default_routes(family=fam):
                oif = r.get_attr("RTA_OIF")
                if oif:
                    idx.add(oif)
                for mp in r.get_attr("RTA_MULTIPATH") or []:
                    idx.add(mp["oif"])
        for a in ipr.get_addr():
            if a["index"] in idx:
                out.add(ipaddress.ip_address(a.get_attr("IFA_ADDRESS")))
    return out


def check_management(desired: Desired) -> None:
    mgmt = management_addresses()
    for s in desired.interfaces:
        hit = [a for a in s.protected if a in mgmt]
        if hit:
            raise UserError(
                f"{s.name}: protecting {hit[0]} would filter this host's management address "
                f"(it carries the default route); use --force if you mean it"
            )
    ruled = [a for s in desired.interfaces for a in s.addresses if a.geo is not None]
    if ruled and mgmt:
        geo.check_management(ruled, geo.GeoDB.open(), mgmt)


def check_removals(live: Desired, desired: Desired) -> None:
    """What an apply takes only with force: a config with no interface while some are protected
    (an empty or comment-only file: every protection goes), and new list entries that cover a
    whole family (what `block add 0.0.0.0/0` needs --force for). Entries already live are not
    asked again: `export` then `apply` stays a no-op."""
    if live.interfaces and not desired.interfaces:
        raise UserError(
            f"the config protects no interface: applying it removes the protection of "
            f"{', '.join(s.name for s in live.interfaces)}; give --force if you mean it"
        )
    for spec in desired.interfaces:
        before = live.interface(spec.name)
        for which in ("block", "allow"):
            new = getattr(spec, which) - (getattr(before, which) if before is not None else frozenset())
            try:
                protection.check_whole_family(which, new, False)
            except UserError as exc:
                raise UserError(f"{spec.name}: {exc.message}") from None


# ---- verbs ----


@dataclass(frozen=True)
class ApplyResult:
    dry_run: bool
    changes: list[dict]
    text: list[str]
    warnings: list[str]
    results: list[RealiseResult]
    generation: int
    to_dict = _as_dict


def _changes(old: Desired, new: Desired) -> tuple[list[dict], list[str]]:
    ch = diff(old, new)
    return [asdict(c) for c in ch], [c.text() for c in ch]


def diff_file(path: str) -> ApplyResult:
    state.require_root()
    desired, warnings = load(path)
    changes, text = _changes(export_live(), desired)
    return ApplyResult(True, changes, text, warnings, [], store.load_meta().generation)


def apply_desired(
    desired: Desired,
    source: str | None = None,
    source_sha: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    warnings: list[str] | None = None,
) -> ApplyResult:
    state.require_root()
    if not force:
        check_management(desired)
    live = export_live()
    changes, text = _changes(live, desired)
    if dry_run:
        return ApplyResult(True, changes, text, warnings or [], [], store.load_meta().generation)
    if not force:
        check_removals(live, desired)
    with store.locked():
        old_store = store.load()
        old_meta = store.load_meta()
        meta = store.save(desired, source, source_sha, keep_source=False, previous=old_store)
    touched: list[str] = []
    results: list[RealiseResult] = []
    try:
        for spec in desired.interfaces:
            touched.append(spec.name)
            r = realise(spec)
            if r.action == "missing" or r.action == "foreign":
                raise UserError("; ".join(r.notes))
            results.append(r)
        for gone in live.interfaces:
            if desired.interface(gone.name) is None:
                touched.append(gone.name)
                results.append(RealiseResult(gone.name, "detached", _detach_quietly(gone.name)))
    except BaseException:
        for name in reversed(touched):
            before = live.interface(name)
            try:
                if before is None:
                    _detach_quietly(name)
                else:
                    realise(before)
            except Exception:  # rollback is best effort; the original error is what we report
                pass
        with store.locked():
            store.save(old_store, old_meta.source, old_meta.source_sha256, keep_source=False, previous=desired)
        raise
    return ApplyResult(False, changes, text, warnings or [], results, meta.generation)


def apply_file(path: str, force: bool = False, dry_run: bool = False) -> ApplyResult:
    desired, warnings = load(path)
    return apply_desired(desired, str(path), store.file_sha256(path), force=force, dry_run=dry_run, warnings=warnings)


@dataclass(frozen=True)
class ExportResult:
    text: str
    desired: dict
    to_dict = _as_dict


def export() -> ExportResult:
    d = export_live()
    text = to_toml(d)
    return ExportResult(text, json.loads(json.dumps(_jsonable(d))))


def _jsonable(obj):
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, (frozenset, set)):
        return sorted(_jsonable(x) for x in obj)
    if isinstance(obj, (list, tuple)):
        return [_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, (ipaddress.IPv4Address, ipaddress.IPv6Address)) or isinstance(obj, Prefix):
        return str(obj)
    return obj


# ---- the imperative verbs: an edit of the desired spec, stored, then realised ----


def record(name: str, lists: bool = False) -> None:
    """After `attach` (and change()): the store takes the interface's realised state."""
    spec = export_iface(name, lists=lists)
    store.update_interface(name, lambda old: spec)


def edit(ifname: str | None, f, result, lists: bool = False, io: ListIO | None = None, dynamic=None):
    """An imperative verb (block add, limit set, …), one writer, one open of the maps:
    1. under the interface lock, the maps are opened once and the realised spec read (the
       permanent list entries are the store's unless `lists`);
    2. spec' = f(spec, g): the verb's edit; it validates (UserError), so bad input stores and
       writes nothing;
    3. spec' is stored (fsynced) before the kernel is touched — a SIGKILL from here on leaves the
       store ahead of the kernel, and the daemon (or the next apply) converges;
    4. write_differences (the reconciler's writer, the only code that writes desired state into
       the kernel) realises spec - spec'; `dynamic(g)`, if given, runs just before it (dynamic
       state straight to the map owner: sweeps). If the write fails, the store is put back.
    Returns result(g, spec, spec', notes), read while the maps are still open."""
    state.require_root()
    name = protection.pick_iface(ifname)
    iface = state.resolve_iface(name)
    with state.iface_lock(iface), protection.Guard.open(iface) as g:
        live = export_guard(g, lists, store.stored_interface(name) if not lists else None)
        after = norm_interface(f(live, g))

        def write():
            if dynamic is not None:
                dynamic(g)
            return write_differences(g, live, after, io=io)

        notes, _, _ = _store_first(name, lambda before: after, write)
        return result(g, live, after, notes)


# A test's fault point (test_desired): a verb that stored its change dies right there, SIGKILLed,
# before it touches the kernel; the daemon or the next verb must converge from the store.
KILL_AFTER_STORE = "XDPGUARD_KILL_AFTER_STORE"


def _store_first(name: str, make, write):
    """make(stored spec of `name` or None) → the spec to store (None: nothing), under the store
    lock; it is stored (fsynced) unless unchanged, then write() runs. If write fails, the store is
    put back as it was — rewritten, not read back (a prediction the loader refuses must not stick)
    — and the error goes on. Returns (write's result, the spec stored before, the spec stored)."""
    with store.locked():
        desired = store.load()
        before = desired.interface(name)
        after = make(before)
        stored = after is not None and after != before
        if stored:
            store.save(desired.with_interface(after), previous=desired)
    if stored and os.environ.get(KILL_AFTER_STORE) == "1":
        os.kill(os.getpid(), signal.SIGKILL)  # tests: the crash between the store and the kernel
    try:
        res = write()
    except BaseException:
        if stored:
            with store.locked():
                store.save(desired, previous=desired.with_interface(after))
        raise
    return res, before, after


def forget(name: str) -> None:
    """After `detach`: the interface leaves the desired state."""
    store.update_interface(name, lambda old: None)


def _level_spec(a, level: str | None) -> AddressSpec:
    if level is None:
        return AddressSpec(a)
    lp = levels.address_policy(level, policy.AddressPolicy())
    return AddressSpec(a, frozenset(lp.blocked), lp.limits.effective(), lp.syn, level=level)


def attach(
    ifname: str,
    protect: list[str],
    mode: str = "auto",
    monitor: bool = False,
    force: bool = False,
    defines: dict[str, int] | None = None,
    level: str | None = levels.DEFAULT_LEVEL,
) -> protection.AttachResult:
    """`xdpguard attach`, store first: the interface's desired spec (what the store holds for it,
    for the addresses now protected, or the new addresses at `level`: protected before anyone
    tunes it) is stored (fsynced) before the kernel is touched and put back if the attach fails;
    then the program is attached, the stored policy brought back, and the realised state recorded.
    A SIGKILL in between leaves the store ahead of the kernel: the daemon converges."""
    if level is not None:
        levels.preset(level)  # bad input stores nothing
    addrs = protection.parse_protect(protect)
    state.require_root()
    protection.check_attachable(state.resolve_iface(ifname), force)  # refused: nothing stored
    keep = set(addrs)

    def predict(stored: InterfaceSpec | None) -> InterfaceSpec:
        base = (
            stored
            if stored is not None
            else InterfaceSpec(
                ifname,
                global_=policy.GlobalPolicy(drop_fragments=level is not None and levels.fragments_dropped([level])),
            )
        )
        spec = replace(
            base,
            mode=mode,
            addresses=tuple(
                sorted(
                    (base.address(a) or _level_spec(a, level) for a in addrs),
                    key=lambda x: (x.address.version, x.address),
                )
            ),
            forwards=tuple(f for f in base.forwards if f.rule.protected in keep),
            global_=replace(base.global_, monitor_mask=ALL_DROP_MASK if monitor else base.global_.monitor_mask),
        )
        return norm_interface(
            replace(
                spec,
                events=replace(
                    spec.events,
                    addresses={a: t for a, t in spec.events.addresses.items() if ipaddress.ip_address(a) in keep},
                ),
            )
        )

    predicted: list[InterfaceSpec] = []

    def predict_kept(stored: InterfaceSpec | None) -> InterfaceSpec:
        predicted.append(predict(stored))
        return predicted[-1]

    extra: dict = {}
    if level is not None:
        extra["level"] = level  # every address gets it; the stored ones get their stored policy back below

    def attach_now():
        d = fast_defines(predicted[-1], defines)  # a stored spec with the fast path compiles it in
        if d:
            extra["defines"] = d
        return protection.attach(ifname, protect, mode=mode, monitor=monitor, force=force, **extra)

    res, stored, spec = _store_first(ifname, predict_kept, attach_now)
    if stored is not None:
        r = realise(spec)
        res = replace(res, notes=[*res.notes, f"restored the stored policy of {ifname}", *r.notes])
    record(ifname, lists=True)
    return res


def upgrade(ifname: str, force: bool = False, fast_forward: bool = False) -> protection.UpgradeResult:
    """`xdpguard upgrade` and the daemon's start: swap the program in place, then write the
    stored desired state again, so a map the new program added (or had to start empty) holds
    what the operator asked for within the same command. The program is compiled with what it
    was attached with, plus the fast path when asked (`fast_forward`) or when the stored spec
    has it on (its return program is then the new one's: realised again)."""
    stored = store.stored_interface(ifname)
    defines = None
    if fast_forward or (stored is not None and stored.fast_path is not None):
        state.require_root()
        defines = {**state.get(state.read_state(state.resolve_iface(ifname)), state.DEFINES), FWD_DEFINE: 1}
    res = protection.upgrade(ifname, defines=defines, force=force)
    fast = stored is not None and stored.fast_path is not None
    if (
        res.action == "upgraded"
        and stored is not None
        and (res.maps_new or fast or any("empty" in n for n in res.notes))
    ):
        r = realise(stored, lists=True)
        res = replace(res, notes=[*res.notes, "wrote the stored desired state into the new maps", *r.notes])
    return res


def _l7_after_detach() -> list[str]:
    """HAProxy serves what the remaining interfaces of the namespace want (stops at none)."""
    try:
        got = l7engine.realise(l7engine.services_of(forward._iface_states()))
    except UserError as exc:
        return [f"HAProxy: {exc.message}"]
    return [] if got in ("none", "unchanged") else [f"HAProxy {got}"]


def detach(ifname: str) -> protection.DetachResult:
    """`xdpguard detach`: remove program, pins, records and the interface's desired state. An
    interface that is only in the store (after a reboot) is forgotten."""
    state.require_root()
    before = store.stored_interface(ifname)
    forget(ifname)  # store first: a SIGKILL during the detach leaves nothing to restore
    try:
        iface = state.resolve_iface(ifname)
        with state.iface_lock(iface):
            res = protection.detach_locked(iface, forward.teardown(iface))
        res.notes.extend(_l7_after_detach())
    except UserError:
        if before is None:
            raise
        res = protection.DetachResult(ifname, None, ["nothing was attached; removed it from the desired state"])
    except BaseException:
        if before is not None:
            store.update_interface(ifname, lambda cur: before)
        raise
    return res
