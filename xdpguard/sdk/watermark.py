"""The client side of the UDP watermark: mark each datagram so the protective IP lets it pass.

Standalone on purpose (the standard library only): a game or voice client can copy this file.

Format, version 1 (the XDP check is bpf/include/watermark.h; the vectors are
xdpguard/sdk/watermark_vectors.json, shared by this module, the XDP tests and any port):

    datagram = data | epoch | mac                       (the mark is the last 12 bytes)
    epoch    = floor(unix_seconds / step), 4 bytes big-endian
    mac      = SipHash-2-4(key, M), 8 bytes in SipHash's standard output order
               (the little-endian bytes of the 64-bit result)
    M        = epoch (4, BE) | len(data) (2, BE) | destination port (2, BE)
               | data[:window] zero-padded to `window` bytes            (8 + window bytes)

key: 16 bytes, shared with the protector (a key file holds 32 hex digits). step (seconds per
epoch, default 30) and window (payload bytes bound, a multiple of 8 up to 64, default 32) must
match the service's setting. The protector accepts an epoch from `skew` epochs ago (default 1)
to one ahead, with the current key or, during a rotation's overlap, the previous one. It strips
the mark and fixes the IP/UDP lengths and checksums: the server sees `data`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import struct
import sys
import time

VERSION = 1
TAG_LEN = 12
KEY_LEN = 16
WINDOW_MAX = 64
DEFAULT_STEP = 30
DEFAULT_WINDOW = 32
DEFAULT_SKEW = 1
VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watermark_vectors.json")

_M64 = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def siphash24(key: bytes, msg: bytes) -> bytes:
    """SipHash-2-4 (Aumasson & Bernstein, 2012) of msg under a 16-byte key: 8 bytes."""
    if len(key) != KEY_LEN:
        raise ValueError(f"a SipHash key is {KEY_LEN} bytes, got {len(key)}")
    k0, k1 = struct.unpack("<QQ", key)
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573

    def rounds(n, v0, v1, v2, v3):
        for _ in range(n):
            v0 = (v0 + v1) & _M64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)
        return v0, v1, v2, v3

    n = len(msg)
    whole = n - n % 8
    for i in range(0, whole, 8):
        (m,) = struct.unpack_from("<Q", msg, i)
        v3 ^= m
        v0, v1, v2, v3 = rounds(2, v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(msg[whole:], "little")
    v3 ^= b
    v0, v1, v2, v3 = rounds(2, v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    v0, v1, v2, v3 = rounds(4, v0, v1, v2, v3)
    return struct.pack("<Q", v0 ^ v1 ^ v2 ^ v3)


def check_params(step: int, window: int) -> None:
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a whole number of seconds >= 1, got {step!r}")
    if not isinstance(window, int) or window < 0 or window > WINDOW_MAX or window % 8:
        raise ValueError(f"window must be a multiple of 8 from 0 to {WINDOW_MAX}, got {window!r}")


def epoch_of(now: float, step: int) -> int:
    return int(now // step) & 0xFFFFFFFF


def message(data: bytes, epoch: int, port: int, window: int) -> bytes:
    """M, the bytes the MAC covers."""
    if len(data) > 0xFFFF - 8 - TAG_LEN:
        raise ValueError("a datagram's data cannot be longer than 65515 bytes")
    head = struct.pack(">IHH", epoch, len(data), port)
    return head + data[:window].ljust(window, b"\0")


def mark(
    payload: bytes,
    key: bytes,
    now: float | None = None,
    *,
    port: int,
    step: int = DEFAULT_STEP,
    window: int = DEFAULT_WINDOW,
) -> bytes:
    """payload followed by its 12-byte mark for destination `port` at unix time `now`."""
    check_params(step, window)
    ep = epoch_of(time.time() if now is None else now, step)
    return payload + struct.pack(">I", ep) + siphash24(key, message(payload, ep, port, window))


def verify(
    datagram: bytes,
    key: bytes,
    now: float | None = None,
    *,
    port: int,
    step: int = DEFAULT_STEP,
    window: int = DEFAULT_WINDOW,
    skew: int = DEFAULT_SKEW,
) -> bytes | None:
    """The data of a validly marked datagram, else None: what the XDP check decides (one key)."""
    if len(datagram) < TAG_LEN:
        return None
    data, tag = datagram[:-TAG_LEN], datagram[-TAG_LEN:]
    (ep,) = struct.unpack(">I", tag[:4])
    cur = epoch_of(time.time() if now is None else now, step)
    if ep + skew < cur or ep > cur + 1:
        return None
    if not secrets.compare_digest(siphash24(key, message(data, ep, port, window)), tag[4:]):
        return None
    return data


def parse_key(text: bytes) -> bytes:
    """A key file's content: 32 hex digits (whitespace around them ignored) or 16 raw bytes."""
    s = text.strip()
    if len(s) == 2 * KEY_LEN:
        try:
            return bytes.fromhex(s.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(text) == KEY_LEN:
        return bytes(text)
    raise ValueError(f"a watermark key is {KEY_LEN} bytes: 32 hex digits or 16 raw bytes, got {len(text)} bytes")


def load_key(path: str) -> bytes:
    with open(path, "rb") as f:
        return parse_key(f.read(4096))


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_LEN)


def write_key(path: str, key: bytes | None = None) -> None:
    """A new key file (mode 0600, never overwritten)."""
    key = generate_key() if key is None else key
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())


class Marker:
    """Marks datagrams for one service: `sock.sendto(marker.mark(data), addr)`."""

    def __init__(self, key: bytes, port: int, step: int = DEFAULT_STEP, window: int = DEFAULT_WINDOW):
        check_params(step, window)
        if len(key) != KEY_LEN:
            raise ValueError(f"a watermark key is {KEY_LEN} bytes, got {len(key)}")
        self.key, self.port, self.step, self.window = key, port, step, window

    def mark(self, data: bytes, now: float | None = None) -> bytes:
        return mark(data, self.key, now, port=self.port, step=self.step, window=self.window)


# ---- a command line for tests and the lab ----


def _echo(args) -> dict:
    """Send `count` marked (or, with --plain, unmarked) datagrams to an echo service, one every
    `interval` seconds, and count the echoes that come back intact."""
    host, port = args.target.rsplit(":", 1)
    host, port = host.strip("[]"), int(port)
    key = load_key(args.key_file) if not args.plain else b""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(args.timeout)
    sent = got = 0
    rtts = []
    deadline = time.monotonic() + args.max_seconds
    for i in range(args.count):
        if time.monotonic() > deadline:
            break
        data = f"wm-echo {i} ".encode().ljust(args.size, b"x")
        pkt = (
            data
            if args.plain
            else mark(data, key, time.time() - args.age, port=port, step=args.step, window=args.window)
        )
        t0 = time.monotonic()
        s.sendto(pkt, (host, port))
        sent += 1
        try:
            while True:
                reply, _ = s.recvfrom(65535)
                if data in reply:  # an echo server may prefix what it returns
                    got += 1
                    rtts.append(time.monotonic() - t0)
                    break
        except socket.timeout:
            pass
        time.sleep(args.interval)
    s.close()
    return {
        "sent": sent,
        "received": got,
        "loss_pct": round(100.0 * (sent - got) / sent, 2) if sent else None,
        "rtt_ms_median": round(sorted(rtts)[len(rtts) // 2] * 1000, 3) if rtts else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdpguard.sdk.watermark", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen", help="write a new 16-byte key (32 hex digits, mode 0600) to FILE")
    k.add_argument("file")
    m = sub.add_parser("mark", help="print the marked datagram (hex) of DATA (hex)")
    e = sub.add_parser("echo", help="send marked datagrams to an echo service and count the echoes (JSON)")
    for p in (m, e):
        p.add_argument("--step", type=int, default=DEFAULT_STEP)
        p.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    m.add_argument("--key-file", required=True)
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--now", type=float, default=None, help="unix time (default: now)")
    m.add_argument("data")
    e.add_argument("--key-file")
    e.add_argument("--plain", action="store_true", help="send unmarked datagrams (the comparison run)")
    e.add_argument("--age", type=float, default=0.0, help="mark as if sent this many seconds ago (replay tests)")
    e.add_argument("--count", type=int, default=100)
    e.add_argument("--interval", type=float, default=0.02)
    e.add_argument("--timeout", type=float, default=0.5)
    e.add_argument("--size", type=int, default=48)
    e.add_argument("--max-seconds", type=float, default=60.0)
    e.add_argument("target", help="HOST:PORT ([v6]:PORT)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "keygen":
            write_key(a.file)
        elif a.cmd == "mark":
            print(
                mark(
                    bytes.fromhex(a.data), load_key(a.key_file), a.now, port=a.port, step=a.step, window=a.window
                ).hex()
            )
        else:
            if not a.plain and not a.key_file:
                raise ValueError("--key-file is required unless --plain")
            print(json.dumps(_echo(a)))
    except (OSError, ValueError) as exc:
        print(f"watermark: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
