"""HTTP services in the desired state (config.py + l7/schema.py + l7/bans.select + nat's local
synproxy rules): load, round trip, diff, located errors, and which offenders become XDP bans."""

from __future__ import annotations

import ipaddress

import pytest

from xdpguard.core.model.desired import Desired
from xdpguard.core.desired.load import loads, http_services, ConfigError
from xdpguard.core.desired.dump import to_toml
from xdpguard.core.desired.diff import diff
from xdpguard.core.nat import nft as nat
from xdpguard.core.l7 import bans, engine, schema
from xdpguard.core.l7.runtime import Offender
from xdpguard.core.l7.spec import HttpService

BASE = """
[[interface]]
name = "veth0"
protect = ["198.18.0.1", "2001:db8::1"]

[[interface.address]]
address = "198.18.0.1"

[[interface.address.http]]
name = "www"
port = 80
backends = ["198.18.1.2:80"]
domains = ["Example.com", "*.example.org"]
level = "strict"
exempt = ["/api/"]
challenge_ttl = 600
connections = { concurrent = 10, new_per_10s = 100 }

[[interface.address.http.limit]]
prefix = "/login"
requests = 5
action = "challenge"

[[interface.address.http.rule]]
action = "drop"
user_agent_regex = "^curl/"
methods = ["post"]

[[interface.address]]
address = "2001:db8::1"

[[interface.address.http]]
name = "www6"
backends = ["[2001:db8:1::2]:80"]

[[interface.forward]]
proto = "tcp"
ports = "8080"
protected = "198.18.0.1"
to = ["198.18.1.2:80"]
"""


def load(text: str = BASE) -> Desired:
    return loads(text, "x.toml")[0]


def test_http_tables_build_services_on_their_address():
    d = load()
    a4, a6 = d.interfaces[0].addresses
    (svc,) = a4.http
    assert svc.listen == (ipaddress.ip_address("198.18.0.1"),) and svc.port == 80
    assert svc.domains == ("example.com", "*.example.org") and svc.level == "strict"
    assert svc.limits[0].prefix == "/login" and svc.limits[0].action == "challenge"
    assert svc.rules[0].methods == ("POST",) and svc.conns.concurrent == 10 and svc.challenge_ttl_s == 600
    assert a6.http[0].listen == (ipaddress.ip_address("2001:db8::1"),) and a6.http[0].level == "normal"
    assert [s.name for s in http_services(d.interfaces)] == ["www", "www6"]


def test_round_trip_and_record_round_trip():
    d = load()
    assert loads(to_toml(d))[0] == d
    svcs = http_services(d.interfaces)
    back = engine.from_record("veth0", engine.record(svcs))
    assert [s for v in back.values() for s in v] == svcs


def test_diff_names_the_service_change():
    d = load()
    d2 = load(BASE.replace('level = "strict"', 'level = "emergency"'))
    changes = [c.text() if hasattr(c, "text") and callable(c.text) else c for c in diff(d, d2)]
    assert len(changes) == 1 and "http www" in str(changes[0]) and "emergency" in str(changes[0])
    assert diff(d, d) == []
    removed = diff(
        d,
        load(
            BASE.split('[[interface.address]]\naddress = "2001:db8::1"')[0]
            + BASE.split('[[interface.address.http]]\nname = "www6"')[1].split("\n", 2)[2]
        ),
    )
    assert any(c.op == "remove" and "www6" in c.old for c in removed), removed


@pytest.mark.parametrize(
    "old,new,needle",
    [
        ('domains = ["Example.com", "*.example.org"]', 'domains = ["exa mple"]', "invalid domain of www"),
        ('user_agent_regex = "^curl/"', 'user_agent_regex = "(["', "invalid rule user agent regex"),
        ("requests = 5", "requests = 0", "invalid limit requests for /login"),
        ('level = "strict"', 'level = "panic"', "invalid level of www"),
        ("challenge_ttl = 600", "challenge_ttl = 600\ncolour = 1", "unknown key"),
        ('backends = ["198.18.1.2:80"]', 'backends = ["backend.example:80"]', "use an IP address"),
        ("tls = 1", "tls = 1", ""),
    ],
)
def test_errors_name_file_line_and_field(old, new, needle):
    if not needle:
        text = BASE.replace(
            "challenge_ttl = 600", 'challenge_ttl = 600\ntls = { cert = "/nonexistent.pem", key = "/x" }'
        )
        needle = "invalid TLS certificate '/nonexistent.pem': no such file"
    else:
        text = BASE.replace(old, new)
    with pytest.raises(ConfigError) as ei:
        loads(text, "x.toml")
    msg = str(ei.value)
    assert msg.startswith("x.toml:") and "interface[0].address[0].http[0]" in msg and needle in msg, msg


def test_a_forward_on_the_http_port_is_refused():
    text = BASE.replace('ports = "8080"', 'ports = "79-81"')
    with pytest.raises(ConfigError) as ei:
        loads(text, "x.toml")
    assert "interface[0].forward[0]" in str(ei.value) and "HTTP service www" in str(ei.value)


def test_two_services_on_one_socket_or_name_are_refused():
    text = BASE.replace('name = "www6"', 'name = "www"')
    with pytest.raises(ConfigError, match="two services named 'www'"):
        loads(text, "x.toml")
    dup = BASE.replace(
        "[[interface.address.http.limit]]",
        '[[interface.address.http]]\nname = "b"\nbackends = ["198.18.1.3:80"]\n\n[[interface.address.http.limit]]',
        1,
    )
    with pytest.raises(ConfigError, match="clashes with www on port 80"):
        loads(dup, "x.toml")


def test_local_synproxy_rules_for_http_ports():
    rules = nat.local_synproxy_rules(
        [(ipaddress.ip_address("2001:db8::1"), 80), (ipaddress.ip_address("198.18.0.1"), 443)]
    )
    assert [r["add"]["rule"]["comment"] for r in rules] == ["http/198.18.0.1/443", "http/2001:db8::1/80"]
    batch = nat.build_ruleset([], synproxy=True, local_tcp=[(ipaddress.ip_address("198.18.0.1"), 80)])
    assert any(x.get("add", {}).get("rule", {}).get("comment") == "http/198.18.0.1/80" for x in batch["nftables"])
    assert not any("dnat" in str(x) for x in batch["nftables"])  # served locally: no NAT


def svc(name="www", level="normal", **kw) -> HttpService:
    return HttpService(name, listen=("198.18.0.1",), backends=("198.18.1.2:80",), level=level, **kw)


def test_which_offenders_become_bans():
    a, b, c, d, e = (ipaddress.ip_address(f"198.18.0.{i}") for i in (66, 67, 68, 69, 70))
    now = 1_000_000.0
    found = [
        Offender("www", a, "punished", 500, 0, "deny", until=int(now) + 500),
        Offender("www", a, "requests", 900, 300, "deny"),
        Offender("www", b, "prefix", 50, 5, "challenge", detail="/login per 10 s"),  # a browser passes it
        Offender("www", c, "prefix", 50, 5, "deny", detail="/login per 10 s"),
        Offender("www", d, "concurrent", 200, 100, "reject"),
        Offender("www", e, "requests", 400, 300, "deny"),
    ]
    allow = lambda x: x == e  # noqa: E731 (allowlisted)
    got = {x.address: x for x in bans.select(found, [svc(level="strict")], now, allow)}
    assert set(got) == {str(a), str(c), str(d)}
    # a bot that failed every challenge the service ceiling gave it is banned too
    f = ipaddress.ip_address("198.18.16.1")
    bot = bans.select([Offender("www", f, "challenged", 40, 8, "challenge")], [svc()], now)
    assert [(x.address, x.kind, x.ttl_s) for x in bot] == [(str(f), "challenged", 60)]
    assert got[str(a)].ttl_s == 500  # until - now beats the level's punishment
    assert got[str(d)].ttl_s == 300  # strict punishes for 300 s
    assert len(bans.select(found, [svc()], now, cap=1)) == 1
    # a client holding a valid challenge cookie is never banned, whatever it did
    from dataclasses import replace

    assert bans.select([replace(o, verified=True) for o in found], [svc()], now) == []


def test_offenders_know_the_verified_sources():
    from xdpguard.core.l7.runtime import Table, TableEntry, service_offenders

    s = svc()
    a, b = ipaddress.ip_address("198.18.0.66"), ipaddress.ip_address("198.18.0.10")
    now = 1_000_000
    src = Table(
        "www_src",
        "ipv6",
        100,
        2,
        (
            TableEntry(a, 1000, {"http_req_rate(10000)": 900}),
            TableEntry(b, 1000, {"http_req_rate(10000)": 900, "gpt2": now + 600}),
        ),
    )
    got = {o.address: o.verified for o in service_offenders({"www_src": src}, s, now)}
    assert got == {a: False, b: True}


def test_service_rate_round_trips_and_is_checked():
    d = {"name": "w", "backends": ["198.18.1.2:80"], "service_rate": 50}
    s = schema.from_data(d, ipaddress.ip_address("198.18.0.1"))
    assert s.effective_service_rate() == 50 and schema.to_data(s)["service_rate"] == 50
    assert "service_rate" not in schema.to_data(svc())  # the level's, not written out
    assert svc().effective_service_rate() == 50 and svc(level="loose").effective_service_rate() == 500
    s2 = schema.from_data({**d, "backend_conns": 30}, ipaddress.ip_address("198.18.0.1"))
    assert s2.effective_backend_conns() == 30 and schema.to_data(s2)["backend_conns"] == 30
    assert svc().effective_backend_conns() == 100 and svc(level="emergency").effective_backend_conns() == 25
    for bad, needle in ((0, "must be at least 1"), ("5", "must be a whole number"), (10**7, "service rate")):
        with pytest.raises(Exception) as ei:
            schema.from_data({**d, "service_rate": bad}, ipaddress.ip_address("198.18.0.1"))
        assert type(ei.value).__name__ == "UserError" and needle in str(ei.value), (bad, ei.value)


def test_schema_refuses_bad_shapes():
    for bad, needle in (
        ({"name": "w"}, "needs backends"),
        ({"backends": ["198.18.1.2:80"]}, "needs a name"),
        ({"name": "w", "backends": "198.18.1.2:80", "port": "80"}, "http port must be a whole number"),
        ({"name": "w", "backends": ["198.18.1.2:80"], "rule": [{"host": "a.example"}]}, "needs an action"),
        (
            {"name": "w", "backends": ["198.18.1.2:80"], "connections": {"concurrent": 1}},
            "needs concurrent and new_per_10s",
        ),
    ):
        with pytest.raises(Exception) as ei:
            schema.from_data(bad, ipaddress.ip_address("198.18.0.1"))
        assert type(ei.value).__name__ == "UserError" and needle in str(ei.value), (bad, ei.value)
