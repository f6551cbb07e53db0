"""`xdpguard syn set|show`: SYN flood defence by source authentication (reason `syn`).

Above --threshold SYNs/s to a protected address, a source's first SYN is dropped; its
retransmission (Linux and Windows resend after about 1 s) arriving within --auth-window
admits the source for --keep seconds. Spoofed floods never retransmit.
"""

from __future__ import annotations

import click

from xdpguard.core import cleansing

from .limit import RATE, iface_option, json_option, protected_option
from .output import console, emit_json
from .desired import recorded


def render(res: cleansing.SynResult, as_json: bool) -> None:
    if as_json:
        emit_json(res)
        return
    c = console()
    if res.action == "set":
        c.print(f"SYN defence on {res.iface}: set on {res.changed} addresses")
    for v in res.policies:
        if v.threshold_pps:
            line = (f"authenticate above {v.threshold_pps:,} SYN/s, retransmission within "
                    f"{v.auth_min_ms}-{v.auth_max_ms} ms, admitted for {v.auth_keep_s} s")
        else:
            line = "source authentication off"
        if v.syn_src_pps:
            line += f"; per source {v.syn_src_pps:,} SYN/s"
        c.print(f"  {v.protected}: {line}")


@click.group()
def syn():
    """SYN flood defence: source authentication above a SYN rate threshold."""


@syn.command("set")
@protected_option
@click.option("--threshold", type=RATE, required=True, metavar="PPS",
              help="SYNs/s to the address above which sources must authenticate (0: off).")
@click.option("--auth-window", default=None, metavar="MIN_MS-MAX_MS",
              help="When a retransmitted SYN counts (default 200-10000).")
@click.option("--keep", "keep_s", type=int, default=None, metavar="S",
              help="How long an authenticated source stays admitted (default 600).")
@iface_option
@json_option
def set_(protected, threshold, auth_window, keep_s, iface, as_json):
    """Set the SYN defence of the protected address(es)."""
    render(recorded(cleansing.syn_set(iface, threshold, auth_window, keep_s, protected)), as_json)


@syn.command("show")
@iface_option
@json_option
def show(iface, as_json):
    """Show the SYN defence of each protected address."""
    render(cleansing.syn_show(iface), as_json)
