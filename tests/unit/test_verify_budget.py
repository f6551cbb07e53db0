"""`xdpguard verify set --budget-tcp-syns N` (issue 25): the TCP budget's floor is an operator
setting of the desired spec. It is stored before the reconciler's writer runs, shown by
`verify show`, exported and applied back to nothing; bad input is one `xdpguard: error:` line,
exit 2, and nothing stored. The store is real (test_store_first's fixture: a temp state dir);
the kernel is faked at the map owner, whose settings are what write_differences was given."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from xdpguard.cli.main import run
from xdpguard.core import policy, protection, reconcile, store
from xdpguard.core.desired.diff import diff
from xdpguard.core.desired.dump import to_toml
from xdpguard.core.desired.load import loads
from xdpguard.core.kernel import abi
from xdpguard.core.model.desired import Desired
from xdpguard.core.verbs import verified
from xdpguard.core.errors import UserError

from test_store_first import IF, S0, NoMaps, stored  # noqa: F401 (the fixture)


class Kernel:
    """What the faked maps hold: the verify settings the writer wrote, and one TCP budget."""

    def __init__(self):
        self.verify = policy.VerifySettings()
        self.writes: list[policy.VerifySettings] = []


@pytest.fixture
def kernel(stored, monkeypatch):  # noqa: F811
    k = Kernel()

    class Maps(NoMaps):
        def read_verify_settings(self):
            return k.verify

        def verified_counters(self):
            return {"verified": {}, "budget": {"admitted": 0, "dropped": 0, "verified": 0}, "verified_drops": {}}

        def read_budgets(self):
            return [policy.BudgetView("198.18.0.2", 80, 0, 7, 3, 11, "tcp")]

    def write(g, old, new, **kw):
        assert store.stored_interface(IF) == new  # stored before the kernel is written
        if old.verify != new.verify:
            k.verify = new.verify
            k.writes.append(new.verify)
        return []

    monkeypatch.setattr(protection.Guard, "open", staticmethod(Maps))
    monkeypatch.setattr(reconcile, "export_guard", lambda g, lists=True, stored=None: replace(S0, verify=k.verify))
    monkeypatch.setattr(reconcile, "write_differences", write)
    return k


def test_budget_tcp_syns_is_stored_written_and_shown(kernel, capsys):
    assert run(["verify", "set", "--budget-tcp-syns", "2k", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert store.stored_interface(IF).verify.budget_tcp_syns == 2000
    assert [w.budget_tcp_syns for w in kernel.writes] == [2000]
    assert out["settings"]["budget_tcp_syns"] == 2000 and out["effective"]["budget_tcp_syns"] == 2000
    assert out["settings"]["budget_udp_pps"] == 0  # the others stay
    assert run(["verify", "show", "--iface", IF]) == 0
    text = capsys.readouterr().out
    assert "new TCP connections 2,000/s" in text
    assert "198.18.0.2 tcp/80: 7 admitted, 3 to the SYN defence, 11 verified" in text
    # 0: back to the data path's default, which `verify show` names
    assert run(["verify", "set", "--budget-tcp-syns", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["settings"]["budget_tcp_syns"] == 0 and out["effective"]["budget_tcp_syns"] == abi.BUDGET_TCP_SYNS
    assert store.stored_interface(IF).verify == policy.VerifySettings()


@pytest.mark.parametrize(
    "value, needle",
    [
        ("-5", "budget-tcp-syns"),
        ("lots", "budget-tcp-syns"),
        ("1.5", "budget-tcp-syns"),
        (str(policy.MAX_PPS + 1), "invalid budget_tcp_syns"),
        ("5G", "invalid budget_tcp_syns"),
    ],
)
def test_a_bad_budget_tcp_syns_is_one_error_line_and_nothing_is_stored(kernel, capsys, value, needle):
    before = store.load()
    gen = store.load_meta().generation
    assert run(["verify", "set", "--budget-tcp-syns", value]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("xdpguard: error: ") and needle in err[0], err
    assert store.load() == before and store.load_meta().generation == gen and kernel.writes == []


def test_the_verb_refuses_a_bad_value_before_storing():
    with pytest.raises(UserError, match="invalid budget_tcp_syns"):
        verified.verify_set(IF, budget_tcp_syns=-1)


def test_export_of_the_setting_applies_back_to_nothing():
    """`[interface.verify] budget_tcp_syns = N` loads, dumps and diffs like the UDP one; the
    export of a spec holding it loads back equal (export -> apply is a no-op)."""
    spec = replace(S0, verify=policy.VerifySettings(budget_tcp_syns=1500))
    text = to_toml(Desired((spec,)))
    assert "budget_tcp_syns = 1500" in text
    back, _ = loads(text)
    assert back.interfaces[0].verify == spec.verify
    assert diff(back, Desired((spec,))) == []
    [ch] = diff(Desired((S0,)), Desired((spec,)))
    assert "budget_tcp_syns 1500" in ch.new


def test_the_setting_round_trips_through_the_c_layout():
    v = policy.VerifySettings(budget_tcp_syns=1234, budget_udp_pps=7, budget=False)
    c = v.to_c()
    assert (c.budget_tcp_syns, c.budget_udp_pps, c.flags) == (1234, 7, abi.VC_NO_BUDGET)
    assert policy.VerifySettings.from_c(c) == v
