"""The node's BGP speaker: BIRD 2, configured by xdpguard, announcing the protective addresses.

xdpguard writes BIRD's whole config (`render`) and reloads it with `birdc configure`
(`configure`). Every node renders the same path attributes (same local AS, origin IGP, no MED,
no communities), so the router sees equal-cost paths and spreads flows over all of them.

How a dead `xdpguard cluster run` stops attracting traffic: the announced routes are BIRD static
routes whose next hop is a TUN device (`LivenessDevice`, default `xgvip0`) that the running agent
holds open. A TUN device without `IFF_PERSIST` is deleted by the kernel the moment its last file
descriptor closes, which happens when the process exits for any reason, SIGKILL included. BIRD's
static protocol (with `check link`) drops routes via a vanished or down interface, and the BGP
session withdraws them from the router at once (measured: tens of milliseconds). No timer,
no heartbeat: the kernel ties the announcement to the process. The agent also withdraws on
purpose (ill health) by rendering the config without the routes. A dead BIRD, a dead link or a
frozen box is the router's to notice: the TCP session closes, or BFD times out.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import state
from ..model import vocab
from ..model.cluster import BgpSpec, IPAddress
from ..errors import UserError

STATIC4, STATIC6 = "xg_vip4", "xg_vip6"  # BIRD protocol names of the announced routes
RTBH4, RTBH6 = "xg_rtbh4", "xg_rtbh6"  # blackhole routes (escalation), preferred over the above
FLOW4, FLOW6 = "xg_fs4", "xg_fs6"  # FlowSpec rules (escalation), in tables xg_flow4 / xg_flow6
TRAFFIC_RATE_0 = "(generic, 0x80060000, 0x0)"  # RFC 8955 traffic-rate 0 (drop), AS 0
BIRDC_TIMEOUT_S = 10.0

_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000


class BirdError(UserError):
    """BIRD refused a config or cannot be reached."""


def protocol_name(n_index: int, version: int) -> str:
    return f"xg_up{n_index}v{version}"


@dataclass(frozen=True)
class Escalation:
    """An upstream route for one protected address under an attack the nodes cannot absorb:
    `blackhole` (the /32 or /128 with the RTBH community) or `flowspec` (destination plus the
    attack's protocol and port when the samples show one, action traffic-rate 0)."""

    address: IPAddress
    kind: str  # flowspec | blackhole
    proto: int | None = None  # IP protocol number
    dport: int | None = None

    def flow_match(self) -> str:
        plen = 32 if self.address.version == 4 else 128
        m = [f"dst {bird_addr(self.address)}/{plen};"]
        if self.proto is not None:
            m.append(f"{'proto' if self.address.version == 4 else 'next header'} = {self.proto};")
        if self.dport is not None:
            m.append(f"dport = {self.dport};")
        return " ".join(m)

    def describe(self) -> str:
        if self.kind == "blackhole":
            return f"blackhole {self.address}"
        what = vocab.proto_name(self.proto) if self.proto else ""
        return f"flowspec {self.address}" + (f" {what}" if what else "") + (f"/{self.dport}" if self.dport else "")


def bird_str(value: str) -> str:
    """The one way a string enters BIRD's config: as a BIRD string literal. BIRD's lexer has no
    escapes (a string is `"` anything but `"` or a line break `"`), so what cannot be written
    is refused: a quote, a backslash, any control character. The loader refuses these already;
    this is the last line, so that no value can end a statement and start another."""
    s = str(value)
    if '"' in s or "\\" in s or vocab.control_char(s) is not None:
        raise UserError(
            f"cannot write {s!r} into BIRD's config: quotes, backslashes and control characters cannot be written there"
        )
    return f'"{s}"'


def bird_comment(value: str) -> str:
    """Text for a `#` comment of BIRD's config: one line, so nothing after it becomes config."""
    s = str(value)
    if vocab.control_char(s) is not None:
        raise UserError(f"cannot write {s!r} into BIRD's config: control characters cannot be written there")
    return s


def bird_addr(a: IPAddress) -> str:
    """An address as BIRD takes it; a scoped one (its zone is free text) is refused."""
    if getattr(a, "scope_id", None) is not None or "%" in str(a):
        raise UserError(f"cannot write {str(a)!r} into BIRD's config: a scoped address is not allowed")
    return str(a)


def render(
    bgp: BgpSpec, announce: list[IPAddress], node: str = "", escalations: tuple[Escalation, ...] = (), prepend: int = 0
) -> str:
    """The node's BIRD config. `announce` are the addresses to announce now (empty: withdrawn);
    `escalations` the upstream routes this node (the elected one) announces besides; `prepend`
    > 0 (overloaded) adds its AS that many times to the path: the router then prefers the other
    nodes and keeps this one as a backup instead of losing it."""
    v4 = sorted(a for a in announce if a.version == 4)
    v6 = sorted(a for a in announce if a.version == 6)
    dev = bird_str(bgp.liveness_iface)
    comm = "(%d,%d)" % bgp.blackhole_community
    rtbh = {4: [], 6: []}
    flows = {4: [], 6: []}
    for e in sorted(escalations, key=lambda e: (e.kind, e.address.version, int(e.address))):
        if e.kind == "blackhole":
            plen = 32 if e.address.version == 4 else 128
            # via the liveness device too: a dead agent's blackhole goes with its TUN device
            rtbh[e.address.version].append(
                f"  route {bird_addr(e.address)}/{plen} via {dev} {{ bgp_community.add({comm}); }};"
            )
        else:
            flows[e.address.version].append(
                f"  route flow{e.address.version} {{ {e.flow_match()} }} {{ bgp_ext_community.add({TRAFFIC_RATE_0}); }};"
            )
    flowspec = bgp.flowspec_pps > 0
    L = [
        f"# BIRD config of xdpguard cluster node {bird_comment(node or '?')}: written by xdpguard, do not edit",
        f"router id {bird_addr(bgp.router_id)};",
        "protocol device { scan time 10; }",
        f"protocol static {STATIC4} {{",
        "  ipv4;",
        "  check link;  # a route via the liveness device lives only as long as xdpguard holds it",
        *[f"  route {bird_addr(a)}/32 via {dev};" for a in v4],
        "}",
        f"protocol static {STATIC6} {{",
        "  ipv6;",
        "  check link;",
        *[f"  route {bird_addr(a)}/128 via {dev};" for a in v6],
        "}",
    ]
    for ver, name in ((4, RTBH4), (6, RTBH6)):
        L += [
            f"protocol static {name} {{",
            f"  ipv{ver} {{ preference 250; }};  # wins over the plain announcement",
            "  check link;",
            *rtbh[ver],
            "}",
        ]
    if flowspec:
        L += ["flow4 table xg_flow4;", "flow6 table xg_flow6;"]
        for ver, name in ((4, FLOW4), (6, FLOW6)):
            L += [f"protocol static {name} {{", f"  flow{ver} {{ table xg_flow{ver}; }};", *flows[ver], "}"]
    if bgp.bfd:
        ms = bgp.bfd_interval_ms
        L += [
            "protocol bfd xg_bfd {",
            f'  interface "*" {{ min rx interval {ms} ms; min tx interval {ms} ms; '
            f"idle tx interval 300 ms; multiplier {bgp.bfd_multiplier}; }};",
            "}",
        ]
    for i, n in enumerate(bgp.neighbors):
        ch, static, black = ("ipv4", STATIC4, RTBH4) if n.address.version == 4 else ("ipv6", STATIC6, RTBH6)
        ver = n.address.version
        L += [
            f"protocol bgp {protocol_name(i, n.address.version)} {{",
            f"  local as {bgp.local_as};",
            f"  neighbor {bird_addr(n.address)} as {n.asn};",
            f"  hold time {bgp.hold_s}; connect retry time 1; error wait time 1, 5;",
            f"  bfd {'on' if bgp.bfd else 'off'}; check link on;",
            (
                f'  {ch} {{ import none; export where proto = "{static}" || proto = "{black}"; }};'
                if not prepend
                else f'  {ch} {{ import none; export filter {{ if proto = "{static}" || proto = "{black}" then {{ '
                + f"bgp_path.prepend({bgp.local_as}); " * prepend
                + "accept; } reject; }; };"
            ),
            *([f"  flow{ver} {{ table xg_flow{ver}; import none; export all; }};"] if flowspec else []),
            "}",
        ]
    return "\n".join(L) + "\n"


def _birdc() -> str:
    exe = shutil.which("birdc")
    if exe is None:
        raise BirdError("birdc not found: install BIRD 2 (Debian bird2; scripts/setup.sh does)")
    return exe


def birdc(socket_path: str, *args: str) -> str:
    """Run one birdc command against BIRD's control socket; its text output."""
    try:
        p = subprocess.run(
            [_birdc(), "-s", socket_path, *args],
            capture_output=True,
            text=True,
            timeout=BIRDC_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise BirdError(f"birdc {' '.join(args)}: no answer from {socket_path} in {BIRDC_TIMEOUT_S:g} s") from None
    out = (p.stdout + p.stderr).strip()
    if p.returncode != 0 or "Unable to connect" in out:
        raise BirdError(f"birdc {' '.join(args)} ({socket_path}): {out.splitlines()[-1] if out else p.returncode}")
    return out


def write_config(path: str, text: str) -> bool:
    """Write the config atomically; False when the file already holds exactly `text`."""
    p = Path(path)
    try:
        if p.read_text() == text:
            return False
    except OSError:
        pass
    p.parent.mkdir(parents=True, exist_ok=True)
    state.write_durably(p, text.encode())  # a fresh temporary, never a planted FILE.tmp (issue 24)
    os.chmod(p, 0o644)  # as before: write_durably's files are root-only
    return True


def configure(bgp: BgpSpec, text: str) -> bool:
    """Write the config and make the running BIRD take it; True when it changed anything."""
    if not write_config(bgp.bird_config, text):
        return False
    out = birdc(bgp.bird_socket, "configure", bird_str(bgp.bird_config))
    if "Reconfigur" not in out:  # "Reconfigured", "Reconfiguration in progress"
        raise BirdError(f"BIRD refused {bgp.bird_config}: {out.splitlines()[-1] if out else '?'}")
    return True


@dataclass(frozen=True)
class Protocol:
    name: str
    proto: str
    state: str
    info: str


_PROTO_RE = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*(.*)$")


def protocols(socket_path: str) -> list[Protocol]:
    """`birdc show protocols`, parsed."""
    out = []
    for line in birdc(socket_path, "show", "protocols").splitlines():
        m = _PROTO_RE.match(line)
        if not m or m.group(1) in ("Name", "BIRD"):
            continue
        info = m.group(6).strip()
        out.append(Protocol(m.group(1), m.group(2), m.group(4), info))
    return out


def exported(socket_path: str, proto: str) -> list[str]:
    """The prefixes BIRD exports to BGP protocol `proto` (what the router is told)."""
    out = birdc(socket_path, "show", "route", "export", proto)
    return re.findall(r"^([0-9a-f.:]+/\d+)", out, re.M)


class LivenessDevice:
    """A non-persistent TUN device held open by this process: gone the moment the process is."""

    def __init__(self, name: str):
        self.name = name
        self.fd: int | None = None

    def open(self) -> LivenessDevice:
        if os.path.exists(f"/sys/class/net/{self.name}"):
            raise UserError(
                f"interface {self.name} exists already: another `xdpguard cluster run` holds it "
                f"in this namespace, or pick another [bgp] liveness_interface"
            )
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", self.name.encode(), _IFF_TUN | _IFF_NO_PI))
        except OSError as exc:
            os.close(fd)
            raise UserError(f"cannot create TUN device {self.name}: {exc.strerror}") from None
        self.fd = fd
        self.set_up(True)
        return self

    def set_up(self, up: bool) -> None:
        p = subprocess.run(
            ["ip", "link", "set", self.name, "up" if up else "down"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
        if p.returncode != 0:
            raise UserError(f"ip link set {self.name}: {p.stderr.strip()}")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> LivenessDevice:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def announce_set(bgp: BgpSpec, protected: list[IPAddress]) -> list[IPAddress]:
    """What this node announces when healthy: [bgp] announce, or every protected address."""
    addrs = list(bgp.announce) or list(protected)
    return sorted(set(addrs), key=lambda a: (a.version, int(ipaddress.ip_address(a))))
