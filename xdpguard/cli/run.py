"""`xdpguard run`: the long-running part (backend health checks, attack detection, metrics,
expiry sweeps). Here: its options, resolved against the [daemon] section of --config; the wiring
is core/daemon/run.py's."""

from __future__ import annotations

import time

import click
from click.core import ParameterSource

from xdpguard.core.model.desired import DaemonSpec
from xdpguard.core.desired.load import load
from xdpguard.core.model import vocab
from xdpguard.core.observe import events
from xdpguard.core.nat import health
from xdpguard.core.daemon import mitigation
from xdpguard.core.daemon import run as core_run

from .output import console
from .params import CONFIG_FILE, HOOK, LISTEN, RATE, SecondsType


@click.command()
@click.option(
    "--interval",
    type=SecondsType(0, lo_open=True),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between two rounds of health checks.",
)
@click.option(
    "--timeout",
    type=SecondsType(0, lo_open=True),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds a probe waits for an answer.",
)
@click.option("--rise", type=int, default=2, show_default=True, help="Successes in a row that make a backend up.")
@click.option("--fall", type=int, default=3, show_default=True, help="Failures in a row that make a backend down.")
@click.option("--once", is_flag=True, help="One round (rise = fall = 1), then exit.")
@click.option(
    "--duration",
    type=SecondsType(0, lo_open=True),
    default=None,
    metavar="SECONDS",
    help="Exit after SECONDS (tests, demos).",
)
@click.option(
    "--metrics",
    type=LISTEN,
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9477; ':PORT' is loopback).",
)
@click.option("--detect/--no-detect", default=True, show_default=True, help="Attack detection and events.")
@click.option(
    "--detect-interval",
    type=SecondsType(0.2, 60),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between two detection rounds.",
)
@click.option("--attack-pps", type=RATE, default=None, help="Override the thresholds: all packets/s to an address.")
@click.option("--attack-bps", type=RATE, default=None, help="Override: all bits/s to an address.")
@click.option("--attack-drop-pps", type=RATE, default=None, help="Override: dropped packets/s.")
@click.option("--attack-drop-bps", type=RATE, default=None, help="Override: dropped bits/s.")
@click.option(
    "--hold",
    type=SecondsType(0, 86400),
    default=None,
    metavar="SECONDS",
    help="Override: an event closes after SECONDS below every threshold.",
)
@click.option(
    "--sweep-interval",
    type=SecondsType(0.5, 3600),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between two sweeps of expired list entries and bans.",
)
@click.option(
    "--hook",
    type=HOOK,
    default=None,
    metavar="COMMAND",
    help="Override: run COMMAND on event start/end with the event JSON on stdin.",
)
@click.option(
    "--config",
    "config_path",
    type=CONFIG_FILE,
    default=None,
    metavar="FILE",
    help="Own the desired state of FILE: restore it at start (after a reboot), repair drift, "
    "re-read it on SIGHUP. Its [daemon] section sets the options not given here.",
)
@click.option(
    "--mitigate/--no-mitigate",
    default=True,
    show_default=True,
    help="Automatic mitigation: fingerprint a flood at a service from the samples and drop it with a "
    "temporary filter (needs --detect).",
)
@click.option(
    "--mitigation-pps",
    type=RATE,
    default=None,
    metavar="PPS",
    help="A service's unresolved packets/s that can be an attack (default 5000).",
)
@click.option(
    "--mitigation-max-share",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    metavar="SHARE",
    help="Refuse a fingerprint matching more than SHARE of the peacetime traffic (default 0.01).",
)
@click.option(
    "--mitigation-hold",
    type=SecondsType(0, 3600, lo_open=True),
    default=None,
    metavar="SECONDS",
    help="Lift a mitigation after SECONDS below half the trigger (default 5).",
)
@click.option(
    "--reconcile-interval",
    type=SecondsType(0.1, 60),
    default=0.5,
    show_default=True,
    metavar="SECONDS",
    help="With --config: seconds between two drift checks.",
)
@click.pass_context
def run(
    ctx,
    interval,
    timeout,
    rise,
    fall,
    once,
    duration,
    metrics,
    detect,
    detect_interval,
    attack_pps,
    attack_bps,
    attack_drop_pps,
    attack_drop_bps,
    hold,
    sweep_interval,
    hook,
    config_path,
    mitigate,
    mitigation_pps,
    mitigation_max_share,
    mitigation_hold,
    reconcile_interval,
):
    """Check backend health, detect attacks (events log, hook) and serve metrics; with --config,
    also restore and keep the desired state (the daemon: see xdpguard.service)."""
    c = console()
    ds = DaemonSpec()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    if config_path is not None:
        desired, warnings = load(config_path)
        for w in warnings:
            c.print(f"warning: {w}", markup=False)
        ds = desired.daemon
        interval = interval if given("interval") else ds.health_interval_s
        timeout = timeout if given("timeout") else ds.health_timeout_s
        rise = rise if given("rise") else ds.rise
        fall = fall if given("fall") else ds.fall
        sweep_interval = sweep_interval if given("sweep_interval") else ds.sweep_interval_s
        detect = detect if given("detect") else ds.detect
        detect_interval = detect_interval if given("detect_interval") else ds.detect_interval_s
        metrics = metrics if given("metrics") else ds.metrics
        mitigate = mitigate if given("mitigate") else ds.mitigation
        if metrics:  # the file's [daemon] metrics resolves too, before anything is restored
            vocab.parse_listen(metrics, "[daemon] metrics")
    if duration is not None and duration <= 0:
        raise click.BadParameter("must be positive", param_hint="--duration")
    overrides = None
    if any(v is not None for v in (attack_pps, attack_bps, attack_drop_pps, attack_drop_bps)):
        overrides = events.Thresholds(*(v or 0.0 for v in (attack_pps, attack_bps, attack_drop_pps, attack_drop_bps)))
    settings = None
    if detect:  # mitigation, and the connection limits' offenders banned in XDP
        settings = mitigation.Settings(
            bool(mitigate),
            mitigation_pps if mitigation_pps is not None else ds.mitigation_pps,
            ds.mitigation_factor,
            mitigation_max_share if mitigation_max_share is not None else ds.mitigation_max_share,
            mitigation_hold if mitigation_hold is not None else ds.mitigation_hold_s,
        )
        if mitigate and not given("detect_interval"):  # rounds short enough to mitigate within a second
            detect_interval = min(detect_interval, ds.mitigation_interval_s)
    opts = core_run.RunOptions(
        health.HealthParams(interval, timeout, rise, fall),
        once,
        duration,
        metrics,
        detect,
        detect_interval,
        overrides,
        hold,
        hook,
        sweep_interval,
        config_path,
        settings,
        reconcile_interval,
    )
    rounds = core_run.serve(
        opts,
        say=lambda m: c.print(f"{time.strftime('%H:%M:%S')} {m}", markup=False),
        out=lambda m: c.print(m, markup=False),
    )
    c.print(f"stopped after {rounds} round(s)")
