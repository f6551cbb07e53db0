"""A legitimate client: request success rate and latency through the protective IP.

    python -m xdpguard.lab.probe --proto udp|tcp|http --dst ADDR [--port P] [--count N]
                                 [--timeout S] [--interval S] [--duration S] [--json]

Sends up to --count requests one after another (a fresh socket, and so a fresh source port, per
request) and stops after --duration seconds at the latest. udp/tcp talk to the lab's echo
service, http GETs "/". Prints one JSON object (--json) or a line of text; exit 0 when at least
one request succeeded. `xdpguard lab probe` runs this inside the client namespace.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass

DEFAULT_PORTS = {"udp": 7, "tcp": 7, "http": 80}


@dataclass(frozen=True)
class ProbeResult:
    proto: str
    dst: str
    port: int
    sent: int
    ok: int
    success_pct: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    elapsed_s: float
    errors: dict[str, int]
    slow: int = 0  # answered, but after >= 900 ms: a connection that needed a SYN retransmission

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def _family(dst: str) -> int:
    return socket.AF_INET6 if ":" in dst else socket.AF_INET


def one_request(proto: str, dst: str, port: int, timeout: float, seq: int) -> None:
    """One request; returns when answered correctly, raises OSError (or ValueError) otherwise."""
    if proto == "http":
        conn = http.client.HTTPConnection(dst, port, timeout=timeout)  # adds [] to Host: itself
        try:
            conn.request("GET", "/", headers={"Connection": "close", "User-Agent": "xdpguard-lab-probe/1"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
        finally:
            conn.close()
        return
    payload = f"probe-{seq}".encode()
    s = socket.socket(_family(dst), socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        if proto == "tcp":
            s.connect((dst, port))
            s.sendall(payload)
            data = s.recv(65535)
        else:
            s.sendto(payload, (dst, port))
            deadline = time.monotonic() + timeout
            while True:  # skip a late answer to an earlier request (cannot happen: fresh socket)
                data, _ = s.recvfrom(65535)
                if payload in data or time.monotonic() > deadline:
                    break
        if payload not in data:
            raise ValueError("wrong answer")
    finally:
        s.close()


def run(
    proto: str,
    dst: str,
    port: int | None = None,
    count: int = 100,
    timeout: float = 1.0,
    interval: float = 0.0,
    duration: float = 60.0,
) -> ProbeResult:
    port = port or DEFAULT_PORTS[proto]
    lat_ms: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    start = time.monotonic()
    end = start + duration
    while sent < count and time.monotonic() < end:
        sent += 1
        t0 = time.perf_counter()
        try:
            one_request(proto, dst, port, timeout, sent)
            lat_ms.append((time.perf_counter() - t0) * 1000)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            key = "timeout" if isinstance(exc, (TimeoutError, socket.timeout)) else type(exc).__name__
            errors[key] = errors.get(key, 0) + 1
        if interval:
            time.sleep(interval)
    elapsed = time.monotonic() - start
    ok = len(lat_ms)
    return ProbeResult(
        proto,
        dst,
        port,
        sent,
        ok,
        round(100.0 * ok / sent, 2) if sent else 0.0,
        _r(percentile(lat_ms, 50)),
        _r(percentile(lat_ms, 99)),
        _r(max(lat_ms, default=None)),
        round(elapsed, 3),
        errors,
        sum(1 for v in lat_ms if v >= 900.0),
    )


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def describe(r: ProbeResult) -> str:
    lat = f"p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms" if r.p50_ms is not None else "no answers"
    err = (", errors: " + ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items()))) if r.errors else ""
    return (
        f"{r.proto} {r.dst}:{r.port}: {r.ok}/{r.sent} answered ({r.success_pct:.1f}%), {lat}"
        f" in {r.elapsed_s:.1f} s{err}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="xdpguard.lab.probe")
    ap.add_argument("--proto", choices=sorted(DEFAULT_PORTS), default="udp")
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--interval", type=float, default=0.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = run(a.proto, a.dst, a.port, max(1, min(a.count, 1_000_000)), a.timeout, a.interval, min(a.duration, 3600.0))
    print(json.dumps(res.to_dict()) if a.json else describe(res), flush=True)
    return 0 if res.ok else 1


def command(
    dst: str, proto: str = "udp", *, count: int, timeout: float, duration: float, interval: float = 0.0
) -> list[str]:
    """This probe's command line, with a JSON result (`result_of`), for a caller to run in a namespace."""
    return [
        sys.executable,
        "-m",
        "xdpguard.lab.probe",
        "--proto",
        proto,
        "--dst",
        dst,
        "--count",
        str(count),
        "--timeout",
        str(timeout),
        "--interval",
        str(interval),
        "--duration",
        str(duration),
        "--json",
    ]


def result_of(out: str, err: str, returncode: int) -> ProbeResult:
    """The ProbeResult a `command` printed; a RuntimeError naming its error when it printed none."""
    try:
        return ProbeResult(**json.loads(out))
    except (json.JSONDecodeError, TypeError) as exc:
        raise RuntimeError(f"probe failed (exit {returncode}): {err.strip() or out.strip()}") from exc


def in_lab(
    proto: str = "udp",
    count: int = 100,
    *,
    family: int = 4,
    timeout: float = 1.0,
    interval: float = 0.0,
    duration: float = 60.0,
) -> ProbeResult:
    """Run the probe inside the lab's client namespace against the protective IP."""
    import subprocess

    from . import topology

    client = topology.require_up("client")
    dst = topology.PROT6 if family == 6 else topology.PROT4
    argv = [
        "ip",
        "netns",
        "exec",
        client,
        *command(dst, proto, count=count, timeout=timeout, interval=interval, duration=duration),
    ]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + timeout + 30, stdin=subprocess.DEVNULL)
    return result_of(p.stdout, p.stderr, p.returncode)


if __name__ == "__main__":
    sys.exit(main())
