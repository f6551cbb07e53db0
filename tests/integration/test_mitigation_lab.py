"""Automatic mitigation in the lab, with a real attack tool (Debian's hping3): a spoofed UDP flood
of fixed length and payload (hping3 --udp -d N) at the FORWARDED udp/7 (→ backend echo) while a
real UDP client and a real HTTP client keep using the protective IP.

The same flood runs twice: with `xdpguard run` (mitigation on) and with no daemon (what the lab
does without automatic mitigation: UDP at a forwarded port passes as `clean`). Flood packets are
counted at the backend by their IP length (an nft counter in the backend's namespace; the
clients' requests are far shorter).
Measured and printed: detection latency (flood start → filter installed), time to lift (flood end →
filter removed), share of flood packets reaching the backend with and without.

Spoofed sources stay inside 198.18.0.0/15 (several hping3 -a, never --rand-source). Every hping3 run
is bounded by packet count (-c) and by time (timeout)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from cli_assert import CliLab, lab_up, needs_hping3
from xdpguard.lab import probe, topology

pytestmark = [pytest.mark.kernel, pytest.mark.serial]  # asserts a flood's rate, a loss share or a timing

SPOOFED = ("198.18.200.1", "198.18.201.2", "198.18.202.3", "198.18.203.4")
PER_SOURCE = 20_000  # packets per hping3
FLOOD_TIMEOUT_S = 4
PAYLOAD = 120
COUNT_TABLE = "xgmit"


# The attach grace period (XDPGUARD_TCP_GRACE; 10 s by default): the lab waits it out.
GRACE_S = 2


class Lab(CliLab):
    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path, "m", GRACE_S)

    def prot_xg(self, *args: str) -> subprocess.CompletedProcess:
        return self.in_ns("prot", *topology.xdpguard_argv(), *args)

    @contextlib.contextmanager
    def daemon(self, log_name: str, *args: str):
        """`xdpguard run --interval 5 ARGS` in the protector, its output in tmp/LOG_NAME; stopped
        (SIGTERM, reaped) when the block ends."""
        with open(self.tmp / log_name, "w") as log:
            argv = ["ip", "netns", "exec", self.ns("prot"), *topology.xdpguard_argv(), "run", "--interval", "5", *args]
            daemon = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL
            )
            try:
                yield daemon
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=30)

    def at_backend(self) -> int:
        p = self.in_ns("backend", "nft", "-j", "list", "counter", "inet", COUNT_TABLE, "flood")
        assert p.returncode == 0, p.stderr
        return next(i["counter"]["packets"] for i in json.loads(p.stdout)["nftables"] if "counter" in i)

    def mitigations(self) -> list[dict]:
        p = self.prot_xg("mitigations", "list", "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)["mitigations"]

    def probe(self, proto: str, duration: float, out: dict) -> None:
        argv = probe.command(topology.PROT4, proto, count=100_000, timeout=1, interval=0.005, duration=duration)
        p = self.in_ns("client", *argv, timeout=duration + 30)
        out[proto] = json.loads(p.stdout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    needs_hping3()
    with lab_up(Lab(tmp_path_factory.mktemp("mitigation"))) as lb:
        lb.up_at = time.monotonic()
        # These tests are about the mitigation engine and nft's connection limits: no admission
        # budget for unverified UDP in front of them (issue 25; by default it drops such a flood
        # past 1,000 pps per service before either sees it: test_verified_lab shows that).
        p = lb.prot_xg("verify", "set", "--no-budget")
        assert p.returncode == 0, p.stderr
        rules = (
            f"table inet {COUNT_TABLE} {{\n  counter flood {{}}\n"
            "  chain pre {\n    type filter hook prerouting priority -450; policy accept;\n"
            f"    ip length {20 + 8 + PAYLOAD} udp dport {topology.ECHO_PORT} counter name flood\n  }}\n}}\n"
        )
        p = subprocess.run(
            ["ip", "netns", "exec", lb.ns("backend"), "nft", "-f", "-"],
            input=rules,
            text=True,
            capture_output=True,
            timeout=30,
        )
        assert p.returncode == 0, p.stderr
        p = lb.prot_xg("stats", topology.PROT_IFACE, "--sample-every", "32", "--interval", "0.1")
        assert p.returncode == 0, p.stderr
        yield lb


def _hping_per_source(lab: Lab, timeout_s: float, *flags: str) -> list[subprocess.Popen]:
    """One hping3 per spoofed source (DSCP CS1) at the protective IP, bounded by `timeout_s` and
    the count in `flags`."""
    return [
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
                "-o",
                "0x20",
                "-a",
                src,
                topology.PROT4,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        for src in SPOOFED
    ]


def _flood(lab: Lab, started: list) -> None:
    started.append(time.time())
    procs = _hping_per_source(
        lab,
        FLOOD_TIMEOUT_S,
        "--udp",
        "-d",
        str(PAYLOAD),
        "-p",
        str(topology.ECHO_PORT),
        "-c",
        str(PER_SOURCE),
        "-i",
        "u50",
    )
    for p in procs:
        p.wait(timeout=FLOOD_TIMEOUT_S + 10)
    started.append(time.time())


def _round(lab: Lab, watch=None) -> dict:
    """One flood with clients probing; returns what moved and when."""
    before, back0 = lab.drops(), lab.at_backend()
    times: list = []
    probes: dict = {}
    ths = [threading.Thread(target=lab.probe, args=(proto, FLOOD_TIMEOUT_S + 1, probes)) for proto in ("udp", "http")]
    for t in ths:
        t.start()
    time.sleep(0.5)
    flood = threading.Thread(target=_flood, args=(lab, times))
    flood.start()
    seen = watch(times) if watch else {}
    flood.join()
    for t in ths:
        t.join()
    time.sleep(0.5)
    after, back1 = lab.drops(), lab.at_backend()
    moved = {r: n - before.get(r, 0) for r, n in after.items() if n > before.get(r, 0)}
    return {"start": times[0], "end": times[1], "moved": moved, "at_backend": back1 - back0, "probes": probes, **seen}


def _sent(moved: dict, at_backend: int) -> int:
    return sum(moved.values()) + at_backend  # every flood packet was dropped in XDP or went on


def test_udp_flood_mitigated_within_a_second_and_lifted(lab):
    # without automatic mitigation (no daemon): the flood passes as clean to the backend
    base = _round(lab)
    share_without = base["at_backend"] / max(1, base["at_backend"] + sum(base["moved"].values()))
    _flush_conntrack(lab)  # the unmitigated flood's flows (up to the table's limit) must not starve the next round

    with lab.daemon("run.log", "--duration", "90", "--mitigation-pps", "2000", "--mitigation-hold", "3"):
        # peacetime: real clients only, so the daemon has a baseline
        warm: dict = {}
        ths = [threading.Thread(target=lab.probe, args=(proto, 8, warm)) for proto in ("udp", "http")]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        assert not lab.mitigations()

        def watch(times) -> dict:
            while not times:
                time.sleep(0.01)
            deadline = times[0] + FLOOD_TIMEOUT_S + 2
            while time.time() < deadline:
                m = lab.mitigations()
                if m:
                    return {"installed": time.time(), "mitigation": m[0]}
                time.sleep(0.05)
            return {}

        r = _round(lab, watch)
        assert "mitigation" in r, open(lab.tmp / "run.log").read()
        m = r["mitigation"]
        t_lift = None
        deadline = r["end"] + 15
        while time.time() < deadline:
            if not lab.mitigations():
                t_lift = time.time()
                break
            time.sleep(0.2)
    out = open(lab.tmp / "run.log").read()
    recs = [
        json.loads(ln)
        for ln in (Path(lab.env.get("XDPGUARD_STATE_DIR", "/var/lib/xdpguard")) / "events.jsonl")
        .read_text()
        .splitlines()
        if '"mitigation"' in ln and m["id"] in ln
    ]
    steps = recs[-1]["steps"]
    t_install = next(s["t"] for s in steps if s["step"] == "install")
    t_lifted = next((s["t"] for s in steps if s["step"] == "lift"), None)
    latency = t_install - r["start"]
    share_with = r["at_backend"] / max(1, r["at_backend"] + sum(r["moved"].values()))
    print(
        f"\nUDP flood (hping3 --udp -d {PAYLOAD}, {len(SPOOFED)} spoofed sources): sent ~{_sent(r['moved'], r['at_backend'])} "
        f"in {r['end'] - r['start']:.1f} s; detection+install {latency:.2f} s after the flood started "
        f"(seen by the CLI {r['installed'] - r['start']:.2f} s); lifted {t_lifted - r['end'] if t_lifted else -1:.1f} s "
        f"after it ended; flood packets at the backend: with mitigation {r['at_backend']} ({share_with:.1%}), "
        f"without {base['at_backend']} ({share_without:.1%}); drops {r['moved']}; fingerprint {m['fingerprint']}; "
        f"clients under flood: {json.dumps({k: (v['success_pct'], v['p99_ms']) for k, v in r['probes'].items()})}"
    )
    assert m["filter"]["length"] == [14 + 20 + 8 + PAYLOAD] * 2 and m["filter"]["dport"] == [7, 7], m
    assert latency <= 3.0, (latency, out)  # the issue: 1 s (measured 0.45-0.71 s; 1.64 s once with two suites running)
    assert r["moved"].get("mitigation", 0) > 0.5 * _sent(r["moved"], r["at_backend"]), r
    assert share_with < share_without / 2, (share_with, share_without)
    assert r["probes"]["udp"]["success_pct"] >= 90 and r["probes"]["http"]["success_pct"] >= 90, r["probes"]
    assert t_lift is not None and t_lifted is not None and t_lifted - r["end"] <= 10, (t_lifted, r["end"], out)
    # dynamic state: not in export, and the kernel table holds no mitigation filter any more
    exp = lab.prot_xg("export")
    assert exp.returncode == 0 and "mitigate" not in exp.stdout


def test_client_through_the_onset_of_a_flood_without_a_baseline(lab):
    """A fresh daemon (no peacetime baseline) and a real HTTP client already running when a
    spoofed SYN flood below the SYN threshold starts at the forwarded tcp/80. The flood gets its
    filter (flags S) or, with too little peacetime evidence, a refusal; what passes after it is the client itself, above the (low) trigger — its
    established connections' segments must not be taken for flood, or the "adapt: widen" filter
    sweeps the client in (seen in the lab: "length 54-144, ttl 64")."""
    time.sleep(max(0.0, lab.up_at + GRACE_S + 1 - time.monotonic()))  # XDP validates TCP state after the grace
    probes: dict = {}
    floods: list[subprocess.Popen] = []
    with lab.daemon("onset.log", "--duration", "60", "--mitigation-pps", "500", "--mitigation-hold", "3"):
        try:
            time.sleep(1.5)  # the daemon's first round
            client = threading.Thread(target=lab.probe, args=("http", 9, probes))
            client.start()
            time.sleep(2)
            floods = _hping_per_source(lab, 6, "-S", "-p", "80", "-c", "5000", "-i", "u1000")
            for p in floods:
                p.wait(timeout=20)
            client.join()
            recs = lab.mitigations()
        finally:
            for p in floods:
                if p.poll() is None:
                    p.kill()
    out = open(lab.tmp / "onset.log").read()
    http = probes["http"]
    print(
        f"\nclient through a SYN-flood onset, no baseline: {http['ok']}/{http['sent']} answered "
        f"({http['success_pct']:.1f} %), p99 {http['p99_ms']} ms; mitigations: "
        f"{[(r['fingerprint'], r['last_step']) for r in recs]}\n{out}"
    )
    # the flood was taken on: a filter when the few seconds of peacetime gave enough evidence, else
    # a refusal saying so (0 samples is no evidence, issue 25) — never one on the client's shape
    assert "mitigation" in out and ("install" in out or "no peacetime baseline" in out), out
    assert "widen" not in out, out
    assert all(r["filter"]["tcp_flags"] and r["filter"]["tcp_flags"][1] & 0x02 for r in recs), recs
    assert http["success_pct"] >= 95, http


def _levels(lab: Lab) -> dict:
    p = lab.prot_xg("level", "show", "--json")
    assert p.returncode == 0, p.stderr
    return {a["protected"]: (a["level"], a["adjusted"]) for a in json.loads(p.stdout)["addresses"]}


def _diff_of_export(lab: Lab) -> str:
    path = lab.tmp / "export.toml"
    path.unlink(missing_ok=True)
    p = lab.prot_xg("export", "-o", str(path))
    assert p.returncode == 0, p.stderr
    p = lab.prot_xg("diff", "-f", str(path))
    assert p.returncode == 0, p.stderr
    return path.read_text(), p.stdout.strip()


def test_attach_applies_normal_and_levels_round_trip(lab):
    """`lab up` is attach + forward add: every address is at level normal, the forwarded UDP port
    has the level's budget; `level strict`, an operator override, and export re-applying to nothing."""
    assert _levels(lab) == {topology.PROT4: ("normal", False), topology.PROT6: ("normal", False)}
    st = json.loads(lab.prot_xg("status", "--json").stdout)[0]
    assert st["levels"] == {topology.PROT4: "normal", topology.PROT6: "normal"}
    lim = lab.prot_xg("limit", "show", "--json")
    assert "udp" in lim.stdout and "10000" in lim.stdout, lim.stdout
    text, diff = _diff_of_export(lab)
    addrs = [a for i in tomllib.loads(text)["interface"] for a in i["address"]]  # (the HTTP services have levels too)
    assert [a["level"] for a in addrs] == ["normal", "normal"] and diff == "no changes", (text, diff)
    # normal drops fragments: attach itself sets it (a spoofed fragment flood starved the client through
    # the reassembly queues when only `level normal` did).
    assert 'fragments = "drop"' in text, text
    frag = lab.prot_xg("fragments", "show", "--json")
    assert frag.returncode == 0 and json.loads(frag.stdout)["drop"] is True, frag.stdout
    try:
        assert lab.prot_xg("level", "strict", "--protected", topology.PROT4).returncode == 0
        assert _levels(lab)[topology.PROT4] == ("strict", False)
        assert lab.prot_xg("limit", "set", "--src-pps", "777", "--protected", topology.PROT4).returncode == 0
        assert _levels(lab)[topology.PROT4] == ("strict", True)  # the operator's setting stays, and says so
        text, diff = _diff_of_export(lab)
        assert 'level = "strict"' in text and "src_pps = 777" in text and diff == "no changes", (text, diff)
        bad = lab.prot_xg("level", "paranoid")
        assert bad.returncode == 2 and bad.stderr.startswith("xdpguard: error:"), bad.stderr
    finally:
        assert lab.prot_xg("level", "normal").returncode == 0
    assert _levels(lab)[topology.PROT4] == ("normal", False)


def _flush_conntrack(lab: Lab) -> None:
    p = lab.in_ns("prot", sys.executable, "-c", "from pyroute2 import Conntrack; Conntrack().flush()")
    assert p.returncode == 0, p.stderr


def _conntrack_count(lab: Lab) -> int:
    return int(lab.in_ns("prot", "cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout.strip() or 0)


def _t50_mix(lab: Lab, packets: int) -> tuple[int, dict]:
    """t50's protocol mix (--protocol T50: ICMP, IGMP, TCP, UDP, RIP, DCCP, RSVP, IPsec, EIGRP,
    OSPF) at the protective IP, bounded by count and time; t50 has no source range, so its
    sources are random — they stay in the lab (only connected routes). → (conntrack entries of
    the protector after it, XDP drops it caused)."""
    _flush_conntrack(lab)
    before = lab.drops()
    p = lab.in_ns(
        "attacker",
        "timeout",
        "-s",
        "INT",
        "10",
        "t50",
        topology.PROT4,
        "--threshold",
        str(packets),
        "--protocol",
        "T50",
        "--dport",
        "80",
        "--tos",
        "32",
        timeout=30,
    )
    assert "Sending" in p.stdout + p.stderr, p.stdout + p.stderr
    after = lab.drops()
    return _conntrack_count(lab), {r: n - before.get(r, 0) for r, n in after.items() if n > before.get(r, 0)}


def test_a_protocol_mix_cannot_fill_the_protectors_conntrack(lab):
    """IP protocols other than TCP/UDP/ICMP are forwarded by nothing; each spoofed source of one
    was a generic conntrack entry (600 s) of the protector: t50's mix filled the lab's 262,144
    entries in 3 s. The normal level (attach's default) drops them in XDP as `protocol`; loose
    lets them pass, which shows the harm."""
    if shutil.which("t50") is None:
        pytest.fail("t50 is missing; run scripts/setup.sh") if os.environ.get("CI") else pytest.skip("no t50")
    n = 60_000
    assert _levels(lab)[topology.PROT4][0] == "normal"
    ct_normal, drops_normal = _t50_mix(lab, n)
    assert lab.prot_xg("level", "loose").returncode == 0
    try:
        ct_loose, drops_loose = _t50_mix(lab, n)
    finally:
        assert lab.prot_xg("level", "normal").returncode == 0
        _flush_conntrack(lab)
    print(
        f"\nt50 --protocol T50, {n:,} packets: conntrack entries after it at normal {ct_normal:,} "
        f"(drops {drops_normal}), at loose {ct_loose:,} (drops {drops_loose})"
    )
    assert drops_normal.get("protocol", 0) > n / 3, drops_normal
    assert drops_loose.get("protocol", 0) == 0, drops_loose
    assert ct_normal < 1_000 and ct_loose > 10 * max(ct_normal, 100), (ct_normal, ct_loose)


def _udp_flood_conntrack_peak(lab: Lab) -> tuple[int, int]:
    """(peak conntrack entries during a spoofed UDP flood with changing source ports, flood packets sent)."""
    _flush_conntrack(lab)
    times: list = []
    t = threading.Thread(target=_flood, args=(lab, times))
    t.start()
    peak = 0
    while t.is_alive():
        peak = max(peak, _conntrack_count(lab))
        time.sleep(0.1)
    t.join()
    return peak, len(SPOOFED) * PER_SOURCE


def test_connection_limits_ban_offenders_and_cap_conntrack(lab):
    # a conntrack budget on the forwarded services: a spoofed UDP flood cannot fill the table
    without, sent = _udp_flood_conntrack_peak(lab)
    p = lab.prot_xg(
        "connlimit", "set", "--protected", topology.PROT4, "--conntrack-budget", "2000", "--udp-timeout", "5"
    )
    assert p.returncode == 0, p.stderr
    try:
        table = lab.in_ns("prot", "nft", "list", "table", "inet", "xdpguard").stdout
        assert "chain connlimit" in table and "ct count over 2000" in table and "ct timeout set" in table, table
        # desired state: export has it, re-applies to nothing, and an apply without it removes the chain
        text, diff = _diff_of_export(lab)
        data = tomllib.loads(text)  # (the layout is tomli-w's: checked as TOML, not as text)
        addr = next((a for a in data["interface"][0].get("address", []) if "connlimit" in a), {})
        assert (
            addr.get("connlimit") == {"conntrack_budget": 2000, "udp_timeout": 5, "ban": 60} and diff == "no changes"
        ), (text, diff)
        del addr["connlimit"]
        bare = lab.tmp / "no-connlimit.toml"
        bare.write_text(tomli_w.dumps(data))
        assert lab.prot_xg("apply", "-f", str(bare)).returncode == 0
        assert "chain connlimit" not in lab.in_ns("prot", "nft", "list", "table", "inet", "xdpguard").stdout
        p = lab.prot_xg("apply", "-f", str(lab.tmp / "export.toml"))
        assert p.returncode == 0 and "connlimit" in p.stdout, (p.stdout, p.stderr)
        assert "ct count over 2000" in lab.in_ns("prot", "nft", "list", "table", "inet", "xdpguard").stdout
        with_budget, _ = _udp_flood_conntrack_peak(lab)
        tcp: dict = {}
        lab.probe("http", 2, tcp)  # the budget is per service: the web service is untouched
    finally:
        assert lab.prot_xg("connlimit", "clear").returncode == 0
    print(
        f"\nconntrack entries under a spoofed UDP flood ({sent} packets, changing source ports): "
        f"without a budget {without}, with --conntrack-budget 2000 {with_budget}"
    )
    assert without > 5000, without
    assert with_budget <= 2300, with_budget  # the budget, plus the clients' and the other services' entries
    assert tcp["http"]["success_pct"] >= 90, tcp

    # a per-source new-connection rate: the offender lands in the set, `run` bans it in XDP
    assert (
        lab.prot_xg(
            "connlimit", "set", "--protected", topology.PROT4, "--new-per-source", "20", "--ban", "20"
        ).returncode
        == 0
    )
    try:
        with lab.daemon("run-connlimit.log", "--duration", "60", "--no-mitigate", "--detect-interval", "0.5"):
            time.sleep(2)
            probes = {}
            lab.probe("tcp", 4, probes)  # tcp/7: a NAT forward (tcp/80 is HAProxy's, which nft connlimit does not see)
            bans = json.loads(lab.prot_xg("ban", "list", "--json").stdout)
    finally:  # after the daemon stopped: it would ban the client again from the offender set
        lab.prot_xg("connlimit", "clear")
        lab.prot_xg("ban", "del", topology.CLIENT4)
    out = (lab.tmp / "run-connlimit.log").read_text()
    mine = [b for b in bans["bans"] if b["source"] == topology.CLIENT4]
    print(
        f"client opening connections as fast as it can: {probes['tcp']['ok']} of {probes['tcp']['sent']} "
        f"answered in 4 s; ban {mine}"
    )
    assert mine and mine[0]["reason"] == "connlimit", (bans, out)
    assert "over a connection limit" in out, out
    assert probes["tcp"]["ok"] < probes["tcp"]["sent"], probes


ECHO_CHECK = r"""
set -e
ip link set lo up
"$PY" -m xdpguard.lab.echo serve --port 7007 --duration 20 > "$LOG" 2>&1 &
server=$!
for i in $(seq 50); do "$PY" -m xdpguard.lab.echo probe --proto udp --dst 127.0.0.1 --port 7007 --timeout 0.2 \
    >/dev/null 2>&1 && break; sleep 0.1; done
# every reply refused on the way out (sendto fails: EPERM here; EAGAIN/ENOBUFS under a lab flood)
nft -f - <<'NFT'
table inet xgecho {
 chain o {
  type filter hook output priority 0; policy accept;
  udp sport 7007 drop
 }
}
NFT
"$PY" - <<'PY'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(3000):
    s.sendto(b"x" * 64, ("127.0.0.1", 7007))
idle = [socket.create_connection(("127.0.0.1", 7007)) for _ in range(600)]  # never send: fds kept open
PY
sleep 0.5
nft delete table inet xgecho
"$PY" -m xdpguard.lab.echo probe --proto udp --dst 127.0.0.1 --port 7007 --timeout 2
"$PY" -m xdpguard.lab.echo probe --proto tcp --dst 127.0.0.1 --port 7007 --timeout 2
kill -0 $server
kill $server
"""


def test_lab_echo_survives_failing_replies_and_idle_connections(tmp_path):
    """Issue 25: the lab's backend echo went down under a UDP flood and never came back — a
    non-blocking sendto that fails (a full buffer, ENOBUFS, here EPERM from an nft drop on
    output) raised out of serve(). In a private network namespace (unshare -n): 3000 requests
    whose replies all fail, 600 idle TCP connections, then the echo still answers UDP and TCP."""
    log = tmp_path / "echo.log"
    p = subprocess.run(
        ["unshare", "-n", "bash", "-c", ECHO_CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PY": sys.executable, "LOG": str(log)},
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert p.returncode == 0, (p.stdout, p.stderr, log.read_text() if log.exists() else "")
    assert p.stdout.count("from 127.0.0.1|ping") == 2, p.stdout
