"""`xdpguard watermark enable|disable|rotate|show|keygen`: the UDP watermark per protected service
(drop reason `watermark`). Clients mark datagrams with xdpguard/sdk/watermark.py."""

from __future__ import annotations

import click

from xdpguard.core import watermark as core_wm
from xdpguard.core.verbs import watermarkrules

from .output import Result, json_option
from .params import IN_FILE, OUT_FILE, iface_option, protected_option

_port = click.argument("port", type=click.IntRange(1, 65535))
_key = click.option(
    "--key-file",
    required=True,
    type=IN_FILE,
    help="File holding the 16-byte key (32 hex digits); the key itself is never shown or stored.",
)


def _text(c, res: watermarkrules.WatermarkResult) -> None:
    c.print(f"watermarked UDP services on {res.iface}:", markup=False)
    for addr, rows in res.services.items():
        if not rows:
            c.print(f"  {addr}: none", markup=False)
        for r in rows:
            c.print(f"  {addr} {r['text']}", markup=False)
    if res.counters:
        c.print("  data path: " + ", ".join(f"{k} {v}" for k, v in res.counters.items()), markup=False)
    for n in res.notes:
        c.print(f"  note: {n}", markup=False)


def _result(res: watermarkrules.WatermarkResult) -> Result:
    return Result(res, _text)


@click.group()
def watermark():
    """Only UDP datagrams marked with a shared key reach a watermarked service."""


@watermark.command("enable")
@_port
@_key
@click.option(
    "--step",
    type=click.IntRange(1, 86400),
    default=core_wm.sdk.DEFAULT_STEP,
    show_default=True,
    help="Seconds per epoch of the mark's coarse time.",
)
@click.option(
    "--window",
    type=click.IntRange(0, 64),
    default=core_wm.sdk.DEFAULT_WINDOW,
    show_default=True,
    help="Payload bytes the mark binds (a multiple of 8).",
)
@click.option(
    "--skew",
    type=click.IntRange(0, 16),
    default=core_wm.sdk.DEFAULT_SKEW,
    show_default=True,
    help="Epochs before the current one still accepted.",
)
@click.option(
    "--overlap",
    type=click.IntRange(0, 604800),
    default=core_wm.DEFAULT_OVERLAP,
    show_default=True,
    help="Seconds a rotated-out key stays valid.",
)
@protected_option
@iface_option
@json_option
def enable(port, key_file, step, window, skew, overlap, protected, iface):
    """Watermark udp/PORT: unmarked datagrams to it are dropped."""
    return _result(watermarkrules.enable(iface, port, key_file, protected, step, window, skew, overlap))


@watermark.command("disable")
@_port
@protected_option
@iface_option
@json_option
def disable(port, protected, iface):
    """Stop watermarking udp/PORT."""
    return _result(watermarkrules.disable(iface, port, protected))


@watermark.command("rotate")
@_port
@_key
@click.option(
    "--overlap",
    type=click.IntRange(0, 604800),
    default=None,
    help="Seconds the old key stays valid (default: the service's overlap).",
)
@protected_option
@iface_option
@json_option
def rotate(port, key_file, overlap, protected, iface):
    """Make --key-file the key of udp/PORT; the old key is accepted for the overlap."""
    return _result(watermarkrules.rotate(iface, port, key_file, protected, overlap))


@watermark.command("show")
@iface_option
@json_option
def show(iface):
    """The watermarked services (key ids, not keys) and the data path's counters."""
    return _result(watermarkrules.show(iface))


@watermark.command("keygen")
@click.argument("file", type=OUT_FILE)
@json_option
def keygen(file):
    """Write a new random key to FILE (mode 0600; never overwrites)."""
    kid = watermarkrules.keygen(file)
    return Result(
        {"file": file, "key_id": kid},
        lambda c, d: c.print(f"wrote a new key to {d['file']} (key id {d['key_id']})", markup=False),
    )
