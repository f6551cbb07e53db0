"""`xdpguard lab up|down|status|probe` with the real CLI: the persistent lab works, survives the
command that built it, recovers from leftovers, and `down` leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_assert import CliLab
from xdpguard.lab import topology

pytestmark = pytest.mark.kernel

ROLES = topology.ROLES


class LabEnv(CliLab):
    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path, "t")


@pytest.fixture
def labenv(tmp_path: Path) -> Iterator[LabEnv]:
    le = LabEnv(tmp_path)
    try:
        yield le
    finally:
        le.xg("lab", "down", check=False)
        left = [le.ns(r) for r in ROLES if os.path.exists(f"/run/netns/{le.ns(r)}")]
        assert not left, f"lab down left namespaces behind: {left}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def _ino(ns: str) -> str:
    return f"net-{os.stat(f'/run/netns/{ns}').st_ino}"


def _assert_gone(le: LabEnv, pids: list[int], prot_key: str) -> None:
    assert not [r for r in ROLES if os.path.exists(f"/run/netns/{le.ns(r)}")]
    assert not (le.run_dir / "lab.json").exists() and not (le.run_dir / f"lab-{le.name}.json").exists()
    assert not [p for p in pids if _alive(p)], "servers still running"
    bpffs = Path(os.environ.get("XDPGUARD_BPFFS", "/run/xdpguard/bpffs"))
    state = Path(os.environ.get("XDPGUARD_STATE_DIR", "/var/lib/xdpguard"))
    assert not (bpffs / prot_key).exists(), "pins left behind"
    assert not (state / prot_key).exists(), "state left behind"
    assert not list((le.run_dir / "locks").glob(f"{prot_key}.*")) if (le.run_dir / "locks").exists() else True
    assert not list(le.run_dir.glob(f"{le.name}-logs"))


def test_up_status_probe_down_leaves_nothing(labenv: LabEnv):
    up = labenv.xg_json("lab", "up")
    assert up["protected"] and up["xdp_mode"] in ("native", "skb")
    assert sorted(up["namespaces"].values()) == sorted(labenv.ns(r) for r in ROLES)
    pids = [s["pid"] for s in up["servers"]]
    assert len(pids) == 2 and all(_alive(p) for p in pids)  # they outlived `lab up`
    prot_key = _ino(labenv.ns("prot"))

    st = labenv.xg_json("lab", "status")
    assert st["up"] and st["xdp"]["prog_id"] > 0
    assert "xdpguard" in labenv.in_ns("prot", "nft", "list", "tables").stdout
    # the client knows the protective IP only: the hidden backend is unreachable from it
    assert labenv.in_ns("client", "ip", "route", "get", topology.BACKEND4).returncode != 0
    assert labenv.in_ns("client", "ip", "-6", "route", "show", "default").stdout.strip() == ""

    for proto in ("http", "udp", "tcp"):
        r = labenv.xg_json("lab", "probe", "--proto", proto, "--count", "20")
        assert r["ok"] == 20, r
        assert r["p50_ms"] is not None and r["p99_ms"] >= r["p50_ms"]
    r = labenv.xg_json("lab", "probe", "--proto", "http", "--count", "5", "--ipv6")
    assert r["ok"] == 5, r

    text = labenv.xg("lab", "status").stdout
    assert "up" in text and "xdpguard on xgp0" in text

    down = labenv.xg_json("lab", "down")
    assert sorted(down["removed_namespaces"]) == sorted(labenv.ns(r) for r in ROLES)
    _assert_gone(labenv, pids, prot_key)
    assert not labenv.xg_json("lab", "status")["up"]
    assert "was not up" in labenv.xg("lab", "down").stdout  # idempotent


def test_up_twice_recovers_and_down_after_crash(labenv: LabEnv):
    first = labenv.xg_json("lab", "up", "--no-protect")
    assert not first["protected"]
    old_pids = [s["pid"] for s in first["servers"]]
    second = labenv.xg_json("lab", "up")
    assert any("removed a previous lab" in n for n in second["notes"])
    assert not [p for p in old_pids if _alive(p)]
    assert labenv.xg_json("lab", "probe", "--count", "5")["ok"] == 5
    pids = [s["pid"] for s in second["servers"]]
    prot_key = _ino(labenv.ns("prot"))

    # a crash that lost the state file: `down` still finds everything by name
    for f in labenv.run_dir.glob("lab*.json"):
        f.unlink()
    down = labenv.xg_json("lab", "down")
    assert len(down["removed_namespaces"]) == len(ROLES)
    _assert_gone(labenv, pids, prot_key)


def test_lab_commands_without_lab_fail_in_one_line(labenv: LabEnv):
    for args in (["lab", "probe", "--count", "1"], ["lab", "attack", "udp-flood", "--duration", "1"]):
        p = labenv.xg(*args, check=False)
        assert p.returncode == 2, (p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("xdpguard: error:") and "lab up" in lines[0]


def test_doctor_on_the_lab_interface(labenv: LabEnv):
    labenv.xg("lab", "up", "--no-protect")
    # inside a lab namespace the trial native attach runs (veth has native XDP)
    p = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            labenv.ns("attacker"),
            *topology.xdpguard_argv(),
            "doctor",
            "--iface",
            "eth0",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=labenv.env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    rep = json.loads(p.stdout)
    checks = {c["name"]: c for c in rep["checks"]}
    assert checks["driver"]["status"] == "ok" and "veth" in checks["driver"]["detail"]
    assert checks["native-xdp"]["status"] == "ok", checks["native-xdp"]
    assert checks["lro"]["status"] == "ok"
    assert p.returncode == (1 if not rep["ok"] else 0)
    # nothing stayed attached
    assert "xdp" not in labenv.in_ns("attacker", "ip", "link", "show", "eth0").stdout
