"""The cluster's pure parts: [cluster]/[bgp] schema (errors with file:line:field, round trip),
BIRD config rendering (identical attributes on every node, the liveness device), the store's key
layout and value codecs, the lab's addressing, and the CLI's bad input (one line, exit 2)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

import pytest
from cli_helpers import invoke, one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdpguard.cli.main import run
from xdpguard.core.model.cluster import BgpNeighbor, BgpSpec, ClusterSpec
from xdpguard.core.model.desired import Desired, InterfaceSpec, addr_order, DaemonSpec
from xdpguard.core.desired.load import loads, ConfigError
from xdpguard.core.desired.dump import to_toml
from xdpguard.core.errors import UserError
from xdpguard.core.cluster import bgp, escalate, store
from xdpguard.lab import cluster as lc

GOOD = """
[cluster]
name = "edge"
node = "fra-1"
endpoints = ["http://198.18.4.2:2379", "http://198.18.4.3:2379/"]
node_ttl = 5

[bgp]
local_as = 65001
router_id = "198.18.17.2"
neighbors = [{ address = "198.18.17.1", as = 65000 }, { address = "2001:db8:101::1", as = 65000 }]
min_nodes = 2
"""


def test_good_sections_load_with_defaults():
    d, warnings = loads(GOOD, "n.toml")
    assert warnings == []
    assert d.cluster == ClusterSpec("edge", "fra-1", ("http://198.18.4.2:2379", "http://198.18.4.3:2379"), 5, 60.0)
    assert d.bgp.local_as == 65001 and d.bgp.min_nodes == 2 and d.bgp.bfd
    assert d.bgp.neighbors[1] == BgpNeighbor(ipaddress.ip_address("2001:db8:101::1"), 65000)
    assert loads(to_toml(d))[0] == d


def test_a_config_without_the_sections_is_unchanged():
    d, _ = loads('[[interface]]\nname = "eth1"\nprotect = ["198.18.0.1"]\n')
    assert d.cluster is None and d.bgp is None
    assert "[cluster]" not in to_toml(d) and "[bgp]" not in to_toml(d)


@pytest.mark.parametrize(
    "snippet, needle",
    [
        ('[cluster]\nnode = "a b"\n', "n.toml:2: cluster.node: must be 1-63 letters"),
        (
            '[cluster]\nendpoints = ["etcd:2379"]\n',
            "n.toml:2: cluster.endpoints[0]: must be an http(s)://HOST:PORT URL",
        ),
        ("[cluster]\nnode_ttl = 1\n", "n.toml:2: cluster.node_ttl: must be 2 to 3600"),
        ("[cluster]\nbogus = 1\n", "n.toml:2: cluster.bogus: unknown key"),
        (
            '[bgp]\nrouter_id = "2001:db8::1"\nlocal_as = 1\nneighbors = [{ address = "198.18.17.1", as = 2 }]\n',
            "n.toml:2: bgp.router_id: must be an IPv4 address",
        ),
        (
            '[bgp]\nrouter_id = "198.18.0.9"\nneighbors = [{ address = "198.18.17.1", as = 2 }]\n',
            "n.toml:1: bgp.local_as: is required",
        ),
        (
            '[bgp]\nrouter_id = "198.18.0.9"\nlocal_as = 1\nneighbors = [{ address = "nope", as = 2 }]\n',
            "n.toml:4: bgp.neighbors[0].address: must be an IPv4 or IPv6 address",
        ),
        (
            '[bgp]\nrouter_id = "198.18.0.9"\nlocal_as = 1\nneighbors = []\n',
            "bgp.neighbors: needs at least one neighbor",
        ),
        (
            '[bgp]\nrouter_id = "198.18.0.9"\nlocal_as = 1\nneighbors = [{ address = "198.18.0.2", as = 2 }]\n'
            'bird_socket = "relative.ctl"\n',
            "n.toml:5: bgp.bird_socket: must be an absolute path",
        ),
        (
            '[bgp]\nrouter_id = "198.18.0.9"\nlocal_as = 1\nneighbors = [{ address = "198.18.0.2", as = 2 }]\n'
            'liveness_interface = "much-too-long-name"\n',
            "bgp.liveness_interface: must be an interface name",
        ),
        (
            '[bgp]\nrouter_id = "198.18.0.9"\nlocal_as = 1\nneighbors = [{ address = "198.18.0.2", as = 2 }]\n'
            'blackhole_community = "65535:99999"\n',
            "n.toml:5: bgp.blackhole_community: must be ASN:VALUE",
        ),
        (
            '[bgp]\nrouter_id = "198.18.0.9"\nlocal_as = 1\nneighbors = [{ address = "198.18.0.2", as = 2 }]\n'
            "escalation_hold = 0\n",
            "n.toml:5: bgp.escalation_hold: must be 1 to 86400",
        ),
        (
            '[bgp]\nrouter_id = "198.18.0.9"\nlocal_as = 1\nneighbors = [{ address = "198.18.0.2", as = 2 }]\n'
            "flowspec_pps = -1\n",
            "n.toml:5: bgp.flowspec_pps: must be 0 to",
        ),
    ],
)
def test_bad_sections_name_file_line_and_field(snippet, needle):
    with pytest.raises(ConfigError) as ei:
        loads(snippet, "n.toml")
    assert any(needle in p for p in ei.value.problems), ei.value.problems


ADDR = st.one_of(
    st.integers(1, 250).map(lambda i: ipaddress.ip_address(f"198.18.{i}.1")),
    st.integers(1, 0xFFFF).map(lambda i: ipaddress.ip_address(f"2001:db8:{i:x}::1")),
)


@st.composite
def clustered(draw):
    c = ClusterSpec(
        draw(st.sampled_from(["xdpguard", "lab", "edge.eu-1"])),
        draw(st.sampled_from(["n1", "fra_2"])),
        tuple(
            draw(
                st.lists(
                    st.sampled_from(["http://198.18.4.2:2379", "https://[2001:db8::2]:2379"]),
                    min_size=1,
                    max_size=2,
                    unique=True,
                )
            )
        ),
        draw(st.integers(2, 3600)),
        draw(st.sampled_from([1.0, 60.0, 2.5])),
    )
    b = None
    if draw(st.booleans()):
        announce = draw(st.lists(ADDR, max_size=3, unique=True))
        b = BgpSpec(
            draw(st.integers(1, 2**32 - 1)),
            ipaddress.IPv4Address(draw(st.integers(1, 2**32 - 1))),
            tuple(
                BgpNeighbor(a, draw(st.integers(1, 2**32 - 1))) for a in draw(st.lists(ADDR, min_size=1, max_size=3))
            ),
            tuple(sorted(announce, key=addr_order)),
            draw(st.booleans()),
            draw(st.integers(10, 10000)),
            draw(st.integers(2, 255)),
            draw(st.integers(3, 65535)),
            draw(st.integers(0, 1000)),
            "/run/x/bird.conf",
            "/run/x/bird.ctl",
            draw(st.sampled_from(["xgvip0", "vip.1"])),
            draw(st.integers(0, 10**9)),
            draw(st.integers(0, 10**9)),
            draw(st.integers(1, 86400)),
            (draw(st.integers(0, 65535)), draw(st.integers(0, 65535))),
            draw(st.integers(0, 10**9)),
            draw(st.integers(1, 16)),
            tuple(
                ipaddress.ip_network(n)
                for n in draw(
                    st.lists(st.sampled_from(["0.0.0.0/0", "::/0", "198.18.8.0/24"]), max_size=3, unique=True)
                )
            ),
        )
    return Desired((), DaemonSpec(), c, b)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clustered())
def test_load_of_to_toml_is_identity_with_cluster_sections(d):
    back, _ = loads(to_toml(d), "export.toml")
    assert back == d


# ---- BIRD config ----


def _node_bgp(i: int) -> BgpSpec:
    d, _ = loads(lc.node_toml(i, "lab"))
    return d.bgp


def test_every_node_renders_the_same_path_attributes():
    """Only the router id and the neighbor lines may differ between nodes: same AS, same routes,
    same export filter, no per-node attribute; so the router sees equal-cost paths."""
    addrs = [ipaddress.ip_address(lc.PROT4), ipaddress.ip_address(lc.PROT6)]
    texts = [bgp.render(_node_bgp(i), addrs, f"node{i}") for i in (1, 2, 3)]
    strip = [re.sub(r"(router id|neighbor) \S+|node\d", "X", t) for t in texts]
    assert strip[0] == strip[1] == strip[2]
    t = texts[0]
    assert 'route 198.18.0.1/32 via "xgvip0";' in t and 'route 2001:db8:0:1::1/128 via "xgvip0";' in t
    assert t.count("check link;") == 4  # the routes (plain and blackhole) live only while the liveness device is up
    assert "local as 65001;" in t and "bfd on;" in t
    assert 'export where proto = "xg_vip4"' in t and 'export where proto = "xg_vip6"' in t
    assert "bgp_path.prepend" not in t and "bgp_med" not in t and "bgp_community" not in t


def test_withdrawn_config_has_no_route_but_keeps_the_sessions():
    t = bgp.render(_node_bgp(1), [], "node1")
    assert not re.search(r"^\s*route ", t, re.M)
    assert t.count("protocol bgp ") == 2


def test_ipv4_routes_go_only_to_ipv4_sessions():
    t = bgp.render(_node_bgp(2), [ipaddress.ip_address(lc.PROT4)], "node2")
    v4 = t[t.index("protocol bgp xg_up0v4") : t.index("protocol bgp xg_up1v6")]
    v6 = t[t.index("protocol bgp xg_up1v6") :]
    assert "ipv4 {" in v4 and "ipv6 {" not in v4 and "neighbor 198.18.18.1 as 65000" in v4
    assert "ipv6 {" in v6 and "neighbor 2001:db8:102::1 as 65000" in v6


def test_write_config_is_atomic_and_says_when_nothing_changed(tmp_path):
    p = tmp_path / "b" / "bird.conf"
    assert bgp.write_config(str(p), "a\n")
    assert not bgp.write_config(str(p), "a\n")
    assert bgp.write_config(str(p), "b\n") and p.read_text() == "b\n"
    assert [x.name for x in p.parent.iterdir()] == ["bird.conf"]


def test_write_config_follows_no_planted_tmp_file(tmp_path):
    """BIRD's config is written like the store (state.write_durably): a FILE.tmp symlink planted
    beside it is neither followed nor truncated, and the config stays readable by BIRD (0644)."""
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    p = tmp_path / "bird.conf"
    (tmp_path / "bird.conf.tmp").symlink_to(victim)
    assert bgp.write_config(str(p), "a\n")
    assert p.read_text() == "a\n" and victim.read_text() == "keep\n"
    assert p.stat().st_mode & 0o777 == 0o644


def test_announce_set_defaults_to_the_protected_addresses():
    b = _node_bgp(1)
    b2 = dataclasses.replace(b, announce=())
    prot = [ipaddress.ip_address("2001:db8:0:1::1"), ipaddress.ip_address("198.18.0.1")]
    assert bgp.announce_set(b2, prot) == sorted(prot, key=lambda a: a.version)
    assert bgp.announce_set(b, []) == list(b.announce)


# ---- store codecs and layout ----


def test_desired_value_round_trips_one_interface():
    d, _ = loads(lc.desired_toml())
    spec = d.interfaces[0]
    assert store.parse_desired("k", store.desired_text(spec).encode()) == spec
    two = to_toml(Desired((spec, InterfaceSpec("eth9"))))
    with pytest.raises(UserError):
        store.parse_desired("k", two.encode())


def test_bad_store_values_are_rejected_not_crashing():
    with pytest.raises(store.Rejected, match="etcd:/xdpguard/x/state/desired/eth0:2"):
        store.parse_desired("/xdpguard/x/state/desired/eth0", b"[[interface]]\nname = 1\n")
    with pytest.raises(store.Rejected, match="not JSON"):
        store.ClusterStore.parse_ban("198.18.9.1", b"not json")
    with pytest.raises(store.Rejected, match="expires"):
        store.ClusterStore.parse_ban("198.18.9.1", b'{"ttl": 5}')
    b = store.parse_ban("198.18.9.1", b'{"ttl": 5, "expires": 100.0, "node": "n1"}', now=99.0)
    assert b.reason == "operator" and b.operator and b.remaining_s(now=99.0) == 1.0


def test_key_layout():
    s = store.ClusterStore(ClusterSpec("lab", "node1", insecure=True))
    assert s.classify("/xdpguard/lab/state/desired/xgp0") == ("desired", "xgp0")
    assert s.classify("/xdpguard/lab/state/bans/2001:db8::1") == ("ban", "2001:db8::1")
    assert s.classify("/xdpguard/lab/nodes/node2") == ("node", "node2")
    assert s.classify("/xdpguard/labx/nodes/node2")[0] == "other"
    assert store._prefix_end("/xdpguard/lab/state/") == "/xdpguard/lab/state0"


def test_unreachable_store_is_one_user_error():
    s = store.ClusterStore(ClusterSpec("lab", "n1", ("http://127.0.0.1:9",), insecure=True), timeout_s=0.5)
    with pytest.raises(store.StoreUnavailable, match="does not answer"):
        s.read()


def test_pending_writes_keep_one_per_address():
    p = store.PendingWrites()
    p.add_ban("198.18.9.1", 60, "operator")
    p.add_ban("198.18.9.1", 30, "rate")
    assert list(p.bans) == ["198.18.9.1"] and p.bans["198.18.9.1"][:2] == (30, "rate")


def test_pending_writes_are_bounded_and_drop_the_soonest_expiring():
    p = store.PendingWrites(limit=100)
    for i in range(250):
        p.add_ban(f"198.18.{i // 200}.{i % 200 + 1}", 1000 + i, "rate")
    assert len(p.bans) <= 100 and p.dropped >= 150
    ttls = sorted(v[0] for v in p.bans.values())
    assert ttls[0] >= 1000 + 250 - 101  # the longest-lived ones are kept


# ---- the lab's addressing ----


def test_lab_addresses_stay_in_the_lab_ranges():
    nets = [ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8::/32")]
    addrs = [
        lc.PROT4,
        lc.PROT6,
        lc.CLIENT4,
        lc.CLIENT6,
        lc.ATTACKER4,
        lc.ATTACKER6,
        lc.ETCD4,
        *[a for i in range(1, lc.MAX_NODES + 1) for a in lc.node_links(i).values()],
    ]
    for a in addrs:
        assert any(ipaddress.ip_address(a) in n for n in nets), a
    assert len(set(addrs)) == len(addrs)
    assert "default" not in lc.router_bird_conf(3)
    assert lc.router_bird_conf(3).count("protocol bgp node") == 6 and "merge paths on" in lc.router_bird_conf(3)


# ---- CLI: bad input is one line, exit 2 ----


@pytest.mark.parametrize(
    "args, needle",
    [
        (["cluster", "status", "--config", "/nonexistent/x.toml"], "cannot read /nonexistent/x.toml"),
        (["cluster", "ban", "198.18.9.1", "--ttl", "10", "--config", "{cfg}"], "does not answer"),
        (["cluster", "ban", "not-an-ip", "--ttl", "10", "--config", "{cfg}"], "invalid address 'not-an-ip'"),
        (["cluster", "ban", "198.18.9.1", "--ttl", "0", "--config", "{cfg}"], "invalid --ttl"),
        (["cluster", "status", "--config", "{nocluster}"], "no [cluster] section"),
        (["cluster", "status", "--config", "{plain}"], "the cluster store http://127.0.0.1:9 is not TLS"),
        (["cluster", "run", "--config", "{plain}", "--duration", "1"], "is not TLS"),
        (["cluster", "bird-config", "--config", "{cfg}"], "no [bgp] section"),
    ],
)
def test_cluster_cli_bad_input(tmp_path, capsys, args, needle):
    cfg = tmp_path / "n.toml"
    cfg.write_text('[cluster]\nname = "t"\nnode = "n1"\nendpoints = ["http://127.0.0.1:9"]\ninsecure = true\n')
    plain = tmp_path / "plain.toml"  # no TLS and not insecure: refused before anything is sent
    plain.write_text('[cluster]\nname = "t"\nnode = "n1"\nendpoints = ["http://127.0.0.1:9"]\n')
    nocluster = tmp_path / "nocluster.toml"
    nocluster.write_text("[daemon]\n")
    rc = run([a.format(cfg=cfg, nocluster=nocluster, plain=plain) for a in args])
    assert rc == 2
    assert needle in one_line_error(capsys)


def test_cluster_help_lists_the_verbs():
    out = invoke("cluster", "--help").output
    for verb in ("run", "status", "ban", "unban", "apply", "bird-config"):
        assert verb in out
    assert "--nodes" in invoke("lab", "up", "--help").output


# ---- upstream escalation ----


def _loads(**per_node):
    """node → {addr: (pps, {port: pps})} as load/ keys hold it."""
    return {
        n: {"addresses": {a: {"pps": p, "ports": ports} for a, (p, ports) in v.items()}} for n, v in per_node.items()
    }


def test_fingerprint_is_the_dominant_port_or_protocol_or_nothing():
    assert escalate.fingerprint({"udp/7": 900.0, "tcp/80": 100.0}) == (17, 7)
    assert escalate.fingerprint({"udp/7": 300.0, "udp/9": 300.0, "tcp/80": 100.0}) == (17, None)
    assert escalate.fingerprint({"udp/7": 300.0, "tcp/80": 300.0, "icmp": 300.0}) == (None, None)
    assert escalate.fingerprint({}) == (None, None)


def test_escalation_sums_the_nodes_then_holds_then_withdraws():
    b = dataclasses.replace(_node_bgp(1), flowspec_pps=1000, blackhole_pps=5000, escalation_hold_s=3)
    a = "198.18.0.1"

    def escalate_decide(bgp, loads, active, now):  # this node's own config protects `a`
        return escalate.decide(bgp, loads, active, now, lambda x: x == a)

    quiet = _loads(n1={a: (300.0, {"tcp/80": 300.0})}, n2={a: (300.0, {"tcp/80": 300.0})})
    act, said = escalate_decide(b, quiet, {}, 0.0)
    assert act == {} and said == []
    # 600 + 600 crosses the FlowSpec threshold only together; the flood is udp/7
    attack = _loads(n1={a: (600.0, {"udp/7": 590.0})}, n2={a: (600.0, {"udp/7": 580.0, "tcp/80": 10.0})})
    act, said = escalate_decide(b, attack, {}, 1.0)
    assert (
        list(act) == [(a, "flowspec")]
        and act[(a, "flowspec")].escalation.flow_match() == "dst 198.18.0.1/32; proto = 17; dport = 7;"
    )
    assert "escalated: flowspec 198.18.0.1 udp/7" in said[0]
    big = _loads(n1={a: (3000.0, {"udp/7": 3000.0})}, n2={a: (3000.0, {"udp/7": 3000.0})})
    act, said = escalate_decide(b, big, act, 2.0)
    assert set(act) == {(a, "flowspec"), (a, "blackhole")} and len(said) == 1
    act, said = escalate_decide(b, quiet, act, 4.9)  # below for 2.9 s: still held
    assert len(act) == 2 and said == []
    act, said = escalate_decide(b, _loads(n1={a: (1500.0, {"udp/7": 1500.0})}), act, 4.0)  # FlowSpec level
    act, said = escalate_decide(b, quiet, act, 5.0)
    assert list(act) == [(a, "flowspec")] and "withdrawn: blackhole 198.18.0.1" in said[0]
    assert "peak 6,000 pps" in said[0]
    act, said = escalate_decide(b, quiet, act, 7.0)
    assert act == {} and "withdrawn: flowspec 198.18.0.1 udp/7" in said[0]


def test_escalation_routes_render_and_parse_with_bird(tmp_path):
    import shutil
    import subprocess

    b = dataclasses.replace(_node_bgp(1), flowspec_pps=1000, blackhole_pps=5000)
    A = ipaddress.ip_address
    esc = (
        bgp.Escalation(A("198.18.0.1"), "blackhole"),
        bgp.Escalation(A("198.18.0.1"), "flowspec", 17, 7),
        bgp.Escalation(A("2001:db8:0:1::1"), "flowspec", 6, None),
    )
    text = bgp.render(b, [A("198.18.0.1"), A("2001:db8:0:1::1")], "node1", esc)
    assert 'route 198.18.0.1/32 via "xgvip0" { bgp_community.add((65535,666)); };' in text
    assert (
        "route flow4 { dst 198.18.0.1/32; proto = 17; dport = 7; } "
        "{ bgp_ext_community.add((generic, 0x80060000, 0x0)); };" in text
    )
    assert "route flow6 { dst 2001:db8:0:1::1/128; next header = 6; }" in text
    assert text.count("flow4 { table xg_flow4; import none; export all; };") == 1
    # without escalation configured, no flow channel (adding one later restarts the session)
    assert "flow4" not in bgp.render(_node_bgp(1), [A("198.18.0.1")], "node1") or _node_bgp(1).flowspec_pps
    if shutil.which("bird") is None:
        pytest.fail("bird (Debian bird2) is needed: scripts/setup.sh installs it")
    for name, conf in (("node.conf", text), ("router.conf", lc.router_bird_conf(3))):
        (tmp_path / name).write_text(conf)
        p = subprocess.run(["bird", "-p", "-c", str(tmp_path / name)], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, (name, p.stderr)


def test_overloaded_node_prepends_its_as_and_keeps_its_routes():
    A = ipaddress.ip_address
    b = _node_bgp(2)
    t = bgp.render(b, [A(lc.PROT4), A(lc.PROT6)], "node2", prepend=3)
    assert t.count("bgp_path.prepend(65001); bgp_path.prepend(65001); bgp_path.prepend(65001); accept;") == 2
    assert 'route 198.18.0.1/32 via "xgvip0";' in t
    assert "bgp_path.prepend" not in bgp.render(b, [A(lc.PROT4)], "node2")


def test_list_chunks_round_trip_and_refuse_damage():
    from xdpguard.core.prefixes import parse_prefix

    ps = frozenset(
        parse_prefix(t).prefix
        for t in [f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}/32" for i in range(70000)]
        + ["2001:db8::/48", "198.51.100.0/24"]
    )
    bodies = store.chunk_bodies(ps)
    assert len(bodies) == 3 and all(len(b) < 1_100_000 for b in bodies)  # under etcd's 1.5 MiB as base64
    back = frozenset(p for b in bodies for p in store.parse_chunk(store.chunk_name(b), b))
    assert back == ps
    assert store.chunk_bodies(ps) == bodies  # deterministic: an unchanged list rewrites nothing
    with pytest.raises(store.UserError, match="damaged"):
        store.parse_chunk(store.chunk_name(bodies[0]), bodies[0][:-1])


# ---- the trust boundary: what a node takes from the store (issue 24) ----

import base64  # noqa: E402
import json  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from xdpguard.core.kernel import libbpf  # noqa: E402
from xdpguard.core.cluster import node as cnode  # noqa: E402

NODE = ClusterSpec(
    "lab",
    "n1",
    ("https://198.18.4.2:2379",),
    protect=("198.18.0.1/32", "2001:db8:0:1::1/128"),
    backends=("198.18.1.0/24", "2001:db8:0:2::/64"),
    hook="/bin/true",
)
KEY = "/xdpguard/lab/state/desired/xgp0"
IFACE_LINE = f'name = "{lc.NODE_IFACE}"\n'


def _value(add_to_iface: str = "", prepend: str = "", append: str = "") -> bytes:
    return (prepend + lc.desired_toml().replace(IFACE_LINE, IFACE_LINE + add_to_iface, 1) + append).encode()


HOSTILE_DESIRED = {
    "allow everything": _value('allow = ["0.0.0.0/0"]\n'),
    "allow every IPv6 source": _value('allow = ["::/0"]\n'),
    "block half the Internet": _value('block = ["128.0.0.0/1"]\n'),
    "a hook run as root": _value(append='\n[interface.events]\nhook = "/bin/sh -c id"\n'),
    "a local file read": _value('block_files = ["/etc/shadow"]\n'),
    "a [cluster] section": _value(prepend='[cluster]\nname = "x"\ninsecure = true\n\n'),
    "a [bgp] section": _value(
        prepend='[bgp]\nlocal_as = 1\nrouter_id = "192.0.2.1"\nneighbors = [{ address = "192.0.2.2", as = 2 }]\n\n'
    ),
    "a forward to etcd": _value(
        append='[[interface.forward]]\nproto = "tcp"\nports = "2379"\nprotected = "198.18.0.1"\n'
        'to = ["198.18.4.2:2379"]\n'
    ),
    "an HTTP service passing to etcd": _value(append=lc.http_toml().replace(f"{lc.BACKEND4}:80", "198.18.4.2:2379")),
    "an address the node does not protect": lc.desired_toml()
    .replace(f'"{lc.PROT4}", "{lc.PROT6}"]', f'"{lc.PROT4}", "{lc.PROT6}", "192.0.2.80"]')
    .encode(),
    "another interface under this key": lc.desired_toml().replace(IFACE_LINE, 'name = "eth7"\n').encode(),
    "not TOML": b"[[interface\n",
    "not UTF-8": b"\xff\xfe[[interface]]",
    "an envelope naming a bogus chunk": json.dumps(
        {"format": store.ENVELOPE, "toml": lc.desired_toml(), "chunks": {"block": ["../../etc"]}}
    ).encode(),
}


def _store() -> store.ClusterStore:
    return store.ClusterStore(NODE, trust=store.Trust.of(NODE))


@pytest.mark.parametrize("what", sorted(HOSTILE_DESIRED))
def test_hostile_desired_values_are_rejected(what):
    with pytest.raises(store.Rejected):
        _store().desired_from(KEY, HOSTILE_DESIRED[what])


def test_the_clusters_http_service_is_taken_from_the_store():
    spec = _store().desired_from(KEY, (lc.desired_toml() + lc.http_toml()).encode())
    (svc,) = [svc for a in spec.addresses for svc in a.http]
    assert (svc.port, svc.limits[0].requests, svc.rules[0].action) == (lc.HTTP_L7_PORT, lc.API_LIMIT, "challenge")


def test_the_lab_nodes_share_haproxys_tables_over_tls():
    d, _ = loads(lc.node_toml(2, "lab", nodes=3))
    assert d.cluster.peers == tuple(f"node{k}={lc.node_links(k)['mgmt4']}" for k in (1, 2, 3))
    assert d.cluster.cert and d.cluster.key and d.cluster.ca and not d.cluster.insecure


def test_the_lab_desired_state_is_taken_as_cluster_apply_writes_it():
    spec = _store().desired_from(KEY, lc.desired_toml().encode())
    assert spec.name == lc.NODE_IFACE and len(spec.forwards) == 5 and spec.events.hook is None
    # what `cluster apply` puts (config.to_toml: with a [daemon] section, which is never used)
    written = store.desired_text(spec).encode()
    assert b"[daemon]" in written and _store().desired_from(KEY, written) == spec
    odd = _store().desired_from(KEY, b'[daemon]\nmetrics = "0.0.0.0:9100"\n\n' + lc.desired_toml().encode())
    assert odd == spec  # a store value's [daemon] is ignored: only its interface is taken


def test_trust_defaults_refuse_and_bgp_announce_bounds_protect():
    bare = ClusterSpec("lab", "n1", ("https://198.18.4.2:2379",))
    with pytest.raises(store.Rejected, match="outside this node's .cluster. protect"):
        store.ClusterStore(bare, trust=store.Trust.of(bare)).desired_from(KEY, lc.desired_toml().encode())
    t = store.Trust.of(bare, _node_bgp(1))  # [bgp] announce: the protective addresses
    assert t.protects(lc.PROT4) and t.protects(lc.PROT6) and not t.protects("192.0.2.1") and not t.protects("junk")


@contextmanager
def _fake_guard(name):
    yield SimpleNamespace(maps={})


def _agent(monkeypatch, bgp=None):
    realised, said = [], []
    monkeypatch.setattr(
        cnode.reconcile,
        "realise",
        lambda spec, lists=True: realised.append(spec) or SimpleNamespace(action="attached", notes=[]),
    )
    a = cnode.NodeAgent(Desired((), cluster=NODE, bgp=bgp), report=said.append)
    return a, realised, said


def test_agent_skips_and_logs_hostile_desired_keys_and_takes_the_hook_from_its_own_file(monkeypatch):
    a, realised, said = _agent(monkeypatch)
    for i, (what, value) in enumerate(sorted(HOSTILE_DESIRED.items())):
        a.handle(store.Event("put", KEY, value, 10 + i))
    assert realised == [] and a.counts["rejected"] == len(HOSTILE_DESIRED)
    assert all(line.startswith(f"store: skipped {KEY}: ") for line in said), said
    a.handle(store.Event("put", KEY, lc.desired_toml().encode(), 99))
    assert [s.name for s in realised] == [lc.NODE_IFACE] and realised[0].events.hook == "/bin/true"


def _kv(key: str | bytes, value: bytes, rev: int = 7) -> dict:
    return {
        "key": base64.b64encode(key.encode() if isinstance(key, str) else key).decode(),
        "value": base64.b64encode(value).decode(),
        "mod_revision": str(rev),
    }


def test_a_full_read_with_hostile_keys_skips_them(monkeypatch):
    s = _store()
    kvs = [
        _kv(KEY, HOSTILE_DESIRED["allow everything"]),
        _kv("/xdpguard/lab/state/desired/eth1", b"\x00\x01"),
        _kv("/xdpguard/lab/state/bans/198.18.9.1", b'{"ttl": 60, "expires": 1e300}'),
        _kv("/xdpguard/lab/state/bans/not-an-ip", b'{"ttl": 60, "expires": 0}'),
        _kv("/xdpguard/lab/state/bans/198.18.9.2", b'{"ttl": 60, "expires": 1.0, "reason": "syn"}'),
        _kv("/xdpguard/lab/state/bans/198.18.9.3", b'{"ttl": 86400, "expires": 1.0, "reason": "connlimit"}'),
        _kv("/xdpguard/lab/state/bans/198.18.9.4", b'{"ttl": 60, "expires": 1.0, "reason": "operator"}'),
        _kv("/xdpguard/lab/nodes/evil", b"[1, 2]"),
        _kv(b"/xdpguard/lab/state/desired/\xff", b""),
    ]
    monkeypatch.setattr(s, "_range", lambda *a, **k: (7, kvs))
    snap = s.read()
    assert snap.desired == {} and list(snap.bans) == ["198.18.9.4"]
    assert len(snap.rejected) == 7 and snap.nodes["evil"] == {"error": "unreadable status"}


def test_status_survives_hostile_node_keys(monkeypatch):
    from xdpguard.core.cluster import ops

    monkeypatch.setattr(
        store.ClusterStore,
        "_range",
        lambda self, *a, **k: (
            3,
            [
                _kv("/xdpguard/lab/nodes/n2", b'{"applied_revision": "many", "announced": 5}'),
                _kv(
                    "/xdpguard/lab/nodes/n3", b'{"applied_revision": 3, "ready": true, "rejected": 2, "bans_failed": 1}'
                ),
            ],
        ),
    )
    res = ops.status(Desired((), cluster=NODE))
    assert [v.node for v in res.nodes] == ["n2", "n3"] and res.nodes[0].reasons == ["unreadable status in the store"]
    assert (res.nodes[1].rejected, res.nodes[1].bans_failed) == (2, 1)  # what the node skipped shows in status


LOAD_KEY = "/xdpguard/lab/load/"
HOSTILE_LOADS = [
    b"null",
    b"[1]",
    b'{"addresses": []}',
    b'{"addresses": {"198.18.0.1": {"pps": "lots"}}}',
    b'{"addresses": {"198.18.0.1": {"pps": 1e9, "ports": {"udp/7": "x"}}}}',
    b'{"addresses": {"198.18.0.1": {"pps": NaN}}}',
    b'{"addresses": {"nope": {"pps": 1}}}',
    b'{"addresses": {"198.18.0.1": 5}}',
    b"\xff",
]


def _escalating_agent(monkeypatch, loads: list[bytes]):
    b = dataclasses.replace(_node_bgp(1), flowspec_pps=1000, blackhole_pps=5000)
    a, _, said = _agent(monkeypatch, b)
    a.store_up, a.lease = True, 1
    a.meter = SimpleNamespace(updated=0.0, latest={})
    monkeypatch.setattr(a.store, "put_load", lambda *x: 1)
    monkeypatch.setattr(a.store, "lock_owner", lambda name: "n1")
    monkeypatch.setattr(
        a.store, "_range", lambda *x, **k: (5, [_kv(f"{LOAD_KEY}x{i}", v) for i, v in enumerate(loads)])
    )
    monkeypatch.setattr(a, "set_announce", lambda on: None)  # no BIRD here
    return a, said


def test_malformed_load_entries_never_end_the_escalation_round(monkeypatch):
    a, said = _escalating_agent(monkeypatch, HOSTILE_LOADS)
    a.escalation_round()
    assert a.escalations == {} and a.counts["rejected"] == len(HOSTILE_LOADS)
    assert all("store: skipped load/x" in line for line in said if line.startswith("store:"))


def test_a_blackhole_only_for_an_address_this_node_protects(monkeypatch):
    flood = {"pps": 1e6, "ports": {"udp/7": 1e6}}
    a, said = _escalating_agent(
        monkeypatch, [json.dumps({"addresses": {"192.0.2.66": flood, "8.8.8.8": flood, lc.PROT4: flood}}).encode()]
    )
    a.escalation_round()
    assert sorted(a.escalations) == [(lc.PROT4, "blackhole"), (lc.PROT4, "flowspec")]


def _ban_views(*bans):
    return SimpleNamespace(bans=[SimpleNamespace(source=s, expires_in_s=left, hits=0, reason=r) for s, left, r in bans])


def test_only_unspoofable_bans_are_spread_short_and_capped(monkeypatch):
    a, _, _ = _agent(monkeypatch)
    a.results = {"xgp0": "attached"}
    a.store_up = True
    put = []
    monkeypatch.setattr(a.store, "put_ban", lambda addr, ttl, reason, node: put.append((addr, ttl, reason)) or 1)
    monkeypatch.setattr(cnode, "established_tcp", lambda addr: addr != "198.18.8.11")
    many = [(f"198.18.9.{i}", 3000.0, "connlimit") for i in range(1, 101)]
    monkeypatch.setattr(
        cnode.cleansing,
        "ban_list",
        lambda name: _ban_views(
            ("198.18.8.66", 300.0, "syn"),
            ("198.18.8.67", 300.0, "ratelimit"),
            ("198.18.8.68", 300.0, "feature"),
            ("198.18.8.69", 300.0, "mitigation"),
            ("198.18.8.70", 300.0, "operator"),
            ("198.18.8.10", 3000.0, "connlimit"),
            ("198.18.8.11", 3000.0, "connlimit"),
            *many,
        ),
    )
    a.spread_local_bans()
    assert put[0] == ("198.18.8.10", cnode.SPREAD_TTL_S, "connlimit")
    assert len(put) == cnode.SPREAD_PER_ROUND and all(r == "connlimit" and t <= cnode.SPREAD_TTL_S for _, t, r in put)
    for _ in range(40):
        a.spread_local_bans()
    assert len(put) == 101 and "198.18.8.11" not in {p[0] for p in put}  # 100 + .10; .11 is not established
    assert len(a.spread) <= cnode.SPREAD_MAX


def test_spread_bans_go_to_the_dynamic_map_and_a_full_map_is_skipped(monkeypatch):
    a, _, said = _agent(monkeypatch)
    a.results = {"xgp0": "attached"}
    promoted, opbans = [], []
    monkeypatch.setattr(cnode.protection, "locked_guard", _fake_guard)
    monkeypatch.setattr(cnode.connlimit, "promote", lambda maps, found: promoted.extend(found) or [])

    def full(name, addrs, ttl):
        opbans.append(addrs[0])
        raise libbpf.BpfError(28, "bpf_map_update_elem: No space left on device")

    monkeypatch.setattr(cnode.cleansing, "ban_add", full)
    now = __import__("time").time()
    spread = store.parse_ban(
        "198.18.9.7", json.dumps({"ttl": 60, "expires": now + 60, "reason": "connlimit", "node": "n2"}).encode()
    )
    op = store.parse_ban("198.18.9.8", json.dumps({"ttl": 600, "expires": now + 600, "node": "n2"}).encode())
    a._apply_ban(spread)
    a._apply_ban(op)  # xg_opban_hash is full: logged, not raised
    assert [p[0] for p in promoted] == ["198.18.9.7"] and 59 <= promoted[0][1] <= 61
    assert opbans == ["198.18.9.8"] and a.counts["bans_failed"] == 1
    assert any("198.18.9.8 not applied" in line for line in said)


def test_cluster_store_uses_tls_and_the_client_certificate(tmp_path):
    for f in ("ca.crt", "n.crt", "n.key"):
        (tmp_path / f).write_text("x")
    spec = dataclasses.replace(
        NODE, ca=str(tmp_path / "ca.crt"), cert=str(tmp_path / "n.crt"), key=str(tmp_path / "n.key")
    )
    c = store.ClusterStore(spec)._clients[0]
    assert c.protocol == "https" and c.session.verify == spec.ca and c.session.cert == (spec.cert, spec.key)
    assert c.session.trust_env is False  # REQUESTS_CA_BUNDLE must not replace our CA
    with pytest.raises(UserError, match="is not TLS"):
        store.ClusterStore(ClusterSpec("lab", "n1", ("http://198.18.4.2:2379",)))
    with pytest.raises(UserError, match="cannot read it"):
        store.ClusterStore(dataclasses.replace(spec, key=str(tmp_path / "missing.key")))


@pytest.mark.parametrize(
    "snippet, needle",
    [
        ('cert = "/x/n.crt"', "cert and key go together"),
        ('user = "xg"', "user and password_file go together"),
        ('ca = "relative/ca.crt"', "must be an absolute file path"),
        ('protect = ["198.18.0.1/24"]', "has host bits set"),
        ('hook = "relative/prog"', "absolute path or a name on PATH"),
        ('insecure = "yes"', "must be true or false"),
    ],
)
def test_bad_cluster_trust_settings(snippet, needle):
    with pytest.raises(ConfigError) as ei:
        loads(f'[cluster]\nendpoints = ["https://198.18.4.2:2379"]\n{snippet}\n', "n.toml")
    assert needle in str(ei.value)


def test_cluster_trust_settings_load():
    d, _ = loads(
        '[cluster]\nendpoints = ["https://198.18.4.2:2379"]\nca = "/t/ca.crt"\ncert = "/t/n.crt"\n'
        'key = "/t/n.key"\nuser = "xg"\npassword_file = "/t/pw"\nprotect = ["198.18.0.0/24"]\n'
        'backends = ["2001:db8:0:2::/64"]\nhook = "/bin/true"\n'
    )
    c = d.cluster
    assert (c.ca, c.cert, c.key, c.user, c.password_file, c.insecure) == (
        "/t/ca.crt",
        "/t/n.crt",
        "/t/n.key",
        "xg",
        "/t/pw",
        False,
    )
    assert c.protect == ("198.18.0.0/24",) and c.backends == ("2001:db8:0:2::/64",) and c.hook == "/bin/true"


@pytest.mark.parametrize("what", ["hook", "allow"])
def test_cluster_apply_refuses_what_nodes_would_refuse(tmp_path, capsys, what):
    cfg = tmp_path / "n.toml"
    cfg.write_text(lc.node_toml(1, "lab"))
    f = tmp_path / "d.toml"
    f.write_text(
        lc.desired_toml() + '\n[interface.events]\nhook = "/bin/true"\n'
        if what == "hook"
        else lc.desired_toml().replace(IFACE_LINE, IFACE_LINE + 'allow = ["0.0.0.0/0"]\n')
    )
    assert run(["cluster", "apply", str(f), "--config", str(cfg)]) == 2
    assert (
        "events.hook is never put into the cluster store" if what == "hook" else "covers too much"
    ) in one_line_error(capsys)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=12,
)


@given(
    st.one_of(st.binary(max_size=200), JSONISH.map(lambda v: json.dumps(v).encode())),
    st.sampled_from(["198.18.9.1", "2001:db8::1", "x", ""]),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_store_value_makes_a_traceback(value, address):
    for fn in (
        lambda: store.parse_ban(address, value),
        lambda: store.parse_load("n", value),
        lambda: _store().desired_from(KEY, value),
    ):
        try:
            fn()
        except store.Rejected:
            pass
    assert isinstance(store.parse_status(value), dict)


@given(JSONISH)
@settings(max_examples=200, deadline=None)
def test_no_load_entry_makes_decide_raise(addresses):
    b = dataclasses.replace(_node_bgp(1), flowspec_pps=1, blackhole_pps=2)
    try:
        loads = {"n": store.parse_load("n", json.dumps({"addresses": addresses}).encode())}
    except store.Rejected:
        return
    escalate.decide(b, loads, {}, 0.0, lambda a: True)


def test_health_round_with_require_routes_runs(monkeypatch):
    """check_health with [bgp] require_routes (the lab's nodes have it): every name it needs exists."""
    a, _, _ = _agent(monkeypatch, _node_bgp(1))
    asked = []
    monkeypatch.setattr(cnode, "missing_routes", lambda nets: asked.append(list(nets)) or [])
    reasons = a.check_health()
    assert asked == [list(a.bgp.require_routes)] and "the store holds no desired interface" in reasons


def test_cc_bans_are_spread_bounded_and_applied_as_cc(monkeypatch):
    """An HTTP offender (reason cc: it completed handshakes and sent requests) is spread like a
    connlimit ban: the store takes it for at most SPREAD_TTL_MAX_S, the spreading node caps it at
    SPREAD_TTL_S, and the other node bans it in XDP with reason cc (not connlimit)."""
    now = __import__("time").time()

    def value(ttl, reason):
        return json.dumps({"ttl": ttl, "expires": now + ttl, "reason": reason, "node": "n1"}).encode()

    b = store.parse_ban("198.18.9.20", value(120, "cc"), now=now)
    assert (b.reason, b.ttl_s, b.operator) == ("cc", 120, False)
    with pytest.raises(store.Rejected, match="at most"):
        store.parse_ban("198.18.9.20", value(store.SPREAD_TTL_MAX_S + 1, "cc"), now=now)
    with pytest.raises(store.Rejected, match="not one a ban is spread for"):
        store.parse_ban("198.18.9.20", value(60, "syn"), now=now)  # spoofable evidence stays local

    a, _, _ = _agent(monkeypatch)
    a.results = {"xgp0": "attached"}
    a.store_up = True
    put = []
    monkeypatch.setattr(a.store, "put_ban", lambda addr, ttl, reason, node: put.append((addr, ttl, reason)) or 1)
    monkeypatch.setattr(cnode, "established_tcp", lambda addr: True)
    monkeypatch.setattr(
        cnode.cleansing,
        "ban_list",
        lambda name: _ban_views(("198.18.8.20", 3000.0, "cc"), ("198.18.8.21", 300.0, "syn")),
    )
    a.spread_local_bans()
    assert put == [("198.18.8.20", cnode.SPREAD_TTL_S, "cc")]

    cc, conn = [], []

    @contextmanager
    def guard(name):
        yield SimpleNamespace(promote_cc_bans=cc.extend)

    monkeypatch.setattr(cnode.protection, "locked_guard", guard)
    monkeypatch.setattr(cnode.connlimit, "promote", lambda g, found: conn.extend(found) or [])
    a._apply_ban(b)
    a._apply_ban(store.parse_ban("198.18.9.21", value(60, "connlimit"), now=now))
    assert [x[0] for x in cc] == ["198.18.9.20"] and [x[0] for x in conn] == ["198.18.9.21"]
