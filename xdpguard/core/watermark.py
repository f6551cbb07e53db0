"""The UDP watermark of protected services: desired-state records and the map values.

A watermarked service (a protected address and a UDP port) lets only datagrams that carry a
valid keyed mark through (bpf/include/watermark.h; the client side and the format:
xdpguard/sdk/watermark.py); the others are dropped with reason `watermark`.

The desired state names key FILES, never keys: `[[interface.address.watermark]]` tables hold the
port, the key file, the step, window, skew and overlap, and during a rotation the previous key
file and until when it is accepted. The keys are read from their files when the spec is realised
(reconcile.write_watermark) and live only in the kernel's xg_wm_hash. A key file is 32 hex digits
(or 16 raw bytes), mode 0600 recommended.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, replace

from ..sdk import watermark as sdk
from .kernel import abi
from .errors import UserError

DEFAULT_OVERLAP = 300  # seconds the previous key stays valid after a rotation


@dataclass(frozen=True)
class WatermarkSpec:
    """One watermarked UDP port of a protected address."""

    port: int
    key_file: str
    step: int = sdk.DEFAULT_STEP  # seconds per epoch
    window: int = sdk.DEFAULT_WINDOW  # payload bytes the MAC binds (multiple of 8, <= 64)
    skew: int = sdk.DEFAULT_SKEW  # epochs accepted before the current one
    overlap: int = DEFAULT_OVERLAP  # seconds a rotated-out key stays valid
    previous_key_file: str | None = None  # during a rotation's overlap
    previous_until: int = 0  # unix seconds; 0 or past: no previous key

    def to_data(self) -> dict:
        d = {
            "port": self.port,
            "key_file": self.key_file,
            "step": self.step,
            "window": self.window,
            "skew": self.skew,
            "overlap": self.overlap,
        }
        if self.previous_key_file is not None and self.previous_until:
            d["previous_key_file"] = self.previous_key_file
            d["previous_until"] = self.previous_until
        return d

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        text = (
            f"udp/{self.port}: key {self.key_file} ({fingerprint_file(self.key_file)}), step {self.step} s, "
            f"window {self.window} B, skew {self.skew}, overlap {self.overlap} s"
        )
        if self.previous_key_file and self.previous_until > now:
            text += f"; previous key {self.previous_key_file} until {int(self.previous_until - now)} s from now"
        return text

    def lifetime_s(self) -> int:
        """The longest a captured mark is accepted: skew epochs back, the current one, one ahead."""
        return (self.skew + 2) * self.step


KEYS = {"port", "key_file", "step", "window", "skew", "overlap", "previous_key_file", "previous_until"}


def check(w: WatermarkSpec) -> WatermarkSpec:
    """The spec, or a UserError naming what is wrong (not the key file's content: see read_key)."""
    if not isinstance(w.port, int) or not 1 <= w.port <= 65535:
        raise UserError(f"watermark port must be 1-65535, got {w.port!r}")
    try:
        sdk.check_params(w.step, w.window)
    except ValueError as exc:
        raise UserError(f"watermark on udp/{w.port}: {exc}") from None
    if not isinstance(w.skew, int) or not 0 <= w.skew <= 16:
        raise UserError(f"watermark skew must be 0-16 epochs, got {w.skew!r}")
    if not isinstance(w.overlap, int) or not 0 <= w.overlap <= 7 * 86400:
        raise UserError(f"watermark overlap must be 0-604800 seconds, got {w.overlap!r}")
    for f in (w.key_file, w.previous_key_file):
        if f is not None and (not isinstance(f, str) or not os.path.isabs(f)):
            raise UserError(f"watermark key file must be an absolute path, got {f!r}")
    if not isinstance(w.previous_until, int) or w.previous_until < 0:
        raise UserError(f"watermark previous_until must be unix seconds, got {w.previous_until!r}")
    return w


def from_data(d: dict) -> WatermarkSpec:
    """A `[[interface.address.watermark]]` table (keys already checked against KEYS)."""
    if "port" not in d or "key_file" not in d:
        raise UserError("a watermark needs port and key_file")
    return check(WatermarkSpec(**{k: d[k] for k in KEYS if k in d}))


def read_key(path: str) -> bytes:
    """The 16-byte key of a key file, or a UserError naming the file and the problem."""
    try:
        return sdk.load_key(path)
    except FileNotFoundError:
        raise UserError(f"watermark key file {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"watermark key file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"watermark key file {path}: {exc}") from None


def fingerprint(key: bytes) -> str:
    """A public name of a key (the MAC of a fixed label): to compare keys without showing them."""
    return "sip:" + sdk.siphash24(key, b"xdpguard watermark key id").hex()[:8]


def fingerprint_file(path: str) -> str:
    try:
        return fingerprint(read_key(path))
    except UserError:
        return "unreadable"


def normal(ws) -> tuple[WatermarkSpec, ...]:
    """Sorted by port; an expired previous key dropped (so that export is stable)."""
    now = time.time()
    out = []
    for w in ws:
        if w.previous_until and w.previous_until <= now:
            w = replace(w, previous_key_file=None, previous_until=0)
        out.append(w)
    return tuple(sorted(out, key=lambda w: w.port))


def rotated(w: WatermarkSpec, new_key_file: str, now: float | None = None) -> WatermarkSpec:
    """The spec after a rotation to new_key_file: the current key becomes the previous one for
    `overlap` seconds."""
    now = time.time() if now is None else now
    if new_key_file == w.key_file:
        raise UserError(f"udp/{w.port} already uses {new_key_file}: rotate to a new key file")
    return replace(
        w,
        key_file=new_key_file,
        previous_key_file=w.key_file if w.overlap else None,
        previous_until=int(now) + w.overlap if w.overlap else 0,
    )


def clock_offset_ns() -> int:
    """unix time - CLOCK_MONOTONIC (what bpf_ktime_get_ns reads), for the data path's epochs."""
    return time.time_ns() - time.monotonic_ns()


def value(key: bytes, w: WatermarkSpec, previous: bytes | None = None, now: float | None = None) -> abi.Wm:
    """The xg_wm_hash value of a service."""
    k0, k1 = struct.unpack("<QQ", key)
    pk0 = pk1 = 0
    until = 0
    now = time.time() if now is None else now
    if previous is not None and w.previous_until > now:
        pk0, pk1 = struct.unpack("<QQ", previous)
        until = w.previous_until
    return abi.Wm(k0, k1, pk0, pk1, until, clock_offset_ns(), w.step, w.window, w.skew, 0)


def record(addresses) -> dict[str, list[dict]]:
    """What the interface record keeps: key file names and parameters, never a key."""
    return {str(a.address): [w.to_data() for w in a.watermark] for a in addresses if getattr(a, "watermark", ())}


CLOCK_SLACK_NS = 1_000_000_000  # a realised clock offset further off than this is drift (a clock step)


def _matches(v, w: WatermarkSpec, now: float) -> bool:
    """The kernel's entry is what the spec gives now: parameters, the keys in the files, the
    previous key's end, and a clock offset within CLOCK_SLACK_NS of the system's."""
    try:
        want = value(
            read_key(w.key_file),
            w,
            read_key(w.previous_key_file) if w.previous_key_file and w.previous_until > now else None,
            now,
        )
    except UserError:
        return True  # an unreadable key file: the entry keeps its key (realise says so); no drift loop
    same = all(
        getattr(v, f) == getattr(want, f)
        for f in ("k0", "k1", "pk0", "pk1", "prev_until_s", "step_s", "window", "skew")
    )
    return same and abs(int(v.clock_off_ns) - int(want.clock_off_ns)) < CLOCK_SLACK_NS


def exported(rec: dict | None, have: dict, addr) -> tuple[WatermarkSpec, ...]:
    """The realised watermarks of one address: the recorded specs whose entry in the kernel
    (`have`: guard.realised_watermarks) matches them; a missing or different entry (drift: a key file
    replaced on disk, a clock step) is not realised, so the reconciler rewrites it."""
    now = time.time()
    out = []
    for d in (rec or {}).get(str(addr), []):
        try:
            w = from_data(d)
        except (UserError, TypeError):
            continue
        v = have.get((str(addr), w.port))
        if v is not None and _matches(v, w, now):
            out.append(w)
    return normal(out)
