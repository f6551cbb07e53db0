#!/usr/bin/env python3
"""A bounded multi-source HTTP flood for the layer-7 lab (issue 29): wrk cannot pick its source
address, this can. Every connection binds one of `--count` source addresses taken in turn from
`--sources` (the addresses must already be on an interface of the namespace it runs in: the
lab adds them, lab/l7.add_sources), so HAProxy sees that many real clients.

    python3 scripts/l7flood.py --target 198.18.0.1 --sources 198.18.16.0/22 --count 1000 \\
        --mode get --conns 256 --rate 1500 --duration 10

Modes (each bounded by --duration ≤ 120 s, --conns ≤ 2000 open connections, --rate ≤ 5000
requests/s in all, and --max-requests):
    get        GET requests, a new connection each (with --keepalive: up to 100 per connection);
               --random-path adds a cache-busting query; --cookie sends a Cookie header
               (the replayed-cookie flood)
    slowloris  unfinished requests, one header line every --interval s per connection
    slowpost   complete headers announcing a 1 MB body, then one body byte every --interval s

It prints one JSON line: requests sent, answers by status, connections the server closed,
connect failures and errors, and the achieved rate; with --crossed K also, per source, the
CLOCK_MONOTONIC time of its K-th 302 (when it crossed "K challenges, none passed"), and the
requests each source sent.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import random
import resource
import socket
import sys
import time

MAX_DURATION_S = 120.0
MAX_CONNS = 2000
MAX_RATE = 5000
MAX_SOURCES = 4096
KEEPALIVE_REQUESTS = 100


class Stats:
    def __init__(self) -> None:
        self.sent = 0
        self.status: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.connect_failed = 0
        self.closed_by_server = 0
        self.opened = 0
        self.max_open = 0
        self.open = 0
        self.c302: dict[str, int] = {}  # per source: 302 challenges answered so far
        self.crossed: dict[str, float] = {}  # per source: when (CLOCK_MONOTONIC) its --crossed-th 302 came
        self.per_src: dict[str, int] = {}  # per source: requests sent (with --crossed)

    def err(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


class Deadline:
    """The flood's end, which SIGTERM can move to now: compared with a float like one
    (`time.monotonic() < end`, `now >= end`), so every loop sees the move at its next check
    (cancelling the tasks alone is not enough: asyncio.wait_for can swallow a cancellation)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __gt__(self, x: float) -> bool:
        return self.t > x

    def __le__(self, x: float) -> bool:
        return self.t <= x

    def stop(self) -> None:
        self.t = min(self.t, time.monotonic())


class Budget:
    """A shared token bucket: at most `rate` requests per second in all, and `total` at most."""

    def __init__(self, rate: float, total: int, end: Deadline) -> None:
        self.rate, self.left, self.end = rate, total, end
        self.next = time.monotonic()

    async def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        now = time.monotonic()
        self.next = max(self.next + 1.0 / self.rate, now - 0.1)
        wait = self.next - now
        if wait > 0:
            if now + wait >= self.end:
                return False
            await asyncio.sleep(wait)
        return time.monotonic() < self.end


def sources(prefix: str, count: int) -> list[str]:
    net = ipaddress.ip_network(prefix, strict=False)
    out = []
    for a in net.hosts() if net.num_addresses > 2 else net:
        out.append(str(a))
        if len(out) >= count:
            break
    if len(out) < count:
        raise SystemExit(f"l7flood: error: {prefix} holds only {len(out)} addresses, {count} asked")
    return out


async def _connect(src: str, host: str, port: int, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close:
        s.bind((src, 0))  # no TIME_WAIT pile-up from tens of thousands of connections
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, (host, port)), timeout)
    except BaseException:
        s.close()
        raise
    return await asyncio.open_connection(sock=s)


async def _read_response(r: asyncio.StreamReader, timeout: float) -> tuple[str, bool]:
    """Status code and whether the connection can be reused (read to the end of the body)."""
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    code = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "?"
    length, close = None, False
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v.strip() or 0)
        elif k == "connection" and "close" in v.lower():
            close = True
    if length is None:
        await asyncio.wait_for(r.read(1 << 20), timeout)
        return code, False
    if length:
        await asyncio.wait_for(r.readexactly(length), timeout)
    return code, not close


def _request(a, host: str) -> bytes:
    path = a.path + (("&" if "?" in a.path else "?") + f"r={random.getrandbits(48):x}" if a.random_path else "")
    extra = f"Cookie: {a.cookie}\r\n" if a.cookie else ""
    conn = "keep-alive" if a.keepalive else "close"
    return (
        f"GET {path} HTTP/1.1\r\nHost: {a.host or host}\r\nUser-Agent: l7flood/1\r\nAccept: */*\r\n"
        f"{extra}Connection: {conn}\r\n\r\n"
    ).encode()


async def _get_worker(i: int, a, srcs: list[str], st: Stats, budget: Budget, end: Deadline) -> None:
    k = i
    while time.monotonic() < end:
        src = srcs[k % len(srcs)]
        k += a.conns
        if not await budget.take():
            return
        try:
            r, w = await _connect(src, a.target, a.port, a.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            st.connect_failed += 1
            st.err(exc)
            await asyncio.sleep(0.05)
            continue
        st.opened += 1
        try:
            n = 0
            c302 = 0  # on this connection
            while True:
                w.write(_request(a, a.target))
                st.sent += 1
                n += 1
                if a.crossed:
                    st.per_src[src] = st.per_src.get(src, 0) + 1
                code, again = await _read_response(r, a.timeout)
                st.status[code] = st.status.get(code, 0) + 1
                if code == a.crossed_status and a.crossed:
                    st.c302[src] = st.c302.get(src, 0) + 1
                    c302 += 1
                    if src not in st.crossed and (
                        st.c302[src] >= a.crossed or (a.crossed_conn and c302 >= a.crossed_conn)
                    ):
                        st.crossed[src] = time.monotonic()
                if not (a.keepalive and again and n < KEEPALIVE_REQUESTS) or time.monotonic() >= end:
                    break
                if not await budget.take():
                    break
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            st.closed_by_server += 1
            st.err(exc)
        except (OSError, asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError) as exc:
            st.err(exc)
        finally:
            w.close()


async def _slow_worker(i: int, a, srcs: list[str], st: Stats, end: Deadline) -> None:
    """One slow connection at a time from source i: reopened when the server closes it."""
    src = srcs[i % len(srcs)]
    while time.monotonic() < end:
        try:
            r, w = await _connect(src, a.target, a.port, a.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            st.connect_failed += 1
            st.err(exc)
            await asyncio.sleep(a.interval)
            continue
        st.opened += 1
        st.open += 1
        st.max_open = max(st.max_open, st.open)
        host = a.host or a.target
        if a.mode == "slowloris":
            first = f"GET {a.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: l7flood/1\r\n".encode()
            drip = b"X-a: b\r\n"
        else:
            first = (
                f"POST {a.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: l7flood/1\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1048576\r\n\r\n"
            ).encode()
            drip = b"a"
        try:
            w.write(first)
            st.sent += 1
            while time.monotonic() < end:
                try:
                    data = await asyncio.wait_for(r.read(4096), a.interval)
                except asyncio.TimeoutError:
                    w.write(drip)
                    await w.drain()
                    continue
                if not data:  # closed by the server (perhaps after an answer: 408, 429 …)
                    st.closed_by_server += 1
                    break
                code = data.split(b" ", 2)[1].decode("latin-1") if data.startswith(b"HTTP/") else "?"
                st.status[code] = st.status.get(code, 0) + 1
        except (OSError, ConnectionError) as exc:
            st.closed_by_server += 1
            st.err(exc)
        finally:
            st.open -= 1
            w.close()


def _fd_room(conns: int) -> None:
    """Raise the soft limit on open files to the hard one when `conns` sockets need it (1,000
    bots each holding a keep-alive connection pass the usual soft 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = conns + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(hard, want), hard))


async def run(a) -> dict:
    srcs = sources(a.sources, a.count)
    _fd_room(a.conns)
    st = Stats()
    t0 = time.monotonic()
    end = Deadline(t0 + a.duration)
    if a.mode == "get":
        budget = Budget(a.rate, a.max_requests, end)
        tasks = [asyncio.create_task(_get_worker(i, a, srcs, st, budget, end)) for i in range(a.conns)]
    else:
        tasks = [asyncio.create_task(_slow_worker(i, a, srcs, st, end)) for i in range(a.conns)]
    # SIGTERM ends the flood early, with its result printed as at the end of --duration
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: (end.stop(), stop.set()))
    stopped = asyncio.create_task(stop.wait())
    finished = asyncio.create_task(asyncio.wait(tasks, timeout=a.duration + a.timeout + 2))
    await asyncio.wait([stopped, finished], return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():  # the workers end at their next look at the deadline (a request's timeout at most)
        await asyncio.wait(tasks, timeout=a.timeout + 1)
    stopped.cancel()
    finished.cancel()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    took = time.monotonic() - t0
    return {
        "mode": a.mode,
        "sources": len(srcs),
        "conns": a.conns,
        "seconds": round(took, 2),
        "sent": st.sent,
        "rate": round(st.sent / took, 1),
        "status": st.status,
        "opened": st.opened,
        "max_open": st.max_open,
        "closed_by_server": st.closed_by_server,
        "connect_failed": st.connect_failed,
        "errors": st.errors,
        **({"crossed": st.crossed, "per_source_sent": st.per_src} if a.crossed else {}),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="l7flood", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="address of the HTTP service")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--host", help="Host header (default: the target)")
    ap.add_argument("--sources", required=True, help="prefix the source addresses are taken from")
    ap.add_argument("--count", type=int, default=128, help="how many source addresses")
    ap.add_argument("--mode", choices=("get", "slowloris", "slowpost"), default="get")
    ap.add_argument("--path", default="/")
    ap.add_argument("--random-path", action="store_true", help="a random query string on every request")
    ap.add_argument("--cookie", help="a Cookie header for every request")
    ap.add_argument("--keepalive", action="store_true")
    ap.add_argument("--conns", type=int, default=128, help="connections at a time")
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per second in all (get)")
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between drips (slow modes)")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument(
        "--crossed",
        type=int,
        default=0,
        metavar="K",
        help="report per source when its K-th 302 challenge (--crossed-status) came (monotonic clock; get mode)",
    )
    ap.add_argument(
        "--crossed-conn",
        type=int,
        default=0,
        metavar="N",
        help="… or its N-th on one connection, whichever comes first (0: not counted per connection)",
    )
    ap.add_argument(
        "--crossed-status",
        default="302",
        metavar="CODE",
        help="the answer --crossed counts (429: refusals on an exempt path)",
    )
    a = ap.parse_args(argv)
    if not a.path.startswith("/") or any(c.isspace() for c in a.path):
        ap.error("--path must start with '/' and hold no spaces")
    if a.cookie is not None and any(c in a.cookie for c in "\r\n"):
        ap.error("--cookie must be one line")
    a.count = max(1, min(a.count, MAX_SOURCES))
    a.conns = max(1, min(a.conns, MAX_CONNS))
    a.rate = max(1.0, min(a.rate, MAX_RATE))
    a.duration = max(0.1, min(a.duration, MAX_DURATION_S))
    a.max_requests = max(1, min(a.max_requests, int(MAX_RATE * MAX_DURATION_S)))
    a.interval = max(0.05, min(a.interval, 30.0))
    a.timeout = max(0.1, min(a.timeout, 30.0))
    return a


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(asyncio.run(run(parse(argv)))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
