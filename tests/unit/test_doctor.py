"""`xdpguard doctor` check functions with fake inputs, and the CLI's exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from xdpguard.cli.main import cli
from xdpguard.core.observe import doctor as d

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


@pytest.mark.parametrize(
    "release,status",
    [
        ("6.1.0-18-amd64", d.OK),
        ("5.18.0", d.OK),
        ("6.18.44-fc", d.OK),
        # 5.10 (Debian 11) has the ring buffer but not bpf_xdp_load_bytes: the program cannot load
        ("5.10.0-28-amd64", d.FAIL),
        ("5.4.0-150-generic", d.FAIL),
        ("4.9.0-3", d.FAIL),
        ("garbage", d.FAIL),
    ],
)
def test_kernel_by_version(release, status):
    assert d.check_kernel(release).status == status


def test_kernel_names_what_it_lacks():
    c = d.check_kernel("5.10.0-28-amd64")
    assert "bpf_xdp_load_bytes" in c.detail and "ring buffer" not in c.detail and "by version" in c.detail
    assert "5.18" in c.fix
    c = d.check_kernel("5.4.0")
    assert "ring buffer" in c.detail and "bpf_xdp_load_bytes" in c.detail


def test_kernel_symbols_win_over_the_version():
    kallsyms = (
        "ffffffff815299d0 T bpf_ringbuf_output\n0000000000000000 t bpf_xdp_load_bytes\nffffffff81000000 T _stext\n"
    )
    syms = d.kernel_symbols(kallsyms)
    assert {"bpf_ringbuf_output", "bpf_xdp_load_bytes", "_stext"} <= syms
    # a vendor 5.14 kernel with the helper backported is fine; a 6.x built without it is not
    assert d.check_kernel("5.14.0-362.el9", syms).status == d.OK
    c = d.check_kernel("6.1.0", {"bpf_ringbuf_output", "_stext"})
    assert c.status == d.FAIL and "bpf_xdp_load_bytes" in c.detail and "by kernel symbols" in c.detail
    ok = d.check_kernel("6.1.0-57-amd64", syms)
    assert ok.status == d.OK and "6.1.0-57-amd64" in ok.detail and "by kernel symbols" in ok.detail


def test_program_check_reports_the_verifier():
    log = (
        "1346: (15) if r1 == 0x3a goto pc+3\nThe sequence of 8193 jumps is too complex.\n"
        "processed 58246 insns (limit 1000000) max_states_per_insn 57 total_states 2666\n"
    )
    assert d.verifier_reason(log) == "The sequence of 8193 jumps is too complex."
    assert d.verifier_reason("no verifier output here") is None
    c = d.check_program("Failed to load BPF program b'xdpguard_main': Bad address (verifier: invalid zero-sized read)")
    assert c.status == d.FAIL and "invalid zero-sized read" in c.detail
    assert d.check_program(None).status == d.OK
    assert d.check_program(None, skipped="bcc cannot compile").status == d.WARN


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


V4_EIGHT = "the IPv4 default route via 198.18.0.1"


def test_trial_attach_never_on_default_route_iface():
    routes = {"eth0": V4_EIGHT}
    assert d.attach_skip_reason("eth0", True, True, routes) == f"it carries {V4_EIGHT}; never touched"
    assert d.attach_skip_reason("eth0", False, False, routes) is not None  # even with --try-attach
    assert d.attach_skip_reason("eth1", False, True, routes) == "host namespace"
    assert d.attach_skip_reason("eth1", True, True, routes) is None
    assert d.attach_skip_reason("veth0", False, False, {}) is None


# `ip -j -4 route show default` on a Vagrant VM: eth0 (management, DHCP) carries the default
# route; the private NIC eth1 has a backup default with a higher metric. Doctor used to say
# "eth1 carries the default route" here and skipped the trial attach.
ROUTES_V4_BACKUP = json.dumps(
    [
        {"dst": "default", "gateway": "198.18.0.1", "dev": "eth0", "protocol": "dhcp", "metric": 100, "flags": []},
        {"dst": "default", "gateway": "198.18.10.1", "dev": "eth1", "metric": 1024, "flags": []},
    ]
)


def test_default_route_in_use_is_the_lowest_metric():
    assert d.route_ifaces_in_use(ROUTES_V4_BACKUP, "-4") == {"eth0": V4_EIGHT}
    assert d.attach_skip_reason("eth1", False, False, d.route_ifaces_in_use(ROUTES_V4_BACKUP, "-4")) is None
    # no metric = 0 (beats any other); same metric on two routes: both in use
    same = json.dumps(
        [
            {"dst": "default", "gateway": "198.18.0.1", "dev": "eth0", "flags": []},
            {"dst": "default", "gateway": "198.18.1.1", "dev": "eth1", "metric": 0, "flags": []},
        ]
    )
    assert set(d.route_ifaces_in_use(same, "-4")) == {"eth0", "eth1"}
    multipath = json.dumps(
        [
            {
                "dst": "default",
                "metric": 10,
                "flags": [],
                "nexthops": [
                    {"gateway": "198.18.0.1", "dev": "eth0", "weight": 1, "flags": []},
                    {"gateway": "198.18.1.1", "dev": "eth2", "weight": 1, "flags": []},
                ],
            }
        ]
    )
    assert set(d.route_ifaces_in_use(multipath, "-4")) == {"eth0", "eth2"}
    v6 = json.dumps(
        [
            {
                "dst": "default",
                "gateway": "fe80::1",
                "dev": "eth1",
                "protocol": "ra",
                "metric": 1024,
                "flags": [],
                "pref": "medium",
            }
        ]
    )
    assert d.route_ifaces_in_use(v6, "-6") == {"eth1": "the IPv6 default route via fe80::1"}
    unreachable = json.dumps(
        [{"type": "unreachable", "dst": "default", "dev": "lo", "metric": 4294967295, "flags": []}]
    )
    assert d.route_ifaces_in_use(unreachable, "-6") == {}
    assert d.route_ifaces_in_use("", "-4") == {} and d.route_ifaces_in_use("not json", "-4") == {}
    assert d.check_native_xdp("eth0", None, f"it carries {V4_EIGHT}; never touched").status == d.OK
    assert d.check_native_xdp("eth1", None, "host namespace").status == d.WARN
    assert d.check_native_xdp("eth1", "Operation not supported", None).status == d.WARN
    busy = d.check_native_xdp("eth1", "an XDP program is already attached; not replacing it", None)
    assert busy.status == d.WARN and "xdpguard detach eth1" in busy.fix and "generic" not in busy.fix
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


def test_gather_without_iface_runs():
    rep = d.gather(None, compile_bcc=False)
    names = [c.name for c in rep.checks]
    assert names[:5] == ["kernel", "btf", "bpffs", "kernel-headers", "bcc"]
    assert "nftables" in names


@pytest.mark.kernel
def test_doctor_in_a_namespace_with_a_backup_default_route():
    """The issue's setup on a real kernel: default route via eth0, a backup default (higher metric)
    via eth1. `doctor --iface eth1` runs the trial attach on eth1 and passes; eth0 is left alone."""
    ns = f"xgdoc-{os.getpid()}"
    sh = lambda *a: subprocess.run(["ip", "-n", ns, *a], check=True, capture_output=True)  # noqa: E731
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for i in ("0", "1"):
            sh("link", "add", f"eth{i}", "type", "veth", "peer", "name", f"peer{i}")
            sh("link", "set", f"peer{i}", "up")
            sh("link", "set", f"eth{i}", "up")
            sh("addr", "add", f"198.18.3{i}.2/24", "dev", f"eth{i}")
        sh("route", "add", "default", "via", "198.18.30.1", "dev", "eth0", "metric", "100")
        sh("route", "add", "default", "via", "198.18.31.1", "dev", "eth1", "metric", "1024")
        doctor = [str(Path(sys.executable).parent / "xdpguard"), "doctor", "--json", "--iface"]

        def native(iface):
            p = subprocess.run(["ip", "netns", "exec", ns, *doctor, iface], capture_output=True, text=True, timeout=300)
            try:
                return {c["name"]: c for c in json.loads(p.stdout)["checks"]}["native-xdp"]
            except (ValueError, KeyError):
                pytest.fail(f"doctor --iface {iface} exit {p.returncode}:\n{p.stdout}\n{p.stderr}")

        eth1 = native("eth1")
        assert eth1["status"] == d.OK and "attached in native mode and was removed" in eth1["detail"], eth1
        eth0 = native("eth0")
        assert "skipped (it carries the IPv4 default route via 198.18.30.1" in eth0["detail"], eth0
        links = subprocess.run(["ip", "-n", ns, "-d", "link", "show"], capture_output=True, text=True).stdout
        assert "prog/xdp" not in links  # the trial program was removed
    finally:
        subprocess.run(["ip", "netns", "del", ns])
