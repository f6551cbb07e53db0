"""The `xdpguard cluster` verbs: what the CLI calls (status, ban, unban, apply, BIRD config,
rotate-secret)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..verbs import cleansing
from .. import state
from ..model import vocab
from ..model.desired import Desired
from ..desired import load as spec_load
from ..errors import UserError
from ..l7 import secret as l7secret
from ..result import as_dict as _as_dict
from . import bgp as bgpmod
from .store import ClusterStore, StoreUnavailable, Trust, parse_address


def load(path: str) -> Desired:
    desired, _ = spec_load.load(path)
    if desired.cluster is None:
        raise UserError(f"{path}: no [cluster] section (name, node, endpoints)")
    return desired


@dataclass(frozen=True)
class NodeView:
    node: str
    alive: bool  # its lease holds its key: `cluster run` is up and reaches the store
    age_s: float
    applied_revision: int
    in_sync: bool  # has applied every change of the desired state and bans
    ready: bool
    announcing: bool
    announced: list[str]  # the routes this node's BIRD is configured to announce
    reasons: list[str]
    announce_note: str
    bgp: dict
    interfaces: dict
    bans: int
    pending_writes: int
    escalation_leader: bool = False  # holds the escalate lock: decides the upstream routes
    escalations: list[str] = field(default_factory=list)  # the upstream routes it announces
    load: dict = field(default_factory=dict)  # protected address → pps this node receives
    overloaded: bool = False  # above [bgp] overload_pps: announcing with its AS prepended
    rejected: int = 0  # store values this node skipped (hostile, damaged, beyond its own file): see its log
    bans_failed: int = 0  # store bans its maps refused (a full operator map)


@dataclass(frozen=True)
class ClusterStatus:
    cluster: str
    revision: int
    state_revision: int
    interfaces: list[str]
    bans: int
    nodes: list[NodeView]
    announcing: int
    to_dict = _as_dict


def _view(name: str, s: dict, state_revision: int, now: float) -> NodeView:
    """A node's status key as a view; a value that does not read (hostile or damaged) is a view
    that says so, never a traceback."""
    try:
        applied = int(s.get("applied_revision", 0))
        return NodeView(
            name,
            True,
            round(now - float(s.get("updated", now)), 1),
            applied,
            applied >= state_revision,
            bool(s.get("ready")),
            bool(s.get("announcing")),
            [str(a) for a in s.get("announced", [])],
            [str(r) for r in s.get("reasons", [])],
            str(s.get("announce_note", "")),
            dict(s.get("bgp", {})),
            dict(s.get("interfaces", {})),
            int(s.get("bans", 0)),
            int(s.get("pending_writes", 0)),
            bool(s.get("escalation_leader")),
            [str(e) for e in s.get("escalations", [])],
            dict(s.get("load", {})),
            bool(s.get("overloaded")),
            int(s.get("rejected", 0)),
            int(s.get("bans_failed", 0)),
        )
    except (ValueError, TypeError, AttributeError, OverflowError):
        return NodeView(
            name, True, 0.0, 0, False, False, False, [], ["unreadable status in the store"], "", {}, {}, 0, 0
        )


def status(desired: Desired) -> ClusterStatus:
    st = ClusterStore(desired.cluster)
    snap = st.read()
    now = time.time()
    views = [_view(name, s, snap.state_revision, now) for name, s in sorted(snap.nodes.items())]
    return ClusterStatus(
        desired.cluster.name,
        snap.revision,
        snap.state_revision,
        sorted(snap.desired),
        len(snap.bans),
        views,
        sum(1 for v in views if v.announcing),
    )


@dataclass(frozen=True)
class BanChange:
    action: str  # ban | unban
    addresses: list[str]
    revision: int
    local: list[str]  # interfaces of this namespace changed at once
    missing: list[str] = field(default_factory=list)
    to_dict = _as_dict


def _local_ifaces() -> list[str]:
    try:
        return state.protected_ifaces()
    except UserError:
        return []


def ban(desired: Desired, addrs: list[str], ttl_s: float, reason: str = "operator") -> BanChange:
    """Ban through the store (every node within a second); on this node at once as well."""
    parsed = list(dict.fromkeys(parse_address(a) for a in addrs))
    if not parsed:
        raise UserError("give at least one address")
    vocab.check_ban_ttl(ttl_s)
    st = ClusterStore(desired.cluster)
    rev = 0
    try:
        for a in parsed:
            rev = st.put_ban(a, ttl_s, reason, desired.cluster.node)
    finally:
        local = []
        for name in _local_ifaces():
            try:
                cleansing.ban_add(name, parsed, ttl_s)
                local.append(name)
            except UserError:
                pass
    return BanChange("ban", parsed, rev, local)


def unban(desired: Desired, addrs: list[str]) -> BanChange:
    parsed = list(dict.fromkeys(parse_address(a) for a in addrs))
    if not parsed:
        raise UserError("give at least one address")
    st = ClusterStore(desired.cluster)
    rev, missing = 0, []
    for a in parsed:
        rev, found = st.delete_ban(a)
        if not found:
            missing.append(a)
    local = []
    for name in _local_ifaces():
        try:
            cleansing.ban_del(name, parsed)
            local.append(name)
        except UserError:
            pass
    return BanChange("unban", parsed, rev, local, missing)


@dataclass(frozen=True)
class ApplyResult:
    interfaces: list[str]
    removed: list[str]
    revision: int
    to_dict = _as_dict


def apply(desired: Desired, path: str, prune: bool = False) -> ApplyResult:
    """Put every [[interface]] of the file at `path` into the store (the cluster's desired state)."""
    new, _ = spec_load.load(path)
    if not new.interfaces:
        raise UserError(f"{path}: no [[interface]] to put into the cluster's desired state")
    trust = Trust.of(desired.cluster, desired.bgp)
    for spec in new.interfaces:
        if spec.events.hook:
            raise UserError(
                f"{path}: interface {spec.name}: events.hook is never put into the cluster store "
                "(nodes do not run commands from it): set [cluster] hook in each node's own file"
            )
        trust.check(f"{path}: interface {spec.name}", spec)  # what the nodes would refuse, refused here
    st = ClusterStore(desired.cluster)
    rev = 0
    for spec in new.interfaces:
        rev = st.put_desired(spec)
    removed = []
    if prune:
        for name in st.read().desired:
            if new.interface(name) is None:
                rev = st.delete_desired(name)
                removed.append(name)
    return ApplyResult([s.name for s in new.interfaces], removed, rev)


@dataclass(frozen=True)
class SecretRotation:
    revision: int
    previous_until: float  # unix time: the previous key checks cookies until then
    keep_s: int  # a cookie lifetime: the longest challenge lifetime of the cluster's HTTP services
    to_dict = _as_dict  # never a key: only when and how long


def rotate_secret(desired: Desired) -> SecretRotation:
    """A new challenge secret for the whole cluster; the previous one checks the cookies it
    signed for a cookie lifetime more (every node renders both until then)."""
    st = ClusterStore(desired.cluster)
    keep = l7secret.cookie_lifetime(spec_load.http_services(st.read().desired.values()))
    new, rev = st.rotate_secret(keep)
    return SecretRotation(rev, new.previous_until, keep)


def bird_config(desired: Desired, withdrawn: bool = True) -> str:
    if desired.bgp is None:
        raise UserError("the config has no [bgp] section")
    addrs = [] if withdrawn else list(desired.bgp.announce)
    return bgpmod.render(desired.bgp, addrs, desired.cluster.node)


__all__ = ["StoreUnavailable", "apply", "ban", "bird_config", "load", "rotate_secret", "status", "unban"]
