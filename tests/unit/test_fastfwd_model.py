"""The forwarding fast path's pure parts: which conntrack entries it takes, the two entries a flow
becomes, the map key/value encoding, and the C constants it mirrors (steps/fastfwd.h)."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import re
import socket

from xdpguard.cli.main import run
import pytest
from dataclasses import replace

from xdpguard.core import fastfwd, guard, reconcile
from xdpguard.core.desired.diff import diff
from xdpguard.core.desired.dump import to_toml
from xdpguard.core.desired.load import ConfigError, loads
from xdpguard.core.nat import forward
from xdpguard.core.verbs import imperative
from xdpguard.core.errors import UserError
from xdpguard.core.kernel import abi
from xdpguard.core.model import fastfwd as m
from cli_helpers import invoke, one_line_error

A = ipaddress.IPv4Address
TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
OK = m.IPS_ASSURED | m.IPS_DST_NAT | 0b1010  # assured, DNATed (and seen-reply, confirmed)
PROT = [A("198.18.0.1"), ipaddress.IPv6Address("2001:db8::1")]


def rec(proto=TCP, orig=("198.18.0.10", 40000, "198.18.0.1", 7), reply=("198.18.1.2", 7, "198.18.1.1", 40001), **kw):
    d = {"status": OK, "tcp_state": m.TCP_CONNTRACK_ESTABLISHED if proto == TCP else None}
    d.update(kw)
    return m.CtRecord(proto, orig, reply, d["status"], d["tcp_state"], d.get("timeout"))


def test_an_established_dnat_becomes_a_flow_with_the_masquerade_port():
    (f,) = m.select_flows([rec()], PROT)
    assert f == m.NatFlow(TCP, A("198.18.0.10"), 40000, A("198.18.0.1"), 7, A("198.18.1.2"), 7, A("198.18.1.1"), 40001)


def test_what_stays_on_the_slow_path():
    cases = [
        rec(tcp_state=2),  # SYN_RECV: not established yet
        rec(tcp_state=5),  # TIME_WAIT... any state other than established
        rec(status=m.IPS_DST_NAT | m.IPS_SEEN_REPLY),  # TCP not assured
        rec(status=m.IPS_ASSURED),  # not DNATed (the protector's own connection)
        rec(orig=("198.18.0.10", 40000, "198.18.0.99", 7)),  # not to a protected address
        rec(proto=1),  # ICMP
        rec(orig=("2001:db8::10", 1, "2001:db8::1", 7), reply=("2001:db8:2::2", 7, "2001:db8::10", 1)),  # IPv6
    ]
    assert [m.select_flows([c], PROT) for c in cases] == [[]] * len(cases)
    assert len(m.select_flows([rec(proto=UDP, tcp_state=None)], PROT)) == 1
    # UDP: answered is enough (not yet assured); never answered is not
    assert len(m.select_flows([rec(proto=UDP, status=m.IPS_DST_NAT | m.IPS_SEEN_REPLY)], PROT)) == 1
    assert m.select_flows([rec(proto=UDP, status=m.IPS_DST_NAT | m.IPS_ASSURED)], PROT) == []


def test_a_backend_marked_down_keeps_its_flows_on_the_slow_path():
    assert m.select_flows([rec()], PROT, down={(A("198.18.1.2"), 7)}) == []
    assert len(m.select_flows([rec()], PROT, down={(A("198.18.1.2"), 8)})) == 1


def test_a_flow_is_two_entries_each_undoing_the_other():
    (f,) = m.select_flows([rec()], PROT)
    table = m.desired_entries([f])
    assert table == {
        (TCP, A("198.18.0.10"), 40000, A("198.18.0.1"), 7): (
            (TCP, A("198.18.1.1"), 40001, A("198.18.1.2"), 7),
            m.FWD_IN,
            0,
        ),
        (TCP, A("198.18.1.2"), 7, A("198.18.1.1"), 40001): (
            (TCP, A("198.18.0.1"), 7, A("198.18.0.10"), 40000),
            m.FWD_OUT,
            0,
        ),
    }
    # a packet rewritten one way and answered (tuple reversed) is rewritten back to the reversed original
    for key, (to, _, _) in table.items():
        reply = (to[0], to[3], to[4], to[1], to[2])
        back, _, _ = table[reply]
        assert (back[0], back[3], back[4], back[1], back[2]) == key


def test_routed_mode_flow_keeps_the_client_address():
    (f,) = m.select_flows([rec(reply=("198.18.1.2", 7, "198.18.0.10", 40000))], PROT)
    assert f.nat_addr == A("198.18.0.10") and f.nat_port == 40000


def test_map_encoding_round_trips_in_network_order():
    t = (TCP, A("198.18.0.10"), 40000, A("198.18.0.1"), 7)
    k = guard._fwd_key(t)
    assert bytes(k.saddr) == A("198.18.0.10").packed and k.sport == socket.htons(40000)
    assert guard._fwd_tuple(k) == t
    to = (TCP, A("198.18.1.1"), 40001, A("198.18.1.2"), 7)
    v = guard._fwd_value(to, m.FWD_IN)
    assert guard._fwd_tuple(k, v) == to and v.dir == m.FWD_IN


def _c(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def test_the_c_header_matches_its_python_mirror():
    c = _c(abi.FWD_HEADER.read_text())
    d = {k: v for k, v in re.findall(r"#define\s+XG_FWD_(\w+)\s+(\w+)", c)}
    assert (int(d["IN"]), int(d["OUT"])) == (m.FWD_IN, m.FWD_OUT)
    cnt = {k.removeprefix("CNT_").lower(): int(v) for k, v in d.items() if k.startswith("CNT_") and k != "CNT_MAX"}
    assert sorted(cnt, key=cnt.get) == list(abi.FWD_COUNTERS) and int(d["CNT_MAX"]) == len(abi.FWD_COUNTERS)
    sizes = {"__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8}
    for cname, ctype in (("xg_fwd_key", abi.FwdKey), ("xg_fwd", abi.Fwd), ("xg_fwd_counter", abi.FwdCounter)):
        body = re.search(rf"struct {cname} \{{(.*?)\}};", c, re.S)[1]
        fields = re.findall(r"(__u\d+)\s+(\w+)(?:\[(\d+)\])?;", body)
        assert [f[1] for f in fields] == [f[0] for f in ctype._fields_], cname
        assert sum(sizes[t] * int(n or 1) for t, _, n in fields) == ctypes.sizeof(ctype), cname
    names = re.findall(r"BPF_F_TABLE\(\"\w+\", [^,]+, [^,]+, (\w+),", c)
    assert names == [x.value for x in abi.FastFwdMap]
    assert re.search(rf"int {abi.FWD_RETURN_FUNC}\(", abi.PROGRAM_SOURCE.read_text())


# ---- conntrack's timeouts of fast flows ----

S = m.ONE_SEC_NS


def test_ct_timeouts_key_the_client_tuple():
    t = m.ct_timeouts([rec(timeout=100), rec(UDP, timeout=None), rec(orig=("bad", 1, "x", 2), timeout=5)])
    assert t == {(TCP, A("198.18.0.10"), 40000, A("198.18.0.1"), 7): 100}


def test_refresh_due_follows_the_traffic_conntrack_did_not_see():
    f = m.select_flows([rec(UDP, timeout=0)], PROT)[0]
    orig, reply = f.entries()[0][0], f.entries()[1][0]
    full = {UDP: 120, TCP: 432000}
    now = 1000 * S
    # a packet 2 s ago (either direction): conntrack would hold 118 s; it holds 90 → refreshed
    assert m.refresh_due([f], {orig: 90}, {orig: now - 2 * S}, now, full) == [(f, 118)]
    assert m.refresh_due([f], {orig: 90}, {reply: now - 2 * S, orig: now - 50 * S}, now, full) == [(f, 118)]
    # less than an eighth (15 s) behind: left alone (no netlink write per flow per second)
    assert m.refresh_due([f], {orig: 110}, {orig: now - 2 * S}, now, full) == []
    # idle: the last fast packet is as old as conntrack's view of it → never refreshed
    assert m.refresh_due([f], {orig: 20}, {orig: now - 100 * S}, now, full) == []
    # unknown to conntrack, never seen, or no timeout known for the protocol: nothing
    assert m.refresh_due([f], {}, {orig: now}, now, full) == []
    assert m.refresh_due([f], {orig: 1}, {}, now, full) == []
    assert m.refresh_due([f], {orig: 1}, {orig: now}, now, {TCP: 5}) == []
    # a short timeout (the lab's): a second behind is enough
    assert m.refresh_due([f], {orig: 3}, {orig: now}, now, {UDP: 5}) == [(f, 5)]


# ---- per-rule counters of fast packets ----


def test_rule_ids_are_stable_nonzero_and_match_the_rule_a_flow_came_in_by():
    assert m.rule_id("tcp/198.18.0.1/7") == m.rule_id("tcp/198.18.0.1/7") != m.rule_id("udp/198.18.0.1/7")
    assert all(m.rule_id(f"tcp/198.18.0.1/{p}") for p in range(1, 2000))
    tcp, udp = m.select_flows([rec(), rec(UDP)], PROT)
    rules = [
        ("udp", A("198.18.0.1"), 1, 6, "udp/198.18.0.1/1-6"),
        ("tcp", A("198.18.0.1"), 7, 7, "tcp/198.18.0.1/7"),
        ("udp", A("198.18.0.1"), 7, 9, "udp/198.18.0.1/7-9"),
    ]
    assert m.flow_rule_ids([tcp, udp], rules) == {
        tcp: m.rule_id("tcp/198.18.0.1/7"),
        udp: m.rule_id("udp/198.18.0.1/7-9"),
    }
    assert m.flow_rule_ids([tcp], [("tcp", A("198.18.0.9"), 7, 7, "x")]) == {}


def test_forward_list_shows_fast_packets_beside_nftables(monkeypatch):
    view = forward.RuleView("tcp/198.18.0.1/7", "xgp0", "tcp", "198.18.0.1", "7", [], 0, False, None, 5, 500)
    res = forward.ForwardListResult([replace(view, fast_packets=3000, fast_bytes=4_000_000)], {}, True)
    monkeypatch.setattr(fastfwd, "show", lambda iface: res)
    out = invoke("forward", "list").output
    assert "tcp/198.18.0.1/7 on xgp0: 5 packets, 500 B + fast path 3000 packets, 4.0 MB" in out, out
    monkeypatch.setattr(fastfwd, "show", lambda iface: replace(res, rules=[view]))
    assert "fast path" not in invoke("forward", "list").output


# ---- the CLI: `forward fastpath` and `attach --fast-forward` with the core faked ----

RESULT = fastfwd.FastPathResult(
    "xgp0", "xgb1", 42, 2, 4, 1, {"in": (300, 400_000), "out": (290, 390_000), "end": (1, 66), "fib": (0, 0)}, ["n1"]
)


def test_fastpath_cli_is_the_verb_and_renders(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(
        imperative, "forward_fastpath", lambda iface, via, off: seen.append((iface, via, off)) or RESULT
    )
    r = invoke("forward", "fastpath", "xgp0", "--via", "xgb1")
    assert r.exit_code == 0 and "2 flows (4 entries written, 1 deleted)" in r.output and "n1" in r.output
    assert "in   300 packets" in r.output
    r = invoke("forward", "fastpath", "xgp0", "--off", "--json")
    assert json.loads(r.output)["counters"]["in"] == [300, 400_000]
    assert seen == [("xgp0", "xgb1", False), ("xgp0", None, True)]


def test_fastpath_cli_core_error_is_one_line(monkeypatch, capsys):
    def refuse(iface, via, off):
        raise UserError(f"{iface}: the attached program has no forwarding fast path (attach with --fast-forward)")

    monkeypatch.setattr(imperative, "forward_fastpath", refuse)
    assert run(["forward", "fastpath", "xgp0"]) == 2
    assert "--fast-forward" in one_line_error(capsys)
    assert run(["forward", "fastpath", "bad/name"]) == 2
    assert "bad/name" in one_line_error(capsys)


# ---- the desired spec's `[interface.fast_path]` ----

SPEC = """\
[[interface]]
name = "xgp0"
protect = ["198.18.0.1"]
"""


def test_fast_path_loads_dumps_and_diffs():
    d = loads(SPEC + '[interface.fast_path]\nvia = "xgb1"\n', "t.toml")[0]
    assert d.interfaces[0].fast_path == "xgb1"
    text = to_toml(d)
    assert "[interface.fast_path]" in text and 'via = "xgb1"' in text
    assert loads(text, "again.toml")[0] == d and not diff(d, loads(text, "again.toml")[0])
    off = loads(SPEC, "t.toml")[0]
    assert off.interfaces[0].fast_path is None and "fast_path" not in to_toml(off)
    assert loads(SPEC + "[interface.fast_path]\n", "t.toml")[0] == off  # an empty table: off
    ch = diff(off, d)
    assert [c.text() for c in ch] == ["~ xgp0 fast_path: off -> via xgb1"]


@pytest.mark.parametrize(
    "body, needle",
    [
        ('via = "xgp0"', "not the protected one"),
        ('via = "a/b"', "valid interface name"),
        ('via = "x23456789012345678"', "valid interface name"),
        ("via = 3", "must be"),
        ('via = "xgb1"\ncompile = true', "unknown key"),
    ],
)
def test_bad_fast_path_names_the_field(body, needle):
    with pytest.raises(ConfigError) as e:
        loads(SPEC + "[interface.fast_path]\n" + body + "\n", "t.toml")
    assert needle in e.value.message and "fast_path" in e.value.message


def test_a_spec_with_the_fast_path_compiles_it_in():
    spec = loads(SPEC + '[interface.fast_path]\nvia = "xgb1"\n', "t.toml")[0].interfaces[0]
    assert reconcile.fast_defines(spec) == {abi.FWD_DEFINE: 1}
    assert reconcile.fast_defines(spec, {"X": 2}) == {"X": 2, abi.FWD_DEFINE: 1}
    off = replace(spec, fast_path=None)
    assert reconcile.fast_defines(off) is None and reconcile.fast_defines(off, {"X": 2}) == {"X": 2}
    assert reconcile.fast_defines(None) is None


def test_attach_fast_forward_passes_the_flag_only_when_asked(monkeypatch, capsys):
    got = []

    def attach(*args, **kwargs):
        got.append(kwargs)
        raise UserError("stop here")

    monkeypatch.setattr(reconcile, "attach", attach)
    assert run(["attach", "veth-xg0", "--protect", "198.18.0.1", "--fast-forward"]) == 2
    assert run(["attach", "veth-xg0", "--protect", "198.18.0.1"]) == 2
    assert got[0]["defines"] == {abi.FWD_DEFINE: 1} and "defines" not in got[1]
    assert "xg_fwd_lru" in invoke("attach", "x", "--protect", "198.18.0.1", "--fast-forward", "--ebpf").output
