"""The crashes of issue 11 against a real attached interface: each is one `xdpguard: error:`
line, exit 2, and the state is unchanged (`xdpguard export` and the live lists, limits and
bans read the same before and after). Plus the two file-writing verbs (capture -w, export -o)
refusing symlinks and existing files, and the metrics size cache over a real ban map.

Topology: client ns xgc0 198.18.0.1/29 — prot ns xgp0 198.18.0.2/29 (protected).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_assert import one_line_error
from xdpguard.lab.netns import Lab

pytestmark = pytest.mark.kernel

PY = sys.executable
PROT4 = "198.18.0.2"
IFACE = "xgp0"


class Box:
    def __init__(self, lab: Lab, ns: str, client: str):
        self.lab, self.ns, self.client = lab, ns, client

    def xg(
        self, *args, env: dict | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        # bytes arguments go through as bytes: b'\xff' is invalid UTF-8 on the command line
        argv = ["ip", "netns", "exec", self.ns, "xdpguard", *args]
        p = subprocess.run(
            argv, capture_output=True, timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL
        )
        p = subprocess.CompletedProcess(
            p.args, p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
        )
        if check and p.returncode != 0:
            raise AssertionError(f"{args} exited {p.returncode}: {p.stderr.strip()}")
        return p

    def snapshot(self) -> dict:
        """Everything a bad command could have changed, as the CLI reads it back."""
        # export reads the live permanent lists, limits, SYN defence, filters, ports and
        # thresholds back; entries with a ttl, bans and the sampling rate are read on their own.
        # The four read verbs run in one process (SNAPSHOT): a CLI start costs 1-4 s on the
        # loaded CI machine, and the case list snapshots after every case.
        verbs = [["export"], ["block", "list", "--json"], ["ban", "list", "--json"], ["status", IFACE, "--json"]]
        p = subprocess.run(
            ["ip", "netns", "exec", self.ns, PY, "-c", SNAPSHOT, json.dumps(verbs)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout)
        out = {"export": got["export"]}
        for verb in ("block list", "ban list"):
            out[verb] = _without_clocks(json.loads(got[f"{verb} --json"]))
        st = json.loads(got[f"status {IFACE} --json"])[0]
        out["sample ratio etc."] = {k: v for k, v in st.items() if k not in ("counters", "totals")}
        return out


# The read verbs of a snapshot, in one process: {verb line: its stdout}; any exit but 0 fails.
SNAPSHOT = r"""
import json, sys
from click.testing import CliRunner
from xdpguard.cli.main import cli
out = {}
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    if r.exit_code != 0:
        sys.exit(f"xdpguard {' '.join(args)}: exit {r.exit_code}: {r.output}")
    out[" ".join(args)] = r.stdout
json.dump(out, sys.stdout)
"""


def _without_clocks(d):
    """Remaining lifetimes tick down between two reads: drop them."""
    if isinstance(d, dict):
        return {k: _without_clocks(v) for k, v in d.items() if k not in ("expires_in_s",)}
    if isinstance(d, list):
        return [_without_clocks(v) for v in d]
    return d


@pytest.fixture
def box(lab: Lab) -> Box:
    client, prot = lab.netns("cli"), lab.netns("bad")
    lab.veth(client, "xgc0", prot, IFACE)
    lab.addr(client, "xgc0", "198.18.0.1/29")
    lab.addr(prot, IFACE, f"{PROT4}/29")
    b = Box(lab, prot, client)
    b.xg("attach", IFACE, "--protect", PROT4)
    lab.defer("detach xdpguard", b.xg, "detach", IFACE, check=False)
    # some state to keep: a block entry, a limit, a ban
    b.xg("block", "add", "203.0.113.0/24")
    b.xg("limit", "set", "--src-pps", "10k")
    b.xg("ban", "add", "198.18.0.5", "--ttl", "600")
    return b


def test_listed_crashes_are_one_line_and_change_nothing(box: Box, tmp_path: Path):
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"198.18.0.9\n\0\n")
    (tmp_path / "dir").mkdir()
    cases = [
        ((["limit", "set", "--src-pps", "inf"]), {}, "--src-pps"),
        ((["limit", "set", "--src-pps", "nan"]), {}, "--src-pps"),
        ((["limit", "set", "--src-pps", "1e999"]), {}, "--src-pps"),
        ((["ban", "add", "198.18.0.9", "--ttl", "1e999"]), {}, "--ttl"),
        ((["syn", "set", "--threshold", "inf"]), {}, "--threshold"),
        ((["block", "add", b"\xff"]), {}, "UTF-8"),
        ((["block", "add", "198.18.0.9", "--ttl", "nan"]), {}, "--ttl"),
        ((["block", "load", str(nul)]), {}, "nul.txt:2"),
        ((["block", "add", "198.18.0.9"]), {"XDPGUARD_LOCK_TIMEOUT": "abc"}, "XDPGUARD_LOCK_TIMEOUT"),
        ((["run", "--metrics", "unresolvable.invalid:1", "--once"]), {}, "cannot resolve"),
        ((["capture", IFACE, "-w", str(tmp_path / "dir"), "--timeout", "0.2"]), {}, "directory"),
        ((["capture", IFACE, "-w", "/proc/nonexist/x", "--timeout", "0.2"]), {}, "cannot write"),
        ((["events", "threshold", "set", "--hook", "'x"]), {}, "--hook"),
        ((["events", "threshold", "set", "--hook", "/nonexistent/hook"]), {}, "--hook"),
        ((["run", "--config", str(tmp_path / "dir"), "--once"]), {}, "directory"),
        # found by fuzzing: was accepted and left a store no later verb could load
        ((["events", "threshold", "set", "--protected", "198.18.0.99", "--pps", "1k"]), {}, "not a protected"),
        (
            (["attach", IFACE, "--protect", PROT4]),
            {"XDPGUARD_ATTACH_FORCE": "1", "XDPGUARD_ATTACH_MODE": "bogus"},
            "already",
        ),
    ]
    before = box.snapshot()
    for argv, env, needle in cases:
        p = box.xg(*argv, env=env, check=False, timeout=30)
        one_line_error(p, needle)
        assert box.snapshot() == before, argv
    assert not list(tmp_path.glob("dir/*"))
    box.xg("block", "add", "198.18.0.9")  # the desired-state store still loads: verbs still work


def test_capture_and_export_do_not_follow_symlinks_or_truncate(box: Box, tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "link"
    link.symlink_to(victim)
    before = box.snapshot()
    for args in (
        ("capture", IFACE, "-w", str(link), "--timeout", "0.2"),
        ("capture", IFACE, "-w", str(victim), "--timeout", "0.2"),
        ("export", "-o", str(link)),
        ("export", "-o", str(victim)),
    ):
        p = box.xg(*args, check=False)
        one_line_error(p, "cannot write")
        assert victim.read_text() == "precious\n" and link.is_symlink()
    assert box.snapshot() == before
    # asked: --overwrite replaces the file (export atomically), never through the symlink
    box.xg("capture", IFACE, "-w", str(victim), "--timeout", "0.2", "--overwrite")
    assert victim.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"  # a pcapng section header
    box.xg("export", "-o", str(link), "--overwrite")
    assert not link.is_symlink() and "203.0.113.0/24" in link.read_text()
    assert victim.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    # a new file is created (mode 0600), and a capture that fails later leaves none behind
    box.xg("capture", IFACE, "-w", str(tmp_path / "new.pcapng"), "--timeout", "0.2")
    assert (tmp_path / "new.pcapng").stat().st_mode & 0o777 == 0o600


SCRAPE = """
import ctypes, ipaddress, sys, time
from xdpguard.core.kernel import abi; from xdpguard.core.observe import metrics; from xdpguard.core import policy, protection, state
g = protection.Guard.open(state.resolve_iface(sys.argv[1]))
m = g.maps[abi.MapName.BANS]
now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
base = int(ipaddress.ip_address("198.19.0.0"))
for i in range(int(sys.argv[2])):
    m.set(policy.src_key(ipaddress.ip_address(base + i)), abi.Ban(now + 3600 * 10**9, 0, abi.Reason.BANNED, 0))
n = len(m) + len(g.maps[abi.MapName.OPBANS])  # the metric counts both kinds of ban
assert m.count() + g.maps[abi.MapName.OPBANS].count() == n
col = metrics.XdpguardCollector(sizes_max_age_s=3600)
def bans():
    for fam in col.collect():
        for s in fam.samples:
            if s.name == "xdpguard_list_entries" and s.labels["list"] == "bans":
                return s.value
first = bans()
walks = col.size_walks
for _ in range(5):
    assert bans() == first
print(n, first, walks, col.size_walks)
"""


def test_metrics_scrapes_count_lists_once_per_max_age(box: Box):
    """With a big ban map, five more scrapes within the cache's age count nothing again; the
    batch count agrees with a walk."""
    p = box.lab.run(box.ns, PY, "-c", SCRAPE, IFACE, "50000", timeout=120)
    n, first, walks, walks_after = p.stdout.split()
    assert int(n) >= 50000 and float(first) == int(n)
    assert int(walks) == int(walks_after) == 3  # block, allow, bans: counted once


FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
end = time.monotonic() + float(sys.argv[3])
n = 0
while time.monotonic() < end and n < 20000:  # bounded in packets and time
    s.sendto(b"x" * 64, (sys.argv[2], 9))
    n += 1
    time.sleep(0.002)
"""


def test_a_hook_that_fails_never_stops_detection(box: Box, tmp_path: Path):
    """The hook is valid when set, then its program disappears: `run` says so once and keeps
    detecting (the attack opens and closes) instead of losing its detection thread."""
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o700)
    box.xg("events", "threshold", "set", "--drop-pps", "50", "--hold", "1", "--hook", str(hook))
    hook.unlink()
    box.xg("block", "add", "198.18.0.1")
    run = box.lab.popen(
        box.ns,
        "xdpguard",
        "run",
        "--duration",
        "8",
        "--detect-interval",
        "0.5",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    box.lab.run(box.client, PY, "-c", FLOOD, "198.18.0.1", PROT4, "2.5", timeout=20)
    out, err = run.communicate(timeout=30)
    assert run.returncode == 0, (out, err)
    assert "attack start" in out and "attack end" in out, out
    assert "hook" in out and "not run" in out, out


def test_bad_tcp_grace_is_refused_before_anything_is_attached(lab: Lab):
    """$XDPGUARD_TCP_GRACE (the attach grace period, seconds): a bad value is one error line, and
    the interface is left as it was (no XDP program, no tc filter, not protected)."""
    client, prot = lab.netns("cli"), lab.netns("grace")
    lab.veth(client, "xgc0", prot, IFACE)
    b = Box(lab, prot, client)
    for bad in ("abc", "-1", "3601", "nan"):
        p = b.xg("attach", IFACE, "--protect", PROT4, env={"XDPGUARD_TCP_GRACE": bad}, check=False)
        one_line_error(p, "XDPGUARD_TCP_GRACE")
        link = json.loads(lab.run(prot, "ip", "-j", "-d", "link", "show", IFACE).stdout)[0]
        assert "xdp" not in link, link
        assert lab.run(prot, "tc", "filter", "show", "dev", IFACE, "egress", check=False).stdout.strip() == ""
        assert b.xg("status", IFACE, "--json", check=False).returncode != 0  # not protected
    # (a good value: the tcpstate, syncookie and mitigation labs attach with XDPGUARD_TCP_GRACE=2)
