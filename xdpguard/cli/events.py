"""`xdpguard events`: the attack event log, and the thresholds that open events."""

from __future__ import annotations

import time

import click
from rich.table import Table

from xdpguard.core.observe import events as core
from xdpguard.core.verbs import imperative
from xdpguard.core import protection, state
from xdpguard.core.model import vocab
from xdpguard.core.errors import UserError
from xdpguard.core.prefixes import parse_address
from xdpguard.core.kernel.abi import DROP_REASONS

from .output import Console, Result, human_bytes, json_option as _json
from .params import HOOK, IFACE, RATE, TEXT, SecondsType, iface_option as _iface


@click.group(invoke_without_command=True)
@click.option("--iface", "-i", "iface_filter", type=IFACE, default=None, help="Only events of this interface.")
@click.option("--limit", type=click.IntRange(1, None), default=50, show_default=True, help="Most recent N events.")
@_json
@click.pass_context
def events(ctx, iface_filter, limit):
    """List attack events (opened by `xdpguard run` when a threshold is crossed)."""
    if ctx.invoked_subcommand is not None:
        return None
    return Result(core.read_log(iface=iface_filter)[-limit:], _table)


def _table(c: Console, evs: list[dict]) -> None:
    if not evs:
        c.print(f"no attack events in {core.log_path()}")
        return
    t = Table(box=None, pad_edge=False)
    for col in ("start", "end", "iface", "protected", "peak pps", "peak bps", "reasons", "sources"):
        t.add_column(col, no_wrap=col not in ("reasons", "sources"))
    for e in evs:
        fmt = lambda ts: "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))  # noqa: E731
        t.add_row(
            fmt(e.get("start")),
            "open" if e.get("end") is None else fmt(e.get("end")),
            e.get("iface", ""),
            e.get("protected", ""),
            f"{e.get('peak_pps', 0):.0f}",
            human_bytes(e.get("peak_bps", 0) / 8) + "/s",
            ", ".join(f"{r} {n}" for r, n in e.get("top_reasons", [])[:3]),
            ", ".join(s for s, _ in e.get("top_sources", [])[:3]),
        )
    c.print(t)


@events.group()
def threshold():
    """Attack thresholds of an interface (kept in its state file)."""


def _reason_opt(values: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    out = {}
    drops = set(DROP_REASONS)
    for v in values:
        name, _, rest = v.partition("=")
        if name not in drops or not rest:
            raise click.BadParameter(
                f"'{v}': use REASON=PPS[/BPS] with a drop reason ({', '.join(sorted(drops))})", param_hint="--reason"
            )
        pps, _, bps = rest.partition("/")
        try:
            out[name] = (vocab.parse_rate(pps, "--reason pps"), vocab.parse_rate(bps or "0", "--reason bps"))
        except UserError as exc:
            raise click.BadParameter(exc.message, param_hint="--reason") from None
    return out


@threshold.command("set")
@click.option(
    "--protected", type=TEXT, default=None, metavar="ADDR", help="Only this protected address (default: all)."
)
@click.option("--pps", type=RATE, default=None, help="All packets/s to the address (k, M, G suffixes; 0 = off).")
@click.option("--bps", type=RATE, default=None, help="All bits/s to the address.")
@click.option("--drop-pps", type=RATE, default=None, help="Dropped packets/s.")
@click.option("--drop-bps", type=RATE, default=None, help="Dropped bits/s.")
@click.option(
    "--reason", "reasons", type=TEXT, multiple=True, metavar="REASON=PPS[/BPS]", help="Per drop reason (repeatable)."
)
@click.option(
    "--hold",
    type=SecondsType(0, 86400),
    default=None,
    metavar="SECONDS",
    help="An event closes after SECONDS below every threshold.",
)
@click.option(
    "--hook",
    type=HOOK,
    default=None,
    metavar="COMMAND",
    help="Run COMMAND (no shell) on event start and end, with the event JSON on stdin ('' = none).",
)
@_iface
@_json
def threshold_set(protected, pps, bps, drop_pps, drop_bps, reasons, hold, hook, iface):
    """Set thresholds; unspecified values keep their current setting."""
    if protected is not None:  # every value is checked before the interface is looked at
        protected = str(parse_address(protected, "protected address"))
    extra = _reason_opt(reasons)
    st_iface = state.resolve_iface(protection.pick_iface(iface))
    state.require_root()
    if protected is not None:  # thresholds of an unprotected address would be refused by the config loader
        with protection.open_guard(st_iface.name) as g:
            addrs = [str(a) for a in g.protected_addrs()]
        if protected not in addrs:
            raise UserError(
                f"{protected} is not a protected address of {st_iface.name} (protected: {', '.join(addrs) or 'none'})"
            )

    def update(cfg: core.EventConfig) -> core.EventConfig:
        cur = cfg.addresses.get(protected, cfg.default) if protected else cfg.default
        new = core.Thresholds(
            cur.pps if pps is None else pps,
            cur.bps if bps is None else bps,
            cur.drop_pps if drop_pps is None else drop_pps,
            cur.drop_bps if drop_bps is None else drop_bps,
            {**cur.reasons, **extra},
        )
        addrs = dict(cfg.addresses)
        default = cfg.default
        if protected:
            addrs[protected] = new
        else:
            default = new
        return core.EventConfig(
            default, addrs, cfg.hold_s if hold is None else hold, cfg.hook if hook is None else (hook or None)
        )

    cfg = imperative.set_event_config(st_iface, update)
    return _show(cfg, st_iface.name)


@threshold.command("show")
@_iface
@_json
def threshold_show(iface):
    """Show the thresholds in force."""
    st_iface = state.resolve_iface(protection.pick_iface(iface))
    return _show(core.load_config(st_iface), st_iface.name)


@threshold.command("clear")
@_iface
@_json
def threshold_clear(iface):
    """Back to the defaults."""
    st_iface = state.resolve_iface(protection.pick_iface(iface))
    state.require_root()
    cfg = imperative.set_event_config(st_iface, lambda cfg: core.EventConfig())
    return _show(cfg, st_iface.name)


def _show(cfg: core.EventConfig, name: str) -> Result:
    return Result({"iface": name, **cfg.to_json()}, lambda c, _: _thresholds(c, cfg, name))


def _thresholds(c: Console, cfg: core.EventConfig, name: str) -> None:
    c.print(f"attack thresholds of {name} (0 = off), hold {cfg.hold_s:g} s, hook {cfg.hook or '-'}")
    for who, t in [("default", cfg.default), *sorted(cfg.addresses.items())]:
        rs = ", ".join(f"{r} {p:g} pps/{b:g} bps" for r, (p, b) in sorted(t.reasons.items()))
        c.print(
            f"  {who}: pps {t.pps:g}, bps {t.bps:g}, drop pps {t.drop_pps:g}, drop bps {t.drop_bps:g}"
            + (f"; {rs}" if rs else "")
        )
