"""Packet samples from the data path (bpf/include/sample.h): switch, counters, ring reader.

The XDP program writes 1 in N non-bypass verdicts per CPU (N = `sample_every`, 0 = off) into
the `xg_samples` ring buffer. A ring buffer has one consumer position: while `xdpguard run` is
up it is the only reader and fans the samples out to `top`, `stats` and `capture` (fanout.py).
Without it, readers take turns: `SampleReader.window()` holds a per-interface flock while it
drains, and drops records older than the window's start (whatever piled up while nobody was
reading).

A sample source (SampleReader here, fanout's streams) offers drain / discard_old / exclusive /
window / close, `missed` (samples it lost) and `takes_turns` (True: hold it only for a window).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..kernel import libbpf
from .. import state
from ..model import vocab
from ..kernel.abi import Kind, Reason, Sample

DEFAULT_SAMPLE_EVERY = 256  # ~3% data-path cost; 1 in 64 costs ~15% (scripts/bench_observability.py)

_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def _ring_lib() -> ctypes.CDLL:
    so = libbpf.lib()
    if not getattr(so, "_xg_ring_ready", False):
        so.ring_buffer__new.argtypes = [ctypes.c_int, _SAMPLE_FN, ctypes.c_void_p, ctypes.c_void_p]
        so.ring_buffer__new.restype = ctypes.c_void_p
        so.ring_buffer__poll.argtypes = [ctypes.c_void_p, ctypes.c_int]
        so.ring_buffer__poll.restype = ctypes.c_int
        so.ring_buffer__consume.argtypes = [ctypes.c_void_p]
        so.ring_buffer__consume.restype = ctypes.c_int
        so.ring_buffer__free.argtypes = [ctypes.c_void_p]
        so.ring_buffer__free.restype = None
        so.ring_buffer__epoll_fd.argtypes = [ctypes.c_void_p]
        so.ring_buffer__epoll_fd.restype = ctypes.c_int
        so._xg_ring_ready = True
    return so


@dataclass(frozen=True)
class PacketSample:
    """One decoded xg_samples record."""

    ts_ns: int
    sample_every: int
    kind: str
    reason: str
    family: int
    proto: str
    src: str
    dst: str
    sport: int
    dport: int
    pkt_len: int
    data: bytes  # the first cap_len bytes of the packet

    @classmethod
    def from_record(cls, s: Sample) -> PacketSample:
        fam = s.family
        if fam == 4:
            src, dst = str(ipaddress.IPv4Address(bytes(s.src[:4]))), str(ipaddress.IPv4Address(bytes(s.dst[:4])))
        elif fam == 6:
            src, dst = str(ipaddress.IPv6Address(bytes(s.src))), str(ipaddress.IPv6Address(bytes(s.dst)))
        else:
            src = dst = "-"
        try:
            kind = Kind(s.kind).label
        except ValueError:
            kind = str(s.kind)
        try:
            reason = Reason(s.reason).label
        except ValueError:
            reason = f"reason{s.reason}"
        cap = min(s.cap_len, len(s.data))
        return cls(
            s.ts_ns,
            s.sample_every,
            kind,
            reason,
            fam,
            vocab.proto_name(s.proto),
            src,
            dst,
            s.sport,
            s.dport,
            s.pkt_len,
            bytes(s.data[:cap]),
        )

    @property
    def dropped(self) -> bool:
        return self.kind in ("drop", "would_drop")


# (the switch and the per-CPU counters: guard.py, Guard.sample_every / set_sample_every / sample_counters)


# ---- the reader ----


class SamplerBusy(RuntimeError):
    """Another process holds the sample stream of this interface."""


def _lock_path(iface: state.Iface | None):
    name = f"{iface.nskey}.{iface.name}" if iface is not None else f"pid{os.getpid()}"
    return state.run_root() / "locks" / f"{name}.samples.lock"


def lock_path(iface: state.Iface | None):
    """The flock that makes a reader the ring's only consumer (for a window, or the daemon's life)."""
    return _lock_path(iface)


SAMPLE_SIZE = ctypes.sizeof(Sample)


class SampleReader:
    """Drains xg_samples of one program (by the ring map's fd; not owned). raw=True: drain()
    returns the records' bytes (SAMPLE_SIZE each) undecoded, for the daemon's fan-out."""

    takes_turns = True  # readers of the ring itself take turns (exclusive)
    missed = 0
    via = "ring"
    ended = False

    def __init__(self, ring_fd: int, iface: state.Iface | None = None, raw: bool = False):
        self.iface = iface
        self.raw = raw
        self._got: list = []
        self._min_ts = 0
        self._cb = _SAMPLE_FN(self._on_sample)  # keep a reference: libbpf calls it
        so = _ring_lib()
        rb = so.ring_buffer__new(ring_fd, self._cb, None, None)
        if not rb:
            err = ctypes.get_errno() or errno.EINVAL
            raise libbpf.BpfError(err, f"ring_buffer__new on xg_samples: {os.strerror(err)}")
        self._rb = rb

    def close(self) -> None:
        if self._rb:
            _ring_lib().ring_buffer__free(self._rb)
            self._rb = None

    def __enter__(self) -> SampleReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_sample(self, _ctx, data, size) -> int:
        if size >= SAMPLE_SIZE:
            s = Sample.from_address(data)
            if s.ts_ns >= self._min_ts:
                self._got.append(ctypes.string_at(data, SAMPLE_SIZE) if self.raw else PacketSample.from_record(s))
        return 0

    def epoll_fd(self) -> int:
        """An fd that polls readable when the ring has records (libbpf's epoll instance)."""
        return _ring_lib().ring_buffer__epoll_fd(self._rb)

    def drain(self, timeout_ms: int = 0) -> list:
        """What is in the ring now (waiting up to timeout_ms for the first record)."""
        so = _ring_lib()
        if timeout_ms > 0:
            so.ring_buffer__poll(self._rb, timeout_ms)
        so.ring_buffer__consume(self._rb)
        out, self._got = self._got, []
        return out

    def discard_old(self) -> None:
        """Throw away what piled up before now."""
        self._min_ts = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.drain()

    @contextmanager
    def exclusive(self, wait_s: float = 1.0) -> Iterator[None]:
        """Hold the interface's sample stream (a flock) for a drain window."""
        fd = state.flock_wait(_lock_path(self.iface), wait_s, poll_s=0.02)
        if fd is None:
            raise SamplerBusy("another xdpguard process is reading the samples")
        try:
            yield
        finally:
            os.close(fd)

    def window(self, seconds: float, wait_s: float = 1.0) -> list[PacketSample]:
        """Samples taken during the next `seconds` (exclusive; [] when another reader holds
        the stream for longer than wait_s)."""
        try:
            with self.exclusive(wait_s):
                self.discard_old()
                out: list[PacketSample] = []
                end = time.monotonic() + seconds
                while True:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    out.extend(self.drain(timeout_ms=max(1, int(min(left, 0.05) * 1000))))
                out.extend(self.drain())
                return out
        except SamplerBusy:
            return []
