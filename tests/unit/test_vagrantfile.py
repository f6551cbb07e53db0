"""The Vagrantfile is valid (`vagrant validate`, Debian's vagrant package) and provisions with
scripts/setup.sh on a Debian 12 box."""

from __future__ import annotations

import json
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
    assert 'ENV.fetch("XDPGUARD_BOX", "debian/bookworm64")' in text
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
    env = {
        **os.environ,
        "XDPGUARD_ATTACKER": attacker,
        "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }
    p = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "validated successfully" in p.stdout
    if attacker == "1":
        assert "attacker" in p.stdout


RECORDER = Path(__file__).with_name("vagrant_recorder.rb")
LIBVIRT = "config.vm.provider.libvirt."
SETUP = "config.vm.define.protector.vm.provision(setup)"


def recorded(**env: str) -> dict:
    """The settings the Vagrantfile makes under `env` (XDPGUARD_* unset unless given)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XDPGUARD_")}
    p = subprocess.run(
        ["ruby", str(RECORDER), str(VAGRANTFILE)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


needs_ruby = pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby not installed (vagrant pulls it in)")


@needs_ruby
def test_defaults_are_todays_values():
    s = recorded()
    kvm_usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    assert s[LIBVIRT + "driver"] == ("kvm" if kvm_usable else "qemu")
    assert s["config.vm.box"] == "debian/bookworm64"
    assert s[LIBVIRT + "nic_model_type"] == "virtio"
    assert not any(k.startswith(LIBVIRT + "management_network") for k in s)  # vagrant-libvirt's own
    assert s[SETUP]["path"] == "scripts/setup.sh" and s[SETUP]["env"] == {"XDPGUARD_WHEELS": ""}


@needs_ruby
def test_driver_network_box_and_wheels_from_the_environment():
    s = recorded(
        XDPGUARD_LIBVIRT_DRIVER="qemu",
        XDPGUARD_LIBVIRT_MGMT_NET="198.18.121.0/24",
        XDPGUARD_LIBVIRT_MGMT_NAME="xg-mgmt",
        XDPGUARD_BOX="xdpguard/bookworm",
        XDPGUARD_WHEELS="/opt/xdpguard/wheels",
    )
    assert s[LIBVIRT + "driver"] == "qemu"
    assert s[LIBVIRT + "cpu_mode"] == "custom" and s[LIBVIRT + "cpu_model"] == "max"  # TCG: no passthrough
    assert s[LIBVIRT + "management_network_address"] == "198.18.121.0/24"
    assert s[LIBVIRT + "management_network_name"] == "xg-mgmt"
    assert s["config.vm.box"] == "xdpguard/bookworm"
    assert s[SETUP]["env"] == {"XDPGUARD_WHEELS": "/opt/xdpguard/wheels"}
    s = recorded(XDPGUARD_LIBVIRT_DRIVER="kvm")
    assert s[LIBVIRT + "driver"] == "kvm" and LIBVIRT + "cpu_mode" not in s
