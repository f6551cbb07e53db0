"""The desired-state schema: errors with locations, the diff, and load(to_toml(S)) == S."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdpguard.core import policy
from xdpguard.core.model.desired import (
    AddressSpec,
    Desired,
    ForwardSpec,
    InterfaceSpec,
    norm_filter,
    norm_port_runs,
    norm_port_limits,
    ALL_DROP_MASK,
    norm_interface,
    MODES,
    DaemonSpec,
)
from xdpguard.core.desired.load import ConfigError, loads, load
from xdpguard.core.kernel import abi
from xdpguard.core.desired.dump import to_toml
from xdpguard.core.desired.diff import diff
from xdpguard.core.model import forwarding
from xdpguard.core.observe import events
from xdpguard.core.nat import nft as nat
from xdpguard.core.prefixes import Prefix

GOOD = textwrap.dedent("""\
    [daemon]
    metrics = "127.0.0.1:9477"

    [[interface]]
    name = "veth0"
    protect = ["198.18.0.1", "2001:db8:0:1::1"]
    monitor = ["syn"]
    block = ["198.51.100.0/24", "203.0.113.7"]
    allow = ["192.0.2.1"]

    [[interface.address]]
    address = "198.18.0.1"
    block_protocols = ["icmp"]
    open_ports = ["tcp:22", "tcp:23", "udp:1000-2000"]
    limits = { src_pps = "2k", ban = 30 }
    syn = { threshold = 1000 }

    [[interface.address.port_limit]]
    ports = "udp:27015-27020"
    src_pps = 500

    [[interface.filter]]
    action = "drop"
    proto = "udp"
    dport = 53
    length = "550-560"
    payload = "ffff"
    mask = "f0ff"

    [[interface.forward]]
    proto = "tcp"
    ports = "80"
    to = ["198.51.100.10:8080", "198.51.100.11:8080"]
    weights = [3, 1]

    [interface.events]
    drop_pps = 5000
    hook = "/bin/true"
""")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        loads(text, "x.toml")
    return exc.value.problems


def test_good_config_is_normalised():
    d, warnings = loads(GOOD, "x.toml")
    assert warnings == []
    s = d.interface("veth0")
    a = s.address(ipaddress.ip_address("198.18.0.1"))
    assert a.open_ports == (("tcp", 22, 23), ("udp", 1000, 2000))  # runs merged
    assert a.limits == policy.Limits(src_pps=2000, src_burst_pkts=2000, ban_s=30)  # burst filled in
    assert a.syn.threshold_pps == 1000
    assert s.global_.filters[0].payload == bytes([0xF0, 0xFF])  # masked, as the kernel gives it back
    assert s.global_.monitor_mask == 1 << int(abi.Reason.SYN)
    (fwd,) = s.forwards
    assert fwd.rule.protected == ipaddress.ip_address("198.18.0.1")  # the only v4 address
    assert [b.weight for b in fwd.rule.backends] == [3, 1]
    assert s.events.default.drop_pps == 5000 and s.events.hook == "/bin/true"
    assert d.daemon.metrics == "127.0.0.1:9477"


def test_round_trip_of_the_example():
    d, _ = loads(GOOD)
    assert loads(to_toml(d))[0] == d
    assert diff(d, d) == []


@pytest.mark.parametrize(
    "snippet, needle",
    [
        ('colour = "red"', "x.toml:4: interface[0].colour: unknown key"),
        ('mode = "turbo"', "x.toml:4: interface[0].mode: must be one of auto, native, skb"),
        ('block = ["198.51.100.0/33"]', "x.toml:4: interface[0].block[0]: invalid CIDR"),
        ('block_files = ["/nonexistent/list"]', "x.toml:4: interface[0].block_files[0]: cannot read /nonexistent/list"),
        ('monitor = ["sometimes"]', "x.toml:4: interface[0].monitor[0]: unknown drop reason 'sometimes'"),
        ("fragments = true", "x.toml:4: interface[0].fragments: must be a string"),
        ('reflection = "yes"', "x.toml:4: interface[0].reflection: must be true or false"),
    ],
)
def test_interface_key_errors_name_file_line_and_field(snippet, needle):
    text = f'[[interface]]\nname = "veth0"\nprotect = ["198.18.0.1"]\n{snippet}\n'
    got = problems(text)
    assert any(p.startswith(needle) for p in got), got


def test_every_problem_is_reported_with_its_own_line():
    text = textwrap.dedent("""\
        [[interface]]
        name = "veth0"
        protect = ["198.18.0.1"]

        [[interface.address]]
        address = "198.18.0.9"

        [[interface.address]]
        address = "198.18.0.1"
        limits = { src_pps = "inf", dst_pps = -1 }

        [[interface.forward]]
        proto = "tcp"
        ports = "80"
        to = ["198.51.100.10"]

        [[interface.forward]]
        proto = "tcp"
        ports = "70-90"
        to = ["198.51.100.11"]
        """)
    got = problems(text)
    assert "x.toml:6: interface[0].address[0].address: 198.18.0.9 is not in this interface's protect list" in got
    assert any(p.startswith("x.toml:10: interface[0].address[1].limits.src_pps: invalid src_pps 'inf'") for p in got)
    assert any(p.startswith("x.toml:10: interface[0].address[1].limits.dst_pps:") for p in got)
    assert any(p.startswith("x.toml:17: interface[0].forward[1]:") and "overlaps" in p for p in got)
    assert len(got) == 4


def test_conflicts_across_interfaces():
    text = (
        '[[interface]]\nname = "a"\nprotect = ["198.18.0.1"]\n'
        '[[interface]]\nname = "a"\nprotect = ["198.18.0.2"]\n'
        '[[interface]]\nname = "b"\nprotect = ["198.18.0.1"]\n'
        '[[interface.forward]]\nproto = "udp"\nports = "53"\nto = ["198.18.0.1"]\n'
    )
    got = problems(text)
    assert any("x.toml:5: interface[1].name: interface a is given twice" in p for p in got), got
    assert any("interface[2].protect: 198.18.0.1 is protected on a already" in p for p in got), got
    assert any("interface[2].forward[0]" in p and "protected address" in p for p in got), got


def test_allow_and_block_overlap_is_a_warning_not_an_error():
    _, warnings = loads(
        '[[interface]]\nname = "a"\nprotect = ["198.18.0.1"]\nblock = ["192.0.2.1"]\nallow = ["192.0.2.1/32"]\n',
        "x.toml",
    )
    assert len(warnings) == 1 and "in both allow and block" in warnings[0] and "x.toml:5" in warnings[0]


def test_not_toml_and_not_text(tmp_path):
    assert problems("[[interface]\n")[0].startswith("x.toml: not valid TOML:")
    p = tmp_path / "bin.toml"
    p.write_bytes(b'[daemon]\nmetrics = "\0"\n')
    with pytest.raises(ConfigError, match="NUL byte"):
        load(p)
    p.write_bytes(b'[daemon]\n\nmetrics = "\xff"\n')
    with pytest.raises(ConfigError, match=r"bin.toml:3: not UTF-8"):
        load(p)


def test_list_files_are_read(tmp_path):
    f = tmp_path / "block.txt"
    f.write_text("# spammers\n198.51.100.0/24\n2001:db8:bad::/48\n")
    d, _ = loads(f'[[interface]]\nname = "a"\nprotect = ["198.18.0.1"]\nblock_files = ["{f}"]\n')
    assert {str(p) for p in d.interface("a").block} == {"198.51.100.0/24", "2001:db8:bad::/48"}


def test_diff_text_and_fields():
    old, _ = loads(GOOD)
    new_text = GOOD.replace('block = ["198.51.100.0/24", "203.0.113.7"]', 'block = ["198.51.100.0/25"]').replace(
        'src_pps = "2k", ban = 30', "src_pps = 5000"
    )
    new, _ = loads(new_text)
    changes = diff(old, new)
    texts = [c.text() for c in changes]
    assert "+ veth0 block: 198.51.100.0/25" in texts
    assert "- veth0 block: 198.51.100.0/24, 203.0.113.7/32" in texts
    assert "~ veth0 198.18.0.1 limits: { src_pps = 2000, ban = 30 } -> { src_pps = 5000 }" in texts
    removed = next(c for c in changes if c.op == "remove")
    assert removed.count == 2 and removed.path == "veth0 block"
    gone = diff(old, Desired(daemon=old.daemon))
    assert [c.text() for c in gone] == ["- interface veth0: protect 198.18.0.1, 2001:db8:0:1::1"]


# ---- property: load(to_toml(S)) == S ----

V4 = st.integers(0, 255).map(lambda i: ipaddress.ip_address(f"198.18.{i}.1"))
V6 = st.integers(0, 0xFFFF).map(lambda i: ipaddress.ip_address(f"2001:db8:0:{i:x}::1"))
RATE = st.sampled_from([0, 1, 100, 2000, 10**6])


def prefixes():
    v4 = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: Prefix(4, ((t[0] >> (32 - t[1]) << (32 - t[1])) if t[1] else 0).to_bytes(4, "big"), t[1])
    )
    v6 = st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: Prefix(6, ((t[0] >> (128 - t[1]) << (128 - t[1])) if t[1] else 0).to_bytes(16, "big"), t[1])
    )
    return st.frozensets(st.one_of(v4, v6), max_size=6)


@st.composite
def limits(draw):
    src = draw(RATE)
    return policy.Limits(
        src_pps=src,
        src_burst_pkts=draw(st.sampled_from([0, 5000])) if src else 0,
        src_bps=draw(RATE),
        dst_pps=draw(RATE),
        syn_src_pps=draw(RATE),
        ban_s=draw(st.sampled_from([0, 60])) if src else 0,
    ).effective()


@st.composite
def filters(draw):
    action = draw(st.sampled_from(["drop", "pass", "drop-ban"]))
    proto = draw(st.sampled_from([None, "tcp", "udp", "icmp"]))
    lo = draw(st.integers(0, 65535))
    payload = draw(st.binary(max_size=16))
    f = policy.Filter(
        action=action,
        proto=proto,
        dport=(lo, draw(st.integers(lo, 65535))),
        ttl=draw(st.sampled_from([(0, 255), (64, 64), (1, 10)])),
        tcp_flags=draw(st.sampled_from([(0, 0), (0x12, 0x02)])) if proto in (None, "tcp") else (0, 0),
        payload=payload,
        payload_mask=draw(st.binary(min_size=len(payload), max_size=len(payload)))
        if payload and draw(st.booleans())
        else b"",
        payload_base=draw(st.sampled_from(["l3", "l4", "payload"])),
        payload_off=draw(st.integers(0, 1000)),
        ban_s=60 if action == "drop-ban" else 0,
    )
    return norm_filter(f)


@st.composite
def addresses(draw, addr):
    ports = draw(
        st.lists(st.tuples(st.sampled_from(["tcp", "udp"]), st.integers(1, 2000), st.integers(0, 3)), max_size=3)
    )
    plims = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["tcp", "udp"]),
                st.integers(3000, 3100),
                st.integers(0, 3),
                limits().filter(lambda l: l.active()),
            ),
            max_size=2,
        )
    )
    syn = draw(
        st.sampled_from(
            [
                policy.SynPolicy(),
                policy.SynPolicy(1000),
                policy.SynPolicy(5, 300, 5000, 60),
                policy.SynPolicy(5, 300, 5000, 60, "retransmit"),
                policy.SynPolicy(always=True),
                policy.SynPolicy(mode="retransmit"),
            ]
        )
    )
    cl = draw(
        st.one_of(
            st.none(),
            st.builds(
                nat.ConnLimits,
                st.integers(0, 500),
                st.integers(0, 64),
                st.integers(0, 10_000),
                st.integers(0, 100_000),
                st.integers(0, 120),
                st.integers(1, 3600),
            ).filter(lambda c: c.active()),
        )
    )
    return AddressSpec(
        addr,
        draw(st.frozensets(st.sampled_from(list(policy.PROTOCOLS)))),
        draw(limits()),
        syn,
        norm_port_runs((p, lo, lo + n) for p, lo, n in ports),
        norm_port_limits((p, lo, lo + n, lim) for p, lo, n, lim in plims),
        connlimit=cl,
    )


@st.composite
def interfaces(draw, name):
    protected = draw(st.lists(st.one_of(V4, V6), min_size=1, max_size=3, unique=True))
    addrs = tuple(draw(addresses(a)) for a in protected)
    fwds = []
    for i, a in enumerate(protected):
        if draw(st.booleans()):
            b = ipaddress.ip_address("198.51.100.10" if a.version == 4 else "2001:db8:ffff::10")
            rule = forwarding.ForwardRule(
                draw(st.sampled_from(["tcp", "udp"])),
                a,
                80 + i,
                80 + i,
                (forwarding.Backend(b, draw(st.sampled_from([None, 8080])), draw(st.integers(1, 5))),),
                draw(st.sampled_from([0, 300])),
                draw(st.booleans()),
            )
            fwds.append(ForwardSpec(rule, draw(st.sampled_from([None, b"ping"])) if rule.proto == "udp" else None))
    glob = policy.GlobalPolicy(
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.frozensets(st.integers(1, 65535), max_size=5)),
        tuple(draw(st.lists(filters(), max_size=3))),
        draw(st.sampled_from([0, ALL_DROP_MASK, 1 << 12])),
    )
    thr = st.builds(
        events.Thresholds,
        st.sampled_from([0.0, 1000.0, 2.5]),
        st.sampled_from([0.0, 1e9]),
        st.sampled_from([0.0, 1000.0]),
        st.just(0.0),
        st.sampled_from([{}, {"syn": (100.0, 0.0)}]),
    )
    ev = events.EventConfig(
        draw(thr),
        {str(protected[0]): draw(thr)} if draw(st.booleans()) else {},
        draw(st.sampled_from([10.0, 0.5])),
        draw(st.sampled_from([None, "/bin/true"])),
    )
    vf = policy.VerifySettings(
        budget_udp_pps=draw(st.sampled_from([0, 2000])),
        budget=draw(st.booleans()),
        tcp_pps=draw(st.sampled_from([0, 30000])),
        spoof_ban_s=draw(st.sampled_from([0, 5])),
    )
    return norm_interface(
        InterfaceSpec(
            name,
            draw(st.sampled_from(MODES)),
            addrs,
            glob,
            draw(prefixes()),
            draw(prefixes()),
            tuple(fwds),
            ev,
            vf,
        )
    )


@st.composite
def desireds(draw):
    names = draw(st.lists(st.sampled_from(["eth1", "veth0", "xgp0"]), max_size=2, unique=True))
    specs = []
    used: set = set()
    for n in names:
        s = draw(interfaces(n))
        if used & set(s.protected):
            continue
        used |= set(s.protected)
        specs.append(s)
    daemon = DaemonSpec(
        draw(st.sampled_from([None, "127.0.0.1:9477", "[::1]:9100"])),
        draw(st.sampled_from([2.0, 0.5])),
        1.0,
        draw(st.integers(1, 5)),
        3,
        10.0,
        draw(st.booleans()),
        1.0,
    )
    return Desired(tuple(sorted(specs, key=lambda s: s.name)), daemon)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(desireds())
def test_load_of_to_toml_is_identity(d):
    text = to_toml(d)
    back, _ = loads(text, "export.toml")
    assert back == d
    assert diff(d, back) == []


def test_levels_that_drop_fragments_decide_the_interface_fragment_policy():
    base = (
        '[[interface]]\nname = "eth1"\nprotect = ["198.18.0.1", "198.18.0.2"]\n{frag}'
        '[[interface.address]]\naddress = "198.18.0.1"\nlevel = "normal"\n'
        '[[interface.address]]\naddress = "198.18.0.2"\nlevel = "{second}"\n'
    )
    d, _ = loads(base.format(frag="", second="strict"))
    assert d.interfaces[0].global_.drop_fragments  # every address at a level that drops them
    d, _ = loads(base.format(frag="", second="loose"))
    assert not d.interfaces[0].global_.drop_fragments  # one address keeps them: the interface does
    d, _ = loads(base.format(frag='fragments = "pass"\n', second="strict"))
    assert not d.interfaces[0].global_.drop_fragments  # given explicitly: the file wins
    assert loads(to_toml(d))[0] == d


CONNLIMIT_HEAD = (
    '[[interface]]\nname = "veth0"\nprotect = ["198.18.0.1"]\n\n[[interface.address]]\naddress = "198.18.0.1"\n'
)


def test_connlimit_is_desired_state_with_located_errors():
    d, _ = loads(CONNLIMIT_HEAD + "connlimit = { new_per_source = 20, udp_timeout = 30, ban = 120 }\n", "x.toml")
    a = d.interfaces[0].addresses[0]
    assert a.connlimit == nat.ConnLimits(new_per_source=20, udp_timeout_s=30, ban_s=120)
    assert loads(to_toml(d), "y.toml")[0] == d
    got = problems(CONNLIMIT_HEAD + "connlimit = { new_per_source = -1, colour = 2 }\n")
    assert any(p.startswith("x.toml:7: interface[0].address[0].connlimit.colour: unknown key") for p in got), got
    assert any(p.startswith("x.toml:7: interface[0].address[0].connlimit:") and "new-per-source" in p for p in got), got
    got = problems(CONNLIMIT_HEAD + "connlimit = { ban = 30 }\n")
    assert any("connlimit: needs a limit" in p for p in got), got
    got = problems(CONNLIMIT_HEAD + 'connlimit = { new_total = "lots" }\n')
    assert any("connlimit.new_total" in p for p in got), got
    plain, _ = loads(CONNLIMIT_HEAD + "limits = { src_pps = 100 }\n", "x.toml")
    changes = diff(plain, d)
    assert any("connlimit" in str(c) for c in changes), changes


# ---- [interface.verify]: verified clients and the admission budget (issue 25) ----

VERIFY = '[[interface]]\nname = "veth0"\nprotect = ["198.18.0.1"]\n[interface.verify]\n{body}'


def test_verify_table_loads_writes_and_diffs():
    d, _ = loads(VERIFY.format(body="budget_udp_pps = 2000\nbudget = false\nudp_pps = 500\n"))
    v = d.interfaces[0].verify
    assert (v.budget_udp_pps, v.budget, v.udp_pps, v.udp_learning) == (2000, False, 500, True)
    text = to_toml(d)
    assert "[interface.verify]" in text and "udp_learning" not in text
    assert loads(text)[0] == d
    plain, _ = loads('[[interface]]\nname = "veth0"\nprotect = ["198.18.0.1"]\n')
    assert plain.interfaces[0].verify == policy.VerifySettings() and "verify" not in to_toml(plain)
    [ch] = diff(plain, d)
    assert "verify" in ch.path and "budget_udp_pps 2000" in ch.new


@pytest.mark.parametrize(
    "body, needle",
    [
        ("budget_udp_pps = -1\n", "interface[0].verify: invalid budget_udp_pps -1"),
        ('budget = "off"\n', "interface[0].verify.budget: must be true or false"),
        ("udp_learning = false\n", "interface[0].verify.udp_learning: unknown key"),
        ("spoof_ban_s = 1.5\n", "interface[0].verify.spoof_ban_s: must be a whole number"),
    ],
)
def test_verify_table_errors_name_the_field(body, needle):
    got = problems(VERIFY.format(body=body))
    assert any(needle in p for p in got), got
