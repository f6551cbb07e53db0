"""The UDP watermark in the real program (BPF_PROG_TEST_RUN): watermark.h.

Marks come from the client SDK (xdpguard/sdk/watermark.py); the data path's clock is pinned
through the entry's clock_off_ns, so an epoch is exactly what a test says. A marked datagram
must come out with the mark stripped and every length and checksum equal to what scapy computes
for the bare datagram."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import time

import pytest
from scapy.layers.inet import IP, UDP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xdpguard.core import guard
from xdpguard.core.kernel import libbpf
from xdpguard.core import watermark as wm
from xdpguard.core.kernel.abi import MapName, Reason, Kind, WM_CNT_BAD, WM_CNT_PASS, WM_CNT_PASS_OLD, WM_CNT_STALE
from xdpguard.core.testrun import TestBed
from xdpguard.sdk import watermark as sdk

pytestmark = pytest.mark.kernel

PROT, PROT6 = "198.18.0.1", "2001:db8::1"
CLIENT, CLIENT6 = "198.18.5.5", "2001:db8:5::5"
PORT, OTHER = 7777, 7778
KEY = bytes(range(16))
KEY2 = bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")
NOW = 1_800_000_000.0
SPEC = wm.WatermarkSpec(PORT, "/nonexistent", step=30, window=32, skew=1)


@pytest.fixture(scope="module")
def bed():
    with TestBed() as b:
        b.protect(PROT, PROT6)
        yield b


def pin(v, now: float):
    """The entry with the data path's clock reading `now` (unix seconds)."""
    v.clock_off_ns = int(now * 1e9) - time.monotonic_ns()
    return v


@pytest.fixture(autouse=True)
def service(bed):
    for a in (PROT, PROT6):
        guard.write_watermark_service(bed.maps, ipaddress.ip_address(a), PORT, pin(wm.value(KEY, SPEC), NOW))
    bed.configure()
    yield
    for a in (PROT, PROT6):
        guard.write_watermark_service(bed.maps, ipaddress.ip_address(a), PORT, None)


def frame(data: bytes, dst=PROT, dport=PORT, chksum=None) -> bytes:
    ip = IPv6(src=CLIENT6, dst=dst) if ":" in dst else IP(src=CLIENT, dst=dst, id=4242)
    udp = UDP(sport=40000, dport=dport) if chksum is None else UDP(sport=40000, dport=dport, chksum=chksum)
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / udp / data)


def marked(data: bytes, now=NOW, key=KEY, port=PORT, **kw) -> bytes:
    return sdk.mark(data, key, now, port=port, step=kw.get("step", 30), window=kw.get("window", 32))


def run(bed, pkt: bytes):
    before = bed.counters()
    rv, out, _ = libbpf.prog_test_run(bed.prog.prog_fd, pkt)
    after = bed.counters()
    moved = [k for k in after if after[k][0] != before[k][0]]
    assert len(moved) == 1, moved
    return {1: "drop", 2: "pass"}.get(rv, rv), moved[0], out


def wmcount(bed, i):
    return sum(bed.maps[MapName.WMCNT].get(ctypes.c_uint32(i)))


@pytest.mark.parametrize("dst", [PROT, PROT6])
@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 200, 1401])
def test_marked_datagram_passes_stripped_with_right_lengths_and_checksums(bed, dst, size):
    data = bytes((i * 7 + size) & 0xFF for i in range(size))
    action, (kind, reason), out = run(bed, frame(marked(data), dst))
    assert (action, kind, reason) == ("pass", Kind.PASS, Reason.CLEAN)
    want = frame(data, dst)  # scapy's own lengths and checksums for the bare datagram
    assert out.hex() == want.hex()
    if dst == PROT:
        assert IP(out[14:]).chksum == IP(want[14:]).chksum


def test_ipv4_zero_udp_checksum_stays_zero(bed):
    data = b"no checksum here"
    action, _, out = run(bed, frame(marked(data), chksum=0))
    assert action == "pass"
    assert out == frame(data, chksum=0)


def test_ethernet_padding_is_trimmed(bed):
    """A short frame padded to 60 bytes: the mark is found by the UDP length, the padding goes."""
    data = b"hi"
    pkt = frame(marked(data))
    padded = pkt + b"\0" * (60 - len(pkt)) if len(pkt) < 60 else pkt + b"\0" * 4
    action, _, out = run(bed, padded)
    assert action == "pass" and out == frame(data)


@pytest.mark.parametrize("dst", [PROT, PROT6])
def test_unmarked_and_bad_marks_dropped_with_reason_watermark(bed, dst):
    data = b"x" * 64
    good = marked(data)
    bad_in_window = bytearray(good)
    bad_in_window[3] ^= 1
    bad_mac = bytearray(good)
    bad_mac[-1] ^= 0x80
    b0 = wmcount(bed, WM_CNT_BAD)
    for pkt in (
        data,
        bytes(bad_in_window),
        bytes(bad_mac),
        marked(data, key=KEY2),
        marked(data, port=OTHER),
        good[:-1],
        b"",
        b"short",
    ):
        action, (kind, reason), _ = run(bed, frame(pkt, dst))
        assert (action, kind, reason) == ("drop", Kind.DROP, Reason.WATERMARK), pkt
    assert wmcount(bed, WM_CNT_BAD) - b0 >= 4
    # the window binds the first 32 bytes (and the length): a byte after it is not covered
    beyond = bytearray(good)
    beyond[40] ^= 1
    assert run(bed, frame(bytes(beyond), dst))[0] == "pass"


def test_other_ports_and_tcp_are_not_watermarked(bed):
    data = b"plain"
    action, (_, reason), out = run(bed, frame(data, dport=OTHER))
    assert (action, reason) == ("pass", Reason.CLEAN) and out == frame(data, dport=OTHER)
    tcp = bytes(Ether() / IP(src=CLIENT, dst=PROT) / TCP(sport=40000, dport=PORT, flags="S"))
    assert bed.verdict(tcp).reason != Reason.WATERMARK


def test_epochs_outside_the_skew_are_stale(bed):
    data = b"epoch"
    s0 = wmcount(bed, WM_CNT_STALE)
    assert run(bed, frame(marked(data, now=NOW - 30)))[0] == "pass"  # one epoch back: skew 1
    assert run(bed, frame(marked(data, now=NOW + 30)))[0] == "pass"  # one ahead: clocks differ a little
    for t in (NOW - 60, NOW - 3600, NOW + 60, 0):
        action, (_, reason), _ = run(bed, frame(marked(data, now=t)))
        assert (action, reason) == ("drop", Reason.WATERMARK), t
    assert wmcount(bed, WM_CNT_STALE) - s0 == 4
    # the same captured packet replayed later: passes now, stale two epochs on
    pkt = frame(marked(data, now=NOW))
    assert run(bed, pkt)[0] == "pass"
    guard.write_watermark_service(bed.maps, ipaddress.ip_address(PROT), PORT, pin(wm.value(KEY, SPEC), NOW + 60))
    assert run(bed, pkt)[1] == (Kind.DROP, Reason.WATERMARK)


def test_rotation_overlap_accepts_the_previous_key_until_it_ends(bed):
    rot = wm.rotated(SPEC, "/new", now=NOW)
    assert rot.previous_until == int(NOW) + wm.DEFAULT_OVERLAP
    v = pin(wm.value(KEY2, rot, previous=KEY, now=NOW), NOW)
    guard.write_watermark_service(bed.maps, ipaddress.ip_address(PROT), PORT, v)
    o0, p0 = wmcount(bed, WM_CNT_PASS_OLD), wmcount(bed, WM_CNT_PASS)
    assert run(bed, frame(marked(b"new", key=KEY2)))[0] == "pass"
    assert run(bed, frame(marked(b"old", key=KEY)))[0] == "pass"
    assert (wmcount(bed, WM_CNT_PASS_OLD) - o0, wmcount(bed, WM_CNT_PASS) - p0) == (1, 1)
    # past the overlap: the old key is refused, the new one still passes
    later = NOW + wm.DEFAULT_OVERLAP + 1
    guard.write_watermark_service(
        bed.maps, ipaddress.ip_address(PROT), PORT, pin(wm.value(KEY2, rot, previous=KEY, now=NOW), later)
    )
    assert run(bed, frame(marked(b"old", key=KEY, now=later)))[1] == (Kind.DROP, Reason.WATERMARK)
    assert run(bed, frame(marked(b"new", key=KEY2, now=later)))[0] == "pass"
    # a value built after the overlap holds no previous key at all
    assert wm.value(KEY2, rot, previous=KEY, now=later).prev_until_s == 0


def test_monitor_mode_passes_unmarked_unchanged(bed):
    bed.configure(monitor_mask=1 << Reason.WATERMARK)
    data = b"unmarked"
    action, (kind, reason), out = run(bed, frame(data))
    assert (action, kind, reason) == ("pass", Kind.WOULD_DROP, Reason.WATERMARK) and out == frame(data)


def test_address_flag_follows_its_services(bed):
    from xdpguard.core.kernel.abi import PROT_WATERMARK
    from xdpguard.core.policy import prot_key

    a = ipaddress.ip_address(PROT)
    pm = bed.maps[MapName.PROT4]
    assert pm.get(prot_key(a)).flags & PROT_WATERMARK
    guard.write_watermark_service(bed.maps, a, OTHER, pin(wm.value(KEY, SPEC), NOW))
    guard.write_watermark_service(bed.maps, a, PORT, None)
    assert pm.get(prot_key(a)).flags & PROT_WATERMARK  # OTHER is still watermarked
    guard.write_watermark_service(bed.maps, a, OTHER, None)
    assert not pm.get(prot_key(a)).flags & PROT_WATERMARK
    assert run(bed, frame(b"free"))[1] == (Kind.PASS, Reason.CLEAN)


def test_shared_vectors_pass_the_data_path(bed):
    """The SDK's published vectors (also what ports of the SDK check against) pass XDP as given."""
    vec = json.load(open(sdk.VECTORS))
    for v in vec["marks"]:
        spec = wm.WatermarkSpec(v["port"], "/x", step=v["step"], window=v["window"], skew=1)
        guard.write_watermark_service(
            bed.maps, ipaddress.ip_address(PROT), v["port"], pin(wm.value(bytes.fromhex(v["key"]), spec), v["now"])
        )
        data, dgram = bytes.fromhex(v["data"]), bytes.fromhex(v["datagram"])
        action, _, out = run(bed, frame(dgram, dport=v["port"]))
        assert action == "pass" and out == frame(data, dport=v["port"]), v
        guard.write_watermark_service(bed.maps, ipaddress.ip_address(PROT), v["port"], None)
