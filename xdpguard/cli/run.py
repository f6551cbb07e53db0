"""`xdpguard run`: the long-running part (backend health checks)."""

from __future__ import annotations

import time

import click

from xdpguard.core import health

from .output import console


@click.command()
@click.option("--interval", type=float, default=2.0, show_default=True, metavar="SECONDS",
              help="Seconds between two rounds of health checks.")
@click.option("--timeout", type=float, default=1.0, show_default=True, metavar="SECONDS",
              help="Seconds a probe waits for an answer.")
@click.option("--rise", type=int, default=2, show_default=True, help="Successes in a row that make a backend up.")
@click.option("--fall", type=int, default=3, show_default=True, help="Failures in a row that make a backend down.")
@click.option("--once", is_flag=True, help="One round (rise = fall = 1), then exit.")
@click.option("--duration", type=float, default=None, metavar="SECONDS", help="Exit after SECONDS (tests, demos).")
def run(interval, timeout, rise, fall, once, duration):
    """Check backend health and keep the NAT choice in step with it."""
    c = console()

    def report(t: health.Transition) -> None:
        c.print(f"{time.strftime('%H:%M:%S')} {t.rule} backend {t.backend}: {t.old} -> {t.new}")

    params = health.HealthParams(interval, timeout, rise, fall)
    if duration is not None and duration <= 0:
        raise click.BadParameter("must be positive", param_hint="--duration")
    c.print(f"health checks every {interval:g} s (timeout {timeout:g} s, rise {rise}, fall {fall})")
    rounds = health.run(params, once=once, duration_s=duration, report=report)
    c.print(f"stopped after {rounds} round(s)")
