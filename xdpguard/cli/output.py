"""Rendering results: human text through rich, or --json."""

from __future__ import annotations

import json
import sys

from rich.console import Console


def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


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
