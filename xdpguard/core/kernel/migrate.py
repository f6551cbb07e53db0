"""Carry the maps of an attached program over to a new program whose map shapes differ.

`xdpguard upgrade` compiles the new program against the old one's maps (pins), so lists,
bans, buckets, connections and counters stay where they are and the swap is atomic. That only
works for maps whose shape (type, key and value size, max_entries, flags) is unchanged: bcc
reuses a pinned map without checking it. This module compares the live maps with the shapes
the new program declares (abi.MAP_SHAPES + MAP_LAYOUTS, for the -D defines of the compile),
and plans per map:

  keep     same shape: the new program is compiled against the very map (no copy);
  copy     same key, value unchanged or grown at its end (fields appended: zero-filled),
           another max_entries or flags: a new map, filled from the old one before the swap;
  stats    xg_stats_pcpu with another XG_REASON_MAX: counters moved to their new slots;
  reset    soft state whose key changed (token buckets, first-SYN memory, SYN windows,
           sampler state): starts empty, which costs at most a refill or one retransmission;
  new      a map the old program did not have: created empty by the compile.

Anything else (a list, ban, connection or policy map whose key changed or value shrank, or
more entries than the new map holds) is refused before anything is compiled: nothing changes.
Updates the old program makes between the copy and the swap (a few milliseconds: new bans,
counter increments) stay in the old maps and are lost; the notes say which maps were copied.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import libbpf
from .abi import KIND_MAX, MAP_LAYOUTS, MAP_SHAPES, MAP_TYPES, MapName, map_sizes
from ..errors import UserError

# Soft state: losing it costs a refill or one SYN retransmission, never a policy.
SOFT = frozenset(
    {
        MapName.BUCKETS,
        MapName.SRCSKETCH,
        MapName.DSTBKT,
        MapName.DSTADDR,
        MapName.SYNSEEN,
        MapName.SYNWIN,
        MapName.SYNAUTH,
        MapName.UDPWIN,
        MapName.UDPFLOOD,
        MapName.SAMPLE_STATE,
        MapName.SAMPLES,
    }
)
# Pins of maps an older program had and this one has not (renamed when their layout changed):
# removed from the interface's pin directory once the new program runs.
RETIRED = frozenset({"xg_synauth_hash"})  # now xg_synauth_lru (an LRU: soft state)
# Never shared through a pin (bcc declares the ring without XG_MAP): always new.
UNPINNED = frozenset({MapName.SAMPLES})
PERCPU_TYPES = frozenset({MAP_TYPES["percpu_array"], 5})  # 5: percpu_hash
ARRAY_TYPES = frozenset({MAP_TYPES["array"], MAP_TYPES["percpu_array"]})


@dataclass(frozen=True)
class Shape:
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int

    def describe(self) -> str:
        kind = {v: k for k, v in MAP_TYPES.items()}.get(self.type, str(self.type))
        return f"{kind} key {self.key_size} B, value {self.value_size} B, {self.max_entries} entries, flags {self.flags:#x}"


def _size(t) -> int:
    return 0 if isinstance(t, str) else ctypes.sizeof(t)


def expected_shapes(defines: Mapping[str, int] | None = None) -> dict[MapName, Shape]:
    """The shape of every map of the program this xdpguard compiles with these defines."""
    sizes = map_sizes(defines)
    out = {}
    for name, (kind, max_entries, flags) in MAP_SHAPES.items():
        key_t, value_t, _ = MAP_LAYOUTS[name]
        n = sizes[max_entries] if isinstance(max_entries, str) else max_entries
        out[name] = Shape(MAP_TYPES[kind], _size(key_t), _size(value_t), n, flags)
    return out


def shape_of(fd: int) -> Shape:
    i = libbpf.map_info(fd)
    return Shape(i.type, i.key_size, i.value_size, i.max_entries, i.map_flags)


@dataclass
class Step:
    name: MapName
    action: str  # keep | copy | stats | reset | new
    old: Shape | None
    new: Shape
    entries: int = 0


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)

    def by_action(self, action: str) -> list[MapName]:
        return [s.name for s in self.steps if s.action == action]

    @property
    def changes_shapes(self) -> bool:
        return any(s.action not in ("keep",) and s.name not in UNPINNED for s in self.steps)

    def notes(self) -> list[str]:
        out = []
        for s in self.steps:
            if s.action == "copy":
                out.append(
                    f"{s.name.value}: {s.entries} entries copied into a new map ({s.old.describe()} -> {s.new.describe()})"
                )
            elif s.action == "stats":
                out.append(
                    f"{s.name.value}: counters moved to the new reason slots ({s.old.max_entries} -> {s.new.max_entries})"
                )
            elif s.action == "reset" and s.name not in UNPINNED:
                out.append(f"{s.name.value}: soft state started empty ({s.old.describe()} -> {s.new.describe()})")
            elif s.action == "new" and s.name not in UNPINNED:
                out.append(f"{s.name.value}: new map")
        return out


def _value_bytes(shape: Shape, ncpu: int) -> int:
    """Bytes of one value as the syscalls move it (per-CPU values: 8-byte aligned, one per CPU)."""
    if shape.type in PERCPU_TYPES:
        return (shape.value_size + 7) // 8 * 8 * ncpu
    return shape.value_size


def _walk(fd: int, shape: Shape, ncpu: int):
    """Every (key, value) of a map as bytes (arrays: every index), key by key."""
    if shape.type in ARRAY_TYPES:
        vbuf = ctypes.create_string_buffer(_value_bytes(shape, ncpu))
        for i in range(shape.max_entries):
            k = ctypes.c_uint32(i)
            if libbpf.lib().bpf_map_lookup_elem(fd, ctypes.byref(k), vbuf) == 0:
                yield bytes(k), vbuf.raw
        return
    kbuf, nbuf = ctypes.create_string_buffer(shape.key_size), ctypes.create_string_buffer(shape.key_size)
    vbuf = ctypes.create_string_buffer(_value_bytes(shape, ncpu))
    prev = None
    while True:
        rc = libbpf.lib().bpf_map_get_next_key(fd, prev, nbuf)
        if rc != 0:
            return
        ctypes.memmove(kbuf, nbuf, shape.key_size)
        prev = kbuf
        if libbpf.lib().bpf_map_lookup_elem(fd, kbuf, vbuf) == 0:
            yield kbuf.raw, vbuf.raw


def _is_zero(b: bytes) -> bool:
    return not any(b)


def count_entries(fd: int, shape: Shape, ncpu: int) -> int:
    if shape.type in ARRAY_TYPES:
        return sum(1 for _, v in _walk(fd, shape, ncpu) if not _is_zero(v))
    return sum(1 for _ in _walk(fd, shape, ncpu))


def plan(old: Mapping[MapName, int], defines: Mapping[str, int] | None = None) -> Plan:
    """Compare the live maps (name → fd of the attached program's map) with the new shapes.
    Raises UserError naming every map that cannot be carried over; reads, never writes."""
    ncpu = libbpf.num_possible_cpus()
    new = expected_shapes(defines)
    p = Plan()
    problems = []
    for name, want in new.items():
        if name not in old:
            p.steps.append(Step(name, "new", None, want))
            continue
        have = shape_of(old[name])
        if name in UNPINNED:
            p.steps.append(Step(name, "reset", have, want))
        elif have == want:
            p.steps.append(Step(name, "keep", have, want))
        elif (
            name == MapName.STATS
            and have.key_size == want.key_size
            and have.value_size == want.value_size
            and have.max_entries % KIND_MAX == 0
        ):
            p.steps.append(Step(name, "stats", have, want))
        elif have.type == want.type and have.key_size == want.key_size and have.value_size <= want.value_size:
            n = count_entries(old[name], have, ncpu)
            if have.type in ARRAY_TYPES:
                dropped = [
                    k
                    for k, v in _walk(old[name], have, ncpu)
                    if int.from_bytes(k, "little") >= want.max_entries and not _is_zero(v)
                ]
                if dropped:
                    problems.append(f"{name.value}: {len(dropped)} used slots beyond the new size {want.max_entries}")
            elif n > want.max_entries and name not in SOFT and have.type != MAP_TYPES["lru_hash"]:
                problems.append(f"{name.value}: {n} entries do not fit the new size {want.max_entries}")
            p.steps.append(Step(name, "copy", have, want, n))
        elif name in SOFT:
            p.steps.append(Step(name, "reset", have, want))
        else:
            problems.append(f"{name.value}: {have.describe()} cannot become {want.describe()}")
    if problems:
        raise UserError(
            "cannot carry the maps over to the new program: "
            + "; ".join(problems)
            + "; nothing was changed (export, detach, attach and apply to move over)"
        )
    return p


def stage(p: Plan, old: Mapping[MapName, int], staging: Path) -> None:
    """Pin the kept maps into the (new, empty) staging directory the new program is compiled
    against; copied, reset and new maps get no pin there, so the compile creates them."""
    staging.mkdir(mode=0o700)
    for s in p.steps:
        if s.action == "keep":
            libbpf.obj_pin(old[s.name], str(staging / s.name.value))


def _update(fd: int, key: bytes, value: bytes) -> None:
    kb, vb = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
    rc = libbpf.lib().bpf_map_update_elem(fd, kb, vb, libbpf.BPF_ANY)
    if rc < 0 and rc != -errno.E2BIG:
        err = -rc if rc != -1 else (ctypes.get_errno() or errno.EPERM)
        raise libbpf.BpfError(err, f"map update: {os.strerror(err)}")


def _grow(value: bytes, have: Shape, want: Shape, ncpu: int) -> bytes:
    """A value with fields appended at its end: the new tail is zero (per CPU for per-CPU maps)."""
    if have.value_size == want.value_size:
        return value
    if have.type not in PERCPU_TYPES:
        return value + bytes(want.value_size - have.value_size)
    a, b = (have.value_size + 7) // 8 * 8, (want.value_size + 7) // 8 * 8
    return b"".join(value[i * a : i * a + have.value_size].ljust(b, b"\0") for i in range(ncpu))


def copy(p: Plan, old: Mapping[MapName, int], new: Mapping[MapName, int]) -> None:
    """Fill the new maps of `copy` and `stats` steps from the old ones (just before the swap)."""
    ncpu = libbpf.num_possible_cpus()
    for s in p.steps:
        if s.action == "copy":
            for k, v in _walk(old[s.name], s.old, ncpu):
                if s.old.type in ARRAY_TYPES and (int.from_bytes(k, "little") >= s.new.max_entries or _is_zero(v)):
                    continue
                _update(new[s.name], k, _grow(v, s.old, s.new, ncpu))
        elif s.action == "stats":
            r_old, r_new = s.old.max_entries // KIND_MAX, s.new.max_entries // KIND_MAX
            for k, v in _walk(old[s.name], s.old, ncpu):
                i = int.from_bytes(k, "little")
                kind, reason = divmod(i, r_old)
                if reason < r_new and not _is_zero(v):
                    _update(new[s.name], (kind * r_new + reason).to_bytes(4, "little"), v)


def commit_pins(new: Mapping[MapName, int], staging: Path, pin_dir: Path) -> None:
    """After the swap: the interface's pins name the new program's maps; staging goes away."""
    pin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, fd in new.items():
        dst = pin_dir / name.value
        src = staging / name.value
        if src.exists():
            os.replace(src, dst)  # bpffs renames within one mount
        else:
            if dst.exists():
                dst.unlink()
            libbpf.obj_pin(fd, str(dst))
    for name in RETIRED:
        if (pin_dir / name).exists():
            (pin_dir / name).unlink()
    remove_staging(staging)


def remove_staging(staging: Path) -> None:
    if not staging.exists():
        return
    for f in staging.iterdir():
        f.unlink()
    staging.rmdir()
