"""`xdpguard capture`: sampled dropped packets into a pcapng file (tcpdump -r reads it)."""

from __future__ import annotations

import click

from xdpguard.core.observe import capture as core
from xdpguard.core.observe import sampling
from xdpguard.core.kernel.abi import DROP_REASONS, SAMPLE_SNAPLEN

from .output import Console, Result, json_option
from .params import IFACE, OUT_FILE, SecondsType


@click.command()
@click.argument("iface", type=IFACE)
@click.option(
    "-w",
    "--write",
    "path",
    required=True,
    type=OUT_FILE,
    help="pcapng file to create (never through a symlink; an existing file only with --overwrite).",
)
@click.option("--overwrite", is_flag=True, help="Replace the file of -w if it exists.")
@click.option(
    "--count", type=click.IntRange(1, 10_000_000), default=100, show_default=True, help="Stop after N packets."
)
@click.option("--reason", type=click.Choice(DROP_REASONS), default=None, help="Only packets dropped for this reason.")
@click.option(
    "--snaplen",
    type=click.IntRange(1, SAMPLE_SNAPLEN),
    default=SAMPLE_SNAPLEN,
    show_default=True,
    help="Bytes kept of each packet.",
)
@click.option(
    "--timeout",
    type=SecondsType(0.1, 86400),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Stop after SECONDS.",
)
@click.option(
    "--sample-every",
    type=click.IntRange(1, 1 << 24),
    default=None,
    metavar="N",
    help="Sample 1 in N while capturing (restored afterwards). Default: current, "
    f"{sampling.DEFAULT_SAMPLE_EVERY} when off.",
)
@json_option(help="Machine-readable summary.")
def capture(iface, path, overwrite, count, reason, snaplen, timeout, sample_every):
    """Write sampled DROPPED packets of IFACE to a pcapng file, each with its drop reason as a comment."""
    return Result(
        core.capture(
            iface,
            path,
            count=count,
            reason=reason,
            snaplen=snaplen,
            timeout_s=timeout,
            sample_every=sample_every,
            overwrite=overwrite,
        ),
        _written,
    )


def _written(c: Console, res: core.CaptureResult) -> None:
    c.print(
        f"wrote {res.packets} sampled dropped packets (1 in {res.sample_every}) from {res.iface} to {res.file}"
        + (" (timed out)" if res.timed_out else "")
    )
    if res.reasons:
        c.print("  reasons: " + ", ".join(f"{r} {n}" for r, n in res.reasons.items()))
        c.print("  sources: " + ", ".join(f"{s} {n}" for s, n in list(res.sources.items())[:10]))
