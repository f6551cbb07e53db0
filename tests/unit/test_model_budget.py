"""The reference model's TCP admission budget (budget.h budget_syn_admit, issue 25) on packets one
can check by eye; no root needed. tests/bpf/test_differential.py holds it against the kernel."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xdpguard.core.kernel import abi
from xdpguard.core.kernel.abi import Kind, Reason
from xdpguard.core.model.verdict import Model, Protected, Setup, budget_burst
from xdpguard.core.policy import AddressPolicy, GlobalPolicy, SynPolicy

P4, P6 = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("2001:db8::1")
NO_REFL = GlobalPolicy(reflection=False, reflection_ports=frozenset())
ON = SynPolicy(threshold_pps=1_000_000)  # a threshold out of reach: only the budget acts


def syn(src: str, dst=P4, dport: int = 80, flags: str = "S") -> bytes:
    ip = IPv6 if dst.version == 6 else IP
    return bytes(Ether() / ip(src=src, dst=str(dst)) / TCP(sport=4000, dport=dport, flags=flags))


def src(i: int, six: bool = False) -> str:
    return f"2001:db8:bad::{i + 1:x}" if six else str(ipaddress.ip_address("203.0.113.0") + i)


def model(synp: SynPolicy = ON, **kw) -> Model:
    p = Protected(AddressPolicy(syn=synp))
    return Model(Setup(NO_REFL, {P4: p, P6: p}, **kw))


def reasons(m: Model, pkts) -> list[Reason]:
    return [m.verdict(p).reason for p in pkts]


def test_the_burst_is_a_tenth_of_a_second_of_the_rate_within_its_bounds():
    assert [budget_burst(r) for r in (1, 2, 64, 500, 1000, 5000)] == [1, 2, 64, 64, 100, 500]


def test_past_the_budget_a_syn_meets_the_syn_defence():
    m = model(budget_tcp_syns=2)
    assert reasons(m, [syn(src(i)) for i in range(4)]) == [Reason.CLEAN] * 2 + [Reason.SYNCOOKIE] * 2
    assert m.verdict(syn(src(9))).action == "tx"  # answered with a cookie
    six = reasons(m, [syn(src(i, True), P6) for i in range(3)])
    assert six == [Reason.CLEAN] * 2 + [Reason.SYN]  # IPv6: retransmission authentication
    assert reasons(m, [syn(src(20), dport=443)] * 2) == [Reason.CLEAN] * 2  # another service, its own budget


def test_the_default_and_a_learned_rate():
    m = model()  # the default: 500 SYN/s, a burst of 64
    assert reasons(m, [syn(src(i)) for i in range(65)]).count(Reason.SYNCOOKIE) == 1
    m = model(budget_tcp_syns=100, budget_rates={(P4, 80): 1})
    assert reasons(m, [syn(src(i)) for i in range(3)]) == [Reason.CLEAN] + [Reason.SYNCOOKIE] * 2
    m = model(SynPolicy(threshold_pps=1_000_000, mode="retransmit"), budget_tcp_syns=1)
    assert reasons(m, [syn(src(i)) for i in range(3)]) == [Reason.CLEAN] + [Reason.SYN] * 2


def test_verified_sources_the_switch_and_what_has_no_budget():
    m = model(budget_tcp_syns=1)
    est = bytes(Ether() / IP(src=str(P4), dst=src(5)) / TCP(sport=80, dport=4000, flags="A"))
    m.egress(est)  # an established connection: verified
    assert reasons(m, [syn(src(5))] * 5) == [Reason.CLEAN] * 5  # never charged
    assert reasons(m, [syn(src(1)), syn(src(2))]) == [Reason.CLEAN, Reason.SYNCOOKIE]
    assert reasons(model(budget_tcp_syns=1, budget=False), [syn(src(i)) for i in range(4)]) == [Reason.CLEAN] * 4
    assert reasons(model(SynPolicy(), budget_tcp_syns=1), [syn(src(i)) for i in range(4)]) == [Reason.CLEAN] * 4
    # `always`: no budget, every unverified SYN meets the defence
    m = model(SynPolicy(always=True), budget_tcp_syns=1000)
    assert reasons(m, [syn(src(1)), syn(src(2, True), P6)]) == [Reason.SYNCOOKIE, Reason.SYN]
    # a SYN-ACK or an ACK is no SYN: not charged
    m = model(budget_tcp_syns=1)
    assert m.verdict(syn(src(1), flags="SA")).reason == Reason.CLEAN
    assert reasons(m, [syn(src(1)), syn(src(2))]) == [Reason.CLEAN, Reason.SYNCOOKIE]


def test_monitor_mode_makes_the_defence_a_would_drop():
    g = GlobalPolicy(reflection=False, reflection_ports=frozenset(), monitor_mask=1 << Reason.SYNCOOKIE)
    p = Protected(AddressPolicy(syn=ON))
    m = Model(Setup(g, {P4: p}, budget_tcp_syns=1))
    m.verdict(syn(src(1)))
    v = m.verdict(syn(src(2)))
    assert (v.action, v.kind, v.reason) == ("pass", Kind.WOULD_DROP, Reason.SYNCOOKIE)
    assert abi.BUDGET_TCP_SYNS == 500
