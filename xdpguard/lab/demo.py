"""The demo: a protective IP under attack, with and without xdpguard, side by side.

    python -m xdpguard.lab.demo [--duration S] [--unprotected-duration S] [--kinds K,K] [--quick]

Brings the namespace lab up (`xdpguard lab up`: client, attacker, the "internet" bridge, the
protector and a hidden backend; 198.18.0.0/15 and 2001:db8::/32, no route off the machine) and
gives the backend the limits of a small real server (topology.shape_backend: a 2 Mbit tbf link
from the protector, and an nft counter of the attack-marked packets that reach it). With
protection: xdpguard attached with forwarding, the attacker's own address blocked, SYN
authentication, fragments dropped, a per-source and per-destination budget on udp/7; TCP state
validation is on by default. Each attack kind (attack.py: spoofed sources from 198.18.128.0/17 at
the forwarded ports tcp/80 and udp/7, trafgen, bounded by count and time) runs while the
legitimate client opens a new connection per request to http through the protective IP.
Without protection: xdpguard detached and the same ports forwarded by a plain nftables DNAT with
the kernel's default sysctls (topology.plain_forward) — not monitor mode, whose forwarding still
sets nf_conntrack_tcp_loose=0 and so keeps an ACK flood off the backend by itself. Prints, side by
side, the client's success rate, req/s, share of its no-attack rate and p50/p99, the attack pps,
XDP's drops per reason and the attack packets that reached the backend; always removes the lab
(also on Ctrl-C or failure).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time

from . import attack, demo_cluster, probe, topology

PROBE_TIMEOUT_S = 3.0  # ≥ one SYN retransmission (1 s): SYN authentication admits real clients
SYN_THRESHOLD = 500  # SYNs/s to the protective IP before source authentication starts
UDP_SRC_PPS, UDP_DST_PPS = 20, 200  # the echo service's budget: per source, and from everyone
#: Every attack at a forwarded service port (tcp/80, udp/7) from spoofed 198.18.128.0/17 sources.
DEFAULT_KINDS = ("syn-flood:80", "ack-flood", "xmas-flood", "spoofed-udp:7", "frag-flood", "service-mix")
LAB_ONLY = {"syn-flood", "spoofed-udp"}  # spoof from 198.18.128.0/17 only


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def counters() -> dict[tuple[str, str], int]:
    p = topology.xg(topology.ns_name("prot"), "status", topology.PROT_IFACE, "--json", check=False)
    if p.returncode != 0:  # detached: no XDP, nothing counted
        return {}
    st = json.loads(p.stdout)
    return {(c["kind"], c["reason"]): c["packets"] for c in (st[0]["counters"] if st else [])}


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def top_available() -> bool:
    try:
        p = subprocess.run(
            [*topology.xdpguard_argv(), "top", "--help"], capture_output=True, timeout=20, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


def _show_top_until(done: threading.Event) -> None:
    """`xdpguard top --once` snapshots, once a second, while the attack runs (TTY only)."""
    while not done.wait(1.0):
        p = topology.xg(topology.ns_name("prot"), "top", "--once", check=False, timeout=20)
        if p.returncode != 0:
            return
        sys.stdout.write("\x1b[2J\x1b[H" + p.stdout)
        sys.stdout.flush()


def _kind_port(kind: str) -> tuple[str, int | None]:
    """'syn-flood:80' → ('syn-flood', 80): an attack aimed at one port."""
    name, _, port = kind.partition(":")
    return name, int(port) if port else None


def _attack(name: str, duration: float, port: int | None) -> attack.AttackResult:
    if name in LAB_ONLY:  # the same flood, spoofed from the lab range only
        return attack.run(name, duration=duration, port=port, lab_only=True)
    return attack.run(name, duration=duration, port=port)


def one_round(kind: str, duration: float, show_top: bool) -> dict:
    """One bounded attack with the legitimate client probing through it; returns the numbers."""
    before, back0 = counters(), topology.backend_counts()
    results: dict = {}
    name, port = _kind_port(kind)

    def run_attack() -> None:
        try:
            results["attack"] = _attack(name, duration, port)
        except Exception as exc:  # reported below, never hangs the demo
            results["attack_error"] = str(exc)

    t = threading.Thread(target=run_attack, daemon=True)
    t.start()
    time.sleep(min(0.5, duration / 4))  # let the flood ramp up
    done = threading.Event()
    top = threading.Thread(target=_show_top_until, args=(done,), daemon=True) if show_top else None
    if top:
        top.start()
    probe_s = max(0.5, duration - min(0.5, duration / 4) - 0.3)
    results["probe"] = probe.in_lab("http", 100_000, timeout=PROBE_TIMEOUT_S, interval=0.005, duration=probe_s)
    t.join(timeout=duration + 30)
    done.set()
    if top:
        top.join(timeout=5)
    time.sleep(0.2)  # the tbf queue drains into the backend's counter
    results["drops"] = delta(counters(), before)
    back = topology.backend_counts()
    results["backend"] = back.get("attack", 0) - back0.get("attack", 0)
    return results


def _fmt_probe(r: probe.ProbeResult | None) -> str:
    if r is None:
        return f"{'-':>7} {'-':>6} {'-':>7}"
    lat = f"{r.p50_ms:6.1f} {r.p99_ms:7.1f}" if r.p50_ms is not None else f"{'-':>6} {'-':>7}"
    return f"{r.success_pct:6.1f}% {lat}"


def _rate(r: probe.ProbeResult | None) -> float:
    return r.ok / r.elapsed_s if r and r.elapsed_s else 0.0


def _fmt_rate(r: probe.ProbeResult | None) -> str:
    return f"{_rate(r):6.0f}" if r and r.elapsed_s else f"{'-':>6}"


def _fmt_kept(r: probe.ProbeResult | None, base: probe.ProbeResult) -> str:
    return f"{100.0 * _rate(r) / _rate(base):5.0f}%" if r and _rate(base) else f"{'-':>6}"


def _fmt_pps(res: dict) -> str:
    a = res.get("attack")
    return f"{a.pps:>8,.0f}" if a else f"{'error':>8}"


def _fmt_backend(res: dict) -> str:
    a = res.get("attack")
    n = res.get("backend", 0)
    pct = f"{100.0 * n / a.sent:5.1f}%" if a and a.sent else f"{'-':>6}"
    return f"{n:>8} {pct}"


def _fmt_drops(drops: dict, kind: str = "drop") -> str:
    parts = [f"{reason} {n}" for (k, reason), n in sorted(drops.items()) if k == kind]
    return ", ".join(parts) or "none"


def run_demo(kinds: list[str], duration: float, unprotected_duration: float) -> int:
    show_top = sys.stdout.isatty() and top_available()
    _say(
        "xdpguard demo: a protective IP under attack, in a namespace lab (this machine's own interfaces "
        "are never touched)"
    )
    _say("\n== lab up: client, attacker, internet bridge, protector (XDP on xgp0), hidden backend")
    up = topology.up(protected=True)
    for n in up.notes:
        _say(f"note: {n}")
    topology.shape_backend()
    _say(
        f"protective IP {topology.PROT4} / {topology.PROT6}; XDP mode {up.xdp_mode}; HTTP on tcp 80 through "
        f"HAProxy, forwarding tcp 7, udp 7 to the hidden backend {topology.BACKEND4}"
    )
    _say(
        f"the backend is a small server: its link from the protector is a {topology.BACKEND_RATE} token bucket "
        "(tbf, 20 ms queue); it counts the attack packets that reach it (nft, DSCP-marked by the attacker)"
    )
    prot = topology.ns_name("prot")
    _say(
        "every attack: spoofed sources from 198.18.128.0/17 at the service ports (tcp/80, udp/7), trafgen, "
        "bounded by count and time"
    )
    steps = [
        ("block", "add", topology.ATTACKER4, topology.ATTACKER6),
        ("syn", "set", "--threshold", str(SYN_THRESHOLD)),
        ("fragments", "drop"),
        (
            "limit",
            "set",
            "--port",
            f"udp:{topology.ECHO_PORT}",
            "--src-pps",
            str(UDP_SRC_PPS),
            "--dst-pps",
            str(UDP_DST_PPS),
        ),
    ]
    for args in steps:
        _say("$ xdpguard " + " ".join(args))
        topology.xg(prot, *args)
    _say("(TCP state validation is on by default: non-SYN TCP of no recorded connection is dropped as tcpstate)")
    base = probe.in_lab("http", 100_000, timeout=PROBE_TIMEOUT_S, interval=0.005, duration=max(1.0, duration - 0.8))
    _say(f"legitimate client before any attack (a new TCP connection per request): {probe.describe(base)}")

    rows: dict[str, dict] = {}
    _say(
        f"\n== with protection: each attack for {duration:g} s while the client keeps requesting "
        f"http://{topology.PROT4}/"
    )
    for kind in kinds:
        res = one_round(kind, duration, show_top)
        rows[kind] = {"with": res}
        a = res.get("attack")
        _say(f"{kind:<14} {attack.describe(a) if a else 'attack failed: ' + res.get('attack_error', '?')}")
        _say(f"{'':<14} client: {probe.describe(res['probe'])}")
        _say(f"{'':<14} XDP drops: {_fmt_drops(res['drops'])}; attack packets at the backend: {res['backend']}")

    _say(
        f"\n== without protection: xdpguard detached; the same ports forwarded by a plain nftables DNAT with the "
        f"kernel's default sysctls (what this box is without xdpguard), the same backend link; "
        f"{unprotected_duration:g} s per attack"
    )
    topology.unprotect()
    topology.plain_forward()
    nobase = probe.in_lab("http", 100_000, timeout=PROBE_TIMEOUT_S, interval=0.005, duration=max(1.0, duration - 0.8))
    _say(f"legitimate client without protection, before any attack: {probe.describe(nobase)}")
    for kind in kinds:
        res = one_round(kind, unprotected_duration, show_top)
        rows[kind]["without"] = res
        _say(
            f"{kind:<14} {_fmt_pps(res).strip()} pps; client: {probe.describe(res['probe'])}; "
            f"attack packets at the backend: {res['backend']}"
        )

    _say(
        "\n== summary: the legitimate client opens a new connection per request to http://"
        f"{topology.PROT4}/; ok = answered within {PROBE_TIMEOUT_S:g} s; req/s and kept = its rate and its share of "
        "the no-attack rate; p50/p99 in ms; backend = attack packets that reached the backend (and their share)"
    )
    _say(f"{'attack':<14} | {'with xdpguard':^58} | {'without (detached, plain DNAT)':^58} | XDP drops (with)")
    head = f"{'pps':>8} {'ok':>7} {'req/s':>6} {'kept':>6} {'p50':>6} {'p99':>7} {'backend':>8} {'%':>6}"
    _say(f"{'':<14} | {head} | {head} |")
    for kind in kinds:
        cols = []
        for r, b in ((rows[kind]["with"], base), (rows[kind].get("without", {}), nobase)):
            p = r.get("probe")
            ok, lat = (_fmt_probe(p).split(maxsplit=1) + [""])[:2] if p else ("-", "- -")
            cols.append(
                f"{_fmt_pps(r) if r else '-':>8} {ok:>7} {_fmt_rate(p)} {_fmt_kept(p, b)} {lat:>14} "
                f"{_fmt_backend(r) if r else '-':>15}"
            )
        _say(f"{kind:<14} | {cols[0]} | {cols[1]} | {_fmt_drops(rows[kind]['with']['drops'])}")
    for label, b in (("with xdpguard", base), ("without", nobase)):
        _say(f"no attack, {label}: {_fmt_probe(b).strip()} ms, {_fmt_rate(b).strip()} req/s")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="xdpguard.lab.demo")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per attack with protection")
    ap.add_argument("--unprotected-duration", type=float, default=5.0, help="seconds per attack without")
    ap.add_argument(
        "--kinds", default=",".join(DEFAULT_KINDS), help="comma-separated attack kinds, KIND[:PORT] to aim at one port"
    )
    ap.add_argument("--quick", action="store_true", help="2 s per attack with and without (tests)")
    ap.add_argument(
        "--no-cluster",
        dest="cluster",
        action="store_false",
        help="skip the second act (three nodes behind one anycast IP, one dies mid-attack)",
    )
    a = ap.parse_args(argv)
    kinds = [k for k in a.kinds.split(",") if k]
    bad = [
        k for k in kinds if k.partition(":")[0] not in attack.KINDS or (":" in k and not k.partition(":")[2].isdigit())
    ]
    if bad:
        ap.error(f"unknown attack kinds: {', '.join(bad)}")
    duration, unprot = (2.0, 2.0) if a.quick else (a.duration, a.unprotected_duration)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    status = 1
    try:
        status = run_demo(kinds, min(duration, 60.0), min(unprot, 60.0))
    except KeyboardInterrupt:
        _say("\ndemo: interrupted")
        status = 130
    except Exception as exc:
        _say(f"\ndemo: failed: {exc}")
        status = 1
    finally:
        _say("\n== lab down")
        try:
            res = topology.down()
            _say(
                f"removed {len(res.removed_namespaces)} namespaces, stopped {len(res.killed_pids)} processes; "
                "nothing left behind"
            )
        except KeyboardInterrupt:
            topology.down()
    if status == 0 and a.cluster:
        status = _cluster_act(max(duration, 3.0))
    return status


def _cluster_act(duration: float) -> int:
    status = 1
    try:
        demo_cluster.run(_say, min(duration, 20.0))
        status = 0
    except KeyboardInterrupt:
        _say("\ndemo: interrupted")
        status = 130
    except Exception as exc:
        _say(f"\ndemo: the cluster act failed: {exc}")
    finally:
        _say("\n== cluster lab down")
        try:
            demo_cluster.down(_say)
        except KeyboardInterrupt:
            demo_cluster.down(_say)
    return status


if __name__ == "__main__":
    sys.exit(main())
