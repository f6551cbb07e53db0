"""The desired spec: what the operator asked for, as one frozen dataclass tree.

Interfaces and their modes, protected addresses, lists, every cleansing policy, forwarding rules,
attack thresholds and hooks, and the daemon's settings. The same tree is read from TOML
(desired/load.py), written back (desired/dump.py), read from the kernel (reconcile.export_iface) and
compared (desired/diff.py). Dynamic state (bans, list entries with a TTL, health, counters) is not
part of it. Values are normalised (the norm_* functions: bursts filled in, filter payloads masked,
port runs merged, lists as sets), so two trees that realise the same kernel state are equal.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from .. import policy
from .. import watermark as wmark
from .cluster import BgpSpec, ClusterSpec
from ..l7 import spec as l7spec
from ..errors import UserError
from .prefixes import Prefix, parse_address
from . import geo, thresholds, vocab
from .connlimit import ConnLimits
from .forwarding import ForwardRule

from ..kernel.abi import ALL_DROP_MASK, DROP_REASONS  # noqa: F401  (the one table: abi)

MODES = ("auto", "native", "skb")
#: `[interface.verify]` keys: policy.VerifySettings' fields but the runtime udp_learning switch
VERIFY_KEYS = (
    "budget_udp_pps",
    "budget_tcp_syns",
    "budget",
    "tcp_pps",
    "tcp_burst",
    "udp_pps",
    "udp_burst",
    "udp_peace_pps",
    "spoof_ban_s",
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


PortRun = tuple[str, int, int]  # (proto, lo, hi), merged, sorted


@dataclass(frozen=True)
class AddressSpec:
    """One protected address and what applies to it."""

    address: IPAddress
    blocked: frozenset[str] = frozenset()  # of policy.PROTOCOLS
    limits: policy.Limits = policy.Limits()  # bursts filled in (Limits.effective)
    syn: policy.SynPolicy = policy.SynPolicy()
    open_ports: tuple[PortRun, ...] = ()  # opened by the operator (forwards open their own)
    port_limits: tuple[tuple[str, int, int, policy.Limits], ...] = ()  # merged runs of equal limits
    level: str | None = None  # levels.LEVELS: its preset filled what the table did not give
    connlimit: ConnLimits | None = None  # connection limits of its forwarded services (connlimit.py)
    http: tuple[l7spec.HttpService, ...] = ()  # HTTP services HAProxy serves on it (l7/), by (port, name)
    geo: geo.GeoSpec | None = None  # region (geo) blocking (geo.py); None: no rule
    watermark: tuple[wmark.WatermarkSpec, ...] = ()  # watermarked UDP ports (watermark.py), by port

    @property
    def policy(self) -> policy.AddressPolicy:
        return policy.AddressPolicy(self.blocked, self.limits, self.syn)


@dataclass(frozen=True)
class ForwardSpec:
    rule: ForwardRule
    udp_probe: bytes | None = None  # None: the default probe payload


@dataclass(frozen=True)
class InterfaceSpec:
    name: str
    mode: str = "auto"
    addresses: tuple[AddressSpec, ...] = ()  # sorted by (version, address)
    global_: policy.GlobalPolicy = policy.GlobalPolicy()
    block: frozenset[Prefix] = frozenset()  # permanent entries (TTL entries are dynamic)
    allow: frozenset[Prefix] = frozenset()
    forwards: tuple[ForwardSpec, ...] = ()  # sorted by rule key
    events: thresholds.EventConfig = thresholds.EventConfig()
    # verified clients and the admission budgets (`[interface.verify]`); udp_learning is the
    # daemon's runtime switch, never desired state (always True here)
    verify: policy.VerifySettings = policy.VerifySettings()
    # the forwarding fast path (`[interface.fast_path] via = "IF"`, fastfwd.py): the backend-side
    # interface its return program is attached to; None: off. Implies a program compiled with it
    # (kernel.abi.FWD_DEFINE): attach and upgrade compile it in when the spec holds it.
    fast_path: str | None = None

    @property
    def protected(self) -> list[IPAddress]:
        return [a.address for a in self.addresses]

    def selected(self, protected: str | None) -> set[IPAddress]:
        """The addresses a verb's --protected names: all of them (None), or the one given, which
        must be protected here (else one UserError)."""
        if protected is None:
            return set(self.protected)
        a = parse_address(protected, "protected address")
        if a not in self.protected:
            raise UserError(
                f"{a} is not a protected address of {self.name} (protected: {', '.join(map(str, self.protected))})"
            )
        return {a}

    def address(self, addr: IPAddress) -> AddressSpec | None:
        return next((a for a in self.addresses if a.address == addr), None)


@dataclass(frozen=True)
class DaemonSpec:
    metrics: str | None = None  # HOST:PORT
    health_interval_s: float = 2.0
    health_timeout_s: float = 1.0
    rise: int = 2
    fall: int = 3
    sweep_interval_s: float = 10.0
    detect: bool = True
    detect_interval_s: float = 1.0
    # automatic mitigation (mitigation.py; its Settings take these)
    mitigation: bool = True
    mitigation_pps: float = 5000.0
    mitigation_factor: float = 4.0
    mitigation_max_share: float = 0.01
    mitigation_hold_s: float = 5.0
    mitigation_interval_s: float = 0.5  # detection rounds are at most this long while mitigation is on


@dataclass(frozen=True)
class Desired:
    interfaces: tuple[InterfaceSpec, ...] = ()  # sorted by name
    daemon: DaemonSpec = DaemonSpec()
    # node-local settings read by `xdpguard cluster run`; `apply` neither realises nor diffs them
    cluster: ClusterSpec | None = None
    bgp: BgpSpec | None = None

    def interface(self, name: str) -> InterfaceSpec | None:
        return next((i for i in self.interfaces if i.name == name), None)

    def with_interface(self, spec: InterfaceSpec) -> Desired:
        rest = [i for i in self.interfaces if i.name != spec.name]
        return replace(self, interfaces=tuple(sorted([*rest, spec], key=lambda i: i.name)))

    def without_interface(self, name: str) -> Desired:
        return replace(self, interfaces=tuple(i for i in self.interfaces if i.name != name))


# ---- normalisation (shared by the loader and live.export) ----


def addr_order(a: IPAddress) -> tuple[int, bytes]:
    return (a.version, a.packed)


def norm_filter(f: policy.Filter) -> policy.Filter:
    """Payload bytes masked and the mask explicit: the form the kernel gives back."""
    if not f.payload:  # base and offset mean nothing without payload bytes
        return replace(f, payload_mask=b"", payload_base="payload", payload_off=0)
    m = f.mask_bytes()
    return replace(f, payload=bytes(b & k for b, k in zip(f.payload, m)), payload_mask=m)


def norm_port_runs(items) -> tuple[PortRun, ...]:
    """(proto, lo, hi) triples → merged, sorted runs."""
    by: dict[str, set[int]] = {}
    for proto, lo, hi in items:
        by.setdefault(proto, set()).update(range(lo, hi + 1))
    return tuple((p, lo, hi) for p in sorted(by) for lo, hi in vocab.runs(by[p]))


def norm_port_limits(items) -> tuple[tuple[str, int, int, policy.Limits], ...]:
    """(proto, lo, hi, Limits) → per-port, later entries win, then merged runs of equal limits."""
    per: dict[tuple[str, int], policy.Limits] = {}
    for proto, lo, hi, lim in items:
        for p in range(lo, hi + 1):
            per[(proto, p)] = lim.effective()
    out: list[list] = []
    for (proto, p), lim in sorted(per.items(), key=lambda kv: kv[0]):
        if out and out[-1][0] == proto and out[-1][2] == p - 1 and out[-1][3] == lim:
            out[-1][2] = p
        else:
            out.append([proto, p, p, lim])
    return tuple(tuple(r) for r in out)


def norm_interface(spec: InterfaceSpec) -> InterfaceSpec:
    return replace(
        spec,
        addresses=tuple(sorted(spec.addresses, key=lambda a: addr_order(a.address))),
        global_=replace(spec.global_, filters=tuple(norm_filter(f) for f in spec.global_.filters)),
        forwards=tuple(sorted(spec.forwards, key=lambda f: f.rule.key)),
    )
