"""HTTP services → an HAProxy 2.6 configuration (pure: text in, text out; proc.py writes and
checks it with `haproxy -c` before any load).

Per service, one frontend and one backend, with these defences in this order:

    connection   track the source in <svc>_src (sc0): open connections, new connections per
                 10 s, HTTP requests per 10 s, the punishment (gpt 0: until when, unix
                 seconds; gpt 1: which action) and until when its challenge cookie is valid
                 (gpt 2: a verified client, never banned in XDP: l7/bans.py). Over a connection limit → reject; a source
                 punished with `drop` is dropped before its request is read.
    request      unknown Host → 404 · precise rules in order (allow stops every later check,
                 drop is silent, challenge marks the request) · the challenge cookie checked ·
                 a punished source gets its punishment · every source over the level's request
                 ceiling → 429 and punished · the operator's per-prefix limits (longest prefix,
                 its own table <svc>_l<i> on sc1) → their action, punished · the challenge.
    timeouts     `timeout http-request` (headers, and with http-buffer-request the body, must
                 arrive in time: slowloris, slow POST), short keep-alive, bounded tarpit.

The challenge cookie `xgc` is `EXPIRY.KIND.MAC` with MAC = hex(HMAC-SHA256(secret,
"SOURCE|EXPIRY|KIND")), computed and checked by HAProxy itself (the `hmac` converter, compared
with `secure_memcmp`). After a rotation of the secret (l7/secret.py) the previous key checks a
live cookie the current one did not sign (a second HMAC for such a request only). KIND `c` comes from the 302 challenge (any client that keeps cookies),
`j` from the JavaScript page; the level `emergency` accepts only `j`. No state per challenged
client: a flood of unverified requests costs HAProxy one HMAC each and us nothing.

Every stick table is in the `peers` section PEERS, whose only member is the local peer
LOCAL_PEER on a Unix socket in the run directory (0700: no other user can talk to it). That is
what keeps the tables across a reload: the old worker connects to the new one on the local
peer's address and pushes every entry before it exits (proc.py waits until HAProxy 2.6 is able to).
Without it a reload (every automatic level change) emptied them: counters, punishments,
challenge counts and surge state were lost.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..model.geo import GeoSpec
from . import spec
from .spec import HttpService, Rule

COOKIE = "xgc"
ADMIN_SOCKET = "admin.sock"
TABLE_SIZE = "100k"
HARD_STOP_AFTER_S = 30  # an old worker keeps serving its connections this long after a reload
SECRET_BYTES = 32
PUNISH_CODES = {"deny": 1, "drop": 2, "tarpit": 3}
REQUEST_WINDOW_S = 10  # the window of the level's per-source ceilings
SURGE_HOLD_S = 30  # once a domain crosses its ceiling, its unverified are challenged until this long after
PEERS = "xg_peers"  # the peers section every stick table is in (kept across reloads)
LOCAL_PEER = "local"  # this HAProxy's name in it (global `localpeer`)
PEERS_SOCKET = "peers.sock"  # the local peer's address, in the run directory


PEER_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,63}")


@dataclass(frozen=True)
class PeerNode:
    """One node of a cluster as a peer: its name and where its HAProxy listens for peers (the
    node's own cluster/management address, never a protective address)."""

    name: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int = 10470


@dataclass(frozen=True)
class Peering:
    """The stick tables shared by every node of a cluster: `local` is this node's name in
    `nodes`. With `crt` (PEM: certificate + key) and `ca` the peer sessions are TLS, both ways
    verified against `ca` (the cluster's CA); without them plain TCP, which the caller must
    restrict to the member addresses."""

    local: str
    nodes: tuple[PeerNode, ...]
    crt: str | None = None
    ca: str | None = None

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        for n in self.nodes:
            if not PEER_NAME_RE.fullmatch(n.name):  # the cluster's node names ([cluster] node)
                raise ValueError(f"invalid peer name {n.name!r}: 1-63 letters, digits, '_', '.' or '-'")
            if not 1 <= n.port <= 65535:
                raise ValueError(f"peer {n.name}: port {n.port} out of range")
        if len(set(names)) != len(names):
            raise ValueError(f"peer names repeat: {names}")
        if self.local not in names:
            raise ValueError(f"the local peer {self.local!r} is not one of the nodes {names}")
        if (self.crt is None) != (self.ca is None):
            raise ValueError("peers over TLS need both crt and ca")
        for f in (self.crt, self.ca):  # relative: to the configuration's directory (default-path config)
            if f is not None and (not f or ".." in f.split("/") or any(c.isspace() or c in "'\"#\\" for c in f)):
                raise ValueError(f"peers TLS file must be a path without '..', spaces or quotes: {f!r}")

    def me(self) -> PeerNode:
        return next(n for n in self.nodes if n.name == self.local)


@dataclass(frozen=True)
class Rendered:
    """The configuration and the files it reads (name relative to its directory → content)."""

    text: str
    files: dict[str, str]


def src_table(svc: HttpService) -> str:
    return f"{svc.name}_src"


def limit_table(svc: HttpService, i: int) -> str:
    return f"{svc.name}_l{i}"


def service_table(svc: HttpService) -> str:
    return f"{svc.name}_svc"


def frontend_name(svc: HttpService) -> str:
    return f"{svc.name}_fe"


def backend_name(svc: HttpService) -> str:
    return f"{svc.name}_be"


def challenge_page(svc: HttpService) -> str:
    """The JavaScript challenge page, next to the configuration (global `default-path config`)."""
    return f"{svc.name}-challenge.html"


def tls_bundle(svc: HttpService) -> str:
    """Where the frontend reads its certificate + key, relative to the configuration."""
    return f"tls/{svc.name}.pem"


def _q(text: str) -> str:
    """Single-quoted: HAProxy reads it verbatim (spec.py refuses a quote or a control character)."""
    return f"'{text}'"


def _bind_addr(addr) -> str:
    return f"ipv6@{addr}" if addr.version == 6 else f"ipv4@{addr}"


def _host_acl(domains: Sequence[str]) -> list[str]:
    """ACL lines: `xg_host` is true for a Host header (port stripped, lower case) in `domains`."""
    exact = [d for d in domains if not d.startswith("*.")]
    wild = [d[1:] for d in domains if d.startswith("*.")]  # '.example.com'
    lines = []
    if exact:
        lines.append("    acl xg_host req.hdr(host),field(1,:),lower -m str " + " ".join(exact))
    if wild:
        lines.append("    acl xg_host req.hdr(host),field(1,:),lower -m end " + " ".join(wild))
    return lines


def _rule_cond(rule: Rule) -> str:
    conds = []
    if rule.methods:
        conds.append("{ method " + " ".join(rule.methods) + " }")
    if rule.path_prefix:
        conds.append("{ path_beg " + _q(rule.path_prefix) + " }")
    if rule.uri_regex:
        conds.append("{ path -m reg " + _q(rule.uri_regex) + " }")
    if rule.host:
        if rule.host.startswith("*."):
            conds.append("{ req.hdr(host),field(1,:),lower -m end " + rule.host[1:] + " }")
        else:
            conds.append("{ req.hdr(host),field(1,:),lower -m str " + rule.host + " }")
    if rule.user_agent_regex:
        conds.append("{ req.hdr(user-agent) -m reg " + _q(rule.user_agent_regex) + " }")
    if rule.referer_regex:
        conds.append("{ req.hdr(referer) -m reg " + _q(rule.referer_regex) + " }")
    conds += ["{ req.cook(" + c + ") -m found }" for c in rule.cookies]
    conds += ["{ req.hdr(" + h + ") -m found }" for h in rule.headers]
    conds += ["!{ req.hdr(" + h + ") -m found }" for h in rule.absent_headers]
    return " ".join(conds)


def _punish(sc_until: str, code: int, cond: str) -> list[str]:
    return [
        f"    http-request sc-set-gpt(0,0) var(txn.xg_now),add({sc_until}) if {cond}",
        f"    http-request sc-set-gpt(1,0) int({code}) if {cond}",
    ]


def _act(action: str, cond: str) -> str:
    if action == "deny":
        return f"    http-request deny deny_status 429 if {cond}"
    if action == "tarpit":
        return f"    http-request tarpit deny_status 429 if {cond}"
    if action == "drop":
        return f"    http-request silent-drop if {cond}"
    raise ValueError(action)


def _global(run_dir: str, secret: bytes, local_peer: str, old_secret: bytes | None = None) -> list[str]:
    key = base64.b64encode(secret).decode("ascii")
    old = (
        [] if old_secret is None else [f"    set-var proc.xg_key0 str({base64.b64encode(old_secret).decode('ascii')})"]
    )
    return [
        "global",
        "    master-worker",
        f"    localpeer {local_peer}",
        "    default-path config",
        f"    stats socket {run_dir}/{ADMIN_SOCKET} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        f"    hard-stop-after {HARD_STOP_AFTER_S}s",
        "    maxconn 4096",  # 2 fds each: fits a hard RLIMIT_NOFILE of 20000 (this machine's)
        "    tune.ssl.default-dh-param 2048",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2",
        f"    set-var proc.xg_key str({key})",
        *old,
        "",
        "defaults",
        "    mode http",
        "    option dontlognull",
        "    option http-buffer-request",
        "    timeout connect 5s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout queue 10s",
        "    timeout tarpit 10s",
        "    timeout client-fin 5s",
        "    timeout http-request 5s",
        "    timeout http-keep-alive 5s",
        "",
    ]


def _peers(run_dir: str, peering: Peering | None) -> list[str]:
    """The peers section: without `peering` the local peer only, on a Unix socket only root
    reaches; with it every node of the cluster, this one listening on its own address."""
    if peering is None:
        return [f"peers {PEERS}", f"    peer {LOCAL_PEER} unix@{run_dir}/{PEERS_SOCKET}", ""]
    me = peering.me()
    tls = f" ssl crt {peering.crt} ca-file {peering.ca} verify required" if peering.crt else ""
    lines = [f"peers {PEERS}", f"    bind {_bind_addr(me.address)}:{me.port}{tls}"]
    if tls:
        lines.append(f"    default-server{tls}")
    for n in peering.nodes:
        lines.append(f"    server {n.name}" + ("" if n is me else f" {_bind_addr(n.address)}:{n.port}"))
    return lines + [""]


def _tables(svc: HttpService) -> list[str]:
    punish = max([svc.preset.punish_s] + [x.punish_s for x in svc.limits])
    lines = [
        f"backend {src_table(svc)}",
        f"    stick-table type ipv6 size {TABLE_SIZE} expire {max(60, punish)}s "
        f"store gpt(4),gpc(3),gpc_rate(2,{REQUEST_WINDOW_S}s),conn_cur,conn_rate({REQUEST_WINDOW_S}s),"
        f"http_req_rate({REQUEST_WINDOW_S}s) peers {PEERS}",
        "",
        f"backend {service_table(svc)}",
        f"    stick-table type string len 64 size 1k expire {max(60, 2 * SURGE_HOLD_S)}s "
        f"store gpt(2),http_req_rate(1s) peers {PEERS}",
        "",
    ]
    for i, lim in enumerate(svc.effective_limits()):
        lines += [
            f"backend {limit_table(svc, i)}",
            f"    stick-table type ipv6 size {TABLE_SIZE} expire {max(60, 2 * lim.window_s)}s "
            f"store http_req_rate({lim.window_s}s) peers {PEERS}",
            "",
        ]
    return lines


def _frontend(svc: HttpService, geo_rules: Mapping[str, GeoSpec], old_key: bool = False) -> list[str]:
    p = svc.preset
    conns = svc.effective_conns()
    ttl = svc.challenge_ttl_s
    ssl = f" ssl crt {tls_bundle(svc)} alpn h2,http/1.1" if svc.tls else ""
    lines = [f"frontend {frontend_name(svc)}"]
    for a in svc.listen:
        lines.append(f"    bind {_bind_addr(a)}:{svc.port}{' v6only' if a.version == 6 else ''}{ssl}")
    lines += [
        f"    timeout http-request {p.http_request_timeout_s}s",
        f"    timeout http-keep-alive {p.keep_alive_timeout_s}s",
        "    # per source: connections, requests, punishment",
        f"    tcp-request connection track-sc0 src table {src_table(svc)}",
        f"    tcp-request connection reject if {{ sc0_conn_cur gt {conns.concurrent} }}",
        f"    tcp-request connection reject if {{ sc0_conn_rate gt {conns.new_per_10s} }}",
        "    tcp-request connection set-var(sess.xg_now) date",
        "    tcp-request connection set-var(sess.xg_left) sc_get_gpt(0,0),sub(sess.xg_now)",
        f"    tcp-request connection silent-drop if {{ var(sess.xg_left) -m int gt 0 }} "
        f"{{ sc_get_gpt(1,0) eq {PUNISH_CODES['drop']} }}",
        "    http-request set-var(txn.xg_now) date",
        "    http-request sc-set-gpt(3,0) var(txn.xg_now) if { sc_get_gpt(3,0) -m int 0 }",  # first seen
        "    http-request set-var(txn.xg_sage) sc_get_gpt(3,0),neg,add(txn.xg_now)",  # seconds since
        f"    acl xg_new var(txn.xg_sage) -m int lt {spec.KNOWN_BEFORE_S}",
        "    http-request del-header x-forwarded-for",
    ]
    if svc.domains:
        lines += _host_acl(svc.domains)
        lines.append("    http-request deny deny_status 404 unless xg_host")
    if svc.rules:
        lines.append("    # precise rules, in order")
    for rule in svc.rules:
        cond = _rule_cond(rule)
        if rule.action == "allow":
            lines.append(f"    http-request allow if {cond}")
        elif rule.action == "drop":
            lines.append(f"    http-request silent-drop if {cond}")
        else:
            lines.append(f"    http-request set-var(txn.xg_chal) int(1) if {cond}")
    kinds = "j" if p.challenge == "js" else "c j"
    lines += [
        "    # the challenge cookie: EXPIRY.KIND.MAC",
        f"    http-request set-var(txn.xg_ck) req.cook({COOKIE})",
        "    http-request set-var(txn.xg_cexp) var(txn.xg_ck),field(1,.)",
        "    http-request set-var(txn.xg_ckind) var(txn.xg_ck),field(2,.)",
        "    http-request set-var(txn.xg_cmac) var(txn.xg_ck),field(3,.)",
        "    http-request set-var(txn.xg_cleft) var(txn.xg_cexp),sub(txn.xg_now)",
        "    http-request set-var(txn.xg_cwant) src,concat(|,txn.xg_cexp,),concat(|,txn.xg_ckind,),"
        "hmac(sha256,proc.xg_key),hex,lower",
        "    acl xg_ok var(txn.xg_cleft) -m int gt 0",
        "    acl xg_mac var(txn.xg_cmac),secure_memcmp(txn.xg_cwant)",
        f"    acl xg_kind var(txn.xg_ckind) -m str {kinds}",
    ]
    if old_key:  # after a rotation: a live cookie the current key did not sign, under the previous key
        lines.append(
            "    http-request set-var(txn.xg_cwant) src,concat(|,txn.xg_cexp,),concat(|,txn.xg_ckind,),"
            "hmac(sha256,proc.xg_key0),hex,lower if xg_ok !xg_mac"
        )
    lines += [
        "    http-request set-var(txn.xg_ok) int(1) if xg_ok xg_mac xg_kind",
        "    acl xg_verified var(txn.xg_ok) -m int 1",
        "    http-request sc-set-gpt(2,0) var(txn.xg_now),add(txn.xg_cleft) if xg_verified",
    ]
    if svc.exempt:
        lines.append("    acl xg_exempt path_beg " + " ".join(_q(x) for x in svc.exempt))
    else:
        lines.append("    acl xg_exempt always_false")
    lines += [
        "    # a punished source gets its punishment again",
        "    http-request set-var(txn.xg_left) sc_get_gpt(0,0),sub(txn.xg_now)",
        "    acl xg_punished var(txn.xg_left) -m int gt 0",
    ]
    for action, code in PUNISH_CODES.items():
        lines.append(_act(action, f"xg_punished {{ sc_get_gpt(1,0) eq {code} }}"))
    over = f"{{ sc0_http_req_rate gt {p.requests_per_10s} }}"
    lines += [f"    # the level's ceiling: {p.requests_per_10s} requests per {REQUEST_WINDOW_S} s per source"]
    lines += _punish(str(p.punish_s), PUNISH_CODES["deny"], over)
    lines.append(_act("deny", over))
    limits = svc.effective_limits()
    if limits:
        lines.append("    # per-prefix limits: the longest prefix applies")
    for i, lim in enumerate(limits):
        lines.append(
            f"    http-request set-var(txn.xg_lim) int({i}) if !{{ var(txn.xg_lim) -m found }} "
            f"{{ path_beg {_q(lim.prefix)} }}"
        )
    for i, lim in enumerate(limits):
        is_i = f"{{ var(txn.xg_lim) -m int {i} }}"
        lines.append(f"    http-request track-sc1 src table {limit_table(svc, i)} if {is_i}")
        over_i = f"{is_i} {{ sc1_http_req_rate gt {lim.requests} }}"
        if lim.action == "challenge":
            lines.append(f"    http-request deny deny_status 429 if {over_i} xg_exempt")
            lines.append(f"    http-request set-var(txn.xg_chal) int(1) if {over_i}")
            continue
        if lim.punish_s:
            lines += _punish(str(lim.punish_s), PUNISH_CODES[lim.action], over_i)
        lines.append(_act(lim.action, over_i))
    lines += _unverified_budget(svc)
    lines += _service_ceiling(svc)
    lines += _exempt_ceiling(svc)
    lines += _geo(svc, geo_rules)
    if p.challenge != "none":
        lines.append("    http-request set-var(txn.xg_chal) int(1) unless xg_exempt")
    kind = "j" if p.challenge == "js" else "c"
    secure = "; Secure" if svc.tls else ""
    need = "{ var(txn.xg_chal) -m int 1 } !xg_verified"
    lines += [
        "    # the challenge: a new cookie for this source, by 302 or by a JavaScript page",
        f"    http-request set-var(txn.xg_nexp) var(txn.xg_now),add({ttl}) if {need}",
        f"    http-request set-var(txn.xg_nkind) str({kind}) if {need}",
        "    http-request set-var(txn.xg_nmac) src,concat(|,txn.xg_nexp,),concat(|,txn.xg_nkind,),"
        f"hmac(sha256,proc.xg_key),hex,lower if {need}",
        f"    http-request sc-inc-gpc(0,0) if {need}",  # challenged again and again: a bot (l7/bans.py)
    ]
    lines += _same_connection(need)
    if kind == "c":
        lines.append(
            f'    http-request return status 302 hdr Location "%[url]" hdr Cache-Control no-store '
            f'hdr Set-Cookie "{COOKIE}=%[var(txn.xg_nexp)].c.%[var(txn.xg_nmac)]; Path=/; Max-Age={ttl}; '
            f'HttpOnly; SameSite=Lax{secure}" if {need}'
        )
    else:
        lines.append(
            f'    http-request return status 200 content-type "text/html; charset=utf-8" '
            f"hdr Cache-Control no-store lf-file {challenge_page(svc)} if {need}"
        )
    lines += [f"    default_backend {backend_name(svc)}", ""]
    return lines


GEO_MAP = "geo.map"  # `PREFIX CC` lines (geo.l7_map), next to the configuration
CEILING_MAP = "ceiling.map"  # `<service>|<domain key> N`: learned service ceilings (l7/ceiling.py)


def ceiling_key(svc: HttpService, domain_key: str) -> str:
    """The service ceiling map's key of one of `svc`'s domains (its `txn.xg_dom`)."""
    return f"{svc.name}|{domain_key}"


def _geo(svc: HttpService, rules: Mapping[str, GeoSpec]) -> list[str]:
    """A geo rule in mode cc on a listen address: its countries' sources (with `only`: every
    other source, unknown ones too) are challenged, exempt paths excepted. The country is the
    longest match in GEO_MAP, as in XDP's tries (steps/geo.h lets these sources through to here)."""
    mine = [
        (i, a, rules[str(a)])
        for i, a in enumerate(svc.listen)
        if str(a) in rules and rules[str(a)].mode == "cc" and rules[str(a)].active()
    ]
    if not mine:
        return []
    lines = [
        "    # geo rule in mode cc: the country of the source (longest match), then the challenge",
        f"    http-request set-var(txn.xg_geo) src,map_ip({GEO_MAP},00)",
    ]
    for i, a, g in mine:
        named = f"xg_geo{i}"
        lines.append(f"    acl {named} var(txn.xg_geo) -m str " + (" ".join(sorted(g.countries)) or "00"))
        at = f" {{ dst {a} }}" if len(svc.listen) > 1 else ""
        lines.append(f"    http-request set-var(txn.xg_chal) int(1) if{at} {'!' if g.only else ''}{named} !xg_exempt")
    return lines


def _unverified_budget(svc: HttpService) -> list[str]:
    """Per source: its unverified, not exempt requests are counted (gpc 1 of <svc>_src); beyond
    the level's budget per 10 s the source is challenged. A browser passes once and is not
    counted again; one address flooding without a cookie gets this many through, not the
    per-source ceiling (which also binds verified sources). A source with more connections open
    at once than a browser opens (spec.BROWSER_CONNS) gets no budget: challenged at once."""
    n = svc.preset.unverified_per_10s
    unv = "!xg_verified !xg_exempt"
    return [
        f"    # per source: {n} unverified requests per {REQUEST_WINDOW_S} s, then the challenge",
        f"    http-request sc-inc-gpc(1,0) if {unv}",
        f"    http-request set-var(txn.xg_chal) int(1) if {{ sc_gpc_rate(1,0) gt {n} }} {unv}",
        f"    # … none with more than {spec.BROWSER_CONNS} connections open at once (more than a browser opens)",
        f"    http-request set-var(txn.xg_chal) int(1) if {{ sc0_conn_cur gt {spec.BROWSER_CONNS} }} {unv}",
    ]


def _service_ceiling(svc: HttpService) -> list[str]:
    """Track the unverified, not exempt requests of each domain (a declared wildcard counts as
    one domain; a service without domains is one) on sc2; beyond the ceiling, or with more than
    the level's requests at the backend at once, the domain is *in surge*: every unverified
    source is challenged until SURGE_HOLD_S after the last second over it (gpt 0 of the domain's
    entry: until when). Challenged requests still count, so the surge holds while the flood
    lasts even when the flood's own pace falls under the ceiling: what passes is the first
    second of a flood, not every second the flood dips."""
    n = svc.effective_service_rate()
    lines = [
        f"    # the service ceiling: {n} unverified requests per second per domain, "
        "then everyone unverified is challenged",
        f"    http-request set-var(txn.xg_dom) str({svc.name})",
    ]
    host = "req.hdr(host),field(1,:),lower"
    for d in svc.domains:
        if d.startswith("*."):
            lines.append(f"    http-request set-var(txn.xg_dom) str({d}) if {{ {host} -m end {d[1:]} }}")
    exact = [d for d in svc.domains if not d.startswith("*.")]
    if exact:
        lines.append(f"    http-request set-var(txn.xg_dom) {host} if {{ {host} -m str {' '.join(exact)} }}")
    busy = svc.effective_backend_conns()
    unv = "!xg_verified !xg_exempt"
    lines += [
        f"    http-request track-sc2 var(txn.xg_dom) table {service_table(svc)} if {unv}",
    ]
    q = spec.UNREST_OF_CEILING
    if svc.service_rate is None:  # the level's number until the daemon has learned the domain's peacetime
        lines += [
            f"    http-request set-var(txn.xg_ceil) str({ceiling_key(svc, '')}),concat(,txn.xg_dom,),"
            f"map_str_int({CEILING_MAP},{n}) if {unv}",
            "    acl xg_over sc2_http_req_rate,sub(txn.xg_ceil) gt 0",
            f"    acl xg_unrest sc2_http_req_rate,mul({q}),sub(txn.xg_ceil) gt 0",
        ]
    else:
        lines.append(f"    acl xg_over sc2_http_req_rate gt {n}")
        lines.append(f"    acl xg_unrest sc2_http_req_rate,mul({q}) gt {n}")
    lines += [
        f"    acl xg_over be_conn({backend_name(svc)}) gt {busy}",
        f"    http-request sc-set-gpt(0,2) var(txn.xg_now),add({SURGE_HOLD_S}) if xg_over {unv}",
        f"    http-request set-var(txn.xg_hold) sc_get_gpt(0,2),sub(txn.xg_now) if {unv}",
        "    acl xg_surge var(txn.xg_hold) -m int gt 0",
        f"    http-request set-var(txn.xg_chal) int(1) if xg_surge {unv}",
        f"    # in unrest (over 1/{q} of the ceiling: above peacetime), a source first seen under "
        f"{spec.KNOWN_BEFORE_S} s ago has no budget",
        f"    http-request set-var(txn.xg_chal) int(1) if xg_unrest xg_new {unv}",
    ]
    return lines


def _exempt_ceiling(svc: HttpService) -> list[str]:
    """The exempt (API) paths of each domain, unverified requests only, tracked on sc2 under the
    key `<domain>|x` (the challenge's ceiling counts the other paths): beyond the level's exempt
    ceiling per second, or with more than the level's requests at the backend at once, the
    exempt paths are *in surge* for SURGE_HOLD_S after the last second over it (gpt 0 of that
    entry: until when; gpt 1: since when, set as a surge begins). An exempt path cannot
    challenge, so in a surge a source is judged by its age: one first seen (gpt 3 of its entry)
    at least KNOWN_BEFORE_S before the surge began keeps its service; any other gets 429, each
    refusal counted (gpc 2): refused CHALLENGES_UNPASSED times, it is banned in XDP
    (l7/bans.py, `refused`). A verified browser (valid cookie) is neither counted nor refused."""
    if not svc.exempt:
        return []
    n = svc.effective_exempt_rate()
    busy = svc.effective_backend_conns()
    unv = "xg_exempt !xg_verified"
    return [
        f"    # the exempt paths' ceiling: {n} unverified requests per second per domain, then only the "
        f"sources seen {spec.KNOWN_BEFORE_S} s before it get through (429 for the others)",
        f"    http-request track-sc2 var(txn.xg_dom),concat(|x,,) table {service_table(svc)} if {unv}",
        f"    acl xg_xover sc2_http_req_rate gt {n}",
        f"    acl xg_xover be_conn({backend_name(svc)}) gt {busy}",
        f"    http-request set-var(txn.xg_xhold) sc_get_gpt(0,2),sub(txn.xg_now) if {unv}",
        "    acl xg_xsurge var(txn.xg_xhold) -m int gt 0",
        f"    http-request sc-set-gpt(1,2) var(txn.xg_now) if xg_xover !xg_xsurge {unv}",
        f"    http-request sc-set-gpt(0,2) var(txn.xg_now),add({SURGE_HOLD_S}) if xg_xover {unv}",
        f"    http-request set-var(txn.xg_xhold) sc_get_gpt(0,2),sub(txn.xg_now) if {unv}",
        f"    http-request set-var(txn.xg_xsince) sc_get_gpt(1,2) if {unv}",
        f"    http-request set-var(txn.xg_age) sc_get_gpt(3,0),add({spec.KNOWN_BEFORE_S}),sub(txn.xg_xsince) if {unv}",
        "    acl xg_known var(txn.xg_age) -m int le 0",
        f"    http-request sc-inc-gpc(2,0) if xg_xsurge !xg_known {unv}",
        f"    http-request deny deny_status 429 if xg_xsurge !xg_known {unv}",
        f"    # in unrest (over 1/{spec.UNREST_OF_CEILING} of it), a source first seen under {spec.KNOWN_BEFORE_S} s "
        "ago gets 429 (not a refusal that counts)",
        f"    http-request deny deny_status 429 if {{ sc2_http_req_rate,mul({spec.UNREST_OF_CEILING}) gt {n} }} "
        f"xg_new {unv}",
    ]


def _same_connection(need: str) -> list[str]:
    """A second challenge on one HTTP/1.1 connection counts twice on the source (gpc 0): a
    browser never sends its next request on a connection before it has read the answer to the
    last one (no pipelining), so after a 302 or the JavaScript page its next request there
    carries the cookie. One that does not, ignored the challenge it was just given: with the
    extra count the source reaches CHALLENGES_UNPASSED (3) at its 2nd request, not its 3rd,
    and is banned in XDP a request sooner (a keep-alive bot of a 1,000-address flood sends one
    every 1-3 s). HTTP/2 multiplexes a browser's requests in flight on one connection: not
    counted there. The count is per connection (a session variable)."""
    h1 = "{ req.ver 1.1 }"
    return [
        "    # a second challenge on one HTTP/1.1 connection: the first was ignored (counted twice)",
        f"    http-request sc-inc-gpc(0,0) if {need} {h1} {{ var(sess.xg_nch) -m int ge 1 }}",
        f"    http-request set-var(sess.xg_nch) var(sess.xg_nch),add(1) if {need} {{ var(sess.xg_nch) -m found }}",
        f"    http-request set-var(sess.xg_nch) int(1) if {need} !{{ var(sess.xg_nch) -m found }}",
    ]


def _backend(svc: HttpService) -> list[str]:
    lines = [
        f"backend {backend_name(svc)}",
        "    balance roundrobin",
        "    option abortonclose",  # a request whose client left (a bot's timeout) is not sent on
        "    option forwardfor",
        f"    option httpchk GET {svc.health_path}",
        "    http-check expect status 200-399",
        "    http-response del-header x-powered-by",
        "    http-response del-header via",
    ]
    for i, (addr, port) in enumerate(svc.backends):
        lines.append(f"    server s{i} {spec.format_backend(addr, port)} check inter 2s fall 3 rise 2")
    return lines + [""]


def js_page(max_age_s: int) -> str:
    """The JavaScript challenge (HAProxy log-format: %[...] are its expressions). The MAC is
    split so that the cookie exists only after the script ran."""
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Checking your browser</title>'
        '<meta name="robots" content="noindex"></head><body><p>Checking your browser…</p>'
        "<noscript>This site needs JavaScript enabled.</noscript><script>"
        '(function(){var b="%[var(txn.xg_nmac),bytes(32)]",a="%[var(txn.xg_nmac),bytes(0,32)]";'
        f'document.cookie="{COOKIE}=%[var(txn.xg_nexp)].j."+a+b+"; path=/; max-age={max_age_s}; SameSite=Lax";'
        "location.reload();})();</script></body></html>\n"
    )


def render(
    services: Sequence[HttpService],
    *,
    run_dir: str,
    secret: bytes,
    old_secret: bytes | None = None,
    geo_rules: Mapping[str, GeoSpec] | None = None,
    geo_map: str = "",
    peering: Peering | None = None,
) -> Rendered:
    """The whole configuration for `services` (checked together: unique names and sockets).
    `secret` signs and checks the challenge cookies; `old_secret` (the key before a rotation,
    secret.Secrets.checking) still checks them, never signs.
    `geo_rules`: listen address → its geo rule (those in mode cc challenge, _geo), with
    `geo_map` the country map they read (geo.l7_challenges gives both). `peering`: the
    cluster's nodes, every stick table shared with them (else kept on this node, across reloads)."""
    geo_rules = geo_rules or {}
    items = spec.check_services(services)
    if len(secret) < 16 or (old_secret is not None and len(old_secret) < 16):
        raise ValueError("the challenge secret must be at least 16 bytes")
    if not run_dir.startswith("/") or any(c.isspace() or c in "'\"#\\" for c in run_dir):
        raise ValueError(f"run_dir must be an absolute path without spaces or quotes: {run_dir!r}")
    if peering is not None:
        listen = {a for svc in items for a in svc.listen}
        if peering.me().address in listen:
            raise ValueError(f"peers must not listen on a protective address: {peering.me().address}")
    local = LOCAL_PEER if peering is None else peering.local
    lines = _global(run_dir.rstrip("/"), secret, local, old_secret) + _peers(run_dir.rstrip("/"), peering)
    files: dict[str, str] = {}
    for svc in items:
        lines += _tables(svc) + _frontend(svc, geo_rules, old_secret is not None) + _backend(svc)
        if svc.preset.challenge == "js":
            files[challenge_page(svc)] = js_page(svc.challenge_ttl_s)
    if any(f"map_ip({GEO_MAP}," in line for line in lines):
        files[GEO_MAP] = geo_map
    if any(f"map_str_int({CEILING_MAP}," in line for line in lines):
        files[CEILING_MAP] = ""  # empty: every domain at its level's ceiling until the daemon learns it
    return Rendered("\n".join(lines).rstrip("\n") + "\n", files)
