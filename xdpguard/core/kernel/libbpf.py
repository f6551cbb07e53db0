"""ctypes bindings to the few libbpf (libbpf.so.1) calls the controller needs.

Pinned-map access, XDP attach/detach/query, object info and BPF_PROG_TEST_RUN work on plain
file descriptors, so a CLI process can act on maps that an earlier process created without
compiling anything. libbpf >= 1.0 returns -errno from every call used here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from functools import lru_cache

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4

# enum bpf_xdp_attach_mode (uapi/linux/if_link.h XDP_ATTACHED_*)
XDP_ATTACHED_NONE = 0
XDP_ATTACHED_DRV = 1
XDP_ATTACHED_SKB = 2
XDP_ATTACHED_HW = 3
XDP_ATTACHED_MULTI = 4


class BpfError(OSError):
    """A libbpf call failed; errno and the call's name are kept."""


class _BatchOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _XdpAttachOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int)]


class _XdpQueryOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
    ]


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class ProgInfo(ctypes.Structure):
    """Prefix of struct bpf_prog_info (the kernel fills what fits)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class MapInfo(ctypes.Structure):
    """Prefix of struct bpf_map_info."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


@lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        so = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:  # pragma: no cover - depends on the machine
        raise BpfError(errno.ENOENT, f"libbpf.so.1 not found ({exc}); run scripts/setup.sh") from None
    vp, u32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)
    sigs = {
        "bpf_obj_pin": ([ctypes.c_int, ctypes.c_char_p], ctypes.c_int),
        "bpf_obj_get": ([ctypes.c_char_p], ctypes.c_int),
        "bpf_map_update_elem": ([ctypes.c_int, vp, vp, ctypes.c_uint64], ctypes.c_int),
        "bpf_map_lookup_elem": ([ctypes.c_int, vp, vp], ctypes.c_int),
        "bpf_map_delete_elem": ([ctypes.c_int, vp], ctypes.c_int),
        "bpf_map_get_next_key": ([ctypes.c_int, vp, vp], ctypes.c_int),
        "bpf_map_update_batch": ([ctypes.c_int, vp, vp, u32p, ctypes.POINTER(_BatchOpts)], ctypes.c_int),
        "bpf_map_delete_batch": ([ctypes.c_int, vp, u32p, ctypes.POINTER(_BatchOpts)], ctypes.c_int),
        "bpf_map_lookup_batch": ([ctypes.c_int, vp, vp, vp, vp, u32p, ctypes.POINTER(_BatchOpts)], ctypes.c_int),
        "bpf_prog_test_run_opts": ([ctypes.c_int, ctypes.POINTER(_TestRunOpts)], ctypes.c_int),
        "bpf_xdp_attach": ([ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(_XdpAttachOpts)], ctypes.c_int),
        "bpf_xdp_detach": ([ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(_XdpAttachOpts)], ctypes.c_int),
        "bpf_xdp_query": ([ctypes.c_int, ctypes.c_int, ctypes.POINTER(_XdpQueryOpts)], ctypes.c_int),
        "bpf_prog_get_fd_by_id": ([ctypes.c_uint32], ctypes.c_int),
        "bpf_map_get_fd_by_id": ([ctypes.c_uint32], ctypes.c_int),
        "bpf_obj_get_info_by_fd": ([ctypes.c_int, vp, u32p], ctypes.c_int),
        "libbpf_num_possible_cpus": ([], ctypes.c_int),
    }
    for fname, (argtypes, restype) in sigs.items():
        fn = getattr(so, fname)
        fn.argtypes = argtypes
        fn.restype = restype
    return so


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = -rc if rc != -1 else (ctypes.get_errno() or errno.EPERM)
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return rc


@lru_cache(maxsize=1)
def num_possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, os.fsencode(path)), f"pin {path}")


def obj_get(path: str) -> int:
    return _check(lib().bpf_obj_get(os.fsencode(path)), f"open pin {path}")


def map_update(fd: int, key, value, flags: int = BPF_ANY) -> None:
    _check(lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), flags), "map update")


def map_update_raw(fd: int, key_ptr: int, value_ptr: int, flags: int = BPF_ANY) -> int:
    """Like map_update on raw addresses; returns 0 or -errno instead of raising (hot loops)."""
    return lib().bpf_map_update_elem(fd, key_ptr, value_ptr, flags)


def map_lookup(fd: int, key, value) -> bool:
    rc = lib().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if rc == -errno.ENOENT:
        return False
    _check(rc, "map lookup")
    return True


def map_delete(fd: int, key) -> bool:
    rc = lib().bpf_map_delete_elem(fd, ctypes.byref(key))
    if rc == -errno.ENOENT:
        return False
    _check(rc, "map delete")
    return True


def map_next_key(fd: int, key, next_key) -> bool:
    """Writes the key after `key` (or the first key when key is None) into next_key."""
    rc = lib().bpf_map_get_next_key(fd, ctypes.byref(key) if key is not None else None, ctypes.byref(next_key))
    if rc == -errno.ENOENT:
        return False
    _check(rc, "map get_next_key")
    return True


def map_update_batch(fd: int, keys_ptr: int, values_ptr: int, count: int, elem_flags: int = BPF_ANY) -> tuple[int, int]:
    """Returns (rc, processed). rc is 0 or -errno; processed counts elements applied."""
    n = ctypes.c_uint32(count)
    opts = _BatchOpts(ctypes.sizeof(_BatchOpts), elem_flags, 0)
    rc = lib().bpf_map_update_batch(fd, keys_ptr, values_ptr, ctypes.byref(n), ctypes.byref(opts))
    return rc, n.value


def map_delete_batch(fd: int, keys_ptr: int, count: int) -> tuple[int, int]:
    """One BPF_MAP_DELETE_BATCH call: (rc, elements deleted). rc is 0 or -errno (-ENOENT: a key
    was already gone; the ones before it were deleted)."""
    n = ctypes.c_uint32(count)
    opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
    rc = lib().bpf_map_delete_batch(fd, keys_ptr, ctypes.byref(n), ctypes.byref(opts))
    return rc, n.value


def map_lookup_batch(
    fd: int, keys_ptr: int, values_ptr: int, count: int, in_batch: int | None, out_batch_ptr: int
) -> tuple[int, int]:
    """One BPF_MAP_LOOKUP_BATCH call: (rc, elements returned). rc is -ENOENT at the end."""
    n = ctypes.c_uint32(count)
    opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
    rc = lib().bpf_map_lookup_batch(
        fd, in_batch, out_batch_ptr, keys_ptr, values_ptr, ctypes.byref(n), ctypes.byref(opts)
    )
    return rc, n.value


def prog_get_fd_by_id(prog_id: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), f"open prog id {prog_id}")


def map_get_fd_by_id(map_id: int) -> int:
    return _check(lib().bpf_map_get_fd_by_id(map_id), f"open map id {map_id}")


def prog_info(fd: int) -> tuple[ProgInfo, list[int]]:
    """The program's info and the ids of the maps it uses."""
    info = ProgInfo()
    n = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n)), "prog info")
    count = info.nr_map_ids
    if not count:
        return info, []
    ids = (ctypes.c_uint32 * count)()
    info2 = ProgInfo()
    info2.nr_map_ids = count
    info2.map_ids = ctypes.addressof(ids)
    n = ctypes.c_uint32(ctypes.sizeof(info2))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info2), ctypes.byref(n)), "prog info (map ids)")
    return info, list(ids[: min(count, info2.nr_map_ids)])


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    n = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n)), "map info")
    return info


def xdp_attach(ifindex: int, prog_fd: int, flags: int, old_prog_fd: int | None = None) -> None:
    opts = _XdpAttachOpts(ctypes.sizeof(_XdpAttachOpts), old_prog_fd or 0)
    if old_prog_fd is not None:
        flags |= XDP_FLAGS_REPLACE
    _check(lib().bpf_xdp_attach(ifindex, prog_fd, flags, ctypes.byref(opts)), "XDP attach")


def xdp_detach(ifindex: int, flags: int, expected_prog_fd: int | None = None) -> None:
    """Detach; with expected_prog_fd the kernel refuses if another program is attached."""
    opts = _XdpAttachOpts(ctypes.sizeof(_XdpAttachOpts), expected_prog_fd or 0)
    if expected_prog_fd is not None:
        flags |= XDP_FLAGS_REPLACE
    _check(lib().bpf_xdp_detach(ifindex, flags, ctypes.byref(opts)), "XDP detach")


def xdp_query(ifindex: int) -> dict:
    """Attached XDP program ids by mode, read from the kernel over netlink."""
    opts = _XdpQueryOpts()
    opts.sz = ctypes.sizeof(_XdpQueryOpts)
    _check(lib().bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), "XDP query")
    return {
        "prog_id": opts.prog_id,
        "drv_prog_id": opts.drv_prog_id,
        "skb_prog_id": opts.skb_prog_id,
        "hw_prog_id": opts.hw_prog_id,
        "attach_mode": opts.attach_mode,
    }


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, out_size: int = 4096) -> tuple[int, bytes, int]:
    """BPF_PROG_TEST_RUN: returns (retval, data_out, mean duration ns per run)."""
    buf_in = ctypes.create_string_buffer(data, len(data))
    buf_out = ctypes.create_string_buffer(max(out_size, len(data) + 256))
    opts = _TestRunOpts()
    opts.sz = ctypes.sizeof(_TestRunOpts)
    opts.data_in = ctypes.addressof(buf_in)
    opts.data_size_in = len(data)
    opts.data_out = ctypes.addressof(buf_out)
    opts.data_size_out = len(buf_out)
    opts.repeat = repeat
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval, buf_out.raw[: opts.data_size_out], opts.duration
