"""Only guard.py reads and writes the BPF maps (issue 26, "one owner of the maps").

The test reads the source of every module under xdpguard/ (nothing is imported) and fails when
a module other than the owner
- uses a `.maps` attribute (a Guard's or a test bed's map dict),
- indexes anything by a map name (`x[MapName.PROT4]`, `x[abi.MapName.BANS]`),
- calls `get_table` (bcc's map lookup), or
- builds a path under the pin root (`<iface>.pin_dir / ...`, `bpffs_root()`).
The kernel layer below the owner (compile/load, the map wrapper, the upgrade's pin swap) and
state.py, which defines where an interface's pins live, are the only other places that may.

PENDING lists the modules whose map code has not moved into guard.py yet, with their exact
count of such uses: the count may only go down (edit it here when it does), and a module not
listed may not start.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "xdpguard"

OWNER = "core/guard.py"
KERNEL = {"core/kernel/dataplane.py", "core/kernel/maps.py", "core/kernel/migrate.py", "core/kernel/libbpf.py"}
PIN_LAYOUT = {"core/state.py"}  # Iface.pin_dir, remove_pins: where the pins live, defined once

PENDING = {}


def _uses(tree: ast.AST, pins_allowed: bool) -> list[str]:
    out = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and node.attr == "maps":
            out.append(f"{where}: .maps")
        elif (
            isinstance(node, (ast.Attribute, ast.Name))
            and getattr(node, "attr", getattr(node, "id", None)) == "get_table"
        ):
            out.append(f"{where}: get_table")
        elif isinstance(node, ast.Subscript) and not (isinstance(node.value, ast.Name) and node.value.id.isupper()):
            sl = node.slice  # (a constant table keyed by map name, abi.MAP_LAYOUTS[...], is no map)
            if isinstance(sl, ast.Attribute) and (
                (isinstance(sl.value, ast.Name) and sl.value.id == "MapName")
                or (isinstance(sl.value, ast.Attribute) and sl.value.attr == "MapName")
            ):
                out.append(f"{where}: [MapName.{sl.attr}]")
        elif (
            not pins_allowed
            and isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Div)
            and isinstance(node.left, ast.Attribute)
            and node.left.attr == "pin_dir"
        ):
            out.append(f"{where}: pin_dir / ...")
        elif (
            not pins_allowed
            and isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "bpffs_root"
        ):
            out.append(f"{where}: bpffs_root()")
    return out


def _violations() -> dict[str, list[str]]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == OWNER or rel in KERNEL:
            continue
        uses = _uses(ast.parse(path.read_text(), str(path)), pins_allowed=rel in PIN_LAYOUT)
        if uses:
            by_line = {}  # one use a line: `g.maps[MapName.X]` is one use, not two
            for u in uses:
                by_line.setdefault(u.split(":")[0], u)
            found[rel] = list(by_line.values())
    return found


def test_only_the_owner_touches_maps():
    found = _violations()
    new = {m: u for m, u in found.items() if m not in PENDING}
    assert not new, f"map access outside guard.py (ask a Guard instead): {new}"
    grown = {m: u for m, u in found.items() if m in PENDING and len(u) > PENDING[m]}
    assert not grown, f"more map access than PENDING allows: {grown}"


def test_pending_is_exact():
    """A module that moved its map code into guard.py leaves PENDING (or lowers its count)."""
    found = _violations()
    stale = {m: (n, len(found.get(m, []))) for m, n in PENDING.items() if len(found.get(m, [])) != n}
    assert not stale, f"PENDING is out of date (module: (listed, found)): {stale}"


def test_the_checker_sees_each_kind_of_use():
    src = (
        "g.maps[x]\nb.get_table('t')\nm[abi.MapName.BANS]\nm[MapName.PROT4]\n"
        "p = iface.pin_dir / 'xg_prog'\nr = bpffs_root()\n"
    )
    uses = _uses(ast.parse(src), pins_allowed=False)
    assert sorted(u.split(": ", 1)[1] for u in uses) == sorted(
        [".maps", "get_table", "[MapName.BANS]", "[MapName.PROT4]", "pin_dir / ...", "bpffs_root()"]
    )
    assert _uses(ast.parse("p = iface.pin_dir / 'x'\n"), pins_allowed=True) == []
