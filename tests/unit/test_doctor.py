"""`xdpguard doctor` check functions with fake inputs, and the CLI's exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from xdpguard.cli.main import cli
from xdpguard.core import doctor as d

ETHTOOL_I_VIRTIO = "driver: virtio_net\nversion: 1.0.0\nfirmware-version: \nbus-info: 0000:00:03.0\n"
ETHTOOL_K = "Features for eth1:\nrx-checksumming: on [fixed]\nlarge-receive-offload: {lro}\n"
ETHTOOL_L = """Channel parameters for eth1:
Pre-set maximums:
RX:		n/a
TX:		n/a
Other:		n/a
Combined:	{max}
Current hardware settings:
RX:		n/a
TX:		n/a
Other:		n/a
Combined:	{cur}
"""


@pytest.mark.parametrize("release,status", [
    ("6.1.0-18-amd64", d.OK), ("5.10.0-28-amd64", d.OK), ("6.18.44-fc", d.OK),
    ("5.4.0-150-generic", d.WARN), ("4.19.0", d.WARN), ("4.9.0-3", d.FAIL), ("garbage", d.FAIL),
])
def test_kernel(release, status):
    assert d.check_kernel(release).status == status


def test_btf_and_bpffs():
    assert d.check_btf(True).status == d.OK
    assert d.check_btf(False).status == d.WARN
    mounts = "bpf /sys/fs/bpf bpf rw 0 0\nbpf /run/xdpguard/bpffs bpf rw 0 0\n"
    assert d.check_bpffs(mounts).status == d.OK
    c = d.check_bpffs("bpf /sys/fs/bpf bpf rw 0 0\ntmpfs /run/xdpguard/bpffs tmpfs rw 0 0\n")
    assert c.status == d.WARN and "mount -t bpf" in c.fix


def test_headers():
    assert d.check_headers("6.1.0", True, None, False).status == d.OK
    c = d.check_headers("6.1.0", False, None, False)
    assert c.status == d.FAIL and "linux-headers-6.1.0" in c.fix
    assert d.check_headers("6.1.0", False, "/usr/src/k", True).status == d.OK
    assert d.check_headers("6.1.0", True, "/nope", False).status == d.FAIL


def test_imports_and_compile():
    assert d.check_import("bcc", None, "python3-bpfcc").status == d.OK
    c = d.check_import("nftables", "No module named 'nftables'", "python3-nftables")
    assert c.status == d.FAIL and "python3-nftables" in c.fix
    assert d.check_bcc_compile(None).status == d.OK
    assert d.check_bcc_compile("a\nfatal error: 'linux/types.h' file not found").status == d.FAIL
    assert "linux/types.h" in d.check_bcc_compile("x\nfatal error: 'linux/types.h' file not found").detail
    assert d.check_bcc_compile(None, skipped="needs root").status == d.WARN


def test_driver_lro_mtu_queues():
    assert d.check_driver("eth1", ETHTOOL_I_VIRTIO).status == d.OK
    assert d.check_driver("eth1", "driver: e1000\n").status == d.WARN
    assert d.check_driver("eth1", None).status == d.WARN
    assert d.check_lro("eth1", ETHTOOL_K.format(lro="off [fixed]")).status == d.OK
    c = d.check_lro("eth1", ETHTOOL_K.format(lro="on"))
    assert c.status == d.FAIL and c.fix == "ethtool -K eth1 lro off"
    assert d.check_mtu("eth1", "virtio_net", 1500).status == d.OK
    assert d.check_mtu("eth1", "virtio_net", 3498).status == d.OK
    c = d.check_mtu("eth1", "virtio_net", 9000)
    assert c.status == d.FAIL and "mtu 1500" in c.fix
    assert d.check_mtu("eth1", "ixgbe", 9000).status == d.OK
    assert d.check_queues("eth1", "virtio_net", ETHTOOL_L.format(max=4, cur=2), 2).status == d.OK
    c = d.check_queues("eth1", "virtio_net", ETHTOOL_L.format(max=4, cur=4), 2)
    assert c.status == d.WARN and c.fix == "ethtool -L eth1 combined 2"
    c = d.check_queues("eth1", "virtio_net", ETHTOOL_L.format(max=1, cur=1), 2)
    assert c.status == d.WARN and "queues='4'" in c.fix
    assert d.check_queues("eth1", "ixgbe", None, 2).status == d.OK


def test_trial_attach_never_on_default_route_iface():
    assert d.attach_skip_reason("eth0", True, True, {"eth0"}) is not None  # even with --try-attach
    assert d.attach_skip_reason("eth0", False, False, {"eth0"}) is not None
    assert d.attach_skip_reason("eth1", False, True, {"eth0"}) == "host namespace"
    assert d.attach_skip_reason("eth1", True, True, {"eth0"}) is None
    assert d.attach_skip_reason("veth0", False, False, set()) is None
    assert d.check_native_xdp("eth0", None, "it carries the default route; never touched").status == d.OK
    assert d.check_native_xdp("eth1", None, "host namespace").status == d.WARN
    assert d.check_native_xdp("eth1", "Operation not supported", None).status == d.WARN
    assert d.check_native_xdp("eth1", None, None).status == d.OK


def test_report_and_cli_exit_codes(monkeypatch):
    ok = d.DoctorReport([d.Check("kernel", d.OK, "Linux 6.1")])
    bad = d.DoctorReport([d.Check("kernel", d.OK, "x"), d.Check("lro", d.FAIL, "LRO on", "ethtool -K eth1 lro off")])
    assert not ok.failed and bad.failed
    assert bad.to_dict()["ok"] is False
    runner = CliRunner()
    monkeypatch.setattr(d, "gather", lambda iface=None, try_attach=False: ok)
    r = runner.invoke(cli, ["doctor"])
    assert r.exit_code == 0 and "OK" in r.output and "kernel" in r.output
    monkeypatch.setattr(d, "gather", lambda iface=None, try_attach=False: bad)
    r = runner.invoke(cli, ["doctor"])
    assert r.exit_code == 1 and "FAIL" in r.output and "fix: ethtool -K eth1 lro off" in r.output
    r = runner.invoke(cli, ["doctor", "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["checks"][1]["status"] == "fail"


def test_core_doctor_imports_neither_click_nor_rich():
    code = "import sys, xdpguard.core.doctor; sys.exit(any(m in sys.modules for m in ('click', 'rich')))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_gather_without_iface_runs():
    rep = d.gather(None, compile_bcc=False)
    names = [c.name for c in rep.checks]
    assert names[:5] == ["kernel", "btf", "bpffs", "kernel-headers", "bcc"]
    assert "nftables" in names
