"""Rendering results: human text through rich, or --json.

A command returns a `Result` (its data, and how to show that data as text); `json_option` is
the one `--json` option, and it hands what the command returned to `render`, the one renderer:
JSON from the data (`to_dict()` where it has one), or the text drawn on a rich console. So no
command writes `if as_json:` of its own (pipx's `result.py` and its single output path).
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

import click
from rich.console import Console

_JSON_KEY = "xdpguard.json"


def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class Result:
    """What a command shows: `data` for --json, `text(console, data)` to draw the same as human
    text, and the process's exit code once it is shown."""

    data: Any
    text: Callable[[Console, Any], None]
    exit_code: int = 0


def render(res: Result, as_json: bool) -> None:
    """The one renderer: JSON or text, then the result's exit code (if not 0)."""
    if as_json:
        emit_json(res.data)
    else:
        res.text(console(), res.data)
    if res.exit_code:
        raise click.exceptions.Exit(res.exit_code)


def json_option(f: Callable | None = None, *, help: str = "Machine-readable output."):  # noqa: A002
    """The `--json` option: adds the flag, and renders the `Result` the command returns (a command
    that returns None has shown what it had to already). `json_wanted()` tells the command itself."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, as_json: bool = False, **kwargs):
            click.get_current_context().meta[_JSON_KEY] = as_json
            res = fn(*args, **kwargs)
            if res is not None:
                render(res, as_json)

        return click.option("--json", "as_json", is_flag=True, help=help)(wrapper)

    return deco(f) if f is not None else deco


def json_wanted() -> bool:
    """Whether the running command was given --json (for a command whose work differs, as `top`)."""
    return bool(click.get_current_context().meta.get(_JSON_KEY))


def emit_json(obj) -> None:
    data = obj.to_dict() if hasattr(obj, "to_dict") else obj
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
