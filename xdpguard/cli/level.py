"""`xdpguard level loose|normal|strict|show`: protection presets derived from the forward rules."""

from __future__ import annotations

import click

from xdpguard.core.verbs import imperative, levelset
from xdpguard.core import levels

from .output import Console, Result, json_option
from .params import iface_option, protected_option


def render(c: Console, res: levelset.LevelResult) -> None:
    for a in res.addresses:
        if a.level is None:
            c.print(f"{res.iface} {a.protected}: no level", markup=False)
        else:
            c.print(
                f"{res.iface} {a.protected}: {a.level}{' (adjusted since)' if a.adjusted else ''}: {a.preset}",
                markup=False,
            )


@click.command(name="level")
@click.argument("level", type=click.Choice([*levels.LEVELS, "show"]))
@protected_option
@iface_option
@json_option
def level(level, protected, iface):
    """Apply a protection level to the protected addresses (or show them).

    loose: SYN defence above 50,000 SYN/s, no per-source limits, no automatic mitigation.
    normal (what attach applies): no address-wide per-source limit, SYN defence above 5,000/s,
    10,000 pps per source on every forwarded UDP port, automatic mitigation. strict: per source
    10,000 pps and 500 SYN/s (ban 60 s), SYN defence above 500/s, forwarded UDP ports 1,000 pps per source
    and 50,000 in all, automatic mitigation. Later `limit set`/`syn set` override what the level
    wrote; `level` again resets it."""
    if level == "show":
        if protected is not None:
            raise click.UsageError("level show takes no --protected")
        return Result(levelset.show(iface), render)
    return Result(imperative.set_level(iface, level, protected), render)
