"""`xdpguard watermark enable|disable|rotate|show`: watermarked UDP services, store first.

Each verb is `spec' = f(spec)` on the interface's desired spec (AddressSpec.watermark), through
reconcile.edit: stored (fsynced) before the kernel is touched, then realised by the reconciler's
writer (write_differences → write_watermark). Bad input (a key file that is missing or holds
no 16-byte key, a bad step or window, a port that is not watermarked, an address that is not
protected) stores nothing and changes nothing. A key is never shown nor stored: only its file's
path and a fingerprint (watermark.fingerprint).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace

from .. import protection, reconcile, state
from .. import watermark as wm
from ..model.desired import InterfaceSpec
from ..errors import UserError


@dataclass(frozen=True)
class WatermarkResult:
    iface: str
    action: str  # enable | disable | rotate | show
    services: dict[str, list[dict]]  # address → [{port, key_file, key_id, step, window, skew, overlap, ...}]
    counters: dict[str, int] = field(default_factory=dict)  # Guard.watermark_counters (show)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _services(spec: InterfaceSpec) -> dict[str, list[dict]]:
    now = time.time()
    out = {}
    for a in spec.addresses:
        rows = []
        for w in a.watermark:
            d = w.to_data()
            d["key_id"] = wm.fingerprint_file(w.key_file)
            if w.previous_key_file and w.previous_until > now:
                d["previous_key_id"] = wm.fingerprint_file(w.previous_key_file)
            d["mark_lifetime_s"] = w.lifetime_s()
            d["text"] = w.describe(now)
            rows.append(d)
        out[str(a.address)] = rows
    return out


def _key_path(path: str) -> str:
    p = os.path.abspath(path)
    wm.read_key(p)  # exists and holds a key, else one error line
    return p


def _change(ifname: str | None, action: str, one, protected: str | None, check=None) -> WatermarkResult:
    """one(address, tuple of WatermarkSpec) → the new tuple; it raises UserError on bad input;
    check() runs after the edit of every selected address and may raise too."""

    def f(spec: InterfaceSpec, g) -> InterfaceSpec:
        sel = spec.selected(protected)
        new = replace(
            spec,
            addresses=tuple(
                replace(a, watermark=wm.normal(one(a.address, a.watermark))) if a.address in sel else a
                for a in spec.addresses
            ),
        )
        if check is not None:
            check()
        return new

    def result(g, before: InterfaceSpec, after: InterfaceSpec, notes: list[str]) -> WatermarkResult:
        return WatermarkResult(after.name, action, _services(after), notes=list(notes))

    return reconcile.edit(ifname, f, result)


def enable(
    ifname: str | None,
    port: int,
    key_file: str,
    protected: str | None = None,
    step: int = wm.sdk.DEFAULT_STEP,
    window: int = wm.sdk.DEFAULT_WINDOW,
    skew: int = wm.sdk.DEFAULT_SKEW,
    overlap: int = wm.DEFAULT_OVERLAP,
) -> WatermarkResult:
    """Watermark udp/PORT: from now on only marked datagrams reach it. Enabling a port that is
    watermarked replaces its settings (keeping a rotation's previous key)."""
    w = wm.check(wm.WatermarkSpec(port, _key_path(key_file), step, window, skew, overlap))

    def one(addr, ws):
        cur = next((o for o in ws if o.port == port), None)
        new = (
            w
            if cur is None or cur.key_file != w.key_file
            else replace(w, previous_key_file=cur.previous_key_file, previous_until=cur.previous_until)
        )
        return tuple(o for o in ws if o.port != port) + (new,)

    return _change(ifname, "enable", one, protected)


def _need(addr, ws, port: int) -> wm.WatermarkSpec:
    cur = next((o for o in ws if o.port == port), None)
    if cur is None:
        raise UserError(f"udp/{port} of {addr} is not watermarked")
    return cur


def _on_watermarked(ifname: str | None, action: str, port: int, protected: str | None, fn) -> WatermarkResult:
    """fn(addr, ws, current spec) → the new tuple, on the selected addresses that watermark
    udp/PORT: all of them by default (an error when none does), or the one --protected names
    (an error when it does not)."""
    hit = []

    def one(addr, ws):
        if protected is None and not any(o.port == port for o in ws):
            return ws
        hit.append(addr)
        return fn(addr, ws, _need(addr, ws, port))

    def check():
        if not hit:
            raise UserError(f"udp/{port} is not watermarked on any protected address")

    return _change(ifname, action, one, protected, check=check)


def disable(ifname: str | None, port: int, protected: str | None = None) -> WatermarkResult:
    return _on_watermarked(
        ifname, "disable", port, protected, lambda addr, ws, cur: tuple(o for o in ws if o.port != port)
    )


def rotate(
    ifname: str | None, port: int, key_file: str, protected: str | None = None, overlap: int | None = None
) -> WatermarkResult:
    """Make KEY_FILE the key of udp/PORT; the old key stays valid for the overlap."""
    path = _key_path(key_file)
    now = time.time()

    def fn(addr, ws, cur):
        if overlap is not None:
            cur = wm.check(replace(cur, overlap=overlap))
        return tuple(o for o in ws if o.port != port) + (wm.rotated(cur, path, now),)

    return _on_watermarked(ifname, "rotate", port, protected, fn)


def show(ifname: str | None) -> WatermarkResult:
    state.require_root()
    name = protection.pick_iface(ifname)
    spec = reconcile.export_iface(name, lists=False)
    if spec is None:
        raise UserError(f"{name} is not protected by xdpguard; run 'xdpguard attach {name}' first")
    with protection.locked_guard(name) as g:
        cnt = g.watermark_counters()
    return WatermarkResult(name, "show", _services(spec), cnt)


def keygen(path: str) -> str:
    """A new key file (mode 0600, never overwritten); returns its key id."""
    try:
        wm.sdk.write_key(path)
    except FileExistsError:
        raise UserError(f"{path} exists: a key file is never overwritten") from None
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    return wm.fingerprint(wm.read_key(path))
