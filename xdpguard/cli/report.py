"""`xdpguard report`: an attack event as a self-contained HTML page (plots embedded) or a PNG."""

from __future__ import annotations

import click

from xdpguard.core.observe import report as core
from xdpguard.core import state

from .output import Console, Result, human_bytes, json_option
from .params import IFACE, OUT_FILE, TEXT


@click.command()
@click.argument("event", type=TEXT, required=False)
@click.option(
    "-o",
    "--output",
    "html_path",
    type=OUT_FILE,
    default=None,
    metavar="FILE",
    help="HTML page to create (plots embedded; never through a symlink; an existing file only with --overwrite).",
)
@click.option(
    "--png",
    "png_path",
    type=OUT_FILE,
    default=None,
    metavar="FILE",
    help="Also (or only) write the traffic plot as a PNG.",
)
@click.option("--overwrite", is_flag=True, help="Replace the files of -o/--png if they exist.")
@click.option("--iface", "-i", type=IFACE, default=None, help="The latest event of this interface.")
@json_option
def report(event, html_path, png_path, overwrite, iface):
    """Report of the attack EVENT (its id or a prefix of it, as `xdpguard events --json` shows; default: the
    latest): traffic over time by drop reason, peaks, top sources and ports, the policy in force and the
    legitimate traffic forwarded, from the history `xdpguard run` keeps."""
    state.require_root()
    return Result(core.build(event, html_path, png_path, iface=iface, overwrite=overwrite), _written)


def _written(c: Console, res: core.ReportResult) -> None:
    s, ev = res.summary, res.event
    c.print(
        f"attack {ev.get('id')} on {ev.get('iface')} {ev.get('protected')}: peak {s.peak_pps:,.0f} pps, "
        f"{s.peak_bps / 1e6:.1f} Mb/s; {s.forwarded_packets:,.0f} legitimate packets forwarded during it",
        markup=False,
    )
    for path, n in ((res.html_file, res.html_bytes), (res.png_file, res.png_bytes)):
        if path:
            c.print(f"wrote {path} ({human_bytes(n)}) in {res.render_s:.2f} s", markup=False)
