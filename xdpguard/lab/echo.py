"""Bounded TCP/UDP echo server and probe for the namespace lab (tests, demo).

    python -m xdpguard.lab.echo serve --port 7 [--duration 60]
    python -m xdpguard.lab.echo probe --proto udp|tcp --dst ADDR --port 7 [--src ADDR] [--timeout 1]

`serve` answers on every address of its namespace (v4 and v6), prefixing each reply with the
address it saw the request come from ("from <addr>|payload"), so tests can check which client
address a backend sees. It exits by itself after --duration seconds. `probe` sends one request
and exits 0 when the echo came back, 1 when it did not (timeout or refused), printing the reply.
"""

from __future__ import annotations

import argparse
import errno
import selectors
import socket
import sys
import time


def _listen(kind: int, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        s.listen(128)
    s.setblocking(False)
    return s


def _peer(addr) -> str:
    host = addr[0]
    return host[7:] if host.startswith("::ffff:") else host


UDP_BURST = 256  # datagrams answered per wake-up (a flood never starves the TCP side)
CONN_IDLE_S = 5.0  # a TCP connection that sent nothing for this long is closed
CONN_MAX = 512  # open TCP connections kept; the oldest goes first (fds are finite)


def serve(port: int, duration: float) -> int:
    """Answer until the deadline, whatever arrives: every socket error is counted and survived
    (a full send buffer, ENOBUFS from a full qdisc, EMFILE, a reset before accept), idle or
    excess connections are closed. (The lab's echo died under a UDP flood: a non-blocking
    sendto raised BlockingIOError/ENOBUFS, which nothing caught; idle connections kept fds.)"""
    sel = selectors.DefaultSelector()
    tcp = _listen(socket.SOCK_STREAM, port)
    udp = _listen(socket.SOCK_DGRAM, port)
    sel.register(tcp, selectors.EVENT_READ, "accept")
    sel.register(udp, selectors.EVENT_READ, "udp")
    print(f"echo: serving tcp+udp port {port} for {duration:g} s", flush=True)
    deadline = time.monotonic() + duration
    conns: dict[socket.socket, tuple[str, float]] = {}  # insertion order: oldest first
    errors: dict[str, int] = {}
    said = time.monotonic()

    def close(c: socket.socket) -> None:
        try:
            sel.unregister(c)
        except (KeyError, ValueError):
            pass
        conns.pop(c, None)
        c.close()

    def failed(exc: OSError) -> None:
        name = type(exc).__name__ if exc.errno is None else errno.errorcode.get(exc.errno, str(exc.errno))
        errors[name] = errors.get(name, 0) + 1

    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=min(0.5, max(0.0, deadline - time.monotonic()))):
            what = key.data
            if what == "accept":
                for _ in range(64):
                    try:
                        c, addr = tcp.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:  # EMFILE, ECONNABORTED …: the listener stays
                        failed(exc)
                        break
                    if len(conns) >= CONN_MAX:
                        close(next(iter(conns)))
                    c.setblocking(False)
                    conns[c] = (_peer(addr), time.monotonic())
                    sel.register(c, selectors.EVENT_READ, "conn")
            elif what == "udp":
                for _ in range(UDP_BURST):
                    try:
                        data, addr = udp.recvfrom(65535)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        failed(exc)
                        break
                    try:
                        udp.sendto(f"from {_peer(addr)}|".encode() + data, addr)
                    except OSError as exc:  # EAGAIN, ENOBUFS, unreachable: that one reply is lost
                        failed(exc)
            else:
                c = key.fileobj
                peer = conns.get(c, ("?", 0.0))[0]
                try:
                    data = c.recv(65535)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    failed(exc)
                    data = b""
                if data:
                    try:
                        c.sendall(f"from {peer}|".encode() + data)
                    except OSError as exc:
                        failed(exc)
                close(c)
        now = time.monotonic()
        for c, (_, since) in list(conns.items()):
            if now - since < CONN_IDLE_S:
                break  # the rest are younger
            close(c)
        if errors and now - said >= 10:
            said = now
            print("echo: survived " + ", ".join(f"{k} x{n}" for k, n in sorted(errors.items())), flush=True)
            errors.clear()
    return 0


def probe(
    proto: str, dst: str, port: int, src: str | None, timeout: float, payload: bytes = b"ping"
) -> tuple[bool, str]:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, kind)
    s.settimeout(timeout)
    try:
        if src:
            s.bind((src, 0))
        if proto == "tcp":
            s.connect((dst, port))
            s.sendall(payload)
            data = s.recv(65535)
        else:
            s.sendto(payload, (dst, port))
            data, _ = s.recvfrom(65535)
        return (payload in data), data.decode(errors="replace")
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        s.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="xdpguard.lab.echo")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve")
    sp.add_argument("--port", type=int, default=7)
    sp.add_argument("--duration", type=float, default=60.0)
    pp = sub.add_parser("probe")
    pp.add_argument("--proto", choices=["tcp", "udp"], default="udp")
    pp.add_argument("--dst", required=True)
    pp.add_argument("--port", type=int, default=7)
    pp.add_argument("--src")
    pp.add_argument("--timeout", type=float, default=1.0)
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        return serve(a.port, min(a.duration, 3600.0))
    ok, reply = probe(a.proto, a.dst, a.port, a.src, a.timeout)
    print(reply)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
