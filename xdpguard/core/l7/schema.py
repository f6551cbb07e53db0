"""HTTP services as plain data: the `[[interface.address.http]]` tables of the config file and
the interface record's "http" list hold the same tree (one reader, one writer, here).

    [[interface.address.http]]            # inside the protected address it listens on
    name = "www"
    port = 80
    domains = ["example.com", "*.example.com"]
    backends = ["198.51.100.7:80"]
    health_path = "/"
    level = "normal"                      # loose | normal | strict | emergency
    exempt = ["/api/"]
    challenge_ttl = 3600
    tls = { cert = "/etc/ssl/www.pem", key = "/etc/ssl/www.key" }
    connections = { concurrent = 100, new_per_10s = 250 }
    service_rate = 200                    # unverified requests/s per domain, from everyone: then challenge
    backend_conns = 100                   # requests at the backends at once: then challenge
    [[interface.address.http.limit]]      # per source, under a path prefix
    prefix = "/login"
    requests = 20
    window = 10
    action = "deny"                       # challenge | deny | drop | tarpit
    punish = 60
    [[interface.address.http.rule]]       # precise rule: every condition given must hold
    action = "drop"                       # allow | challenge | drop
    user_agent_regex = "^curl/"

`from_data` raises UserError naming the key; `to_data(from_data(d)) ` loads back equal.
"""

from __future__ import annotations

from ..errors import UserError
from .spec import ConnLimits, HttpService, RateLimit, Rule, Tls, format_backend

KEYS = {
    "name",
    "port",
    "domains",
    "backends",
    "health_path",
    "level",
    "exempt",
    "challenge_ttl",
    "tls",
    "connections",
    "service_rate",
    "backend_conns",
    "limit",
    "rule",
}
TLS_KEYS = {"cert", "key"}
CONN_KEYS = {"concurrent", "new_per_10s"}
LIMIT_KEYS = {"prefix", "requests", "window", "action", "punish"}
RULE_KEYS = {
    "action",
    "methods",
    "path_prefix",
    "uri_regex",
    "host",
    "user_agent_regex",
    "referer_regex",
    "cookies",
    "headers",
    "absent_headers",
}
_RULE_LISTS = ("methods", "cookies", "headers", "absent_headers")


def _table(v, what: str, known: set[str]) -> dict:
    if not isinstance(v, dict):
        raise UserError(f"{what} must be a table, got {v!r:.60}")
    unknown = sorted(set(v) - known)
    if unknown:
        raise UserError(f"{what}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return v


def _list(v, what: str) -> list:
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list):
        raise UserError(f"{what} must be an array, got {v!r:.60}")
    return v


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise UserError(f"{what} must be a whole number, got {v!r:.60}")
    return v


def _str(v, what: str) -> str:
    if not isinstance(v, str):
        raise UserError(f"{what} must be a string, got {v!r:.60}")
    return v


def limit_from_data(d) -> RateLimit:
    d = _table(d, "limit", LIMIT_KEYS)
    kw = {}
    for key, field in (("prefix", "prefix"), ("action", "action")):
        if key in d:
            kw[field] = _str(d[key], f"limit {key}")
    for key, field in (("requests", "requests"), ("window", "window_s"), ("punish", "punish_s")):
        if key in d:
            kw[field] = _int(d[key], f"limit {key}")
    return RateLimit(**kw)


def rule_from_data(d) -> Rule:
    d = _table(d, "rule", RULE_KEYS)
    if "action" not in d:
        raise UserError("rule needs an action (allow, challenge or drop)")
    kw = {}
    for k, v in d.items():
        if k in _RULE_LISTS:
            kw[k] = tuple(_str(x, f"rule {k}") for x in _list(v, f"rule {k}"))
        else:
            kw[k] = _str(v, f"rule {k}")
    return Rule(**kw)


def from_data(d, listen) -> HttpService:
    """One `[[…http]]` table → HttpService listening on `listen` (the enclosing address)."""
    d = _table(d, "http", KEYS)
    if "name" not in d:
        raise UserError("http needs a name")
    if "backends" not in d:
        raise UserError("http needs backends (ADDRESS:PORT, [ADDRESS]:PORT for IPv6)")
    kw: dict = {
        "name": _str(d["name"], "http name"),
        "listen": (listen,),
        "backends": tuple(_str(b, "http backend") for b in _list(d["backends"], "http backends")),
    }
    if "port" in d:
        kw["port"] = _int(d["port"], "http port")
    if "challenge_ttl" in d:
        kw["challenge_ttl_s"] = _int(d["challenge_ttl"], "http challenge_ttl")
    if "service_rate" in d:
        kw["service_rate"] = _int(d["service_rate"], "http service_rate")
    if "backend_conns" in d:
        kw["backend_conns"] = _int(d["backend_conns"], "http backend_conns")
    for key in ("health_path", "level"):
        if key in d:
            kw[key] = _str(d[key], f"http {key}")
    for key in ("domains", "exempt"):
        if key in d:
            kw[key] = tuple(_str(x, f"http {key}") for x in _list(d[key], f"http {key}"))
    if "tls" in d:
        t = _table(d["tls"], "http tls", TLS_KEYS)
        if set(t) != TLS_KEYS:
            raise UserError("http tls needs cert and key (absolute paths of PEM files)")
        kw["tls"] = Tls(_str(t["cert"], "tls cert"), _str(t["key"], "tls key"))
    if "connections" in d:
        c = _table(d["connections"], "http connections", CONN_KEYS)
        if set(c) != CONN_KEYS:
            raise UserError("http connections needs concurrent and new_per_10s")
        kw["conns"] = ConnLimits(
            _int(c["concurrent"], "connections concurrent"), _int(c["new_per_10s"], "connections new_per_10s")
        )
    if "limit" in d:
        kw["limits"] = tuple(limit_from_data(x) for x in _list(d["limit"], "http limit"))
    if "rule" in d:
        kw["rules"] = tuple(rule_from_data(x) for x in _list(d["rule"], "http rule"))
    return HttpService(**kw)


def limit_to_data(x: RateLimit) -> dict:
    return {"prefix": x.prefix, "requests": x.requests, "window": x.window_s, "action": x.action, "punish": x.punish_s}


def rule_to_data(r: Rule) -> dict:
    out: dict = {"action": r.action}
    for f in r.conditions():
        v = getattr(r, f)
        out[f] = list(v) if isinstance(v, tuple) else v
    return out


def to_data(svc: HttpService) -> dict:
    """The table of `svc` (without its listen address: the enclosing address table says it)."""
    dflt = HttpService("x", listen=("198.18.0.1",), backends=("198.18.0.2:80",))
    out: dict = {"name": svc.name, "port": svc.port, "backends": [format_backend(a, p) for a, p in svc.backends]}
    if svc.domains:
        out["domains"] = list(svc.domains)
    if svc.health_path != dflt.health_path:
        out["health_path"] = svc.health_path
    out["level"] = svc.level
    if svc.exempt:
        out["exempt"] = list(svc.exempt)
    if svc.challenge_ttl_s != dflt.challenge_ttl_s:
        out["challenge_ttl"] = svc.challenge_ttl_s
    if svc.tls is not None:
        out["tls"] = {"cert": str(svc.tls.cert), "key": str(svc.tls.key)}
    if svc.service_rate is not None:
        out["service_rate"] = svc.service_rate
    if svc.backend_conns is not None:
        out["backend_conns"] = svc.backend_conns
    if svc.conns is not None:
        out["connections"] = {"concurrent": svc.conns.concurrent, "new_per_10s": svc.conns.new_per_10s}
    if svc.limits:
        out["limit"] = [limit_to_data(x) for x in svc.limits]
    if svc.rules:
        out["rule"] = [rule_to_data(r) for r in svc.rules]
    return out


def describe(svc: HttpService) -> str:
    """One line for diffs and notes."""
    parts = [
        f"{svc.name} {'https' if svc.tls else 'http'}/{svc.port}",
        f"level {svc.level}",
        "-> " + ",".join(format_backend(a, p) for a, p in svc.backends),
    ]
    if svc.domains:
        parts.append("domains " + ",".join(svc.domains))
    if svc.limits:
        parts.append(f"{len(svc.limits)} limit(s)")
    if svc.rules:
        parts.append(f"{len(svc.rules)} rule(s)")
    if svc.service_rate is not None:
        parts.append(f"service ceiling {svc.service_rate}/s")
    if svc.backend_conns is not None:
        parts.append(f"backend ceiling {svc.backend_conns}")
    if svc.conns is not None:
        parts.append(f"connections {svc.conns.concurrent}/{svc.conns.new_per_10s}")
    return " ".join(parts)
