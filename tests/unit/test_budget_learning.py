"""The admission budgets learned from peacetime (xdpguard/core/daemon/budgets.py): a fake map
owner with the two calls the learner makes, and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, replace

from xdpguard.core.daemon import budgets
from xdpguard.core.kernel import abi
from xdpguard.core.policy import BudgetView, VerifySettings


@dataclass
class FakeGuard:
    """views: (protected, port) → a UDP service's BudgetView, (protected, port, "tcp") → a TCP one's."""

    views: dict
    floor: int = 0
    tcp_floor: int = 0

    def read_budgets(self):
        return list(self.views.values())

    def read_verify_settings(self):
        return VerifySettings(budget_udp_pps=self.floor, budget_tcp_syns=self.tcp_floor)

    def write_budget_rate(self, protected, port, rate, proto="udp"):
        k = (protected, port) if proto == "udp" else (protected, port, proto)
        if k not in self.views or self.views[k].proto != proto:
            return False
        self.views[k] = replace(self.views[k], rate=rate)
        return True


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _run(g, learner, clock, rounds, adm_per_s, drop_per_s=0, peace=True, lengths=None):
    for _ in range(rounds):
        clock.t += budgets.EVERY_S
        for k, v in g.views.items():
            g.views[k] = replace(
                v,
                admitted=v.admitted + int(adm_per_s * budgets.EVERY_S),
                dropped=v.dropped + int(drop_per_s * budgets.EVERY_S),
            )
        learner.round(g, peace, lengths)


def _one(rate=0):
    return {("198.18.0.1", 53): BudgetView("198.18.0.1", 53, rate, 0, 0, 0)}


def _grow(g, learner, clock, steps, adm_per_s, **kw):
    """Rounds across `steps` growth periods (a rise at most doubles, once per GROWTH_S)."""
    for _ in range(steps):
        _run(g, learner, clock, 3, adm_per_s, **kw)
        clock.t += budgets.GROWTH_S


def test_a_busy_service_gets_headroom_over_its_peacetime_peak_doubling_at_most_per_period():
    g, clock, said = FakeGuard(_one()), Clock(), []
    learner = budgets.BudgetLearner(said.append, clock)
    _run(g, learner, clock, 20, 5000)
    assert g.views[("198.18.0.1", 53)].rate == 2000  # wants 10,000: one doubling so far
    assert said and "1,000 -> 2,000" in said[0]
    _grow(g, learner, clock, 4, 5000)
    assert g.views[("198.18.0.1", 53)].rate == 10_000


def test_a_reading_is_kept_only_when_the_next_round_is_peaceful_too():
    """A flood's first round comes before its detection: that reading is dropped when the next
    round sees the attack."""
    g, clock = FakeGuard(_one()), Clock()
    learner = budgets.BudgetLearner(clock=clock)
    _run(g, learner, clock, 1, 100)
    for _ in range(5):  # each flood round looks peaceful, the next one is the attack
        _run(g, learner, clock, 1, 30_000)
        _run(g, learner, clock, 1, 30_000, peace=False)
    assert g.views[("198.18.0.1", 53)].rate == 0


def test_a_quiet_service_keeps_the_floor_and_nothing_is_written():
    g, clock = FakeGuard(_one()), Clock()
    learner = budgets.BudgetLearner(clock=clock)
    _run(g, learner, clock, 20, 100)
    assert g.views[("198.18.0.1", 53)].rate == 0  # 0: the floor, follows `verify set`


def test_nothing_is_learned_during_an_attack_and_in_peace_what_the_floor_cut_counts():
    g, clock = FakeGuard(_one()), Clock()
    learner = budgets.BudgetLearner(clock=clock)
    _run(g, learner, clock, 20, 900, drop_per_s=30_000, peace=False)  # an attack: the flood is no baseline
    assert g.views[("198.18.0.1", 53)].rate == 0
    _run(g, learner, clock, 20, 1000, drop_per_s=30_000)  # "peace" with the budget holding a flood back
    # only the admitted 1,000/s count, never the 30,000 held back: one doubling, not 20 x the floor
    assert g.views[("198.18.0.1", 53)].rate == 2000
    learner2, g2, clock2 = budgets.BudgetLearner(clock=Clock()), FakeGuard(_one()), None
    clock2 = learner2.clock
    _grow(g2, learner2, clock2, 3, 1000, drop_per_s=500)  # real clients a little over the floor
    assert g2.views[("198.18.0.1", 53)].rate == 3000


def test_the_learned_rate_is_capped_and_follows_the_operators_floor():
    g, clock = FakeGuard(_one(), floor=200), Clock()
    learner = budgets.BudgetLearner(clock=clock)
    _grow(g, learner, clock, 8, 1_000_000)
    assert g.views[("198.18.0.1", 53)].rate == budgets.CEILING_X * 200


def test_large_datagrams_count_in_units_and_a_peak_is_forgotten_after_the_window():
    g, clock = FakeGuard(_one()), Clock()
    learner = budgets.BudgetLearner(clock=clock)
    _grow(g, learner, clock, 5, 1000, lengths={("198.18.0.1", 53): [1000, 1000]})  # 8 units each
    assert g.views[("198.18.0.1", 53)].rate == 16_000
    clock.t += budgets.WINDOW_S + budgets.BUCKET_S
    _run(g, learner, clock, 4, 0)
    assert g.views[("198.18.0.1", 53)].rate == 0


def test_a_swept_entry_starts_again_without_a_bogus_rate():
    g, clock = FakeGuard(_one()), Clock()
    learner = budgets.BudgetLearner(clock=clock)
    _grow(g, learner, clock, 3, 3000)
    assert g.views[("198.18.0.1", 53)].rate == 6000
    g.views[("198.18.0.1", 53)] = BudgetView("198.18.0.1", 53, 0, 0, 0, 0)  # swept and made again: counters at 0
    clock.t += budgets.EVERY_S
    learner.round(g, True)
    assert g.views[("198.18.0.1", 53)].rate == 6000  # the remembered peak, no negative delta learned


TCP = ("198.18.0.1", 53, "tcp")


def _tcp(rate=0):
    return {TCP: BudgetView("198.18.0.1", 53, rate, 0, 0, 0, "tcp")}


def test_a_tcp_service_learns_its_new_connections_and_does_not_mix_with_the_udp_one():
    """budget.h keeps a TCP service's budget (unverified SYNs below the SYN threshold) in the same
    map, under the same address and port as a UDP service may have: each is learned from its own
    counters, in its own unit, with its own floor (the TCP one: 500 SYN/s before any baseline)."""
    g, clock, said = FakeGuard({**_one(), **_tcp()}), Clock(), []
    learner = budgets.BudgetLearner(said.append, clock)
    _run(g, learner, clock, 20, 5000)  # both see 5,000/s: udp/53 in units, tcp/53 in SYNs
    assert g.views[("198.18.0.1", 53)].rate == 2000  # the UDP floor (1,000) doubled once
    assert g.views[TCP].rate == 1000  # the TCP floor (500) doubled once, not the UDP rate
    assert set(learner.services) == {("udp", "198.18.0.1", 53), ("tcp", "198.18.0.1", 53)}
    assert "budget tcp 198.18.0.1:53: 500 -> 1,000 SYN/s" in " ".join(said), said
    _grow(g, learner, clock, 5, 5000)
    assert g.views[TCP].rate == 10_000  # HEADROOM x the peak of 5,000 SYN/s (under 20 x 500)


def test_a_quiet_tcp_service_keeps_its_floor_which_follows_the_operators_setting():
    g, clock = FakeGuard(_tcp(), tcp_floor=2000), Clock()
    learner = budgets.BudgetLearner(clock=clock)
    _grow(g, learner, clock, 3, 900)  # 2 x 900 = 1,800: under the operator's floor of 2,000
    assert g.views[TCP].rate == 0  # 0: the setting applies (and a later `verify set` at once)
    _grow(g, learner, clock, 3, 1500)  # 3,000 wanted: over the floor, written
    assert g.views[TCP].rate == 3000
    g.tcp_floor = 0
    _grow(g, learner, clock, 8, 1_000_000)  # a flood taken for peace is capped at 20 x the floor
    assert g.views[TCP].rate == budgets.CEILING_X * abi.BUDGET_TCP_SYNS


def test_a_syn_flood_the_tcp_budget_holds_back_is_no_baseline():
    """SYNs the budget sent to the SYN defence count in a reading only while they are fewer than
    the admitted ones; no reading during an attack."""
    g, clock = FakeGuard(_tcp()), Clock()
    learner = budgets.BudgetLearner(clock=clock)
    _run(g, learner, clock, 20, 500, drop_per_s=4000, peace=False)
    _run(g, learner, clock, 20, 500, drop_per_s=4000)  # "peace", the budget holding a flood back
    # only the admitted 500/s count, never the 4,000 held back: one doubling, not 20 x the floor
    assert g.views[TCP].rate == 1000
    g2, clock2 = FakeGuard(_tcp()), Clock()
    learner2 = budgets.BudgetLearner(clock=clock2)
    _grow(g2, learner2, clock2, 3, 500, drop_per_s=300)  # real clients a little over the floor
    assert g2.views[TCP].rate == 1600
