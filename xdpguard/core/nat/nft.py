"""NAT with nftables: pure builders of libnftables JSON, and a thin applier.

Everything xdpguard does in nftables lives in ONE table it owns (family ``inet``, name
``xdpguard`` unless told otherwise). Builders return plain JSON-able dicts
(``{"nftables": [{"add": {...}}, ...]}``, the firewalld style); :class:`NftApplier` hands one such
dict to ``Nftables().json_cmd`` as one atomic transaction. Tables xdpguard does not own are never
named in a batch, so they are never touched.

Ruleset shape (see :func:`build_ruleset`)::

    table inet xdpguard
      counter traffic_<id>   packets/bytes of forwarded flows of one rule, both directions
      counter new_<id>       new connections that hit the rule (DNATed or dropped)
      set persist_<id>_<n>   clients pinned to healthy backend n (persistent rules only)
      map traffic_marks      ct mark (our bits) → traffic_<id>: the counter a forwarded flow feeds
      chain prerouting   nat hook prerouting priority dstnat (-100): DNAT PROTECTED:PORT →
                         backend, and the flow's ct mark set to the rule's id
      chain postrouting  nat hook postrouting priority srcnat (100): masquerade our DNATed flows
      chain forward      filter hook forward priority filter (0): ONE rule, ``counter name ct mark
                         & 0xffff0000 map @traffic_marks`` (only while there are rules)

Forward counting costs one rule per forwarded packet, whatever the number of forwarding rules:
the DNAT rule (which sees only a flow's first packet) stamps the rule's id into the upper 16 bits
of the conntrack mark (``ct mark set ct mark & 0xffff | ID << 16``, so the lower bits of anyone
else's mark survive), and the forward chain's single rule looks the id up in a counter map. A
flow whose mark carries no id of ours misses the map and is not counted. The id is derived from
the rule key (:func:`traffic_marks`), so flows keep feeding the same counter across re-applies.
(The forward chain used to hold one four-match counter rule per forwarding rule, walked by every
forwarded packet.)

What each rule shape becomes, verified against nftables 1.0.6 on kernel 6.18:

- one backend: ``dnat ip to 198.18.1.10:8080`` (no port when the backend has none: the
  destination port is kept);
- a port range, backend without port or with the range's own first port: ``dnat ip to ADDR``
  (the port is kept). A range shifted elsewhere (``8000-8010 → :9000``) uses a port map
  ``dnat ip to ADDR : tcp dport map { 8000 : 9000, … }``, because the kernel does NOT keep the
  offset inside a NAT port range: ``dnat to ADDR:9000-9010`` sends 8005 to 9000 (tested).
- several backends: ``dnat ip to numgen random mod TOTAL map { 0-2 : ADDR1, 3 : ADDR2 }`` with
  cumulative weight intervals (data ``ADDR . PORT`` when the backends' ports differ);
- persistence (``persist_s`` > 0, several backends): per healthy backend a dynamic set of client
  addresses with ``timeout persist_s``; a known client is sent to its backend and its entry is
  refreshed (``ip saddr @persist_X_n update @persist_X_n { ip saddr } dnat …``); a new client
  takes backend n with probability w_n / (sum of the weights of backends n..last)
  (``numgen random mod R_n < w_n``), which is the weighted choice overall, and is added to that
  backend's set; if a set is full (size :data:`PERSIST_SET_SIZE`) the last rule falls back to a
  stateless but stable ``jhash ip saddr`` choice with a fixed seed.
- routed mode (``preserve_client_ip``): no masquerade; every other rule gets
  ``ct status dnat ct original ip daddr P meta l4proto tcp ct original proto-dst PORTS
  masquerade``, which SNATs exactly the flows this rule DNATed, to the outgoing interface address;
- backup backends are used only when no primary is healthy;
- no healthy backend at all: ``… counter name new_<id> drop``: new connections are dropped in
  the nat chain (nat chains only see a flow's first packet; established flows to a backend that
  died keep their conntrack entry and time out). Dropping rather than passing matters: without
  it the connection would reach the protector's own stack on the protective IP.

XXX: nftables 1.0.6 cannot express persistence with ONE dynamic map (client → backend), which
would have been the simplest: the text form
``update @persist { ip saddr : numgen random mod 4 map { … } }`` is a syntax error (map data must
not be a map lookup), and the JSON parser knows no map statement at all ("Unknown statement object
'map'"; listing a text-made ``update @m { ip saddr : ip daddr . tcp dport }`` prints "stmt ops map
have no json callback"). Dynamic *sets* (``update @set { ip saddr }``) work in JSON, hence one set
per backend as above.

XXX: every apply replaces the whole table, so it also empties the persistence sets (clients may
move to another backend after any change; established connections keep their conntrack entry)
and resets the new-connection counters. Traffic counters survive: pass the values read by
:func:`parse_counters` back as ``build_ruleset(..., counters=...)``.

XXX: only traffic arriving from outside is forwarded (prerouting); connections the protector opens
itself to a protective IP are not DNATed (that would need a nat output chain).
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from xdpguard.core.model.connlimit import ConnLimits
from xdpguard.core.model.forwarding import Backend, ForwardRule, make_rule, rule_key

DEFAULT_TABLE = "xdpguard"
PROBE_TABLE = "xdpguard_probe"
FAMILY = "inet"
TABLE_COMMENT = "managed by xdpguard; changes here are overwritten"

PREROUTING_CHAIN = "prerouting"
POSTROUTING_CHAIN = "postrouting"
FORWARD_CHAIN = "forward"
DSTNAT_PRIORITY = -100
SRCNAT_PRIORITY = 100
FILTER_PRIORITY = 0

TRAFFIC_COUNTER_PREFIX = "traffic_"
NEW_COUNTER_PREFIX = "new_"
PERSIST_SET_PREFIX = "persist_"
TRAFFIC_MAP = "traffic_marks"
MARK_SHIFT = 16
MARK_MASK = 0xFFFF << MARK_SHIFT  # the bits of the conntrack mark that carry our rule id
MARK_IDS = 0xFFFF  # ids 1..65535 (0 = no rule of ours)
PERSIST_SET_SIZE = 65535  # clients remembered per backend; beyond that, jhash fallback
JHASH_SEED = 0x78647067  # fixed ("xdpg"), so jhash picks the same backend after every re-apply

Json = dict[str, Any]
Counters = Mapping[str, tuple[int, int]]

SETUP_FIX = "install python3-nftables (run scripts/setup.sh)"


# --- identifiers --------------------------------------------------------------------------


def rule_ident(rule: ForwardRule) -> str:
    """A name-safe, unique identifier for nft object names: ``tcp_c6120001_80_80``.

    The address is spelled as packed hex: IPv6 text (``::``) would make names ambiguous.
    """
    return f"{rule.proto}_{rule.protected.packed.hex()}_{rule.port_lo}_{rule.port_hi}"


def traffic_counter_name(rule: ForwardRule) -> str:
    return TRAFFIC_COUNTER_PREFIX + rule_ident(rule)


def new_counter_name(rule: ForwardRule) -> str:
    return NEW_COUNTER_PREFIX + rule_ident(rule)


def persist_set_name(rule: ForwardRule, index: int) -> str:
    return f"{PERSIST_SET_PREFIX}{rule_ident(rule)}_{index}"


def traffic_marks(keys: Iterable[str]) -> dict[str, int]:
    """Rule key → its conntrack mark (id << 16). The id is crc32(key) mod 65535 + 1, so it is the
    same in every apply; on a collision the later key (in the given order) takes the next free
    id."""
    taken: set[int] = set()
    out: dict[str, int] = {}
    for key in keys:
        ident = zlib.crc32(key.encode()) % MARK_IDS
        for _ in range(MARK_IDS):
            if ident + 1 not in taken:
                break
            ident = (ident + 1) % MARK_IDS
        else:
            raise ValueError("more forwarding rules than conntrack mark ids")
        taken.add(ident + 1)
        out[key] = (ident + 1) << MARK_SHIFT
    return out


def _set_mark(mark: int) -> Json:
    """``ct mark set ct mark & 0xffff | MARK``: stamp our id, keep the lower 16 bits."""
    keep = {"&": [{"ct": {"key": "mark"}}, 0xFFFFFFFF & ~MARK_MASK]}
    return {"mangle": {"key": {"ct": {"key": "mark"}}, "value": {"|": [keep, mark]}}}


# --- backend selection --------------------------------------------------------------------


def active_backends(rule: ForwardRule, healthy: Iterable[Backend] | None = None) -> tuple[Backend, ...]:
    """The backends that receive new connections: the healthy primaries, or when none is
    healthy the healthy backups, or nothing. ``healthy=None`` means every backend is healthy.
    Backends are matched by address and port (weight and backup flag do not matter)."""
    if healthy is None:
        return rule.primaries
    up = {(b.host, b.port) for b in healthy}
    primaries = tuple(b for b in rule.primaries if (b.host, b.port) in up)
    if primaries:
        return primaries
    return tuple(b for b in rule.backups if (b.host, b.port) in up)


# --- small JSON pieces --------------------------------------------------------------------


def _table_ref(table: str) -> Json:
    return {"family": FAMILY, "name": table}


def _ip_proto(rule: ForwardRule) -> str:
    return "ip" if rule.family == 4 else "ip6"


def _payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _value(lo: int, hi: int) -> Any:
    return lo if lo == hi else {"range": [lo, hi]}


def _rule(table: str, chain: str, rule: ForwardRule, expr: list[Json]) -> Json:
    return {
        "add": {
            "rule": {
                "family": FAMILY,
                "table": table,
                "chain": chain,
                "comment": rule_key(rule),
                "expr": expr,
            }
        }
    }


def _chain(table: str, name: str, kind: str, hook: str, prio: int) -> Json:
    return {
        "add": {
            "chain": {
                "family": FAMILY,
                "table": table,
                "name": name,
                "type": kind,
                "hook": hook,
                "prio": prio,
                "policy": "accept",
            }
        }
    }


def _counter(table: str, name: str, rule: ForwardRule, seed: tuple[int, int] | None) -> Json:
    counter: Json = {"family": FAMILY, "table": table, "name": name, "comment": rule_key(rule)}
    if seed is not None:
        counter["packets"], counter["bytes"] = int(seed[0]), int(seed[1])
    return {"add": {"counter": counter}}


def _service_match(rule: ForwardRule) -> list[Json]:
    """``ip daddr PROTECTED tcp dport PORTS``: packets addressed to the rule."""
    return [
        _match(_payload(_ip_proto(rule), "daddr"), str(rule.protected)),
        _match(_payload(rule.proto, "dport"), _value(rule.port_lo, rule.port_hi)),
    ]


def _forwarded_flow_match(rule: ForwardRule) -> list[Json]:
    """Packets of flows this rule DNATed, either direction (conntrack's original tuple)."""
    return [
        _match({"ct": {"key": "status"}}, "dnat", op="in"),
        _match({"ct": {"key": f"{_ip_proto(rule)} daddr", "dir": "original"}}, str(rule.protected)),
        _match({"meta": {"key": "l4proto"}}, rule.proto),
        _match({"ct": {"key": "proto-dst", "dir": "original"}}, _value(rule.port_lo, rule.port_hi)),
    ]


def _weighted_map(selector: Json, backends: Sequence[Backend], data: Sequence[Any]) -> Json:
    """``SELECTOR map { 0-2 : data0, 3 : data1 }`` with one interval per backend's weight."""
    elements = []
    start = 0
    for backend, value in zip(backends, data, strict=True):
        elements.append([_value(start, start + backend.weight - 1), value])
        start += backend.weight
    return {"map": {"key": selector, "data": {"set": elements}}}


def _numgen(total: int) -> Json:
    return {"numgen": {"mode": "random", "mod": total, "offset": 0}}


def _jhash(rule: ForwardRule, total: int) -> Json:
    return {
        "jhash": {
            "mod": total,
            "seed": JHASH_SEED,
            "offset": 0,
            "expr": _payload(_ip_proto(rule), "saddr"),
        }
    }


def _dnat(rule: ForwardRule, backends: Sequence[Backend], selector: Json | None = None) -> Json:
    """The DNAT statement sending to ``backends`` (one, or several chosen by ``selector``)."""
    nat: Json = {"family": _ip_proto(rule)}
    ports = {b.port for b in backends}
    if rule.port_lo == rule.port_hi and len(ports) > 1:
        # Single port, backends on different ports: the map yields ADDR . PORT.
        assert selector is not None
        data = [{"concat": [str(b.host), rule.target_port(b, rule.port_lo)]} for b in backends]
        nat["addr"] = _weighted_map(selector, backends, data)
        return {"dnat": nat}
    if len(backends) == 1:
        nat["addr"] = str(backends[0].host)
    else:
        assert selector is not None
        nat["addr"] = _weighted_map(selector, backends, [str(b.host) for b in backends])
    (port,) = ports  # ForwardRule guarantees one port for every backend of a range rule
    if rule.port_lo == rule.port_hi:
        if port is not None:
            nat["port"] = port
    elif port is not None and port != rule.port_lo:
        shift = [[p, rule.target_port(backends[0], p)] for p in range(rule.port_lo, rule.port_hi + 1)]
        nat["port"] = {"map": {"key": _payload(rule.proto, "dport"), "data": {"set": shift}}}
    return {"dnat": nat}


def _persistent_rules(table: str, rule: ForwardRule, backends: Sequence[Backend], mark: int) -> list[Json]:
    """Sticky weighted choice with one dynamic set of clients per backend (see module doc)."""
    saddr = _payload(_ip_proto(rule), "saddr")
    count_new = {"counter": new_counter_name(rule)}
    stamp = _set_mark(mark)
    out = []
    for index, backend in enumerate(backends):
        pinned = "@" + persist_set_name(rule, index)
        out.append(
            _rule(
                table,
                PREROUTING_CHAIN,
                rule,
                _service_match(rule)
                + [
                    _match(saddr, pinned),
                    {"set": {"op": "update", "elem": saddr, "set": pinned}},
                    count_new,
                    stamp,
                    _dnat(rule, [backend]),
                ],
            )
        )
    remaining = sum(b.weight for b in backends)
    for index, backend in enumerate(backends):
        choose = []
        if index < len(backends) - 1:
            choose = [_match(_numgen(remaining), backend.weight, op="<")]
        remaining -= backend.weight
        pinned = "@" + persist_set_name(rule, index)
        out.append(
            _rule(
                table,
                PREROUTING_CHAIN,
                rule,
                _service_match(rule)
                + choose
                + [
                    {"set": {"op": "update", "elem": saddr, "set": pinned}},
                    count_new,
                    stamp,
                    _dnat(rule, [backend]),
                ],
            )
        )
    total = sum(b.weight for b in backends)
    out.append(
        _rule(
            table,
            PREROUTING_CHAIN,
            rule,
            _service_match(rule) + [count_new, stamp, _dnat(rule, backends, _jhash(rule, total))],
        )
    )
    return out


# --- builders -----------------------------------------------------------------------------


def build_ruleset(
    rules: Iterable[ForwardRule],
    healthy: Mapping[str, Iterable[Backend]] | None = None,
    table: str = DEFAULT_TABLE,
    counters: Counters | None = None,
    connlimits: Mapping[str, ConnLimits] | None = None,
    synproxy: bool = False,
    local_tcp: Iterable[tuple[Any, int]] = (),
) -> Json:
    """One atomic batch that replaces our table with the ruleset for ``rules``.

    ``connlimits`` (rule key → :class:`ConnLimits`) adds the connection limits of those rules
    (:func:`connlimit_batch`).

    ``healthy`` maps a rule key to its healthy backends; ``None``, or a rule missing from the
    mapping, means all of that rule's backends are healthy. ``counters`` (rule key →
    (packets, bytes), as :func:`parse_counters` returns) seeds the traffic counters so they
    survive the replacement.

    The batch is ``add table; delete table; add table; …``: the first ``add`` makes the
    ``delete`` valid when the table did not exist yet, and the whole batch is one transaction,
    so a batch the kernel rejects leaves the previous table as it was.
    """
    rules = list(rules)
    keys = [rule_key(r) for r in rules]
    if len(set(keys)) != len(keys):
        raise ValueError("build_ruleset got two rules with the same key")
    ref = _table_ref(table)
    head: list[Json] = [
        {"add": {"table": {**ref, "comment": TABLE_COMMENT}}},
        {"delete": {"table": ref}},
        {"add": {"table": {**ref, "comment": TABLE_COMMENT}}},
        _chain(table, PREROUTING_CHAIN, "nat", "prerouting", DSTNAT_PRIORITY),
        _chain(table, POSTROUTING_CHAIN, "nat", "postrouting", SRCNAT_PRIORITY),
    ]
    objects: list[Json] = []
    prerouting: list[Json] = []
    postrouting: list[Json] = []
    forward: list[Json] = []
    marks = traffic_marks(keys)
    for rule in rules:
        key = rule_key(rule)
        backends = active_backends(rule, None if healthy is None else healthy.get(key))
        objects.append(_counter(table, traffic_counter_name(rule), rule, (counters or {}).get(key)))
        objects.append(_counter(table, new_counter_name(rule), rule, None))
        count_new = {"counter": new_counter_name(rule)}
        if not backends:
            prerouting.append(
                _rule(
                    table,
                    PREROUTING_CHAIN,
                    rule,
                    _service_match(rule) + [count_new, {"drop": None}],
                )
            )
        elif rule.persist_s > 0 and len(backends) > 1:
            for index in range(len(backends)):
                objects.append(
                    {
                        "add": {
                            "set": {
                                "family": FAMILY,
                                "table": table,
                                "name": persist_set_name(rule, index),
                                "type": "ipv4_addr" if rule.family == 4 else "ipv6_addr",
                                "flags": ["timeout"],
                                "timeout": rule.persist_s,
                                "size": PERSIST_SET_SIZE,
                            }
                        }
                    }
                )
            prerouting.extend(_persistent_rules(table, rule, backends, marks[key]))
        else:
            total = sum(b.weight for b in backends)
            selector = _numgen(total) if len(backends) > 1 else None
            prerouting.append(
                _rule(
                    table,
                    PREROUTING_CHAIN,
                    rule,
                    _service_match(rule) + [count_new, _set_mark(marks[key]), _dnat(rule, backends, selector)],
                )
            )
        if not rule.preserve_client_ip:
            postrouting.append(
                _rule(
                    table,
                    POSTROUTING_CHAIN,
                    rule,
                    _forwarded_flow_match(rule) + [{"masquerade": None}],
                )
            )
    if rules:
        # One counter map and one forward rule for all rules (see the module doc); no rules, no
        # forward chain, so nothing is hooked into forwarding at all.
        objects.append(
            {
                "add": {
                    "map": {
                        "family": FAMILY,
                        "table": table,
                        "name": TRAFFIC_MAP,
                        "type": "mark",
                        "map": "counter",
                        "elem": [[marks[rule_key(r)], traffic_counter_name(r)] for r in rules],
                    }
                }
            }
        )
        head.append(_chain(table, FORWARD_CHAIN, "filter", "forward", FILTER_PRIORITY))
        our_bits = {"&": [{"ct": {"key": "mark"}}, MARK_MASK]}
        lookup = {"map": {"key": our_bits, "data": "@" + TRAFFIC_MAP}}
        forward.append(
            {
                "add": {
                    "rule": {
                        "family": FAMILY,
                        "table": table,
                        "chain": FORWARD_CHAIN,
                        "expr": [{"counter": lookup}],
                    }
                }
            }
        )
    cookie = synproxy_rules(rules, healthy, table) if synproxy else []  # SYN cookies (synproxy_rules)
    if synproxy:
        cookie += local_synproxy_rules(local_tcp, table)
    limited = [
        (r, (connlimits or {})[rule_key(r)])
        for r in rules
        if (connlimits or {}).get(rule_key(r)) is not None and (connlimits or {})[rule_key(r)].active()
    ]
    extra = connlimit_batch(table, limited) if limited else []
    return {"nftables": head + objects + prerouting + postrouting + forward + extra + cookie}


# --- connection limits (issue 13): per source and per service, in our table ------------------
#
# chain connlimit (filter prerouting, priority -150: after conntrack, before DNAT), per rule:
#   <service> ct state new ct timeout set "cl_to_<id>"      (UDP: short conntrack timeouts, unreplied N, replied 2N)
#   <service> ct state new add @cl_svc_<id> { ip daddr ct count over B } drop   (conntrack budget)
#   <service> ct state new limit rate over N/second drop                         (new connections, all)
#   <service> ct state new add @cl_rate_<id> { ip saddr limit rate over R/second } add @cl_off4 { ip saddr } drop
#   <service> ct state new add @cl_conc_<id> { ip saddr ct count over C } add @cl_off4 { ip saddr } drop
# cl_off4 / cl_off6 hold the offenders (timeout = the longest ban_s): `xdpguard run` reads them
# and bans those sources in XDP (reason connlimit). XXX: every apply replaces the table, so the
# counts and the offender sets start over (a health change rebuilds it too).

CONNLIMIT_CHAIN = "connlimit"
CONNLIMIT_PRIORITY = -150
OFFENDER_SETS = {4: "cl_off4", 6: "cl_off6"}
CONNLIMIT_SET_SIZE = 65535


def _set(table: str, name: str, family: int, timeout: int | None = None) -> Json:
    # nft 1.0.6's JSON knows no "dynamic" flag: a set written from the packet path gets it by itself
    body: dict[str, Any] = {
        "family": FAMILY,
        "table": table,
        "name": name,
        "type": "ipv4_addr" if family == 4 else "ipv6_addr",
        "size": CONNLIMIT_SET_SIZE,
    }
    if timeout:
        body.update(flags=["timeout"], timeout=timeout)
    return {"add": {"set": body}}


def _set_add(name: str, elem: Json, stmt: Json | None = None) -> Json:
    body: dict[str, Any] = {"op": "add", "elem": elem, "set": f"@{name}"}
    if stmt is not None:
        body["stmt"] = [stmt]
    return {"set": body}


def _limit_over(rate: int) -> Json:
    """``limit rate over RATE/second`` with a burst of one second."""
    return {"limit": {"rate": rate, "burst": rate, "per": "second", "inv": True}}


def _count_over(n: int) -> Json:
    """``ct count over N``."""
    return {"ct count": {"val": n, "inv": True}}


def connlimit_batch(table: str, limited: Sequence[tuple[ForwardRule, ConnLimits]]) -> list[Json]:
    """The connlimit chain, its sets and timeout objects, for the rules that have limits."""
    out: list[Json] = [_chain(table, CONNLIMIT_CHAIN, "filter", "prerouting", CONNLIMIT_PRIORITY)]
    ban = max(lim.ban_s for _, lim in limited)
    for fam in sorted({r.family for r, _ in limited}):
        out.append(_set(table, OFFENDER_SETS[fam], fam, ban))
    rules: list[Json] = []
    for rule, lim in limited:
        ident, ipp = rule_ident(rule), _ip_proto(rule)
        new = _service_match(rule) + [_match({"ct": {"key": "state"}}, "new", op="in")]
        off = _set_add(OFFENDER_SETS[rule.family], _payload(ipp, "saddr"))
        if lim.udp_timeout_s and rule.proto == "udp":
            name = f"cl_to_{ident}"
            out.append(
                {
                    "add": {
                        "ct timeout": {
                            "family": FAMILY,
                            "table": table,
                            "name": name,
                            "protocol": "udp",
                            "l3proto": ipp,
                            "policy": {"unreplied": lim.udp_timeout_s, "replied": 2 * lim.udp_timeout_s},
                        }
                    }
                }
            )
            rules.append(_rule(table, CONNLIMIT_CHAIN, rule, new + [{"ct timeout": name}]))
        # in this order: the conntrack budget per service, new connections of the service, and the
        # per-source meters whose offenders `xdpguard run` bans. (limit, set, its timeout, field, meter)
        meters = (
            (lim.conntrack_budget, "cl_svc", None, "daddr", _count_over(lim.conntrack_budget)),
            (lim.new_total, None, None, None, _limit_over(lim.new_total)),
            (lim.new_per_source, "cl_rate", 60, "saddr", _limit_over(lim.new_per_source)),
            (lim.concurrent_per_source, "cl_conc", None, "saddr", _count_over(lim.concurrent_per_source)),
        )
        for limit, prefix, timeout, field, meter in meters:
            if not limit:
                continue
            stmts = [meter]
            if prefix:
                out.append(_set(table, f"{prefix}_{ident}", rule.family, timeout))
                stmts = [_set_add(f"{prefix}_{ident}", _payload(ipp, field), meter)]
                if field == "saddr":
                    stmts.append(off)
            rules.append(_rule(table, CONNLIMIT_CHAIN, rule, new + stmts + [{"drop": None}]))
    return out + rules


def parse_offenders(listing: Json | None) -> list[tuple[str, float]]:
    """(source address, seconds left) of the elements of an offender set's JSON listing."""
    out = []
    for item in (listing or {}).get("nftables", []):
        body = item.get("set") if isinstance(item, Mapping) else None
        for e in (body or {}).get("elem", []) or []:
            if isinstance(e, Mapping) and "elem" in e:
                e = e["elem"]
                out.append((str(e.get("val")), float(e.get("expires", e.get("timeout", 0)))))
            elif isinstance(e, str):
                out.append((e, 0.0))
    return out


# --- SYN cookies: synproxy (bpf/include/syncookie.h answers the SYNs in XDP) ---------------

SYNPROXY_CHAIN = "cookies"  # filter hook input: completes the cookie handshakes XDP started
OUTPUT_CHAIN = "output"  # nat hook output: DNATs synproxy's own SYN to the backend
SYNPROXY_MSS = {4: 1460, 6: 1440}  # only used for a SYN synproxy answers itself (one that is ct invalid)
SYNPROXY_WSCALE = 7


def synproxy_rules(
    rules: Iterable[ForwardRule], healthy: Mapping[str, Iterable[Backend]] | None = None, table: str = DEFAULT_TABLE
) -> list[Json]:
    """The cookie half of the handshake, for every TCP rule. XDP answered the client's SYN with
    a cookie and let its valid ACK through; conntrack (nf_conntrack_tcp_loose=0) does not adopt
    that ACK, so it is ct invalid, no DNAT applies and it goes to the input hook (the protective
    IP is local). There ``synproxy`` checks the cookie (the kernel's secret, as XDP's helper)
    and sends its own SYN to PROTECTED:PORT through LOCAL_OUT, where the ``nat hook output``
    chain DNATs it to a backend like prerouting would (persistent rules: the stable jhash
    choice); postrouting masquerades it. The backend's SYN-ACK, un-NATed, reaches synproxy's
    postrouting hook, which ACKs the backend and sends the client its window update; seqadj
    maps the sequence numbers for the rest of the connection.

    XXX: IPv6 rules are built too, but nft synproxy drops IPv6 ACKs unless the NIC marked their
    checksum verified (nft_synproxy_do_eval checks it with the IPv4 nf_ip_checksum): XDP keeps
    IPv6 addresses on the retransmit authentication (XG_SYNCOOKIE_IPV6, syncookie.h)."""
    out: list[Json] = [
        _chain(table, SYNPROXY_CHAIN, "filter", "input", FILTER_PRIORITY),
        _chain(table, OUTPUT_CHAIN, "nat", "output", DSTNAT_PRIORITY),
    ]
    for rule in rules:
        if rule.proto != "tcp":
            continue
        out.append(
            _rule(
                table,
                SYNPROXY_CHAIN,
                rule,
                _service_match(rule)
                + [
                    _match({"ct": {"key": "state"}}, ["invalid", "untracked"], op="in"),
                    {
                        "synproxy": {
                            "mss": SYNPROXY_MSS[rule.family],
                            "wscale": SYNPROXY_WSCALE,
                            "flags": ["timestamp", "sack-perm"],
                        }
                    },
                ],
            )
        )
        backends = active_backends(rule, None if healthy is None else healthy.get(rule_key(rule)))
        count_new = {"counter": new_counter_name(rule)}
        if not backends:
            tail: list[Json] = [count_new, {"drop": None}]
        elif len(backends) > 1:
            total = sum(b.weight for b in backends)
            pick = _jhash(rule, total) if rule.persist_s > 0 else _numgen(total)
            tail = [count_new, _dnat(rule, backends, pick)]
        else:
            tail = [count_new, _dnat(rule, backends)]
        out.append(_rule(table, OUTPUT_CHAIN, rule, _service_match(rule) + tail))
    return out


def local_synproxy_rules(local_tcp: Iterable[tuple[Any, int]], table: str = DEFAULT_TABLE) -> list[Json]:
    """The cookie half of the handshake for TCP services served on the protective IP itself
    (HAProxy, l7/): (address, port) pairs. As for a forward, XDP's valid cookie ACK is ct invalid
    and meets ``synproxy`` in the input hook; synproxy's own SYN then goes to the local listener
    (no DNAT), and its window update to the client leaves through tc egress."""
    out: list[Json] = []
    for addr, port in sorted(set(local_tcp), key=lambda ap: (ap[0].version, ap[0].packed, ap[1])):
        fam = "ip" if addr.version == 4 else "ip6"
        out.append(
            {
                "add": {
                    "rule": {
                        "family": FAMILY,
                        "table": table,
                        "chain": SYNPROXY_CHAIN,
                        "comment": f"http/{addr}/{port}",
                        "expr": [
                            _match(_payload(fam, "daddr"), str(addr)),
                            _match(_payload("tcp", "dport"), port),
                            _match({"ct": {"key": "state"}}, ["invalid", "untracked"], op="in"),
                            {
                                "synproxy": {
                                    "mss": SYNPROXY_MSS[addr.version],
                                    "wscale": SYNPROXY_WSCALE,
                                    "flags": ["timestamp", "sack-perm"],
                                }
                            },
                        ],
                    }
                }
            }
        )
    return out


def delete_table(table: str = DEFAULT_TABLE) -> Json:
    """A batch that removes our table, and succeeds when it is already gone."""
    ref = _table_ref(table)
    return {"nftables": [{"add": {"table": ref}}, {"delete": {"table": ref}}]}


def _table_objects(listing: Mapping[str, Any] | None, table: str) -> Iterable[tuple[str, Json]]:
    for item in (listing or {}).get("nftables", []):
        if not isinstance(item, Mapping):
            continue
        for kind, body in item.items():
            if isinstance(body, Mapping) and body.get("family") == FAMILY and body.get("table") == table:
                yield kind, dict(body)


def _named_counters(listing: Mapping[str, Any] | None, table: str, prefix: str) -> dict[str, tuple[int, int]]:
    """rule key → (packets, bytes) for the named counters whose name starts with ``prefix``.

    The key comes from the counter's comment, or else from the comment of a rule that
    references the counter.
    """
    objects = list(_table_objects(listing, table))
    keys_by_counter: dict[str, str] = {}
    for kind, body in objects:
        if kind == "rule" and isinstance(body.get("comment"), str):
            for stmt in body.get("expr", []):
                if isinstance(stmt, Mapping) and isinstance(stmt.get("counter"), str):
                    keys_by_counter.setdefault(stmt["counter"], body["comment"])
    result: dict[str, tuple[int, int]] = {}
    for kind, body in objects:
        name = body.get("name")
        if kind != "counter" or not isinstance(name, str) or not name.startswith(prefix):
            continue
        key = body.get("comment") or keys_by_counter.get(name)
        if key:
            result[key] = (int(body.get("packets", 0)), int(body.get("bytes", 0)))
    return result


def parse_counters(listing: Mapping[str, Any] | None, table: str = DEFAULT_TABLE) -> dict[str, tuple[int, int]]:
    """Rule key → (packets, bytes) forwarded for that rule, both directions, from the JSON of
    ``nft -j list table inet xdpguard`` (or ``list ruleset``). ``None`` (no table) → ``{}``."""
    return _named_counters(listing, table, TRAFFIC_COUNTER_PREFIX)


def parse_new_connections(listing: Mapping[str, Any] | None, table: str = DEFAULT_TABLE) -> dict[str, int]:
    """Rule key → new connections that hit the rule since the last apply."""
    return {k: packets for k, (packets, _) in _named_counters(listing, table, NEW_COUNTER_PREFIX).items()}


# --- applying -----------------------------------------------------------------------------


class NftError(RuntimeError):
    """libnftables refused a batch; nothing of it was applied. ``failing_json`` is the batch."""

    def __init__(self, message: str, failing_json: Json):
        super().__init__(message)
        self.message = message
        self.failing_json = failing_json


def _load_nftables() -> Any:
    try:
        return importlib.import_module("nftables")
    except ImportError:
        raise RuntimeError(f"python module 'nftables' is missing: {SETUP_FIX}") from None


class NftApplier:
    """Runs JSON batches through libnftables, in the network namespace of this process.

    ``nft`` may be any object with ``json_cmd(obj) -> (rc, output, error)`` (tests pass a
    fake); by default ``nftables.Nftables()`` is created on first use.
    """

    def __init__(self, table: str = DEFAULT_TABLE, nft: Any = None):
        self.table = table
        self._nft = nft

    def _handle(self) -> Any:
        if self._nft is None:
            nft = _load_nftables().Nftables()
            nft.set_json_output(True)
            nft.set_handle_output(False)
            self._nft = nft
        return self._nft

    def run(self, obj: Json) -> Any:
        """Run one batch; return libnftables' parsed output; raise NftError when rc != 0."""
        rc, output, error = self._handle().json_cmd(obj)
        if rc != 0:
            # JSON input has no source positions: drop the "internal:0:0-0: " prefix.
            lines = [line.strip().removeprefix("internal:0:0-0:").strip() for line in str(error).splitlines()]
            detail = next((line for line in lines if line), "no error text")
            raise NftError(f"nft rejected the batch (rc {rc}): {detail}", obj)
        return output

    def apply(self, obj: Json) -> None:
        """Apply one atomic batch (e.g. :func:`build_ruleset`'s)."""
        self.run(obj)

    def table_exists(self, table: str | None = None) -> bool:
        name = table or self.table
        listing = self.run({"nftables": [{"list": {"tables": None}}]})
        for item in (listing or {}).get("nftables", []):
            body = item.get("table") if isinstance(item, Mapping) else None
            if body and body.get("family") == FAMILY and body.get("name") == name:
                return True
        return False

    def list_table(self, table: str | None = None) -> Json | None:
        """The JSON listing of our table, or None when it does not exist."""
        name = table or self.table
        if not self.table_exists(name):
            return None
        listing: Json = self.run({"nftables": [{"list": {"table": _table_ref(name)}}]})
        return listing

    def delete(self, table: str | None = None) -> None:
        self.apply(delete_table(table or self.table))


# --- capability probe ---------------------------------------------------------------------


@dataclass(frozen=True)
class NftCapabilities:
    """Which constructs of our ruleset this nftables + kernel pair accepts."""

    table_replace: bool  # add/delete/add table batch, chains, named counters with comments
    numgen_map: bool  # weighted choice: numgen random mod N map { interval : addr }
    concat_map: bool  # map data ADDR . PORT
    port_map: bool  # shifted port range: dnat to ADDR : tcp dport map { … }
    dynamic_set: bool  # persistence: update @set { ip saddr } from the packet path, jhash
    ipv6: bool  # the same for ip6
    nat_drop: bool  # drop in a nat chain (rule without a healthy backend)

    def missing(self) -> list[str]:
        return [f.name for f in fields(self) if not getattr(self, f.name)]


def _probe_rules() -> dict[str, tuple[list[ForwardRule], Mapping[str, Iterable[Backend]] | None]]:
    def one(*args: Any, **kwargs: Any) -> list[ForwardRule]:
        return [make_rule(*args, **kwargs)]

    dead = make_rule("udp", "198.18.0.1", "9", "198.18.1.10:9")
    return {
        "table_replace": (one("tcp", "198.18.0.1", "80", "198.18.1.10:8080"), None),
        "numgen_map": (
            one("tcp", "198.18.0.1", "80", "198.18.1.10,198.18.1.11", weights="3,1"),
            None,
        ),
        "concat_map": (one("tcp", "198.18.0.1", "80", "198.18.1.10:80,198.18.1.11:8080"), None),
        "port_map": (one("tcp", "198.18.0.1", "8000-8002", "198.18.1.10:9000"), None),
        "dynamic_set": (
            one("tcp", "198.18.0.1", "80", "198.18.1.10,198.18.1.11", persist_s=60),
            None,
        ),
        "ipv6": (
            one("tcp", "2001:db8::1", "80", "[2001:db8::10]:80,[2001:db8::11]:80", persist_s=60),
            None,
        ),
        "nat_drop": ([dead], {dead.key: ()}),
    }


def probe_capabilities(applier: NftApplier | None = None, table: str = PROBE_TABLE) -> NftCapabilities:
    """Try each construct in a throwaway table (deleted afterwards) and report what works.

    Raises RuntimeError when the nftables module is missing, NftError when even the cleanup
    fails.
    """
    applier = applier or NftApplier()
    results: dict[str, bool] = {}
    try:
        for name, (rules, healthy) in _probe_rules().items():
            try:
                applier.apply(build_ruleset(rules, healthy=healthy, table=table))
                results[name] = True
            except NftError:
                results[name] = False
    finally:
        applier.apply(delete_table(table))
    return NftCapabilities(**results)
