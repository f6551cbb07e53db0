"""Compile, load and attach the XDP program (bcc); find a running program's maps again.

The same compile also loads the tc egress recorder of the TCP state step (xdpguard_egress,
sharing the XDP program's maps); `tc_attach/tc_detach/tc_query` put it on the interface's
clsact egress hook as a direct-action cls_bpf filter through libbpf's bpf_tc_* calls.

Only `attach` compiles. Everything else works from the kernel: the program attached to an
interface (bpf_xdp_query) leads to its maps (prog id → map ids), so state is always
rediscoverable even when pins are gone.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import hashlib
import os
import re
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from . import libbpf
from .abi import (
    BPF_DIR,
    EGRESS_FUNC,
    FWD_DEFINE,
    FWD_IN_FUNC,
    FWD_PROG_ARRAY,
    FWD_RETURN_FUNC,
    PROGRAM_FUNC,
    PROGRAM_SOURCE,
    MapName,
)
from ..errors import UserError

PROGRAM_KERNEL_NAME = PROGRAM_FUNC[:15]  # kernel program names are 15 chars at most
EGRESS_KERNEL_NAME = EGRESS_FUNC[:15]
FWD_RETURN_KERNEL_NAME = FWD_RETURN_FUNC[:15]

# The compiler flags bcc gets besides its own (kernel include paths and defines): also what
# tests/bpf/test_headers.py compiles every header alone with.
CFLAGS = ("-Wno-unused-function", "-Wno-compare-distinct-pointer-types")

_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


# Compile-time specialisation (-D NAME=1 through compile_program's defines): a feature that is
# not configured compiles to a stub that returns "continue" (policy.h, stats.h). Measured on a
# clean pass (benchcases, BPF_PROG_TEST_RUN): all four together save about 10 ns of ~70 (0.4x a
# bare XDP_DROP); the flag tests they replace are cheap, so nothing switches them on by itself.
SPEC_DEFINES = {
    "XG_SPEC_NO_BANS": "no dynamic or operator bans: step_banned is a stub (no xg_dpstate_arr lookup)",
    "XG_SPEC_NO_FILTERS": "no feature filters: step_feature is a stub",
    "XG_SPEC_NO_LIMITS": "no rate limits: step_ratelimit is a stub",
    "XG_SPEC_NO_SAMPLING": "no verdict sampling: record_verdict does not look at xg_sample_cfg",
}


def render_source(defines: dict[str, int] | None = None, source: Path = PROGRAM_SOURCE) -> str:
    """The final C text: our quoted includes inlined (bcc only rewrites map calls in the
    main file), preceded by the -D style defines. What `attach --ebpf` prints. Every quoted
    include is relative to bpf/include; `source` is another root (a header compiled alone)."""
    seen: set[Path] = set()

    def inline(path: Path) -> str:
        if path in seen:
            return ""
        seen.add(path)
        text = path.read_text()

        def repl(m: re.Match) -> str:
            inc = BPF_DIR / "include" / m.group(1)
            return f"/* ---- {m.group(1)} ---- */\n" + inline(inc)

        return _INCLUDE_RE.sub(repl, text)

    head = "".join(f"#define {k} {v}\n" for k, v in sorted((defines or {}).items()))
    return head + inline(source)


def _import_bcc():
    try:
        import bcc  # Debian's python3-bpfcc, seen through --system-site-packages
    except ImportError:
        raise UserError("bcc (python3-bpfcc) is not importable; run scripts/setup.sh") from None
    return bcc


def kernel_headers_hint() -> str | None:
    build = Path("/lib/modules") / os.uname().release / "build"
    if os.environ.get("BCC_KERNEL_SOURCE") or build.exists():
        return None
    return f"no kernel headers for {os.uname().release} (/lib/modules/.../build missing); run scripts/setup.sh"


@dataclass
class LoadedProgram:
    """A freshly compiled program: the bcc object keeps the fds alive."""

    bpf: object
    prog_fd: int
    map_fds: dict[MapName, int] = field(default_factory=dict)
    egress_fd: int = -1  # the tc egress recorder (SCHED_CLS), same maps
    fwd_fd: int = -1  # the fast path's return program (XDP, backend side), only with FWD_DEFINE
    # ... and its tail-call array (xg_fwd_prog): pinned, since the kernel empties a program array
    # when the last file descriptor or pin of it goes
    fwd_array_fd: int = -1
    fwd_in_fd: int = -1  # ... and the program in its slot (pinned: the reconciler refills an emptied slot)

    def close(self) -> None:
        try:
            self.bpf.cleanup()  # closes fds; does NOT detach XDP (we own that)
        except Exception:
            pass


def program_sha256(defines: dict[str, int] | None = None) -> str:
    """Identifies the program this xdpguard would load (source and compile-time features): an
    attached program with another hash is an older version, to be upgraded in place."""
    return hashlib.sha256(render_source(defines).encode()).hexdigest()


def compile_program(defines: dict[str, int] | None = None, pin_dir: Path | None = None) -> LoadedProgram:
    """Compile and load. With pin_dir, every map is opened from its pin there when one exists
    (created and pinned otherwise): the new program shares the old one's maps."""
    bcc = _import_bcc()
    hint = kernel_headers_hint()
    if hint:
        raise UserError(hint)
    d = dict(defines or {})
    if pin_dir is not None:
        if '"' in str(pin_dir) or "\\" in str(pin_dir):
            raise UserError(f"pin directory {pin_dir} cannot be given to the compiler")
        d["XG_PIN_DIR"] = f'"{pin_dir}"'
    text = render_source(d)
    try:
        b = bcc.BPF(text=text.encode(), cflags=list(CFLAGS))
        fn = b.load_func(PROGRAM_FUNC.encode(), bcc.BPF.XDP)
        eg = b.load_func(EGRESS_FUNC.encode(), bcc.BPF.SCHED_CLS)
        fwd = None
        if d.get(FWD_DEFINE):
            fwd = b.load_func(FWD_RETURN_FUNC.encode(), bcc.BPF.XDP)
            fwd_in = b.load_func(FWD_IN_FUNC.encode(), bcc.BPF.XDP)
            arr = b.get_table(FWD_PROG_ARRAY.encode())
            arr[ctypes.c_int(0)] = ctypes.c_int(fwd_in.fd)
    except Exception as exc:
        raise UserError(f"compiling/loading the XDP program failed: {str(exc).strip().splitlines()[-1]}") from None
    fds = {name: b.get_table(name.value.encode()).map_fd for name in MapName}
    return LoadedProgram(
        bpf=b,
        prog_fd=fn.fd,
        map_fds=fds,
        egress_fd=eg.fd,
        fwd_fd=fwd.fd if fwd else -1,
        fwd_array_fd=arr.map_fd if fwd else -1,
        fwd_in_fd=fwd_in.fd if fwd else -1,
    )


# ---- attach / detach / query ----

MODE_FLAGS = {"native": libbpf.XDP_FLAGS_DRV_MODE, "skb": libbpf.XDP_FLAGS_SKB_MODE}
ATTACHED_MODE_NAMES = {
    libbpf.XDP_ATTACHED_DRV: "native",
    libbpf.XDP_ATTACHED_SKB: "skb",
    libbpf.XDP_ATTACHED_HW: "offload",
    libbpf.XDP_ATTACHED_MULTI: "multi",
}


@dataclass(frozen=True)
class XdpAttachment:
    prog_id: int
    mode: str  # native | skb | offload | multi
    prog_name: str


def query(ifindex: int) -> XdpAttachment | None:
    q = libbpf.xdp_query(ifindex)
    if q["attach_mode"] == libbpf.XDP_ATTACHED_NONE:
        return None
    prog_id = q["prog_id"] or q["drv_prog_id"] or q["skb_prog_id"] or q["hw_prog_id"]
    name = ""
    try:
        fd = libbpf.prog_get_fd_by_id(prog_id)
        try:
            info, _ = libbpf.prog_info(fd)
            name = info.name.decode(errors="replace")
        finally:
            os.close(fd)
    except libbpf.BpfError:
        pass
    return XdpAttachment(prog_id, ATTACHED_MODE_NAMES.get(q["attach_mode"], "unknown"), name)


def is_ours(att: XdpAttachment | None) -> bool:
    return att is not None and att.prog_name == PROGRAM_KERNEL_NAME


def attach(
    ifname: str, ifindex: int, prog_fd: int, mode: str, replace: XdpAttachment | None = None
) -> tuple[str, str | None]:
    """Attach prog_fd; returns (mode that took, note). Never replaces a program silently:
    without `replace` the kernel refuses when anything is attached (UPDATE_IF_NOEXIST)."""
    if replace is not None:
        # Different modes cannot coexist; remove the old program first (--force only).
        libbpf.xdp_detach(ifindex, MODE_FLAGS.get(replace.mode, 0))
    candidates = ["native", "skb"] if mode == "auto" else [mode]
    note = None
    for i, m in enumerate(candidates):
        try:
            libbpf.xdp_attach(ifindex, prog_fd, MODE_FLAGS[m] | libbpf.XDP_FLAGS_UPDATE_IF_NOEXIST)
            return m, note
        except libbpf.BpfError as exc:
            if exc.errno == errno.EBUSY or exc.errno == errno.EEXIST:
                raise UserError(
                    f"{ifname}: another XDP program is already attached (use --force to replace it)"
                ) from None
            if (
                m == "native"
                and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTSUP)
                and i + 1 < len(candidates)
            ):
                note = (
                    f"native XDP is not supported by {ifname}'s driver ({exc.strerror}); attached in generic (skb) mode"
                )
                continue
            raise UserError(f"{ifname}: XDP attach in {m} mode failed: {exc.strerror}") from None
    raise AssertionError("unreachable")


def replace(ifindex: int, prog_fd: int, old: XdpAttachment) -> None:
    """Swap `old` for prog_fd in one netlink call (XDP_FLAGS_REPLACE with the old program's fd):
    no moment without a program. The kernel refuses if `old` is no longer the one attached."""
    old_fd = libbpf.prog_get_fd_by_id(old.prog_id)
    try:
        libbpf.xdp_attach(ifindex, prog_fd, MODE_FLAGS.get(old.mode, 0), old_prog_fd=old_fd)
    finally:
        os.close(old_fd)


def detach(ifindex: int, att: XdpAttachment) -> None:
    fd = libbpf.prog_get_fd_by_id(att.prog_id)
    try:
        libbpf.xdp_detach(ifindex, MODE_FLAGS.get(att.mode, 0), expected_prog_fd=fd)
    finally:
        os.close(fd)


def fwd_return_detach(ifindex: int) -> bool:
    """Take the fast path's return program off an interface; False when it is not there."""
    att = query(ifindex)
    if att is None or att.prog_name != FWD_RETURN_KERNEL_NAME:
        return False
    detach(ifindex, att)
    return True


def _prog_map_ids(prog_id: int) -> list[int]:
    """The ids of the maps a loaded program uses."""
    pfd = libbpf.prog_get_fd_by_id(prog_id)
    try:
        _, map_ids = libbpf.prog_info(pfd)
    finally:
        os.close(pfd)
    return list(map_ids)


def fwd_array_id(prog_id: int) -> int | None:
    """The id of a main program's fast-path tail-call array (xg_fwd_prog): None when the program
    was compiled without the fast path."""
    for mid in _prog_map_ids(prog_id):
        fd = libbpf.map_get_fd_by_id(mid)
        try:
            if libbpf.map_info(fd).name.decode(errors="replace") == FWD_PROG_ARRAY:
                return mid
        finally:
            os.close(fd)
    return None


def fwd_in_prog_id(prog_id: int) -> int | None:
    """The program in a main program's fast-path tail-call slot (xg_fwd_prog[0]): the one that
    uses the fast path's maps. None without the fast path (or with the slot empty)."""
    mid = fwd_array_id(prog_id)
    if mid is None:
        return None
    fd = libbpf.map_get_fd_by_id(mid)
    try:
        out = ctypes.c_uint32()
        return out.value if libbpf.map_lookup(fd, ctypes.c_uint32(0), out) else None
    finally:
        os.close(fd)


def attached_to(prog_id: int) -> list[str]:
    """The interfaces of this network namespace whose XDP program is `prog_id`."""
    out = []
    for index, name in socket.if_nameindex():
        att = query(index)
        if att is not None and att.prog_id == prog_id:
            out.append(name)
    return out


def map_fds_of_prog(prog_id: int, names: type[enum.Enum] = MapName) -> dict:
    """Open the maps a running program uses, by kernel name (the members of `names`: MapName,
    or FastFwdMap for the fast path's). Caller closes the fds."""
    wanted = {m.value: m for m in names}
    out: dict[MapName, int] = {}
    for mid in _prog_map_ids(prog_id):
        fd = libbpf.map_get_fd_by_id(mid)
        name = libbpf.map_info(fd).name.decode(errors="replace")
        if name in wanted and wanted[name] not in out:
            out[wanted[name]] = fd
        else:
            os.close(fd)
    return out


# ---- tc egress (the TCP state recorder): clsact + direct-action cls_bpf via libbpf ----

BPF_TC_EGRESS = 1 << 1  # enum bpf_tc_attach_point
BPF_TC_F_REPLACE = 1 << 0
TC_HANDLE = 0x7867  # our filter's handle and priority on the egress hook ("xg")
TC_PRIORITY = 0x7867


class _TcHook(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _TcOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


@lru_cache(maxsize=1)
def _tc_lib():
    so = libbpf.lib()
    hp, op = ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts)
    for name, args in (
        ("bpf_tc_hook_create", [hp]),
        ("bpf_tc_hook_destroy", [hp]),
        ("bpf_tc_attach", [hp, op]),
        ("bpf_tc_detach", [hp, op]),
        ("bpf_tc_query", [hp, op]),
    ):
        fn = getattr(so, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    # libbpf prints netlink errors to stderr ("Parent Qdisc doesn't exists" on a query of an
    # interface without clsact); we turn every error into one message of our own instead.
    so.libbpf_set_print.argtypes, so.libbpf_set_print.restype = [ctypes.c_void_p], ctypes.c_void_p
    so.libbpf_set_print(None)
    return so


def _tc_hook(ifindex: int) -> _TcHook:
    return _TcHook(ctypes.sizeof(_TcHook), ifindex, BPF_TC_EGRESS, 0, 0)


def _tc_opts(prog_fd: int = 0, flags: int = 0) -> _TcOpts:
    return _TcOpts(ctypes.sizeof(_TcOpts), prog_fd, flags, 0, TC_HANDLE, TC_PRIORITY, 0)


@dataclass(frozen=True)
class TcAttachment:
    prog_id: int
    prog_name: str


def tc_query(ifindex: int) -> TcAttachment | None:
    """The program of our filter (handle/priority TC_HANDLE/TC_PRIORITY) on the egress hook."""
    o = _tc_opts()
    rc = _tc_lib().bpf_tc_query(ctypes.byref(_tc_hook(ifindex)), ctypes.byref(o))
    if rc < 0:
        if -rc in (errno.ENOENT, errno.EINVAL, errno.ENODEV):  # no clsact qdisc / no such filter
            return None
        raise libbpf.BpfError(-rc, f"tc query: {os.strerror(-rc)}")
    name = ""
    try:
        fd = libbpf.prog_get_fd_by_id(o.prog_id)
        try:
            name = libbpf.prog_info(fd)[0].name.decode(errors="replace")
        finally:
            os.close(fd)
    except libbpf.BpfError:
        pass
    return TcAttachment(o.prog_id, name)


def tc_attach(ifindex: int, prog_fd: int, replace: bool = False) -> None:
    """Put prog_fd on the egress hook (creating the clsact qdisc when missing). Without
    `replace` the kernel refuses when our handle/priority is taken (EEXIST)."""
    so = _tc_lib()
    hook = _tc_hook(ifindex)
    rc = so.bpf_tc_hook_create(ctypes.byref(hook))
    if rc < 0 and -rc != errno.EEXIST:
        raise libbpf.BpfError(-rc, f"tc clsact qdisc: {os.strerror(-rc)}")
    o = _tc_opts(prog_fd, BPF_TC_F_REPLACE if replace else 0)
    rc = so.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(o))
    if rc < 0:
        raise libbpf.BpfError(-rc, f"tc egress attach: {os.strerror(-rc)}")


def tc_detach(ifindex: int) -> bool:
    """Remove our egress filter (the clsact qdisc stays: other filters may use it). False when
    it was not there."""
    rc = _tc_lib().bpf_tc_detach(ctypes.byref(_tc_hook(ifindex)), ctypes.byref(_tc_opts()))
    if rc < 0:
        if -rc in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            return False
        raise libbpf.BpfError(-rc, f"tc egress detach: {os.strerror(-rc)}")
    return True


def tc_is_ours(att: TcAttachment | None) -> bool:
    return att is not None and att.prog_name == EGRESS_KERNEL_NAME
