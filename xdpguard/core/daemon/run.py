"""`xdpguard run`'s wiring: the long-running part, given its resolved options (cli/run.py
resolves them from the command line and the [daemon] section). Backend health checks in the
calling thread; attack detection (with mitigation), the sweeps of expired entries and, with a
config file, the reconciler in their own threads; the sample fan-out and the history keeper; the
metrics server. The data path needs none of it: SIGTERM ends it and the protection stays."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import reconciler as daemon, mitigation
from ..observe import events, fanout, history
from .. import fastfwd, geo, protection, store
from ..nat import health
from ..observe import metrics as prom
from ..errors import UserError


@dataclass(frozen=True)
class RunOptions:
    health: health.HealthParams
    once: bool = False
    duration_s: float | None = None
    metrics: str | None = None  # HOST:PORT of the Prometheus endpoint
    detect: bool = True
    detect_interval_s: float = 1.0
    overrides: events.Thresholds | None = None  # the attack thresholds given on the command line
    hold_s: float | None = None
    hook: str | None = None
    sweep_interval_s: float = 10.0
    config_path: str | None = None  # own the desired state of this file (the reconciler)
    mitigation: mitigation.Settings | None = None  # None: no detection hook
    reconcile_interval_s: float = 0.5
    fastpath_interval_s: float = 1.0  # conntrack → the XDP fast path's table (fastfwd.sync_enabled)


def serve(o: RunOptions, say: Callable[[str], None], out: Callable[[str], None]) -> int:
    """Run until the health checks end (--once, --duration) or SIGTERM; `say` prints a line with
    the time in front, `out` a line as it is. Returns the health checks' rounds."""
    reconciler = None
    if o.config_path is not None:
        reconciler = daemon.Reconciler(o.config_path, say)
        reconciler.start()

    def report(t: health.Transition) -> None:
        say(f"{t.rule} backend {t.backend}: {t.old} -> {t.new}")

    def report_event(phase: str, ev: events.AttackEvent) -> None:
        say(
            f"attack {phase} on {ev.iface} {ev.protected}: "
            f"peak {ev.peak_pps:.0f} pps, {ev.peak_bps / 1e6:.1f} Mb/s ({', '.join(ev.triggers)})"
        )

    hub = keeper = None
    if o.detect and not o.once:  # the daemon owns the sample ring and fans it out (top, stats, capture)
        hub = fanout.Hub(report=say)  # started below, next to the threads (closed in their finally)
        keeper = history.Keeper(report=say)
    on_round = None
    if o.detect and o.mitigation is not None:  # mitigation, and the connection limits' offenders banned in XDP
        on_round = mitigation.DaemonHook(o.mitigation, say, verified_drops=mitigation.xdp_verified_drops)
    loop = (
        events.DetectionLoop(
            o.detect_interval_s,
            o.overrides,
            o.hold_s,
            o.hook,
            report_event,
            source_for=hub.subscribe if hub is not None else None,
            on_snapshot=keeper,
            on_round=on_round,
        )
        if o.detect
        else None
    )
    if loop is not None and on_round is not None:
        on_round.attacked = loop.active  # the budget learner learns only without an open attack
    stop = threading.Event()
    threads = []
    if loop is not None and not o.once:

        def detect_forever() -> None:
            told: dict[str, str] = {}
            while not stop.is_set():
                loop.tick()
                for name, problem in loop.problems().items():  # each new one once; detection goes on
                    if told.get(name) != problem:
                        say(f"detect {name}: {problem}")
                told = loop.problems()

        threads.append(threading.Thread(target=detect_forever, name="detect", daemon=True))
    server = None
    if o.metrics:
        tally = geo.CountryTally()  # top countries of the sampled traffic (geo database)
        if hub is not None and tally.of.available:
            hub.on_samples.append(tally.feed)
        server = prom.serve(
            o.metrics,
            prom.XdpguardCollector(
                attacks=loop.active if loop else prom.ATTACK_NONE,
                samples_missed=hub.missed if hub else dict,
                countries=tally.snapshot,
            ),
        )
        out(f"metrics on http://{o.metrics if not o.metrics.startswith(':') else '127.0.0.1' + o.metrics}/metrics")

    def sweep_once() -> None:
        try:
            for r in protection.sweep_expired():
                if r.list_entries or r.bans:
                    say(f"{r.iface}: removed {r.list_entries} expired list entries, {r.bans} expired bans")
        except UserError as exc:  # an interface went away between listing and opening
            out(f"sweep: {exc.message}")

    def sweep_forever() -> None:
        while not stop.wait(o.sweep_interval_s):
            sweep_once()

    sweep_once()
    if not o.once:
        threads.append(threading.Thread(target=sweep_forever, name="sweep", daemon=True))

    fast_seen: list = [object(), ()]  # (the store file's identity, the interfaces with the fast path on)

    def fast_ifaces() -> tuple[str, ...]:
        try:
            st = store.desired_path().stat()
            ident = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            ident = None
        if ident != fast_seen[0]:
            fast_seen[:] = [ident, tuple(s.name for s in store.load().interfaces if s.fast_path is not None)]
        return fast_seen[1]

    def fastpath_forever() -> None:
        while not stop.wait(o.fastpath_interval_s):
            try:
                fastfwd.sync_enabled(fast_ifaces())  # the desired specs with `fast_path` on
            except UserError as exc:
                out(f"fast path: {exc.message}")
            except Exception as exc:  # never let one bad round end the learning
                say(f"fast path: {type(exc).__name__}: {exc}")

    if not o.once:
        threads.append(threading.Thread(target=fastpath_forever, name="fastpath", daemon=True))
    if reconciler is not None and not o.once:

        def reconcile_forever() -> None:
            while not stop.wait(o.reconcile_interval_s):
                try:
                    reconciler.tick()
                except Exception as exc:  # never let one bad round end the repairs
                    say(f"reconcile: {type(exc).__name__}: {exc}")

        threads.append(threading.Thread(target=reconcile_forever, name="reconcile", daemon=True))

        def on_hup(signum, frame) -> None:
            reconciler.reload_requested = True

        signal.signal(signal.SIGHUP, on_hup)

    def on_term(signum, frame) -> None:  # protection stays in place: the data path needs no daemon
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    if hub is not None:
        hub.start()  # False (said why): another daemon serves them, detection reads from it
    for t in threads:
        t.start()
    p = o.health
    out(
        f"health checks every {p.interval_s:g} s (timeout {p.timeout_s:g} s, rise {p.rise}, fall {p.fall})"
        + (f"; attack detection every {o.detect_interval_s:g} s" if loop and not o.once else "")
    )
    try:
        rounds = health.run(p, once=o.once, duration_s=o.duration_s, report=report)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=o.detect_interval_s * 4 + 5)
        if loop is not None:
            loop.close()
        if hub is not None:
            hub.close()
        if keeper is not None:
            keeper.close()
        if server is not None:
            server[0].shutdown()
        if reconciler is not None:
            reconciler.close()
    return rounds
