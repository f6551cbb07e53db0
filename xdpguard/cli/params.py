"""click parameter types: validation happens here, with one-line errors (exit 2).

Each type calls the core vocabulary (xdpguard.core.model.vocab, prefixes), so a value means the same
on the command line as in the config file, and no CLI module writes a parser of its own.
"""

from __future__ import annotations

import os
import stat

import click

from xdpguard.core.model import vocab
from xdpguard.core.errors import UserError
from xdpguard.core.prefixes import parse_prefix


def _what(param, default: str) -> str:
    if param is not None and getattr(param, "opts", None):
        return param.opts[0] if param.param_type_name == "option" else (param.human_readable_name or default)
    return default


class VocabType(click.ParamType):
    """A ParamType whose conversion is one vocabulary function; its UserError becomes click's
    one-line 'Invalid value' error."""

    def parse(self, value, what: str):
        raise NotImplementedError

    def convert(self, value, param, ctx):
        try:
            return self.parse(value, _what(param, self.name.lower()))
        except UserError as exc:
            self.fail(exc.message, param, ctx)


class TextType(VocabType):
    """Any text, but UTF-8 and without NUL (what invalid UTF-8 in argv or a file would be)."""

    name = "TEXT"

    def parse(self, value, what):
        return vocab.check_text(value, what)


class CidrType(VocabType):
    """An IPv4/IPv6 CIDR or bare address; the value stays text, validated early."""

    name = "CIDR"

    def parse(self, value, what):
        parse_prefix(vocab.check_text(value, what))
        return value


class IfaceType(VocabType):
    """An interface name; existence is checked by core against the current netns."""

    name = "IFACE"

    def parse(self, value, what):
        vocab.check_text(value, "interface name")
        if not value or len(value) > 15 or "/" in value or any(c.isspace() for c in value):
            raise UserError(f"invalid interface name '{value}'")
        return value


class CountType(VocabType):
    """A whole number ≥ 0, optionally with a k/M/G suffix (decimal): 10k, 1.5M."""

    name = "N"

    def parse(self, value, what):
        return vocab.parse_count(value, what)


class RateType(VocabType):
    """A finite rate ≥ 0 (thresholds), with an optional k/M/G suffix; may stay None."""

    name = "RATE"

    def parse(self, value, what):
        return vocab.parse_rate(value, what)


class SecondsType(VocabType):
    """A finite number of seconds in [lo, hi] (lo excluded with lo_open)."""

    name = "SECONDS"

    def __init__(self, lo: float = 0.0, hi: float | None = None, lo_open: bool = False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def parse(self, value, what):
        return vocab.parse_seconds(value, what, self.lo, self.hi, self.lo_open)


class ListenType(VocabType):
    """HOST:PORT to serve on; the host must resolve now (not at bind time, in a thread)."""

    name = "HOST:PORT"

    def parse(self, value, what):
        vocab.parse_listen(value, what)
        return value.strip()


class HookType(VocabType):
    """A hook command: shlex-splittable, its program executable; '' stays '' (= none)."""

    name = "COMMAND"

    def parse(self, value, what):
        hook = vocab.parse_hook(value, what)
        return hook if hook is not None else ""


class InFileType(VocabType):
    """An existing regular file (or, with fifo, a FIFO, e.g. <(…)) to read; never a directory or
    a device (/dev/zero would be read forever). Checked with stat: nothing is opened here."""

    name = "FILE"

    def __init__(self, fifo: bool = True):
        self.fifo = fifo

    def parse(self, value, what):
        path = vocab.check_text(value, what)
        if not path:
            raise UserError(f"invalid {what} '': give a file")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"cannot read {path}: it is a directory")
        if not (stat.S_ISREG(st.st_mode) or (self.fifo and stat.S_ISFIFO(st.st_mode))):
            raise UserError(f"cannot read {path}: not a regular file")
        return path


class OutFileType(VocabType):
    """A file to create: its directory must exist; never a directory itself. Whether an
    existing file may be replaced is the writer's business (O_EXCL unless --overwrite)."""

    name = "FILE"

    def parse(self, value, what):
        path = vocab.check_text(value, what)
        if not path:
            raise UserError(f"invalid {what} '': give a file")
        if os.path.isdir(path):
            raise UserError(f"cannot write {path}: it is a directory")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UserError(f"cannot write {path}: directory {parent} does not exist")
        return path


TEXT = TextType()
CIDR = CidrType()
IFACE = IfaceType()
COUNT = CountType()
RATE = RateType()
LISTEN = ListenType()
HOOK = HookType()
IN_FILE = InFileType()
CONFIG_FILE = InFileType(fifo=False)  # a config: a FIFO with no writer would hang `apply` for ever
OUT_FILE = OutFileType()


# Options shared by the verbs (one definition, so help texts and names cannot drift).
iface_option = click.option(
    "--iface", "-i", type=IFACE, default=None, help="Interface; may be omitted when exactly one is protected."
)
protected_option = click.option(
    "--protected",
    type=TEXT,
    default=None,
    metavar="ADDR",
    help="Only this protected address (default: all of the interface's).",
)
