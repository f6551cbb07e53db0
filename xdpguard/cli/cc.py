"""`xdpguard cc show|level|limit|rule`: the HTTP services HAProxy serves on the protective IPs
(CC defence: levels, per-prefix limits, precise rules). Each change edits the service's
desired spec (stored first) and the reconciler reloads HAProxy."""

from __future__ import annotations

import click

from xdpguard.core.l7 import verbs
from xdpguard.core.l7.spec import LEVELS, LIMIT_ACTIONS, RULE_ACTIONS

from .output import Console, Result, json_option


def render(c: Console, res: verbs.CcResult) -> None:
    for n in res.notes:
        c.print(f"note: {n}", markup=False)
    if not res.services:
        c.print("no HTTP services (declare them as [[interface.address.http]] and apply)", markup=False)
    for v in res.services:
        s = v.spec
        c.print(
            f"{v.name}: {v.address} tcp/{v.port} on {v.iface}, level {v.level} -> {', '.join(s['backends'])}"
            f" ({v.backends_up} up)",
            markup=False,
        )
        if s.get("domains"):
            c.print(f"  domains {', '.join(s['domains'])}", markup=False)
        for lim in s.get("limit", []):
            c.print(
                f"  limit {lim['prefix']}: {lim['requests']} per {lim['window']} s -> {lim['action']}"
                f" (punish {lim['punish']} s)",
                markup=False,
            )
        for i, r in enumerate(s.get("rule", []), 1):
            conds = " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in r.items() if k != "action")
            c.print(f"  rule {i}: {conds} -> {r['action']}", markup=False)
        c.print(f"  requests {v.requests}, denied {v.denied}, 4xx {v.http_4xx}, 2xx {v.http_2xx}", markup=False)
    c.print(f"HAProxy: {res.haproxy}", markup=False)


@click.group(name="cc")
def cc():
    """HTTP services behind xdpguard's HAProxy: CC levels, limits and rules."""


@cc.command(name="show")
@click.argument("service", required=False)
@json_option
def show(service):
    """Show the HTTP services (or one), their defences and HAProxy's counters."""
    return Result(verbs.show(service), render)


@cc.command(name="level")
@click.argument("service")
@click.argument("level", type=click.Choice(LEVELS))
@json_option
def level(service, level):
    """Set a service's level: loose, normal, strict (cookie challenge), emergency (JS challenge)."""
    return Result(verbs.set_level(service, level), render)


@cc.command(name="limit")
@click.argument("service")
@click.argument("prefix")
@click.option("--requests", type=click.IntRange(1, 1_000_000), default=None, help="Requests per window per source.")
@click.option("--window", type=click.IntRange(1, 3600), default=10, show_default=True, help="Window, seconds.")
@click.option(
    "--action",
    type=click.Choice(LIMIT_ACTIONS),
    default="deny",
    show_default=True,
    help="What a source over the limit gets (deny answers 429).",
)
@click.option(
    "--punish",
    type=click.IntRange(0, 86_400),
    default=60,
    show_default=True,
    help="Seconds the source keeps getting the action after its last offence.",
)
@click.option("--delete", is_flag=True, help="Remove the limit on PREFIX.")
@json_option
def limit(service, prefix, requests, window, action, punish, delete):
    """Set (or --delete) a per-source request limit under a path PREFIX of SERVICE."""
    if delete:
        return Result(verbs.del_limit(service, prefix), render)
    if requests is None:
        raise click.UsageError("give --requests N (or --delete)")
    return Result(verbs.set_limit(service, prefix, requests, window, action, punish), render)


@cc.command(name="rule")
@click.argument("service")
@click.option("--action", type=click.Choice(RULE_ACTIONS), default=None, help="allow, challenge or drop.")
@click.option("--method", "methods", multiple=True, help="HTTP method (repeat: any of them).")
@click.option("--path-prefix", default=None)
@click.option("--uri-regex", default=None, help="PCRE on the path.")
@click.option("--host", default=None, help="Host (example.com, *.example.com).")
@click.option("--user-agent-regex", default=None)
@click.option("--referer-regex", default=None)
@click.option("--cookie", "cookies", multiple=True, help="Cookie name that must be present.")
@click.option("--header", "headers", multiple=True, help="Header name that must be present.")
@click.option("--absent-header", "absent_headers", multiple=True, help="Header name that must be absent.")
@click.option("--delete", type=int, default=None, metavar="N", help="Remove rule N (as `cc show` numbers them).")
@json_option
def rule(
    service,
    action,
    methods,
    path_prefix,
    uri_regex,
    host,
    user_agent_regex,
    referer_regex,
    cookies,
    headers,
    absent_headers,
    delete,
):
    """Add a precise rule to SERVICE (every condition given must hold), or --delete N."""
    if delete is not None:
        return Result(verbs.del_rule(service, delete), render)
    if action is None:
        raise click.UsageError("give --action allow|challenge|drop (or --delete N)")
    return Result(
        verbs.add_rule(
            service,
            action=action,
            methods=methods,
            path_prefix=path_prefix,
            uri_regex=uri_regex,
            host=host,
            user_agent_regex=user_agent_regex,
            referer_regex=referer_regex,
            cookies=cookies,
            headers=headers,
            absent_headers=absent_headers,
        ),
        render,
    )
