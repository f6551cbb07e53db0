"""A small bounded raw-packet sender for tests: IPv4 UDP, TCP SYN or ICMP echo frames, from one
source or from many spoofed ones, written to an AF_PACKET socket in a plain send loop.

    python -m xdpguard.lab.flood --iface eth0 --dst-mac 02:..:01 --dst 198.18.0.2 --kind udp|syn|icmp
        [--src 198.18.0.9 | --spoof 198.18.128.0/17 --sources 256] [--sport P] [--dport P]
        [--payload BYTES] --count N --duration S [--pps N] [--json]

Frames are built once (a pool per source with varied ports and ids, real checksums) and sent
round-robin. Every run is bounded twice — --count packets and --duration seconds (both capped)
— and stops by itself. Addresses must come from the lab ranges (198.18.0.0/15, TEST-NETs).
Run it inside a lab namespace (`ip netns exec NS python -m xdpguard.lab.flood …`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

KINDS = ("udp", "syn", "icmp")
MAX_COUNT = 10_000_000
MAX_DURATION_S = 60.0
MAX_SOURCES = 65536
LAB4 = tuple(ipaddress.ip_network(n) for n in ("198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
BATCH = 256  # packets between clock checks


@dataclass(frozen=True)
class FloodResult:
    kind: str
    sent: int
    errors: int
    elapsed_s: float
    pps: float
    sources: int
    stopped_by: str  # count | time

    def to_dict(self) -> dict:
        return asdict(self)


def _lab_addr(text: str, what: str) -> ipaddress.IPv4Address:
    a = ipaddress.IPv4Address(text)
    if not any(a in n for n in LAB4):
        raise ValueError(f"{what} {a} is outside the lab ranges (198.18.0.0/15, TEST-NETs)")
    return a


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _mac(text: str) -> bytes:
    b = bytes(int(x, 16) for x in text.split(":"))
    if len(b) != 6:
        raise ValueError(f"invalid MAC '{text}'")
    return b


def frame(
    kind: str,
    src_mac: bytes,
    dst_mac: bytes,
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    sport: int,
    dport: int,
    payload: int,
    ident: int,
    ttl: int = 64,
) -> bytes:
    """One Ethernet + IPv4 frame with a UDP, TCP SYN or ICMP echo request, checksums filled in."""
    body = b"X" * payload
    s, d = src.packed, dst.packed
    if kind == "udp":
        proto = 17
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
        pseudo = s + d + struct.pack("!BBH", 0, proto, len(l4))
        c = checksum(pseudo + l4) or 0xFFFF
        l4 = l4[:6] + struct.pack("!H", c) + l4[8:]
    elif kind == "syn":
        proto = 6
        seq = (ident * 2654435761) & 0xFFFFFFFF
        hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
        l4 = hdr + body
        pseudo = s + d + struct.pack("!BBH", 0, proto, len(l4))
        l4 = l4[:16] + struct.pack("!H", checksum(pseudo + l4)) + l4[18:]
    elif kind == "icmp":
        proto = 1
        l4 = struct.pack("!BBHHH", 8, 0, 0, ident & 0xFFFF, sport) + body
        l4 = l4[:2] + struct.pack("!H", checksum(l4)) + l4[4:]
    else:
        raise ValueError(f"unknown kind '{kind}' (one of {', '.join(KINDS)})")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident & 0xFFFF, 0, ttl, proto, 0, s, d)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + l4


def sources(src: str | None, spoof: str | None, n: int) -> list[ipaddress.IPv4Address]:
    if spoof:
        net = ipaddress.IPv4Network(spoof)
        if not any(net.subnet_of(lab) for lab in LAB4):
            raise ValueError(f"--spoof {net} is outside the lab ranges")
        size = net.num_addresses
        n = min(n, size)
        step = max(1, size // n)
        return [net[(1 + i * step) % size] for i in range(n)]
    if not src:
        raise ValueError("give --src or --spoof")
    return [_lab_addr(src, "--src")]


def build_pool(
    kind: str,
    src_mac: bytes,
    dst_mac: bytes,
    srcs,
    dst,
    sport: int | None,
    dport: int | None,
    payload: int,
    size: int = 4096,
) -> list[bytes]:
    rnd = random.Random(7)
    per = max(1, size // len(srcs))
    pool = []
    for i in range(per):
        for s in srcs:
            sp = sport or rnd.randint(1024, 65535)
            dp = dport or rnd.randint(1024, 65535)
            pool.append(frame(kind, src_mac, dst_mac, s, dst, sp, dp, payload, rnd.randint(0, 0xFFFF)))
    return pool


def run(
    iface: str,
    dst_mac: str,
    dst: str,
    kind: str,
    *,
    src: str | None = None,
    spoof: str | None = None,
    n_sources: int = 256,
    sport: int | None = None,
    dport: int | None = None,
    payload: int = 64,
    count: int = 100_000,
    duration: float = 5.0,
    pps: int | None = None,
) -> FloodResult:
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"--count must be in 1..{MAX_COUNT}")
    if not 0 < duration <= MAX_DURATION_S:
        raise ValueError(f"--duration must be in (0, {MAX_DURATION_S:g}] s")
    if not 1 <= n_sources <= MAX_SOURCES:
        raise ValueError(f"--sources must be in 1..{MAX_SOURCES}")
    if not 0 <= payload <= 1400:
        raise ValueError("--payload must be in 0..1400 bytes")
    dst_a = _lab_addr(dst, "--dst")
    srcs = sources(src, spoof, n_sources)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((iface, 0))
        src_mac = sock.getsockname()[4][:6]
        pool = build_pool(kind, src_mac, _mac(dst_mac), srcs, dst_a, sport, dport, payload)
        send = sock.send
        sent = errors = 0
        i = 0
        n = len(pool)
        t0 = time.monotonic()
        end = t0 + duration
        stopped_by = "count"
        while sent + errors < count:
            now = time.monotonic()
            if now >= end:
                stopped_by = "time"
                break
            if pps:
                ahead = (sent + errors) / pps - (now - t0)
                if ahead > 0:
                    time.sleep(min(ahead, end - now))
                    continue
            for _ in range(min(BATCH, count - sent - errors)):
                try:
                    send(pool[i])
                    sent += 1
                except OSError:  # ENOBUFS under load: count it, go on
                    errors += 1
                i = i + 1 if i + 1 < n else 0
        elapsed = time.monotonic() - t0
    finally:
        sock.close()
    return FloodResult(
        kind, sent, errors, round(elapsed, 3), round(sent / elapsed if elapsed else 0.0, 1), len(srcs), stopped_by
    )


def command(
    iface: str,
    dst_mac: str,
    dst: str,
    *source: str,
    dport: int,
    pps: int,
    duration: float,
    count: int | None = None,
    kind: str = "udp",
) -> list[str]:
    """This flood's command line, bounded by `count` packets (pps × duration unless given) and by
    `duration`; `source` is its --src [--sport] or --spoof [--sources]. For a caller to run in a
    namespace."""
    return [
        sys.executable,
        "-m",
        "xdpguard.lab.flood",
        "--iface",
        iface,
        "--dst-mac",
        dst_mac,
        "--dst",
        dst,
        "--kind",
        kind,
        *source,
        "--dport",
        str(dport),
        "--count",
        str(int(pps * duration) if count is None else count),
        "--duration",
        str(duration),
        "--pps",
        str(pps),
    ]


L7FLOOD = Path(__file__).resolve().parents[2] / "scripts" / "l7flood.py"  # the HTTP flood generator


def l7_command(
    target: str,
    sources: str,
    *extra: str,
    count: int,
    conns: int,
    duration: float,
    rate: int | None = None,
    timeout: float | None = 2.0,
    path: str | None = None,
) -> list[str]:
    """scripts/l7flood.py's command line: `count` sources from `sources` (a prefix) over `conns`
    connections for `duration` seconds, at `rate` requests/s, each request given up after
    `timeout` s (l7flood's defaults for None), then `extra`. For a caller to run in a namespace."""
    return [
        sys.executable,
        str(L7FLOOD),
        "--target",
        target,
        "--sources",
        sources,
        "--count",
        str(count),
        "--conns",
        str(conns),
        *(["--rate", str(rate)] if rate is not None else []),
        "--duration",
        str(duration),
        *(["--timeout", f"{timeout:g}"] if timeout is not None else []),
        *(["--path", path] if path is not None else []),
        *extra,
    ]


def api_client_command(target: str, address: str, rate: int, duration: float, path: str) -> list[str]:
    """A plain API client (issue 29's acceptance): one address, no cookie, no JavaScript, one
    request at a time at `rate`/s on `path`, a new connection each (scripts/l7flood.py, 1 source)."""
    return l7_command(target, f"{address}/32", count=1, conns=1, rate=rate, duration=duration, path=path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="xdpguard.lab.flood", description=__doc__.split("\n\n")[0])
    ap.add_argument("--iface", required=True)
    ap.add_argument("--dst-mac", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--kind", choices=KINDS, default="udp")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--src")
    g.add_argument("--spoof", metavar="CIDR")
    ap.add_argument("--sources", type=int, default=256)
    ap.add_argument("--sport", type=int)
    ap.add_argument("--dport", type=int)
    ap.add_argument("--payload", type=int, default=64)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--pps", type=int)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        res = run(
            a.iface,
            a.dst_mac,
            a.dst,
            a.kind,
            src=a.src,
            spoof=a.spoof,
            n_sources=a.sources,
            sport=a.sport,
            dport=a.dport,
            payload=a.payload,
            count=a.count,
            duration=a.duration,
            pps=a.pps,
        )
    except (ValueError, OSError) as exc:
        print(f"flood: error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(res.to_dict())
        if a.json
        else f"{res.kind}: sent {res.sent} packets in {res.elapsed_s:.2f} s = {res.pps:,.0f} pps "
        f"from {res.sources} source(s), stopped by {res.stopped_by}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
