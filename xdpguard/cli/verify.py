"""`xdpguard verify set|show`: verified clients and the admission budgets per service.

Unverified UDP (sources that never proved themselves) gets a budget per service, packets/s
(budget.h; reason `budget`), and so do the unverified SYNs of a TCP service below its address's
SYN threshold (SYNs/s; past it a SYN meets the SYN defence). The daemon learns each service's
rate from its peacetime; the settings are the floors. Verified sources are never charged, each
within its own privilege budget (knowngood.h). `verify set` edits the desired state; the
reconciler writes it.
"""

from __future__ import annotations

from dataclasses import asdict

import click

from xdpguard.core.verbs import verified

from .output import Result, json_option
from .params import COUNT, iface_option


def _text(c, v: verified.VerifyView) -> None:
    e, b = v.effective, v.budget
    c.print(
        f"{v.iface}: unverified UDP per service: "
        + (
            f"{e['budget_udp_pps']:,} pps, new TCP connections {e['budget_tcp_syns']:,}/s"
            if e["budget"]
            else "no budget"
        )
        + f"; verified sources: TCP {e['tcp_pps']:,} pps (burst {e['tcp_burst']:,}), "
        f"UDP {e['udp_pps']:,} pps (burst {e['udp_burst']:,}); UDP learning below {e['udp_peace_pps']:,} pps"
        + ("" if v.udp_learning else " (paused: attack)")
        + f"; spoofable bans ≤ {e['spoof_ban_s']} s"
    )
    c.print(
        f"verified sources: {', '.join(f'{k} {n:,}' for k, n in sorted(v.verified.items())) or 'none'}; "
        f"budget: {b['admitted']:,} admitted, {b['dropped']:,} dropped, {b['verified']:,} verified passed"
    )
    for s in v.services:
        c.print(
            f"  {s['protected']} {s['proto']}/{s['port']}: {s['admitted']:,} admitted, {s['dropped']:,} "
            + ("to the SYN defence" if s["proto"] == "tcp" else "dropped")
            + f", {s['verified']:,} verified"
            + (f" (rate {s['rate']:,} " + ("SYN/s)" if s["proto"] == "tcp" else "units/s)") if s["rate"] else "")
        )
    for k, h in v.verified_drops.items():
        c.print(f"  do no harm, {k}: {h['dropped']:,} verified dropped, {h['exempted']:,} exempted")


def _result(v: verified.VerifyView) -> Result:
    return Result(asdict(v), lambda c, _: _text(c, v))


@click.group()
def verify():
    """Verified clients and the admission budgets for unverified traffic."""


@verify.command("set")
@click.option(
    "--budget-udp-pps",
    type=COUNT,
    default=None,
    help="Unverified UDP units/s per service before any baseline, and the floor of the rate the daemon learns (0: default 1,000).",
)
@click.option(
    "--budget-tcp-syns",
    type=COUNT,
    default=None,
    help="Unverified SYNs/s per TCP service below the SYN threshold before any baseline, and the floor of the "
    "rate the daemon learns; past it a SYN meets the SYN defence (0: default 500).",
)
@click.option("--budget/--no-budget", "budget", default=None, help="Switch the admission budget on or off.")
@click.option("--tcp-pps", type=COUNT, default=None, help="What one TCP-verified source sends with its privilege.")
@click.option("--tcp-burst", type=COUNT, default=None)
@click.option("--udp-pps", type=COUNT, default=None, help="What one UDP-verified source sends with its privilege.")
@click.option("--udp-burst", type=COUNT, default=None)
@click.option(
    "--udp-peace-pps", type=COUNT, default=None, help="UDP packets/s to an address above which nothing is learned."
)
@click.option("--spoof-ban-s", type=COUNT, default=None, help="Longest ban from spoofable evidence, seconds.")
@iface_option
@json_option
def set_(
    budget_udp_pps, budget_tcp_syns, budget, tcp_pps, tcp_burst, udp_pps, udp_burst, udp_peace_pps, spoof_ban_s, iface
):
    """Change the settings (0 = the default); the others stay."""
    given = {
        k: v
        for k, v in dict(
            budget_udp_pps=budget_udp_pps,
            budget_tcp_syns=budget_tcp_syns,
            budget=budget,
            tcp_pps=tcp_pps,
            tcp_burst=tcp_burst,
            udp_pps=udp_pps,
            udp_burst=udp_burst,
            udp_peace_pps=udp_peace_pps,
            spoof_ban_s=spoof_ban_s,
        ).items()
        if v is not None
    }
    return _result(verified.verify_set(iface, **given))


@verify.command("show")
@iface_option
@json_option
def show(iface):
    """Show the settings, the verified sources and the budget counters."""
    return _result(verified.show(iface))
