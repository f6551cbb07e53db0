"""Desired state with the real CLI and daemon in namespaces: export/apply/diff, rollback, bad
input, reboot restore, drift repair, foreign programs, gapless upgrade under a flood.

Uses the forwarding topology of test_forwarding (client, protector, two echo backends).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from cli_assert import one_line_error
from xdpguard.core import reconcile, state
from test_forwarding import BPORT, CLIENT4, OTHER4, PROT4, PROT6, Topo, topo  # noqa: F401  (topo: fixture)

pytestmark = pytest.mark.kernel

PY = sys.executable
CONFIG = textwrap.dedent(f"""\
    [daemon]
    health_interval = 1.0

    [[interface]]
    name = "xgp0"
    protect = ["{PROT4}", "{PROT6}"]
    block = ["{OTHER4}", "203.0.113.0/24"]

    [[interface.address]]
    address = "{PROT4}"
    open_ports = ["tcp:22"]
    limits = {{ src_pps = 20000, ban = 30 }}

    [[interface.filter]]
    action = "drop"
    proto = "udp"
    dport = 53

    [[interface.forward]]
    proto = "tcp"
    ports = "80"
    to = ["198.18.1.2:{BPORT}"]

    [[interface.forward]]
    proto = "udp"
    ports = "80"
    to = ["198.18.2.2:{BPORT}"]

    [interface.events]
    drop_pps = 5000
""")


def write(tmp_path: Path, text: str, name: str = "xdpguard.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def export(t: Topo) -> str:
    return t.xg("export").stdout


def answers(t: Topo, proto: str = "tcp", port: int = 80, src: str | None = None) -> bool:
    (r,) = t.requests(proto, PROT4, port, 1, src)
    return r["reply"] is not None


def wait_for(pred, timeout: float, step: float = 0.05) -> float | None:
    """Seconds until pred() held, or None when it did not within timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def netns_key(t: Topo) -> str:
    ino = t.lab.run(t.prot, "stat", "-L", "-c", "%i", "/proc/self/ns/net").stdout.strip()
    return f"net-{ino}"


def attached_prog(t: Topo) -> tuple[int, str] | None:
    """(prog id, name) attached to xgp0, from the kernel."""
    out = t.lab.run(t.prot, "ip", "-d", "-j", "link", "show", "xgp0").stdout
    xdp = json.loads(out)[0].get("xdp")
    if not xdp or "prog" not in xdp:
        return None
    p = xdp["prog"]
    return p["id"], p.get("name", "")


class Daemon:
    """`xdpguard run --config` in the protector namespace, bounded, its output kept."""

    def __init__(self, t: Topo, path: str, duration: float = 90):
        self.log = Path(path).with_suffix(".log")
        self.fh = open(self.log, "w")
        self.proc = t.lab.popen(
            t.prot,
            "xdpguard",
            "run",
            "--config",
            path,
            "--no-detect",
            "--duration",
            str(duration),
            stdout=self.fh,
            stderr=subprocess.STDOUT,
        )
        t.lab.defer("stop daemon", self.stop)

    def text(self) -> str:
        return self.log.read_text()

    def wait_started(self, timeout: float = 60) -> None:
        assert wait_for(lambda: "health checks every" in self.text(), timeout), self.text()

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.fh.close()
        return self.proc.returncode


def test_export_after_imperative_verbs_reapplies_to_nothing(topo: Topo, tmp_path: Path):
    topo.attach()
    topo.xg("block", "add", OTHER4, "198.51.100.0/24")
    topo.xg("block", "add", "192.0.2.99", "--ttl", "600")  # dynamic: not desired state
    topo.xg("limit", "set", "--src-pps", "2k", "--ban", "30", "--protected", PROT4)
    topo.xg("forward", "add", "tcp", "80", "--to", f"198.18.1.2:{BPORT}")
    topo.xg("filter", "add", "--proto", "udp", "--dport", "53", "--action", "drop")
    topo.xg("port", "open", "tcp", "22", "--protected", PROT4)
    topo.xg("syn", "set", "--threshold", "1000", "--protected", PROT4)
    topo.xg("events", "threshold", "set", "--drop-pps", "5000")
    text = export(topo)
    x = tomllib.loads(text)["interface"][0]  # (the layout is tomli-w's: checked as TOML, not as text)
    assert x["block"] == [f"{OTHER4}/32", "198.51.100.0/24"], text  # the TTL entry is dynamic
    a = next(a for a in x["address"] if a["address"] == PROT4)
    assert a["limits"] == {"src_pps": 2000, "ban": 30} and a["open_ports"] == ["tcp:22"], text
    assert a["syn"]["threshold"] == 1000 and x["filter"][0]["proto"] == "udp", text
    assert x["forward"][0]["to"] == [f"198.18.1.2:{BPORT}"] and x["events"]["drop_pps"] == 5000, text
    path = write(tmp_path, text)
    assert topo.xg("diff", "-f", path).stdout.strip() == "no changes"
    assert "no changes" in topo.xg("apply", "-f", path).stdout
    assert export(topo) == text
    # the dynamic entry survived the apply
    entries = json.loads(topo.xg("block", "list", "--json").stdout)["entries"]
    assert any(e["prefix"] == "192.0.2.99/32" and e["expires_in_s"] for e in entries)


def test_apply_realises_the_file_and_twice_is_a_noop(topo: Topo, tmp_path: Path):
    topo.attach()
    assert answers(topo, src=CLIENT4) is False  # no forward yet: port 80 goes nowhere
    path = write(tmp_path, CONFIG)
    diff = topo.xg("diff", "-f", path).stdout
    assert f"+ xgp0 block: {OTHER4}/32, 203.0.113.0/24" in diff and "dry run" in diff
    out = topo.xg("apply", "-f", path).stdout
    assert "applied" in out
    assert answers(topo, src=CLIENT4)  # forwarded to backend 1
    assert answers(topo, "udp", src=CLIENT4)  # forwarded to backend 2
    assert not answers(topo, src=OTHER4)  # blocked in XDP
    assert topo.status_counter("drop", "blocklist") >= 1
    assert "no changes" in topo.xg("apply", "-f", path).stdout
    # a changed file: unblock OTHER4, drop the udp forward
    path2 = write(
        tmp_path,
        CONFIG.replace(f'"{OTHER4}", ', "").split('[[interface.forward]]\nproto = "udp"')[0]
        + "[interface.events]\ndrop_pps = 5000\n",
        "second.toml",
    )
    out = topo.xg("apply", "-f", path2).stdout
    assert f"- xgp0 block: {OTHER4}/32" in out and "- xgp0 forward: udp/198.18.0.2/80" in out
    assert answers(topo, src=OTHER4)
    assert not answers(topo, "udp", src=CLIENT4)
    assert "no changes" in topo.xg("diff", "-f", path2).stdout


def test_failed_apply_rolls_back_everything(topo: Topo, tmp_path: Path):
    topo.attach()
    topo.xg("block", "add", "198.51.100.7")
    before = export(topo)
    bad = CONFIG + '\n[[interface]]\nname = "xgnope9"\nprotect = ["198.18.9.1"]\n'
    p = topo.xg("apply", "-f", write(tmp_path, bad), check=False)
    one_line_error(p, "xgnope9")
    assert export(topo) == before
    assert topo.nft_tables().strip() == ""  # the forwards of the failed apply are gone again
    assert answers(topo, src=OTHER4) is False and answers(topo, src=CLIENT4) is False


def test_bad_config_is_refused_with_locations_and_changes_nothing(topo: Topo, tmp_path: Path):
    topo.attach()
    before = export(topo)
    text = CONFIG.replace("block = [", 'colour = "red"\nblock = [').replace("src_pps = 20000", "src_pps = -5")
    p = topo.xg("apply", "-f", write(tmp_path, text), check=False)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2 and all(re.match(r"xdpguard: error: \S+\.toml:\d+: interface\[0\]", l) for l in lines), lines
    assert "colour: unknown key" in lines[0] and "src_pps" in lines[1]
    assert export(topo) == before
    one_line_error(topo.xg("apply", "-f", str(tmp_path / "missing.toml"), check=False), "cannot read", "missing.toml")


def test_management_address_is_refused_without_force(topo: Topo, tmp_path: Path):
    topo.lab.run(topo.prot, "ip", "route", "add", "default", "via", "198.18.1.2")
    text = '[[interface]]\nname = "xgb1"\nprotect = ["198.18.1.1"]\n'
    p = topo.xg("apply", "-f", write(tmp_path, text), check=False)
    one_line_error(p, "management address", "--force")
    assert topo.xg("export").stdout.count("[[interface]]") == 0


def reboot(t: Topo) -> None:
    """What a reboot takes away from this namespace: the program, the nft table, pins, locks,
    the sysctls. (/var/lib stays, as on a real disk.)"""
    t.lab.run(t.prot, "ip", "link", "set", "dev", "xgp0", "xdp", "off")
    t.lab.run(t.prot, "nft", "flush", "ruleset")
    key = netns_key(t)
    shutil.rmtree(Path("/run/xdpguard/bpffs") / key, ignore_errors=True)
    for lock in Path("/run/xdpguard/locks").glob(f"{key}.*"):
        lock.unlink()
    t.lab.sysctl(t.prot, "net.ipv4.ip_forward", 0)


def test_reboot_restores_everything_from_the_file(topo: Topo, tmp_path: Path):
    path = write(tmp_path, CONFIG)
    topo.xg("apply", "-f", path)
    topo.lab.defer("detach xdpguard", topo.xg, "detach", "xgp0", check=False)
    topo.xg("ban", "add", "198.51.100.66", "--ttl", "600")
    before = export(topo)
    status_before = json.loads(topo.xg("status", "--json").stdout)[0]
    reboot(topo)
    assert attached_prog(topo) is None and topo.nft_tables().strip() == ""
    t0 = time.monotonic()
    d = Daemon(topo, path)
    took = wait_for(lambda: attached_prog(topo) is not None and export(topo) == before, 60, step=0.2)
    assert took is not None, d.text()
    print(f"restore after reboot: {time.monotonic() - t0:.1f} s (compile included)")
    assert "restoring the stored desired state" in d.text() and "attached and restored" in d.text()
    st = json.loads(topo.xg("status", "--json").stdout)[0]
    assert st["protected"] == status_before["protected"] and st["list_sizes"] == status_before["list_sizes"]
    assert answers(topo, src=CLIENT4) and answers(topo, "udp", src=CLIENT4) and not answers(topo, src=OTHER4)
    assert topo.sysctl("net.ipv4.ip_forward") == "1"
    # SIGTERM: the daemon ends, protection stays
    assert d.stop() == 0
    assert attached_prog(topo)[1] == "xdpguard_main" and not answers(topo, src=OTHER4)


def test_drift_is_repaired_and_a_foreign_program_is_not_fought(topo: Topo, tmp_path: Path):
    path = write(tmp_path, CONFIG)
    topo.xg("apply", "-f", path)
    topo.lab.defer("detach xdpguard", topo.xg, "detach", "xgp0", check=False)
    d = Daemon(topo, path)
    d.wait_started()
    prog = attached_prog(topo)

    topo.lab.run(topo.prot, "nft", "flush", "ruleset")
    took = wait_for(lambda: "xdpguard" in topo.nft_tables(), 10)
    assert took is not None, d.text()
    assert answers(topo, src=CLIENT4)
    print(f"nft flush ruleset repaired in {took:.2f} s")

    topo.xg("block", "add", "198.51.100.77")  # state the data path holds: must come back as it was
    topo.lab.run(topo.prot, "ip", "link", "set", "dev", "xgp0", "xdp", "off")
    took = wait_for(lambda: attached_prog(topo) is not None, 10)
    assert took is not None, d.text()
    print(f"xdp off repaired in {took:.2f} s")
    assert attached_prog(topo) == prog  # the very same program, maps and counters with it
    assert "198.51.100.77/32" in topo.xg("block", "list").stdout and not answers(topo, src=OTHER4)

    topo.lab.sysctl(topo.prot, "net.ipv4.ip_forward", 0)
    assert wait_for(lambda: topo.sysctl("net.ipv4.ip_forward") == "1", 10) is not None, d.text()

    # a foreign program replaces ours: reported loudly, left alone
    foreign = topo.lab.run(topo.prot, PY, "-c", FOREIGN, timeout=120).stdout.strip()
    assert wait_for(lambda: "foreign XDP program" in d.text(), 10) is not None, d.text()
    time.sleep(1.5)
    assert attached_prog(topo)[1] == foreign
    assert d.text().count("foreign XDP program") == 1  # said once, not every half second
    topo.lab.run(topo.prot, "ip", "link", "set", "dev", "xgp0", "xdp", "off")


# A foreign XDP program (XDP_PASS, named 'not_ours'), swapped in over ours (XDP_FLAGS_REPLACE).
FOREIGN = r"""
import ctypes, socket
from bcc import BPF
from xdpguard.core.kernel import dataplane, libbpf
b = BPF(text="int not_ours(struct xdp_md *ctx) { return XDP_PASS; }")
fn = b.load_func("not_ours", BPF.XDP)
idx = socket.if_nametoindex("xgp0")
att = dataplane.query(idx)
dataplane.replace(idx, fn.fd, att)
print("not_ours")
"""


def test_upgrade_under_flood_passes_nothing_and_keeps_state(topo: Topo, tmp_path: Path):
    topo.attach()
    topo.xg("block", "add", OTHER4)
    topo.xg("ban", "add", "198.51.100.66", "--ttl", "600")
    # count what gets past XDP from the flooding source, in our own nft table
    topo.count_leaks(OTHER4)
    flood = topo.udp_flood(7, 3_000_000, 50, 20_000)
    time.sleep(1.0)
    before = topo.status_counter("drop", "blocklist")
    ids = {attached_prog(topo)[0]}
    for _ in range(3):
        out = topo.xg("upgrade", "xgp0", "--force", timeout=180).stdout
        assert "atomically" in out and "maps kept as they were" in out, out
        ids.add(attached_prog(topo)[0])
        assert topo.status_counter("drop", "blocklist") >= before  # counters carried over, never reset
    flood.terminate()
    flood.wait(timeout=30)
    assert len(ids) == 4  # three swaps, each a new program
    packets = topo.leaked()
    after = topo.status_counter("drop", "blocklist")
    print(f"upgrade under flood: {after - before} dropped across 3 swaps, {packets} leaked")
    assert packets == 0
    assert after > before
    bans = json.loads(topo.xg("ban", "list", "--json").stdout)["bans"]
    assert [b["source"] for b in bans] == ["198.51.100.66"]
    entries = json.loads(topo.xg("block", "list", "--json").stdout)["entries"]
    assert entries[0]["hits"] >= after - 10


def test_sigkill_anywhere_in_an_apply_converges_on_the_next(topo: Topo, tmp_path: Path):
    topo.attach()
    big = tmp_path / "list.txt"
    big.write_text("".join(f"198.19.{i >> 8}.{i & 255}\n" for i in range(20000)))
    path = write(tmp_path, CONFIG.replace("block = [", f'block_files = ["{big}"]\nblock = ['))
    small = write(tmp_path, f'[[interface]]\nname = "xgp0"\nprotect = ["{PROT4}"]\n', "small.toml")
    for i, delay in enumerate([0.05, 0.15, 0.3, 0.5, 0.7, 0.9, 1.2, 1.5, 2.0, 2.5]):
        target = path if i % 2 == 0 else small
        proc = topo.lab.popen(
            topo.prot, "xdpguard", "apply", "-f", target, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=10)
        topo.xg("apply", "-f", target, timeout=120)
        assert topo.xg("diff", "-f", target).stdout.strip() == "no changes", (delay, target)
    assert answers(topo, src=CLIENT4) is False  # the last one applied was the small config
    topo.xg("apply", "-f", path, timeout=120)
    assert answers(topo, src=CLIENT4) and not answers(topo, src=OTHER4)


def test_an_imperative_verb_is_stored_before_the_kernel_is_touched(topo: Topo, tmp_path: Path):
    """Store first: a verb SIGKILLed right after it stored (XDPGUARD_KILL_AFTER_STORE, the fault
    point between the store and the kernel write) leaves its change in the store and not in the
    kernel, and the daemon converges the kernel to the store. (The verbs store under the interface
    lock now, one writer: holding that lock no longer stops them between the two.)"""
    small = write(tmp_path, f'[[interface]]\nname = "xgp0"\nprotect = ["{PROT4}"]\n', "small.toml")
    topo.xg("apply", "-f", small)
    topo.lab.defer("detach xdpguard", topo.xg, "detach", "xgp0", check=False)
    key = netns_key(topo)
    desired = state.state_root() / key / "desired.toml"
    block_file = state.state_root() / key / "desired.lists" / "xgp0.block"
    for argv, stored in (
        (["block", "add", "198.51.100.77"], lambda: "198.51.100.77/32" in block_file.read_text()),
        (["limit", "set", "--src-pps", "3k", "--protected", PROT4], lambda: "src_pps = 3000" in desired.read_text()),
    ):
        assert _killed_after_store(topo, argv) == -signal.SIGKILL, argv  # died at the fault point: after the store
        assert block_file.exists() and stored(), (argv, desired.read_text())
    assert "198.51.100.77" not in topo.xg("block", "list").stdout
    assert "src_pps" not in export(topo)
    d = Daemon(topo, small)  # the file last applied: the store (with both changes) wins

    def both() -> bool:
        x = tomllib.loads(export(topo))["interface"][0]
        return x.get("block") == ["198.51.100.77/32"] and any(
            a.get("limits", {}).get("src_pps") == 3000 for a in x.get("address", [])
        )

    took = wait_for(both, 30, step=0.5)
    assert took is not None, d.text()
    assert d.stop() == 0
    assert topo.xg("diff", "-f", small).stdout.strip() != "no changes"  # the store amended the file


def _killed_after_store(topo: Topo, argv: list[str]) -> int:
    """Run a verb with the fault point after its store on (XDPGUARD_KILL_AFTER_STORE); its exit
    status (-SIGKILL when it stored a change and died there, before its kernel write)."""
    proc = topo.lab.popen(
        topo.prot,
        "env",
        f"{reconcile.KILL_AFTER_STORE}=1",
        "xdpguard",
        *argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc.wait(timeout=60)


def _stopped_before_the_kernel(topo: Topo, argv: list[str], meta: Path) -> bool:
    """True when the verb stored a change (a new generation) and was SIGKILLed at the fault point."""
    gen = json.loads(meta.read_text())["generation"] if meta.exists() else 0
    rc = _killed_after_store(topo, argv)
    return rc == -signal.SIGKILL and meta.exists() and json.loads(meta.read_text())["generation"] > gen


def test_every_verb_stores_first_what_it_then_does(topo: Topo, tmp_path: Path):
    """For each imperative verb: the store it leaves when SIGKILLed right before its kernel write
    is the store it leaves when it runs to the end (the prediction is what the kernel does)."""
    topo.attach()
    key = netns_key(topo)
    root = state.state_root() / key
    lst = tmp_path / "list.txt"
    lst.write_text("198.19.0.0/24\n198.19.1.1\n")

    def snapshot() -> dict[str, str]:
        files = [root / "desired.toml", *sorted((root / "desired.lists").glob("*"))]
        return {f.name: f.read_text() for f in files if f.exists()}

    verbs = [
        ["block", "add", OTHER4, "198.51.100.0/24"],
        ["allow", "add", "203.0.113.5"],
        ["block", "add", "198.51.100.0/24", "--ttl", "600"],
        ["block", "del", OTHER4],
        ["block", "load", str(lst)],
        ["port", "open", "tcp", "22-24", "--protected", PROT4],
        ["port", "close", "tcp", "23"],
        ["limit", "set", "--src-pps", "2k", "--ban", "30", "--protected", PROT4],
        ["limit", "set", "--dst-pps", "1000", "--port", "udp:53-55"],
        ["limit", "clear", "--port", "udp:54"],
        ["proto", "block", "icmp"],
        ["proto", "unblock", "icmp", "--protected", PROT6],
        ["syn", "set", "--threshold", "1000", "--auth-window", "300-8000", "--protected", PROT4],
        ["filter", "add", "--proto", "udp", "--dport", "53", "--action", "drop"],
        ["filter", "add", "--proto", "tcp", "--dport", "25", "--action", "drop", "--position", "1"],
        ["filter", "del", "2"],
        ["reflection", "add", "4444", "5555"],
        ["reflection", "off"],
        ["monitor", "on", "--reason", "blocklist"],
        ["monitor", "off"],
        ["fragments", "pass"],
        ["forward", "add", "udp", "80", "--to", f"198.18.2.2:{BPORT}"],
        ["forward", "add", "tcp", "80", "--to", f"198.18.1.2:{BPORT}"],
        ["level", "strict", "--protected", PROT4],
        ["limit", "clear", "--all-ports", "--protected", PROT6],
        ["connlimit", "set", "--new-per-source", "50", "--protected", PROT4],
        ["connlimit", "clear"],
        ["forward", "del", "tcp", "80"],
        ["level", "loose"],
        ["events", "threshold", "set", "--drop-pps", "5000"],
        ["events", "threshold", "clear"],
    ]
    for argv in verbs:
        before = snapshot()
        stored = _stopped_before_the_kernel(topo, argv, root / "desired.meta")
        predicted = snapshot()
        assert stored and predicted != before, (argv, "nothing stored before the kernel write")
        topo.xg(*argv)
        assert snapshot() == predicted, (argv, predicted, snapshot())
    path = write(tmp_path, export(topo))
    assert topo.xg("diff", "-f", path).stdout.strip() == "no changes"


@pytest.mark.serial  # at least 20 applies within 45 s
def test_alternating_applies_under_a_flood_never_let_a_source_blocked_in_both_through(topo: Topo, tmp_path: Path):
    a = write(tmp_path, CONFIG, "a.toml")
    b = write(
        tmp_path,
        CONFIG.replace('"203.0.113.0/24"', '"203.0.113.0/25", "192.0.2.0/24"').replace(
            "src_pps = 20000", "src_pps = 30000"
        ),
        "b.toml",
    )
    topo.xg("apply", "-f", a)
    topo.lab.defer("detach xdpguard", topo.xg, "detach", "xgp0", check=False)
    topo.count_leaks(OTHER4)
    flood = topo.udp_flood(80, 3_000_000, 55, 10_000)
    client = topo.lab.popen(topo.client, PY, "-c", CLIENT_LOOP, PROT4, CLIENT4, "55", stdout=subprocess.PIPE, text=True)
    n = 0
    t0 = time.monotonic()
    while n < APPLIES and time.monotonic() - t0 < 45:
        topo.xg("apply", "-f", b if n % 2 == 0 else a, timeout=60)
        n += 1
    # the flood and the client end with the applies (their 55 s are the bound, not the length)
    flood.terminate()
    client.send_signal(signal.SIGTERM)
    flood.wait(timeout=70)
    out, _ = client.communicate(timeout=70)
    ok, failed = (int(x) for x in out.split())
    leaked = topo.leaked()
    print(f"{n} applies under a flood: {leaked} leaked, client {ok} ok / {failed} failed")
    assert n >= 20
    assert leaked == 0
    assert ok > 0 and failed == 0


APPLIES = 30  # alternating applies under the flood (at least 20 within 45 s)
# New TCP connections to the forwarded port, one after another, until DURATION s or SIGTERM:
# prints "ok failed".
CLIENT_LOOP = r"""
import signal, socket, sys, time
dst, src, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
ok = failed = 0
end = time.monotonic() + duration
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
while time.monotonic() < end and not stop:
    s = socket.socket(); s.settimeout(3)
    try:
        s.bind((src, 0)); s.connect((dst, 80)); s.sendall(b"ping")
        ok += s.recv(100).endswith(b"|ping")
    except OSError:
        failed += 1
    finally:
        s.close()
    time.sleep(0.05)
print(ok, failed)
"""


def test_state_of_a_dead_namespace_is_never_adopted(tmp_path: Path):
    """The kernel hands a dead namespace's inode to the next one: what xdpguard kept under that
    inode must not become the new namespace's desired state."""
    from xdpguard.core import state
    from xdpguard.lab.netns import Lab

    make = (
        "from xdpguard.core import state; d = state.netns_state_dir(); (d / 'desired.toml').write_text('x'); print(d)"
    )
    with Lab() as lab:
        ns = lab.netns("own")
        d = Path(lab.run(ns, PY, "-c", make).stdout.strip())
        assert (d / "desired.toml").exists() and (d / state.OWNER_FILE).exists()
        # another namespace of this boot owned it: it is removed on first use, not adopted
        owner = json.loads((d / state.OWNER_FILE).read_text())
        (d / state.OWNER_FILE).write_text(json.dumps({**owner, "cookie": owner["cookie"] + 1}))
        lab.run(ns, PY, "-c", "from xdpguard.core import state; state.netns_key()")
        assert not d.exists()
        # the lab removes what xdpguard kept for a namespace when it deletes the namespace
        d = Path(lab.run(ns, PY, "-c", make).stdout.strip())
        assert d.exists()
    assert not d.exists()
