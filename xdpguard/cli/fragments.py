"""`xdpguard fragments drop|pass|show`: the IP fragment policy (reason `fragment`)."""

from __future__ import annotations

import click

from xdpguard.core import cleansing, imperative

from .params import iface_option, json_option
from .output import console, emit_json


def render(res: cleansing.FragmentsResult, as_json: bool) -> None:
    if as_json:
        emit_json(res)
        return
    console().print(f"IP fragments to protected addresses on {res.iface}: {'dropped' if res.drop else 'passed'}")


@click.group()
def fragments():
    """Drop or pass IPv4/IPv6 fragments to the protected addresses."""


@fragments.command("drop")
@iface_option
@json_option
def drop(iface, as_json):
    """Drop fragments."""
    render(imperative.fragments_set(iface, True), as_json)


@fragments.command("pass")
@iface_option
@json_option
def pass_(iface, as_json):
    """Pass fragments (the default at level loose; normal and strict drop them)."""
    render(imperative.fragments_set(iface, False), as_json)


@fragments.command("show")
@iface_option
@json_option
def show(iface, as_json):
    """Show the fragment policy."""
    render(cleansing.fragments_show(iface), as_json)
