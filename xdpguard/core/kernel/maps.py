"""Typed access to the program's maps by file descriptor (pinned or found through the program).

No compiler involved: a BpfMap wraps an fd plus the ctypes layout from abi.MAP_LAYOUTS.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator

from . import libbpf
from .abi import MAP_LAYOUTS, MapName


ENOTSUPP = 524  # the kernel's internal "operation not supported" (not in Python's errno)


class BpfMap:
    def __init__(self, name: MapName, fd: int, layout: tuple[type, type, bool] | None = None):
        self.name = name
        self.fd = fd
        self.key_type, self.value_type, self.percpu = layout or MAP_LAYOUTS[name]
        info = libbpf.map_info(fd)
        self.id = info.id
        self.max_entries = info.max_entries
        if info.key_size != ctypes.sizeof(self.key_type) or info.value_size != ctypes.sizeof(self.value_type):
            raise libbpf.BpfError(
                0,
                f"map {name.value}: kernel layout key={info.key_size}/value={info.value_size} bytes "
                f"does not match this xdpguard's ABI; detach and re-attach",
            )
        if self.percpu:
            self.ncpu = libbpf.num_possible_cpus()
            self._value_array_type = self.value_type * self.ncpu

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BpfMap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _value_buf(self):
        return self._value_array_type() if self.percpu else self.value_type()

    def get(self, key):
        """The value (a list of per-CPU values for per-CPU maps), or None."""
        val = self._value_buf()
        if not libbpf.map_lookup(self.fd, key, val):
            return None
        return list(val) if self.percpu else val

    def set(self, key, value, flags: int = libbpf.BPF_ANY) -> None:
        if self.percpu and not isinstance(value, ctypes.Array):
            arr = self._value_array_type()
            for i in range(self.ncpu):
                arr[i] = value
            value = arr
        libbpf.map_update(self.fd, key, value, flags)

    def delete(self, key) -> bool:
        return libbpf.map_delete(self.fd, key)

    def keys(self) -> Iterator:
        cur = None
        while True:
            nxt = self.key_type()
            if not libbpf.map_next_key(self.fd, cur, nxt):
                return
            yield nxt
            cur = nxt

    def items(self) -> Iterator[tuple]:
        for k in self.keys():
            v = self.get(k)
            if v is not None:  # deleted between next_key and lookup
                yield k, v

    def array_values(self) -> list:
        """Every value of an array map, by index, in few BPF_MAP_LOOKUP_BATCH calls (a 65536-entry
        array read one key at a time costs 131k syscalls)."""
        n = self.max_entries
        keys = (self.key_type * n)()
        values = (self.value_type * n)()
        token = ctypes.c_uint32()
        got = 0
        in_batch = None
        while got < n:
            rc, cnt = libbpf.map_lookup_batch(
                self.fd,
                ctypes.addressof(keys) + got * ctypes.sizeof(self.key_type),
                ctypes.addressof(values) + got * ctypes.sizeof(self.value_type),
                n - got,
                in_batch,
                ctypes.addressof(token),
            )
            got += cnt
            if rc == -errno.ENOENT or (rc == 0 and cnt == 0):
                break
            if rc < 0:
                raise libbpf.BpfError(-rc, f"map lookup batch on {self.name.value}: {os.strerror(-rc)}")
            in_batch = ctypes.addressof(token)
        return list(values[:got])

    def dump_raw(self, chunk: int = 65536) -> tuple[bytes, bytes, int]:
        """Every (key, value) as two packed byte strings and the count, in few
        BPF_MAP_LOOKUP_BATCH calls (hash maps; a million entries in well under a second). Maps
        without batch support (LPM tries) are walked key by key."""
        ks, vs = ctypes.sizeof(self.key_type), ctypes.sizeof(self.value_type)
        keys = (ctypes.c_char * (ks * chunk))()
        values = (ctypes.c_char * (vs * chunk))()
        token = ctypes.c_uint64()
        out_k, out_v = bytearray(), bytearray()
        n = 0
        in_batch = None
        while True:
            rc, cnt = libbpf.map_lookup_batch(
                self.fd, ctypes.addressof(keys), ctypes.addressof(values), chunk, in_batch, ctypes.addressof(token)
            )
            if rc < 0 and rc != -errno.ENOENT:
                if n == 0 and rc in (-errno.EINVAL, -errno.EOPNOTSUPP, -ENOTSUPP):
                    return self._dump_walk()  # no batch support (LPM tries)
                raise libbpf.BpfError(-rc, f"map lookup batch on {self.name.value}: {os.strerror(-rc)}")
            out_k += bytes(keys)[: cnt * ks]
            out_v += bytes(values)[: cnt * vs]
            n += cnt
            if rc == -errno.ENOENT or cnt == 0:
                return bytes(out_k), bytes(out_v), n
            in_batch = ctypes.addressof(token)

    def _dump_walk(self) -> tuple[bytes, bytes, int]:
        out_k, out_v = bytearray(), bytearray()
        n = 0
        for k, v in self.items():
            out_k += bytes(k)
            out_v += bytes(v)
            n += 1
        return bytes(out_k), bytes(out_v), n

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def count(self, chunk: int = 8192) -> int:
        """len(self) in few BPF_MAP_LOOKUP_BATCH calls, keeping nothing (dump_raw without the
        copies): a 262k-entry hash walked key by key costs 262k syscalls and about 2 s."""
        vsize = ctypes.sizeof(self.value_type)
        if self.percpu:
            vsize = (vsize + 7) // 8 * 8 * self.ncpu
        keys = (ctypes.c_char * (chunk * ctypes.sizeof(self.key_type)))()
        values = (ctypes.c_char * (chunk * vsize))()
        token = (ctypes.c_char * max(8, ctypes.sizeof(self.key_type)))()
        total, in_batch = 0, None
        while True:
            rc, cnt = libbpf.map_lookup_batch(
                self.fd, ctypes.addressof(keys), ctypes.addressof(values), chunk, in_batch, ctypes.addressof(token)
            )
            if total == 0 and rc in (-errno.EINVAL, -errno.EOPNOTSUPP, -ENOTSUPP):
                return len(self)  # no batch support (LPM tries), as dump_raw
            total += cnt
            if rc == -errno.ENOENT or (rc == 0 and cnt == 0):
                return total
            if rc < 0:
                raise libbpf.BpfError(-rc, f"map lookup batch on {self.name.value}: {os.strerror(-rc)}")
            in_batch = ctypes.addressof(token)
