"""click parameter types: validation happens here, with one-line errors (exit 2)."""

from __future__ import annotations

import click

from xdpguard.core.errors import UserError
from xdpguard.core.prefixes import parse_prefix


class CidrType(click.ParamType):
    """An IPv4/IPv6 CIDR or bare address; the value stays text, validated early."""

    name = "CIDR"

    def convert(self, value, param, ctx):
        try:
            parse_prefix(value)
        except UserError as exc:
            self.fail(exc.message, param, ctx)
        return value


class IfaceType(click.ParamType):
    """An interface name; existence is checked by core against the current netns."""

    name = "IFACE"

    def convert(self, value, param, ctx):
        if not value or len(value) > 15 or "/" in value or any(c.isspace() for c in value):
            self.fail(f"invalid interface name '{value}'", param, ctx)
        return value


CIDR = CidrType()
IFACE = IfaceType()


# Options shared by the verbs (one definition, so help texts and names cannot drift).
iface_option = click.option("--iface", "-i", type=IFACE, default=None,
                            help="Interface; may be omitted when exactly one is protected.")
protected_option = click.option("--protected", default=None, metavar="ADDR",
                                help="Only this protected address (default: all of the interface's).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
