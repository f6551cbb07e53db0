"""The Vagrantfile is valid (`vagrant validate`, Debian's vagrant package) and provisions with
scripts/setup.sh on a Debian 12 box."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VAGRANTFILE = ROOT / "Vagrantfile"


def test_vagrantfile_references_setup_and_debian12():
    text = VAGRANTFILE.read_text()
    assert 'config.vm.box = "debian/bookworm64"' in text
    assert re.search(r'path:\s*"scripts/setup\.sh"', text)
    assert "vagrant ssh -c 'sudo /vagrant/scripts/demo.sh'" in text
    assert "vagrant ssh -c 'sudo /vagrant/scripts/test.sh'" in text
    assert ":libvirt" in text and ":virtualbox" in text
    # private networks only from the benchmarking range
    for ip in re.findall(r'"(\d+\.\d+\.\d+\.\d+)"', text):
        if ip.startswith("255."):
            continue
        assert ip.startswith("198.18.") or ip.startswith("198.19."), ip


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant not installed (scripts/setup.sh installs it)")
@pytest.mark.parametrize("attacker", ["0", "1"])
def test_vagrant_validate(tmp_path: Path, attacker: str):
    # validate in a copy: vagrant writes .vagrant/ next to the Vagrantfile
    shutil.copy(VAGRANTFILE, tmp_path / "Vagrantfile")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    env = {**os.environ, "XDPGUARD_ATTACKER": attacker, "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
           "VAGRANT_CHECKPOINT_DISABLE": "1"}
    p = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "validated successfully" in p.stdout
    if attacker == "1":
        assert "attacker" in p.stdout
