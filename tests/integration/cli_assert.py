"""Assertions on the real CLI's output, and the CLI-driven lab rig, shared by the integration tests;
with the TCP floods of the SYN-cookie and TCP-state labs: bounded hping3 runs from spoofed
sources, counted at the backend by their TCP window."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from xdpguard.lab import probe, topology


def run_cli(env: dict[str, str], *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    """The real CLI, outside the lab's namespaces (`lab up`, `lab down`, ...), with `env`; with
    `check`, a non-zero exit fails the test with its stderr."""
    p = subprocess.run(
        [*topology.xdpguard_argv(), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert not check or p.returncode == 0, f"xdpguard {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}"
    return p


class CliLab:
    """The namespace lab driven through the real CLI: its own name (`prefix` + pid), run dir and,
    when given, TCP-state grace (XDPGUARD_TCP_GRACE) in the environment of every command."""

    def __init__(self, tmp_path: Path, prefix: str, grace_s: float | None = None):
        self.name = f"{prefix}{os.getpid() % 10_000_000}"
        self.tmp = tmp_path
        self.run_dir = tmp_path / "run"
        self.env = {**os.environ, "XDPGUARD_LAB_NAME": self.name, "XDPGUARD_RUN_DIR": str(self.run_dir)}
        if grace_s is not None:
            self.env["XDPGUARD_TCP_GRACE"] = str(grace_s)

    def xg(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        return run_cli(self.env, *args, check=check, timeout=timeout)

    def xg_json(self, *args: str):
        return json.loads(self.xg(*args, "--json").stdout)

    def pxg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The CLI inside the protector's namespace."""
        p = self.in_ns("prot", *topology.xdpguard_argv(), *args, timeout=180)
        assert not check or p.returncode == 0, f"xdpguard {' '.join(args)}: {p.stderr.strip()}"
        return p

    def drops(self) -> dict[str, int]:
        """The protected interface's drop counters by reason (`status --json`)."""
        st = json.loads(self.pxg("status", topology.PROT_IFACE, "--json").stdout)
        return {c["reason"]: c["packets"] for c in st[0]["counters"] if c["kind"] == "drop"}

    def http_probe(self, duration: float, timeout: float) -> dict:
        """The lab's client opening a new HTTP connection per request to the protective IP for
        `duration` seconds (xdpguard.lab.probe --json)."""
        argv = probe.command(topology.PROT4, "http", count=100_000, timeout=timeout, duration=duration)
        p = self.in_ns("client", *argv, timeout=duration + 30)
        return json.loads(p.stdout)

    def ns(self, role: str) -> str:
        return f"xg-{self.name}-{role}"

    def in_ns(self, role: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )


def needs_hping3() -> None:
    """The hping3 labs: without it, a failure under CI (setup.sh installs it), else a skip."""
    if shutil.which("hping3") is None:
        pytest.fail("hping3 is missing; run scripts/setup.sh") if os.environ.get("CI") else pytest.skip("no hping3")


@contextlib.contextmanager
def lab_up(lb: CliLab, timeout: float = 180) -> Iterator[CliLab]:
    """`lab up` around the block, `lab down` after it however it ends; then none of the lab's
    namespaces may be left."""
    try:
        lb.xg("lab", "up", timeout=timeout)
        yield lb
    finally:
        lb.xg("lab", "down", check=False, timeout=timeout)
    assert not [r for r in topology.ROLES if topology.ns_exists(lb.ns(r))]


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    """Bad input: exit 2 and exactly one stderr line 'xdpguard: error: …' containing each needle."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xdpguard: error:"), p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


# The TCP window of the lab's hping3 floods: no real stack here uses it, so tcpdump at the
# backend counts the flood's packets that got through and nothing else.
FLOOD_WINDOW = 777


def hping_sent(stderr: str) -> int:
    """Packets hping3 says it sent: "N packets transmitted, …" (printed on a timeout too)."""
    m = re.search(r"(\d+) packets transmitted", stderr)
    return int(m.group(1)) if m else 0


def hping_flood(
    lab: CliLab, flags: Iterable[str], sources: Iterable[str], count: int, interval: str, timeout_s: float
) -> list[str]:
    """One hping3 per spoofed source (-a) at the protective IP's web port, with the TCP window
    FLOOD_WINDOW, bounded by `count` packets and `timeout_s` seconds each; their stderr."""
    procs = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.ns("attacker"),
                "timeout",
                str(timeout_s),
                "hping3",
                "-q",
                *flags,
                "-w",
                str(FLOOD_WINDOW),
                "-a",
                src,
                "-p",
                str(topology.HTTP_PORT),
                "-c",
                str(count),
                "-i",
                interval,
                topology.PROT4,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for src in sources
    ]
    return [p.communicate(timeout=timeout_s + 10)[1] for p in procs]


@dataclass
class FloodRound:
    probe: dict  # the client's probe result (http_probe) during the flood
    moved: dict[str, int]  # drop counters that grew, by reason ({} without xdpguard)
    at_backend: int  # flood packets (FLOOD_WINDOW) seen at the backend
    stderr: list[str]  # the flood's (hping_flood)

    @property
    def sent(self) -> int:
        return sum(hping_sent(e) for e in self.stderr)


def under_flood(
    lab: CliLab,
    flood: Callable[[], list[str]],
    probe: Callable[[], dict],
    flood_s: float,
    *,
    with_xdpguard: bool = True,
    during: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> FloodRound:
    """One flood (`flood`, at most `flood_s` seconds) with the client probing through it: tcpdump
    at the backend counts the flood's packets, the drop counters are read before and after (with
    xdpguard attached); `during` wraps the probe (a helper that runs beside it)."""
    dump = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.ns("backend"),
            "timeout",
            str(flood_s + 3),
            "tcpdump",
            "-i",
            topology.HOST_IFACE,
            "-nn",
            "-q",
            "-l",
            f"tcp[14:2] = {FLOOD_WINDOW}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    before = lab.drops() if with_xdpguard else {}
    errs: list[str] = []
    t = threading.Thread(target=lambda: errs.extend(flood()))
    t.start()
    time.sleep(0.5)
    with during():
        res = probe()
    t.join()
    after = lab.drops() if with_xdpguard else {}
    out, _ = dump.communicate(timeout=flood_s + 10)
    moved = {r: n - before.get(r, 0) for r, n in after.items() if n > before.get(r, 0)}
    return FloodRound(res, moved, len([ln for ln in out.splitlines() if ln.strip()]), errs)
