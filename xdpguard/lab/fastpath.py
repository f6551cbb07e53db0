"""A three-namespace forward for the XDP fast path's test and benchmark (scripts/bench_fastpath.py).

    client   xgc0 198.18.0.1/24 ── prot xgp0 198.18.0.2/24 (protective IP; XDP)
                                    prot xgb1 198.18.1.1/24 ── backend xgb0 198.18.1.2/24

The backend runs a raw echo (tcp+udp 7: the bytes back, nothing added) and a sink (tcp 5001:
reads and discards). The client has no route to the backend: only the protector's NAT reaches it.
Variants of the protector:
- `plain`: a hand-written nft DNAT + masquerade, no XDP;
- `xdp`:   `xdpguard attach` + `forward add` (nftables NAT behind our XDP);
- `fast`:  the same attached with --fast-forward; `sync` runs `xdpguard forward fastpath`.
Native XDP on a veth needs a program on the receiving peer for redirected frames
(ndo_xdp_xmit): every variant gets a bare XDP_PASS on the client's and the backend's end, so
the protector is the only difference between them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .netns import BED_BACKEND4, BED_PROT4, Lab

PY = sys.executable
PROT, BACKEND = BED_PROT4, BED_BACKEND4  # Lab.forward_bed's addresses
ECHO_PORT, SINK_PORT = 7, 5001
VARIANTS = ("plain", "xdp", "fast")

# The backend: raw TCP echo and discard sink, raw UDP echo; exits after argv[1] seconds.
SERVER = r"""
import selectors, socket, sys, time
end = time.monotonic() + float(sys.argv[1])
sel = selectors.DefaultSelector()
def listen(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(128); s.setblocking(False); return s
echo, sink = listen(7), listen(5001)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7)); u.setblocking(False)
sel.register(echo, selectors.EVENT_READ, "echo"); sel.register(sink, selectors.EVENT_READ, "sink")
sel.register(u, selectors.EVENT_READ, "udp")
while time.monotonic() < end:
    for key, _ in sel.select(0.5):
        s, what = key.fileobj, key.data
        if what in ("echo", "sink"):
            try:
                c, _ = s.accept()
            except OSError:
                continue
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ, "c" + what)
        elif what == "udp":
            try:
                data, addr = s.recvfrom(65536); s.sendto(data, addr)
            except OSError:
                pass
        else:
            try:
                data = s.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s); s.close(); continue
            if what == "cecho":
                s.setblocking(True); s.sendall(data); s.setblocking(False)
"""

XDP_PASS_LOADER = r"""
import socket, sys
from bcc import BPF
from xdpguard.core.kernel import libbpf
b = BPF(text=b"int pass_all(struct xdp_md *ctx) { return XDP_PASS; }")
fn = b.load_func(b"pass_all", BPF.XDP)
libbpf.xdp_attach(socket.if_nametoindex(sys.argv[1]), fn.fd, libbpf.XDP_FLAGS_DRV_MODE)
"""

PLAIN_NFT = f"""
table inet plain {{
  chain pre {{ type nat hook prerouting priority dstnat; ip daddr {PROT} tcp dport {{ {SINK_PORT}, {ECHO_PORT} }} dnat ip to {BACKEND}; ip daddr {PROT} udp dport {ECHO_PORT} dnat ip to {BACKEND}; }}
  chain post {{ type nat hook postrouting priority srcnat; ct status dnat ip daddr {BACKEND} masquerade; }}
}}
"""


def xdpguard_argv() -> list[str]:
    exe = Path(sys.executable).parent / "xdpguard"
    return [str(exe)] if exe.exists() else [PY, "-m", "xdpguard.cli.main"]


@dataclass
class Topo:
    lab: Lab
    variant: str
    client: str
    prot: str
    backend: str

    def xg(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The xdpguard CLI in the protector's namespace."""
        return self.lab.run(self.prot, *xdpguard_argv(), *args, timeout=timeout)

    def sync(self) -> dict:
        """One `xdpguard forward fastpath xgp0 --via xgb1 --json` (the fast variant only)."""
        return json.loads(self.xg("forward", "fastpath", "xgp0", "--via", "xgb1", "--json").stdout)

    def forward_packets(self) -> dict[str, int]:
        """nftables' per-rule traffic counters (`forward list`): rule key → packets."""
        return {r["key"]: r["packets"] for r in json.loads(self.xg("forward", "list", "--json").stdout)["rules"]}


def _xdp_pass(lab: Lab, ns: str, ifname: str) -> None:
    lab.run(ns, PY, "-c", XDP_PASS_LOADER, ifname, timeout=60)
    lab.defer("xdp off", subprocess.run, ["ip", "-n", ns, "link", "set", ifname, "xdp", "off"], capture_output=True)


def build(lab: Lab, variant: str, duration: float, tag: str = "") -> Topo:
    """One topology of `variant` (VARIANTS), servers bounded by `duration` seconds."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant}")
    p = f"f{variant[0]}{tag}"
    client, prot, backend = lab.forward_bed(p)
    lab.popen(backend, PY, "-c", SERVER, str(duration), stdout=subprocess.DEVNULL)
    _xdp_pass(lab, client, "xgc0")
    _xdp_pass(lab, backend, "xgb0")
    t = Topo(lab, variant, client, prot, backend)
    if variant == "plain":
        lab.sysctl(prot, "net.ipv4.ip_forward", 1)
        lab.run(prot, "nft", "-f", "-", input=PLAIN_NFT)
        return t
    attach = ["attach", "xgp0", "--protect", PROT, "--mode", "native", "--level", "none"]
    t.xg(*attach, *(["--fast-forward"] if variant == "fast" else []))
    lab.defer(
        "detach", subprocess.run, ["ip", "netns", "exec", prot, *xdpguard_argv(), "detach", "xgp0"], capture_output=True
    )
    for proto, port in (("tcp", ECHO_PORT), ("tcp", SINK_PORT), ("udp", ECHO_PORT)):
        t.xg("forward", "add", proto, str(port), "--to", f"{BACKEND}:{port}")
    return t
