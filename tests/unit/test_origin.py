"""`xdpguard origin-rules`: the pure builders (the lab test applies them: test_hidden_origin)."""

from __future__ import annotations

import ipaddress

from xdpguard.core.nat import origin
from xdpguard.core.model.forwarding import Backend, ForwardRule

A = ipaddress.ip_address


def rules():
    return [
        ForwardRule("tcp", A("198.18.0.1"), 80, 80, (Backend(A("198.18.1.2")), Backend(A("198.18.1.3"), 8080))),
        ForwardRule("tcp", A("198.18.0.1"), 7, 7, (Backend(A("198.18.1.2")),)),
        ForwardRule("udp", A("198.18.0.1"), 5000, 5002, (Backend(A("198.18.1.2")),)),
        ForwardRule("tcp", A("2001:db8::1"), 443, 443, (Backend(A("2001:db8:2::2")),), preserve_client_ip=True),
    ]


def egress(addr):
    return ("2001:db8:2::1" if addr.version == 6 else "198.18.1.1"), "02:00:00:00:00:01"


def test_services_group_ports_per_backend_and_mode():
    svc = origin.services(rules(), egress)
    assert svc == [
        origin.OriginService("198.18.1.2", "tcp", ((7, 7), (80, 80)), ("198.18.1.1",)),
        origin.OriginService("198.18.1.2", "udp", ((5000, 5002),), ("198.18.1.1",)),
        origin.OriginService("198.18.1.3", "tcp", ((8080, 8080),), ("198.18.1.1",)),
        origin.OriginService("2001:db8:2::2", "tcp", ((443, 443),), (), ("02:00:00:00:00:01",)),
    ]


def test_nft_text():
    text = origin.nft_text(origin.services(rules(), egress))
    assert "table inet xdpguard_origin {" in text
    assert "ip daddr 198.18.1.2 tcp dport { 7, 80 } ip saddr 198.18.1.1 accept" in text
    assert "ip daddr 198.18.1.2 tcp dport { 7, 80 } reject with tcp reset" in text
    assert "ip daddr 198.18.1.2 udp dport 5000-5002 ip saddr 198.18.1.1 accept" in text
    assert "ip daddr 198.18.1.2 udp dport 5000-5002 reject" in text
    assert "ip6 daddr 2001:db8:2::2 tcp dport 443 ether saddr 02:00:00:00:00:01 accept" in text
    # every accept comes before the reject of the same match
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().endswith("accept") or "accept  #" in line:
            assert "reject" in lines[i + 1]


def test_iptables_text():
    text = origin.iptables_text(origin.services(rules(), egress))
    assert "iptables -A INPUT -d 198.18.1.2 -p tcp -m multiport --dports 7,80 -s 198.18.1.1 -j ACCEPT" in text
    assert "iptables -A INPUT -d 198.18.1.2 -p tcp -m multiport --dports 7,80 -j REJECT --reject-with tcp-reset" in text
    assert "iptables -A INPUT -d 198.18.1.2 -p udp -m multiport --dports 5000:5002 -j REJECT" in text
    assert (
        "ip6tables -A INPUT -d 2001:db8:2::2 -p tcp -m multiport --dports 443 -m mac --mac-source "
        "02:00:00:00:00:01 -j ACCEPT"
    ) in text


def test_cli_bad_format_is_one_line_exit_2(capsys):
    from cli_helpers import one_line_error

    from xdpguard.cli.main import run

    assert run(["origin-rules", "--format", "xml"]) == 2
    assert "xml" in one_line_error(capsys)
