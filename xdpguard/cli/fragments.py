"""`xdpguard fragments drop|pass|show`: the IP fragment policy (reason `fragment`)."""

from __future__ import annotations

import click

from xdpguard.core.verbs import cleansing, imperative

from .params import iface_option
from .output import Console, Result, json_option


def render(c: Console, res: cleansing.FragmentsResult) -> None:
    c.print(f"IP fragments to protected addresses on {res.iface}: {'dropped' if res.drop else 'passed'}")


@click.group()
def fragments():
    """Drop or pass IPv4/IPv6 fragments to the protected addresses."""


@fragments.command("drop")
@iface_option
@json_option
def drop(iface):
    """Drop fragments."""
    return Result(imperative.fragments_set(iface, True), render)


@fragments.command("pass")
@iface_option
@json_option
def pass_(iface):
    """Pass fragments (the default at level loose; normal and strict drop them)."""
    return Result(imperative.fragments_set(iface, False), render)


@fragments.command("show")
@iface_option
@json_option
def show(iface):
    """Show the fragment policy."""
    return Result(cleansing.fragments_show(iface), render)
