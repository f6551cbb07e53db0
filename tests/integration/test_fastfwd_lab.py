"""The forwarding fast path with the real CLI: established flows leave nftables for XDP.

`attach --fast-forward` + `forward add`, a TCP and a UDP flow set up through nftables (the slow
path), `forward fastpath xgp0 --via xgb1` learns them from conntrack; then their packets, both
directions, are rewritten and redirected in XDP: the fast path's counters move, nftables' per-rule
counters do not, and every byte comes back intact. A FIN ends the flow's fast path and goes to
conntrack. Topology: xdpguard/lab/fastpath.py.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from xdpguard.lab import fastpath
from xdpguard.lab.netns import Lab

pytestmark = pytest.mark.kernel

# In the client's namespace: one TCP connection to the echo (established through nftables), a
# pause on stdin while the test runs the sync, then PAYLOAD bytes in 8 KiB writes, all read back;
# the same for one UDP "connection" with 50 datagrams. Prints "ok" or what differed.
CLIENT = r"""
import socket, sys
dst, n = sys.argv[1], int(sys.argv[2])
pattern = (bytes(range(256)) * (n // 256 + 1))[:n]
t = socket.create_connection((dst, 7), timeout=5)
t.sendall(b"hello"); assert t.recv(5) == b"hello"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2); u.connect((dst, 7))
u.send(b"hi"); assert u.recv(100) == b"hi"
print("ready", flush=True)
sys.stdin.readline()
got = bytearray()
for i in range(0, n, 8192):
    t.sendall(pattern[i:i + 8192])
    while len(got) < min(n, i + 8192):
        got += t.recv(65536)
assert bytes(got) == pattern, "tcp payload differs"
for i in range(50):
    d = pattern[i:i + 1000 + i]
    u.send(d); assert u.recv(4096) == d, "udp payload differs"
print("done", flush=True)
sys.stdin.readline()
t.close()
print("ok", flush=True)
"""

PAYLOAD = 400_000

UDP_ONCE = r"""
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2); u.connect((sys.argv[1], 7))
u.send(b"again"); print("ok" if u.recv(100) == b"again" else "bad")
"""

# One UDP flow (one socket) exchanging a datagram every 0.2 s for argv[2] seconds or until SIGTERM;
# "ok" when every answer came back intact.
UDP_STEADY = r"""
import signal, socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2); u.connect((sys.argv[1], 7))
end, ok, stop = time.monotonic() + float(sys.argv[2]), True, []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
while time.monotonic() < end and not stop:
    u.send(b"steady"); ok = ok and u.recv(100) == b"steady"; time.sleep(0.2)
print("ok" if ok else "bad")
"""


# The backend's servers outlive the module's tests (about 2 minutes alone, much longer on a loaded
# machine or beside other tests); the lab stops them at the end.
@pytest.fixture(scope="module")
def topo():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with Lab(timeout=120) as lab:
        yield fastpath.build(lab, "fast", duration=900)


def test_established_flows_take_the_xdp_fast_path_both_ways(topo):
    client = topo.lab.popen(
        topo.client, fastpath.PY, "-c", CLIENT, fastpath.PROT, str(PAYLOAD), stdin=-1, stdout=-1, text=True
    )
    assert client.stdout.readline().strip() == "ready"
    res = topo.sync()
    assert res["flows"] == 2 and res["written"] == 4, res  # one TCP, one UDP; two entries each
    assert any("return program" in n for n in res["notes"]), res["notes"]
    nft_before = topo.forward_packets()
    fast_before = res["counters"]

    client.stdin.write("\n")
    client.stdin.flush()
    assert client.stdout.readline().strip() == "done"
    after = topo.sync()
    fast, nft_after = after["counters"], topo.forward_packets()
    assert after["flows"] == 2 and after["written"] == 0 and after["deleted"] == 0, after
    moved_in = fast["in"][0] - fast_before["in"][0]
    moved_out = fast["out"][0] - fast_before["out"][0]
    # 400 kB each way in ≥ 1 kB segments (MSS 1448) plus 50 datagrams each way
    assert moved_in >= PAYLOAD // 1448 + 50 and moved_out >= PAYLOAD // 1448 + 50, fast
    assert fast["in"][1] - fast_before["in"][1] > PAYLOAD, fast
    assert nft_after == nft_before, (nft_before, nft_after)  # nothing established met nftables
    # ... and `forward list` counts them per rule, beside nftables' counters (both directions)
    fast_rules = {r["key"]: r for r in json.loads(topo.xg("forward", "list", "--json").stdout)["rules"]}
    tcp_rule, udp_rule = (fast_rules[f"{p}/{fastpath.PROT}/{fastpath.ECHO_PORT}"] for p in ("tcp", "udp"))
    assert tcp_rule["fast_packets"] >= 2 * (PAYLOAD // 1448) and tcp_rule["fast_bytes"] > 2 * PAYLOAD, tcp_rule
    assert (
        udp_rule["fast_packets"] >= 100 and fast_rules[f"tcp/{fastpath.PROT}/{fastpath.SINK_PORT}"]["fast_packets"] == 0
    )
    assert tcp_rule["fast_packets"] + udp_rule["fast_packets"] <= moved_in + moved_out
    # `stats` (and the dashboard) shows them beside nftables' too
    snap = json.loads(topo.xg("stats", "xgp0", "--interval", "0.2", "--json").stdout)
    row = next(r for r in snap["rules"] if r["key"] == tcp_rule["key"])
    assert row["fast_packets"] == tcp_rule["fast_packets"] and row["packets"] == tcp_rule["packets"], row

    client.stdin.write("\n")
    client.stdin.flush()
    assert client.stdout.readline().strip() == "ok"
    assert client.wait(timeout=10) == 0
    # the FIN took the TCP flow off the fast path (and to conntrack: closing, no longer established)
    for _ in range(20):
        end = topo.sync()
        if end["flows"] == 1:
            break
        time.sleep(0.1)
    assert end["counters"]["end"][0] > fast["end"][0], end
    assert end["flows"] == 1, end  # the UDP flow stays
    off = json.loads(topo.xg("forward", "fastpath", "xgp0", "--via", "xgb1", "--off", "--json").stdout)
    assert off["deleted"] == 2 and off["flows"] == 0, off
    # the forward still works, on the slow path: nftables counts it again
    udp = topo.lab.run(topo.client, fastpath.PY, "-c", UDP_ONCE, fastpath.PROT)
    assert udp.stdout.strip() == "ok"
    assert sum(topo.forward_packets().values()) > sum(nft_after.values())
    assert topo.sync()["counters"]["in"] == off["counters"]["in"]


# One TCP connection driven line by line from stdin: "ping" exchanges 1 KiB, "bulk" PAYLOAD bytes
# (both checked), anything else closes it. Prints "ok" after each step.
STEPPED = r"""
import socket, sys
t = socket.create_connection((sys.argv[1], 7), timeout=5)
data = (bytes(range(256)) * (int(sys.argv[2]) // 256 + 1))[: int(sys.argv[2])]
for line in sys.stdin:
    d = {"ping": data[:1024], "bulk": data}.get(line.strip())
    if d is None:
        break
    t.sendall(d); got = b""
    while len(got) < len(d):
        got += t.recv(65536)
    print("ok" if got == d else "differs", flush=True)
t.close()
"""


def test_the_daemon_learns_flows_by_itself(topo):
    """Once `forward fastpath --via` enabled it (the first test did), `xdpguard run` keeps the
    table in step with conntrack: a new connection leaves nftables without anyone syncing."""
    topo.lab.popen(topo.prot, *fastpath.xdpguard_argv(), "run", "--duration", "60", "--no-detect")
    c = topo.lab.popen(
        topo.client, fastpath.PY, "-c", STEPPED, fastpath.PROT, str(PAYLOAD), stdin=-1, stdout=-1, text=True
    )

    def step(what: str) -> None:
        c.stdin.write(what + "\n")
        c.stdin.flush()
        assert c.stdout.readline().strip() == "ok"

    step("ping")
    key = f"tcp/{fastpath.PROT}/{fastpath.ECHO_PORT}"
    # learned when a 1 KiB exchange no longer moves nftables' counter (the daemon syncs every 1 s)
    last = topo.forward_packets()[key]
    for _ in range(60):
        step("ping")
        now = topo.forward_packets()[key]
        if now == last:
            break
        last = now
    else:
        pytest.fail("the daemon never moved the connection onto the fast path")
    step("bulk")
    assert topo.forward_packets()[key] == last  # 400 kB each way, none of it through nftables
    c.stdin.write("close\n")
    c.stdin.flush()
    assert c.wait(timeout=10) == 0


def test_an_upgrade_keeps_the_fast_path(topo):
    """`upgrade` compiles the fast path in again (the attach's feature flag is in its record); the
    next sync (the daemon's, or this one) puts the new return program on the backend side."""
    old = topo.sync()["return_prog_id"]
    assert _xdp_prog_id(topo, "xgb1") == old
    topo.xg("upgrade", "xgp0", "--force", timeout=180)
    # the spec has the fast path on: the upgrade itself realised it with the new return program
    assert _xdp_prog_id(topo, "xgb1") not in (0, old)
    new = topo.sync()
    assert new["return_prog_id"] != old and _xdp_prog_id(topo, "xgb1") == new["return_prog_id"], new
    udp = topo.lab.run(topo.client, fastpath.PY, "-c", UDP_ONCE, fastpath.PROT)
    assert udp.stdout.strip() == "ok"


def _xdp_prog_id(topo, ifname: str) -> int:
    """The id of the XDP program on the protector's `ifname`; 0 without one."""
    link = json.loads(topo.lab.run(topo.prot, "ip", "-j", "link", "show", ifname).stdout)[0]
    return link.get("xdp", {}).get("prog", {}).get("id", 0)


# ---- the switch is desired state (`[interface.fast_path] via`): its own topology, no daemon of
#      the tests above in its way ----

# In the backend's namespace: new connections to the echo port dropped (the health check's
# connect fails), established ones untouched.
BLOCK_SYN = f"""
table inet xgtest {{
  chain in {{ type filter hook input priority 0; tcp dport {fastpath.ECHO_PORT} tcp flags & (syn | ack) == syn drop; }}
}}
"""
CT_UDP_TIMEOUT_S = 5  # the namespace's UDP conntrack timeouts in the refresh test (default 30/120 s)
FAST_TABLE = '[interface.fast_path]\nvia = "xgb1"\n'

# What the kernel holds of the fast path, read as the reconciler reads it: the program id in the
# main program's tail-call slot (or None) and the pinned tail-call array's path.
PROBE = r"""
from xdpguard.core import guard, state
from xdpguard.core.kernel import dataplane
i = state.resolve_iface("xgp0")
print(dataplane.fwd_in_prog_id(dataplane.query(i.index).prog_id), i.pin_dir / guard.FWD_ARRAY_PIN)
"""


@pytest.fixture(scope="module")
def spec_topo():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with Lab(timeout=120) as lab:
        yield fastpath.build(lab, "fast", duration=900, tag="s")


def _xg_status(topo, *args: str) -> tuple[int, str, str]:
    r = topo.lab.run(topo.prot, *fastpath.xdpguard_argv(), *args, check=False, timeout=120)
    return r.returncode, r.stdout, r.stderr


def _probe(topo) -> tuple[str, str]:
    slot, pin = topo.lab.run(topo.prot, fastpath.PY, "-c", PROBE).stdout.split()
    return slot, pin


def _store_text(topo) -> str:
    code = "from xdpguard.core import store; p = store.desired_path(); print(p.read_text() if p.exists() else '')"
    return topo.lab.run(topo.prot, fastpath.PY, "-c", code).stdout


def test_the_switch_is_desired_state_export_apply_round_trip(spec_topo, tmp_path):
    t = spec_topo
    on = t.sync()  # `forward fastpath xgp0 --via xgb1`: an edit of the spec
    assert on["via"] == "xgb1" and _xdp_prog_id(t, "xgb1") == on["return_prog_id"] != 0, on
    assert FAST_TABLE in _store_text(t)  # stored, not an interface-record field
    text = t.xg("export").stdout
    assert FAST_TABLE in text, text
    cfg = tmp_path / "on.toml"
    cfg.write_text(text)
    assert t.xg("diff", "-f", str(cfg)).stdout.strip() == "no changes"
    t.xg("apply", "-f", str(cfg))
    assert _xdp_prog_id(t, "xgb1") == on["return_prog_id"]  # an apply of the export changes nothing
    off = tmp_path / "off.toml"
    off.write_text(text.replace(FAST_TABLE, ""))
    assert "fast_path: via xgb1 -> off" in t.xg("diff", "-f", str(off)).stdout
    t.xg("apply", "-f", str(off))
    assert _xdp_prog_id(t, "xgb1") == 0  # the return program went with the switch
    assert FAST_TABLE not in t.xg("export").stdout and FAST_TABLE not in _store_text(t)
    code, _, err = _xg_status(t, "forward", "fastpath", "xgp0")  # no --via while off
    assert code == 2 and "give --via" in err
    t.xg("apply", "-f", str(cfg))
    assert _xdp_prog_id(t, "xgb1") == on["return_prog_id"]  # the same pinned return program, back
    assert FAST_TABLE in t.xg("export").stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--via", "xgnope0"], "xgnope0"),
        (["--via", "xgp0"], "not the protected one"),
        (["--via", "bad/name"], "bad/name"),
    ],
)
def test_bad_fast_path_input_is_one_line_and_changes_nothing(spec_topo, args, needle):
    t = spec_topo
    before = (_store_text(t), t.xg("export").stdout, _xdp_prog_id(t, "xgb1"))
    code, out, err = _xg_status(t, "forward", "fastpath", "xgp0", *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("xdpguard: error: ") and needle in lines[0], err
    assert "Traceback" not in err + out
    assert (_store_text(t), t.xg("export").stdout, _xdp_prog_id(t, "xgb1")) == before


def test_the_reconciler_repairs_fast_path_drift(spec_topo, tmp_path):
    """A lost pin of the tail-call array empties the slot (the kernel clears a program array
    nobody holds); a detached return program takes the answers back to the slow path. The
    daemon's reconciler puts both back, from the spec."""
    t = spec_topo
    on = t.sync()
    slot, pin = _probe(t)
    assert slot != "None"
    cfg = tmp_path / "xg.toml"
    cfg.write_text(t.xg("export").stdout)
    t.lab.run(t.prot, "rm", pin)
    assert _probe(t)[0] == "None"  # the drift is real: the fast path is off in the data path
    daemon = t.lab.popen(
        t.prot, *fastpath.xdpguard_argv(), "run", "--config", str(cfg), "--duration", "40", "--no-detect"
    )
    for _ in range(100):
        time.sleep(0.2)
        if _probe(t)[0] != "None":
            break
    assert _probe(t)[0] != "None", "the reconciler never refilled the tail-call slot"
    assert t.lab.run(t.prot, "ls", pin).returncode == 0  # pinned again
    t.lab.run(t.prot, "ip", "link", "set", "xgb1", "xdp", "off")
    for _ in range(100):
        time.sleep(0.2)
        if _xdp_prog_id(t, "xgb1") == on["return_prog_id"]:
            break
    assert _xdp_prog_id(t, "xgb1") == on["return_prog_id"], "the return program was not put back"
    # and the fast path works again: a steady UDP flow, learned by the daemon, leaves nftables
    before = t.sync()["counters"]["in"][0]
    assert t.lab.run(t.client, fastpath.PY, "-c", UDP_STEADY, fastpath.PROT, "4").stdout.strip() == "ok"
    assert t.sync()["counters"]["in"][0] > before
    os.killpg(daemon.pid, signal.SIGTERM)
    daemon.wait(timeout=20)


def test_a_fast_udp_flow_outlives_conntracks_udp_timeout(spec_topo):
    """Conntrack sees none of a fast flow's packets: the daemon's sync refreshes its timeout from
    the data path's per-entry seen_ns. With the UDP timeouts at 5 s, a flow exchanging a datagram
    every 0.2 s stays on the fast path (nftables' counter still) well past 5 s; without the
    refresh its entry expires, the flow falls back to the slow path and nftables counts again."""
    t = spec_topo
    t.sync()
    for key in ("net.netfilter.nf_conntrack_udp_timeout", "net.netfilter.nf_conntrack_udp_timeout_stream"):
        t.lab.sysctl(t.prot, key, CT_UDP_TIMEOUT_S)
    daemon = t.lab.popen(t.prot, *fastpath.xdpguard_argv(), "run", "--duration", "40", "--no-detect")
    c = t.lab.popen(
        t.client, fastpath.PY, "-c", UDP_STEADY, fastpath.PROT, str(4 * CT_UDP_TIMEOUT_S), stdout=-1, text=True
    )
    key = f"udp/{fastpath.PROT}/{fastpath.ECHO_PORT}"
    last, learned_at = t.forward_packets()[key], None
    for _ in range(40):
        time.sleep(0.5)  # 2-3 datagrams each way: nftables would count them on the slow path
        now = t.forward_packets()[key]
        if now == last:
            learned_at = time.monotonic()
            break
        last = now
    assert learned_at is not None, "the daemon never moved the UDP flow onto the fast path"
    # the flow goes on (its 4 timeouts are the bound) until it has been fast for two timeouts
    time.sleep(max(0.0, learned_at + 2 * CT_UDP_TIMEOUT_S + 0.5 - time.monotonic()))
    os.killpg(c.pid, signal.SIGTERM)
    assert c.stdout.readline().strip() == "ok" and c.wait(timeout=10) == 0
    assert time.monotonic() - learned_at > 2 * CT_UDP_TIMEOUT_S  # on the fast path for two timeouts...
    assert t.forward_packets()[key] == last  # ... and not one datagram back on the slow path
    os.killpg(daemon.pid, signal.SIGTERM)
    daemon.wait(timeout=20)


def test_a_program_without_the_fast_path_refuses_it_until_upgraded(spec_topo, tmp_path):
    x = fastpath.build(spec_topo.lab, "xdp", duration=60, tag="x")
    before = (_store_text(x), x.xg("export").stdout)
    code, _, err = _xg_status(x, "forward", "fastpath", "xgp0", "--via", "xgb1")
    assert code == 2 and err.count("xdpguard: error: ") == 1 and "upgrade xgp0 --fast-forward" in err, err
    cfg = tmp_path / "fast.toml"
    cfg.write_text(before[1] + FAST_TABLE)
    code, _, err = _xg_status(x, "apply", "-f", str(cfg))
    assert code == 2 and err.count("xdpguard: error: ") == 1 and "fast path" in err, err
    assert (_store_text(x), x.xg("export").stdout) == before and _xdp_prog_id(x, "xgb1") == 0
    x.xg("upgrade", "xgp0", "--fast-forward", timeout=180)
    x.xg("apply", "-f", str(cfg))
    assert _xdp_prog_id(x, "xgb1") != 0 and FAST_TABLE in x.xg("export").stdout
    # from nothing (a reboot, a new host): the spec's fast path compiles it in at the attach
    x.xg("detach", "xgp0")
    assert _xdp_prog_id(x, "xgb1") == 0  # the detach took the return program off too
    x.xg("apply", "-f", str(cfg), timeout=180)
    assert _xdp_prog_id(x, "xgb1") != 0 and FAST_TABLE in x.xg("export").stdout
    assert x.sync()["flows"] == 0  # compiled with it: the verb works (no flow yet)


def test_a_backend_marked_down_takes_its_flows_off_the_fast_path(spec_topo):
    """Health and the fast path: while the health checks mark the backend down (new SYNs to it
    dropped at the backend; the established connection is untouched), the daemon keeps its
    flows off the fast path, so nftables carries them again; back up, they return."""
    t = spec_topo
    t.sync()
    daemon = t.lab.popen(
        t.prot,
        *fastpath.xdpguard_argv(),
        "run",
        *("--interval", "0.5", "--fall", "2", "--rise", "1", "--timeout", "0.3"),
        *("--duration", "60", "--no-detect"),
    )
    c = t.lab.popen(t.client, fastpath.PY, "-c", STEPPED, fastpath.PROT, "1024", stdin=-1, stdout=-1, text=True)
    key = f"tcp/{fastpath.PROT}/{fastpath.ECHO_PORT}"

    def step() -> int:
        c.stdin.write("ping\n")
        c.stdin.flush()
        assert c.stdout.readline().strip() == "ok"
        return t.forward_packets()[key]

    def health() -> str:
        rules = json.loads(t.xg("forward", "list", "--json").stdout)["rules"]
        return next(r for r in rules if r["key"] == key)["backends"][0]["health"]

    def settles(moving: bool) -> bool:
        """Within 15 s, a 1 KiB exchange moves nftables' counter (moving) or leaves it still."""
        last = step()
        for _ in range(30):
            time.sleep(0.5)
            now = step()
            if (now != last) == moving:
                return True
            last = now
        return False

    assert settles(moving=False), "the connection never reached the fast path"
    t.lab.run(t.backend, "nft", "-f", "-", input=BLOCK_SYN)
    for _ in range(40):
        if health() == "down":
            break
        time.sleep(0.25)
    assert health() == "down"
    assert settles(moving=True), "a flow to a backend marked down stayed on the fast path"
    t.lab.run(t.backend, "nft", "delete", "table", "inet", "xgtest")
    for _ in range(40):
        if health() == "up":
            break
        time.sleep(0.25)
    assert health() == "up"
    assert settles(moving=False), "the flow did not come back to the fast path"
    c.stdin.write("close\n")
    c.stdin.flush()
    assert c.wait(timeout=10) == 0
    os.killpg(daemon.pid, signal.SIGTERM)
    daemon.wait(timeout=20)
