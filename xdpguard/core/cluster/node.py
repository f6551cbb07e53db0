"""`xdpguard cluster run`: one protector node of a cluster.

The loop, level-triggered like `run --config`, with etcd in place of the file:

1. full read of the store (desired interfaces, bans) at revision R → `reconcile.realise` of every
   interface (idempotent: writes only differences) → bans applied to the local ban map;
2. watch state/ from R + 1: each change is applied as it comes (a ban within milliseconds);
3. the watch ends (etcd gone, compaction, `resync_interval`): back to 1 once etcd answers. While
   it does not, nothing is undone: the kernel keeps enforcing what it has, local bans keep
   working, and bans this node finds are queued (one per address) until the store returns.

The applied state is saved (fsynced, at most once a second) as a local snapshot with its revision:
a node started while the store is unreachable enforces, and when healthy announces, that.

Every second, the HTTP services' layer-7 step as `xdpguard run` does it (l7/bans.py: HAProxy kept
running, its offenders banned in XDP with reason cc, challenge-passing sources verified, service
ceilings learned, automatic CC mode). Besides, every few hundred milliseconds: bans the data path
made from evidence spoofing cannot make are spread through the store (`spread_local_bans`); the
node key is kept alive with the node's status and applied revision; the node's health decides
whether BIRD announces the protective addresses (see bgp.py for what happens when this process
dies).

The challenge secret of HAProxy's cookies is the cluster's (state/secret/l7): the first node
creates it from its own (create-if-absent), every node writes the store's into its namespace's
secret file (l7/engine.py) and renders HAProxy with it, so a cookie issued by one node passes on
the others. While the store is unreachable a node keeps the last secret it had (the file); a
rotation reaches it with the watch, or with the full read once the store is back.

Trust: the store is read like operator input. Every value is validated (the config loader for
desired state, store.parse_ban / parse_load for the rest) and checked against what the node's own
file allows (store.Trust: [cluster] protect and backends); hooks, list files and every section but
[[interface]] come only from the node's own file. A value the node does not take is skipped and
logged; nothing read from the store ends the agent.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import IPS_ASSURED, NFCTAttrTuple

from ..verbs import cleansing
from ..l7 import bans as l7bans
from ..l7 import engine as l7engine
from ..l7 import secret as l7secret
from ..nat import connlimit, forward
from ..kernel import dataplane
from .. import protection, reconcile, state
from ..model.desired import Desired, InterfaceSpec
from ..errors import UserError
from . import bgp as bgpmod
from . import escalate
from .store import (
    SPREAD_REASONS,
    Ban,
    ClusterStore,
    Event,
    PendingWrites,
    StoreUnavailable,
    Trust,
    Watch,
    desired_text,
    parse_desired,
    parse_secret,
)

OK_ACTIONS = ("attached", "updated", "unchanged")
LOCAL_BAN_POLL_S = 0.5
HEALTH_EVERY_S = 0.5
DRIFT_EVERY_S = 5.0
L7_EVERY_S = 1.0  # HAProxy's stick tables read, offenders banned (l7/bans.py)
OVERLOAD_CALM_S = 3.0
PROBE_TIMEOUT_S = 0.3
# spreading data-path bans: only reasons in store.SPREAD_REASONS (connlimit: a source over a
# connection limit in nft; cc: an HTTP offender of HAProxy's stick tables, banned by `xdpguard
# run`, l7/bans.py), and only for a source that holds an established TCP connection here
# (conntrack ASSURED: it completed a handshake, so it is not spoofed). At most SPREAD_PER_ROUND
# new ones a round and SPREAD_MAX at once from this node, each for at most SPREAD_TTL_S.
SPREAD_TTL_S = 120
SPREAD_PER_ROUND = 16
SPREAD_MAX = 256


def established_tcp(address: str) -> bool:
    """Whether conntrack holds an ASSURED TCP connection from `address`: a handshake it completed,
    which needs our SYN-ACK to reach it, so the address is its own and not spoofed."""
    try:
        a = ipaddress.ip_address(address)
        fam = socket.AF_INET if a.version == 4 else socket.AF_INET6
        # the kernel filters by protocol (and IPv4 source); pyroute2 0.9 matches no IPv6 source
        # filter, so for IPv6 the address is compared here
        want = NFCTAttrTuple(family=fam, proto=socket.IPPROTO_TCP, **({"saddr": str(a)} if a.version == 4 else {}))
        with Conntrack(nfgen_family=fam) as ct:
            return any(
                e.status & IPS_ASSURED and ipaddress.ip_address(e.tuple_orig.saddr) == a
                for e in ct.dump_entries(tuple_orig=want)
            )
    except (OSError, ValueError, TypeError, NetlinkError):
        return False


def missing_routes(prefixes) -> list[str]:
    """A reason per prefix this namespace has no usable route to (none, or unreachable,
    blackhole or prohibit): the way back to the clients."""
    out = []
    for net in prefixes:
        probe = net.network_address if net.prefixlen == net.max_prefixlen else net.network_address + 1
        p = subprocess.run(
            ["ip", f"-{net.version}", "-j", "route", "get", str(probe)],
            capture_output=True,
            text=True,
            timeout=5,
            stdin=subprocess.DEVNULL,
        )
        try:
            routes = json.loads(p.stdout or "[]") if p.returncode == 0 else []
        except ValueError:
            routes = []
        kinds = {r.get("type", "unicast") for r in routes}
        if not routes or kinds & {"unreachable", "blackhole", "prohibit", "throw"}:
            out.append(f"no route to {net} (require_routes): clients could not be answered")
    return out


@dataclass
class Health:
    ready: bool = False
    reasons: list[str] = field(default_factory=list)
    ok_run: int = 0
    fail_run: int = 0


class NodeAgent:
    def __init__(self, desired: Desired, report: Callable[[str], None] = lambda m: None):
        if desired.cluster is None:
            raise UserError("the config has no [cluster] section: `cluster run` needs one (name, node, endpoints)")
        self.cluster = desired.cluster
        self.bgp = desired.bgp
        self.daemon = desired.daemon
        self.node = self.cluster.node
        self.report = report
        self.trust = Trust.of(self.cluster, self.bgp)
        self.store = ClusterStore(self.cluster, trust=self.trust)
        self.specs: dict[str, InterfaceSpec] = {}
        self.results: dict[str, str] = {}
        self.store_bans: dict[str, Ban] = {}
        self.from_store: set[str] = set()  # bans this node applied because the store holds them
        self.forgotten: dict[str, float] = {}  # address → when its store key went away
        self.applied_revision = 0
        self.state_revision = 0
        self.synced = False
        self.store_up = False
        self.watch: Watch | None = None
        self.lease: int | None = None
        self.nodes: dict[str, dict] = {}
        self.pending = PendingWrites()
        self.health = Health()
        self.announcing = False
        self.announce_note = ""
        self._announce_key: int | None = None  # the lease our announce/ key is on
        self.backend_reasons: list[str] = []  # written by the probe thread
        self.backend_rounds = 0
        self._snapshot_saved = -1
        self.announced: list[str] = []  # the routes in BIRD's config now
        self.liveness: bgpmod.LivenessDevice | None = None
        self.counts = {"resyncs": 0, "events": 0, "bans_applied": 0, "bans_spread": 0, "rejected": 0, "bans_failed": 0}
        self.spread: dict[str, float] = {}  # address → when (monotonic) the ban this node spread ends
        self.meter: escalate.LoadMeter | None = None
        self.escalations: dict[tuple[str, str], escalate.Active] = {}
        self.escalation_leader = False
        self.overloaded = False
        self._calm_since: float | None = None
        self._said: dict[str, str] = {}
        self._secret_until = 0.0  # until when HAProxy was rendered with the previous challenge key
        self.l7 = l7bans.Watch(report)  # what `xdpguard run` does with HAProxy, on this node

    def say(self, topic: str, msg: str) -> None:
        if self._said.get(topic) != msg:
            self._said[topic] = msg
            self.report(msg)

    # ---- store → kernel ----

    def local(self, spec: InterfaceSpec) -> InterfaceSpec:
        """A store interface with what only the node's own file gives: the events hook."""
        return replace(spec, events=replace(spec.events, hook=self.cluster.hook))

    def reject(self, key: str, why: str) -> None:
        """A store value this node does not take: an event in the log, never an exit."""
        self.counts["rejected"] += 1
        self.say(f"rejected {key}", f"store: skipped {key}: {why}")

    def _realise(self, spec: InterfaceSpec, lists: bool = True) -> None:
        try:
            r = reconcile.realise(spec, lists=lists)
        except UserError as exc:
            self.results[spec.name] = "failed"
            self.say(f"realise {spec.name}", f"{spec.name}: realise failed: {exc.message}")
            return
        self.results[spec.name] = r.action
        if r.action not in OK_ACTIONS:
            self.say(f"realise {spec.name}", f"{spec.name}: {r.action}: {'; '.join(r.notes)}")
        elif r.action != "unchanged":
            self.say(f"realise {spec.name}", f"{spec.name}: {r.action}")

    def _drop_interface(self, name: str) -> None:
        self.specs.pop(name, None)
        self.results.pop(name, None)
        try:
            reconcile.detach(name)
            self.report(f"{name}: removed from the cluster's desired state; detached")
        except UserError as exc:
            self.report(f"{name}: detach: {exc.message}")

    def _ifaces(self) -> list[str]:
        return [n for n, a in self.results.items() if a in OK_ACTIONS]

    def _apply_ban(self, b: Ban) -> None:
        """An operator's ban into the operator map (never evicted); a spread data-path ban into
        the dynamic map with its TTL (at most store.SPREAD_TTL_MAX_S). A map that refuses (full)
        costs this ban, logged, never the agent."""
        left = b.remaining_s() + 1.0  # the lease ends it; the map's own expiry is the backstop
        if left < 1:
            return
        for name in self._ifaces():
            try:
                if b.operator:
                    cleansing.ban_add(name, [b.address], min(left, cleansing.MAX_BAN_TTL_S))
                else:
                    with protection.locked_guard(name) as g:
                        found = [(b.address, min(left, b.ttl_s + 1.0))]
                        if b.reason == "cc":  # the reason it was banned for on its node
                            g.promote_cc_bans(found)
                        else:
                            connlimit.promote(g, found)
            except UserError as exc:
                self.counts["bans_failed"] += 1
                self.say(f"ban {name}", f"{name}: ban {b.address}: {exc.message}")
            except OSError as exc:  # libbpf.BpfError: e.g. xg_opban_hash is full
                self.counts["bans_failed"] += 1
                self.say(
                    f"ban {name}",
                    f"{name}: ban {b.address} not applied ({exc.strerror or exc}); "
                    f"{self.counts['bans_failed']} store ban(s) not applied so far",
                )
        self.from_store.add(b.address)
        self.counts["bans_applied"] += 1

    def _lift_ban(self, address: str) -> None:
        for name in self._ifaces():
            try:
                cleansing.ban_del(name, [address])
            except UserError:
                pass
        self.from_store.discard(address)
        self.forgotten[address] = time.monotonic()

    def full_sync(self) -> None:
        """Read everything, realise it, start a watch from the next revision."""
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        snap = self.store.read()
        self.take_secret(snap.secret)  # before the interfaces: HAProxy renders with it
        kept = set()  # interfaces whose store value is rejected: what is realised stays
        for key, why in sorted(snap.rejected.items()):
            self.reject(key, why)
            kind, name = self.store.classify(key)
            if kind == "desired":
                kept.add(name)
        for name in list(self.specs):
            if name not in snap.desired and name not in kept:
                self._drop_interface(name)
        for name, spec in snap.desired.items():
            spec = self.local(spec)
            self.specs[name] = spec
            self._realise(spec)
        for address in list(self.from_store):
            if address not in snap.bans:
                self._lift_ban(address)
        self.store_bans = dict(snap.bans)
        for b in snap.bans.values():
            self._apply_ban(b)
        self.nodes = snap.nodes
        self.applied_revision = snap.revision
        self.state_revision = snap.state_revision
        self.watch = self.store.watch(snap.revision + 1)
        self.synced = True
        self.store_up = True
        self.counts["resyncs"] += 1
        flushed = self.pending.flush(self.store, self.node)
        if flushed:
            self.report(f"store is back: spread {flushed} ban(s) queued while it was down")

    # ---- the cluster's challenge secret ----

    def take_secret(self, s: l7secret.Secrets | None) -> None:
        """Make the store's challenge secret this node's (none in the store: this node's own
        becomes the cluster's, unless another node's got there first) and render HAProxy with it."""
        if s is None:
            try:
                s, created = self.store.create_secret(l7engine.secrets())
            except StoreUnavailable:
                raise
            except UserError as exc:  # a damaged or hostile value (or our own file unreadable)
                self.say("secret", f"challenge secret: {exc.message}; keeping this node's")
                return
            if created:
                self.report("challenge secret: this node's is now the cluster's")
        try:
            changed = l7engine.set_secrets(s)
        except UserError as exc:
            self.say("secret", f"challenge secret not kept: {exc.message}")
            return
        if changed:
            self.report(
                "challenge secret: the cluster's"
                + (" (rotated; the previous one still checks cookies)" if s.previous else "")
            )
        self._realise_l7(changed)

    def _realise_l7(self, changed: bool) -> None:
        """HAProxy again after the secret changed, or once its previous key stopped checking
        cookies (rendered without it)."""
        try:
            keys = l7engine.secrets()
        except UserError:
            return
        until = keys.previous_until if keys.checking(time.time()) else 0.0
        if not changed and until == self._secret_until:
            return
        self._secret_until = until
        try:
            res = l7engine.realise(l7engine.services_of(forward._iface_states()))
        except UserError as exc:
            self.say("l7", f"HAProxy: {exc.message}")
            return
        if res not in ("unchanged", "none"):
            self.say("l7", f"HAProxy {res} (challenge secret)")

    # ---- the local snapshot: what a node restarted while the store is down enforces ----

    def snapshot_path(self):
        # not *.json: that suffix is an interface record (state.protected_ifaces)
        return state.state_root() / state.netns_key() / f"cluster-{self.cluster.name}.snapshot"

    def save_snapshot(self) -> None:
        """The store's state as this node has applied it, with its revision (fsynced)."""
        data = {
            "revision": self.applied_revision,
            # as the store gave them: the hook is the node's own, added again when loaded
            "desired": {
                n: desired_text(replace(s, events=replace(s.events, hook=None))) for n, s in sorted(self.specs.items())
            },
            "bans": {
                a: {"ttl": b.ttl_s, "reason": b.reason, "node": b.node, "expires": b.expires}
                for a, b in sorted(self.store_bans.items())
            },
        }
        path = self.snapshot_path()
        state.netns_state_dir()  # created root-only and marked as this namespace's
        state.write_durably(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        self._snapshot_saved = self.applied_revision

    def load_snapshot(self) -> bool:
        """At start with the store unreachable: realise the last snapshot (False when none)."""
        try:
            data = json.loads(self.snapshot_path().read_text())
            specs = {
                n: self.local(parse_desired(f"snapshot/{n}", t.encode(), self.trust))
                for n, t in data["desired"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UserError):
            return False
        for spec in specs.values():
            self.specs[spec.name] = spec
            self._realise(spec)
        for a, b in (data.get("bans") or {}).items():
            try:
                ban = self.store.parse_ban(a, json.dumps(b).encode())
            except UserError as exc:
                self.reject(f"snapshot ban {a[:60]}", exc.message)
                continue
            if ban.remaining_s() > 0:
                self.store_bans[a] = ban
                self._apply_ban(ban)
        self.applied_revision = int(data.get("revision", 0))
        self._snapshot_saved = self.applied_revision
        self.synced = True
        self.report(f"store unreachable at start: enforcing the local snapshot of revision {self.applied_revision}")
        return True

    def handle(self, ev: Event) -> None:
        kind, name = self.store.classify(ev.key)
        self.counts["events"] += 1
        if kind == "desired":
            if ev.kind == "delete":
                self._drop_interface(name)
            else:
                try:
                    spec = self.store.desired_from(ev.key, ev.value, ev.revision)
                except StoreUnavailable as exc:
                    self._store_lost(exc.message)
                    return
                except UserError as exc:
                    self.reject(ev.key, f"{exc.message} (keeping what is realised)")
                else:
                    spec = self.local(spec)
                    self.specs[name] = spec
                    self._realise(spec)
        elif kind == "ban":
            if ev.kind == "delete":
                self.store_bans.pop(name, None)
                self._lift_ban(name)
            else:
                try:
                    b = self.store.parse_ban(name, ev.value)
                except UserError as exc:
                    self.reject(ev.key, exc.message)
                else:
                    self.store_bans[name] = b
                    self._apply_ban(b)
        elif kind == "secret":
            if ev.kind == "delete":
                self.say(
                    "secret", "store: the challenge secret was deleted; keeping the last one (a node recreates it)"
                )
            else:
                try:
                    self.take_secret(parse_secret(ev.key, ev.value))
                except UserError as exc:
                    self.reject(ev.key, f"{exc.message} (keeping the last challenge secret)")
        elif kind == "chunk" and ev.kind != "delete":
            self.store.remember_chunk(ev.key, ev.value)  # the desired key naming it comes next
        self.applied_revision = max(self.applied_revision, ev.revision)
        self.state_revision = max(self.state_revision, ev.revision)

    @staticmethod
    def _drain(w: Watch, wait_s: float = 0.05) -> list[Event]:
        """Every event queued now (waiting up to wait_s for the first)."""
        try:
            out = [w.events.get(timeout=wait_s)]
        except queue.Empty:
            return []
        while True:
            try:
                out.append(w.events.get_nowait())
            except queue.Empty:
                return out

    def handle_batch(self, events: list[Event]) -> None:
        """Level-triggered: of several changes of one interface's desired state only the newest is
        realised (a burst of 200 changes costs one realise per interface, not 200); bans and
        deletes are applied in order."""
        last_desired = {}
        for i, ev in enumerate(events):
            if self.store.classify(ev.key)[0] == "desired":
                last_desired[ev.key] = i
        for i, ev in enumerate(events):
            if self.store.classify(ev.key)[0] == "desired" and last_desired[ev.key] != i:
                self.applied_revision = max(self.applied_revision, ev.revision)
                self.counts["events"] += 1
                continue
            self.handle(ev)

    # ---- kernel → store: bans found here ----

    def spread_local_bans(self) -> None:
        """Spread the bans the data path made here from evidence spoofing cannot make (see
        SPREAD_TTL_S): short-lived, capped; other nodes put them into their dynamic ban map.
        Bans for spoofable evidence (SYN or packet rates, filters, mitigations) and operator bans
        made on this node alone stay here (`cluster ban` is the cluster-wide operator ban)."""
        now = time.monotonic()
        self.forgotten = {a: t for a, t in self.forgotten.items() if now - t < 3.0}
        self.spread = {a: t for a, t in self.spread.items() if t > now}
        seen: dict[str, tuple[float, str]] = {}
        for name in self._ifaces():
            try:
                for b in cleansing.ban_list(name).bans:
                    if b.reason in SPREAD_REASONS:
                        seen.setdefault(b.source, (b.expires_in_s, b.reason))
            except (UserError, OSError):
                continue
        budget = SPREAD_PER_ROUND
        for address, (left, reason) in seen.items():
            if address in self.store_bans or address in self.from_store or address in self.forgotten:
                continue
            if address in self.spread or address in self.pending.bans or left < 1:
                continue
            if budget <= 0 or len(self.spread) + len(self.pending.bans) >= SPREAD_MAX:
                self.say(
                    "spread cap",
                    f"spreading at most {SPREAD_PER_ROUND} bans a round and {SPREAD_MAX} at once: the rest stay local",
                )
                break
            if not established_tcp(address):
                continue  # nothing proves the address is its sender's own
            budget -= 1
            ttl = min(left, SPREAD_TTL_S)
            if self.store_up:
                try:
                    self.store.put_ban(address, ttl, reason, self.node)
                    self.from_store.add(address)  # the watch brings it back; do not spread it twice
                    self.spread[address] = now + ttl
                    self.counts["bans_spread"] += 1
                    continue
                except StoreUnavailable:
                    self._store_lost("spreading a ban failed")
            self.pending.add_ban(address, ttl, reason)
            self.spread[address] = now + ttl

    # ---- health and BGP ----

    def _backend_ok(self, spec: InterfaceSpec) -> list[str]:
        bad = []
        for fs in spec.forwards:
            r = fs.rule
            ok = False
            for b in r.backends:
                fam = socket.AF_INET6 if b.host.version == 6 else socket.AF_INET
                kind = socket.SOCK_STREAM if r.proto == "tcp" else socket.SOCK_DGRAM
                s = socket.socket(fam, kind)
                s.settimeout(PROBE_TIMEOUT_S)
                try:
                    s.connect((str(b.host), r.target_port(b, r.port_lo)))
                    if kind == socket.SOCK_DGRAM:
                        s.send(fs.udp_probe if fs.udp_probe is not None else forward.DEFAULT_UDP_PROBE)
                        s.recv(65535)
                    ok = True
                except OSError:
                    pass
                finally:
                    s.close()
                if ok:
                    break
            if not ok:
                bad.append(f"{spec.name}: no backend of {r.proto} {r.protected} {r.ports} answers")
        return bad

    def _probe_loop(self, stop: threading.Event) -> None:
        """Backend probes, in their own thread: a dead backend's timeouts never hold up bans."""
        while not stop.is_set():
            try:
                specs = list(self.specs.values())  # the main thread may be changing it
            except RuntimeError:
                continue
            bad = []
            for spec in specs:
                bad += self._backend_ok(spec)
            self.backend_reasons = bad
            self.backend_rounds += 1
            stop.wait(min(HEALTH_EVERY_S, self.daemon.health_interval_s))

    def check_health(self) -> list[str]:
        reasons = []
        if not self.synced:
            reasons.append("not synced with the store yet")
        if not self.specs:
            reasons.append("the store holds no desired interface")
        for name, spec in self.specs.items():
            if self.results.get(name) not in OK_ACTIONS:
                reasons.append(f"{name}: not realised ({self.results.get(name, 'pending')})")
                continue
            try:
                iface = state.resolve_iface(name)
            except UserError as exc:
                reasons.append(exc.message)
                continue
            if not dataplane.is_ours(dataplane.query(iface.index)):
                reasons.append(f"{name}: xdpguard is not attached")
                continue
        if self.backend_rounds == 0:
            reasons.append("backends not probed yet")
        if self.bgp is not None and self.bgp.require_routes:
            reasons += missing_routes(self.bgp.require_routes)
        return reasons + [r for r in self.backend_reasons if r.split(":")[0] in self.specs]

    def protected(self) -> list:
        return [a for s in self.specs.values() for a in s.protected]

    def update_health_and_bgp(self) -> None:
        reasons = self.check_health()
        h = self.health
        if reasons:
            h.fail_run += 1
            h.ok_run = 0
        else:
            h.ok_run += 1
            h.fail_run = 0
        h.reasons = reasons
        if not h.ready and h.ok_run >= self.daemon.rise:
            h.ready = True
        elif h.ready and h.fail_run >= self.daemon.fall:
            h.ready = False
        want = h.ready
        note = ""
        if not want and self.announcing and self.bgp is not None and self._can_serve():
            others = self._may_withdraw()
            if others is not None:
                want = True
                note = (
                    f"unhealthy ({'; '.join(reasons) or 'recovering'}) but kept announcing: "
                    f"{others} other node(s) announce, min_nodes is {self.bgp.min_nodes}"
                )
        self.announce_note = note
        if note:
            self.say("announce", note)
        self.set_announce(want)
        if not want:
            self._announce_key = None
        elif self.store_up and self.lease is not None and self.bgp is not None and self._announce_key != self.lease:
            try:
                self.store.set_announcer(self.node, True, self.lease)
                self._announce_key = self.lease
            except StoreUnavailable as exc:
                self._store_lost(exc.message)

    def _may_withdraw(self) -> int | None:
        """None when this node may withdraw; else how many others announce (fewer than min_nodes,
        or unknown because another node is deciding right now). With the store up, the count is
        taken under the cluster's withdraw lock and our announce key goes before the lock does, so
        two nodes cannot both withdraw on the strength of each other. With the store down, the
        last known statuses decide."""
        assert self.bgp is not None
        if not self.store_up or self.lease is None:
            others = sum(1 for n, st in self.nodes.items() if n != self.node and st.get("announcing"))
            return None if others >= self.bgp.min_nodes else others
        try:
            if not self.store.try_lock("withdraw", self.node, self.lease):
                return 0  # someone else is withdrawing: ask again at the next round
            try:
                others = len(self.store.announcers() - {self.node})
                if others < self.bgp.min_nodes:
                    return others
                self.store.set_announcer(self.node, False, self.lease)
                return None
            finally:
                self.store.unlock("withdraw")
        except StoreUnavailable as exc:
            self._store_lost(exc.message)
            return 0

    def _can_serve(self) -> bool:
        """Announcing makes sense at all: our program is attached on every desired interface."""
        for name in self.specs:
            try:
                if not dataplane.is_ours(dataplane.query(state.resolve_iface(name).index)):
                    return False
            except UserError:
                return False
        return bool(self.specs)

    def set_announce(self, on: bool) -> None:
        if self.bgp is None:
            self.announcing = on
            return
        addrs = bgpmod.announce_set(self.bgp, self.protected()) if on else []
        try:
            changed = bgpmod.configure(
                self.bgp,
                bgpmod.render(
                    self.bgp,
                    addrs,
                    self.node,
                    self._escalation_routes(),
                    self.bgp.overload_prepend if self.overloaded else 0,
                ),
            )
        except UserError as exc:
            self.say("bird", f"BIRD: {exc.message}")
            return
        self.announced = [str(a) for a in addrs]
        if changed or on != self.announcing:
            self.report(
                ("announcing " + ", ".join(map(str, addrs)))
                if on
                else ("withdrawn: " + ("; ".join(self.health.reasons) or "stopping"))
            )
        self.announcing = on

    def _escalation_routes(self) -> tuple[bgpmod.Escalation, ...]:
        return tuple(a.escalation for a in self.escalations.values())

    def _escalates(self) -> bool:
        """Whether the load meter runs: upstream escalation or overload prepending is configured."""
        return self.bgp is not None and bool(self.bgp.flowspec_pps or self.bgp.blackhole_pps or self.bgp.overload_pps)

    def overload_round(self, now: float) -> None:
        """Prepend our AS while this node receives more than [bgp] overload_pps; back to the plain
        path once below 70 % of it for OVERLOAD_CALM_S (hysteresis: no flapping at the edge)."""
        if self.bgp is None or not self.bgp.overload_pps or self.meter is None:
            return
        pps = sum(float(e.get("pps", 0.0)) for e in self.meter.latest.values())
        was = self.overloaded
        if pps >= self.bgp.overload_pps:
            self.overloaded, self._calm_since = True, None
        elif self.overloaded and pps < 0.7 * self.bgp.overload_pps:
            self._calm_since = self._calm_since or now
            if now - self._calm_since >= OVERLOAD_CALM_S:
                self.overloaded, self._calm_since = False, None
        else:
            self._calm_since = None
        if self.overloaded != was:
            self.report(
                f"overloaded ({pps:,.0f} pps >= {self.bgp.overload_pps:,}): prepending AS {self.bgp.local_as} "
                f"x{self.bgp.overload_prepend}"
                if self.overloaded
                else f"load back to {pps:,.0f} pps: plain AS path again"
            )
            self.set_announce(self.announcing)

    def escalation_round(self) -> None:
        """Publish this node's load; the elected node sums the loads and (re)decides the
        upstream routes. See escalate.py."""
        if not self._escalates() or not self.store_up or self.lease is None or self.meter is None:
            return
        assert self.bgp is not None
        try:
            self.store.put_load(self.node, {"updated": self.meter.updated, "addresses": self.meter.latest}, self.lease)
            leader = self.store.lock_owner("escalate") == self.node or self.store.try_lock(
                "escalate", self.node, self.lease
            )
            loads, bad = self.store.read_loads() if leader else ({}, {})
        except StoreUnavailable as exc:
            self._store_lost(exc.message)
            return
        for node, why in bad.items():
            self.reject(f"load/{node}", why)
        if leader != self.escalation_leader:
            self.escalation_leader = leader
            self.report("elected to escalate upstream" if leader else "no longer the escalating node")
        before = set(self.escalations)
        if leader:
            try:
                self.escalations, said = escalate.decide(
                    self.bgp, loads, self.escalations, time.monotonic(), self.trust.protects
                )
            except (ValueError, TypeError, KeyError, AttributeError) as exc:  # cannot happen: loads are validated
                self.say("escalate", f"escalation round skipped: {type(exc).__name__}: {exc}")
                return
        else:
            self.escalations, said = {}, []
        for line in said:
            self.report(line)
        if set(self.escalations) != before:
            self.set_announce(self.announcing)

    def bgp_state(self) -> dict:
        if self.bgp is None:
            return {}
        try:
            return {
                p.name: {"state": p.state, "info": p.info}
                for p in bgpmod.protocols(self.bgp.bird_socket)
                if p.proto == "BGP"
            }
        except UserError as exc:
            return {"error": {"state": "unknown", "info": exc.message}}

    # ---- the node key ----

    def status(self) -> dict:
        return {
            "node": self.node,
            "pid": os.getpid(),
            "updated": time.time(),
            "applied_revision": self.applied_revision,
            "state_revision": self.state_revision,
            "synced": self.synced,
            "ready": self.health.ready,
            "reasons": self.health.reasons,
            "announcing": self.announcing,
            "announced": self.announced,
            "announce_note": self.announce_note,
            "interfaces": dict(self.results),
            "bans": len(self.store_bans),
            "pending_writes": len(self.pending.bans),
            "pending_dropped": self.pending.dropped,
            "bgp": self.bgp_state(),
            "escalation_leader": self.escalation_leader,
            "overloaded": self.overloaded,
            "escalations": [a.escalation.describe() for a in self.escalations.values()],
            "load": {a: e.get("pps", 0.0) for a, e in (self.meter.latest if self.meter else {}).items()},
            **self.counts,
        }

    def heartbeat(self) -> None:
        if self.lease is None or not self.store.keepalive(self.lease):
            self.lease = self.store.grant(self.cluster.node_ttl_s)
        self.store.put_node(self.node, self.status(), self.lease)
        self.nodes = self.store.read_nodes()

    # ---- the loop ----

    def _store_lost(self, why: str) -> None:
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        if self.store_up:
            self.report(f"store unreachable ({why}): enforcing what is realised, queueing writes")
        self.store_up = False
        self.lease = None

    def run(self, stop: threading.Event, duration_s: float | None = None) -> None:
        state.require_root()
        end = None if duration_s is None else time.monotonic() + duration_s
        if l7engine.set_peering(self.cluster):  # before the first realise, which renders HAProxy with it
            n = len(self.cluster.peers)
            self.say("peers", f"HAProxy stick tables shared by {n} nodes" if n else "HAProxy stick tables per node")
        if self.bgp is not None:
            self.liveness = bgpmod.LivenessDevice(self.bgp.liveness_iface).open()
            try:
                bgpmod.configure(self.bgp, bgpmod.render(self.bgp, [], self.node))
            except UserError as exc:
                self.say("bird", f"BIRD: {exc.message}")
        prober_stop = threading.Event()
        prober = threading.Thread(target=self._probe_loop, args=(prober_stop,), name="probes", daemon=True)
        prober.start()
        try:
            self._loop(stop, end)
        finally:
            prober_stop.set()
            if self.meter is not None:
                self.meter.stop()
                self.meter = None
            self.close()

    def _loop(self, stop: threading.Event, end: float | None) -> None:
        next_connect = next_health = next_beat = next_poll = next_drift = next_snapshot = next_load = next_l7 = 0.0
        next_resync = time.monotonic() + self.cluster.resync_interval_s
        beat_every = max(0.5, self.cluster.node_ttl_s / 3)
        while not stop.is_set() and (end is None or time.monotonic() < end):
            now = time.monotonic()
            if self.watch is None and now >= next_connect:
                try:
                    self.full_sync()
                    next_resync = now + self.cluster.resync_interval_s
                    self.report(f"synced with the store at revision {self.applied_revision}")
                except StoreUnavailable as exc:
                    self._store_lost(exc.message)
                    next_connect = now + 1.0
                    if not self.synced:
                        self.load_snapshot()
            if self.watch is not None:
                batch = self._drain(self.watch)
                resync = next((e for e in batch if e.kind == "resync"), None)
                self.handle_batch([e for e in batch if e.kind != "resync"])
                if resync is not None:
                    self._store_lost(resync.reason)
                    next_connect = time.monotonic()
            else:
                stop.wait(0.05)
            now = time.monotonic()
            if self.watch is not None and now >= next_resync:
                self.watch.stop()
                self.watch = None
                next_connect = now
            if now >= next_poll:
                next_poll = now + LOCAL_BAN_POLL_S
                self.spread_local_bans()
            if now >= next_drift and self.specs:
                next_drift = now + DRIFT_EVERY_S
                for spec in self.specs.values():
                    self._realise(spec, lists=False)
                self._realise_l7(False)  # the previous challenge key's time is up: rendered without it
            if now >= next_l7 and self.specs:
                next_l7 = now + L7_EVERY_S
                # HAProxy kept running, its offenders banned in XDP (reason cc: spread by
                # spread_local_bans), challenge-passing sources verified, ceilings learned, the
                # level raised and lowered from the backend's health: as `xdpguard run` does
                self.l7.tick([s for n, s in self.specs.items() if self.results.get(n) in OK_ACTIONS])
            if now >= next_snapshot and self.store_up and self.applied_revision != self._snapshot_saved:
                next_snapshot = now + 1.0
                try:
                    self.save_snapshot()
                except OSError as exc:
                    self.say("snapshot", f"cannot save the local snapshot: {exc.strerror}")
            if now >= next_health:
                next_health = now + min(HEALTH_EVERY_S, self.daemon.health_interval_s)
                self.update_health_and_bgp()
            if now >= next_load and self._escalates():
                next_load = now + escalate.LOAD_EVERY_S
                if self.meter is None and self.specs:
                    self.meter = escalate.LoadMeter(sorted(self.specs)).start()
                self.overload_round(now)
                self.escalation_round()
            if now >= next_beat and self.store_up:
                next_beat = now + beat_every
                try:
                    self.heartbeat()
                except StoreUnavailable as exc:
                    self._store_lost(exc.message)
                    next_connect = now + 1.0

    def close(self) -> None:
        """Stop: withdraw (on purpose, before the liveness device goes), leave the cluster view.
        The kernel keeps enforcing: nothing is detached."""
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        if self.bgp is not None:
            try:
                bgpmod.configure(self.bgp, bgpmod.render(self.bgp, [], self.node))
            except UserError:
                pass
        if self.liveness is not None:
            self.liveness.close()
            self.liveness = None
        if self.store_up and self.lease is not None:
            try:
                self.store.delete_node(self.node)
                self.store.revoke(self.lease)
            except StoreUnavailable:
                pass
