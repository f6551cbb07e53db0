"""Forwarding rules: typed, validated, frozen values and the parsers that build them.

A forwarding rule says: connections to ``PROTECTED:PORT[-PORT]`` over tcp or udp go to a set of
backends (the hidden real servers). This module only describes and validates rules; the nftables
ruleset is built from them by :mod:`xdpguard.core.nat.nft`.

Port mapping (documented once, used by the NAT builder):

- a backend without a port keeps the destination port (``80 → backend:80``; a range
  ``8000-8010`` maps port for port onto the same range on the backend);
- a backend with a port on a single-port rule gets that port (``80 → backend:8080``);
- a backend with a port on a range of N ports gets the range shifted to start at that port:
  ``8000-8010 → backend:9000`` means ``8000→9000, 8001→9001, … 8010→9010``. On a range rule every
  backend (backups included) must then use the same port, because the shift belongs to the rule.

Every parser and validator raises ``ValueError`` with a one-line message naming the problem.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Proto = Literal["tcp", "udp"]

PROTOCOLS: tuple[str, ...] = ("tcp", "udp")
PORT_MIN = 1
PORT_MAX = 65535
WEIGHT_MAX = 1000
PERSIST_MAX_S = 7 * 24 * 3600  # one week; longer is almost certainly a typo


def _check_port(port: object, what: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"{what} must be an integer, got {port!r}")
    if not PORT_MIN <= port <= PORT_MAX:
        raise ValueError(f"{what} {port} is out of range {PORT_MIN}-{PORT_MAX}")
    return port


def _check_address(host: object, what: str) -> IPAddress:
    if not isinstance(host, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        raise ValueError(f"{what} must be an IP address, got {host!r}")
    if host.is_unspecified or host.is_multicast or host.is_loopback:
        raise ValueError(f"{what} {host} is not a unicast address")
    if host.is_link_local:
        raise ValueError(f"{what} {host} is link-local; use a routable address")
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        raise ValueError(f"{what} {host} is IPv4-mapped; write it as {host.ipv4_mapped}")
    return host


def _format_host(host: IPAddress) -> str:
    return f"[{host}]" if host.version == 6 else str(host)


@dataclass(frozen=True)
class Backend:
    """One real server: address, optional port (None keeps the destination port), weight."""

    host: IPAddress
    port: int | None = None
    weight: int = 1
    backup: bool = False

    def __post_init__(self) -> None:
        _check_address(self.host, "backend address")
        if self.port is not None:
            _check_port(self.port, "backend port")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int):
            raise ValueError(f"backend weight must be an integer, got {self.weight!r}")
        if not 1 <= self.weight <= WEIGHT_MAX:
            raise ValueError(f"backend weight {self.weight} is out of range 1-{WEIGHT_MAX}")
        if not isinstance(self.backup, bool):
            raise ValueError(f"backend backup flag must be true or false, got {self.backup!r}")

    @property
    def endpoint(self) -> str:
        """``198.18.1.10:80``, ``[2001:db8::10]:80`` or the bare address when no port is set."""
        host = _format_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": str(self.host),
            "port": self.port,
            "weight": self.weight,
            "backup": self.backup,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Backend:
        _check_keys(data, required={"host"}, optional={"port", "weight", "backup"}, what="backend")
        return cls(
            host=_parse_address(data["host"], "backend address"),
            port=data.get("port"),
            weight=data.get("weight", 1),
            backup=data.get("backup", False),
        )


@dataclass(frozen=True)
class ForwardRule:
    """``proto PROTECTED:port_lo-port_hi → backends``, optionally persistent and/or routed.

    ``persist_s`` > 0 keeps a client on the backend it got for that many seconds after its last
    new connection. ``preserve_client_ip`` (routed mode) skips SNAT: the backend sees the real
    client address and must route its replies back through the protector.
    """

    proto: Proto
    protected: IPAddress
    port_lo: int
    port_hi: int
    backends: tuple[Backend, ...]
    persist_s: int = 0
    preserve_client_ip: bool = False

    def __post_init__(self) -> None:
        if self.proto not in PROTOCOLS:
            raise ValueError(f"protocol must be tcp or udp, got {self.proto!r}")
        _check_address(self.protected, "protected address")
        _check_port(self.port_lo)
        _check_port(self.port_hi)
        if self.port_lo > self.port_hi:
            raise ValueError(f"port range {self.port_lo}-{self.port_hi} is reversed")
        if not isinstance(self.backends, tuple) or not self.backends:
            raise ValueError("a forwarding rule needs at least one backend (a tuple of Backend)")
        for backend in self.backends:
            if not isinstance(backend, Backend):
                raise ValueError(f"backend must be a Backend, got {backend!r}")
        if all(b.backup for b in self.backends):
            raise ValueError("a forwarding rule needs at least one backend that is not a backup")
        seen: set[tuple[IPAddress, int | None]] = set()
        for backend in self.backends:
            if backend.host.version != self.protected.version:
                raise ValueError(
                    f"backend {backend.endpoint} is IPv{backend.host.version} but protected "
                    f"address {self.protected} is IPv{self.protected.version}"
                )
            if backend.host == self.protected:
                raise ValueError(f"backend {backend.endpoint} is the protected address itself")
            ident = (backend.host, backend.port)
            if ident in seen:
                raise ValueError(f"backend {backend.endpoint} is listed twice")
            seen.add(ident)
        if self.port_hi > self.port_lo:
            ports = {b.port for b in self.backends}
            if len(ports) > 1:
                raise ValueError(
                    f"port range {self.port_lo}-{self.port_hi}: every backend must use the same "
                    f"port (or none), got {', '.join(b.endpoint for b in self.backends)}"
                )
            (port,) = ports
            if port is not None and port + (self.port_hi - self.port_lo) > PORT_MAX:
                raise ValueError(
                    f"port range {self.port_lo}-{self.port_hi} shifted to start at {port} ends beyond {PORT_MAX}"
                )
        if isinstance(self.persist_s, bool) or not isinstance(self.persist_s, int):
            raise ValueError(f"persistence must be whole seconds, got {self.persist_s!r}")
        if not 0 <= self.persist_s <= PERSIST_MAX_S:
            raise ValueError(f"persistence {self.persist_s}s is out of range 0-{PERSIST_MAX_S}")
        if not isinstance(self.preserve_client_ip, bool):
            raise ValueError(f"preserve_client_ip must be true or false, got {self.preserve_client_ip!r}")

    @property
    def key(self) -> str:
        """See :func:`rule_key`."""
        return rule_key(self)

    @property
    def family(self) -> int:
        """4 or 6."""
        return self.protected.version

    @property
    def ports(self) -> str:
        return str(self.port_lo) if self.port_lo == self.port_hi else f"{self.port_lo}-{self.port_hi}"

    @property
    def primaries(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if not b.backup)

    @property
    def backups(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.backup)

    def target_port(self, backend: Backend, port: int) -> int:
        """The backend port that destination ``port`` (inside this rule's range) is sent to."""
        if not self.port_lo <= port <= self.port_hi:
            raise ValueError(f"port {port} is outside rule {self.key}")
        return port if backend.port is None else backend.port + (port - self.port_lo)

    def to_dict(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "protected": str(self.protected),
            "port_lo": self.port_lo,
            "port_hi": self.port_hi,
            "backends": [b.to_dict() for b in self.backends],
            "persist_s": self.persist_s,
            "preserve_client_ip": self.preserve_client_ip,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ForwardRule:
        _check_keys(
            data,
            required={"proto", "protected", "port_lo", "port_hi", "backends"},
            optional={"persist_s", "preserve_client_ip"},
            what="forwarding rule",
        )
        backends = data["backends"]
        if not isinstance(backends, list):
            raise ValueError(f"forwarding rule backends must be a list, got {backends!r}")
        return cls(
            proto=data["proto"],
            protected=_parse_address(data["protected"], "protected address"),
            port_lo=data["port_lo"],
            port_hi=data["port_hi"],
            backends=tuple(Backend.from_dict(b) for b in backends),
            persist_s=data.get("persist_s", 0),
            preserve_client_ip=data.get("preserve_client_ip", False),
        )


def rule_key(rule: ForwardRule) -> str:
    """The identity of a rule: ``tcp/198.18.0.1/80``, ``udp/2001:db8::1/8000-8010``.

    Two rules with the same key cannot coexist; the key names the rule in the state file, in
    nftables comments and in health and counter maps.
    """
    return f"{rule.proto}/{rule.protected}/{rule.ports}"


def _check_keys(data: object, required: set[str], optional: set[str], what: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a mapping, got {data!r}")
    missing = required - data.keys()
    if missing:
        raise ValueError(f"{what} lacks {', '.join(sorted(missing))}")
    unknown = data.keys() - required - optional
    if unknown:
        raise ValueError(f"{what} has unknown field(s) {', '.join(sorted(map(str, unknown)))}")


def _parse_address(text: object, what: str) -> IPAddress:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {text!r}")
    try:
        a = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IP address") from None
    if getattr(a, "scope_id", None) is not None:
        raise ValueError(f"{what} {text!r}: a scoped address (with %ZONE) is not allowed")
    return a


def parse_port(text: str, what: str = "port") -> int:
    """``"80"`` → 80; rejects 0, > 65535 and anything that is not a plain decimal number."""
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{what} {text!r} is not a number")
    return _check_port(int(text), what)


def parse_port_range(text: str) -> tuple[int, int]:
    """``"80"`` → (80, 80); ``"8000-8010"`` → (8000, 8010). Rejects 0, > 65535, reversed."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"port range {text!r} is empty")
    lo_text, sep, hi_text = text.strip().partition("-")
    lo = parse_port(lo_text)
    if not sep:
        return lo, lo
    hi = parse_port(hi_text)
    if lo > hi:
        raise ValueError(f"port range {text.strip()} is reversed")
    return lo, hi


def parse_backend(text: str, *, weight: int = 1, backup: bool = False) -> Backend:
    """``198.18.1.10:80``, ``[2001:db8::10]:80``, ``198.18.1.10``, ``2001:db8::10`` → Backend."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"backend {text!r} is empty")
    spec = text.strip()
    port: int | None = None
    host: IPAddress
    if spec.startswith("["):
        host_text, bracket, rest = spec[1:].partition("]")
        if not bracket:
            raise ValueError(f"backend {spec!r} lacks the closing ']'")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"backend {spec!r}: expected ':PORT' after ']'")
            port = parse_port(rest[1:], f"backend {spec!r} port")
        try:
            host = ipaddress.IPv6Address(host_text)
        except ValueError:
            raise ValueError(f"backend {spec!r}: {host_text!r} is not an IPv6 address") from None
    elif spec.count(":") > 1:  # a bare IPv6 address, no port
        try:
            host = ipaddress.IPv6Address(spec)
        except ValueError:
            raise ValueError(f"backend {spec!r} is not an address; write IPv6 with a port as [ADDR]:PORT") from None
    else:
        host_text, colon, port_text = spec.partition(":")
        if colon:
            port = parse_port(port_text, f"backend {spec!r} port")
        try:
            host = ipaddress.IPv4Address(host_text)
        except ValueError:
            raise ValueError(f"backend {spec!r}: {host_text!r} is not an IP address") from None
    try:
        return Backend(host=host, port=port, weight=weight, backup=backup)
    except ValueError as exc:
        raise ValueError(f"backend {spec!r}: {exc}") from None


def parse_weights(text: str) -> tuple[int, ...]:
    """``"3,1"`` → (3, 1)."""
    weights = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or not item.isascii():
            raise ValueError(f"weight {item!r} is not a whole number")
        weight = int(item)
        if not 1 <= weight <= WEIGHT_MAX:
            raise ValueError(f"weight {weight} is out of range 1-{WEIGHT_MAX}")
        weights.append(weight)
    return tuple(weights)


def _split_list(text: str, what: str) -> list[str]:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {text!r}")
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ValueError(f"{what} {text!r} has an empty entry")
    return items


def parse_backends(text: str, weights: str | None = None, backups: str | None = None) -> tuple[Backend, ...]:
    """``"198.18.1.10:80,198.18.1.11:80"`` with ``weights="3,1"`` → primaries, then backups.

    ``weights`` applies to the primaries and must have exactly one entry per primary;
    ``backups`` is another comma list of HOST[:PORT], each with weight 1.
    """
    specs = _split_list(text, "backend list")
    if weights is None:
        weight_values = (1,) * len(specs)
    else:
        weight_values = parse_weights(weights)
        if len(weight_values) != len(specs):
            raise ValueError(
                f"{len(weight_values)} weight(s) given for {len(specs)} backend(s); give one weight per backend"
            )
    result = [parse_backend(s, weight=w) for s, w in zip(specs, weight_values, strict=True)]
    if backups is not None:
        result += [parse_backend(s, backup=True) for s in _split_list(backups, "backup list")]
    return tuple(result)


def check_overlap(existing_rules: Iterable[ForwardRule], new_rule: ForwardRule) -> None:
    """Raise if ``new_rule`` shares protected address and protocol with an existing rule whose
    port range intersects its own. An identical rule is not an overlap (adding it again is a
    no-op success)."""
    for rule in existing_rules:
        if rule == new_rule:
            continue
        if (
            rule.proto == new_rule.proto
            and rule.protected == new_rule.protected
            and rule.port_lo <= new_rule.port_hi
            and new_rule.port_lo <= rule.port_hi
        ):
            raise ValueError(f"rule {new_rule.key} overlaps existing rule {rule.key}")


def check_backend_not_protected(rule: ForwardRule, protected_addrs: Iterable[IPAddress]) -> None:
    """Raise if a backend of ``rule`` is itself a protected address (traffic would loop)."""
    protected = set(protected_addrs) | {rule.protected}
    for backend in rule.backends:
        if backend.host in protected:
            raise ValueError(f"backend {backend.endpoint} is a protected address")


def make_rule(
    proto: str,
    protected: str | IPAddress,
    ports: str,
    to: str,
    *,
    weights: str | None = None,
    backups: str | None = None,
    persist_s: int = 0,
    preserve_client_ip: bool = False,
) -> ForwardRule:
    """Build a rule from command-line shaped text: ``make_rule("tcp", "198.18.0.1", "80",
    "198.18.1.10:80,198.18.1.11:80", weights="3,1")``."""
    if isinstance(protected, str):
        protected = _parse_address(protected, "protected address")
    lo, hi = parse_port_range(ports)
    return ForwardRule(
        proto=proto,  # type: ignore[arg-type]  # validated in __post_init__
        protected=protected,
        port_lo=lo,
        port_hi=hi,
        backends=parse_backends(to, weights=weights, backups=backups),
        persist_s=persist_s,
        preserve_client_ip=preserve_client_ip,
    )
