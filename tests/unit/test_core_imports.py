"""The core's import graph (issue 9): no imports of our own modules inside function bodies (they
hid import cycles, e.g. protection <-> forward, events -> stats). Third-party imports kept lazy
for startup cost (bcc, matplotlib, etcd3gw, ...) are fine. (No click or rich in core, and the
layers: import-linter's contracts, test_import_contracts.py.)"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent.parent / "xdpguard" / "core"


def _modules():
    return sorted(CORE.rglob("*.py"))


def test_no_own_module_imported_inside_a_function():
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                own = (
                    isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("xdpguard"))
                ) or (isinstance(node, ast.Import) and any(a.name.startswith("xdpguard") for a in node.names))
                if own:
                    found.append(f"{path.relative_to(CORE)}:{node.lineno} in {fn.name}()")
    assert found == []
