"""`xdpguard capture`: sampled dropped packets into a pcapng file that tcpdump opens.

Each packet block carries a comment `xdpguard <kind> <reason> 1/<N>` (pcapng opt_comment), so
Wireshark shows why the packet was dropped; the result also tallies reasons and sources.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from collections import Counter as Tally
from dataclasses import asdict, dataclass
from pathlib import Path

from . import fanout, sampling
from .. import protection
from ..kernel.abi import DROP_REASONS, SAMPLE_SNAPLEN
from ..errors import UserError

LINKTYPE_ETHERNET = 1


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def create_output(path: str | Path, overwrite: bool = False) -> int:
    """Open a file to write for the operator: never through a symlink (O_NOFOLLOW), and never
    an existing file (O_EXCL) unless overwrite, which truncates it. UserError otherwise."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST and os.path.islink(path)):
            raise UserError(f"cannot write {path}: it is a symbolic link; not following it") from None
        if exc.errno == errno.EEXIST:
            raise UserError(f"cannot write {path}: it exists (give --overwrite to replace it)") from None
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device: not a capture file
        os.close(fd)
        raise UserError(f"cannot write {path}: not a regular file")
    return fd


class PcapngWriter:
    def __init__(self, fd: int, snaplen: int, comment: str = ""):
        self.f = os.fdopen(fd, "wb")
        opts = (_option(1, comment.encode()) if comment else b"") + _option(0, b"")
        self.f.write(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + opts))
        idb_opts = _option(9, bytes([6])) + _option(0, b"")  # if_tsresol: microseconds
        self.f.write(_block(0x00000001, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen) + idb_opts))

    def write(self, ts_us: int, data: bytes, orig_len: int, comment: str = "") -> None:
        opts = (_option(1, comment.encode()) + _option(0, b"")) if comment else b""
        pad = data + b"\0" * (-len(data) % 4)
        body = struct.pack("<IIIII", 0, ts_us >> 32, ts_us & 0xFFFFFFFF, len(data), orig_len) + pad + opts
        self.f.write(_block(0x00000006, body))

    def close(self) -> None:
        self.f.close()


@dataclass(frozen=True)
class CaptureResult:
    iface: str
    file: str
    packets: int
    sample_every: int
    reasons: dict[str, int]
    sources: dict[str, int]
    timed_out: bool
    missed: int = 0  # samples the daemon's fan-out (or our buffer) dropped for us
    via: str = "ring"  # ring (read ourselves) | daemon (fanned out by `xdpguard run`)

    def to_dict(self) -> dict:
        return asdict(self)


def capture(
    ifname: str | None,
    path: str,
    count: int = 100,
    reason: str | None = None,
    snaplen: int = SAMPLE_SNAPLEN,
    timeout_s: float = 10.0,
    sample_every: int | None = None,
    overwrite: bool = False,
) -> CaptureResult:
    """Write up to `count` sampled dropped packets (of `reason`, if given) within `timeout_s`
    into a new file `path` (an existing one only with overwrite; never through a symlink)."""
    if reason is not None and reason not in DROP_REASONS:
        raise UserError(f"unknown drop reason '{reason}': use one of {', '.join(DROP_REASONS)}")
    if not 1 <= snaplen <= SAMPLE_SNAPLEN:
        raise UserError(f"--snaplen {snaplen} must be between 1 and {SAMPLE_SNAPLEN} (what the data path copies)")
    if count < 1 or timeout_s <= 0:
        raise UserError("--count and --timeout must be positive")
    with protection.open_guard(ifname) as g:
        fd = create_output(path, overwrite)  # before the sampling rate changes: a bad path changes nothing
        try:
            return _capture(g, fd, path, count, reason, snaplen, timeout_s, sample_every)
        except Exception:  # (not Ctrl-C: what was captured until then stays)
            if not overwrite:  # the file is ours: leave no empty capture behind
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise


def _capture(g, fd: int, path, count, reason, snaplen, timeout_s, sample_every) -> CaptureResult:
    old = g.sample_every()
    want = sample_every if sample_every is not None else (old or sampling.DEFAULT_SAMPLE_EVERY)
    if want != old:
        g.set_sample_every(want)
    reasons: Tally[str] = Tally()
    sources: Tally[str] = Tally()
    n = 0
    # monotonic (the samples' clock) → wall clock for the pcap timestamps
    offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    w = PcapngWriter(fd, snaplen, comment=f"xdpguard capture on {g.iface.name}, 1 in {want} sampled drops")
    try:
        with fanout.open_source(g) as reader:
            via = reader.via
            try:
                with reader.exclusive(wait_s=min(timeout_s, 5.0)):
                    reader.discard_old()
                    deadline = time.monotonic() + timeout_s
                    while n < count and time.monotonic() < deadline:
                        for s in reader.drain(timeout_ms=50):
                            if not s.dropped or (reason is not None and s.reason != reason) or n >= count:
                                continue
                            w.write(
                                (s.ts_ns + offset_ns) // 1000,
                                s.data[:snaplen],
                                s.pkt_len,
                                comment=f"xdpguard {s.kind} {s.reason} 1/{s.sample_every}",
                            )
                            n += 1
                            reasons[s.reason] += 1
                            sources[s.src] += 1
                    missed = reader.missed
            except sampling.SamplerBusy:
                raise UserError(
                    f"another xdpguard process is reading the samples of {g.iface.name}; try again"
                ) from None
    finally:
        w.close()
        if want != old:
            g.set_sample_every(old)
    return CaptureResult(
        g.iface.name,
        str(path),
        n,
        want,
        dict(reasons.most_common()),
        dict(sources.most_common(20)),
        n < count,
        missed,
        via,
    )
