"""`xdpguard reflection list|add|del|on|off`: drop UDP from amplifier source ports (reason `reflection`)."""

from __future__ import annotations

import click

from xdpguard.core import cleansing, imperative

from .limit import iface_option, json_option
from .output import console, emit_json


def render(res: cleansing.ReflectionResult, as_json: bool) -> None:
    if as_json:
        emit_json(res)
        return
    c = console()
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
def list_(iface, as_json):
    """Show whether the filter is on and its source ports."""
    render(cleansing.reflection_list(iface), as_json)


@reflection.command("add")
@click.argument("ports", nargs=-1, required=True)
@iface_option
@json_option
def add(ports, iface, as_json):
    """Add UDP source PORTs."""
    render(imperative.reflection_change(iface, "add", ports), as_json)


@reflection.command("del")
@click.argument("ports", nargs=-1, required=True)
@iface_option
@json_option
def delete(ports, iface, as_json):
    """Remove UDP source PORTs."""
    render(imperative.reflection_change(iface, "del", ports), as_json)


@reflection.command("on")
@iface_option
@json_option
def on(iface, as_json):
    """Turn the reflection filter on."""
    render(imperative.reflection_change(iface, "on"), as_json)


@reflection.command("off")
@iface_option
@json_option
def off(iface, as_json):
    """Turn the reflection filter off (the port list stays)."""
    render(imperative.reflection_change(iface, "off"), as_json)
