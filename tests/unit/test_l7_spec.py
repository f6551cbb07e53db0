"""HTTP service specs (xdpguard/core/l7/spec.py): what is accepted, how it is normalised, and
that every bad value is one UserError naming the field — never another exception."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest

from xdpguard.core.errors import UserError
from xdpguard.core.l7.spec import PRESETS, ConnLimits, HttpService, RateLimit, Rule, Tls, check_services


def svc(**kw) -> HttpService:
    base = {"name": "web", "listen": ["198.18.0.1"], "backends": ["198.18.1.2:80"]}
    return HttpService(**{**base, **kw})


def make_cert(d: Path, name: str = "site") -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=example.com",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_a_service_is_normalised():
    s = svc(
        listen=["198.18.0.1", "[2001:db8::1]", "198.18.0.1"],
        backends=["198.18.1.2:80", "[2001:db8::2]:8080"],
        domains=["Example.COM.", "*.Ex.org", "bücher.de", "example.com"],
        level="Strict",
    )
    assert s.listen == (ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("2001:db8::1"))
    assert s.backends == ((ipaddress.ip_address("198.18.1.2"), 80), (ipaddress.ip_address("2001:db8::2"), 8080))
    assert s.domains == ("example.com", "*.ex.org", "xn--bcher-kva.de")
    assert s.level == "strict" and s.preset is PRESETS["strict"]
    assert s.effective_conns() == PRESETS["strict"].conns
    assert svc().level == "normal"


def test_limits_are_scaled_by_level_and_ordered_longest_prefix_first():
    lims = [RateLimit("/api", 50), RateLimit("/api/login", 5, action="tarpit"), RateLimit("/", 3)]
    assert [(x.prefix, x.requests) for x in svc(limits=lims).effective_limits()] == [
        ("/api/login", 5),
        ("/api", 50),
        ("/", 3),
    ]
    assert [(x.prefix, x.requests) for x in svc(limits=lims, level="emergency").effective_limits()] == [
        ("/api/login", 1),
        ("/api", 12),
        ("/", 1),
    ]
    assert [x.requests for x in svc(limits=lims, level="loose").effective_limits()] == [10, 100, 6]


def test_rule_normalises_and_lists_its_conditions():
    r = Rule(
        "DROP",
        methods=["post", "POST", "get"],
        headers=["X-Token"],
        absent_headers=["Accept"],
        user_agent_regex="(?i)python-requests",
    )
    assert r.action == "drop" and r.methods == ("POST", "GET")
    assert r.headers == ("x-token",) and r.absent_headers == ("accept",)
    assert r.conditions() == ["methods", "user_agent_regex", "headers", "absent_headers"]


BAD = [
    (lambda: svc(name="Web"), "invalid service name 'Web'"),
    (lambda: svc(name="1web"), "invalid service name"),
    (lambda: svc(name="a" * 40), "invalid service name"),
    (lambda: svc(listen=[]), "give at least one listen address"),
    (lambda: svc(listen=["example.com"]), "invalid listen address of web 'example.com'"),
    (lambda: svc(backends=[]), "give at least one backend"),
    (lambda: svc(backends=["backend.local:80"]), "use an IP address, not a name"),
    (lambda: svc(backends=["198.18.1.2"]), "invalid backend of web"),
    (lambda: svc(backends=["198.18.1.2:0"]), "outside 1-65535"),
    (lambda: svc(port=70000), "invalid port of web"),
    (lambda: svc(domains=["exa mple.com"]), "invalid domain of web 'exa mple.com'"),
    (lambda: svc(domains=["-bad.com"]), "invalid domain of web"),
    (lambda: svc(domains=["localhost"]), "invalid domain of web"),
    (lambda: svc(domains=["a." * 130 + "com"]), "invalid domain of web"),
    (lambda: svc(domains=["1.2.3.4"]), "invalid domain of web"),
    (lambda: svc(domains=["foo.*.com"]), "invalid domain of web"),
    (lambda: svc(level="paranoid"), "invalid level of web 'paranoid': use one of loose, normal, strict, emergency"),
    (lambda: svc(health_path="health"), "invalid health check path of web 'health'"),
    (lambda: svc(exempt=["/api x"]), "invalid exempt path of web"),
    (lambda: svc(exempt=["/a'b"]), "invalid exempt path of web"),
    (lambda: svc(challenge_ttl_s=10), "invalid challenge lifetime of web 10: must be at least 60"),
    (lambda: svc(limits=[RateLimit("/a"), RateLimit("/a", 3)]), "two limits on the prefix '/a'"),
    (lambda: svc(limits=[{"prefix": "/"}]), "give RateLimit records"),
    (lambda: svc(tls="/etc/cert.pem"), "invalid TLS of web"),
    (lambda: RateLimit("/", 0), "invalid limit requests for / 0: must be at least 1"),
    (lambda: RateLimit("/", "lots"), "invalid limit requests for / 'lots': not a number"),
    (lambda: RateLimit("/", 10, window_s=0), "invalid limit window for /"),
    (lambda: RateLimit("/", 10, window_s=7200), "above the limit of 3,600"),
    (lambda: RateLimit("/", 10, action="ban"), "invalid limit action for / 'ban': use one of challenge, deny"),
    (lambda: RateLimit("/", 10, punish_s=-1), "invalid limit punishment for /"),
    (lambda: RateLimit("api", 10), "invalid limit prefix 'api'"),
    (lambda: Rule("allow"), "give at least one condition"),
    (lambda: Rule("block", methods=["GET"]), "invalid rule action 'block': use one of allow, challenge, drop"),
    (lambda: Rule("drop", uri_regex="(unclosed"), "invalid rule uri regex '(unclosed'"),
    (lambda: Rule("drop", user_agent_regex="a'b"), "must not contain a single quote"),
    (lambda: Rule("drop", referer_regex="a\nb"), "contains a control character"),
    (lambda: Rule("drop", user_agent_regex=""), "invalid rule user agent regex: empty"),
    (lambda: Rule("drop", methods=["GE T"]), "invalid rule method 'GE T'"),
    (lambda: Rule("drop", headers=["x:y"]), "invalid rule header 'x:y'"),
    (lambda: Rule("drop", cookies=["a=b"]), "invalid rule cookie 'a=b'"),
    (lambda: Rule("drop", headers=["X-A"], absent_headers=["x-a"]), "cannot be both present and absent"),
    (lambda: Rule("drop", host="not a host"), "invalid rule host"),
    (lambda: ConnLimits(0, 10), "invalid concurrent connections per source 0"),
    (lambda: ConnLimits(10, "1e99"), "invalid new connections per source"),
    (lambda: Tls("relative.pem", "/k"), "give an absolute path"),
    (lambda: Tls("/nonexistent/cert.pem", "/nonexistent/key.pem"), "no such file"),
    (lambda: svc(name="web\x00"), "contains a NUL byte"),
]


@pytest.mark.parametrize("make,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_values_are_one_user_error(make, message):
    with pytest.raises(UserError) as exc:
        make()
    assert message in exc.value.message
    assert "\n" not in exc.value.message


def test_two_services_cannot_share_a_socket_or_a_name():
    a = svc()
    with pytest.raises(UserError, match="198.18.0.1:80 is already served by web"):
        check_services([a, svc(name="other")])
    with pytest.raises(UserError, match="two services named 'web'"):
        check_services([a, svc(port=8080)])
    assert check_services([a, svc(name="other", port=8080)])[1].port == 8080


def test_tls_checks_that_cert_and_key_belong_together(tmp_path):
    cert, key = make_cert(tmp_path, "a")
    _, other_key = make_cert(tmp_path, "b")
    tls = Tls(str(cert), str(key))
    assert "BEGIN CERTIFICATE" in tls.bundle() and "PRIVATE KEY" in tls.bundle()
    with pytest.raises(UserError, match="invalid TLS certificate .* with key .*"):
        Tls(cert, other_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(UserError, match="invalid TLS certificate"):
        Tls(garbage, key)
    assert svc(tls=tls, port=443).tls == tls
