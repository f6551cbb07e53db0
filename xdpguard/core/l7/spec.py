"""What an operator asks for on an HTTP(S) service (issue 29): frozen, validated records.

    HttpService          listen address(es) + port, domains, backends, health path, TLS,
                         level, per-prefix rate limits, precise rules, exempt paths
      RateLimit          per source: at most N requests per window under a URI prefix,
                         then challenge / deny (429) / drop / tarpit, punished for P s
      Rule               precise rule: an AND of conditions → allow / challenge / drop
      ConnLimits         per source: concurrent connections, new connections per 10 s
      Tls                certificate + key (PEM files, checked to belong together)
    Preset               what a level (loose / normal / strict / emergency) means

Every record checks itself when built (`__post_init__`): a bad value raises UserError naming
the field and the value (one line, never a traceback), whether it came from the CLI, a file or
Python. Text that ends up in the HAProxy configuration is restricted to what can be written
there verbatim (no quote, no control character), so the builder never has to escape.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass, replace
from pathlib import Path

from ..model import vocab
from ..errors import UserError

LEVELS = ("loose", "normal", "strict", "emergency")
DEFAULT_LEVEL = "normal"
LIMIT_ACTIONS = ("challenge", "deny", "drop", "tarpit")  # deny answers 429
RULE_ACTIONS = ("allow", "challenge", "drop")
CHALLENGES = ("none", "cookie", "js")  # who is challenged by default: nobody, 302 cookie, JS page

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_TOKEN_RE = re.compile(r"^[!#$%&*+.^_`|~0-9A-Za-z-]{1,64}$")  # RFC 9110 token (header, cookie, method)
_PATH_RE = re.compile(r"^/[\x21-\x7e]{0,1023}$")

MAX_REQUESTS = 1_000_000
MAX_WINDOW_S = 3600
MAX_PUNISH_S = 86_400
MAX_CONNS = 1_000_000
MAX_TTL_S = 7 * 86_400
MAX_ITEMS = 256  # domains, backends, limits, rules, exempt paths: each list at most this long


# ---- small validators (each raises UserError naming `what`) ----


def _seq(value, what: str) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        value = [value]
    try:
        items = tuple(value)
    except TypeError:
        raise UserError(f"invalid {what} {value!r}: give a list") from None
    if len(items) > MAX_ITEMS:
        raise UserError(f"invalid {what}: {len(items)} items, at most {MAX_ITEMS}")
    return items


def _plain(value, what: str) -> str:
    """Text the HAProxy configuration can hold verbatim inside single quotes."""
    s = vocab.check_text(value, what)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in s):
        raise UserError(f"invalid {what} {vocab.shown(s)!r}: contains a control character")
    if "'" in s:
        raise UserError(f"invalid {what} {s!r}: must not contain a single quote (')")
    return s


def check_name(value, what: str = "service name") -> str:
    s = vocab.check_text(value, what)
    if not NAME_RE.match(s):
        raise UserError(f"invalid {what} {s!r}: use 1-32 lowercase letters, digits, '_' or '-', starting with a letter")
    return s


def check_domain(value, what: str = "domain") -> str:
    """A host name (IDN as its A-label), lower-cased; '*.example.com' covers every subdomain."""
    s = vocab.check_text(value, what).strip().rstrip(".").lower()
    wild = s.startswith("*.")
    host = s[2:] if wild else s
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise UserError(f"invalid {what} {value!r}: not a valid internationalised name ({exc})") from None
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or not all(_LABEL_RE.match(lb) for lb in labels) or labels[-1].isdigit():
        raise UserError(f"invalid {what} {value!r}: not a host name (e.g. example.com or *.example.com)")
    return ("*." if wild else "") + host


def check_path_prefix(value, what: str = "path prefix") -> str:
    s = vocab.check_text(value, what)
    if not _PATH_RE.match(s) or "'" in s:
        raise UserError(f"invalid {what} {s!r}: must start with '/' and hold only visible ASCII (no spaces, no quote)")
    return s


def check_regex(value, what: str = "regex") -> str:
    s = _plain(value, what)
    if not s:
        raise UserError(f"invalid {what}: empty")
    try:
        re.compile(s)
    except re.error as exc:
        raise UserError(f"invalid {what} {s!r}: {exc}") from None
    return s


def check_token(value, what: str) -> str:
    s = vocab.check_text(value, what)
    if not _TOKEN_RE.match(s):
        raise UserError(f"invalid {what} {s!r}: must be an HTTP token (letters, digits, !#$%&*+.^_`|~-)")
    return s


def check_int(value, what: str, lo: int, hi: int) -> int:
    n = vocab.parse_count(value, what, limit=hi)
    if n < lo:
        raise UserError(f"invalid {what} {value!r}: must be at least {lo}")
    return n


def check_choice(value, what: str, choices: tuple[str, ...]) -> str:
    s = vocab.check_text(value, what).strip().lower()
    if s not in choices:
        raise UserError(f"invalid {what} {value!r}: use one of {', '.join(choices)}")
    return s


def parse_address(value, what: str = "listen address") -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    s = vocab.check_text(value, what).strip()
    try:
        return ipaddress.ip_address(s.strip("[]"))
    except ValueError:
        raise UserError(f"invalid {what} {value!r}: not an IPv4 or IPv6 address") from None


def parse_backend(value, what: str = "backend") -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """'198.51.100.7:8080' or '[2001:db8::7]:80' → (address, port). Addresses only: a backend
    name would be resolved by HAProxy at every (re)load, a failure there would stop the service."""
    if isinstance(value, tuple) and len(value) == 2:
        return parse_address(value[0], what), check_int(value[1], f"{what} port", 1, 65535)
    host, port = vocab.parse_listen(value, what, resolve=False)
    if not str(value).strip().rpartition(":")[0]:
        raise UserError(f"invalid {what} {value!r}: use ADDRESS:PORT ([ADDRESS]:PORT for IPv6)")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise UserError(f"invalid {what} {value!r}: use an IP address, not a name") from None
    return addr, port


def format_backend(addr, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


# ---- records ----


@dataclass(frozen=True)
class RateLimit:
    """Per source: at most `requests` per `window_s` under `prefix`; beyond, `action`, and the
    source stays punished (the same action on every request) for `punish_s` after its last
    offence. `challenge` has no punishment: a verified browser passes it, a bot never does."""

    prefix: str = "/"
    requests: int = 100
    window_s: int = 10
    action: str = "deny"
    punish_s: int = 60

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "prefix", check_path_prefix(self.prefix, "limit prefix"))
        s(self, "requests", check_int(self.requests, f"limit requests for {self.prefix}", 1, MAX_REQUESTS))
        s(self, "window_s", check_int(self.window_s, f"limit window for {self.prefix}", 1, MAX_WINDOW_S))
        s(self, "action", check_choice(self.action, f"limit action for {self.prefix}", LIMIT_ACTIONS))
        s(self, "punish_s", check_int(self.punish_s, f"limit punishment for {self.prefix}", 0, MAX_PUNISH_S))


@dataclass(frozen=True)
class Rule:
    """A precise rule: every condition given must hold (AND); none given is refused. Methods
    match any of the list; regexes are PCRE as HAProxy reads them (checked here with Python's
    `re`, which shares the common syntax)."""

    action: str
    methods: tuple[str, ...] = ()
    path_prefix: str | None = None
    uri_regex: str | None = None  # on the path
    host: str | None = None  # a domain, '*.' for subdomains
    user_agent_regex: str | None = None
    referer_regex: str | None = None
    cookies: tuple[str, ...] = ()  # names that must be present
    headers: tuple[str, ...] = ()  # names that must be present
    absent_headers: tuple[str, ...] = ()  # names that must be absent

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "action", check_choice(self.action, "rule action", RULE_ACTIONS))
        s(
            self,
            "methods",
            tuple(dict.fromkeys(check_token(m, "rule method").upper() for m in _seq(self.methods, "rule methods"))),
        )
        if self.path_prefix is not None:
            s(self, "path_prefix", check_path_prefix(self.path_prefix, "rule path prefix"))
        for f in ("uri_regex", "user_agent_regex", "referer_regex"):
            if getattr(self, f) is not None:
                s(self, f, check_regex(getattr(self, f), "rule " + f.replace("_", " ")))
        if self.host is not None:
            s(self, "host", check_domain(self.host, "rule host"))
        for f in ("cookies", "headers", "absent_headers"):
            what = "rule " + f[:-1].replace("_", " ")
            s(self, f, tuple(dict.fromkeys(check_token(v, what) for v in _seq(getattr(self, f), what))))
        s(self, "headers", tuple(h.lower() for h in self.headers))
        s(self, "absent_headers", tuple(h.lower() for h in self.absent_headers))
        if not self.conditions():
            raise UserError(
                f"invalid rule ({self.action}): give at least one condition (method, path prefix, "
                "uri regex, host, user agent, referer, cookie or header)"
            )
        clash = set(self.headers) & set(self.absent_headers)
        if clash:
            raise UserError(f"invalid rule: header {sorted(clash)[0]!r} cannot be both present and absent")

    def conditions(self) -> list[str]:
        return [
            f
            for f in (
                "methods",
                "path_prefix",
                "uri_regex",
                "host",
                "user_agent_regex",
                "referer_regex",
                "cookies",
                "headers",
                "absent_headers",
            )
            if getattr(self, f)
        ]


@dataclass(frozen=True)
class ConnLimits:
    """Per source: open connections, and new connections per 10 s."""

    concurrent: int
    new_per_10s: int

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "concurrent", check_int(self.concurrent, "concurrent connections per source", 1, MAX_CONNS)
        )
        object.__setattr__(self, "new_per_10s", check_int(self.new_per_10s, "new connections per source", 1, MAX_CONNS))


@dataclass(frozen=True)
class Tls:
    """A PEM certificate (chain) and its private key; checked to load and to belong together."""

    cert: Path
    key: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "cert", Path(vocab.check_text(self.cert, "TLS certificate")))
        object.__setattr__(self, "key", Path(vocab.check_text(self.key, "TLS key")))
        for what, p in (("TLS certificate", self.cert), ("TLS key", self.key)):
            if not p.is_absolute():
                raise UserError(f"invalid {what} '{p}': give an absolute path")
            if not p.is_file():
                raise UserError(f"invalid {what} '{p}': no such file")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        except ssl.SSLError as exc:
            raise UserError(
                f"invalid TLS certificate '{self.cert}' with key '{self.key}': {exc.reason or exc}"
            ) from None
        except OSError as exc:
            raise UserError(f"invalid TLS certificate '{self.cert}': {exc.strerror or exc}") from None

    def bundle(self) -> str:
        """The certificate and key as one PEM, as HAProxy's `crt` reads it."""
        cert = self.cert.read_text()
        return cert + ("" if cert.endswith("\n") else "\n") + self.key.read_text()


@dataclass(frozen=True)
class Preset:
    """What a level means. Thresholds are per source; `scale` multiplies the operator's own
    per-prefix limits (at least 1 request)."""

    level: str
    requests_per_10s: int  # every request of a source, all paths: beyond, 429 + punishment
    conns: ConnLimits
    http_request_timeout_s: int  # a request's headers (and buffered body) must arrive within this
    keep_alive_timeout_s: int
    challenge: str  # who is challenged without having offended: none, cookie (302) or js
    scale: float
    punish_s: int
    service_rate_per_s: int  # unverified requests/s of one domain (or service) from everyone: beyond, all
    #                          unverified sources are challenged (cookie-verified clients are not)
    backend_conns: int  # requests at the backend at once: beyond, the same (a flood slow enough to
    #                     stay under the rate ceiling still fills a small backend)
    unverified_per_10s: int  # a source's unverified (no valid cookie), not exempt requests per 10 s:
    #                          beyond, it is challenged (a browser passes once; a bot never does)
    exempt_rate_per_s: int  # unverified requests/s of one domain on its exempt (API) paths: beyond,
    #                         the sources not seen before it (KNOWN_BEFORE_S) get 429 there, no challenge


# The request ceilings are per source and per 10 s: a browser loading a page with its assets
# stays far below; one address that wants 30 requests/s of a small server (a 2 Mbit/s uplink
# serves ~60 pages of 4 kB per second) is stopped. A flood from many addresses, each below its
# per-source ceiling, is caught by the service ceiling: beyond so many unverified requests per
# second of a domain from everyone, or beyond so many requests at the backend at once (a flood
# whose pace the slow backend sets stays under any rate), every unverified source is challenged
# (the level's challenge, at least the 302 cookie) until both fall; verified browsers are not counted and not
# challenged, bots that never pass are banned in XDP (l7/bans.py, "challenged").
PRESETS = {
    "loose": Preset("loose", 600, ConnLimits(200, 500), 10, 10, "none", 2.0, 30, 500, 256, 100, 500),
    "normal": Preset("normal", 300, ConnLimits(100, 250), 5, 5, "none", 1.0, 60, 50, 100, 20, 100),
    "strict": Preset("strict", 150, ConnLimits(50, 100), 3, 2, "cookie", 0.5, 300, 50, 50, 20, 100),
    "emergency": Preset("emergency", 60, ConnLimits(20, 50), 2, 1, "js", 0.25, 600, 25, 25, 10, 50),
}
# An exempt (API) path cannot challenge: a flood of it from many addresses, each under every
# per-source limit, is told apart by age. Beyond the domain's exempt ceiling (exempt_rate_per_s,
# or more than backend_conns requests at the backend), the exempt path is in surge for
# SURGE_HOLD_S, and only sources first seen this long before the surge began keep it (an API
# client that calls at least once a minute stays known: its stick-table entry idles out after
# 60 s); the others get 429, and one refused CHALLENGES_UNPASSED times is banned in XDP.
KNOWN_BEFORE_S = 5
# A domain is *in unrest* while its unverified requests per second are above a quarter of its
# ceiling (UNREST_OF_CEILING: the learned ceiling is 4 × the peacetime peak, l7/ceiling.py, so
# above its peacetime): a source first seen less than KNOWN_BEFORE_S ago then gets no unverified
# budget (challenged from its first request; on an exempt path, 429 without counting a refusal).
# What a flood from many new addresses puts at the backend before the surge is then this quarter,
# not the whole ceiling; known sources keep their budget until the surge itself.
UNREST_OF_CEILING = 4
# A browser opens at most 6 connections at once to a host over HTTP/1.1 (Chromium, Firefox), one
# over HTTP/2. An unverified source holding more than this many at once is not one browser: its
# requests are challenged from the first, without the unverified budget (a browser behind a shared
# address passes the 302 as it would at its budget; a bot, 64 connections from one address, sends
# the budget's 20 requests to the backend within its first milliseconds otherwise).
BROWSER_CONNS = 6
CHALLENGES_PER_10S = 8  # a source challenged more often than this without passing is a bot: banned in XDP
# … and whatever its rate: a source challenged this many times in its stick-table entry's life (it
# idles out after 60 s) and never passing is a bot (a browser passes its first challenge)
CHALLENGES_UNPASSED = 3


@dataclass(frozen=True)
class HttpService:
    """One HTTP(S) service on a protected address: HAProxy listens on `listen` × `port` and
    passes what survives the defences to `backends` (round robin, health-checked on
    `health_path`), with X-Forwarded-For; the backends' addresses never reach a client."""

    name: str
    listen: tuple = ()
    port: int = 80
    backends: tuple = ()
    domains: tuple[str, ...] = ()  # empty: any Host
    health_path: str = "/"
    tls: Tls | None = None
    level: str = DEFAULT_LEVEL
    limits: tuple[RateLimit, ...] = ()
    rules: tuple[Rule, ...] = ()
    exempt: tuple[str, ...] = ()  # path prefixes never challenged (APIs): limited with 429 instead
    conns: ConnLimits | None = None  # None: the level's
    challenge_ttl_s: int = 3600  # a passed challenge holds this long
    service_rate: int | None = None  # unverified requests/s per domain (None: the level's)
    backend_conns: int | None = None  # requests at the backends at once before the challenge (None: the level's)

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "name", check_name(self.name))
        n = self.name
        addrs = tuple(dict.fromkeys(parse_address(a, f"listen address of {n}") for a in _seq(self.listen, "listen")))
        if not addrs:
            raise UserError(f"invalid service {n}: give at least one listen address")
        s(self, "listen", addrs)
        s(self, "port", check_int(self.port, f"port of {n}", 1, 65535))
        backends = tuple(dict.fromkeys(parse_backend(b, f"backend of {n}") for b in _seq(self.backends, "backends")))
        if not backends:
            raise UserError(f"invalid service {n}: give at least one backend (ADDRESS:PORT)")
        s(self, "backends", backends)
        s(
            self,
            "domains",
            tuple(dict.fromkeys(check_domain(d, f"domain of {n}") for d in _seq(self.domains, "domains"))),
        )
        s(self, "health_path", check_path_prefix(self.health_path, f"health check path of {n}"))
        if self.tls is not None and not isinstance(self.tls, Tls):
            raise UserError(f"invalid TLS of {n}: give a certificate and a key")
        s(self, "level", check_choice(self.level, f"level of {n}", LEVELS))
        limits = tuple(_seq(self.limits, "limits"))
        if not all(isinstance(x, RateLimit) for x in limits):
            raise UserError(f"invalid limits of {n}: give RateLimit records")
        prefixes = [x.prefix for x in limits]
        dup = next((p for p in prefixes if prefixes.count(p) > 1), None)
        if dup is not None:
            raise UserError(f"invalid limits of {n}: two limits on the prefix {dup!r}")
        s(self, "limits", limits)
        rules = tuple(_seq(self.rules, "rules"))
        if not all(isinstance(x, Rule) for x in rules):
            raise UserError(f"invalid rules of {n}: give Rule records")
        s(self, "rules", rules)
        s(
            self,
            "exempt",
            tuple(
                dict.fromkeys(check_path_prefix(p, f"exempt path of {n}") for p in _seq(self.exempt, "exempt paths"))
            ),
        )
        if self.conns is not None and not isinstance(self.conns, ConnLimits):
            raise UserError(f"invalid connection limits of {n}")
        s(self, "challenge_ttl_s", check_int(self.challenge_ttl_s, f"challenge lifetime of {n}", 60, MAX_TTL_S))
        if self.service_rate is not None:
            s(self, "service_rate", check_int(self.service_rate, f"service rate of {n}", 1, MAX_REQUESTS))
        if self.backend_conns is not None:
            s(self, "backend_conns", check_int(self.backend_conns, f"backend connections of {n}", 1, MAX_CONNS))

    @property
    def preset(self) -> Preset:
        return PRESETS[self.level]

    def effective_service_rate(self) -> int:
        """Unverified requests per second per domain (each domain of the service, or the service
        when it names none) before every unverified source is challenged."""
        return self.service_rate if self.service_rate is not None else self.preset.service_rate_per_s

    def effective_exempt_rate(self) -> int:
        """Unverified requests per second per domain on the exempt paths before the sources not
        seen before are refused there."""
        return self.preset.exempt_rate_per_s

    def effective_backend_conns(self) -> int:
        """Requests at the service's backends at once before every unverified source is challenged."""
        return self.backend_conns if self.backend_conns is not None else self.preset.backend_conns

    def effective_conns(self) -> ConnLimits:
        return self.conns if self.conns is not None else self.preset.conns

    def effective_limits(self) -> tuple[RateLimit, ...]:
        """The operator's limits scaled by the level, longest prefix first (the one that applies)."""
        scale = self.preset.scale
        out = [replace(x, requests=max(1, int(x.requests * scale))) for x in self.limits]
        return tuple(sorted(out, key=lambda x: (-len(x.prefix), x.prefix)))


def check_services(services) -> tuple[HttpService, ...]:
    """A set of services that can live in one HAProxy: unique names, no two on one address and port."""
    items = tuple(_seq(services, "HTTP services"))
    names: set[str] = set()
    sockets: dict[tuple, str] = {}
    for svc in items:
        if not isinstance(svc, HttpService):
            raise UserError("invalid HTTP services: give HttpService records")
        if svc.name in names:
            raise UserError(f"invalid HTTP services: two services named {svc.name!r}")
        names.add(svc.name)
        for a in svc.listen:
            other = sockets.setdefault((a, svc.port), svc.name)
            if other != svc.name:
                raise UserError(
                    f"invalid HTTP service {svc.name}: {format_backend(a, svc.port)} is already served by {other}"
                )
    return items
