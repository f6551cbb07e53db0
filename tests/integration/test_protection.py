"""The real CLI in private namespaces: attach, the toggle pattern, lists, detach, bad input.

Topology (one veth pair):
    client ns  xgc0  198.18.0.1/29, .4/29 (a second source)   2001:db8:0:1::1/64, ::4/64
    prot ns    xgp0  198.18.0.2/29 (protected), .3/29 (not)   2001:db8:0:1::2/64 (protected), ::3/64
A bounded echo server (TCP+UDP port 7) runs in the protector namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from xdpguard.lab.netns import Lab
from cli_assert import one_line_error as _one_line_error

pytestmark = pytest.mark.kernel

PY = sys.executable
PROT4, OPEN4, CLIENT4, OTHER4 = "198.18.0.2", "198.18.0.3", "198.18.0.1", "198.18.0.4"
PROT6, OPEN6, CLIENT6, OTHER6 = "2001:db8:0:1::2", "2001:db8:0:1::3", "2001:db8:0:1::1", "2001:db8:0:1::4"
FAMILY = {
    4: dict(prot=PROT4, open=OPEN4, client=CLIENT4, other=OTHER4, client_net="198.18.0.0/30"),
    6: dict(prot=PROT6, open=OPEN6, client=CLIENT6, other=OTHER6, client_net="2001:db8:0:1::/126"),
}


@dataclass
class Topo:
    lab: Lab
    client: str
    prot: str
    iface: str = "xgp0"

    def xg(
        self, *args: str, ns: str | None = None, check: bool = True, env: dict | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        argv = ["ip", "netns", "exec", ns or self.prot, "xdpguard", *args]
        p = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"{args} exited {p.returncode}: {p.stderr.strip()}")
        return p

    def probe(self, proto: str, dst: str, src: str | None = None, timeout: float = 0.7) -> bool:
        """One echo request from `src` (default: the client's main address of dst's family)."""
        src = src or (CLIENT6 if ":" in dst else CLIENT4)
        argv = [
            PY,
            "-m",
            "xdpguard.lab.echo",
            "probe",
            "--proto",
            proto,
            "--dst",
            dst,
            "--timeout",
            str(timeout),
            "--src",
            src,
        ]
        return self.lab.run(self.client, *argv, check=False, timeout=10).returncode == 0

    def reaches(self, dst: str, src: str | None = None) -> bool:
        """True when both UDP and TCP echo come back; False when neither does."""
        udp, tcp = self.probe("udp", dst, src), self.probe("tcp", dst, src)
        assert udp == tcp, f"udp={udp} tcp={tcp} to {dst} from {src}: inconsistent filtering"
        return udp

    def status(self) -> dict:
        return json.loads(self.xg("status", self.iface, "--json").stdout)[0]

    def counter(self, kind: str, reason: str) -> int:
        for c in self.status()["counters"]:
            if c["kind"] == kind and c["reason"] == reason:
                return c["packets"]
        return 0

    def attach(self, *extra: str) -> subprocess.CompletedProcess:
        p = self.xg("attach", self.iface, "--protect", f"{PROT4},{PROT6}", *extra)
        self.lab.defer("detach xdpguard", self.xg, "detach", self.iface, check=False)
        return p


def build_topo(lab: Lab, prot_prefix: str = "prot") -> Topo:
    client = lab.netns("cli")
    prot = lab.netns(prot_prefix)
    lab.veth(client, "xgc0", prot, "xgp0")
    for cidr in ("198.18.0.1/29", "198.18.0.4/29", "2001:db8:0:1::1/64", "2001:db8:0:1::4/64"):
        lab.addr(client, "xgc0", cidr)
    for cidr in ("198.18.0.2/29", "198.18.0.3/29", "2001:db8:0:1::2/64", "2001:db8:0:1::3/64"):
        lab.addr(prot, "xgp0", cidr)
    srv = lab.popen(
        prot,
        PY,
        "-m",
        "xdpguard.lab.echo",
        "serve",
        "--port",
        "7",
        "--duration",
        "120",
        stdout=subprocess.PIPE,
        text=True,
    )
    assert "serving" in srv.stdout.readline()
    return Topo(lab, client, prot)


@pytest.fixture
def topo(lab: Lab) -> Topo:
    return build_topo(lab)


@pytest.mark.parametrize("fam", [4, 6])
def test_toggle_block_unblock(topo: Topo, fam: int):
    a = FAMILY[fam]
    assert topo.reaches(a["prot"])  # arrives without xdpguard
    out = topo.attach().stdout
    assert "mode native" in out
    assert topo.reaches(a["prot"])  # arrives with xdpguard, nothing blocked

    topo.xg("block", "add", a["client"])
    assert not topo.reaches(a["prot"])  # blocked: dropped
    assert topo.reaches(a["prot"], src=a["other"])  # other sources keep passing
    assert topo.reaches(a["open"])  # a non-protected address of the protector is untouched
    assert topo.counter("drop", "blocklist") >= 2

    entries = json.loads(topo.xg("block", "list", "--json").stdout)["entries"]
    assert len(entries) == 1 and entries[0]["hits"] >= 2 and entries[0]["expires_in_s"] is None

    topo.xg("block", "del", a["client"])
    assert topo.reaches(a["prot"])  # unblocked: arrives again


@pytest.mark.serial  # a 2 s TTL: its probes must come within it
def test_prefix_block_allow_over_block_and_ttl(topo: Topo):
    topo.attach()
    topo.xg("block", "add", FAMILY[4]["client_net"], FAMILY[6]["client_net"])
    assert not topo.reaches(PROT4) and not topo.reaches(PROT6)
    # .4 and ::4 are outside the /30 and /126
    assert topo.reaches(PROT4, src=OTHER4) and topo.reaches(PROT6, src=OTHER6)

    topo.xg("allow", "add", CLIENT4, CLIENT6)
    assert topo.reaches(PROT4) and topo.reaches(PROT6)  # allowlist wins over the blocklist
    assert topo.counter("pass", "allowlist") >= 4
    topo.xg("allow", "del", CLIENT4, CLIENT6)
    assert not topo.reaches(PROT4)

    # A TTL entry blocks, then expires by itself (the data path checks the expiry).
    topo.xg("block", "del", FAMILY[4]["client_net"])
    topo.xg("block", "add", CLIENT4, "--ttl", "2")
    assert not topo.reaches(PROT4)
    time.sleep(2.2)
    assert topo.reaches(PROT4)
    assert all(e["prefix"] != f"{CLIENT4}/32" for e in json.loads(topo.xg("block", "list", "--json").stdout)["entries"])


def test_detach_leaves_nothing(topo: Topo):
    res = json.loads(topo.xg("attach", topo.iface, "--protect", PROT4, "--json").stdout)
    pin_dir = Path(res["pin_dir"])
    assert sorted(p.name for p in pin_dir.iterdir())  # maps are pinned
    state_dir = Path(os.environ.get("XDPGUARD_STATE_DIR", "/var/lib/xdpguard"))
    state_files = list(state_dir.glob(f"*/{topo.iface}.json"))
    assert any(json.loads(f.read_text())["prog_id"] == res["prog_id"] for f in state_files)
    topo.xg("block", "add", CLIENT4)

    topo.xg("detach", topo.iface)
    link = topo.lab.run(topo.prot, "ip", "-d", "link", "show", topo.iface).stdout
    assert "xdp" not in link.split("link/ether")[0] and "prog/xdp" not in link
    assert not pin_dir.exists()
    assert not any(
        json.loads(f.read_text())["prog_id"] == res["prog_id"] for f in state_dir.glob(f"*/{topo.iface}.json")
    )
    assert topo.reaches(PROT4)  # the block is gone with the program


def test_outlives_killed_controller(topo: Topo, tmp_path: Path):
    topo.attach()
    topo.xg("block", "add", CLIENT4)
    # A big load killed mid-way with SIGKILL: the filter keeps dropping, the lock is released,
    # the next command works.
    big = tmp_path / "big.txt"
    big.write_text("".join(f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::/64\n" for i in range(400_000)))
    proc = subprocess.Popen(
        ["ip", "netns", "exec", topo.prot, "xdpguard", "block", "load", str(big)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.8)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert not topo.reaches(PROT4)
    topo.xg("block", "del", CLIENT4)
    assert topo.reaches(PROT4)
    assert topo.status()["prog_id"] > 0


def test_two_namespaces_same_ifname_do_not_collide(lab: Lab):
    t1 = build_topo(lab, "pa")
    t2 = build_topo(lab, "pb")
    assert t1.iface == t2.iface
    t1.attach()
    t2.attach()
    t1.xg("block", "add", CLIENT4)
    assert not t1.reaches(PROT4)
    assert t2.reaches(PROT4)
    assert t1.status()["list_sizes"]["block"] == 1 and t2.status()["list_sizes"]["block"] == 0
    t1.xg("detach", t1.iface)
    assert t2.status()["prog_id"] > 0  # the other namespace's protection is untouched
    assert t2.reaches(PROT4)


def test_bad_input_is_one_line_exit_2_and_changes_nothing(topo: Topo, tmp_path: Path):
    _one_line_error(topo.xg("detach", topo.iface, check=False), "not protected")
    _one_line_error(topo.xg("attach", "nosuch0", "--protect", PROT4, check=False), "unknown interface 'nosuch0'")
    _one_line_error(topo.xg("attach", topo.iface, "--protect", "198.18.0.300", check=False), "198.18.0.300")
    topo.attach()
    before = topo.status()
    _one_line_error(topo.xg("attach", topo.iface, "--protect", PROT4, check=False), "already protected")
    _one_line_error(topo.xg("block", "add", "198.18.0.0/33", check=False), "198.18.0.0/33")
    _one_line_error(topo.xg("block", "add", "198.18.0.0/64", check=False), "exceeds 32")  # v4/v6 mix-up
    _one_line_error(topo.xg("block", "add", "2001:db8::/129", check=False), "exceeds 128")
    _one_line_error(topo.xg("block", "add", "198.18.9.9", "--ttl", "-1", check=False), "--ttl")
    bad = tmp_path / "bad.txt"
    bad.write_text("# header\n198.18.5.0/24\n2001:db8:5::/48\n\n198.18.6.0/24 # ok\nnot-a-cidr\n198.18.7.0/24\n")
    _one_line_error(topo.xg("block", "load", str(bad), check=False), ":6:", "not-a-cidr")
    after = topo.status()
    assert after["prog_id"] == before["prog_id"] and after["list_sizes"] == before["list_sizes"] == {
        "block": 0,
        "allow": 0,
    }
    # not root
    p = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            topo.prot,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "xdpguard",
            "block",
            "add",
            "198.18.1.1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    _one_line_error(p, "root")
    # host bits are normalised and said so
    out = topo.xg("block", "add", "198.18.0.5/30").stdout
    assert "198.18.0.5/30 -> 198.18.0.4/30" in out


def test_block_load_all_or_nothing_and_mixed_families(topo: Topo, tmp_path: Path):
    topo.attach()
    f = tmp_path / "list.txt"
    f.write_text("# mixed\n198.18.0.0/30\n2001:db8:0:1::/126   # the client\n198.18.200.0/24\n198.18.200.7/24\n")
    out = topo.xg("block", "load", str(f)).stdout
    assert "added 3" in out and "normalised" in out
    assert not topo.reaches(PROT4) and not topo.reaches(PROT6)
    # Loading again refreshes and keeps hit counters.
    hits = {e["prefix"]: e["hits"] for e in json.loads(topo.xg("block", "list", "--json").stdout)["entries"]}
    assert hits["198.18.0.0/30"] >= 2
    out = topo.xg("block", "load", str(f)).stdout
    assert "added 0, refreshed 3" in out
    hits2 = {e["prefix"]: e["hits"] for e in json.loads(topo.xg("block", "list", "--json").stdout)["entries"]}
    assert hits2["198.18.0.0/30"] >= hits["198.18.0.0/30"]


def test_foreign_program_is_not_replaced_without_force(topo: Topo):
    loader = (
        "from bcc import BPF\n"
        "from xdpguard.core.kernel import libbpf\n"
        "import socket\n"
        "b = BPF(text='int foreign(struct xdp_md *ctx) { return XDP_PASS; }')\n"
        "fn = b.load_func('foreign', BPF.XDP)\n"
        f"libbpf.xdp_attach(socket.if_nametoindex('{topo.iface}'), fn.fd, libbpf.XDP_FLAGS_SKB_MODE)\n"
    )
    topo.lab.run(topo.prot, PY, "-c", loader, timeout=60)
    topo.lab.defer(
        "remove foreign xdp", topo.lab.run, topo.prot, "ip", "link", "set", topo.iface, "xdpgeneric", "off", check=False
    )
    _one_line_error(topo.xg("attach", topo.iface, "--protect", PROT4, check=False), "foreign", "--force")
    _one_line_error(topo.xg("detach", topo.iface, check=False), "not ours")
    assert "prog/xdp" in topo.lab.run(topo.prot, "ip", "-d", "link", "show", topo.iface).stdout
    out = topo.attach("--force").stdout
    assert "replaced foreign XDP program" in out
    topo.xg("block", "add", CLIENT4)
    assert not topo.reaches(PROT4)
    topo.xg("detach", topo.iface)
    assert "prog/xdp" not in topo.lab.run(topo.prot, "ip", "-d", "link", "show", topo.iface).stdout


def test_concurrent_mutations_serialize(topo: Topo):
    topo.attach()
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", topo.prot, "xdpguard", "block", "add", f"198.18.100.{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    assert topo.status()["list_sizes"]["block"] == 6
    # A holder that never lets go: the waiter gives up with a one-line error, nothing changed.
    lockdir = Path(os.environ.get("XDPGUARD_RUN_DIR", "/run/xdpguard")) / "locks"
    lockfile = next(p for p in lockdir.glob(f"*.{topo.iface}.lock") if p.name.split(".")[0] == _netns_key(topo))
    holder = subprocess.Popen(
        [
            PY,
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1],'a'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)",
            str(lockfile),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        p = topo.xg("block", "add", "198.18.101.1", check=False, env={"XDPGUARD_LOCK_TIMEOUT": "0.5"})
        _one_line_error(p, "lock")
    finally:
        holder.kill()
        holder.wait()
    assert topo.status()["list_sizes"]["block"] == 6


def _netns_key(topo: Topo) -> str:
    out = topo.lab.run(topo.prot, PY, "-c", "from xdpguard.core.state import netns_key; print(netns_key())")
    return out.stdout.strip()


def test_port_policy(topo: Topo):
    topo.attach()
    assert topo.reaches(PROT4)
    out = topo.xg("port", "open", "tcp", "7", "--protected", PROT4).stdout
    assert "tcp 7" in out
    assert topo.probe("tcp", PROT4) and not topo.probe("udp", PROT4)  # udp/7 not open
    assert topo.counter("drop", "port") >= 1
    assert topo.reaches(PROT6)  # no policy on the v6 address yet
    assert topo.reaches(OPEN4)  # the operator's own address is untouched
    topo.xg("port", "open", "udp", "1-100")
    assert topo.probe("udp", PROT4) and topo.probe("udp", PROT6) and not topo.probe("tcp", PROT6)
    ports = json.loads(topo.xg("port", "list", "--json").stdout)["ports"]
    assert {(p["protected"], p["proto"], p["lo"], p["hi"]) for p in ports} == {
        (PROT4, "tcp", 7, 7),
        (PROT4, "udp", 1, 100),
        (PROT6, "udp", 1, 100),
    }
    _one_line_error(topo.xg("port", "open", "tcp", "0", check=False), "out of range 1-65535")
    _one_line_error(topo.xg("port", "open", "tcp", "90-80", check=False), "reversed")
    _one_line_error(topo.xg("port", "open", "tcp", "80", "--protected", OPEN4, check=False), "not a protected address")
    topo.xg("port", "close", "udp", "1-100")
    topo.xg("port", "close", "tcp", "7")
    assert topo.reaches(PROT4) and topo.reaches(PROT6)  # no open port left: policy off again


@pytest.mark.serial  # 1 s TTLs: the CLI calls must come within them
def test_run_sweeps_expired_entries_and_bans(topo: Topo):
    topo.attach()
    topo.xg("block", "add", "198.18.77.0/24", "198.18.78.1", "--ttl", "1")
    topo.xg("block", "add", "198.18.79.1")  # no expiry: stays
    topo.xg("ban", "add", "198.18.80.1", "--ttl", "1")
    time.sleep(1.2)
    out = topo.xg("run", "--once", "--no-detect").stdout
    assert "removed 2 expired list entries, 1 expired bans" in out
    assert topo.status()["list_sizes"]["block"] == 1
    assert json.loads(topo.xg("ban", "list", "--json").stdout)["bans"] == []
