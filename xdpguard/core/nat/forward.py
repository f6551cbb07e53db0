"""The forwarding verbs: `forward add|del|list` and the teardown `detach` calls.

Rules live in the state file of the interface whose protected address they forward
(key ``"forward"``: a list of ``{"rule": ForwardRule.to_dict(), "udp_probe": HEX|None}``);
backend health written by ``xdpguard run`` lives next to them (``"forward_health"``: rule key →
endpoint → ``up``/``down``). The nftables table ``inet xdpguard`` of this network namespace is
always rebuilt from the rules of *every* protected interface of the namespace and applied as one
atomic batch (:func:`nat.build_ruleset`); a rejected batch leaves the previous table in place.

While any rule exists in the namespace, ``net.ipv4.ip_forward`` and
``net.ipv6.conf.all.forwarding`` are 1 and ``net.netfilter.nf_conntrack_tcp_loose`` is 0; their previous values are saved in the state file of the
interface that turned them on (``"forward_sysctl_saved"``) and restored when the last rule goes.

Locking: the interface lock (state file, port map) is taken first, then the namespace-wide NAT
lock (the table and the sysctls); never the other way round.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..model import forwarding
from .. import state
from . import nft as nat
from ..kernel.abi import PORT_BY_FORWARD
from ..errors import UserError
from ..model.forwarding import Backend, ForwardRule
from ..result import as_dict as _as_dict

FORWARD_KEY = "forward"
HEALTH_KEY = "forward_health"
SYSCTL_KEY = "forward_sysctl_saved"
SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.netfilter.nf_conntrack_tcp_loose")
# What they are set to while rules exist. tcp_loose 0: conntrack never adopts a mid-stream TCP
# packet as a new connection (the ACK floods XDP's TCP state step drops, should one get past it).
SYSCTL_VALUES = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.netfilter.nf_conntrack_tcp_loose": "0",
}
NAT_LOCK_NAME = "@nat"  # not a valid interface name to collide with: '@' is never used by us
DEFAULT_UDP_PROBE = b"ping"
HEALTH_STATES = ("up", "down", "unknown")


# ---- results ----


@dataclass(frozen=True)
class BackendView:
    endpoint: str
    weight: int
    backup: bool
    health: str  # up | down | unknown


@dataclass(frozen=True)
class RuleView:
    key: str
    iface: str
    proto: str
    protected: str
    ports: str
    backends: list[BackendView]
    persist_s: int
    preserve_client_ip: bool
    udp_probe: str | None
    packets: int  # nftables' rule counter: the slow path's packets
    bytes: int
    fast_packets: int = 0  # the XDP fast path's (fastfwd.show): nftables never sees them
    fast_bytes: int = 0


@dataclass(frozen=True)
class ForwardChangeResult:
    iface: str
    action: str  # add | del
    key: str
    changed: bool
    notes: list[str] = field(default_factory=list)
    to_dict = _as_dict


@dataclass(frozen=True)
class ForwardListResult:
    rules: list[RuleView]
    ip_forward: dict[str, str]
    table: bool
    to_dict = _as_dict


# ---- stored rules ----


@dataclass(frozen=True)
class StoredRule:
    iface: str
    rule: ForwardRule
    udp_probe: bytes | None = None

    def to_dict(self) -> dict:
        return {"rule": self.rule.to_dict(), "udp_probe": None if self.udp_probe is None else self.udp_probe.hex()}

    @classmethod
    def from_dict(cls, iface: str, data: dict) -> StoredRule:
        try:
            probe = data.get("udp_probe")
            return cls(iface, ForwardRule.from_dict(data["rule"]), None if probe is None else bytes.fromhex(probe))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"state of {iface}: bad forwarding rule {data!r}: {exc}") from None

    @property
    def probe_payload(self) -> bytes:
        return DEFAULT_UDP_PROBE if self.udp_probe is None else self.udp_probe


def stored_rules(iface_name: str, st: dict | None) -> list[StoredRule]:
    return [StoredRule.from_dict(iface_name, d) for d in (st or {}).get(FORWARD_KEY, [])]


def _iface_states() -> dict[str, dict]:
    """Interface name → state, for every protected interface of this network namespace."""
    out = {}
    for name in state.protected_ifaces():
        st = state.read_state(state.Iface(name, 0, state.netns_key()))
        if st is not None:
            out[name] = st
    return out


def all_rules(states: dict[str, dict] | None = None, skip: str | None = None) -> list[StoredRule]:
    states = _iface_states() if states is None else states
    out = []
    for name, st in sorted(states.items()):
        if name != skip:
            out.extend(stored_rules(name, st))
    return out


def endpoint(rule: ForwardRule, b: Backend) -> str:
    """The name of a backend in health maps: always with the port it is probed on."""
    host = f"[{b.host}]" if b.host.version == 6 else str(b.host)
    return f"{host}:{rule.target_port(b, rule.port_lo)}"


def healthy_map(states: dict[str, dict], rules: Iterable[StoredRule]) -> dict[str, tuple[Backend, ...]]:
    """Rule key → backends not known to be down (unknown counts as healthy)."""
    out = {}
    for sr in rules:
        health = states.get(sr.iface, {}).get(HEALTH_KEY, {}).get(sr.rule.key, {})
        out[sr.rule.key] = tuple(b for b in sr.rule.backends if health.get(endpoint(sr.rule, b)) != "down")
    return out


# ---- nft, sysctls, lock ----


@contextmanager
def nat_lock():
    """The namespace-wide lock around the NAT table and the forwarding sysctls."""
    with state.iface_lock(state.Iface(NAT_LOCK_NAME, 0, state.netns_key())):
        yield


def _applier() -> nat.NftApplier:
    return nat.NftApplier()


def _current_counters(applier: nat.NftApplier) -> dict[str, tuple[int, int]]:
    try:
        return nat.parse_counters(applier.list_table())
    except nat.NftError:
        return {}


CONNLIMIT_KEY = "connlimits"  # interface state: protected address → nat.ConnLimits fields (connlimit.py)


def stored_connlimit(d) -> nat.ConnLimits | None:
    """One address's stored connection-limit record; None when absent, empty or broken."""
    try:
        lim = nat.ConnLimits(**d) if d else None
    except (TypeError, ValueError):
        return None
    return lim if lim is not None and lim.active() else None


def connlimit_map(states: dict[str, dict], rules: Iterable[StoredRule]) -> dict[str, nat.ConnLimits]:
    """Rule key → the connection limits of its protected address (a broken record is skipped)."""
    out = {}
    for sr in rules:
        lim = stored_connlimit(states.get(sr.iface, {}).get(CONNLIMIT_KEY, {}).get(str(sr.rule.protected)))
        if lim is not None:
            out[sr.rule.key] = lim
    return out


def rebuild() -> None:
    """Rebuild the NAT table of this namespace from the stored rules (after a limit changed)."""
    with nat_lock():
        states = _iface_states()
        apply_rules(_applier(), states, all_rules(states))


HTTP_KEY = "http"  # the interface record's HTTP services (l7/engine.py)


def local_tcp(states: dict[str, dict]) -> list[tuple[forwarding.IPAddress, int]]:
    """(protective address, TCP port) of every HTTP service HAProxy serves in this namespace."""
    out = []
    for st in states.values():
        for d in (st or {}).get(HTTP_KEY) or []:
            try:
                out.append((ipaddress.ip_address(d["address"]), int(d["port"])))
            except (KeyError, TypeError, ValueError):
                continue
    return out


def apply_rules(applier: nat.NftApplier, states: dict[str, dict], rules: list[StoredRule]) -> None:
    """Rebuild the table from `rules` (with stored health) and the HTTP services' SYN-cookie
    rules, or delete it when there are none."""
    local = local_tcp(states)
    try:
        if rules or local:
            kw = dict(
                healthy=healthy_map(states, rules),
                counters=_current_counters(applier),
                connlimits=connlimit_map(states, rules),
                local_tcp=local,
            )
            try:  # with the synproxy chains of the SYN cookies; a kernel without nft_synproxy gets none
                applier.apply(nat.build_ruleset([sr.rule for sr in rules], synproxy=True, **kw))
            except nat.NftError:
                applier.apply(nat.build_ruleset([sr.rule for sr in rules], **kw))
        else:
            applier.delete()
    except nat.NftError as exc:
        raise UserError(f"{exc.message}; the previous NAT ruleset is unchanged") from None
    except RuntimeError as exc:  # the nftables module is missing
        raise UserError(str(exc)) from None


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    out = {}
    for key in SYSCTLS:
        try:
            out[key] = _sysctl_path(key).read_text().strip()
        except OSError:
            pass
    return out


def write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        try:
            _sysctl_path(key).write_text(f"{value}\n")
        except OSError as exc:
            raise UserError(f"cannot set {key}={value}: {exc.strerror}") from None


def _saved_sysctls(states: dict[str, dict]) -> tuple[str | None, dict[str, str] | None]:
    for name, st in sorted(states.items()):
        if st.get(SYSCTL_KEY):
            return name, st[SYSCTL_KEY]
    return None, None


# ---- verbs ----


def _protected_of(st: dict) -> list[forwarding.IPAddress]:
    return [ipaddress.ip_address(a) for a in st.get("protected", [])]


def _pick_protected(iface_name: str, st: dict, protected: str | None, backends: tuple[Backend, ...]):
    addrs = _protected_of(st)
    if protected is not None:
        try:
            a = ipaddress.ip_address(protected.strip())
        except ValueError:
            raise UserError(f"protected address {protected!r} is not an IP address") from None
        if a not in addrs:
            raise UserError(f"{a} is not a protected address of {iface_name} (protected: {', '.join(map(str, addrs))})")
        return a
    fam = backends[0].host.version
    same = [a for a in addrs if a.version == fam]
    if len(same) == 1:
        return same[0]
    if not same:
        raise UserError(f"{iface_name} protects no IPv{fam} address for backends {backends[0].endpoint}")
    raise UserError(f"{iface_name} protects several IPv{fam} addresses ({', '.join(map(str, same))}); give --protected")


def parse_udp_probe(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise UserError(f"--udp-probe {text!r} is not hex (e.g. 70696e67 for 'ping')") from None
    if not data or len(data) > 1400:
        raise UserError("--udp-probe needs 1 to 1400 bytes")
    return data


def build_rule(
    proto: str,
    ports: str,
    to: str,
    protected: str | None,
    st: dict,
    iface_name: str,
    *,
    weights: str | None = None,
    backup: str | None = None,
    persist_s: int = 0,
    preserve_client_ip: bool = False,
) -> ForwardRule:
    """Parse and validate command-line text into a rule (ValueError → UserError)."""
    try:
        backends = forwarding.parse_backends(to, weights=weights, backups=backup)
        addr = _pick_protected(iface_name, st, protected, backends)
        return forwarding.make_rule(
            proto,
            addr,
            ports,
            to,
            weights=weights,
            backups=backup,
            persist_s=persist_s,
            preserve_client_ip=preserve_client_ip,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def check_add(proto: str, udp_probe: str | None) -> bytes | None:
    """`forward add`'s checks of its own arguments; the probe payload."""
    if proto not in forwarding.PROTOCOLS:
        raise UserError(f"unknown protocol '{proto}': use tcp or udp")
    probe = parse_udp_probe(udp_probe)
    if probe is not None and proto != "udp":
        raise UserError("--udp-probe applies to udp rules only")
    return probe


def rules_elsewhere(name: str, st: dict, rule: ForwardRule) -> list[StoredRule]:
    """`forward add`'s checks of a new rule of interface `name` (record `st`) against every
    interface of the namespace: no backend is a protected address, no overlap, not another
    interface's rule. Returns the namespace's rules (UserError when the rule cannot be added)."""
    with nat_lock():
        states = _iface_states()
        states[name] = st
        existing = all_rules(states)
        all_protected = [a for s in states.values() for a in _protected_of(s)]
    try:
        forwarding.check_backend_not_protected(rule, all_protected)
        forwarding.check_overlap([sr.rule for sr in existing], rule)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    same = [sr for sr in existing if sr.rule == rule]
    if same and same[0].iface != name:
        raise UserError(f"rule {rule.key} exists on {same[0].iface}")
    return existing


def check_delete(proto: str, ports: str) -> tuple[int, int]:
    if proto not in forwarding.PROTOCOLS:
        raise UserError(f"unknown protocol '{proto}': use tcp or udp")
    try:
        return forwarding.parse_port_range(ports)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def set_rules(g, specs: list[tuple[ForwardRule, bytes | None]], rebuild: bool = False) -> list[str]:
    """Make g's interface forward exactly `specs` ((rule, udp_probe) pairs), holding g's interface
    lock: one nft batch for the namespace's table, the forward bits of the port policy, the
    sysctls. With `rebuild` the table is rewritten even when the rules are unchanged (drift
    repair after `nft flush ruleset`). Returns notes."""
    name = g.iface.name
    st = state.read_state(g.iface) or {}
    mine = stored_rules(name, st)
    new = [StoredRule(name, r, p) for r, p in sorted(specs, key=lambda rp: rp[0].key)]
    if {(sr.rule, sr.udp_probe) for sr in mine} == {(sr.rule, sr.udp_probe) for sr in new} and not rebuild:
        return []
    notes: list[str] = []
    with nat_lock():
        states = _iface_states()
        states[name] = st
        others = all_rules(states, skip=name)
        all_protected = [a for s in states.values() for a in _protected_of(s)]
        try:
            for i, sr in enumerate(new):
                forwarding.check_backend_not_protected(sr.rule, all_protected)
                forwarding.check_overlap([o.rule for o in others] + [n.rule for n in new[:i]], sr.rule)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        new_st = dict(st)
        new_st[FORWARD_KEY] = [sr.to_dict() for sr in new]
        keys = {sr.rule.key for sr in new}
        new_st[HEALTH_KEY] = {k: v for k, v in st.get(HEALTH_KEY, {}).items() if k in keys}
        states[name] = new_st
        remaining = all_rules(states)
        before = all_rules({**states, name: st})
        apply_rules(_applier(), states, remaining)
        gone = [sr.rule for sr in mine if sr.rule not in {n.rule for n in new}]
        for r in gone:
            g.change_ports([r.protected], r.proto, r.port_lo, r.port_hi, PORT_BY_FORWARD, False)
        for sr in new:
            r = sr.rule
            g.change_ports([r.protected], r.proto, r.port_lo, r.port_hi, PORT_BY_FORWARD, True)
        if remaining or local_tcp(states):  # (tcp_loose 0: an HTTP service's cookie ACKs must be ct invalid)
            _, saved = _saved_sysctls(states)
            if saved is None:
                new_st[SYSCTL_KEY] = read_sysctls()
            if not before or any(read_sysctls().get(k, v) != v for k, v in SYSCTL_VALUES.items()):
                write_sysctls({k: v for k, v in SYSCTL_VALUES.items() if _sysctl_path(k).exists()})
                notes.append("enabled net.ipv4.ip_forward and net.ipv6.conf.all.forwarding")
        else:
            notes += _restore_sysctls(states, name, new_st)
        state.write_state(g.iface, new_st)
    if gone or len(new) != len(mine) or rebuild:
        notes.insert(0, f"{name}: {len(new)} forwarding rule(s)" + (" (NAT table rebuilt)" if rebuild else ""))
    return notes


def forwarding_drift() -> list[str]:
    """What is wrong with the NAT side of this namespace right now (cheap: for the daemon's
    1 s drift check): the table missing while rules exist, or a forwarding sysctl off."""
    states = _iface_states()
    rules = all_rules(states)
    if not rules and not local_tcp(states):
        return []
    out = []
    try:
        if not _applier().table_exists():
            out.append("nft table inet xdpguard is missing")
    except (nat.NftError, RuntimeError) as exc:
        out.append(f"cannot list nft tables: {exc}")
    out += [
        f"{k} is {v}, not {SYSCTL_VALUES[k]}"
        for k, v in read_sysctls().items()
        if k in SYSCTL_VALUES and v != SYSCTL_VALUES[k]
    ]
    return out


def _restore_sysctls(states: dict[str, dict], current: str, current_st: dict) -> list[str]:
    """Restore the saved sysctls (no rule is left) and drop them from whichever state held them."""
    holder, saved = _saved_sysctls(states)
    if saved is None:
        return []
    write_sysctls(saved)
    if holder == current:
        current_st.pop(SYSCTL_KEY, None)
    else:
        other = state.Iface(holder, 0, state.netns_key())
        st = state.read_state(other) or {}
        st.pop(SYSCTL_KEY, None)
        state.write_state(other, st)
    return ["restored " + ", ".join(f"{k}={v}" for k, v in saved.items())]


def teardown(iface: state.Iface) -> list[str]:
    """For `detach` (holding the interface lock): drop this interface's rules from the table,
    restore the sysctls when no rule is left in the namespace. Returns notes; never raises
    for nft trouble (the program is going away anyway), it says so instead."""
    try:
        st = state.read_state(iface) or {}
    except UserError as exc:
        return [exc.message]
    mine = stored_rules(iface.name, st) if st.get(FORWARD_KEY) else []
    if not mine and not st.get(SYSCTL_KEY):
        return []
    notes = []
    with nat_lock():
        states = _iface_states()
        states.pop(iface.name, None)
        remaining = all_rules(states)
        if mine:
            try:
                apply_rules(_applier(), states, remaining)
                notes.append(f"removed {len(mine)} forwarding rule(s)" + ("" if remaining else "; NAT table deleted"))
            except UserError as exc:
                notes.append(f"could not update the NAT table: {exc.message}")
        saved = st.get(SYSCTL_KEY)
        if saved:
            if remaining:  # hand the saved values over to an interface that still forwards
                holder = remaining[0].iface
                other = state.Iface(holder, 0, state.netns_key())
                ost = state.read_state(other) or {}
                ost[SYSCTL_KEY] = saved
                state.write_state(other, ost)
            else:
                try:
                    write_sysctls(saved)
                    notes.append("restored " + ", ".join(f"{k}={v}" for k, v in saved.items()))
                except UserError as exc:
                    notes.append(exc.message)
    return notes


def show(ifname: str | None = None) -> ForwardListResult:
    state.require_root()
    states = _iface_states()
    if ifname is not None:
        if ifname not in states:
            raise UserError(f"{ifname} is not protected by xdpguard in this network namespace")
        states = {ifname: states[ifname]}
    rules = all_rules(states)
    counters: dict[str, tuple[int, int]] = {}
    table = False
    try:
        listing = _applier().list_table()
        table = listing is not None
        counters = nat.parse_counters(listing)
    except (nat.NftError, RuntimeError):
        pass
    views = []
    for sr in rules:
        health = states[sr.iface].get(HEALTH_KEY, {}).get(sr.rule.key, {})
        bvs = [
            BackendView(endpoint(sr.rule, b), b.weight, b.backup, health.get(endpoint(sr.rule, b), "unknown"))
            for b in sr.rule.backends
        ]
        pk, by = counters.get(sr.rule.key, (0, 0))
        views.append(
            RuleView(
                sr.rule.key,
                sr.iface,
                sr.rule.proto,
                str(sr.rule.protected),
                sr.rule.ports,
                bvs,
                sr.rule.persist_s,
                sr.rule.preserve_client_ip,
                None if sr.udp_probe is None else sr.udp_probe.hex(),
                pk,
                by,
            )
        )
    return ForwardListResult(views, read_sysctls(), table)
