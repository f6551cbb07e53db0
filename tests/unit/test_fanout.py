"""The sample fan-out's queues and wire format (xdpguard/core/observe/fanout.py), without a kernel: a
client that does not read never blocks the daemon (its bounded queue drops and counts), the count
reaches the client, records arrive whole and decode; a subscriber's buffer is bounded too."""

from __future__ import annotations

import ctypes
import socket
import time

from xdpguard.core.observe import fanout
from xdpguard.core.kernel.abi import Sample


def record(i: int) -> bytes:
    s = Sample()
    s.ts_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 10**9  # "after" any window start
    s.sample_every, s.pkt_len, s.cap_len = 64, 100 + i % 50, 4
    s.family, s.proto, s.kind, s.reason = 4, 17, 1, 3
    s.src[:4] = bytes([198, 18, 0, 5])
    s.dst[:4] = bytes([198, 18, 0, 2])
    s.sport, s.dport = 1000 + i % 1000, 53
    return ctypes.string_at(ctypes.addressof(s), ctypes.sizeof(s))


def test_a_client_that_does_not_read_never_blocks_and_misses_are_counted():
    daemon_end, client_end = socket.socketpair()
    daemon_end.setblocking(False)
    c = fanout._Client(daemon_end)
    c.iface = "xgp0"
    recs = [record(i) for i in range(1000)]
    t0 = time.monotonic()
    for _ in range(40):  # 40,000 records offered to a client that reads nothing
        c.offer(recs)
        assert c.flush()  # never blocks: the socket takes what it takes
    assert time.monotonic() - t0 < 10
    assert len(c.q) <= fanout.CLIENT_QUEUE
    sent_or_queued = 40_000 - c.missed
    assert c.missed > 0 and sent_or_queued >= fanout.CLIENT_QUEUE
    # now the client reads: every record that was not dropped arrives whole, then the count
    stream = fanout.Stream(client_end, "xgp0")
    try:
        deadline = time.monotonic() + 10
        got = []
        while time.monotonic() < deadline and (c.pending() or len(got) < sent_or_queued):
            c.flush()
            got += stream.drain(timeout_ms=20)
        assert len(got) == sent_or_queued
        assert stream.server_missed == c.missed and stream.missed == c.missed
        s = got[0]
        assert (s.src, s.dst, s.proto, s.dport, s.sample_every) == ("198.18.0.5", "198.18.0.2", "udp", 53, 64)
    finally:
        stream.close()
        daemon_end.close()


def test_window_returns_what_came_since_the_previous_call():
    daemon_end, client_end = socket.socketpair()
    c = fanout._Client(daemon_end)
    c.iface = "xgp0"
    stream = fanout.Stream(client_end, "xgp0")
    try:
        assert stream.window(0.05) == []
        c.offer([record(i) for i in range(300)])
        c.flush()
        first = stream.window(0.2)
        c.offer([record(i) for i in range(7)])
        c.flush()
        second = stream.window(0.2)
        assert (len(first), len(second), stream.missed) == (300, 7, 0)
        daemon_end.close()  # the daemon goes away: the stream ends, drain does not spin
        time.sleep(0.1)
        assert stream.ended
        t0 = time.monotonic()
        assert stream.drain(timeout_ms=100) == [] and time.monotonic() - t0 >= 0.09
    finally:
        stream.close()


def test_a_subscriber_buffer_is_bounded():
    b = fanout._Buffered(maxlen=100)
    b.put([record(i) for i in range(150)])
    assert len(b.q) == 100 and b.missed == 50
    assert len(b.drain()) == 100 and b.missed == 50


def test_a_deep_run_dir_still_gets_a_socket(tmp_path, monkeypatch):
    """sun_path holds 108 bytes; a deeper $XDPGUARD_RUN_DIR goes through /proc/self/fd."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    p = deep / "samples.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with fanout._addr(p) as a:
        assert len(a) < 100
        srv.bind(a)
    srv.listen(1)
    assert p.is_socket()
    cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with fanout._addr(p) as a:
        cli.connect(a)
    conn, _ = srv.accept()
    cli.sendall(b"x")
    assert conn.recv(1) == b"x"
    for s in (conn, cli, srv):
        s.close()
