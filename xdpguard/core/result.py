"""What a verb returns: a frozen dataclass, shown by the CLI as text or as `--json` (its `to_dict()`)."""

from __future__ import annotations

from dataclasses import asdict


def as_dict(obj) -> dict:
    """A result's JSON: its fields, nested dataclasses as dicts. A result class says `to_dict = as_dict`."""
    return asdict(obj)
