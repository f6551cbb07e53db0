"""`xdpguard cc show|level|limit|rule`: edits of an HTTP service's desired spec, store first,
then realised by the reconciler (reconcile.edit → write_differences → HAProxy reload).

Every edit builds the new HttpService with dataclasses.replace, so the record validates itself:
bad input (a level, a prefix, a regex, a limit) is one UserError and nothing is stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from .. import reconcile
from ..model.desired import InterfaceSpec
from ..desired.load import norm_http
from ..errors import UserError
from . import engine, schema
from .spec import LEVELS, RateLimit, Rule, check_choice, check_path_prefix


@dataclass(frozen=True)
class ServiceView:
    iface: str
    address: str
    name: str
    port: int
    level: str
    spec: dict  # schema.to_data
    requests: int = 0  # HAProxy's counters since it (re)started (show stat)
    denied: int = 0
    http_4xx: int = 0
    http_2xx: int = 0
    backends_up: int = 0


@dataclass(frozen=True)
class CcResult:
    action: str
    services: list[ServiceView]
    haproxy: str  # running | stopped
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _views(specs: list[InterfaceSpec]) -> list[ServiceView]:
    rows = engine.stats()
    out = []
    for s in specs:
        for a in s.addresses:
            for svc in a.http:
                fe = next((r for r in rows if r.proxy == f"{svc.name}_fe" and r.name == "FRONTEND"), None)
                up = sum(
                    1
                    for r in rows
                    if r.proxy == f"{svc.name}_be"
                    and r.name not in ("FRONTEND", "BACKEND")
                    and r.status.startswith("UP")
                )
                out.append(
                    ServiceView(
                        s.name,
                        str(a.address),
                        svc.name,
                        svc.port,
                        svc.level,
                        schema.to_data(svc),
                        fe.requests_total if fe else 0,
                        fe.denied_requests if fe else 0,
                        fe.http_4xx if fe else 0,
                        fe.http_2xx if fe else 0,
                        up,
                    )
                )
    return out


def _specs() -> list[InterfaceSpec]:
    return [s for s in (reconcile.export_iface(n, lists=False) for n in reconcile.protection_ifaces()) if s is not None]


def show(service: str | None = None) -> CcResult:
    views = _views(_specs())
    if service is not None:
        views = [v for v in views if v.name == service]
        if not views:
            raise UserError(f"no HTTP service named {service!r} (see xdpguard cc show)")
    running = engine.haproxy().running()
    return CcResult("show", views, "running" if running else "stopped")


def _owner(service: str) -> str:
    for s in _specs():
        if any(svc.name == service for a in s.addresses for svc in a.http):
            return s.name
    raise UserError(f"no HTTP service named {service!r} (see xdpguard cc show)")


def _edit(service: str, fn, action: str) -> CcResult:
    name = _owner(service)

    def predict(spec: InterfaceSpec) -> InterfaceSpec:
        addrs = []
        for a in spec.addresses:
            addrs.append(replace(a, http=norm_http(fn(svc) if svc.name == service else svc for svc in a.http)))
        return replace(spec, addresses=tuple(addrs))

    def result(g, live: InterfaceSpec, after: InterfaceSpec, notes: list[str]) -> CcResult:
        views = [v for v in _views([after]) if v.name == service]
        running = "running" if engine.haproxy().running() else "stopped"
        return CcResult(action, views, running, list(notes) if after != live else ["unchanged"])

    # one writer: the edit is stored first, then write_differences reloads HAProxy (bad input,
    # refused by norm_interface inside the edit, stores and writes nothing)
    return reconcile.edit(name, lambda live, g: predict(live), result)


def set_level(service: str, level: str) -> CcResult:
    lv = check_choice(level, "level", LEVELS)
    return _edit(service, lambda svc: replace(svc, level=lv), "level")


def set_limit(service: str, prefix: str, requests: int, window_s: int, action: str, punish_s: int) -> CcResult:
    lim = RateLimit(prefix, requests, window_s, action, punish_s)  # validates first
    return _edit(
        service,
        lambda svc: replace(svc, limits=tuple(x for x in svc.limits if x.prefix != lim.prefix) + (lim,)),
        "limit set",
    )


def del_limit(service: str, prefix: str) -> CcResult:
    p = check_path_prefix(prefix, "limit prefix")

    def fn(svc):
        if not any(x.prefix == p for x in svc.limits):
            raise UserError(f"{service} has no limit on {p!r}")
        return replace(svc, limits=tuple(x for x in svc.limits if x.prefix != p))

    return _edit(service, fn, "limit del")


def add_rule(service: str, **conds) -> CcResult:
    rule = Rule(**conds)  # validates first

    def fn(svc):
        return svc if rule in svc.rules else replace(svc, rules=svc.rules + (rule,))

    return _edit(service, fn, "rule add")


def del_rule(service: str, number: int) -> CcResult:
    def fn(svc):
        if not 1 <= number <= len(svc.rules):
            raise UserError(f"invalid rule number {number}: {service} has {len(svc.rules)} rule(s)")
        return replace(svc, rules=svc.rules[: number - 1] + svc.rules[number:])

    return _edit(service, fn, "rule del")
