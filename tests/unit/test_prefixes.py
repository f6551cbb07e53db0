"""CIDR parsing for the allow/block lists: parse_prefix and read_prefix_file."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdpguard.core.errors import UserError
from xdpguard.core.prefixes import Prefix, parse_prefix, read_prefix_file


@pytest.mark.parametrize(
    "text, family, addr, plen",
    [
        ("198.18.0.0/15", 4, "198.18.0.0", 15),
        ("203.0.113.7/32", 4, "203.0.113.7", 32),
        ("0.0.0.0/0", 4, "0.0.0.0", 0),
        ("203.0.113.7", 4, "203.0.113.7", 32),
        ("  198.51.100.0/24\n", 4, "198.51.100.0", 24),
        ("2001:db8::/32", 6, "2001:db8::", 32),
        ("2001:db8:bad::7/128", 6, "2001:db8:bad::7", 128),
        ("::/0", 6, "::", 0),
        ("2001:db8::1", 6, "2001:db8::1", 128),
        ("2001:DB8:0:0::/64", 6, "2001:db8::", 64),
    ],
)
def test_parse_valid(text, family, addr, plen):
    parsed = parse_prefix(text)
    assert parsed.prefix == Prefix(family, ipaddress.ip_address(addr).packed, plen)
    assert parsed.normalised_from is None
    assert str(parsed.prefix) == f"{addr}/{plen}"


@pytest.mark.parametrize(
    "text, stored",
    [
        ("198.18.0.1/15", "198.18.0.0/15"),
        ("203.0.113.77/24", "203.0.113.0/24"),
        ("10.1.2.3/0", "0.0.0.0/0"),
        ("2001:db8::1/32", "2001:db8::/32"),
        ("2001:db8:bad:1::7/48", "2001:db8:bad::/48"),
    ],
)
def test_host_bits_are_cleared_and_reported(text, stored):
    parsed = parse_prefix(text)
    assert str(parsed.prefix) == stored
    assert parsed.normalised_from == text


@pytest.mark.parametrize(
    "text, says",
    [
        ("not-an-ip/24", "not an IPv4 address"),
        ("198.18.0.256/24", "not an IPv4 address"),
        ("1.2.3", "not an IPv4 address"),
        ("", "not an IPv4 address"),
        ("2001:db8::g/32", "not an IPv6 address"),
        ("198.18.0.0/33", "exceeds 32"),
        ("198.18.0.0/64", "exceeds 32"),
        ("2001:db8::/129", "exceeds 128"),
        ("198.18.0.0/abc", "not a number"),
        ("198.18.0.0/-1", "not a number"),
        ("198.18.0.0/", "not a number"),
        ("198.18.0.0/24/8", "not a number"),
    ],
)
def test_parse_errors_name_the_input(text, says):
    with pytest.raises(UserError) as err:
        parse_prefix(text)
    msg = err.value.message
    assert f"'{text}'" in msg and says in msg
    assert "\n" not in msg


def test_non_ascii_digit_prefix_length_is_a_user_error():
    with pytest.raises(UserError):
        parse_prefix("198.18.0.0/²")


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a loaded 2-core machine
@given(
    st.one_of(
        st.tuples(st.ip_addresses(v=4), st.integers(0, 32)),
        st.tuples(st.ip_addresses(v=6), st.integers(0, 128)),
    )
)
def test_round_trip(addr_plen):
    addr, plen = addr_plen
    net = ipaddress.ip_network(f"{addr}/{plen}", strict=False)
    parsed = parse_prefix(str(net))
    assert parsed.normalised_from is None
    assert ipaddress.ip_network(str(parsed.prefix)) == net
    # Text equality, except where inet_ntop prints an embedded IPv4 address (::ffff:1.2.3.4,
    # ::1.2.3.4) that Python 3.11's ipaddress prints in hex: both are valid spellings.
    if not (net.version == 6 and "." in str(parsed.prefix)):
        assert str(parsed.prefix) == str(net)


# ---- files ----


def test_file_with_comments_blanks_and_mixed_families(tmp_path):
    f = tmp_path / "list.txt"
    f.write_text(
        "# attackers seen on Monday\n"
        "\n"
        "203.0.113.7\n"
        "   198.51.100.0/24   # a whole TEST-NET\n"
        "2001:db8:bad::/48\n"
        "\t\n"
        "198.18.0.1/15\n"
        "# trailing comment without newline"
    )
    pf = read_prefix_file(f)
    assert [str(p) for p in pf.prefixes] == ["203.0.113.7/32", "198.51.100.0/24", "2001:db8:bad::/48", "198.18.0.0/15"]
    assert pf.normalised == 1
    assert pf.lines == 8


def test_empty_file(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("")
    assert read_prefix_file(f).prefixes == []


@pytest.mark.parametrize(
    "lines, bad_line, names",
    [
        (["203.0.113.7", "# fine", "", "198.18.0.0/33"], 4, "198.18.0.0/33"),
        (["bogus"], 1, "bogus"),
        (["2001:db8::/32", "2001:db8::/200", "203.0.113.0/24"], 2, "2001:db8::/200"),
    ],
)
def test_bad_line_reports_path_and_line(tmp_path, lines, bad_line, names):
    f = tmp_path / "bad.txt"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as err:
        read_prefix_file(f)
    msg = err.value.message
    assert msg.startswith(f"{f}:{bad_line}: ")
    assert names in msg
    assert msg.endswith("nothing was loaded")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        read_prefix_file(tmp_path / "absent.txt")


def test_a_prefix_file_is_parsed_once_while_it_stays_the_same(tmp_path, monkeypatch):
    """read_prefix_set caches by (device, inode, size, mtime): the store is loaded several times
    by one command. A rewrite (by rename, as the store writes), an edit or a deletion is seen."""
    import os

    from xdpguard.core import prefixes

    f = tmp_path / "list"
    f.write_text("198.51.100.0/24\n2001:db8::1\n")
    calls = []
    real = prefixes.read_prefix_file
    monkeypatch.setattr(prefixes, "read_prefix_file", lambda p: calls.append(p) or real(p))
    first = prefixes.read_prefix_set(f)
    assert [str(p) for p in first] == ["198.51.100.0/24", "2001:db8::1/128"]
    assert prefixes.read_prefix_set(f) is first and len(calls) == 1
    tmp = tmp_path / "list.tmp"
    tmp.write_text("203.0.113.0/24\n")
    os.replace(tmp, f)  # a new inode
    assert [str(p) for p in prefixes.read_prefix_set(f)] == ["203.0.113.0/24"] and len(calls) == 2
    f.write_text("203.0.113.0/24\n198.18.0.0/15\n")  # edited in place: size and mtime change
    assert len(prefixes.read_prefix_set(f)) == 2 and len(calls) == 3
    f.unlink()
    with pytest.raises(UserError, match="cannot read"):
        prefixes.read_prefix_set(f)
