"""`xdpguard reflection list|add|del|on|off`: drop UDP from amplifier source ports (reason `reflection`)."""

from __future__ import annotations

import click

from xdpguard.core.verbs import cleansing, imperative

from .limit import iface_option
from .output import Console, Result, json_option


def render(c: Console, res: cleansing.ReflectionResult) -> None:
    if res.action in ("add", "del"):
        c.print(f"reflection ports on {res.iface}: {res.action} changed {len(res.changed)}")
    state = "on" if res.enabled else "[yellow]off[/]"
    c.print(f"reflection filter on {res.iface}: {state}; UDP source ports: {', '.join(map(str, res.ports)) or '-'}")


@click.group()
def reflection():
    """UDP reflection/amplification: drop UDP whose source port is a known reflector's."""


@reflection.command("list")
@iface_option
@json_option
def list_(iface):
    """Show whether the filter is on and its source ports."""
    return Result(cleansing.reflection_list(iface), render)


@reflection.command("add")
@click.argument("ports", nargs=-1, required=True)
@iface_option
@json_option
def add(ports, iface):
    """Add UDP source PORTs."""
    return Result(imperative.reflection_change(iface, "add", ports), render)


@reflection.command("del")
@click.argument("ports", nargs=-1, required=True)
@iface_option
@json_option
def delete(ports, iface):
    """Remove UDP source PORTs."""
    return Result(imperative.reflection_change(iface, "del", ports), render)


@reflection.command("on")
@iface_option
@json_option
def on(iface):
    """Turn the reflection filter on."""
    return Result(imperative.reflection_change(iface, "on"), render)


@reflection.command("off")
@iface_option
@json_option
def off(iface):
    """Turn the reflection filter off (the port list stays)."""
    return Result(imperative.reflection_change(iface, "off"), render)
