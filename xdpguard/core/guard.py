"""The owner of the BPF maps: the only module that opens, reads and writes them, and the only
one that knows where they are pinned.

A `Guard` is one protected interface with its program's maps opened through the kernel (prog id
→ map ids, re-pinned if the pins went missing). Its methods are the named operations on those
maps (lists, ports, policies, filters, bans, verified clients, sampling, counters); the
functions below take the map dict of a Guard or of a test bed (testrun.TestBed) and are what the
methods use. Everything else asks a Guard: no other module indexes a map, calls get_table, or
builds a path under the pin root (tests/unit/test_map_owner.py checks it). No click, no rich.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import ipaddress
import os
import socket
import struct
import time
import weakref
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

from .kernel import abi, dataplane, libbpf, migrate
from . import geo, levels, state
from .model import vocab
from . import watermark as wmark
from .kernel.abi import ALL_DROP_MASK
from .kernel.abi import (
    Addr4,
    Addr6,
    Config,
    Kind,
    LISTS_MASK_BITS,
    ListEntry,
    Lpm4Key,
    Lpm6Key,
    MapName,
    PROT_PORT_POLICY,
    PortValue,
    Reason,
    stats_slot,
)
from .errors import UserError
from .kernel.abi import FastFwdMap, Fwd, FwdCounter, FwdKey
from .kernel.maps import BpfMap
from .model import fastfwd as fastfwd_model
from .policy import (
    MITIGATE,
    PROTOCOLS,
    AddressPolicy,
    BanView,
    Filter,
    GlobalPolicy,
    Limits,
    SweepStats,
    SynPolicy,
    VerifiedDrops,
    VerifiedHits,
    BudgetView,
    VerifiedView,
    VerifySettings,
    _KIND_NAMES,
    _src_text,
    ban_bloom_bit,
    filter_vectors,
    payload_index,
    good_bloom_bit,
    new_protected,
    port_key,
    port_key_addr,
    prot_key,
    src_key,
)
from .prefixes import Prefix


PROG_PIN = "xg_prog"  # the program itself, pinned beside its maps: a detached program can come back as it was
EGRESS_PIN = "xg_egress"  # the tc egress recorder (tcpstate.py), beside it: drift repair puts it back
FWD_PIN = "xg_fwd_return"  # the fast path's return program (fastfwd.py), with --fast-forward only
FWD_ARRAY_PIN = "xg_fwd_prog"  # ... its tail-call array: the kernel empties one nobody holds
FWD_IN_PIN = "xg_fwd_in"  # ... and the program in its slot (Guard.repair_fastfwd refills the slot)


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


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # same clock as bpf_ktime_get_ns


@dataclass(frozen=True)
class ListEntryView:
    prefix: str
    hits: int
    expires_in_s: float | None


def _lpm_key(p: Prefix):
    k = Lpm4Key() if p.family == 4 else Lpm6Key()
    k.prefixlen = p.plen
    ctypes.memmove(ctypes.addressof(k) + 4, p.addr, len(p.addr))
    return k


def _key_prefix(k, family: int) -> Prefix:
    plen = getattr(k, "prefixlen", 32 if family == 4 else 128)
    return Prefix(family, bytes(k.addr), plen)


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
            raise UserError(
                f"{iface.name} is not protected by xdpguard ({what} attached); run 'xdpguard attach {iface.name}' first"
            )
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
        return pins_complete(self.iface)

    # -- config --

    def config(self) -> Config:
        cfg = self.maps[MapName.CONFIG].get(ctypes.c_uint32(0))
        return cfg if cfg is not None else Config()

    def protected(self) -> list[str]:
        return [str(a) for a in protected_addresses(self.maps)]

    # -- counters --

    def counters(self) -> list[CounterView]:
        return [
            CounterView(kind.label, reason.label, pk, by)
            for (kind, reason), (pk, by) in counter_table(self.maps).items()
            if pk
        ]

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
        return protected_addresses(self.maps)

    def open_ports(self) -> dict[tuple[str, str], list[tuple[int, int, int]]]:
        """(protected address, proto) → sorted (lo, hi, flags) runs of open ports."""
        runs: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
        by: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for k, v in self.maps[MapName.PORTS].items():
            if not v.flags & abi.PORT_OWNERS:
                continue  # the record of a port with limits of its own, not open
            raw = bytes(k.addr)[: 4 if k.family == 4 else 16]
            key = (str(ipaddress.ip_address(raw)), vocab.proto_name(k.proto))
            by.setdefault(key, []).append((k.port, v.flags & abi.PORT_OWNERS))
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
        free = _svc_free_slots(self.maps)
        for a in addrs:
            for port in range(lo, hi + 1):
                k = port_key(a, proto, port)
                old = m.get(k)
                flags = old.flags & abi.PORT_OWNERS if old is not None else 0
                new = flags | by_bit if add else flags & ~by_bit
                if new == flags:
                    continue
                changed += 1
                _svc_put(self.maps, k, new, _KEEP, free)
            self._sync_port_policy(a)
        return changed

    def _sync_port_policy(self, addr) -> None:
        fam = addr.version
        raw = addr.packed
        on = any(
            k.family == fam and bytes(k.addr)[: len(raw)] == raw and v.flags & abi.PORT_OWNERS
            for k, v in self.maps[MapName.PORTS].items()
        )
        pm = self.maps[MapName.PROT4 if fam == 4 else MapName.PROT6]
        pk = prot_key(addr)
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

    def add_protected(self, addr) -> None:
        """Protect one more address: default policy, the first free SYN-cookie slot."""
        used = {v.syn.slot for name in (MapName.PROT4, MapName.PROT6) for _, v in self.maps[name].items()}
        slot = next(i for i in range(abi.PROTECTED_MAX) if i not in used)
        _prot_map(self.maps, addr).set(prot_key(addr), new_protected(slot))

    def remove_protected(self, addr) -> None:
        _prot_map(self.maps, addr).delete(prot_key(addr))

    def check_port_limits_room(self, addrs, proto: str, lo: int, hi: int) -> None:
        """Refuse (UserError) per-port limits for addrs' ports lo..hi that the table cannot hold
        (xg_ports_hash: a port with limits has a service record, like an open port)."""
        m = self.maps[MapName.PORTS]
        have = {(bytes(k.addr), k.family, k.proto, k.port) for k in m.keys()}
        new = sum(
            1
            for a in addrs
            for p in range(lo, hi + 1)
            if (a.packed.ljust(16, b"\0"), a.version, vocab.PROTO_NUMBERS[proto], p) not in have
        )
        if len(have) + new > m.max_entries:
            raise UserError(f"too many per-port limits: {len(have) + new:,} entries, the table holds {m.max_entries:,}")

    def count_port_limits(self, addr, proto: str, lo: int, hi: int) -> int:
        """How many of addr's ports lo..hi have a limit of their own."""
        m = self.maps[MapName.PORTLIM]
        return sum(1 for p in range(lo, hi + 1) if m.get(port_key(addr, proto, p)) is not None)

    def ban(self, addrs, ttl_s: float) -> None:
        """An operator's ban of each source for ttl_s (xg_opban_hash: never evicted by the data
        path's own bans); a source banned already keeps its hit count and takes the new expiry."""
        now = _now_ns()
        sweep_bans(self.maps, now)
        m = self.maps[MapName.OPBANS]
        for a in addrs:
            k = src_key(a)
            old = m.get(k)
            m.set(k, abi.Ban(now + int(ttl_s * 1e9), old.hits if old is not None else 0, abi.Reason.BANNED, 0))
        note_operator_ban(self.maps, [src_key(a) for a in addrs])

    def promote_bans(self, found: list[tuple[str, float]], reason: Reason, default_s: float = 60.0) -> list[str]:
        """Dynamic bans (xg_ban_lru) of (source, seconds left) pairs, with `reason`, for what
        they have left (default_s when 0); a ban that lasts as long already is left alone.
        Returns the sources newly banned."""
        if not found:
            return []
        now = _now_ns()
        m = self.maps[MapName.BANS]
        new, written = [], []
        for src, left in found:
            try:
                a = ipaddress.ip_address(src)
            except ValueError:
                continue
            k = src_key(a)
            cur = m.get(k)
            until = now + int((left or default_s) * 1e9)
            if cur is not None and cur.expires_ns >= until - 1_000_000_000:
                continue
            m.set(k, abi.Ban(until, cur.hits if cur is not None else 0, int(reason), 0))
            written.append(k)
            if cur is None or cur.expires_ns <= now:
                new.append(str(a))
        if written:
            note_dynamic_ban(self.maps, written)  # the ban bloom must hold them (enable_ban_bloom)
        return new

    def unban(self, addrs) -> tuple[int, list[str]]:
        """Lift the bans of these sources (operator's or data path's). Returns (removed, missing)."""
        removed, missing = 0, []
        for a in addrs:
            k = src_key(a)
            if self.maps[MapName.OPBANS].delete(k) | self.maps[MapName.BANS].delete(k):
                removed += 1
            else:
                missing.append(str(a))
        sweep_bans(self.maps, _now_ns())
        return removed, missing

    def cookie_counts(self) -> dict[str, int]:
        """The SYN-cookie counters (abi.CookieStats fields), summed over CPUs; {} without them."""
        m = self.maps.get(MapName.COOKIES)
        per_cpu = m.get(ctypes.c_uint32(0)) if m is not None else None
        return {n: sum(getattr(c, n) for c in per_cpu) for n, _ in abi.CookieStats._fields_} if per_cpu else {}

    def has_ban_maps(self) -> bool:
        return MapName.BANS in self.maps or MapName.OPBANS in self.maps

    def ban_count(self) -> int | None:
        """Dynamic and operator bans (None: a program without ban maps)."""
        maps = [self.maps[n] for n in (MapName.BANS, MapName.OPBANS) if n in self.maps]
        return sum(m.count() for m in maps) if maps else None

    def cc_ban_count(self) -> int:
        """Dynamic bans with reason cc (HTTP offenders promoted by `xdpguard run`), not expired."""
        if MapName.BANS not in self.maps:
            return 0
        now = _now_ns()
        return sum(1 for _, v in self.maps[MapName.BANS].items() if v.reason == int(Reason.CC) and v.expires_ns > now)

    def counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(kind, reason) → (packets, bytes) for every pair, zeros included."""
        stats = self.maps[MapName.STATS]
        out = {}
        for kind in Kind:
            for reason in Reason:
                per_cpu = stats.get(ctypes.c_uint32(stats_slot(kind, reason))) or []
                out[(kind.label, reason.label)] = (sum(c.packets for c in per_cpu), sum(c.bytes for c in per_cpu))
        return out

    # -- geo rules (geo.py) --

    def geo_of(self, addr) -> geo.GeoSpec | None:
        return read_address(self.maps, addr)

    def write_geo(self, addr, spec: geo.GeoSpec | None) -> None:
        write_spec(self.maps, addr, spec)

    def geo_tries_empty(self) -> bool:
        return not any(True for _ in self.maps[MapName.GEO4].keys()) and not any(
            True for _ in self.maps[MapName.GEO6].keys()
        )

    def load_geo_tries(self, db: geo.GeoDB, codes) -> tuple[int, int]:
        return load_tries(self.maps, db, codes)

    def clear_geo_tries(self) -> None:
        clear_tries(self.maps)

    # -- packet sampling (sampling.py reads the ring) --

    def sample_every(self) -> int:
        return get_sample_every(self.maps)

    def set_sample_every(self, n: int) -> None:
        set_sample_every(self.maps, n)

    def sample_counters(self) -> tuple[int, int]:
        return sample_counters(self.maps)

    def samples_fd(self) -> int:
        """The fd of the sample ring (for sampling.SampleReader)."""
        return self.maps[MapName.SAMPLES].fd

    # -- policies, filters, bans, verified clients (the functions below, on this guard's maps) --

    def read_address_policy(self, addr) -> AddressPolicy:
        return read_address_policy(self.maps, addr)

    def write_address_policy(self, addr, pol: AddressPolicy) -> None:
        write_address_policy(self.maps, addr, pol)

    def read_port_limits(self) -> dict[tuple[str, str, int], Limits]:
        return read_port_limits(self.maps)

    def write_port_limits(self, addr, proto: str, lo: int, hi: int, lim: Limits | None) -> None:
        write_port_limits(self.maps, addr, proto, lo, hi, lim)

    def read_global_policy(self) -> GlobalPolicy:
        return read_global_policy(self.maps)

    def write_global_policy(self, pol: GlobalPolicy, old: GlobalPolicy | None = None) -> None:
        write_global_policy(self.maps, pol, old)

    def read_filter_table(self) -> list[Filter]:
        return read_filter_table(self.maps)

    def read_mitigation_filters(self) -> list[Filter]:
        return read_mitigation_filters(self.maps)

    def write_mitigation_filters(self, filters: list[Filter]) -> int:
        return write_mitigation_filters(self.maps, filters)

    def settle_filters(self) -> bool:
        return settle_filters(self.maps)

    def read_bans(self, now_ns: int) -> list[BanView]:
        return read_bans(self.maps, now_ns)

    def sweep_bans(self, now_ns: int) -> int:
        return sweep_bans(self.maps, now_ns)

    def sweep_verified(self, now_ns: int) -> SweepStats:
        return sweep_verified(self.maps, now_ns)

    def sweep_dst_buckets(self, now_ns: int) -> int:
        return sweep_dst_buckets(self.maps, now_ns)

    def read_verified_drops(self) -> VerifiedDrops:
        return read_verified_drops(self.maps)

    def read_verify_settings(self) -> VerifySettings:
        return read_verify_settings(self.maps)

    def write_verify_settings(self, v: VerifySettings) -> None:
        write_verify_settings(self.maps, v)

    def watermarks(self) -> dict:
        return realised_watermarks(self.maps)

    def realise_watermarks(self, addresses) -> list[str]:
        return realise_watermarks(self.maps, addresses)

    def watermark_counters(self) -> dict[str, int]:
        return watermark_counters(self.maps)

    def sweep_budgets(self, now_ns: int) -> int:
        return sweep_budgets(self.maps, now_ns)

    def read_budgets(self) -> list[BudgetView]:
        return read_budgets(self.maps)

    def write_budget_rate(self, protected: str, port: int, rate: int) -> bool:
        """Set one UDP service's learned admission rate (units/s; 0: back to the default).
        False when the data path has no entry for it (swept, or never saw a packet)."""
        return write_budget_rate(self.maps, protected, port, rate)

    def verified_counters(self) -> dict:
        return verified_counters(self.maps)

    def promote_cc_bans(self, found: list[tuple[str, float]]) -> list[str]:
        """HAProxy's offenders (source, seconds) banned in XDP with reason cc (l7/bans.py);
        returns the sources newly banned."""
        return self.promote_bans(found, Reason.CC)

    def verify_challenged(self, found: list[tuple[str, float]], cap: int = 1000) -> ChallengeWrite:
        """Sources that passed a layer-7 challenge (source, seconds their cookie has left) into
        the verified map (xg_goodsrc_hash) as TCP-verified with XG_VF_L7 (l7/bans.py, each tick).

        HAProxy saw each complete a handshake and present a cookie bound to its address, so it
        is at least as proven as a source egress learns. A new entry expires with the cookie;
        an entry egress learned keeps its (longer) expiry and gains the bit; one that expires
        sooner is extended, never past the cookie. An entry that already holds the bit and
        lasts as long is not rewritten. At most `cap` writes a call; a full map skips the rest
        (the sweep makes room). The bloom bit is set before the entry (a clear bit never hides
        one; a bit egress sets in the same word meanwhile is set again by its next segment)."""
        out = ChallengeWrite()
        if not found or MapName.GOODSRC not in self.maps:
            return out
        now = _now_ns()
        m = self.maps[MapName.GOODSRC]
        bloom = self.maps[MapName.GOODBLOOM]
        vc = read_verify_settings(self.maps)
        burst = vc.tcp_burst or abi.VERIFIED_TCP_BURST
        for src, left in found:
            if out.full:  # the map is full: the rest wait for the sweep
                out.full += 1
                continue
            if out.written >= cap:
                out.capped += 1
                continue
            try:
                a = ipaddress.ip_address(src)
            except ValueError:
                continue
            if left <= 0:
                continue
            k = src_key(a)
            until = now + int(left * 1e9)
            cur = m.get(k)
            if (
                cur is not None
                and cur.kind & abi.VF_L7
                and cur.kind & abi.VF_TCP
                and cur.expires_ns >= until - 60_000_000_000
            ):
                out.fresh += 1
                continue
            bit = good_bloom_bit(k)
            w = ctypes.c_uint32(bit >> 6)
            word = bloom.get(w)
            val = word.value if word is not None else 0
            if not val & (1 << (bit & 63)):
                bloom.set(w, ctypes.c_uint64(val | (1 << (bit & 63))))
            if cur is not None:
                v = abi.GoodSrc(
                    max(cur.expires_ns, until), cur.kind | abi.VF_TCP | abi.VF_L7, 0, cur.last_ns, cur.tokens
                )
            else:
                v = abi.GoodSrc(
                    until, abi.VF_TCP | abi.VF_L7, 0, now, burst * 1_000_000_000
                )  # XG_TOKEN: one packet in nano-units
            try:
                m.set(k, v)
            except libbpf.BpfError as exc:
                if exc.errno in (errno.E2BIG, errno.ENOMEM, errno.ENOSPC):
                    out.full += 1
                    continue
                raise
            out.written += 1
            if cur is None or cur.expires_ns <= now or not cur.kind & abi.VF_L7:
                out.new.append(str(a))
        return out

    # -- TCP state validation (tcpstate.py runs the recorder; mitigation.py trusts tcpstate_enforced) --

    def set_tcpstate(self, on: bool, grace_until_ns: int = 0) -> None:
        set_tcpstate(self.maps, on, grace_until_ns)

    def set_tcpstate_address(self, addr, on: bool) -> None:
        set_tcpstate_address(self.maps, addr, on)

    def tcpstate_enforced(self, addr) -> bool:
        return tcpstate_enforced(self.maps, addr)

    # -- the forwarding fast path (fastfwd.py; steps/fastfwd.h, only in a program compiled with
    #    kernel.abi.FWD_DEFINE: its maps are not MapName members) --

    def _fastfwd_map_fds(self) -> dict:
        """The fast path's maps, found from the kernel: the program in the attached program's
        tail-call slot uses them."""
        fwd_in = dataplane.fwd_in_prog_id(self.att.prog_id)
        return {} if fwd_in is None else dataplane.map_fds_of_prog(fwd_in, FastFwdMap)

    def has_fastfwd(self) -> bool:
        fds = self._fastfwd_map_fds()
        for fd in fds.values():
            os.close(fd)
        return len(fds) == len(FastFwdMap)

    @contextmanager
    def _fastfwd_maps(self):
        fds = self._fastfwd_map_fds()
        maps = {n: BpfMap(n, fd, abi.FWD_LAYOUTS[n]) for n, fd in fds.items()}
        try:
            if len(maps) != len(FastFwdMap):
                raise UserError(
                    f"{self.iface.name}: the attached program has no forwarding fast path "
                    f"(attach it with --fast-forward)"
                )
            yield maps
        finally:
            for m in maps.values():
                m.close()

    def fastfwd_compiled(self) -> bool:
        """Was the attached program compiled with the fast path (it has the tail-call array)?"""
        return dataplane.fwd_array_id(self.att.prog_id) is not None

    def repair_fastfwd(self) -> list[str]:
        """The fast path's tail-call array pinned and its slot holding the pinned program: what a
        lost pin takes away (the kernel empties a program array when its last pin and fd go)."""
        aid = dataplane.fwd_array_id(self.att.prog_id)
        if aid is None:
            raise UserError(f"{self.iface.name}: the attached program has no forwarding fast path")
        notes = []
        fd = libbpf.map_get_fd_by_id(aid)
        try:
            pin = self.iface.pin_dir / FWD_ARRAY_PIN
            try:
                cur = libbpf.obj_get(str(pin))
                try:
                    pinned = libbpf.map_info(cur).id == aid
                finally:
                    os.close(cur)
            except libbpf.BpfError:
                pinned = False
            if not pinned:
                pin.unlink(missing_ok=True)
                libbpf.obj_pin(fd, str(pin))
                notes.append("re-pinned the fast path's tail-call array")
            if dataplane.fwd_in_prog_id(self.att.prog_id) is None:
                try:
                    pfd = libbpf.obj_get(str(self.iface.pin_dir / FWD_IN_PIN))
                except libbpf.BpfError:
                    raise UserError(
                        f"{self.iface.name}: the fast path's tail-call slot is empty and its program is not "
                        f"pinned; `xdpguard upgrade {self.iface.name} --force` loads it again"
                    ) from None
                try:
                    libbpf.map_update(fd, ctypes.c_uint32(0), ctypes.c_uint32(pfd))
                finally:
                    os.close(pfd)
                notes.append("put the fast path's program back into its tail-call slot")
        finally:
            os.close(fd)
        return notes

    def fastfwd_via(self) -> str | None:
        """The realised fast path, as the desired spec says it: the interface our pinned return
        program is attached to, when the tail-call slot holds the fast path (None otherwise:
        off, or drift the reconciler repairs)."""
        if dataplane.fwd_in_prog_id(self.att.prog_id) is None:
            return None
        rid = pinned_fwd_id(self.iface)
        on = dataplane.attached_to(rid) if rid else []
        return on[0] if on else None

    def fastfwd_entries(self) -> dict:
        """xg_fwd_lru: packet tuple → (translated, dir), as model.fastfwd.desired_entries spells it without the rule id."""
        with self._fastfwd_maps() as maps:
            return {_fwd_tuple(k): (_fwd_tuple(k, v), v.dir) for k, v in maps[FastFwdMap.FLOWS].items()}

    def fastfwd_seen(self) -> dict:
        """xg_fwd_lru's packet tuples → the data path's seen_ns (CLOCK_MONOTONIC ns)."""
        with self._fastfwd_maps() as maps:
            return {_fwd_tuple(k): v.seen_ns for k, v in maps[FastFwdMap.FLOWS].items()}

    def sync_fastfwd(self, flows, rule_ids=None) -> tuple[int, int]:
        """Make xg_fwd_lru hold exactly the entries of these flows (model.fastfwd.NatFlow), each
        with its rule's id (`rule_ids`: flow → model.fastfwd.rule_id; xg_fwd_rule counts it):
        the missing or different ones written, the others deleted. Returns (written, deleted)."""
        want = fastfwd_model.desired_entries(flows, rule_ids)
        with self._fastfwd_maps() as maps:
            m = maps[FastFwdMap.FLOWS]
            have = {_fwd_tuple(k): ((_fwd_tuple(k, v), v.dir, v.rule_id), k) for k, v in m.items()}
            deleted = sum(1 for t, (_, k) in have.items() if t not in want and m.delete(k))
            written = 0
            for t, (to, d, rid) in want.items():
                if t in have and have[t][0] == (to, d, rid):
                    continue
                m.set(_fwd_key(t), _fwd_value(to, d, rid))
                written += 1
        return written, deleted

    def sync_fastfwd_rules(self, ids) -> None:
        """xg_fwd_rule holds a counter for exactly these rule ids (a new one starts at zero; the
        counter of a rule that is gone goes with it)."""
        with self._fastfwd_maps() as maps:
            m = maps[FastFwdMap.RULES]
            have = {k.value for k in m.keys()}
            for rid in have - set(ids):
                m.delete(ctypes.c_uint32(rid))
            for rid in set(ids) - have:
                m.set(ctypes.c_uint32(rid), FwdCounter(), libbpf.BPF_NOEXIST)

    def fastfwd_rule_counters(self) -> dict[int, tuple[int, int]]:
        """Rule id → (packets, bytes) the fast path forwarded for it, summed over CPUs."""
        with self._fastfwd_maps() as maps:
            return {
                k.value: (sum(c.packets for c in v), sum(c.bytes for c in v)) for k, v in maps[FastFwdMap.RULES].items()
            }

    def fastfwd_counters(self) -> dict[str, tuple[int, int]]:
        """XG_FWD_CNT_* by name (abi.FWD_COUNTERS) → (packets, bytes), summed over CPUs."""
        with self._fastfwd_maps() as maps:
            m = maps[FastFwdMap.COUNTERS]
            out = {}
            for i, name in enumerate(abi.FWD_COUNTERS):
                per_cpu = m.get(ctypes.c_uint32(i)) or []
                out[name] = (sum(c.packets for c in per_cpu), sum(c.bytes for c in per_cpu))
            return out

    # -- the mitigation engine's look-ups (mitigation.py) --

    def known_good_sources(self, srcs) -> set:
        return known_good_sources(self.maps, srcs)

    # -- a test bed's private program (testrun.TestBed: loaded, never attached, no interface) --

    def clear_maps(self) -> None:
        clear_maps(self.maps)

    def reset_config(self, enabled: bool = True, monitor_mask: int = 0) -> None:
        """xg_config from scratch: the switches, and the lists mask from what the list maps hold."""
        self.maps[MapName.CONFIG].set(ctypes.c_uint32(0), Config(abi.CFG_ENABLED if enabled else 0, monitor_mask, 0))
        self.sync_lists_mask()

    def set_list_entry(self, which: str, p: Prefix, expires_ns: int = 0) -> None:
        """One list entry written as new (hit count 0), whatever was there."""
        name, key = list_target(which, p)
        self.maps[name].set(key, ListEntry(0, expires_ns, p.plen))
        self.sync_lists_mask()

    def list_entry_hits(self, which: str, p: Prefix) -> int | None:
        name, key = list_target(which, p)
        v = self.maps[name].get(key)
        return None if v is None else v.hits

    def clear_sketch(self) -> None:
        clear_sketch(self.maps)

    def read_sketch(self, slot: int) -> abi.SrcSketch:
        return self.maps[MapName.SRCSKETCH].get(ctypes.c_uint32(slot))

    def set_sketch_hot(self, slot: int, until_window: int) -> None:
        """Put a sketch slot on the bucket path through window `until_window` (now_ns >> SK_SHIFT)."""
        m = self.maps[MapName.SRCSKETCH]
        v = m.get(ctypes.c_uint32(slot))
        v.hot_until = until_window
        m.set(ctypes.c_uint32(slot), v)

    def counter_table(self) -> dict[tuple[Kind, Reason], tuple[int, int]]:
        return counter_table(self.maps)


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


def _fwd_key(t) -> FwdKey:
    proto, sa, sp, da, dp = t
    return FwdKey(
        (ctypes.c_uint8 * 4)(*sa.packed), (ctypes.c_uint8 * 4)(*da.packed), socket.htons(sp), socket.htons(dp), proto
    )


def _fwd_value(t, direction: int, rule_id: int = 0) -> Fwd:
    _, sa, sp, da, dp = t
    return Fwd(
        (ctypes.c_uint8 * 4)(*sa.packed),
        (ctypes.c_uint8 * 4)(*da.packed),
        socket.htons(sp),
        socket.htons(dp),
        direction,
        0,  # no fast packet yet: conntrack's own timeout stands until the data path stamps one
        rule_id,
    )


def _fwd_tuple(k: FwdKey, v: Fwd | None = None) -> tuple:
    """A key (or, with v, the translation v gives the key's packet) as a model.fastfwd Tuple5."""
    x = k if v is None else v
    return (
        k.proto,
        ipaddress.IPv4Address(bytes(x.saddr)),
        socket.ntohs(x.sport),
        ipaddress.IPv4Address(bytes(x.daddr)),
        socket.ntohs(x.dport),
    )


def pins_complete(iface: state.Iface) -> bool:
    """Are the program and every map of the interface pinned?"""
    d = iface.pin_dir
    return all((d / m.value).exists() for m in MapName) and (d / PROG_PIN).exists()


def pinned_prog_fd(iface: state.Iface) -> int:
    """A new fd of the interface's pinned program (raises libbpf.BpfError when it is not pinned)."""
    return libbpf.obj_get(str(iface.pin_dir / PROG_PIN))


def pinned_egress_fd(iface: state.Iface) -> int:
    """A new fd of the interface's pinned tc egress recorder (libbpf.BpfError when not pinned)."""
    return libbpf.obj_get(str(iface.pin_dir / EGRESS_PIN))


def repin(iface: state.Iface) -> None:
    """Put back missing pins of the attached program and its maps (the caller holds the lock)."""
    with Guard.open(iface):
        pass  # opening re-pins


def init_fresh(maps: dict[MapName, BpfMap], addrs, level: str | None, monitor: bool) -> None:
    """The maps of a program just loaded for `attach`: enabled, the level's fragment policy
    (interface-wide: every address gets the same level here), monitor mode, and each protected
    address with its SYN-cookie slot and, with a level, that level's policy (protected before
    anyone tunes it, levels.py)."""
    maps[MapName.CONFIG].set(ctypes.c_uint32(0), Config(abi.CFG_ENABLED, 0, 0, 0, abi.ABI_VERSION))
    write_global_policy(
        maps,
        GlobalPolicy(
            drop_fragments=level is not None and levels.fragments_dropped([level]),
            monitor_mask=ALL_DROP_MASK if monitor else 0,
        ),
    )
    for slot, a in enumerate(addrs):
        _prot_map(maps, a).set(prot_key(a), new_protected(slot))
        if level is not None:
            write_address_policy(maps, a, levels.address_policy(level, AddressPolicy()))


def pin_program(
    iface: state.Iface,
    fds: dict[MapName, int],
    prog_fd: int,
    egress_fd: int,
    fwd_fd: int = -1,
    fwd_array_fd: int = -1,
    fwd_in_fd: int = -1,
) -> None:
    """Pin a freshly attached program's maps, the program and its egress recorder (and, when it
    was compiled in, the fast path's return program, tail-call array and tail-called program)."""
    pin_maps(iface, fds)
    libbpf.obj_pin(prog_fd, str(iface.pin_dir / PROG_PIN))
    libbpf.obj_pin(egress_fd, str(iface.pin_dir / EGRESS_PIN))
    for fd, name in ((fwd_fd, FWD_PIN), (fwd_array_fd, FWD_ARRAY_PIN), (fwd_in_fd, FWD_IN_PIN)):
        if fd >= 0:
            libbpf.obj_pin(fd, str(iface.pin_dir / name))


def pinned_fwd_fd(iface: state.Iface) -> int:
    """A new fd of the interface's pinned fast-path return program (libbpf.BpfError when none)."""
    return libbpf.obj_get(str(iface.pin_dir / FWD_PIN))


def pinned_fwd_id(iface: state.Iface) -> int:
    """The id of the interface's pinned fast-path return program; 0 when none is pinned."""
    try:
        fd = pinned_fwd_fd(iface)
    except libbpf.BpfError:
        return 0
    try:
        return libbpf.prog_info(fd)[0].id
    finally:
        os.close(fd)


def upgrade_staging(iface: state.Iface):
    """An empty staging directory for an upgrade's new pins, beside the interface's pins."""
    staging = iface.pin_dir / f"upgrade-{os.getpid()}"  # bpffs refuses names with a dot
    migrate.remove_staging(staging)
    iface.pin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return staging


def commit_upgrade_pins(
    iface: state.Iface,
    fds: dict[MapName, int],
    staging,
    prog_fd: int,
    egress_fd: int,
    fwd_fd: int = -1,
    fwd_array_fd: int = -1,
    fwd_in_fd: int = -1,
) -> None:
    """After an upgrade's atomic replace: the new maps' pins from staging, the program's and the
    egress recorder's pins replaced (and the fast path's return program's, when compiled in: the
    fast path's maps are new and empty, the next fastfwd.sync fills them and re-attaches it)."""
    migrate.commit_pins(fds, staging, iface.pin_dir)
    for fd, name in (
        (prog_fd, PROG_PIN),
        (egress_fd, EGRESS_PIN),
        (fwd_fd, FWD_PIN),
        (fwd_array_fd, FWD_ARRAY_PIN),
        (fwd_in_fd, FWD_IN_PIN),
    ):
        if fd < 0:
            continue
        pin = iface.pin_dir / name
        if pin.exists():
            pin.unlink()
        libbpf.obj_pin(fd, str(pin))


def abi_version(fds: dict[MapName, int]) -> int | None:
    """xg_config.abi_version of a live program's maps (map name → fd), whatever the config
    map's value size (fields are only ever appended to xg_config); None without a config map."""
    config_fd = fds.get(MapName.CONFIG)
    if config_fd is None:
        return None
    shape = migrate.shape_of(config_fd)
    buf = ctypes.create_string_buffer(max(shape.value_size, ctypes.sizeof(Config)))
    if libbpf.lib().bpf_map_lookup_elem(config_fd, ctypes.byref(ctypes.c_uint32(0)), buf) != 0:
        return abi.ABI_VERSION
    return Config.from_buffer_copy(buf.raw[: ctypes.sizeof(Config)]).abi_version or 1


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


@dataclass
class ChallengeWrite:
    """What Guard.verify_challenged did with one tick's challenge-passing sources."""

    written: int = 0  # entries written (new, extended or given the bit)
    fresh: int = 0  # already verified by a challenge for as long: left alone
    capped: int = 0  # over the cap of the call: next tick
    full: int = 0  # the map was full
    new: list[str] = field(default_factory=list)  # sources not verified by a challenge before


@dataclass(frozen=True)
class CounterView:
    kind: str
    reason: str
    packets: int
    bytes: int


# ---- policies, filters, bans and verified clients in the maps (any dict of BpfMap) ----


def _prot_map(maps, addr):
    return maps[abi.MapName.PROT4 if addr.version == 4 else abi.MapName.PROT6]


def read_address_policy(maps, addr) -> AddressPolicy:
    v = _prot_map(maps, addr).get(prot_key(addr))
    if v is None:
        raise UserError(f"{addr} is not a protected address")
    blocked = frozenset(n for n, bit in PROTOCOLS.items() if v.flags & bit)
    return AddressPolicy(blocked, Limits.from_c(v.lim), SynPolicy.from_c(v.syn, v.flags))


def write_address_policy(maps, addr, pol: AddressPolicy) -> None:
    """Rewrite the address's entry, keeping what other features own (port-policy flag, slot)."""
    m, k = _prot_map(maps, addr), prot_key(addr)
    cur = m.get(k)
    if cur is None:
        raise UserError(f"{addr} is not a protected address")
    keep = cur.flags & (
        abi.PROT_PORT_POLICY | abi.PROT_PORT_LIMITS | abi.PROT_TCPSTATE_OFF | abi.PROT_GEO | abi.PROT_WATERMARK
    )
    flags = keep | sum(PROTOCOLS[p] for p in pol.blocked) | pol.syn.flag_bits()
    m.set(k, abi.Protected(flags, pol.limits.to_c(), pol.syn.to_c(cur.syn.slot)))


def read_port_limits(maps) -> dict[tuple[str, str, int], Limits]:
    out = {}
    for k, v in maps[abi.MapName.PORTLIM].items():
        raw = bytes(k.addr)[: 4 if k.family == 4 else 16]
        out[(str(ipaddress.ip_address(raw)), vocab.proto_name(k.proto), k.port)] = Limits.from_c(v)
    return dict(sorted(out.items()))


def write_port_limits(maps, addr, proto: str, lo: int, hi: int, lim: Limits | None) -> None:
    """Override (or with lim None, remove the override of) the limits of addr's ports lo..hi."""
    m = maps[abi.MapName.PORTLIM]
    free = _svc_free_slots(maps)
    for port in range(lo, hi + 1):
        k = port_key(addr, proto, port)
        if lim is None:
            m.delete(k)
            _svc_put(maps, k, None, None, free)
        else:
            c = lim.to_c()
            m.set(k, c)
            _svc_put(maps, k, None, c, free)
    _sync_port_limits_flag(maps, addr)


# ---- the service record: xg_ports_hash + xg_svc_arr (abi.h xg_port_value, steps/port.h) ----
#
# One record per (address, proto, port) that is open or has limits of its own: the data path's
# one hash lookup of the key. xg_ports_hash holds the owners and flags; the record's limits and
# destination bucket live in xg_svc_arr at its slot. xg_portlim_hash stays the controller's
# record of the limits (read_port_limits); the record carries their copy.

_KEEP = object()  # _svc_put: leave the record's limits as they are


def _svc_free_slots(maps):
    """The xg_svc_arr slots no record holds, lowest first (an iterator: take each at most once)."""
    if MapName.SVC not in maps:
        return iter(())
    used = {v.slot for _, v in maps[MapName.PORTS].items() if v.flags & abi.PORT_SLOT}
    return (i for i in range(maps[MapName.SVC].max_entries) if i not in used)


def _svc_put(maps, k, owners: int | None, lim, free) -> None:
    """Write key k's service record: owners (None: the record's as they are), lim the port's
    limits (abi.Limits), None (the address's apply) or _KEEP. No owner and no limits: deleted.
    A record keeps its slot and bucket; a new one takes a slot from `free`, with an unused bucket
    (the data path fills it on the first packet, like a new xg_dstbkt_hash entry)."""
    m = maps[MapName.PORTS]
    old = m.get(k)
    old_flags = old.flags if old is not None else 0
    own = old_flags & abi.PORT_OWNERS if owners is None else owners
    has_lim = bool(old_flags & abi.PORT_LIMITS) if lim is _KEEP else lim is not None
    if MapName.SVC not in maps:  # a program before the service record (bench_ab's base): owners only
        has_lim = False
    if not own and not has_lim:
        if old is not None:
            m.delete(k)
        return
    if MapName.SVC not in maps:
        m.set(k, PortValue(own))
        return
    arr = maps[MapName.SVC]
    if old is not None and old_flags & abi.PORT_SLOT:
        slot, fresh = old.slot, False
    else:
        slot, fresh = next(free, None), True
        if slot is None:
            raise UserError(f"too many service records: {MapName.SVC.value} holds {arr.max_entries:,}")
    if fresh or (lim is not _KEEP and lim is not None):
        svc = abi.Svc() if fresh else (arr.get(ctypes.c_uint32(slot)) or abi.Svc())
        if lim is not _KEEP and lim is not None:
            svc.lim = lim
        arr.set(ctypes.c_uint32(slot), svc)  # before the record that points at it
    new = own | abi.PORT_SLOT | (abi.PORT_LIMITS if has_lim else 0)
    if old is None or bytes(old) != bytes(PortValue(new, slot, 0)):
        m.set(k, PortValue(new, slot, 0))


def refill_service_records(maps) -> int:
    """Every open port's and every per-port limit's (xg_portlim_hash) service record with its
    slot, flags and limits: for an upgrade from a program whose xg_ports_hash held only the
    owners (its records were copied zero-filled: no slot), before the swap. Returns how many
    records there are."""
    if MapName.SVC not in maps:
        return 0
    lims = {bytes(k): v for k, v in maps[MapName.PORTLIM].items()}
    keys = {bytes(k): k for k in maps[MapName.PORTS].keys()}
    for k, _ in maps[MapName.PORTLIM].items():
        keys.setdefault(bytes(k), k)
    free = _svc_free_slots(maps)
    for kb, k in keys.items():
        _svc_put(maps, k, None, lims.get(kb), free)
    return len(keys)


def _sync_port_limits_flag(maps, addr) -> None:
    raw = addr.packed
    on = any(k.family == addr.version and bytes(k.addr)[: len(raw)] == raw for k in maps[abi.MapName.PORTLIM].keys())
    pm, pk = _prot_map(maps, addr), prot_key(addr)
    cur = pm.get(pk)
    if cur is None:
        return
    flags = (cur.flags | abi.PROT_PORT_LIMITS) if on else (cur.flags & ~abi.PROT_PORT_LIMITS)
    if flags != cur.flags:
        cur.flags = flags
        pm.set(pk, cur)


# ---- the filter table and its compiled generations ----
#
# A filter change costs what changed. The Guard remembers (per map dict: a Guard's or a test
# bed's) the table it last wrote and the filters compiled into each generation, and trusts that
# memory only while xg_fsel_arr still holds the (generation, tag) it wrote last and
# xg_config.filters_count its table's length: every write first clears the tag and ends with a
# new random one, so another writer in between (the CLI, the reconciler, another daemon, an
# older xdpguard that writes tag 0) makes the next call read the maps again (the table: at most
# FILTERS_MAX entries, in one batch). The generation about to be written is rewritten only where
# its words differ from what it holds: the filters compiled into it are known (remembered, or
# read from xg_fdef_arr and checked against the stamp in its xg_fhead.reserved, which is
# cleared before it is touched), and their words are computed again. All of it runs under the
# interface lock, as every map write does: two writers at once are not this code's business.


@dataclass
class _FilterMemo:
    sel: tuple[int, int]  # xg_fsel_arr[0] (gen, reserved) as this memo's last write left it
    table: tuple[Filter, ...] | None  # xg_filters_arr[0..xg_config.filters_count), None: unknown
    gens: dict[int, tuple[Filter, ...] | None]  # generation → the filters compiled into it, None: unknown
    switched: float  # time.monotonic() of this memo's last switch of generation


_MEMOS: weakref.WeakKeyDictionary[BpfMap, _FilterMemo] = weakref.WeakKeyDictionary()

# Part of every generation's stamp: bump it when filter_vectors or payload_index change the words
# they write for the same filters (tests/unit/test_filter_vectors.py pins a digest of them), so a
# generation compiled by an older controller is rewritten whole rather than patched.
COMPILE_VERSION = 2  # 2: free slots accept any source port (policy.filter_vectors)


def _stamp(filters: tuple[Filter, ...]) -> int:
    """xg_fhead.reserved of a generation whose words are exactly those of `filters`: never 0."""
    crc = zlib.crc32(struct.pack("<II", COMPILE_VERSION, len(filters)))
    for f in filters:
        crc = zlib.crc32(bytes(f.to_c()), crc)
    return crc or 1


def _sel(maps) -> abi.FSel:
    return maps[abi.MapName.FSEL].get(ctypes.c_uint32(0)) or abi.FSel()


def _memo(maps, sel: abi.FSel) -> _FilterMemo | None:
    """What this map dict's last filter write left, if nobody wrote since: xg_fsel_arr holds
    what that write left, and xg_config.filters_count (which a reset, or a test's shortcut,
    writes without a compile) the length of its table."""
    memo = _MEMOS.get(maps[abi.MapName.FSEL])
    if memo is None or memo.sel != (sel.gen, sel.reserved) or not sel.reserved:
        return None
    if memo.table is not None:
        cfg = maps[abi.MapName.CONFIG].get(ctypes.c_uint32(0)) or abi.Config()
        if cfg.filters_count != len(memo.table):
            return None
    return memo


def _read_slots(m: BpfMap, first: int, n: int) -> list:
    """Entries first..first+n-1 of array map m in one BPF_MAP_LOOKUP_BATCH."""
    if n <= 0:
        return []
    keys = (m.key_type * n)()
    values = (m.value_type * n)()
    prev = m.key_type(first - 1)
    token = m.key_type()
    rc, cnt = libbpf.map_lookup_batch(
        m.fd,
        ctypes.addressof(keys),
        ctypes.addressof(values),
        n,
        ctypes.addressof(prev) if first else None,
        ctypes.addressof(token),
    )
    if rc < 0 and rc != -errno.ENOENT:
        raise libbpf.BpfError(-rc, f"map lookup batch on {m.name.value}: {os.strerror(-rc)}")
    return list(values[:cnt])


def _read_table(maps) -> tuple[Filter, ...]:
    """xg_filters_arr[0..xg_config.filters_count) from the maps."""
    cfg = maps[abi.MapName.CONFIG].get(ctypes.c_uint32(0)) or abi.Config()
    n = min(cfg.filters_count, abi.FILTERS_MAX)
    return tuple(Filter.from_c(f) for f in _read_slots(maps[abi.MapName.FILTERS], 0, n))


@functools.lru_cache(maxsize=1024)
def _as_read(f: Filter) -> Filter:
    """f as the maps give it back (Filter.from_c: the payload masked, its mask spelt out), which
    is what a memory of the maps must hold."""
    return Filter.from_c(f.to_c())


def _read_filters(maps) -> list[Filter]:
    memo = _memo(maps, _sel(maps))
    if memo is not None and memo.table is not None:
        return list(memo.table)
    return list(_read_table(maps))


def _compiled_in(maps, gen: int) -> tuple[Filter, ...] | None:
    """The filters generation `gen` was compiled from, when its stamp vouches for its words."""
    head = maps[abi.MapName.FHEAD].get(ctypes.c_uint32(gen))
    if head is None or not head.reserved or head.count > abi.FILTERS_MAX:
        return None
    defs = _read_slots(maps[abi.MapName.FDEF], gen * abi.FILTERS_MAX, head.count)
    if len(defs) != head.count:
        return None
    filters = tuple(Filter.from_c(f) for f in defs)
    return filters if _stamp(filters) == head.reserved else None


def read_global_policy(maps) -> GlobalPolicy:
    """The operator's policy: the automatic mitigation filters (dynamic state, after the
    operator's in the table) are not part of it."""
    cfg = maps[abi.MapName.CONFIG].get(ctypes.c_uint32(0)) or abi.Config()
    ports = frozenset(i for i, on in enumerate(maps[abi.MapName.REFLECT].array_values()) if on)
    filters = [f for f in _read_filters(maps) if f.action != MITIGATE]
    return GlobalPolicy(
        bool(cfg.flags & abi.CFG_DROP_FRAGMENTS),
        bool(cfg.flags & abi.CFG_REFLECTION),
        ports,
        tuple(filters),
        cfg.monitor_mask,
    )


def read_mitigation_filters(maps) -> list[Filter]:
    """The automatic mitigation filters in the table, in order."""
    return [f for f in _read_filters(maps) if f.action == MITIGATE]


def write_mitigation_filters(maps, filters: list[Filter]) -> int:
    """Replace the mitigation filters (kept after the operator's). Returns how many fit: the
    operator's filters always keep their slots. Reads only the filter table (not the policy's
    65,536 reflection ports), and nothing when this map dict wrote last."""
    operator = [f for f in _read_filters(maps) if f.action != MITIGATE]
    room = max(0, abi.FILTERS_MAX - len(operator))
    keep = [f for f in filters if f.action == MITIGATE][:room]
    _write_filter_table(maps, operator + keep)
    return len(keep)


def write_global_policy(maps, pol: GlobalPolicy, old: GlobalPolicy | None = None) -> None:
    """Filters are written before the count grows and after it shrinks, and the data path reads
    them only through their compiled generation (compile_filters), which is swapped in whole."""
    cm = maps[abi.MapName.CONFIG]
    cfg = cm.get(ctypes.c_uint32(0)) or abi.Config()
    refl = maps[abi.MapName.REFLECT]
    old_ports = old.reflection_ports if old is not None else frozenset()  # None: a fresh (zeroed) map
    for p in old_ports - pol.reflection_ports:
        refl.set(ctypes.c_uint32(p), ctypes.c_uint8(0))
    for p in pol.reflection_ports - old_ports:
        refl.set(ctypes.c_uint32(p), ctypes.c_uint8(1))
    filters = list(pol.filters)
    if not any(f.action == MITIGATE for f in filters):  # the daemon's mitigations stay, after the operator's
        filters += read_mitigation_filters(maps)[: max(0, abi.FILTERS_MAX - len(filters))]
    _write_filter_table(maps, filters)
    cfg = cm.get(ctypes.c_uint32(0)) or abi.Config()
    flags = cfg.flags & ~(abi.CFG_DROP_FRAGMENTS | abi.CFG_REFLECTION)
    flags |= (abi.CFG_DROP_FRAGMENTS if pol.drop_fragments else 0) | (abi.CFG_REFLECTION if pol.reflection else 0)
    cfg.flags = flags
    cfg.monitor_mask = pol.monitor_mask
    cm.set(ctypes.c_uint32(0), cfg)


def read_filter_table(maps) -> list[Filter]:
    """The whole table in order: the operator's filters, then the automatic mitigations."""
    return _read_filters(maps)


def _write_filter_table(maps, filters: list[Filter]) -> None:
    """The ordered list (the controller's record, xg_filters_arr) and its compiled generation,
    which is what the data path reads and is swapped in whole; nothing when both already hold
    exactly `filters` (the reconciler writes every 30 s). Only the slots and words that differ
    from what the maps hold are written."""
    if len(filters) > abi.FILTERS_MAX:
        raise UserError(f"too many filters: {len(filters)}, the table holds {abi.FILTERS_MAX}")
    want = tuple(map(_as_read, filters))
    sel_m = maps[abi.MapName.FSEL]
    sel = _sel(maps)
    memo = _memo(maps, sel)
    table = memo.table if memo is not None and memo.table is not None else _read_table(maps)
    if table == want and (
        memo.gens.get(sel.gen & 1) == want if memo is not None else _generation_holds(maps, sel.gen & 1, want)
    ):
        return
    if sel.reserved:  # from here on, no other writer's memory of these maps holds
        sel = abi.FSel(sel.gen, 0)
        sel_m.set(ctypes.c_uint32(0), sel)
    cm = maps[abi.MapName.CONFIG]
    cfg = cm.get(ctypes.c_uint32(0)) or abi.Config()
    fm = maps[abi.MapName.FILTERS]
    n_new = len(want)
    if n_new < cfg.filters_count:
        cfg.filters_count = n_new
        cm.set(ctypes.c_uint32(0), cfg)
    for i, f in enumerate(want):
        if i >= len(table) or table[i] != f:
            fm.set(ctypes.c_uint32(i), f.to_c())
    if cfg.filters_count != n_new:
        cfg.filters_count = n_new
        cm.set(ctypes.c_uint32(0), cfg)
    _compile(maps, want, sel, memo, table=want)


def _generation_holds(maps, gen: int, filters: tuple[Filter, ...]) -> bool:
    """Was generation `gen` compiled from `filters`? Its stamp says; a generation an older
    controller compiled has none, and then its count does."""
    head = maps[abi.MapName.FHEAD].get(ctypes.c_uint32(gen))
    if head is None or head.count != len(filters):
        return False
    return not head.reserved or head.reserved == _stamp(filters)


@functools.lru_cache(maxsize=8)
def _word_keys(first: int, n: int):
    """The keys first..first+n of an array map's words, built once (~40-65 ms for the 197,635
    keys of a filter-vector generation: compile_filters runs on every filter change)."""
    return (ctypes.c_uint32 * n)(*range(first, first + n))


@functools.lru_cache(maxsize=4)  # a change's and the one two changes back (~1.6 MB each)
def _vectors(filters: tuple[Filter, ...]) -> tuple[bytes, int, int]:
    return filter_vectors(filters)


@functools.lru_cache(maxsize=4)
def _pindex(filters: tuple[Filter, ...]) -> tuple[bytes, int, tuple[int, ...]]:
    vec, indexed, positions = payload_index(filters)
    return vec, indexed, tuple(positions)


_BLOCK_WORDS, _CHUNK_WORDS = 2048, 16


def changed_runs(old: bytes, new: bytes) -> list[tuple[int, int]]:
    """The word ranges [a, b) (8-byte words) where `new` differs from `old` (same length), at a
    granularity of 16 words, adjacent ones merged: what a partial rewrite has to write."""
    runs: list[list[int]] = []
    n = len(new) // 8
    for b0 in range(0, n, _BLOCK_WORDS):
        b1 = min(n, b0 + _BLOCK_WORDS)
        if old[b0 * 8 : b1 * 8] == new[b0 * 8 : b1 * 8]:
            continue
        for c0 in range(b0, b1, _CHUNK_WORDS):
            c1 = min(b1, c0 + _CHUNK_WORDS)
            if old[c0 * 8 : c1 * 8] != new[c0 * 8 : c1 * 8]:
                if runs and runs[-1][1] == c0:
                    runs[-1][1] = c1
                else:
                    runs.append([c0, c1])
    return [(a, b) for a, b in runs]


def _write_words(m, first: int, words: bytes, old: bytes | None = None) -> int:
    """Array map m's entries first.. := the __u64 words (host byte order), in one batch per run
    of words that differ from `old` (what those entries hold; None: unknown, all are written).
    Returns how many were written."""
    n = len(words) // 8
    runs = [(0, n)] if old is None or len(old) != len(words) else changed_runs(old, words)
    if not runs:
        return 0
    keys = _word_keys(first, n)
    vals = ctypes.create_string_buffer(words, len(words))
    written = 0
    for a, b in runs:
        rc, done = libbpf.map_update_batch(m.fd, ctypes.addressof(keys) + 4 * a, ctypes.addressof(vals) + 8 * a, b - a)
        if rc != 0 or done != b - a:
            raise libbpf.BpfError(-rc, f"map update batch on {m.name.value}: {os.strerror(-rc) if rc else 'short'}")
        written += b - a
    return written


def compile_filters(maps, filters: tuple[Filter, ...]) -> int:
    """Write the filters into the generation not in use (vectors, definitions, head), whole,
    then switch the data path to it with one write. Returns the new generation. For maps just
    refilled (an upgrade's new maps: protection.refill_derived), so the other generation's
    stamp is cleared too: its words are not vouched for."""
    sel = _sel(maps)
    if sel.reserved:
        sel = abi.FSel(sel.gen, 0)
        maps[abi.MapName.FSEL].set(ctypes.c_uint32(0), sel)
    other = maps[abi.MapName.FHEAD].get(ctypes.c_uint32(sel.gen & 1))
    if other is not None and other.reserved:
        other.reserved = 0
        maps[abi.MapName.FHEAD].set(ctypes.c_uint32(sel.gen & 1), other)
    return _compile(maps, tuple(map(_as_read, filters)), sel, None, table=None, whole=True)


def _compile(
    maps, filters: tuple[Filter, ...], sel: abi.FSel, memo: _FilterMemo | None, table, whole: bool = False
) -> int:
    """compile_filters, given xg_fsel_arr[0] (its tag already cleared) and this map dict's
    memory of the generations (None: read the stamp of the generation to write). Only the words
    that differ from what that generation holds are written, unless `whole` or it is unknown."""
    if len(filters) > abi.FILTERS_MAX:
        raise UserError(f"too many filters: {len(filters)}, the table holds {abi.FILTERS_MAX}")
    cur = sel.gen & 1
    gen = cur ^ 1
    _fill(maps, gen, filters, None if whole else _held(maps, gen, memo))
    # XXX: a packet that read the old generation before this write finishes on it; the next
    # compile rewrites that generation, so two changes within one packet's run could tear it
    # (settle_filters waits for SETTLE_AFTER_S).
    tag = int.from_bytes(os.urandom(4), "little") or 1
    sel_m = maps[abi.MapName.FSEL]
    sel_m.set(ctypes.c_uint32(0), abi.FSel(gen, tag))
    gens = {gen: filters, cur: memo.gens.get(cur) if memo is not None else None}
    _MEMOS[sel_m] = _FilterMemo((gen, tag), table, gens, time.monotonic())
    return gen


def _held(maps, gen: int, memo: _FilterMemo | None) -> tuple[Filter, ...] | None:
    """The filters generation `gen` holds the words of: remembered, else vouched for by its stamp."""
    held = memo.gens.get(gen) if memo is not None else None
    return held if held is not None else _compiled_in(maps, gen)


def _fill(maps, gen: int, filters: tuple[Filter, ...], prev: tuple[Filter, ...] | None) -> None:
    """Generation `gen` (not in use) := the compile of `filters`, writing only what differs from
    the compile of `prev` (what it holds; None: unknown, all of it), then stamped."""
    hm = maps[abi.MapName.FHEAD]
    head = hm.get(ctypes.c_uint32(gen)) or abi.FHead()
    if head.reserved:  # the stamp goes before the words it vouches for change
        head.reserved = 0
        hm.set(ctypes.c_uint32(gen), head)
    vec, live, payload = _vectors(filters)
    _write_words(maps[abi.MapName.FVEC], gen * abi.FV_SLOTS, vec, _vectors(prev)[0] if prev is not None else None)
    dm = maps[abi.MapName.FDEF]
    for i, f in enumerate(filters):
        if prev is None or i >= len(prev) or prev[i] != f:
            dm.set(ctypes.c_uint32(gen * abi.FILTERS_MAX + i), f.to_c())
    if abi.MapName.PVEC in maps:  # (a program before the payload index has no such maps)
        pvec, indexed, positions = _pindex(filters)
        _write_words(maps[abi.MapName.PVEC], gen * abi.PV_SLOTS, pvec, _pindex(prev)[0] if prev is not None else None)
        maps[abi.MapName.PHEAD].set(
            ctypes.c_uint32(gen), abi.PHead(indexed, len(positions), 0, (ctypes.c_uint16 * abi.PPOS_MAX)(*positions))
        )
    hm.set(ctypes.c_uint32(gen), abi.FHead(live, payload, len(filters), _stamp(filters)))


SETTLE_AFTER_S = 0.2  # far longer than any packet's run of the program


def settle_filters(maps) -> bool:
    """Bring the generation not in use up to the one in use, off the critical path (between the
    daemon's rounds, under the interface lock): a change is written into the generation not in
    use, which otherwise still holds the change before this one, so an install followed by a
    widen would write the install's words twice (a filter for one source port clears its bit in
    65,536 words). Not when that generation holds more filters than the one in use (after a
    lift): a filter installed again into the freed slot then finds most of its words there.
    Only when this map dict wrote last (its memory holds) and SETTLE_AFTER_S after its switch
    (no packet still reads the old generation). Returns whether it wrote."""
    sel_m = maps[abi.MapName.FSEL]
    sel = _sel(maps)
    memo = _memo(maps, sel)
    if memo is None or time.monotonic() - memo.switched < SETTLE_AFTER_S:
        return False
    cur = sel.gen & 1
    want = memo.gens.get(cur)
    prev = _held(maps, cur ^ 1, memo)
    if want is None or prev == want or (prev is not None and len(prev) > len(want)):
        return False  # (after a lift: a filter installed again in its slot finds its words there)
    sel_m.set(ctypes.c_uint32(0), abi.FSel(sel.gen, 0))  # no other writer's memory holds meanwhile
    _fill(maps, cur ^ 1, want, prev)
    tag = int.from_bytes(os.urandom(4), "little") or 1
    sel_m.set(ctypes.c_uint32(0), abi.FSel(sel.gen, tag))  # the same generation in use
    _MEMOS[sel_m] = _FilterMemo((sel.gen, tag), memo.table, {cur: want, cur ^ 1: want}, memo.switched)
    return True


def read_bans(maps, now_ns: int) -> list[BanView]:
    out = []
    for k, v in [*maps[abi.MapName.OPBANS].items(), *maps[abi.MapName.BANS].items()]:
        if v.expires_ns <= now_ns:
            continue
        raw = bytes(k.addr)[: 4 if k.family == 4 else 16]
        try:
            reason = abi.Reason(v.reason).label
        except ValueError:
            reason = str(v.reason)
        out.append(BanView(str(ipaddress.ip_address(raw)), round((v.expires_ns - now_ns) / 1e9, 1), v.hits, reason))
    return sorted(out, key=lambda b: (-b.hits, b.source))


def sweep_bans(maps, now_ns: int) -> int:
    """Delete expired bans; clear the data path's has-bans flag when none is left."""
    dead = 0
    for name in (abi.MapName.OPBANS, abi.MapName.BANS):
        m = maps[name]
        gone = [k for k, v in m.items() if v.expires_ns <= now_ns]
        for k in gone:
            m.delete(k)
        dead += len(gone)
    no_op = not any(True for _ in maps[abi.MapName.OPBANS].keys())
    none_left = no_op and not any(True for _ in maps[abi.MapName.BANS].keys())
    st = maps[abi.MapName.DPSTATE]
    cur = st.get(ctypes.c_uint32(0))
    if cur is not None:
        flags = (cur.flags | abi.DP_OPBANS_EMPTY) if no_op else (cur.flags & ~abi.DP_OPBANS_EMPTY)
        if none_left:
            flags &= ~abi.DP_HAS_BANS
        if flags != cur.flags:
            st.set(ctypes.c_uint32(0), abi.DpState(flags))
        if none_left:
            _write_bloom(maps, [0] * (abi.BANBLOOM_BITS // 64))  # no ban left: every bit may go
        if not flags & abi.DP_BAN_BLOOM:
            enable_ban_bloom(maps)
    return dead


def _write_bloom(maps, words: list[int], name: abi.MapName = abi.MapName.BANBLOOM) -> None:
    m = maps[name]
    n = len(words)
    keys = (ctypes.c_uint32 * n)(*range(n))
    vals = (ctypes.c_uint64 * n)(*words)
    rc, done = libbpf.map_update_batch(m.fd, ctypes.addressof(keys), ctypes.addressof(vals), n)
    if rc != 0 or done != n:
        raise libbpf.BpfError(-rc, f"map update batch on {m.name.value}: {os.strerror(-rc) if rc else 'short'}")


def _set_bloom_bits(maps, keys) -> None:
    m = maps[abi.MapName.BANBLOOM]
    for k in keys:
        bit = ban_bloom_bit(k)
        w = ctypes.c_uint32(bit >> 6)
        cur = m.get(w)
        val = (cur.value if cur is not None else 0) | (1 << (bit & 63))
        m.set(w, ctypes.c_uint64(val))


def enable_ban_bloom(maps) -> None:
    """Set the bit of every ban in both ban maps, then let the data path trust clear bits
    (XG_DP_BAN_BLOOM). Bits the data path sets meanwhile may be overwritten; a source whose bit is
    lost is judged again by the step that banned it, which bans it (and sets its bit) again."""
    m = maps[abi.MapName.BANBLOOM]
    words = [v.value if hasattr(v, "value") else int(v) for v in m.array_values()]
    for name in (abi.MapName.OPBANS, abi.MapName.BANS):
        for k in maps[name].keys():
            bit = ban_bloom_bit(k)
            words[bit >> 6] |= 1 << (bit & 63)
    _write_bloom(maps, words)
    st = maps[abi.MapName.DPSTATE]
    cur = st.get(ctypes.c_uint32(0)) or abi.DpState(0)
    if not cur.flags & abi.DP_BAN_BLOOM:
        st.set(ctypes.c_uint32(0), abi.DpState(cur.flags | abi.DP_BAN_BLOOM))


def _set_dp_flags(maps, set_bits: int, clear_bits: int = 0) -> None:
    st = maps[abi.MapName.DPSTATE]
    cur = st.get(ctypes.c_uint32(0)) or abi.DpState(0)
    flags = (cur.flags | set_bits) & ~clear_bits
    if flags != cur.flags:
        st.set(ctypes.c_uint32(0), abi.DpState(flags))


def note_dynamic_ban(maps, keys) -> None:
    """After the controller wrote `keys` into xg_ban_lru (the data path's own bans set their bits
    themselves): their bloom bits, and make the data path look at bans."""
    _set_bloom_bits(maps, keys)
    _set_dp_flags(maps, abi.DP_HAS_BANS)


def note_operator_ban(maps, keys) -> None:
    """After writing `keys` (abi.SrcKey) into xg_opban_hash: their bloom bits, and make the data
    path look at bans, operator bans included. Every writer of xg_opban_hash must call this."""
    _set_bloom_bits(maps, keys)
    _set_dp_flags(maps, abi.DP_HAS_BANS, abi.DP_OPBANS_EMPTY)


def read_verify_settings(maps) -> VerifySettings:
    """The settings; the defaults when the program has no xg_vcfg_arr (an older one)."""
    m = maps.get(abi.MapName.VCFG)
    c = m.get(ctypes.c_uint32(0)) if m is not None else None
    return VerifySettings.from_c(c) if c is not None else VerifySettings()


def write_verify_settings(maps, v: VerifySettings) -> None:
    maps[abi.MapName.VCFG].set(ctypes.c_uint32(0), v.to_c())


def set_udp_learning(maps, on: bool) -> None:
    """The controller's switch: off while it sees an attack (no UDP answer teaches anything),
    on again in peacetime. The data path also stops by itself, per protected address, above
    udp_peace_pps (xg_udpwin_pcpu, xg_udpflood_arr)."""
    cur = read_verify_settings(maps)
    if cur.udp_learning != on:
        write_verify_settings(maps, replace(cur, udp_learning=on))


def read_verified(maps, now_ns: int) -> list[VerifiedView]:
    out = []
    for k, v in maps[abi.MapName.GOODSRC].items():
        if v.expires_ns > now_ns:
            out.append(
                VerifiedView(
                    _src_text(k), _KIND_NAMES.get(v.kind & 3, "untrusted"), round((v.expires_ns - now_ns) / 1e9, 1)
                )
            )
    return sorted(out, key=lambda x: x.source)


def sweep_verified(maps, now_ns: int, high: float = 0.9, low: float = 0.75) -> SweepStats:
    """The sweep of xg_goodsrc_hash (only the tc egress program inserts; XDP never deletes):
    delete expired entries and untrusted ones (kind 0, carried over from an older program); when
    more than `high` of the map is still used, evict live entries down to `low`: UDP-only ones
    first (peacetime learning is the weaker proof), then TCP ones, each soonest-to-expire first.
    So learning always finds room again. Reads the map in batches, deletes in batches."""
    t0 = time.monotonic()
    m = maps[abi.MapName.GOODSRC]
    ks, vs = ctypes.sizeof(abi.SrcKey), ctypes.sizeof(abi.GoodSrc)
    raw_k, raw_v, n = m.dump_raw()
    dead, live = [], []
    trusted = abi.VF_TCP | abi.VF_UDP
    # (expires_ns, kind) of each value in one pass (a ctypes object per entry costs ~10x more)
    for i, (exp, kind) in enumerate(struct.iter_unpack("=QI" + "x" * (vs - 12), raw_v[: n * vs])):
        key = raw_k[i * ks : (i + 1) * ks]
        if exp <= now_ns or not kind & trusted:
            dead.append(key)
        else:
            live.append((0 if kind & abi.VF_TCP else -1, exp, key))
    evict = []
    cap = m.max_entries
    if len(live) > high * cap:
        live.sort()  # UDP-only (-1) before TCP (0), then by expiry
        evict = [k for _, _, k in live[: len(live) - int(low * cap)]]
    gone = _delete_raw(m, dead + evict, ks)
    if gone and gone * 8 >= n:  # an eighth gone: their bloom bits too (a stale bit only costs a lookup)
        kept = live[len(evict) :] if evict else live
        words = [0] * (abi.GOODBLOOM_BITS // 64)
        for _, _, k in kept:
            bit = good_bloom_bit(abi.SrcKey.from_buffer_copy(k))
            words[bit >> 6] |= 1 << (bit & 63)
        _write_bloom(maps, words, abi.MapName.GOODBLOOM)
    return SweepStats(n, min(len(dead), gone), max(0, gone - len(dead)), n - gone, time.monotonic() - t0)


def _delete_raw(m, keys: list[bytes], ks: int, chunk: int = 16384) -> int:
    """Delete packed keys in BPF_MAP_DELETE_BATCH calls (key by key where a batch stops short)."""
    done = 0
    for i in range(0, len(keys), chunk):
        part = keys[i : i + chunk]
        buf = ctypes.create_string_buffer(b"".join(part), len(part) * ks)
        rc, cnt = libbpf.map_delete_batch(m.fd, ctypes.addressof(buf), len(part))
        done += cnt
        for k in part[cnt:]:  # a key already gone (or no batch support): one by one
            done += bool(m.delete(m.key_type.from_buffer_copy(k)))
    return done


def sweep_dst_buckets(maps, now_ns: int, idle_s: float = 60.0) -> int:
    """Delete the per-destination buckets (xg_dstbkt_hash) untouched for idle_s: the map fills
    with the ports of a flood over random ports, and while it is full new ports share their
    address's bucket (xg_dstaddr_arr). An idle bucket has refilled (a new one starts full), so
    deleting it changes no verdict unless its burst takes longer than idle_s to refill; the
    port-0 overflow entries of older programs go too. Returns how many were deleted."""
    m = maps[abi.MapName.DSTBKT]
    ks, vs = ctypes.sizeof(abi.PortKey), ctypes.sizeof(abi.DstBucket)
    raw_k, raw_v, n = m.dump_raw()
    limit = now_ns - int(idle_s * 1e9)
    stale = []
    for i in range(n):
        key = raw_k[i * ks : (i + 1) * ks]
        v = abi.DstBucket.from_buffer_copy(raw_v, i * vs)
        if v.last_ns < limit or abi.PortKey.from_buffer_copy(key).port == 0:
            stale.append(key)
    # the service records' buckets (xg_svc_arr): an idle one goes back to unused, as a new one
    arr = maps.get(abi.MapName.SVC)
    for _, pv in maps[abi.MapName.PORTS].items() if arr is not None else ():
        if pv.flags & abi.PORT_SLOT:
            svc = arr.get(ctypes.c_uint32(pv.slot))
            if svc is not None and 0 < svc.bkt.last_ns < limit:
                svc.bkt = abi.DstBucket(0, 0)
                arr.set(ctypes.c_uint32(pv.slot), svc)
    return _delete_raw(m, stale, ks)


def read_verified_drops(maps) -> VerifiedDrops:
    """The do-no-harm counters (xg_vdrop_pcpu), summed over CPUs, non-zero slots only. A filter
    is named by its index in the table (operator's filters first, then the mitigations: see
    read_filter_table); per ban, xg_ban.verified_hits (read_bans_verified_hits). Counters only
    grow: a caller that wants a rate keeps the previous reading."""
    m = maps[abi.MapName.VDROP]
    table = _read_filters(maps)
    filters: dict[int, tuple[Filter | None, VerifiedHits]] = {}
    reasons: dict[abi.Reason, VerifiedHits] = {}
    for slot in range(abi.FILTERS_MAX + abi.REASON_MAX):
        per_cpu = m.get(ctypes.c_uint32(slot)) or []
        d, e = sum(c.dropped for c in per_cpu), sum(c.exempted for c in per_cpu)
        if not d and not e:
            continue
        if slot < abi.FILTERS_MAX:
            filters[slot] = (table[slot] if slot < len(table) else None, VerifiedHits(d, e))
        else:
            try:
                reasons[abi.Reason(slot - abi.FILTERS_MAX)] = VerifiedHits(d, e)
            except ValueError:
                continue
    return VerifiedDrops(filters, reasons)


def read_bans_verified_hits(maps) -> dict[str, int]:
    """Per banned source, the packets the ban dropped while the source was verified: a ban that
    hits verified clients is suspect (the data path itself bans no verified source)."""
    out = {}
    for name in (abi.MapName.OPBANS, abi.MapName.BANS):
        for k, v in maps[name].items():
            if v.verified_hits:
                out[_src_text(k)] = out.get(_src_text(k), 0) + v.verified_hits
    return out


# ---- packet sampling: the switch and the per-CPU counters (sampling.py reads the ring) ----


def get_sample_every(maps) -> int:
    v = maps[MapName.SAMPLE_CFG].get(ctypes.c_uint32(0))
    return 0 if v is None else v.sample_every


def set_sample_every(maps, n: int) -> None:
    """1 in n per CPU and (kind, reason); n a power of two (the data path masks a counter)."""
    if not 0 <= n <= 1 << 24 or (n and n & (n - 1)):
        raise UserError(f"invalid sample rate 1 in {n}: use 0 (off) or a power of two up to {1 << 24}")
    maps[MapName.SAMPLE_CFG].set(ctypes.c_uint32(0), abi.SampleConfig(n, 0))


def sample_counters(maps) -> tuple[int, int]:
    """(samples taken, samples lost because the ring was full), summed over CPUs."""
    per_cpu = maps[MapName.SAMPLE_STATE].get(ctypes.c_uint32(0)) or []
    return sum(s.taken for s in per_cpu), sum(s.lost for s in per_cpu)


# ---- geo rules: the tries of the countries in use and each address's set (geo.py decides) ----


def read_spec(maps, prot: abi.Protected) -> geo.GeoSpec | None:
    """The address's realised rule (None without XG_PROT_GEO)."""
    if not prot.flags & abi.PROT_GEO:
        return None
    s = maps[abi.MapName.GEOSET].get(ctypes.c_uint32(prot.syn.slot))
    if s is None:
        return None
    cs = frozenset(geo.index_country(w * 64 + b) for w in range(abi.GEO_WORDS) for b in range(64) if s.bits[w] >> b & 1)
    return geo.GeoSpec(cs, bool(s.flags & abi.GEO_ONLY), "cc" if s.flags & abi.GEO_CC else "drop")


def read_address(maps, addr) -> geo.GeoSpec | None:
    """The realised rule of a protected address (None: no rule, or no such map: a guard whose
    maps were not all opened)."""
    m = maps.get(abi.MapName.PROT4 if addr.version == 4 else abi.MapName.PROT6)
    prot = m.get(prot_key(addr)) if m is not None else None
    return read_spec(maps, prot) if prot is not None else None


def write_spec(maps, addr, g: geo.GeoSpec | None) -> None:
    """Set (or with None clear) the address's rule: the set first, then the flag."""
    m = maps[abi.MapName.PROT4 if addr.version == 4 else abi.MapName.PROT6]
    k = prot_key(addr)
    cur = m.get(k)
    if cur is None:
        raise UserError(f"{addr} is not a protected address")
    if g is not None and g.active():
        maps[abi.MapName.GEOSET].set(ctypes.c_uint32(cur.syn.slot), geo._set_bits(g))
        cur.flags |= abi.PROT_GEO
    else:
        cur.flags &= ~abi.PROT_GEO
    m.set(k, cur)


def load_tries(maps, db: geo.GeoDB, codes) -> tuple[int, int]:
    """Make the two tries hold exactly the networks of `codes`: written in batches, then what
    is no longer wanted deleted (a source never sees an empty trie in between)."""
    want: dict[int, dict[bytes, int]] = {4: {}, 6: {}}
    for fam, addr, plen, cc in db.networks(codes):
        want[fam][struct.pack("<I", plen) + addr] = geo.country_index(cc)
    counts = []
    for fam, name in ((4, abi.MapName.GEO4), (6, abi.MapName.GEO6)):
        m = maps[name]
        items = want[fam]
        n = len(items)
        if n:
            keys = bytearray(b"".join(items.keys()))
            vals = bytearray(struct.pack(f"<{n}I", *items.values()))
            kb = (ctypes.c_char * len(keys)).from_buffer(keys)
            vb = (ctypes.c_char * len(vals)).from_buffer(vals)
            ks, pos = ctypes.sizeof(m.key_type), 0
            while pos < n:
                rc, cnt = libbpf.map_update_batch(
                    m.fd, ctypes.addressof(kb) + pos * ks, ctypes.addressof(vb) + pos * 4, n - pos
                )
                if rc != 0 and cnt == 0:
                    # LPM tries may lack batch updates: one element at a time
                    for i in range(pos, n):
                        k = m.key_type.from_buffer_copy(keys, i * ks)
                        libbpf.map_update(m.fd, k, ctypes.c_uint32(struct.unpack_from("<I", vals, i * 4)[0]))
                    break
                pos += cnt
        stale = [bytes(k) for k in m.keys() if bytes(k) not in items]
        for k in stale:
            m.delete(m.key_type.from_buffer_copy(k))
        counts.append(n)
    return counts[0], counts[1]


def clear_tries(maps) -> None:
    for name in (abi.MapName.GEO4, abi.MapName.GEO6):
        m = maps[name]
        for k in [bytes(k) for k in m.keys()]:
            m.delete(m.key_type.from_buffer_copy(k))


def count_verified(maps, now_ns: int) -> dict[str, int]:
    """Live verified sources by kind ("tcp", "udp", "tcp+udp", "untrusted"), from one batch dump;
    "challenge": those of them that passed a layer-7 challenge (XG_VF_L7)."""
    vs = ctypes.sizeof(abi.GoodSrc)
    _, raw_v, n = maps[abi.MapName.GOODSRC].dump_raw()
    out: dict[str, int] = {}
    for i in range(n):
        v = abi.GoodSrc.from_buffer_copy(raw_v, i * vs)
        if v.expires_ns > now_ns:
            k = _KIND_NAMES.get(v.kind & 3, "untrusted")
            out[k] = out.get(k, 0) + 1
            if v.kind & abi.VF_L7:  # also counted by its TCP kind above
                out["challenge"] = out.get("challenge", 0) + 1
    return out


# ---- admission budgets per service (budget.h) ----


def read_budgets(maps) -> list[BudgetView]:
    """The per-service budgets the data path has made (one per UDP service that got traffic, one
    per TCP service that got an unverified SYN below its address's SYN threshold)."""
    m = maps[abi.MapName.BUDGET]
    ks, vs = ctypes.sizeof(abi.PortKey), ctypes.sizeof(abi.Budget)
    raw_k, raw_v, n = m.dump_raw()
    out = []
    for i in range(n):
        k = abi.PortKey.from_buffer_copy(raw_k, i * ks)
        v = abi.Budget.from_buffer_copy(raw_v, i * vs)
        proto = "tcp" if k.proto == socket.IPPROTO_TCP else "udp"
        out.append(BudgetView(port_key_addr(k), k.port, v.rate, v.admitted, v.dropped, v.verified, proto))
    return sorted(out, key=lambda b: (b.protected, b.port or 0, b.proto))


def budget_totals(maps) -> dict[str, int]:
    """Sums over every service and the per-address slots: admitted, dropped, verified."""
    tot = {"admitted": 0, "dropped": 0, "verified": 0}
    for b in read_budgets(maps):
        for f in tot:
            tot[f] += getattr(b, f)
    for _, v in maps[abi.MapName.BUDGETADDR].items():
        for f in tot:
            tot[f] += getattr(v, f)
    return tot


def write_budget_rate(maps, protected: str, port: int, rate: int) -> bool:
    """Read-modify-write of one xg_budget_hash entry's `rate` (budget.h reads it on every
    unverified packet). XDP's counters that move between the read and the write are lost
    (a few packets' worth: the entries are unlocked anyway); the tokens are kept."""
    m = maps[abi.MapName.BUDGET]
    key = port_key(ipaddress.ip_address(protected), "udp", port)
    v = m.get(key)
    if v is None:
        return False
    v.rate = max(0, min(int(rate), 4_000_000_000))
    m.set(key, v)
    return True


def sweep_budgets(maps, now_ns: int, idle_s: float = 60.0) -> int:
    """Delete the budgets of services idle for idle_s that are no open port (a flood over random
    ports without a port policy fills xg_budget_hash; past full, ports share their address's slot).
    Open ports keep theirs (and their counters). Returns how many were deleted."""
    m = maps[abi.MapName.BUDGET]
    ks, vs = ctypes.sizeof(abi.PortKey), ctypes.sizeof(abi.Budget)
    raw_k, raw_v, n = m.dump_raw()
    if not n:
        return 0
    ports = maps[abi.MapName.PORTS]
    limit = now_ns - int(idle_s * 1e9)
    stale = []
    for i in range(n):
        key = raw_k[i * ks : (i + 1) * ks]
        if (
            abi.Budget.from_buffer_copy(raw_v, i * vs).last_ns < limit
            and ports.get(abi.PortKey.from_buffer_copy(key)) is None
        ):
            stale.append(key)
    return _delete_raw(m, stale, ks)


def verified_counters(maps) -> dict:
    """The verified-client and do-no-harm counters of one interface (stats --json, Prometheus):
    live verified sources by kind, the admission budgets' totals, and per filter or reason the
    packets of verified sources dropped or exempted (non-zero only)."""
    vd = read_verified_drops(maps)
    harm = {f"filter {i}": asdict(h) for i, (_, h) in sorted(vd.filters.items())}
    harm.update({abi.Reason(r).label: asdict(h) for r, h in sorted(vd.reasons.items())})
    return {
        "verified": count_verified(maps, time.clock_gettime_ns(time.CLOCK_MONOTONIC)),
        "budget": budget_totals(maps),
        "verified_drops": harm,
    }


# ---- UDP watermark (watermark.h): the services' entries; watermark.py computes their values ----


def write_watermark_service(maps, addr, port: int, v: abi.Wm | None) -> None:
    """Set (or with None remove) one service's entry, then the address's flag: set when any
    of its UDP ports is watermarked."""
    m = maps[abi.MapName.WM]
    k = port_key(addr, "udp", port)
    if v is not None:
        m.set(k, v)
    else:
        m.delete(k)
    pm = maps[abi.MapName.PROT4 if addr.version == 4 else abi.MapName.PROT6]
    pk = prot_key(addr)
    cur = pm.get(pk)
    if cur is None:
        raise UserError(f"{addr} is not a protected address")
    fam = addr.version
    mine = any(bytes(kk.addr)[: len(addr.packed)] == addr.packed and kk.family == fam for kk in m.keys())
    flags = (cur.flags | abi.PROT_WATERMARK) if mine else (cur.flags & ~abi.PROT_WATERMARK)
    if flags != cur.flags:
        cur.flags = flags
        pm.set(pk, cur)


def realised_watermarks(maps) -> dict[tuple[str, int], abi.Wm]:
    """(address, port) → the value in the kernel ({} without the map: a guard whose maps were
    not all opened, or a program from before the watermark)."""
    out = {}
    m = maps.get(abi.MapName.WM)
    if m is None:
        return out
    for k, v in m.items():
        raw = bytes(k.addr)[: 4 if k.family == 4 else 16]
        out[(str(ipaddress.ip_address(raw)), k.port)] = v
    return out


def realise_watermarks(maps, addresses) -> list[str]:
    """Make xg_wm_hash hold exactly the watermarks of `addresses` (AddressSpec with .watermark),
    keys read from their files now. A key file that cannot be read leaves that service's entry
    as it is (an old key keeps working) and gives a note."""
    notes = []
    want: dict[tuple[str, int], tuple] = {}
    for a in addresses:
        for w in getattr(a, "watermark", ()):
            want[(str(a.address), w.port)] = (a.address, w)
    have = realised_watermarks(maps)
    for (addr_s, port), (addr, w) in sorted(want.items(), key=str):
        try:
            key = wmark.read_key(w.key_file)
            prev = (
                wmark.read_key(w.previous_key_file) if w.previous_key_file and w.previous_until > time.time() else None
            )
        except UserError as exc:
            notes.append(f"{addr_s} udp/{port}: {exc.message}; the service keeps its realised key")
            continue
        write_watermark_service(maps, addr, port, wmark.value(key, w, prev))
    for addr_s, port in sorted(set(have) - set(want), key=str):
        write_watermark_service(maps, ipaddress.ip_address(addr_s), port, None)
    return notes


def watermark_counters(maps) -> dict[str, int]:
    """xg_wm_pcpu summed over CPUs, by name."""
    m = maps[abi.MapName.WMCNT]
    names = {
        abi.WM_CNT_PASS: "passed",
        abi.WM_CNT_PASS_OLD: "passed_previous_key",
        abi.WM_CNT_SHORT: "short",
        abi.WM_CNT_STALE: "stale",
        abi.WM_CNT_BAD: "bad_mac",
    }
    out = {}
    for i, n in names.items():
        v = m.get(ctypes.c_uint32(i))
        out[n] = int(sum(v)) if v else 0
    return out


# ---- protected addresses (xg_prot4/xg_prot6 keys) ----


def protected_addresses(maps) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(bytes(k.addr)) for name in (MapName.PROT4, MapName.PROT6) for k in maps[name].keys()]


# ---- TCP state validation (tcpstate.h): the switches and the connection table ----


def set_tcpstate(maps, on: bool, grace_until_ns: int = 0) -> None:
    """XG_CFG_TCPSTATE on or off, after the grace deadline (bpf_ktime_get_ns clock) for the
    connections older than the recorder: the deadline is written first, so XDP never validates
    without it."""
    maps[MapName.TCPCFG].set(ctypes.c_uint32(0), abi.TcpStateConfig(grace_until_ns, 0, 0, 0, 0))
    m = maps[MapName.CONFIG]
    cfg = m.get(ctypes.c_uint32(0))
    cfg.flags = (cfg.flags | abi.CFG_TCPSTATE) if on else (cfg.flags & ~abi.CFG_TCPSTATE)
    m.set(ctypes.c_uint32(0), cfg)


def set_tcpstate_address(maps, addr, on: bool) -> None:
    """Switch the step for one protected address (it applies while its port policy is on)."""
    pm = _prot_map(maps, addr)
    cur = pm.get(prot_key(addr))
    if cur is None:
        raise UserError(f"{addr} is not a protected address")
    cur.flags = (cur.flags & ~abi.PROT_TCPSTATE_OFF) | (0 if on else abi.PROT_TCPSTATE_OFF)
    pm.set(prot_key(addr), cur)


def tcpstate_enforced(maps, addr) -> bool:
    """Does XDP validate TCP state for this protected address right now? (The recorder is on, the
    grace after attach is over, the address's port policy is on and the step is not switched off.)
    While it does, a clean TCP segment with ACK and without SYN/RST belongs to a recorded
    connection: a spoofed source cannot have made one."""
    cfg = maps[MapName.CONFIG].get(ctypes.c_uint32(0))
    if cfg is None or not cfg.flags & abi.CFG_TCPSTATE:
        return False
    tc = maps[MapName.TCPCFG].get(ctypes.c_uint32(0))
    if tc is not None and _now_ns() < tc.grace_until_ns:
        return False
    cur = _prot_map(maps, addr).get(prot_key(addr))
    return cur is not None and bool(cur.flags & PROT_PORT_POLICY) and not cur.flags & abi.PROT_TCPSTATE_OFF


def seed_flows(maps, keys: list[abi.FlowKey], expires_ns: int) -> int:
    """Record connections (tcpstate.flow_key) as established until expires_ns."""
    m = maps[MapName.FLOWS]
    for k in keys:
        m.set(k, abi.Flow(expires_ns, abi.FLOW_EST, 0))
    return len(keys)


# ---- known-good sources (knowngood.h), for the mitigation engine ----


def known_good_sources(maps, srcs) -> set:
    """Which of `srcs` ((family, address bytes)) xg_goodsrc_hash holds, unexpired (the protected
    side answered them — a TCP connection established through us, a UDP datagram from the
    service): read-only look-ups of a round's few sources."""
    m = maps[MapName.GOODSRC]
    now = _now_ns()
    out = set()
    for fam, addr in srcs:
        try:
            v = m.get(src_key(ipaddress.ip_address(addr)))
        except ValueError:
            continue
        if v is not None and v.expires_ns > now:
            out.add((fam, addr))
    return out


# ---- counters, the source sketch and whole maps (a test bed's private program: testrun.py) ----


def counter_table(maps) -> dict[tuple[Kind, Reason], tuple[int, int]]:
    """(kind, reason) → (packets, bytes), summed over the CPUs, every slot."""
    stats = maps[MapName.STATS]
    out = {}
    for kind in Kind:
        for reason in Reason:
            per_cpu = stats.get(ctypes.c_uint32(stats_slot(kind, reason))) or []
            out[(kind, reason)] = (sum(c.packets for c in per_cpu), sum(c.bytes for c in per_cpu))
    return out


def _zero_array(m: BpfMap) -> None:
    """Every slot of an array map zeroed with one batch update."""
    n = m.max_entries
    keys = (ctypes.c_uint32 * n)(*range(n))
    per = ctypes.sizeof(m.value_type)
    if m.percpu:  # the kernel's per-CPU batch layout: each value rounded up to 8 bytes, per CPU
        per = (per + 7) // 8 * 8 * m.ncpu
    vals = (ctypes.c_char * (per * n))()
    rc, done = libbpf.map_update_batch(m.fd, ctypes.addressof(keys), ctypes.addressof(vals), n)
    if rc != 0 or done != n:
        raise libbpf.BpfError(-rc, f"map update batch on {m.name.value}")


def clear_sketch(maps) -> None:
    """Zero every slot of xg_srcsk_arr."""
    _zero_array(maps[MapName.SRCSKETCH])


def clear_maps(maps) -> None:
    """Every map back to what a fresh compile holds: arrays zeroed, hashes, LRUs and tries
    emptied. The sample ring buffer is left to its reader, which drains it."""
    for m in maps.values():
        kind = libbpf.map_info(m.fd).type
        if kind == abi.MAP_TYPES["ringbuf"]:
            continue
        if kind in (abi.MAP_TYPES["array"], abi.MAP_TYPES["percpu_array"]):
            _zero_array(m)
        else:
            for k in list(m.keys()):
                m.delete(k)
