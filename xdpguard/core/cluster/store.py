"""The cluster store: desired policy and bans in etcd (v3 API over its HTTP gateway, `etcd3gw`).

Keys, under /xdpguard/<cluster>/ :

    state/desired/<iface>   durable: the TOML of one interface's desired state (config.to_toml of
                            a Desired holding only that interface); every node realises it
    state/bans/<address>    on a lease of the ban's TTL: {"reason", "node", "ttl", "expires"}; etcd
                            deletes it when the lease ends, so expiry is cluster-wide
    state/secret/l7         durable: the cluster's challenge secret (l7/secret.py's JSON: the
                            current key, after a rotation the previous one and until when it
                            checks cookies); created once by the first node (create-if-absent),
                            replaced only by `cluster rotate-secret`; never in a desired-state dump
    nodes/<node>            on the node's lease (kept alive by `cluster run`): its status and the
                            revision of state/ it has applied
    announce/<node>         on the node's lease: present while the node announces the protective IP
    locks/withdraw          on the holder's lease: a node withdraws only while holding it, after
                            counting announce/ (so concurrent withdrawals cannot go below min_nodes)

The way in is TLS with the node's client certificate ([cluster] ca, cert, key; etcd runs with
--client-cert-auth), optionally with etcd user/password auth (a token per endpoint, renewed when
etcd says it expired); a plain-http store is refused unless the node's file says insecure = true.
What comes out is not trusted: every value is validated like operator input (parse_desired,
parse_ban, parse_load, parse_status) and bounded by the node's own file (Trust); what fails is a
`Rejected` the caller logs and skips.

Nodes watch state/ only, so node chatter does not move anyone's applied revision. A node that
has applied revision R has applied every change of state/ up to R: a full read answers with the
store's revision R, a watch event carries its own.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import math
import os
import queue
import re
import socket
import threading
import time
import tomllib
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from ..model import vocab
from ..model.desired import Desired, InterfaceSpec
from ..desired.dump import to_toml
from ..desired.load import loads
from ..model.cluster import BgpSpec, ClusterSpec
from ..errors import UserError
from ..prefixes import Prefix
from ..l7 import secret as l7secret

try:  # a dependency of the package (pyproject), imported at module level like the rest
    import etcd3gw
    import requests
except ImportError:  # pragma: no cover - a broken install; say how to fix it when used
    etcd3gw = None
    requests = None

REQUEST_TIMEOUT_S = 2.0
MAX_BAN_TTL_S = vocab.BAN_TTL_MAX_S


class StoreUnavailable(UserError):
    """No etcd endpoint of the cluster answers."""


class StoreRefused(StoreUnavailable):
    """etcd answers but refuses us: wrong or missing credentials, no permission."""


class Rejected(UserError):
    """A value read from the store that this node does not take (hostile, damaged or beyond
    what the node's own file allows): skipped and logged, never fatal."""


# ---- trust: what the node's own file lets the store ask for ----

MIN_PREFIX_LEN = {4: 8, 6: 16}  # a store list entry wider than a /8 (IPv4) or /16 (IPv6) is refused
# data-path ban reasons a node spreads (see node.py): evidence spoofing cannot make. connlimit: a
# source over a connection limit in nft; cc: an HTTP offender HAProxy saw (handshakes completed,
# requests sent: l7/bans.py)
SPREAD_REASONS = frozenset({"connlimit", "cc"})
SPREAD_TTL_MAX_S = 600  # a spread ban lives at most this long on another node
_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LOCAL_ONLY = ("block_files", "allow_files")  # would read this node's files: only from its own config


@dataclass(frozen=True)
class Trust:
    """The bounds the node's own config sets on the store: the prefixes it may be made to protect
    (and announce, and escalate upstream for) and the prefixes its forwards may send to."""

    protect: tuple = ()  # of ip_network; empty: the store may make the node protect nothing
    backends: tuple = ()  # of ip_network; empty: the store may make the node forward nowhere

    @classmethod
    def of(cls, cluster: ClusterSpec, bgp: BgpSpec | None = None) -> Trust:
        nets = [ipaddress.ip_network(t) for t in cluster.protect]
        if not nets and bgp is not None:  # [bgp] announce names what this node stands for
            nets = [ipaddress.ip_network(a) for a in bgp.announce]
        return cls(tuple(nets), tuple(ipaddress.ip_network(t) for t in cluster.backends))

    def protects(self, addr) -> bool:
        try:
            a = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(a.version == n.version and a in n for n in self.protect)

    def check(self, where: str, spec: InterfaceSpec) -> None:
        """Raise Rejected naming the first thing in `spec` beyond these bounds."""
        for a in spec.protected:
            if not self.protects(a):
                raise Rejected(
                    f"{where}: protects {a}, outside this node's [cluster] protect "
                    f"({', '.join(map(str, self.protect)) or 'none given'})"
                )
        for which in ("allow", "block"):
            for p in getattr(spec, which):
                if p.plen < MIN_PREFIX_LEN[p.family]:
                    raise Rejected(
                        f"{where}: {which} {p} covers too much (wider than "
                        f"/{MIN_PREFIX_LEN[p.family]}): refused from the store"
                    )
        for fs in spec.forwards:
            for b in fs.rule.backends:
                if not any(b.host.version == n.version and b.host in n for n in self.backends):
                    raise Rejected(
                        f"{where}: forwards to {b.host}, outside this node's [cluster] backends "
                        f"({', '.join(map(str, self.backends)) or 'none given'})"
                    )
        for a in spec.addresses:
            for svc in a.http:  # HAProxy passes requests on to these: bounded like a forward
                for host, _ in svc.backends:
                    if not any(host.version == n.version and host in n for n in self.backends):
                        raise Rejected(
                            f"{where}: HTTP service {svc.name} passes to {host}, outside this node's "
                            f"[cluster] backends ({', '.join(map(str, self.backends)) or 'none given'})"
                        )


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


def _prefix_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return bytes(b).decode()


@dataclass(frozen=True)
class Ban:
    address: str
    ttl_s: int
    reason: str  # operator (`cluster ban`), else the data-path reason a node spread it for
    node: str
    expires: float  # unix time; the lease is the authority, this is for the local map's TTL

    def remaining_s(self, now: float | None = None) -> float:
        return self.expires - (time.time() if now is None else now)

    @property
    def operator(self) -> bool:
        """An operator's ban (the never-evicted map); else a spread data-path ban (the dynamic map)."""
        return self.reason == "operator"


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of the store."""

    revision: int
    desired: dict[str, InterfaceSpec]
    bans: dict[str, Ban]
    nodes: dict[str, dict]
    state_revision: int  # the newest mod revision under state/ (0: empty)
    rejected: dict[str, str] = field(default_factory=dict)  # key → why it was not taken
    secret: l7secret.Secrets | None = None  # the cluster's challenge secret (None: not made yet)


@dataclass(frozen=True)
class Event:
    kind: str  # put | delete | resync (the watch ended: read everything again)
    key: str = ""
    value: bytes = b""
    revision: int = 0
    reason: str = ""


def parse_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UserError(f"invalid address {text!r}: give one IPv4 or IPv6 source address") from None


def desired_text(spec: InterfaceSpec) -> str:
    return to_toml(Desired((spec,)))


# ---- big lists: content-addressed chunks ----
#
# etcd refuses a request over 1.5 MiB (--max-request-bytes), so a desired interface with a
# million-entry blocklist cannot be one key. Lists longer than INLINE_MAX go into immutable
# chunk keys state/chunks/<sha256> (CHUNK_ENTRIES prefixes each, packed binary) written first;
# the desired key, written last, names its chunks: one put switches every node from the old
# list to the new one, and a node fetches only chunks it does not hold already. Chunks no
# desired key names any more are deleted after the switch.

INLINE_MAX = 4096
CHUNK_ENTRIES = 32768  # IPv6: 589 KB a chunk, 786 KB base64 on the wire
CHUNK_MAGIC = b"XGC1"
ENVELOPE = "xdpguard-chunked-1"


def chunk_bodies(prefixes: frozenset[Prefix]) -> list[bytes]:
    """The list as chunks: sorted, packed as (family, prefix length, address) records."""
    ordered = sorted(prefixes, key=lambda p: (p.family, p.addr, p.plen))
    out = []
    for i in range(0, len(ordered), CHUNK_ENTRIES):
        out.append(CHUNK_MAGIC + b"".join(bytes((p.family, p.plen)) + p.addr for p in ordered[i : i + CHUNK_ENTRIES]))
    return out


def chunk_name(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def parse_chunk(name: str, body: bytes) -> list[Prefix]:
    if not body.startswith(CHUNK_MAGIC) or chunk_name(body) != name:
        raise UserError(f"etcd: list chunk {name[:12]}… is damaged (wrong magic or hash)")
    out = []
    i, n = len(CHUNK_MAGIC), len(body)
    while i < n:  # the hash only proves the name fits the body: every record is checked too
        if i + 2 > n or body[i] not in (4, 6):
            raise Rejected(f"etcd: list chunk {name[:12]}… is damaged at byte {i}")
        fam, plen = body[i], body[i + 1]
        size, bits = (4, 32) if fam == 4 else (16, 128)
        addr = bytes(body[i + 2 : i + 2 + size])
        if len(addr) != size or plen > bits or int.from_bytes(addr, "big") & ((1 << (bits - plen)) - 1):
            raise Rejected(f"etcd: list chunk {name[:12]}… is damaged at byte {i}")
        out.append(Prefix(fam, addr, plen))
        i += 2 + size
    return out


def _first_line(exc: UserError) -> str:
    return (getattr(exc, "problems", None) or [exc.message])[0]


def check_local_only(where: str, data: dict) -> None:
    """Refuse what only the node's own file may say: [cluster], [bgp] (and any other section but
    [[interface]] and [daemon]), list files (they read this node's files), hooks (commands run as
    root). [daemon] is allowed and never used: desired_text writes its defaults, and a store value
    only ever gives its one interface (parse_desired)."""
    extra = sorted(set(data) - {"interface", "daemon"})
    if extra:
        raise Rejected(f"{where}: section {extra[0]!r} is never taken from the store (only from the node's own file)")
    ifaces = data.get("interface", [])
    for i in ifaces if isinstance(ifaces, list) else []:
        if not isinstance(i, dict):
            continue
        for k in _LOCAL_ONLY:
            if k in i:
                raise Rejected(f"{where}: {k} is never taken from the store (it would read this node's files)")
        ev = i.get("events")
        if isinstance(ev, dict) and "hook" in ev:
            raise Rejected(
                f"{where}: events.hook is never taken from the store: each node's own file gives it ([cluster] hook)"
            )


def parse_desired(key: str, value: bytes, trust: Trust | None = None) -> InterfaceSpec:
    """One interface's desired state from a store value, validated as operator input (the config
    loader) and, with `trust`, against what the node's own file allows. Rejected (a UserError)
    names the first problem."""
    where = f"etcd:{key}"
    try:
        text = value.decode()
        data = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Rejected(f"{where}: not valid TOML text ({str(exc)[:120]})") from None
    if trust is not None:
        check_local_only(where, data)
    try:
        d, _ = loads(text, where)
    except UserError as exc:
        raise Rejected(_first_line(exc)) from None
    if len(d.interfaces) != 1:
        raise Rejected(f"{where}: must hold exactly one [[interface]]")
    spec = d.interfaces[0]
    name = key.rsplit("/", 1)[-1]
    if trust is not None:
        if spec.name != name:
            raise Rejected(f"{where}: holds interface {spec.name!r}, not {name!r}")
        trust.check(where, spec)
    return spec


def parse_ban(address: str, value: bytes, now: float | None = None) -> Ban:
    """A ban from its key and value, validated; Rejected names what is wrong."""
    where = f"etcd: ban {address[:60]!r}"
    try:
        a = ipaddress.ip_address(address)
    except ValueError:
        raise Rejected(f"{where}: not one IPv4 or IPv6 address") from None
    if str(a) != address:
        raise Rejected(f"{where}: not in canonical form ({a})")
    try:
        d = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(f"{where}: not JSON") from None
    if not isinstance(d, dict):
        raise Rejected(f"{where}: not a JSON object")
    ttl, expires = d.get("ttl"), d.get("expires")
    reason, node = d.get("reason", "operator"), d.get("node", "?")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_BAN_TTL_S:
        raise Rejected(f"{where}: ttl must be 1 to {MAX_BAN_TTL_S} s, got {str(ttl)[:40]}")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or not math.isfinite(expires):
        raise Rejected(f"{where}: expires must be a unix time")
    now = time.time() if now is None else now
    if expires > now + ttl + 60:
        raise Rejected(f"{where}: expires {expires - now:.0f} s from now, beyond its ttl of {ttl} s")
    if not isinstance(reason, str) or reason not in {"operator", *SPREAD_REASONS}:
        raise Rejected(
            f"{where}: reason {str(reason)[:40]!r} is not one a ban is spread for "
            f"(operator, {', '.join(sorted(SPREAD_REASONS))})"
        )
    if reason != "operator" and ttl > SPREAD_TTL_MAX_S:
        raise Rejected(f"{where}: a spread ban ({reason}) lasts at most {SPREAD_TTL_MAX_S} s, got {ttl}")
    if node != "?" and (not isinstance(node, str) or not _NODE_RE.match(node)):
        raise Rejected(f"{where}: node must be a node name")
    return Ban(str(a), ttl, reason, node, float(expires))


SECRET_KEY = "state/secret/l7"  # under the cluster's root


def parse_secret(key: str, value: bytes) -> l7secret.Secrets:
    """The cluster's challenge secret from its store value; Rejected names what is wrong (never
    the key's bytes)."""
    try:
        return l7secret.from_json(value, f"etcd:{key}")
    except UserError as exc:
        raise Rejected(exc.message) from None


MAX_LOAD_ADDRESSES = 256
MAX_LOAD_PORTS = 16
MAX_PPS = 1e10  # 10 Gpps: beyond what one node receives
_PORT_KEY_RE = re.compile(r"^(?:(?:tcp|udp)/\d{1,5}|[a-z0-9]{1,12})$")


def _pps(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= MAX_PPS:
        return None
    return float(v)


def parse_load(node: str, value: bytes) -> dict:
    """A node's load entry (what it receives per protected address), validated:
    {"updated": float, "addresses": {address: {"pps": float, "ports": {"udp/53": pps, ...}}}}."""
    where = f"etcd: load of {node[:60]!r}"
    try:
        d = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(f"{where}: not JSON") from None
    if not isinstance(d, dict) or not isinstance(d.get("addresses", {}), dict):
        raise Rejected(f"{where}: not an object with an addresses table")
    addrs = d.get("addresses", {})
    if len(addrs) > MAX_LOAD_ADDRESSES:
        raise Rejected(f"{where}: {len(addrs)} addresses, more than {MAX_LOAD_ADDRESSES}")
    out = {}
    for addr, e in addrs.items():
        try:
            a = str(ipaddress.ip_address(addr))
        except ValueError:
            raise Rejected(f"{where}: {str(addr)[:60]!r} is not an address") from None
        if not isinstance(e, dict) or _pps(e.get("pps", 0.0)) is None:
            raise Rejected(f"{where}: {a}: pps must be a number from 0 to {MAX_PPS:g}")
        ports = e.get("ports") or {}
        if not isinstance(ports, dict) or len(ports) > MAX_LOAD_PORTS:
            raise Rejected(f"{where}: {a}: ports must be a table of at most {MAX_LOAD_PORTS} entries")
        good = {}
        for k, v in ports.items():
            if not _PORT_KEY_RE.match(k) or _pps(v) is None:
                raise Rejected(f"{where}: {a}: bad port entry {str(k)[:30]!r}")
            good[k] = float(v)
        out[a] = {"pps": _pps(e.get("pps", 0.0)), "ports": good}
    return {"updated": _pps(d.get("updated", 0.0)) or 0.0, "addresses": out}


def parse_status(value: bytes) -> dict:
    """A node's status (its own key): a JSON object, else a stand-in that says so."""
    try:
        d = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        d = None
    return d if isinstance(d, dict) else {"error": "unreadable status"}


class ClusterStore:
    def __init__(self, spec: ClusterSpec, timeout_s: float = REQUEST_TIMEOUT_S, trust: Trust | None = None):
        """`trust`: check what is read against the node's own bounds (the agent does; a verb that
        only reads statuses or writes needs none)."""
        if etcd3gw is None:
            raise UserError("the etcd client etcd3gw is missing: run scripts/setup.sh (pip install -e .)")
        plain = [e for e in spec.endpoints if not e.startswith("https://")]
        if plain and not spec.insecure:
            raise UserError(
                f"the cluster store {plain[0]} is not TLS: use https:// endpoints with [cluster] ca, "
                "cert and key, or say insecure = true (anyone who reaches it can change every node)"
            )
        for what in ("ca", "cert", "key", "password_file"):
            path = getattr(spec, what)
            if path is not None and not os.access(path, os.R_OK):
                raise UserError(f"[cluster] {what} {path}: cannot read it")
        self.spec = spec
        self.trust = trust
        self.timeout_s = timeout_s
        self.root = f"/xdpguard/{spec.name}/"
        self.state = self.root + "state/"
        self._password: str | None = None
        if spec.password_file is not None:
            try:
                with open(spec.password_file, encoding="utf-8") as f:
                    self._password = f.readline().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"[cluster] password_file {spec.password_file}: cannot read it ({exc})") from None
        self._clients = []
        for url in spec.endpoints:
            u = urlsplit(url)
            c = etcd3gw.Etcd3Client(
                host=u.hostname,
                port=u.port or 2379,
                protocol=u.scheme,
                ca_cert=spec.ca,
                cert_cert=spec.cert,
                cert_key=spec.key,
                timeout=timeout_s,
                api_path="/v3/",
            )
            # only the config decides whom we trust: no REQUESTS_CA_BUNDLE (requests lets it win over
            # the session's CA), no proxy from the environment
            c.session.trust_env = False
            self._clients.append(c)
        self._current = 0
        self._chunks: dict[str, list[Prefix]] = {}  # list chunk name → its prefixes

    # ---- user/password auth: a token per endpoint, taken again when etcd says it expired ----

    _TOKEN_GONE = ("invalid auth token", "user name is empty")

    def _authenticate(self, c) -> None:
        c.session.headers.pop("Authorization", None)
        try:
            out = c.post(c.get_url("/auth/authenticate"), json={"name": self.spec.user, "password": self._password})
        except etcd3gw.exceptions.Etcd3Exception as exc:
            text = getattr(exc, "detail_text", "") or str(exc)
            if "authentication failed" in text or "invalid user" in text or "not enabled" in text:
                try:
                    text = str(json.loads(text).get("message") or text)
                except (ValueError, AttributeError):
                    pass
                raise StoreRefused(f"etcd refused user {self.spec.user!r}: {text.strip()[:160]}") from None
            raise
        token = out.get("token") if isinstance(out, dict) else None
        if not isinstance(token, str) or not token:
            raise StoreRefused(f"etcd gave no auth token to user {self.spec.user!r}")
        c.session.headers["Authorization"] = token

    def _call(self, c, path: str, body: dict) -> dict:
        if self.spec.user is not None and "Authorization" not in c.session.headers:
            self._authenticate(c)
        try:
            return c.post(c.get_url(path), json=body)
        except etcd3gw.exceptions.Etcd3Exception as exc:
            text = (getattr(exc, "detail_text", "") or "").lower()
            if self.spec.user is None or not any(t in text for t in self._TOKEN_GONE):
                raise
        self._authenticate(c)  # the token expired (etcd's --auth-token-ttl): once more with a new one
        return c.post(c.get_url(path), json=body)

    # ---- transport: the first endpoint that answers ----

    @property
    def client(self):
        return self._clients[self._current]

    def _post(self, path: str, body: dict) -> dict:
        last = None
        for i in range(len(self._clients)):
            idx = (self._current + i) % len(self._clients)
            c = self._clients[idx]
            try:
                out = self._call(c, path, body)
                self._current = idx
                return out
            except StoreRefused as exc:
                last = exc
            except etcd3gw.exceptions.Etcd3Exception as exc:
                last = exc
            except requests.RequestException as exc:
                last = exc
        if isinstance(last, StoreRefused):
            raise last
        detail = " ".join((getattr(last, "detail_text", None) or str(last) or type(last).__name__).split())
        try:  # etcd's own words, when it answered
            detail = str(json.loads(detail).get("message") or detail)
        except (ValueError, AttributeError):
            pass
        detail = detail.split("(Caused by ", 1)[-1]  # urllib3's "HTTPSConnectionPool(...): Max retries" says nothing
        if "SSL" in detail:
            m = re.search(r"\[SSL: [^\]]+\][^(')\]]*", detail)
            raise StoreRefused(
                f"etcd ({', '.join(self.spec.endpoints)}): TLS failed: "
                f"{(m.group(0) if m else detail[:160]).strip()}"
                + ("; no client certificate given ([cluster] cert and key)" if self.spec.cert is None else "")
            )
        if "CommonName of client" in detail:
            raise StoreRefused(
                f"etcd ({', '.join(self.spec.endpoints)}) refused us: with auth enabled, etcd's HTTP "
                "gateway takes no client certificate with a CommonName: issue [cluster] cert without one"
            )
        if any(t in detail.lower() for t in ("permission denied", "user name is empty", "invalid auth token")):
            raise StoreRefused(f"etcd ({', '.join(self.spec.endpoints)}) refused us: {detail[:200]}")
        raise StoreUnavailable(f"etcd ({', '.join(self.spec.endpoints)}) does not answer: {detail[:200]}")

    def _range(self, prefix: str, end: str | None = None, revision: int | None = None) -> tuple[int, list[dict]]:
        """Keys under `prefix` (or from `prefix` to `end`), at `revision` (default: now)."""
        body = {"key": _b64(prefix), "range_end": _b64(end if end is not None else _prefix_end(prefix))}
        if revision:
            body["revision"] = revision
        out = self._post("/kv/range", body)
        return int(out["header"]["revision"]), out.get("kvs", [])

    def _put(self, key: str, value: str, lease: int | None = None) -> int:
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        return int(self._post("/kv/put", body)["header"]["revision"])

    def _put_bytes(self, key: str, value: bytes) -> int:
        body = {"key": _b64(key), "value": base64.b64encode(value).decode()}
        return int(self._post("/kv/put", body)["header"]["revision"])

    def _range_keys(self, prefix: str) -> tuple[int, list[str]]:
        out = self._post("/kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)), "keys_only": True})
        return int(out["header"]["revision"]), [_unb64(kv["key"]).decode() for kv in out.get("kvs", [])]

    def _delete(self, key: str) -> tuple[int, int]:
        out = self._post("/kv/deleterange", {"key": _b64(key)})
        return int(out["header"]["revision"]), int(out.get("deleted", 0))

    def grant(self, ttl_s: int) -> int:
        return int(self._post("/lease/grant", {"TTL": int(ttl_s), "ID": 0})["ID"])

    def keepalive(self, lease: int) -> bool:
        """False when the lease is gone (expired while we could not reach etcd)."""
        out = self._post("/lease/keepalive", {"ID": lease})
        return int(out.get("result", {}).get("TTL", 0)) > 0

    def revoke(self, lease: int) -> None:
        try:
            self._post("/kv/lease/revoke", {"ID": lease})
        except (StoreUnavailable, KeyError):
            pass

    # ---- the keys ----

    def read(self) -> Snapshot:
        """Everything but the chunk bodies, at one revision (chunks are fetched as named, or
        come from the cache)."""
        rev, kvs = self._range(self.root, end=self.state + "chunks/")
        _, rest = self._range(_prefix_end(self.state + "chunks/"), end=_prefix_end(self.root), revision=rev)
        kvs = kvs + rest
        desired, bans, nodes, rejected = {}, {}, {}, {}
        secret = None
        state_rev = 0
        for kv in kvs:
            key = _unb64(kv["key"]).decode(errors="replace")
            value = _unb64(kv.get("value", ""))
            if key.startswith(self.state):
                state_rev = max(state_rev, int(kv.get("mod_revision", 0)))
            kind, name = self.classify(key)
            try:
                if kind == "desired":
                    desired[name] = self.desired_from(key, value, rev)
                elif kind == "ban":
                    bans[name] = self.parse_ban(name, value)
                elif kind == "node":
                    nodes[name] = parse_status(value)
                elif kind == "secret":
                    secret = parse_secret(key, value)
            except StoreUnavailable:
                raise
            except UserError as exc:
                rejected[key] = exc.message
        return Snapshot(rev, desired, bans, nodes, state_rev, rejected, secret)

    def classify(self, key: str) -> tuple[str, str]:
        for kind, sub in (
            ("desired", "state/desired/"),
            ("ban", "state/bans/"),
            ("node", "nodes/"),
            ("chunk", "state/chunks/"),
            ("secret", SECRET_KEY),
        ):
            if key.startswith(self.root + sub):
                return kind, key[len(self.root + sub) :]
        return "other", key

    @staticmethod
    def parse_ban(address: str, value: bytes) -> Ban:
        return parse_ban(address, value)

    def read_nodes(self) -> dict[str, dict]:
        _, kvs = self._range(self.root + "nodes/")
        return {
            _unb64(kv["key"]).decode(errors="replace")[len(self.root + "nodes/") :]: parse_status(
                _unb64(kv.get("value", ""))
            )
            for kv in kvs
        }

    def put_desired(self, spec: InterfaceSpec) -> int:
        big = {k: getattr(spec, k) for k in ("block", "allow") if len(getattr(spec, k)) > INLINE_MAX}
        if not big:
            out = self._post(
                "/kv/put",
                {"key": _b64(f"{self.state}desired/{spec.name}"), "value": _b64(desired_text(spec)), "prev_kv": True},
            )
            if _unb64(out.get("prev_kv", {}).get("value", "")).startswith(b"{"):
                self.collect_chunks()  # it named chunks before: they may be unnamed now
            return int(out["header"]["revision"])
        _, kvs = self._range_keys(self.state + "chunks/")
        have = {k[len(self.state + "chunks/") :] for k in kvs}
        refs: dict[str, list[str]] = {}
        for which, prefixes in big.items():
            refs[which] = []
            for body in chunk_bodies(prefixes):
                name = chunk_name(body)
                if name not in have:
                    self._put_bytes(f"{self.state}chunks/{name}", body)
                    have.add(name)
                refs[which].append(name)
        slim = replace(spec, **{k: frozenset() for k in big})
        value = json.dumps({"format": ENVELOPE, "toml": desired_text(slim), "chunks": refs}, sort_keys=True)
        rev = self._put(f"{self.state}desired/{spec.name}", value)
        self.collect_chunks()
        return rev

    def desired_from(self, key: str, value: bytes, revision: int | None = None) -> InterfaceSpec:
        """An interface's desired state from its key's value: plain TOML, or the envelope that
        names list chunks (fetched at `revision`, or taken from the cache)."""
        if not value.startswith(b"{"):
            return parse_desired(key, value, self.trust)
        try:
            env = json.loads(value)
            if env.get("format") != ENVELOPE:
                raise ValueError(env.get("format"))
            spec = parse_desired(key, env["toml"].encode(), self.trust)
            chunks = env.get("chunks", {})
            if not all(
                isinstance(n, str) and re.fullmatch(r"[0-9a-f]{64}", n) for names in chunks.values() for n in names
            ):
                raise ValueError("a chunk name is not a sha256")
            lists = {
                which: frozenset(p for name in names for p in self._chunk(name, revision))
                for which, names in chunks.items()
                if which in ("block", "allow")
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Rejected(f"etcd:{key}: not a desired-state value ({str(exc)[:120]})") from None
        spec = replace(spec, **lists)
        if self.trust is not None:
            self.trust.check(f"etcd:{key}", spec)
        return spec

    def _chunk(self, name: str, revision: int | None = None) -> list[Prefix]:
        got = self._chunks.get(name)
        if got is None:
            body = {"key": _b64(f"{self.state}chunks/{name}")}
            if revision:
                body["revision"] = revision
            kvs = self._post("/kv/range", body).get("kvs", [])
            if not kvs:
                raise UserError(f"etcd: list chunk {name[:12]}… is missing (written over meanwhile; read again)")
            got = parse_chunk(name, _unb64(kvs[0].get("value", "")))
            self._chunks[name] = got
        return got

    def remember_chunk(self, key: str, value: bytes) -> None:
        """A chunk seen on the watch: keep it, so the desired key naming it needs no fetch."""
        name = key[len(self.state + "chunks/") :]
        try:
            self._chunks[name] = parse_chunk(name, value)
        except UserError:
            pass

    def collect_chunks(self) -> int:
        """Delete the chunks no desired key names any more; how many went."""
        _, kvs = self._range(self.state + "desired/")
        named = set()
        for kv in kvs:
            v = _unb64(kv.get("value", ""))
            if v.startswith(b"{"):
                try:
                    named.update(n for names in json.loads(v).get("chunks", {}).values() for n in names)
                except (ValueError, AttributeError):
                    return 0  # something we cannot read: delete nothing
        _, keys = self._range_keys(self.state + "chunks/")
        gone = 0
        for k in keys:
            if k[len(self.state + "chunks/") :] not in named:
                gone += self._delete(k)[1]
        keep = {k[len(self.state + "chunks/") :] for k in keys} & named
        self._chunks = {n: v for n, v in self._chunks.items() if n in keep or n in named}
        return gone

    def delete_desired(self, name: str) -> int:
        return self._delete(f"{self.state}desired/{name}")[0]

    def put_ban(self, address: str, ttl_s: float, reason: str = "operator", node: str = "") -> int:
        address = parse_address(address)
        ttl = int(vocab.check_ban_ttl(int(round(ttl_s)), "ban TTL"))
        lease = self.grant(ttl)
        value = json.dumps({"reason": reason, "node": node, "ttl": ttl, "expires": time.time() + ttl})
        return self._put(f"{self.state}bans/{address}", value, lease)

    def delete_ban(self, address: str) -> tuple[int, bool]:
        rev, n = self._delete(f"{self.state}bans/{parse_address(address)}")
        return rev, n > 0

    # ---- the cluster's challenge secret ----

    def create_secret(self, s: l7secret.Secrets) -> tuple[l7secret.Secrets, bool]:
        """Put `s` as the cluster's challenge secret unless there is one (one transaction: of
        nodes starting together exactly one creates it). (the secret the store holds, created)."""
        key = _b64(self.root + SECRET_KEY)
        out = self._post(
            "/kv/txn",
            {
                "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": _b64(l7secret.to_json(s))}}],
                "failure": [{"request_range": {"key": key}}],
            },
        )
        if out.get("succeeded"):
            return s, True
        kvs = (out.get("responses") or [{}])[0].get("response_range", {}).get("kvs", [])
        if not kvs:
            raise StoreUnavailable("etcd: the challenge secret vanished while it was read; read again")
        return parse_secret(self.root + SECRET_KEY, _unb64(kvs[0].get("value", ""))), False

    def rotate_secret(self, keep_s: float, now: float | None = None) -> tuple[l7secret.Secrets, int]:
        """A new current challenge key for the cluster, the old one kept keep_s seconds for the
        cookies it signed (compare-and-swap on the key's revision: two rotations at once make
        two steps, never a lost key). (the new secret, the store's revision)."""
        full = self.root + SECRET_KEY
        for _ in range(5):
            _, kvs = self._range(full, end=_prefix_end(full))
            kv = next((kv for kv in kvs if _unb64(kv["key"]).decode(errors="replace") == full), None)
            t = time.time() if now is None else now
            if kv is None:
                new, cmp = l7secret.Secrets(l7secret.new_key()), {"target": "CREATE", "create_revision": "0"}
            else:
                old = parse_secret(full, _unb64(kv.get("value", "")))
                new = l7secret.rotated(old, t, keep_s)
                cmp = {"target": "MOD", "mod_revision": str(kv["mod_revision"])}
            out = self._post(
                "/kv/txn",
                {
                    "compare": [{"key": _b64(full), "result": "EQUAL", **cmp}],
                    "success": [{"request_put": {"key": _b64(full), "value": _b64(l7secret.to_json(new))}}],
                    "failure": [],
                },
            )
            if out.get("succeeded"):
                return new, int(out["header"]["revision"])
        raise StoreUnavailable("etcd: the challenge secret kept changing under the rotation; try again")

    def put_node(self, node: str, status: dict, lease: int) -> int:
        return self._put(f"{self.root}nodes/{node}", json.dumps(status, sort_keys=True), lease)

    def delete_node(self, node: str) -> None:
        self._delete(f"{self.root}nodes/{node}")

    # ---- who announces: one key per announcing node, on its lease; withdrawals under a lock ----

    def announcers(self) -> set[str]:
        _, kvs = self._range(self.root + "announce/")
        return {_unb64(kv["key"]).decode()[len(self.root + "announce/") :] for kv in kvs}

    def set_announcer(self, node: str, on: bool, lease: int) -> None:
        if on:
            self._put(f"{self.root}announce/{node}", "1", lease)
        else:
            self._delete(f"{self.root}announce/{node}")

    def try_lock(self, name: str, owner: str, lease: int) -> bool:
        """Take lock `name` (a key on `lease`, created only if absent); False when someone holds it."""
        key = _b64(f"{self.root}locks/{name}")
        out = self._post(
            "/kv/txn",
            {
                "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": _b64(owner), "lease": lease}}],
                "failure": [],
            },
        )
        return bool(out.get("succeeded"))

    def unlock(self, name: str) -> None:
        self._delete(f"{self.root}locks/{name}")

    def lock_owner(self, name: str) -> str | None:
        _, kvs = self._range(f"{self.root}locks/{name}")
        for kv in kvs:
            if _unb64(kv["key"]).decode() == f"{self.root}locks/{name}":
                return _unb64(kv.get("value", "")).decode(errors="replace")
        return None

    # ---- load: what each node receives per protected address (escalation input), on its lease ----

    def put_load(self, node: str, load: dict, lease: int) -> int:
        return self._put(f"{self.root}load/{node}", json.dumps(load, sort_keys=True), lease)

    def read_loads(self) -> tuple[dict[str, dict], dict[str, str]]:
        """Every node's load entry, validated: (node → load, node → why its entry was skipped)."""
        _, kvs = self._range(self.root + "load/")
        out, rejected = {}, {}
        for kv in kvs:
            node = _unb64(kv["key"]).decode(errors="replace")[len(self.root + "load/") :]
            try:
                out[node] = parse_load(node, _unb64(kv.get("value", "")))
            except Rejected as exc:
                rejected[node] = exc.message
        return out, rejected

    def watch(self, start_revision: int) -> Watch:
        return Watch(self, start_revision)


class Watch:
    """A watch on state/ from `start_revision`, read by a thread into a queue. When the stream
    ends for any reason (etcd gone, compaction, cancel) a `resync` event is queued and the watch
    is over: the node reads everything again and starts a new one."""

    def __init__(self, store: ClusterStore, start_revision: int):
        self.events: queue.Queue[Event] = queue.Queue()
        self._stop = threading.Event()
        c = store.client
        body = {
            "create_request": {
                "key": _b64(store.state),
                "range_end": _b64(_prefix_end(store.state)),
                "start_revision": start_revision,
            }
        }
        try:
            self._resp = c.session.post(c.get_url("/watch"), json=body, stream=True, timeout=(store.timeout_s, None))
        except requests.RequestException as exc:
            raise StoreUnavailable(f"etcd watch: {exc}") from None
        self._thread = threading.Thread(target=self._read, name="etcd-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        reason = "the watch stream ended"
        try:
            buf = b""
            for chunk in self._resp.iter_content(chunk_size=None):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    res = json.loads(line).get("result", {})
                    if res.get("canceled") or int(res.get("compact_revision", 0) or 0):
                        reason = f"the watch was cancelled (compacted to {res.get('compact_revision', '?')})"
                        return
                    for ev in res.get("events", []):
                        kv = ev["kv"]
                        self.events.put(
                            Event(
                                "delete" if ev.get("type") == "DELETE" else "put",
                                _unb64(kv["key"]).decode(errors="replace"),
                                _unb64(kv.get("value", "")),
                                int(kv["mod_revision"]),
                            )
                        )
        except Exception as exc:  # the stream broke: etcd went away
            reason = f"the watch stream broke: {type(exc).__name__}"
        finally:
            if not self._stop.is_set():
                self.events.put(Event("resync", reason=reason))
            try:
                self._resp.close()  # here, in the reading thread: closing it from another one can deadlock
            except Exception:
                pass

    def stop(self) -> None:
        """End the watch without waiting: shut the socket down under the reading thread, which
        then closes the response itself."""
        self._stop.set()
        try:
            raw = self._resp.raw._fp  # http.client.HTTPResponse
            fd = raw.fileno()
            s = socket.socket(fileno=os.dup(fd))
            try:
                s.shutdown(socket.SHUT_RDWR)
            finally:
                s.close()
        except Exception:  # already closed
            pass


MAX_PENDING_BANS = 65536


@dataclass
class PendingWrites:
    """Writes the node could not make while the store was down: one per key, the newest wins.
    Bounded: beyond `limit` the bans that expire soonest go first (`dropped` counts them). Not
    kept on disk, and need not be: a queued ban is in the node's own ban map (that is where it
    was found), and a restarted agent finds it there again and queues it anew."""

    bans: dict[str, tuple[float, str, float]] = field(default_factory=dict)  # address → (ttl, reason, queued at)
    limit: int = MAX_PENDING_BANS
    dropped: int = 0

    def add_ban(self, address: str, ttl_s: float, reason: str) -> None:
        now = time.time()
        self.bans[address] = (ttl_s, reason, now)
        if len(self.bans) > self.limit:
            live = {a: v for a, v in self.bans.items() if v[0] - (now - v[2]) >= 1}
            self.dropped += len(self.bans) - len(live)
            if len(live) > self.limit:
                keep = sorted(live.items(), key=lambda kv: kv[1][0] - (now - kv[1][2]), reverse=True)[: self.limit]
                self.dropped += len(live) - len(keep)
                live = dict(keep)
            self.bans = live

    def flush(self, store: ClusterStore, node: str) -> int:
        done = 0
        for address, (ttl, reason, at) in list(self.bans.items()):
            left = ttl - (time.time() - at)
            if left >= 1:
                store.put_ban(address, left, reason, node)
                done += 1
            del self.bans[address]
        return done
