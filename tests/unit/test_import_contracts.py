"""The architecture as import-linter contracts (pyproject.toml's [tool.importlinter]): the CLI on
top of core, core without click or rich, model/ free of kernel and I/O modules, the layers of
core. `lint-imports` comes from pyproject's [dependency-groups] lint, installed by setup.sh.
(It replaces the hand-written scans of core's imports for click and rich.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def _lint_imports() -> Path:
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.exists(), f"{exe} is missing: run scripts/setup.sh (it installs the lint group of pyproject.toml)"
    return exe


def test_the_import_contracts_hold():
    r = subprocess.run([str(_lint_imports()), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout
    assert "core imports neither click nor rich KEPT" in r.stdout  # the contracts really ran


def test_a_broken_contract_fails(tmp_path):
    """The tool catches what the contracts forbid: core importing click, model importing the kernel."""
    cfg = tmp_path / "contracts.toml"
    cfg.write_text(
        '[tool.importlinter]\nroot_package = "xdpguard"\n\n'
        '[[tool.importlinter.contracts]]\nname = "model imports no kernel (false on purpose)"\n'
        'type = "forbidden"\nsource_modules = ["xdpguard.core.model"]\n'
        'forbidden_modules = ["xdpguard.core.policy"]\n'
    )
    r = subprocess.run(
        [str(_lint_imports()), "--config", str(cfg), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "xdpguard.core.model.verdict -> xdpguard.core.policy" in r.stdout
