"""Fingerprint derivation (mitigation.derive): flood samples + peacetime samples → a filter,
and the refusals that keep a mitigation from hurting real traffic."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from xdpguard.core import levels, policy
import ipaddress
from xdpguard.core.model.desired import norm_filter
from xdpguard.core.desired.load import build_filter, ConfigError, loads
from xdpguard.core.desired.dump import to_toml
from xdpguard.core.desired.diff import diff as desired_diff
from xdpguard.core.model import forwarding
from xdpguard.core.daemon import mitigation
from xdpguard.core.nat import nft as nat
from xdpguard.core.errors import UserError

DST = "198.18.0.1"


@dataclass(frozen=True)
class FakeSample:  # the fields of sampling.PacketSample that mitigation reads
    data: bytes
    pkt_len: int
    family: int
    dst: str
    reason: str = "clean"
    kind: str = "pass"
    sample_every: int = 64


def sample(pkt, reason="clean", kind="pass") -> mitigation.Features:
    raw = (
        bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt)
        if not isinstance(pkt, Ether)
        else bytes(pkt)
    )
    fam = 6 if IPv6 in pkt else 4
    dst = pkt[IPv6].dst if fam == 6 else pkt[IP].dst
    f = mitigation.features_of(FakeSample(raw[:128], len(raw), fam, dst, reason, kind))
    assert f is not None
    return f


def rsrc(rng: random.Random) -> str:
    return f"198.18.{rng.randrange(128, 256)}.{rng.randrange(1, 255)}"


def udp_flood(n, rng, size=64, payload=b"X", ttl=64, dport=7, sport=None):
    return [
        sample(
            IP(src=rsrc(rng), dst=DST, ttl=ttl, id=rng.randrange(65536))
            / UDP(sport=sport or rng.randrange(1024, 65535), dport=dport)
            / (payload * size)[:size]
        )
        for _ in range(n)
    ]


def udp_clients(n, rng, dport=7):
    """Real clients: random payloads and lengths, a few TTLs."""
    return [
        sample(
            IP(src=f"198.18.3.{rng.randrange(2, 250)}", dst=DST, ttl=rng.choice([63, 64, 127]), id=rng.randrange(65536))
            / UDP(sport=rng.randrange(32768, 61000), dport=dport)
            / rng.randbytes(rng.randrange(5, 400))
        )
        for _ in range(n)
    ]


def tcp_clients(n, rng):
    out = []
    for _ in range(n):
        flags = rng.choice(["S", "A", "PA", "FA"])
        out.append(
            sample(
                IP(src=f"198.18.3.{rng.randrange(2, 250)}", dst=DST, ttl=64, id=rng.randrange(65536))
                / TCP(sport=rng.randrange(32768, 61000), dport=80, flags=flags, seq=rng.randrange(1 << 32))
                / (rng.randbytes(rng.randrange(0, 300)) if "P" in flags else b"")
            )
        )
    return out


TS_OPTS = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]


def linux_web_clients(n, rng, src="198.18.3.{}", ts=True):
    """A Linux HTTP client's segments, a new connection per request: SYN with options, then ACK,
    request, FIN — with the timestamp option (66-byte ACKs) or without (a SYN-cookie handshake:
    54-byte bare ACKs)."""
    out = []
    for i in range(n):
        flags = ["S", "A", "PA", "FA", "A"][i % 5]
        opts = (
            [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
            if flags == "S"
            else (TS_OPTS if ts else [])
        )
        out.append(
            sample(
                IP(src=src.format(rng.randrange(2, 250)), dst=DST, ttl=64, id=rng.randrange(65536))
                / TCP(sport=rng.randrange(32768, 61000), dport=80, flags=flags, options=opts)
                / (b"GET / HTTP/1.0\r\n\r\n" if "P" in flags else b"")
            )
        )
    return out


SVC_UDP = (DST, "udp", 7)
MIN = mitigation.MIN_BASELINE
SVC_TCP = (DST, "tcp", 80)


def test_features_of_parses_vlan_ipv4_udp():
    f = sample(Ether() / Dot1Q(vlan=5) / IP(src="198.18.0.9", dst=DST, ttl=33, id=4242) / UDP(sport=5, dport=7) / b"ab")
    assert (f.proto, f.sport, f.dport, f.ttl, f.ipid) == ("udp", 5, 7, 33, 4242)
    assert f.l3_off == 18 and f.l4_off == 38 and f.payload_off == 46 and f.length == 48
    assert f.service == (DST, "udp", 7)


def test_hping3_like_udp_flood_gives_length_and_payload():
    rng = random.Random(1)
    d = mitigation.derive(udp_flood(80, rng, size=120), udp_clients(300, rng), SVC_UDP, 0.01)
    assert d.filter is not None, d.refused
    f = d.filter
    assert f.action == "mitigate" and f.proto == "udp" and f.dport == (7, 7)
    assert f.length == (14 + 20 + 8 + 120,) * 2
    assert f.payload == b"X" * 16 and f.payload_base == "payload" and f.payload_off == 0
    assert f.ttl == (64, 64)
    assert f.sport == (0, 65535)  # random source ports are no part of it
    assert d.coverage == 1.0 and d.baseline_share <= 0.01


def test_fingerprint_matches_flood_not_clients_on_fresh_samples():
    rng = random.Random(2)
    d = mitigation.derive(udp_flood(60, rng, size=200, payload=b"\x00"), udp_clients(300, rng), SVC_UDP, 0.01)
    assert d.filter is not None, d.refused
    assert mitigation.share_matching(d.filter, udp_flood(500, rng, size=200, payload=b"\x00")) == 1.0
    assert mitigation.share_matching(d.filter, udp_clients(2000, rng)) <= 0.01


def test_flood_mixed_with_real_traffic_takes_the_flood_cluster():
    rng = random.Random(3)
    attack = udp_flood(70, rng, size=32, payload=b"Q") + udp_clients(30, rng)
    d = mitigation.derive(attack, udp_clients(300, rng), SVC_UDP, 0.01)
    assert d.filter is not None, d.refused
    assert 0.6 <= d.coverage <= 0.75
    assert d.filter.length == (74, 74)


def test_flood_at_the_start_of_a_service_spares_its_clients():
    """No baseline yet (the flood began 2 s after the service's first client, as in the lab):
    the samples are 90 % flood (hping3 SYN: 54 bytes, TTL 64, flags S) and 10 % the client's
    own packets (TTL 64 too). The fingerprint must not sweep the client in with a length range."""
    rng = random.Random(7)
    flood = [
        sample(
            IP(src=rsrc(rng), dst=DST, ttl=64, id=rng.randrange(65536))
            / TCP(sport=rng.randrange(1024, 65535), dport=80, flags="S", window=512)
        )
        for _ in range(90)
    ]
    client = [
        sample(
            IP(src="198.18.0.10", dst=DST, ttl=64, id=rng.randrange(65536))
            / TCP(
                sport=rng.randrange(32768, 61000),
                dport=80,
                flags=f,
                options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))],
            )
            / (b"GET / HTTP/1.0\r\n" * rng.randrange(0, 6) if "P" in f else b"")
        )
        for f in ["A", "PA", "A", "FA", "A", "PA", "A", "A", "PA", "A"]
    ]
    # no baseline: 0 samples is no evidence, whatever the fingerprint
    d = mitigation.derive(flood + client, [], SVC_TCP, 0.01)
    assert d.filter is None and "no peacetime baseline (0 samples)" in d.refused, d
    # with a baseline of the service's real clients (SYNs with options, timestamped ACKs)
    d = mitigation.derive(flood + client, linux_web_clients(40, rng), SVC_TCP, 0.01)
    assert d.filter is not None, d.refused
    assert mitigation.share_matching(d.filter, client) == 0.0, d.conditions
    assert d.coverage >= 0.85


def test_established_connections_are_never_flood_and_refuse_a_fingerprint_matching_them():
    """The widen seen in the lab: the first filter (hping3 SYN: length 54, flags S) drops the
    flood, no baseline exists yet, and what still passes is the real client (its SYNs, ACKs,
    requests). Fed to derive as flood it gave "length 54-144, ttl 64" and cut the client off.
    `established` picks the client's connection segments (only while XDP validates TCP state);
    they are not flood, and a fingerprint matching them is refused."""
    rng = random.Random(11)
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    client = [
        sample(
            IP(src="198.18.0.10", dst=DST, ttl=64, id=rng.randrange(65536))
            / TCP(sport=rng.randrange(32768, 61000), dport=80, flags=f, options=opts)
            / (b"GET / HTTP/1.0\r\n" * rng.randrange(1, 6) if "P" in f else b"")
        )
        for f in ["S", "A", "PA", "FA", "A"] * 12
    ]
    est = mitigation.established(client, tcpstate_enforced=True)
    assert len(est) == 48 and all(x.tcp_flags & 0x10 and not x.tcp_flags & 0x02 for x in est)
    assert mitigation.established(client, tcpstate_enforced=False) == []
    # not from a would-drop or a rate-limited sample: only what passed as clean
    assert (
        mitigation.established([sample(IP(dst=DST) / TCP(dport=80, flags="A"), "tcpstate", "would_drop")], True) == []
    )
    # without the guard the client's own packets make a fingerprint that matches them
    blind = mitigation.derive(client, [], SVC_TCP, 0.01)
    assert blind.filter is None and "no peacetime baseline" in blind.refused  # 0 samples is no evidence
    blind = mitigation.derive(client, udp_clients(300, rng, dport=80), SVC_TCP, 0.01)
    assert blind.filter is not None and mitigation.share_matching(blind.filter, est) > 0.5
    # with it: nothing of the client's source is flood, its SYNs neither
    assert mitigation.not_from_clients(client, est) == []
    # a real flood next to the client is still fingerprinted, and spares the client's SYNs too
    # (hping3's bare 54-byte SYN, not the client's 74-byte one with options)
    flood = [
        sample(
            IP(src=rsrc(rng), dst=DST, ttl=64, id=rng.randrange(65536))
            / TCP(sport=rng.randrange(1024, 65535), dport=80, flags="S", window=512)
        )
        for _ in range(200)
    ]
    left = mitigation.not_from_clients(flood + client, est)
    assert left == flood
    d = mitigation.derive(left, [], SVC_TCP, 0.01, clients=est)
    assert d.filter is not None, d.refused
    assert mitigation.share_matching(d.filter, client) == 0.0 and d.coverage == 1.0
    assert d.filter.length == (54, 54), d.conditions
    # IPv6 sources are told apart too
    six = [sample(IPv6(src=s, dst="2001:db8::1") / TCP(dport=80, flags="A")) for s in ("2001:db8::a", "2001:db8::b")]
    assert mitigation.not_from_clients(six, six[:1]) == six[1:]
    # a fingerprint that would match the established packets is refused, naming them
    d = mitigation.derive(est, [], SVC_TCP, 0.01, clients=est)
    assert d.filter is None and "established connections" in d.refused, d


def test_varied_lengths_give_a_range_when_narrow():
    rng = random.Random(4)
    attack = [
        sample(
            IP(src=rsrc(rng), dst=DST, ttl=200)
            / UDP(sport=rng.randrange(1024, 65535), dport=7)
            / rng.randbytes(rng.randrange(500, 600))
        )
        for _ in range(100)
    ]
    d = mitigation.derive(attack, udp_clients(300, rng), SVC_UDP, 0.01)
    assert d.filter is not None, d.refused
    lo, hi = d.filter.length
    assert 542 <= lo < 560 and 630 < hi <= 642
    assert d.filter.ttl == (200, 200)


def test_ack_flood_gives_flags_and_ttl():
    """A bare-ACK flood gets a filter only with a condition real clients do not share (here a TTL
    no real stack arrives with): a bare ACK of a client TTL is what every client sends."""
    rng = random.Random(5)
    attack = [
        sample(
            IP(src=rsrc(rng), dst=DST, ttl=200, id=rng.randrange(65536))
            / TCP(sport=rng.randrange(1024, 65535), dport=80, flags="A", seq=rng.randrange(1 << 32))
        )
        for _ in range(50)
    ]
    d = mitigation.derive(attack, tcp_clients(300, rng), SVC_TCP, 0.01)
    assert d.filter is not None, d.refused
    assert d.filter.tcp_flags == (0xFF, 0x10) and d.filter.ttl == (200, 200)
    for ttl in (255, 64, 120):
        flood = [
            sample(
                IP(src=rsrc(rng), dst=DST, ttl=ttl, id=rng.randrange(65536))
                / TCP(sport=rng.randrange(1024, 65535), dport=80, flags="A", seq=rng.randrange(1 << 32))
            )
            for _ in range(50)
        ]
        # the baseline's clients are timestamped (66-byte ACKs): it shows 0 % and still is no evidence,
        # since the same clients send 54-byte ACKs once a SYN-cookie handshake drops the option
        base = linux_web_clients(300, rng)
        assert (
            mitigation.share_matching(
                policy.Filter(action="mitigate", proto="tcp", length=(54, 54), tcp_flags=(0xFF, 0x10)), base
            )
            == 0.0
        )
        d = mitigation.derive(flood, base, SVC_TCP, 0.01)
        assert d.filter is None and "bare TCP segment (length 54, flags ack)" in d.refused, (ttl, d)


def test_constant_ip_id_when_nothing_else_is_left():
    rng = random.Random(6)
    attack = [
        sample(
            IP(src=rsrc(rng), dst=DST, ttl=rng.randrange(30, 250), id=31337)
            / UDP(sport=rng.randrange(1024, 65535), dport=7)
            / rng.randbytes(rng.randrange(10, 1400))
        )
        for _ in range(60)
    ]
    d = mitigation.derive(attack, udp_clients(300, rng), SVC_UDP, 0.01)
    assert d.filter is not None, d.refused
    assert (d.filter.payload_base, d.filter.payload_off, d.filter.payload) == ("l3", 4, b"\x7a\x69")


def test_fingerprint_matching_the_baseline_is_refused():
    """A flood that looks like the real clients (same length, payload, TTL) must not be filtered."""
    rng = random.Random(7)
    look_alike = udp_flood(300, rng, size=48, payload=b"PING")  # the service's usual request
    d = mitigation.derive(udp_flood(80, rng, size=48, payload=b"PING"), look_alike, SVC_UDP, 0.01)
    assert d.filter is None
    assert "peacetime" in d.refused and d.baseline_share > 0.9


def test_refused_above_the_configured_share_and_accepted_below():
    rng = random.Random(8)
    flood = udp_flood(80, rng, size=100, payload=b"Z")
    base = udp_clients(294, rng) + udp_flood(6, rng, size=100, payload=b"Z")  # 2% of peacetime looked like it
    assert mitigation.derive(flood, base, SVC_UDP, 0.01).filter is None
    d = mitigation.derive(flood, base, SVC_UDP, 0.05)
    assert d.filter is not None and 0.015 < d.baseline_share < 0.025


def test_flood_sharing_nothing_is_refused():
    rng = random.Random(9)
    attack = [
        sample(
            IP(src=rsrc(rng), dst=DST, ttl=rng.randrange(1, 256), id=rng.randrange(65536))
            / UDP(sport=rng.randrange(1024, 65535), dport=7)
            / rng.randbytes(rng.randrange(0, 1400))
        )
        for _ in range(100)
    ]
    d = mitigation.derive(attack, udp_clients(300, rng), SVC_UDP, 0.01)
    assert d.filter is None and "nothing" in d.refused


def test_too_few_samples_and_no_baseline():
    rng = random.Random(10)
    assert "flood samples" in mitigation.derive(udp_flood(3, rng), [], SVC_UDP, 0.01).refused
    # no baseline at all: one condition is not enough
    attack = [
        sample(
            IP(src=rsrc(rng), dst=DST, ttl=rng.randrange(1, 256), id=rng.randrange(65536))
            / UDP(sport=rng.randrange(1024, 65535), dport=7)
            / rng.randbytes(400)
        )
        for _ in range(50)
    ]
    d = mitigation.derive(attack, [], SVC_UDP, 0.01)
    assert d.filter is None and "baseline" in d.refused
    # nor are two conditions, or three: "0.0 % of 0 peacetime samples" is no evidence
    d = mitigation.derive(udp_flood(50, rng), [], SVC_UDP, 0.01)
    assert d.filter is None and "no peacetime baseline (0 samples)" in d.refused, d
    d = mitigation.derive(udp_flood(50, rng), udp_clients(MIN - 1, rng), SVC_UDP, 0.01)
    assert d.filter is None and "no peacetime baseline" in d.refused, d


def test_service_baseline_too_small_uses_the_interface_baseline():
    rng = random.Random(11)
    flood = udp_flood(80, rng, size=48, payload=b"PING")
    iface_wide = udp_flood(100, rng, size=48, payload=b"PING", dport=7)  # the interface sees this in peacetime
    d = mitigation.derive(flood, udp_clients(5, rng), SVC_UDP, 0.01, wider_baseline=iface_wide)
    assert d.filter is None and "peacetime" in d.refused


def test_ipv6_flood():
    rng = random.Random(12)
    attack = [
        sample(
            IPv6(src=f"2001:db8:bad::{rng.randrange(1, 9999):x}", dst="2001:db8::1", hlim=64)
            / UDP(sport=rng.randrange(1024, 65535), dport=53)
            / (b"\x12\x34" * 20)
        )
        for _ in range(40)
    ]
    base = [
        sample(
            IPv6(src=f"2001:db8:1::{rng.randrange(1, 9999):x}", dst="2001:db8::1", hlim=64)
            / UDP(sport=rng.randrange(32768, 61000), dport=53)
            / rng.randbytes(rng.randrange(20, 60))
        )
        for _ in range(120)
    ]
    d = mitigation.derive(attack, base, ("2001:db8::1", "udp", 53), 0.01)
    assert d.filter is not None and d.filter.length == (14 + 40 + 8 + 40,) * 2


def test_filter_json_round_trip_and_kernel_form():
    rng = random.Random(13)
    f = mitigation.derive(udp_flood(50, rng, size=20, payload=b"ab"), udp_clients(300, rng), SVC_UDP, 0.01).filter
    assert mitigation.filter_from_json(mitigation.filter_to_json(f)) == f
    assert policy.Filter.from_c(f.to_c()) == norm_filter(f)
    assert "mitigate" not in mitigation.describe_filter(f)


def test_operators_cannot_use_the_mitigate_action():
    with pytest.raises(UserError, match="invalid filter action"):
        build_filter(action="mitigate", proto="udp")
    with pytest.raises(ConfigError, match="invalid filter action"):
        loads('[[interface]]\nname = "x0"\nprotect = ["198.18.0.1"]\n[[interface.filter]]\naction = "mitigate"\n')


def test_settings_validation():
    with pytest.raises(UserError):
        mitigation.Settings(max_share=0)
    with pytest.raises(UserError):
        mitigation.Settings(min_pps=0)


def test_daemon_keys_round_trip_and_errors():
    d, _ = loads(
        '[daemon]\nmitigation = false\nmitigation_pps = "20k"\nmitigation_max_share = 0.005\nmitigation_hold = 3\n'
    )
    assert (
        d.daemon.mitigation,
        d.daemon.mitigation_pps,
        d.daemon.mitigation_max_share,
        d.daemon.mitigation_hold_s,
    ) == (False, 20000.0, 0.005, 3.0)
    assert loads(to_toml(d))[0] == d
    with pytest.raises(ConfigError) as e:
        loads("[daemon]\nmitigation_max_share = 2\nmitigation_pps = 0\n", "x.toml")
    assert any(p.startswith("x.toml:2: daemon.mitigation_max_share:") for p in e.value.problems)
    assert any(p.startswith("x.toml:3: daemon.mitigation_pps:") for p in e.value.problems)


def test_level_presets_are_ordered_and_valid():
    lo, no, st = (levels.preset(n) for n in levels.LEVELS)
    assert not lo.mitigation and no.mitigation and st.mitigation
    assert lo.syn.threshold_pps > no.syn.threshold_pps > st.syn.threshold_pps
    # normal has no address-wide per-source rate (it capped one real TCP client at 0.7 Gb/s); strict has
    assert not no.limits.active() and st.limits.src_pps and no.udp_port.src_pps > st.udp_port.src_pps
    with pytest.raises(UserError, match="unknown level"):
        levels.preset("paranoid")
    assert levels.mitigation_on({"levels": {"198.18.0.1": "loose"}}, "198.18.0.1") is False
    assert levels.mitigation_on({"levels": {"198.18.0.1": "strict"}}, "198.18.0.1") is True
    assert levels.mitigation_on({}, "198.18.0.1") is True


LEVEL_CFG = """
[[interface]]
name = "xg0"
protect = ["198.18.0.1", "198.18.0.2"]
[[interface.address]]
address = "198.18.0.1"
level = "strict"
{extra}
[[interface.forward]]
proto = "udp"
ports = "7"
protected = "198.18.0.1"
to = ["198.18.1.2:7"]
[[interface.forward]]
proto = "tcp"
ports = "80"
protected = "198.18.0.1"
to = ["198.18.1.2:80"]
"""


def test_config_level_fills_what_the_table_does_not_give():
    d, _ = loads(LEVEL_CFG.format(extra=""))
    a = d.interfaces[0].address(ipaddress.ip_address("198.18.0.1"))
    p = levels.preset("strict")
    assert a.level == "strict" and a.limits == p.limits.effective() and a.syn.threshold_pps == p.syn.threshold_pps
    assert a.port_limits == (("udp", 7, 7, p.udp_port.effective()),)  # the forwarded UDP port, not tcp/80
    assert d.interfaces[0].address(ipaddress.ip_address("198.18.0.2")).level is None
    assert loads(to_toml(d))[0] == d


def test_levels_block_other_ip_protocols_except_loose():
    """normal and strict drop IP protocols other than TCP, UDP and ICMP (t50's mix filled the
    protector's conntrack with generic entries); loose lets them pass; running a level resets it."""
    lo, no, st = (levels.preset(n) for n in levels.LEVELS)
    assert (lo.block_other, no.block_other, st.block_other) == (False, True, True)
    cur = policy.AddressPolicy(frozenset({"udp"}))
    assert levels.address_policy("normal", cur).blocked == {"udp", "other"}
    assert levels.address_policy("loose", levels.address_policy("strict", cur)).blocked == {"udp"}
    assert "other IP protocols dropped" in no.describe() and "other IP protocols pass" in lo.describe()
    # the config: the level fills block_protocols when the address does not give it …
    d, _ = loads(LEVEL_CFG.format(extra=""))
    a = d.interfaces[0].address(ipaddress.ip_address("198.18.0.1"))
    assert a.blocked == {"other"}
    # … and an explicit list, even empty, wins; export keeps it so
    d, _ = loads(LEVEL_CFG.format(extra="block_protocols = []"))
    a = d.interfaces[0].address(ipaddress.ip_address("198.18.0.1"))
    assert a.blocked == frozenset() and a.level == "strict"
    assert "block_protocols = []" in to_toml(d)
    assert loads(to_toml(d))[0] == d


def test_config_explicit_tables_override_the_level_as_a_whole():
    d, _ = loads(LEVEL_CFG.format(extra="limits = { src_pps = 123 }\nport_limit = []\n"))
    a = d.interfaces[0].address(ipaddress.ip_address("198.18.0.1"))
    assert a.limits == policy.Limits(src_pps=123).effective() and a.port_limits == ()
    assert a.syn.threshold_pps == levels.preset("strict").syn.threshold_pps
    assert loads(to_toml(d))[0] == d
    empty, _ = loads(LEVEL_CFG.format(extra="limits = {}\n"))
    assert empty.interfaces[0].addresses[0].limits == policy.Limits()
    assert loads(to_toml(empty))[0] == empty
    diff = desired_diff(empty, d)
    assert any(c.path.endswith("limits") for c in diff)


def test_config_bad_level():
    with pytest.raises(ConfigError) as e:
        loads(LEVEL_CFG.format(extra='level = "paranoid"').replace('level = "strict"\n', ""), "c.toml")
    assert any(
        p.startswith("c.toml:7: interface[0].address[0].level: must be one of loose, normal, strict")
        for p in e.value.problems
    ), e.value.problems


# ---- connection limits in nft (nat.connlimit_batch) ----


def _rules():
    return [
        forwarding.make_rule("tcp", ipaddress.ip_address("198.18.0.1"), "80", "198.18.1.2:80"),
        forwarding.make_rule("udp", ipaddress.ip_address("2001:db8::1"), "7", "[2001:db8:2::2]:7"),
    ]


def test_connlimit_batch_shape():
    tcp, udp = _rules()
    batch = nat.build_ruleset(
        [tcp, udp],
        connlimits={
            forwarding.rule_key(tcp): nat.ConnLimits(
                new_per_source=20, concurrent_per_source=100, ban_s=30
            ),  # sets: the longest ban
            forwarding.rule_key(udp): nat.ConnLimits(conntrack_budget=5000, udp_timeout_s=5, new_total=1000),
        },
    )
    items = batch["nftables"]
    chains = [i["add"]["chain"] for i in items if "add" in i and "chain" in i["add"]]
    assert {"name": "connlimit", "type": "filter", "hook": "prerouting", "prio": -150}.items() <= next(
        c for c in chains if c["name"] == "connlimit"
    ).items()
    sets = {i["add"]["set"]["name"]: i["add"]["set"] for i in items if "add" in i and "set" in i["add"]}
    assert sets["cl_off4"]["timeout"] == 60 and sets["cl_off6"]["type"] == "ipv6_addr"
    timeouts = [i["add"]["ct timeout"] for i in items if "add" in i and "ct timeout" in i["add"]]
    assert timeouts == [
        {
            "family": "inet",
            "table": "xdpguard",
            "name": f"cl_to_{nat.rule_ident(udp)}",
            "protocol": "udp",
            "l3proto": "ip6",
            "policy": {"unreplied": 5, "replied": 10},
        }
    ]
    rules = [
        i["add"]["rule"]
        for i in items
        if "add" in i and "rule" in i["add"] and i["add"]["rule"]["chain"] == "connlimit"
    ]
    text = json.dumps(rules)
    assert text.count('"ct count"') == 2 and text.count('"@cl_off4"') == 2 and '"@cl_off6"' not in text
    assert all(r["expr"][2] == {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}} for r in rules)
    # no limits: the table is exactly what it was
    assert nat.build_ruleset([tcp, udp]) == nat.build_ruleset(
        [tcp, udp], connlimits={forwarding.rule_key(tcp): nat.ConnLimits()}
    )


def test_connlimit_values_and_offender_listing():
    with pytest.raises(ValueError):
        nat.ConnLimits(new_per_source=-1)
    with pytest.raises(ValueError):
        nat.ConnLimits(ban_s=0)
    listing = {
        "nftables": [
            {"metainfo": {}},
            {
                "set": {
                    "name": "cl_off4",
                    "elem": [{"elem": {"val": "198.18.0.10", "timeout": 30, "expires": 27}}, "198.18.0.11"],
                }
            },
        ]
    }
    assert nat.parse_offenders(listing) == [("198.18.0.10", 27.0), ("198.18.0.11", 0.0)]
    assert nat.parse_offenders(None) == []


# ---- the engine's rules (Engine.round with fakes: state files in a temp dir, no maps) ----


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Rate:
    pps: float


@dataclass
class Snap:
    rates: dict
    interval_s: float = 0.5


class Rig:
    """One Engine on a fake interface: rounds of hand-made samples every 0.5 s of fake time;
    the kernel's filter table is a list (mitigation._realise patched), events a list."""

    def __init__(self, tmp_path, monkeypatch, known=(), verified_drops=None, tcpstate_on=False):
        from xdpguard.core import state

        monkeypatch.setenv("XDPGUARD_STATE_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("XDPGUARD_RUN_DIR", str(tmp_path / "run"))
        self.iface = state.Iface("xgt0", 1, state.netns_key())
        state.write_state(self.iface, {})
        self.kernel: list[policy.Filter] = []
        monkeypatch.setattr(mitigation, "_realise", self._realise)
        self.known = set(known)  # source addresses xg_goodsrc_hash holds
        self.lookups: list[str] = []
        self.log: list[dict] = []
        self.clock = Clock()
        self.engine = mitigation.Engine(
            self.iface,
            g=None,
            report=lambda m: None,
            clock=self.clock,
            wall=lambda: self.clock.t + 1.7e9,
            log=self.log.append,
            known_good=self._known,
            verified_drops=verified_drops,
            tcpstate_on=lambda g, addr: tcpstate_on,
        )

    def _realise(self, g, recs):
        self.kernel = [mitigation.filter_from_json(r["filter"]) for r in recs["active"]]
        return len(self.kernel)

    def _known(self, g, srcs):
        import ipaddress

        out = set()
        for fam, addr in srcs:
            a = str(ipaddress.ip_address(addr))
            self.lookups.append(a)
            if a in self.known:
                out.add((fam, addr))
        return out

    def round(self, feats: list[mitigation.Features], pps: float) -> list[dict]:
        self.clock.t += 0.5
        samples = [FakeSample(f.frame, f.length, f.family, f.dst, f.reason, f.kind, 256) for f in feats]
        return self.engine.round(Snap({"dropped": Rate(0.0), "forwarded": Rate(pps)}), samples)

    def steps(self, step: str) -> list[dict]:
        return [r for r in self.log if r.get("last_step") == step]

    def active(self) -> list[dict]:
        return mitigation.read_records(self.iface)["active"]


def as_(xs, reason, kind="drop"):
    return [mitigation.Features(**{**x.__dict__, "reason": reason, "kind": kind}) for x in xs]


def udp_client_pkts(n, rng, src="198.18.0.10", payload=b"probe-"):
    """The lab's UDP client: one source, a fixed 'probe-' prefix, TTL 64, a new port each request."""
    return [
        sample(
            IP(src=src, dst=DST, ttl=64, id=rng.randrange(65536))
            / UDP(sport=rng.randrange(32768, 61000), dport=7)
            / (payload + b"%06d" % i)
        )
        for i in range(n)
    ]


def peacetime(rig, rng, rounds=8, clients=40):
    for _ in range(rounds):
        rig.round(udp_clients(clients, rng) + udp_client_pkts(10, rng), pps=2000)


def test_engine_zero_baseline_refuses_a_busy_udp_client(tmp_path, monkeypatch):
    """Seen in the lab: a UDP client doing ~6k req/s from the daemon's start was taken for a
    flood and filtered ("payload 'probe-'", "0.0 % of 0 peacetime samples"). No baseline is
    no evidence: refused, said once, nothing in the kernel."""
    rig = Rig(tmp_path, monkeypatch)
    rng = random.Random(20)
    for _ in range(6):
        rig.round(udp_client_pkts(60, rng), pps=6000)
    assert rig.kernel == [] and rig.steps("install") == []
    refused = rig.steps("refused")
    assert len(refused) == 1 and "no peacetime baseline (0 samples)" in refused[0]["steps"][-1]["detail"]


def test_engine_peacetime_udp_client_is_verified_and_never_flood(tmp_path, monkeypatch):
    """A UDP source the service answered in peacetime (known-good) is a client: its packets are
    no flood (it alone triggers nothing), and a widen never extends onto them."""
    rig = Rig(tmp_path, monkeypatch, known={"198.18.0.10"})
    rng = random.Random(21)
    peacetime(rig, rng)
    assert "198.18.0.10" in rig.lookups
    assert (4, bytes([198, 18, 0, 10])) in rig.engine.verified
    # the client alone at 8k req/s: nothing to mitigate
    for _ in range(4):
        rig.round(udp_client_pkts(80, rng), pps=8000)
    assert rig.kernel == [] and rig.log == []
    # a spoofed flood of fixed shape next to it: one filter, which spares the client
    for _ in range(2):
        rig.round(udp_flood(200, rng, size=120) + udp_client_pkts(20, rng), pps=100_000)
    assert len(rig.kernel) == 1
    f = rig.kernel[0]
    assert mitigation.share_matching(f, udp_client_pkts(50, rng)) == 0.0
    # the flood is dropped now; what passes is the client at 8k req/s: no widen onto it
    for _ in range(4):
        rig.round(as_(udp_flood(200, rng, size=120), "mitigation") + udp_client_pkts(80, rng), pps=100_000)
    assert len(rig.kernel) == 1 and rig.steps("adapt") == [] and rig.steps("refused") == []


def test_engine_learns_no_clients_during_an_attack(tmp_path, monkeypatch):
    """A spoofed flood's sources get answers from the service too (knowngood.h's XXX): sources
    are learned only in peacetime rounds, two rounds late, and forgotten when an attack starts."""
    flood_rng = random.Random(22)
    flood = udp_flood(200, flood_rng, size=64)
    srcs = {str(mitigation.ipaddress.ip_address(x.src)) for x in flood}
    rig = Rig(tmp_path, monkeypatch, known=srcs)
    rng = random.Random(23)
    peacetime(rig, rng)
    before = set(rig.engine.verified)
    rig.round(flood[:40], pps=3000)  # the ramp: below the trigger, looked up, pending
    rig.round(flood, pps=100_000)  # the attack starts: the pending sources are dropped
    for _ in range(3):
        rig.round(flood, pps=100_000)
    assert set(rig.engine.verified) == before
    assert len(rig.kernel) == 1


def test_engine_removes_a_filter_that_drops_verified_clients_from_samples(tmp_path, monkeypatch):
    """A filter whose sampled drops include a verified source is removed in that round, the
    event says why, and it is not put back while the attack lasts."""
    rig = Rig(tmp_path, monkeypatch, known={"198.18.0.10"})
    rng = random.Random(24)
    peacetime(rig, rng)
    for _ in range(2):
        rig.round(udp_flood(200, rng, size=60, payload=b"pro"), pps=100_000)
    assert len(rig.kernel) == 1
    # the client's requests happen to match (the same length, bytes the flood shares): dropped
    f = rig.kernel[0]
    hit = [x for x in udp_client_pkts(40, rng, payload=b"pro" * 18) if mitigation.matches(f, x)]
    assert hit
    rig.round(as_(udp_flood(200, rng, size=60, payload=b"pro"), "mitigation") + as_(hit[:2], "mitigation"), pps=100_000)
    assert rig.kernel == []
    (r,) = rig.steps("adapt")
    assert r["state"] == "lifted" and "dropped verified clients" in r["steps"][-1]["detail"]
    assert "198.18.0.10" in r["steps"][-1]["detail"] and r["verified_drops"] >= 256
    for _ in range(4):
        rig.round(
            udp_flood(200, rng, size=60, payload=b"pro") + udp_client_pkts(5, rng, payload=b"pro" * 18), pps=100_000
        )
    assert rig.kernel == [] and len(rig.steps("install")) == 1


def test_engine_removes_a_filter_the_xdp_counters_say_hurts_verified_clients(tmp_path, monkeypatch):
    """The verified-clients reader (VerifiedDrops: position of the mitigation filter → packets of
    verified sources dropped since the last write) removes a filter within a round of the drops."""
    counts: dict[int, int] = {}
    rig = Rig(tmp_path, monkeypatch, verified_drops=lambda maps: dict(counts))
    rng = random.Random(25)
    peacetime(rig, rng)
    for _ in range(2):
        rig.round(udp_flood(200, rng, size=90), pps=100_000)
    assert len(rig.kernel) == 1
    rig.round(as_(udp_flood(200, rng, size=90), "mitigation"), pps=100_000)
    assert len(rig.kernel) == 1  # nothing counted: it stays
    counts[0] = 7
    rig.round(as_(udp_flood(200, rng, size=90), "mitigation"), pps=100_000)
    assert rig.kernel == []
    (r,) = rig.steps("adapt")
    assert "7 counted in XDP" in r["steps"][-1]["detail"]


def test_engine_a_reused_filter_slot_keeps_its_history_out(tmp_path, monkeypatch):
    """The XDP counters only grow and a slot outlives the filter in it: a new filter in a slot
    whose earlier filter had dropped verified clients is judged from its own install on (the
    engine takes the reading right after the write as its baseline), not removed for the past."""
    counts: dict[int, int] = {0: 5_000}  # what slot 0's earlier filter left behind
    rig = Rig(tmp_path, monkeypatch, verified_drops=lambda maps: dict(counts))
    rng = random.Random(26)
    peacetime(rig, rng)
    for _ in range(2):
        rig.round(udp_flood(200, rng, size=90), pps=100_000)
    assert len(rig.kernel) == 1
    for _ in range(2):
        rig.round(as_(udp_flood(200, rng, size=90), "mitigation"), pps=100_000)
    assert len(rig.kernel) == 1 and rig.steps("adapt") == []
    counts[0] += 3  # now it drops verified clients itself
    rig.round(as_(udp_flood(200, rng, size=90), "mitigation"), pps=100_000)
    assert rig.kernel == []
    (r,) = rig.steps("adapt")
    assert "3 counted in XDP" in r["steps"][-1]["detail"]


def test_engine_established_sources_are_verified_at_once(tmp_path, monkeypatch):
    """While XDP validates TCP state, a source with an established connection is verified in the
    same round (unspoofable): its later SYNs are no flood either."""
    rig = Rig(tmp_path, monkeypatch, tcpstate_on=True)
    rng = random.Random(26)
    web = linux_web_clients(50, rng, src="198.18.0.{}")
    rig.round(web, pps=1500)
    assert {str(mitigation.ipaddress.ip_address(a)) for _, a in rig.engine.verified} == {
        str(mitigation.ipaddress.ip_address(x.src)) for x in web if x.tcp_flags & 0x10 and not x.tcp_flags & 0x02
    }
    syns = [x for x in web if x.tcp_flags == 0x02 and src_id_in(rig, x)]
    assert syns  # the SYNs of verified sources …
    rig.round(syns * 30, pps=50_000)
    assert rig.log == [] and rig.kernel == []  # … are nobody's flood


def src_id_in(rig, x):
    return mitigation.src_id(x) in rig.engine.verified


def test_engine_lifts_within_a_second_and_rearms_a_pulsed_flood(tmp_path, monkeypatch):
    """The flood ends: the filter is lifted after LIFT_S (not hold_s); it comes back: the lifted
    filter is re-armed in the first round, with no new derivation."""
    rig = Rig(tmp_path, monkeypatch)
    rng = random.Random(27)
    peacetime(rig, rng)
    for _ in range(2):
        rig.round(udp_flood(200, rng, size=70), pps=100_000)
    assert len(rig.kernel) == 1
    rig.round(as_(udp_flood(200, rng, size=70), "mitigation"), pps=100_000)
    t_end = rig.clock.t
    while rig.kernel and rig.clock.t - t_end < 5:
        rig.round(udp_clients(10, rng), pps=500)
    assert rig.kernel == [] and rig.clock.t - t_end <= mitigation.LIFT_S + 0.5
    assert rig.steps("lift")
    rig.round(udp_flood(3, rng, size=70), pps=100_000)  # few samples: too few to derive, enough to re-arm
    assert len(rig.kernel) == 1
    assert "re-armed" in rig.active()[0]["steps"][-1]["detail"]


def test_engine_refused_floods_are_not_derived_every_round(tmp_path, monkeypatch):
    """A random flood is refused ("nothing shared"): said once, and derived again at most once a
    second (daemon CPU is the clients' CPU on a small box)."""
    rig = Rig(tmp_path, monkeypatch)
    rng = random.Random(28)
    peacetime(rig, rng)
    calls = []
    real = mitigation.derive
    monkeypatch.setattr(mitigation, "derive", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(8):
        rig.round(
            [
                sample(
                    IP(src=rsrc(rng), dst=DST, ttl=rng.randrange(1, 256), id=rng.randrange(65536))
                    / UDP(sport=rng.randrange(1024, 65535), dport=7)
                    / rng.randbytes(rng.randrange(0, 600))
                )
                for _ in range(200)
            ],
            pps=100_000,
        )
    assert len(rig.steps("refused")) == 1 and rig.kernel == []
    assert len(calls) <= 5
    # a refusal whose numbers change ("matches only 35 %", "37 %") is the same refusal: said once
    before = len(rig.steps("refused"))
    for k in range(4):
        mix = udp_flood(70 + 3 * k, rng, size=64) + [
            sample(
                IP(src=rsrc(rng), dst=DST, ttl=rng.randrange(1, 256), id=rng.randrange(65536))
                / UDP(sport=rng.randrange(1024, 65535), dport=7)
                / rng.randbytes(rng.randrange(0, 600))
            )
            for _ in range(130)
        ]
        rig.round(mix, pps=100_000)
        rig.clock.t += mitigation.REFUSED_RETRY_S
    said = [r["steps"][-1]["detail"] for r in rig.steps("refused")][before:]
    assert rig.kernel == [] and len(said) == 1 and "matches only" in said[0], said


def test_engine_too_few_samples_is_no_reason_to_wait(tmp_path, monkeypatch):
    """The onset of a flood: a round with too few samples refuses, the next one derives at once
    (only a refusal of the flood's shape waits REFUSED_RETRY_S)."""
    rig = Rig(tmp_path, monkeypatch)
    rng = random.Random(31)
    peacetime(rig, rng)
    rig.round(udp_flood(5, rng, size=80), pps=50_000)
    assert rig.kernel == [] and "only 5 flood samples" in rig.steps("refused")[0]["steps"][-1]["detail"]
    rig.round(udp_flood(200, rng, size=80), pps=100_000)
    assert len(rig.kernel) == 1


def test_no_filter_for_a_protocol_a_filter_cannot_name():
    """t50's mix in monitor mode: floods of IGMP, GRE, RSVP … got filters with no protocol
    ("length 54, ttl 255"), which match TCP and UDP packets of that shape too. Refused."""
    rng = random.Random(32)
    attack = [
        sample(IP(src=rsrc(rng), dst=DST, ttl=255, proto=46, id=rng.randrange(65536)) / (b"\x00" * 40))
        for _ in range(60)
    ]
    assert {x.proto for x in attack} == {"46"}
    d = mitigation.derive(attack, udp_clients(300, rng), (DST, "46", 0), 0.01)
    assert d.filter is None and "cannot name IP protocol 46" in d.refused, d
    # ICMPv6 floods get the icmp protocol (policy.h: an icmp filter matches ICMPv6), never none
    from scapy.layers.inet6 import ICMPv6EchoRequest

    six = [
        sample(
            IPv6(src=f"2001:db8:bad::{i + 1:x}", dst="2001:db8::1", hlim=64) / ICMPv6EchoRequest(id=7) / (b"\x42" * 56)
        )
        for i in range(60)
    ]
    base = [
        sample(
            IPv6(src=f"2001:db8:1::{i + 1:x}", dst="2001:db8::1", hlim=64)
            / UDP(sport=rng.randrange(32768, 61000), dport=53)
            / rng.randbytes(rng.randrange(20, 60))
        )
        for i in range(120)
    ]
    d = mitigation.derive(six, base, ("2001:db8::1", "icmpv6", 0), 0.01)
    assert d.filter is not None and d.filter.proto == "icmp", d


def test_the_daemon_settles_the_filter_generations_in_the_round_after_a_write(tmp_path, monkeypatch):
    """A filter write leaves the generation not in use one change behind (guard.settle_filters);
    the daemon's hook settles it at the start of the next round, before that round's own
    decisions, under the interface lock, and only after a write."""
    import os
    from types import SimpleNamespace

    from xdpguard.core import state

    rig = Rig(tmp_path, monkeypatch)
    rng = random.Random(21)
    peacetime(rig, rng)
    assert not rig.engine.unsettled
    for _ in range(2):
        rig.round(udp_flood(200, rng, size=120), pps=100_000)
    assert len(rig.kernel) == 1 and rig.engine.unsettled

    settled: list[bool] = []  # per call: was the interface lock held?

    class Guard:
        iface = rig.iface

        def settle_filters(self) -> bool:
            fd = state.flock_wait(rig.iface.lock_file, 0.0)
            settled.append(fd is None)
            if fd is not None:
                os.close(fd)
            return True

        def read_budgets(self) -> list:  # budgets.BudgetLearner's read: no UDP service here
            return []

        def read_verify_settings(self):
            return policy.VerifySettings()

    rounds: list[int] = []
    monkeypatch.setattr(rig.engine, "round", lambda snap, samples: rounds.append(len(settled)))
    monkeypatch.setattr(mitigation.connlimit, "offenders", lambda: [])
    monkeypatch.setattr(mitigation.connlimit, "promote", lambda g, found: [])
    hook = mitigation.DaemonHook(mitigation.Settings())
    hook.engines[rig.iface.name] = rig.engine
    collector = SimpleNamespace(guard=Guard())
    hook(rig.iface.name, collector, None, [])
    assert settled == [True] and rounds == [1] and not rig.engine.unsettled
    hook(rig.iface.name, collector, None, [])  # nothing written since
    assert settled == [True] and rounds == [1, 1]
