"""Layer-7 evidence → line-rate drops: HAProxy's offenders banned in XDP (reason `cc`).

`xdpguard run` calls `promote` every tick: the sources HAProxy's stick tables show over a limit
(runtime.offenders) are written into the dynamic ban map by the map owner's maps, the way
connlimit.promote does for nft's offenders. Which offences count:

- punished      a source HAProxy punishes (deny / drop / tarpit) until `until`
- requests      over the level's request ceiling
- concurrent / new_conns   over the connection caps
- prefix        over a per-prefix limit, unless that limit's action is `challenge` (a browser
                passes the challenge; banning it would hit real clients)
- challenged    challenged more than spec.CHALLENGES_PER_10S times in a window without ever
                passing: a browser passes its first challenge, a bot of a multi-source flood
                (each source under every per-source limit) never does
- refused       answered 429 CHALLENGES_UNPASSED times on an exempt path during its surge (a source
                not seen before the surge: an API path cannot challenge) and kept coming

Never banned: allowlisted sources (the caller passes the allowlist), and a source that holds a
valid challenge cookie (HAProxy records its expiry in gpt 2 of the source's entry: `verified`).
TTL = max(until − now, the level's punishment). At most `cap` new bans per call.

The other way round, every tick: the sources that hold a valid challenge cookie (gpt 2) are
written into the data path's verified map (Guard.verify_challenged: TCP-verified plus
XG_VF_L7, expiring with the cookie, at most VERIFY_CAP_PER_TICK writes a tick), so a browser
that passed the challenge passes XDP's fingerprint filters and budgets like any verified client.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .. import protection, state
from ..desired.load import http_services
from ..observe import events
from ..errors import UserError
from ..prefixes import Prefix
from . import auto, ceiling, engine, runtime
from .runtime import Offender
from .spec import HttpService

BANNED_KINDS = ("punished", "requests", "concurrent", "new_conns", "prefix", "challenged", "refused")
CAP_PER_TICK = 1000
VERIFY_CAP_PER_TICK = 1000  # challenge-passing sources written into the verified map per tick


@dataclass(frozen=True)
class CcBan:
    address: str
    service: str
    kind: str
    ttl_s: int
    value: int
    limit: int


def select(
    found: Sequence[Offender],
    services: Sequence[HttpService],
    now: float,
    skip: Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool] = lambda a: False,
    cap: int = CAP_PER_TICK,
) -> list[CcBan]:
    """Pure: which offenders to ban and for how long (one ban per source, the longest TTL)."""
    by_name = {s.name: s for s in services}
    best: dict[str, CcBan] = {}
    for o in found:
        if o.kind not in BANNED_KINDS or (o.kind == "prefix" and o.action == "challenge"):
            continue
        if o.verified or skip(o.address):  # a challenge-passing client is never banned
            continue
        svc = by_name.get(o.service)
        punish = svc.preset.punish_s if svc is not None else 60
        left = int(o.until - now) if o.until else 0
        ttl = max(left, punish)
        cur = best.get(str(o.address))
        if cur is None or ttl > cur.ttl_s:
            best[str(o.address)] = CcBan(str(o.address), o.service, o.kind, ttl, o.value, o.limit)
    return sorted(best.values(), key=lambda b: -b.value)[:cap]


def promote(g, bans: Sequence[CcBan]) -> list[CcBan]:
    """Ban `bans` in XDP (reason cc) through the map owner; returns those that are new (a source
    already banned for at least as long is left as it is)."""
    fresh = set(g.promote_cc_bans([(b.address, float(b.ttl_s)) for b in bans]))
    return [b for b in bans if str(ipaddress.ip_address(b.address)) in fresh]


def passed(verified: dict, now: float, skip: Callable = lambda a: False) -> list[tuple[str, float]]:
    """Pure: the challenge-passing sources (address → (service, cookie expiry)) as (source,
    seconds its cookie has left), longest first; the cookie's end is the entry's end."""
    out = [(str(a), float(until - now)) for a, (_, until) in verified.items() if until > now and not skip(a)]
    return sorted(out, key=lambda x: (-x[1], x[0]))


def _allowed(allow) -> Callable:
    def skip(a) -> bool:
        p = Prefix(a.version, a.packed, 32 if a.version == 4 else 128)
        return any(x.contains(p) for x in allow)

    return skip


class Watch:
    """`xdpguard run`'s layer-7 step, every tick: keep HAProxy running (engine.ensure) and ban
    its offenders in XDP (reason cc), each new ban an event in the event log."""

    def __init__(
        self,
        report: Callable[[str], None] = lambda m: None,
        cap: int = CAP_PER_TICK,
        levels: auto.AutoLevel | None = None,
        verify_cap: int = VERIFY_CAP_PER_TICK,
    ):
        self.report = report
        self.cap = cap
        self.verify_cap = verify_cap
        self.verified_total = 0
        self.said = ""
        self.banned_total = 0
        self.levels = levels if levels is not None else auto.AutoLevel()  # automatic CC mode
        self.ceilings = ceiling.Ceilings()  # each domain's service ceiling from its peacetime
        self.ceilings_said: dict[str, dict[str, int]] = {}  # service → the learned ceilings last said
        self.raised: dict[str, str] = {}  # service → the level automatic CC mode serves it at

    def _say(self, msg: str) -> None:
        if msg != self.said:
            self.said = msg
            self.report(msg)

    def tick(self, ifaces) -> list[CcBan]:
        services = http_services(ifaces)
        try:
            got = engine.ensure(services)
        except UserError as exc:
            self._say(f"HAProxy: {exc.message}")
            return []
        except Exception as exc:  # noqa: BLE001 (HaproxyError & co: reported, the loop goes on)
            self._say(f"HAProxy: {type(exc).__name__}: {exc}")
            return []
        if got not in ("ok", "none"):
            self.report(f"HAProxy {got} ({len(services)} HTTP service(s))")
        if not services:
            return []
        self.auto_levels(ifaces, services)
        if self.raised:  # the offenders by the thresholds HAProxy serves now
            services = [replace(s, level=self.raised.get(s.name, s.level)) for s in services]
        sock = str(engine.haproxy().admin_socket)
        try:
            found, verified = runtime.read_sources(sock, services)
            self.learn_ceilings(sock, services)
        except (runtime.RuntimeApiError, ValueError) as exc:
            self._say(f"HAProxy runtime API: {exc}")
            return []
        if not found and not verified:
            return []
        now = time.time()
        out: list[CcBan] = []
        for spec in ifaces:
            mine = [s for a in spec.addresses for s in a.http]
            if not mine:
                continue
            names = {s.name for s in mine}
            bans = select([o for o in found if o.service in names], mine, now, _allowed(spec.allow), self.cap)
            good = passed({a: v for a, v in verified.items() if v[0] in names}, now)
            if not bans and not good:
                continue
            try:
                with protection.Guard.open(state.resolve_iface(spec.name)) as g:
                    if good:
                        w = g.verify_challenged(good, self.verify_cap)
                        if w.new:
                            self.verified_total += len(w.new)
                            self.report(
                                f"{spec.name}: {len(w.new)} client(s) passed the HTTP challenge, "
                                f"verified in XDP: " + ", ".join(w.new[:5]) + (" …" if len(w.new) > 5 else "")
                            )
                        if w.full:
                            self._say(
                                f"{spec.name}: verified map full, {w.full} challenge-passing client(s) not written"
                            )
                    new = promote(g, bans) if bans else []
            except UserError as exc:
                self._say(f"{spec.name}: cc bans not written: {exc.message}")
                continue
            for b in new:
                svc = next(s for s in mine if s.name == b.service)
                events.append_record(
                    {
                        "id": f"cc-{b.address}-{int(now * 1000)}",
                        "type": "cc_ban",
                        "iface": spec.name,
                        "protected": str(svc.listen[0]),
                        "service": b.service,
                        "start": now,
                        "end": now + b.ttl_s,
                        "offence": b.kind,
                        "value": b.value,
                        "limit": b.limit,
                        "ttl_s": b.ttl_s,
                        "top_reasons": [["cc", 1]],
                        "top_sources": [[b.address, b.value]],
                    }
                )
            if new:
                self.banned_total += len(new)
                self.report(
                    f"{spec.name}: banned {len(new)} HTTP offender(s) in XDP (reason cc): "
                    + ", ".join(f"{b.address} ({b.service} {b.kind} {b.value}/{b.limit}, {b.ttl_s} s)" for b in new[:5])
                    + (" …" if len(new) > 5 else "")
                )
            out += new
        return out

    def learn_ceilings(self, sock: str, services: list[HttpService], now: float | None = None) -> None:
        """Each domain's service ceiling from its peacetime (l7/ceiling.py), written into
        HAProxy's ceiling map through the runtime API (no reload); said once per change of a
        domain's ceiling. Writing it again after HAProxy restarted or reloaded (an empty map)
        repairs the map: nothing changed, nothing said."""
        now = time.time() if now is None else now
        for svc in services:
            ceiling.sync(sock, svc, self.ceilings, now)
            if svc.name not in self.ceilings.served:  # no ceiling map in HAProxy yet
                continue
            serving = self.ceilings.served[svc.name]
            before = self.ceilings_said.get(svc.name, {})
            new = {k: v for k, v in serving.items() if before.get(k) != v}
            back = sorted(k for k in before if k not in serving)
            self.ceilings_said[svc.name] = dict(serving)
            level = f"level {svc.level}: {svc.effective_service_rate()}/s"
            if new:
                self.report(
                    f"{svc.name}: service ceiling from peacetime: "
                    + ", ".join(f"{k.split('|', 1)[1]} {v}/s" for k, v in sorted(new.items()))
                    + f" ({level})"
                )
            if back:
                self.report(
                    f"{svc.name}: service ceiling back to the level's: "
                    + ", ".join(k.split("|", 1)[1] for k in back)
                    + f" ({level})"
                )

    def auto_levels(self, ifaces, services: list[HttpService], now: float | None = None) -> list[auto.Step]:
        """Automatic CC mode: each service's level from its backend's health (l7/auto.py). A
        raised level is served by rendering the desired services with it (dynamic state: never
        stored); every step is an event. While a level is raised, the rendering is repeated
        every tick (HAProxy's digest makes that a no-op) so a reconcile of the desired state
        cannot drop it."""
        now = time.time() if now is None else now
        rows = engine.stats()
        steps: list[auto.Step] = []
        serve: list[HttpService] = []
        for svc in services:
            level, step = self.levels.step(svc.name, svc.level, auto.reading(rows, svc) if rows else None, now)
            serve.append(replace(svc, level=level) if level != svc.level else svc)
            if step is not None:
                steps.append(step)
        raised = {s.name: s.level for s, d in zip(serve, services) if s.level != d.level}
        if not steps and not raised:
            return []
        try:
            engine.realise(serve)
        except UserError as exc:
            self._say(f"HAProxy (automatic CC mode): {exc.message}")
            return []
        except Exception as exc:  # noqa: BLE001 (reported, the loop goes on)
            self._say(f"HAProxy (automatic CC mode): {type(exc).__name__}: {exc}")
            return []
        self.raised = raised
        for st in steps:
            svc = next(s for s in services if s.name == st.service)
            iface = next((i.name for i in ifaces for a in i.addresses for h in a.http if h.name == st.service), "")
            events.append_record(
                {
                    "id": f"cclevel-{st.service}-{int(now * 1000)}",
                    "type": "cc_level",
                    "iface": iface,
                    "protected": str(svc.listen[0]),
                    "service": st.service,
                    "start": now,
                    "end": now,
                    "old": st.old,
                    "new": st.new,
                    "why": st.why,
                    "operator_level": svc.level,
                    "top_reasons": [["cc", 0]],
                    "top_sources": [],
                }
            )
            self.report(f"automatic CC mode: {st.service} {st.old} → {st.new} ({st.why})")
        return steps
