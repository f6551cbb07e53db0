"""`xdpguard syn set|show`: SYN flood defence above a SYN rate threshold.

Above --threshold SYNs/s to a protected address (or always, with --always):

- mode cookie (the default): XDP answers every SYN with a SYN cookie (reason `syncookie`);
  the client's ACK is checked in XDP and nftables synproxy opens the connection to the
  backend. No extra round trip for real clients; spoofed floods keep no state.
- mode retransmit: a source's first SYN is dropped (reason `syn`); its retransmission (Linux
  and Windows resend after about 1 s) arriving within --auth-window admits the source for
  --keep seconds. For hosts that cannot run nftables synproxy.
"""

from __future__ import annotations

import click

from xdpguard.core.verbs import cleansing, imperative

from .params import COUNT as RATE, TEXT, iface_option, protected_option
from .output import Console, Result, json_option


def render(c: Console, res: cleansing.SynResult) -> None:
    if res.action == "set":
        c.print(f"SYN defence on {res.iface}: set on {res.changed} addresses")
    for v in res.policies:
        when = "always" if v.always else f"above {v.threshold_pps:,} SYN/s"
        if not (v.threshold_pps or v.always):
            line = f"SYN defence off (mode {v.mode})"
        elif v.mode == "cookie":
            line = f"SYN cookies {when}"
        else:
            line = (
                f"authenticate {when}, retransmission within "
                f"{v.auth_min_ms}-{v.auth_max_ms} ms, admitted for {v.auth_keep_s} s"
            )
        if v.syn_src_pps:
            line += f"; per source {v.syn_src_pps:,} SYN/s"
        c.print(f"  {v.protected}: {line}")
    if res.cookies:
        k = res.cookies
        c.print(
            f"  SYN cookies: {k['synack_sent']:,} SYN-ACKs sent, ACKs {k['ack_valid']:,} good / "
            f"{k['ack_bad']:,} bad" + (f", {k['failed']:,} SYN-ACKs not built" if k["failed"] else "")
        )


@click.group()
def syn():
    """SYN flood defence: SYN cookies (or source authentication) above a SYN rate threshold."""


@syn.command("set")
@protected_option
@click.option(
    "--threshold",
    type=RATE,
    required=True,
    metavar="PPS",
    help="SYNs/s to the address above which the SYN defence acts (0: off, unless --always).",
)
@click.option(
    "--mode",
    type=click.Choice(["cookie", "retransmit"]),
    default="cookie",
    show_default=True,
    help="cookie: answer SYNs with SYN cookies (nftables synproxy completes them); "
    "retransmit: drop first SYNs, admit sources that retransmit.",
)
@click.option(
    "--always/--above-threshold",
    "always",
    default=False,
    help="Act on every SYN, whatever the rate (default: only above --threshold).",
)
@click.option(
    "--auth-window",
    type=TEXT,
    default=None,
    metavar="MIN_MS-MAX_MS",
    help="When a retransmitted SYN counts (default 200-10000).",
)
@click.option(
    "--keep",
    "keep_s",
    type=int,
    default=None,
    metavar="S",
    help="How long an authenticated source stays admitted (default 600).",
)
@iface_option
@json_option
def set_(protected, threshold, mode, always, auth_window, keep_s, iface):
    """Set the SYN defence of the protected address(es)."""
    return Result(imperative.syn_set(iface, threshold, auth_window, keep_s, protected, mode, always), render)


@syn.command("show")
@iface_option
@json_option
def show(iface):
    """Show the SYN defence of each protected address."""
    return Result(cleansing.syn_show(iface), render)
