"""Section 6 of scripts/bench: what the layer-7 engine costs (issue 29).

The same small HTTP exchange three ways, side by side in one run, in one protector namespace:

    HAProxy + our rules   xdpguard's rendered config (stick tables, the level's limits, the
                          challenge ACLs, precise rules, per-prefix limits: all evaluated on every
                          request) with its thresholds lifted so that no rule fires on the bench's
                          one client: the cost of evaluating the rules, not of answering 429s
    plain HAProxy         the same HAProxy (2.6, master-worker), a bare reverse proxy
    nft DNAT              no proxy: the kernel's DNAT straight to the backend

The backend is a HAProxy answering `200 ok` itself (`http-request return`: never the bottleneck).
The client is wrk (one thread), once with a new connection per request (`Connection: close`) and
once with keep-alive. Figures: requests/s and CPU per request (µs): wrk's own CPU (rusage) +
every process of the protector's and the backend's namespaces (/proc) + ksoftirqd; on veth the
softirq work runs in those processes' contexts. Medians of interleaved rounds, with ratios:
absolute numbers on a shared machine mean little.

    .venv/bin/python scripts/bench_l7.py [--profile smoke|quick|full]   (standalone, prints JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_gen import ksoftirqd_cpu_s  # noqa: E402

from xdpguard.core.l7 import haproxy_config as hc  # noqa: E402
from xdpguard.core.l7 import spec  # noqa: E402
from xdpguard.core.l7.proc import Haproxy, load_secret  # noqa: E402
from xdpguard.core.l7.spec import ConnLimits, HttpService, RateLimit, Rule  # noqa: E402
from xdpguard.lab.netns import Lab  # noqa: E402

CLIENT, PROT, GW, BACKEND = "198.18.0.1", "198.18.0.2", "198.18.1.1", "198.18.1.2"
PORTS = {"HAProxy + our rules": 80, "plain HAProxy": 8080, "nft DNAT": 8081}
VARIANTS = tuple(PORTS)
MODES = {"new connection per request": ("-H", "Connection: close"), "keep-alive": ()}
# (rounds, seconds per measurement, wrk connections) per profile: quick is ~30 s in all
PROFILE = {"smoke": (1, 1.0, 16), "quick": (2, 2.0, 16), "full": (5, 5.0, 32)}

BACKEND_CFG = f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend be
    bind {BACKEND}:80
    http-request return status 200 content-type text/plain string "ok"
"""


def plain_config(run_dir: str) -> str:
    return (
        f"global\n    master-worker\n    stats socket {run_dir}/admin.sock mode 600 level admin expose-fd listeners\n"
        "    maxconn 4096\n    hard-stop-after 30s\n\ndefaults\n    mode http\n    timeout connect 5s\n"
        "    timeout client 30s\n    timeout server 30s\n\n"
        f"frontend plain_fe\n    bind ipv4@{PROT}:{PORTS['plain HAProxy']}\n    default_backend plain_be\n\n"
        f"backend plain_be\n    option forwardfor\n    server s0 {BACKEND}:80\n"
    )


DNAT = f"""table inet xgbenchl7 {{
  chain pre {{ type nat hook prerouting priority dstnat; ip daddr {PROT} tcp dport {PORTS["nft DNAT"]} dnat ip to {BACKEND}:80; }}
  chain post {{ type nat hook postrouting priority srcnat; ct status dnat ip daddr {BACKEND} masquerade; }}
}}
"""


def lifted() -> None:
    """The level's thresholds out of reach of one client (this process only): every rule stays in
    the config and is evaluated per request, none fires."""
    big = 1_000_000_000
    spec.PRESETS["normal"] = replace(
        spec.PRESETS["normal"],
        requests_per_10s=big,
        conns=ConnLimits(spec.MAX_CONNS, spec.MAX_CONNS),
        service_rate_per_s=big,
        backend_conns=1_000_000,
    )


def service() -> HttpService:
    """The lab's web service, shaped as an operator's: a challenged path, an API limit, an exempt path."""
    return HttpService(
        name="bench",
        listen=[PROT],
        backends=[f"{BACKEND}:80"],
        health_path="/",
        rules=[Rule("challenge", path_prefix="/private/")],
        limits=[RateLimit("/api/", spec.MAX_REQUESTS)],
        exempt=["/api/"],
    )


def _ns_cpu_s(ns: str) -> float:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout.split()
    tot = 0
    for pid in pids:
        try:
            st = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = st[st.rindex(")") + 2 :].split()
        tot += int(f[11]) + int(f[12])
    return tot / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wrk_once(client: str, nss: list[str], port: int, mode: str, seconds: float, conns: int) -> dict:
    c0, n0, k0 = _children_cpu_s(), sum(_ns_cpu_s(n) for n in nss), ksoftirqd_cpu_s()
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            client,
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{seconds:g}s",
            "--timeout",
            "2s",
            *MODES[mode],
            f"http://{PROT}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    cpu = (_children_cpu_s() - c0) + (sum(_ns_cpu_s(n) for n in nss) - n0) + (ksoftirqd_cpu_s() - k0)
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not m:
        raise RuntimeError(f"wrk said: {out.strip()[:300]}")
    n = int(m[1])
    took = float(m[2]) / (1000 if m[3] == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": n,
        "rps": n / took if took else 0.0,
        "cpu_us_per_req": cpu * 1e6 / max(1, n),
        "non_2xx": int(bad[1]) if bad else 0,
        "socket_errors": sum(map(int, errs.groups())) if errs else 0,
    }


def setup(lab: Lab, budget_s: float) -> tuple[str, list[str]]:
    client, prot, backend = lab.netns("l7c"), lab.netns("l7p"), lab.netns("l7b")
    lab.veth(client, "xgc0", prot, "xgp0")
    lab.veth(prot, "xgb1", backend, "xgb0")
    lab.addr(client, "xgc0", f"{CLIENT}/24")
    lab.addr(prot, "xgp0", f"{PROT}/24")
    lab.addr(prot, "xgb1", f"{GW}/24")
    lab.addr(backend, "xgb0", f"{BACKEND}/24")
    lab.sysctl(prot, "net.ipv4.ip_forward", 1)
    tmp = Path(tempfile.mkdtemp(prefix="xgl7b-"))  # short: HAProxy's socket paths are ≤ 107 bytes
    lab.defer("remove the bench's HAProxy dirs", shutil.rmtree, tmp, ignore_errors=True)
    (tmp / "backend.cfg").write_text(BACKEND_CFG)
    lab.popen(
        backend,
        "timeout",
        str(int(budget_s)),
        "haproxy",
        "-db",
        "-f",
        str(tmp / "backend.cfg"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lab.run(prot, "nft", "-f", "-", input=DNAT)
    ours, plain = Haproxy(tmp / "ours", prot), Haproxy(tmp / "plain", prot)
    for h in (ours, plain):
        h.run_dir.mkdir(mode=0o700)
        lab.defer("stop HAProxy", h.stop)
    lifted()
    svc = service()
    ours.apply(hc.render([svc], run_dir=str(ours.run_dir), secret=load_secret(tmp / "secret")))
    plain.apply(hc.Rendered(plain_config(str(plain.run_dir)), {}))
    end = time.monotonic() + 15  # the backend is up and HAProxy's health check has seen it
    while time.monotonic() < end:
        codes = [
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    client,
                    "curl",
                    "-s",
                    "-m",
                    "2",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    f"http://{PROT}:{p}/",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            for p in PORTS.values()
        ]
        if codes == ["200"] * len(PORTS):
            break
        time.sleep(0.3)
    else:
        raise RuntimeError(f"the three ways to the backend do not all answer 200: {codes}")
    return client, [prot, backend]


def section_l7(lab: Lab, profile: str) -> dict:
    rounds, seconds, conns = PROFILE[profile]
    budget = rounds * len(VARIANTS) * len(MODES) * (seconds + 5) + 120
    client, nss = setup(lab, budget)
    samples = {(v, m): [] for v in VARIANTS for m in MODES}
    for r in range(rounds):
        order = list(VARIANTS[r % 3 :] + VARIANTS[: r % 3])
        for mode in MODES:
            for v in order if r % 2 == 0 else order[::-1]:
                samples[(v, mode)].append(wrk_once(client, nss, PORTS[v], mode, seconds, conns))
    out: dict = {"rounds": rounds, "seconds": seconds, "wrk_conns": conns, "modes": {}}
    for mode in MODES:
        rows = {}
        for v in VARIANTS:
            ss = samples[(v, mode)]
            rows[v] = {
                "rps": statistics.median(s["rps"] for s in ss),
                "cpu_us_per_req": statistics.median(s["cpu_us_per_req"] for s in ss),
                "non_2xx": sum(s["non_2xx"] for s in ss),
                "socket_errors": sum(s["socket_errors"] for s in ss),
                "rounds": ss,
            }
        ours, plain, dnat = (rows[v] for v in VARIANTS)
        rows["ratios"] = {
            "rps ours/plain": ours["rps"] / plain["rps"],
            "rps ours/dnat": ours["rps"] / dnat["rps"],
            "rps plain/dnat": plain["rps"] / dnat["rps"],
            "cpu ours/plain": ours["cpu_us_per_req"] / plain["cpu_us_per_req"],
            "cpu ours/dnat": ours["cpu_us_per_req"] / dnat["cpu_us_per_req"],
            "cpu plain/dnat": plain["cpu_us_per_req"] / dnat["cpu_us_per_req"],
        }
        out["modes"][mode] = rows
    return out


def table(s: dict | None) -> str:
    """The section's markdown (empty when it did not run)."""
    if not s:
        return ""
    if "unavailable" in s:
        return f"\n\n**6. L7 cost**: not run here: {s['unavailable']}"
    L = [
        "",
        "",
        f"**6. L7 cost** (wrk, {s['wrk_conns']} connections, {s['seconds']:g} s × {s['rounds']} rounds; "
        "rules evaluated, none firing)",
        "",
        "| client | variant | requests/s | CPU µs/request | × plain (req/s, CPU) | × DNAT (req/s, CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for mode, rows in s["modes"].items():
        for v in VARIANTS:
            r = rows[v]
            L.append(
                f"| {mode} | {v} | {r['rps']:,.0f} | {r['cpu_us_per_req']:.0f} | "
                f"{r['rps'] / rows['plain HAProxy']['rps']:.2f}, "
                f"{r['cpu_us_per_req'] / rows['plain HAProxy']['cpu_us_per_req']:.2f} | "
                f"{r['rps'] / rows['nft DNAT']['rps']:.2f}, {r['cpu_us_per_req'] / rows['nft DNAT']['cpu_us_per_req']:.2f} |"
            )
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=tuple(PROFILE), default="quick")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("xdpguard: error: bench needs root (namespaces, nftables)", file=sys.stderr)
        return 2
    with Lab(timeout=900) as lab:
        s = section_l7(lab, a.profile)
    print(table(s).strip())
    print(
        json.dumps(
            {k: v for k, v in s.items() if k != "modes"} | {"ratios": {m: r["ratios"] for m, r in s["modes"].items()}}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
