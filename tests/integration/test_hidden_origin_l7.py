"""The real server stays hidden on the layer-7 path too (issue 28, part 3): HAProxy owned by
xdpguard (core/l7, lab/l7.py) in front of the backend. Everything the client and the attacker
receive is captured across the page, a cookie challenge (302), an exempt API path, the JavaScript
challenge (level emergency) and the backend going down until HAProxy's health check marks it
down (its 503 page: headers and body name no address, server or backend): the backend's
address appears in no packet (packed or as text), the protector's backend-side address in no IP
header."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP
from scapy.utils import rdpcap

from test_l7_haproxy import URL, Setup, _service
from xdpguard.core.l7 import runtime
from xdpguard.lab import l7 as L

pytestmark = pytest.mark.kernel


def _capture(lab, ns: str, path: Path) -> subprocess.Popen:
    p = lab.popen(
        ns,
        "timeout",
        "120",
        "tcpdump",
        "-i",
        "eth0",
        "-U",
        "-n",
        "-s",
        "0",
        "-c",
        "20000",
        "-w",
        str(path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = p.stderr.readline()
    assert "listening on" in line, line
    return p


def _server_status(s: Setup) -> str | None:
    """The status HAProxy's health check gives the backend's server (show stat), None if not found."""
    rows = runtime.show_stat(str(s.h.admin_socket))
    return next((r.status for r in rows if r.proxy == "web_be" and r.name == "s0"), None)


def test_l7_path_never_shows_the_backend(lab, tmp_path: Path):
    s = Setup(lab)
    assert s.apply(_service()) == "started"
    pcaps = {ns: tmp_path / f"{i}.pcap" for i, ns in enumerate((s.t.client, s.t.attacker))}
    caps = [_capture(lab, ns, p) for ns, p in pcaps.items()]
    codes = {}
    try:
        for ns in pcaps:
            code = lambda path, *a: (
                s.curl(
                    ns,
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    *a,  # noqa: E731
                    f"http://{L.PROT4}{path}",
                ).stdout
            )
            codes[(ns, "page")] = code("/")
            codes[(ns, "challenge")] = code("/private/a")
            codes[(ns, "api")] = code("/api/x")
        assert s.apply(_service(level="emergency")) == "reloaded"
        for ns in pcaps:
            codes[(ns, "js")] = s.curl(ns, "-s", URL).stdout
        s.t.backend_proc.kill()
        s.t.backend_proc.wait(timeout=10)
        for ns in pcaps:  # HAProxy's error page once its retries give up (bounded)
            codes[(ns, "down")] = lab.run(
                ns,
                "curl",
                "-s",
                "-m",
                "8",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://{L.PROT4}/api/x",
                check=False,
                timeout=15,
            ).stdout
        end = time.monotonic() + 40  # then its health check marks the server down (fall 3, 2 s apart)
        while (status := _server_status(s)) is not None and not status.startswith("DOWN") and time.monotonic() < end:
            time.sleep(0.5)
        codes["status"] = status
        for ns in pcaps:  # no server left: HAProxy's own 503 page, headers and body
            codes[(ns, "down_page")] = lab.run(
                ns, "curl", "-s", "-i", "-m", "8", f"http://{L.PROT4}/api/x", check=False, timeout=15
            ).stdout
        time.sleep(0.5)
    finally:
        for p in caps:
            p.send_signal(signal.SIGINT)
            p.wait(timeout=20)

    for ns in pcaps:  # the scenarios did what they are about
        assert codes[(ns, "page")] == "200" and codes[(ns, "challenge")] == "302" and codes[(ns, "api")] == "200", codes
        assert "location.reload()" in codes[(ns, "js")], codes[(ns, "js")][:200]
        assert codes[(ns, "down")] in ("502", "503"), codes
        assert codes["status"].startswith("DOWN"), codes  # the health check failed
        head, _, body = codes[(ns, "down_page")].partition("\n\n")  # (curl's CRLFs read as text)
        assert head.startswith("HTTP/1.1 503") and "503 Service Unavailable" in body, codes[(ns, "down_page")]
        for text in (L.BACKEND4, L.PROT_BACK4, "s0", "web_be"):  # no address, no server or backend name
            assert text not in head and text not in body, (text, codes[(ns, "down_page")])

    forbidden = [ipaddress.ip_address(L.BACKEND4).packed, L.BACKEND4.encode()]
    for ns, path in pcaps.items():
        pkts = rdpcap(str(path))
        assert len(pkts) > 20, len(pkts)
        for pkt in pkts:
            raw = bytes(pkt)
            for pattern in forbidden:
                assert pattern not in raw, f"{ns} received {pattern!r} in {pkt.summary()}"
            if pkt.haslayer(IP):
                assert L.PROT_BACK4 not in (pkt[IP].src, pkt[IP].dst), pkt.summary()
