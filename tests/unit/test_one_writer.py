"""One writer (issue 26): a verb is an edit of the desired spec, stored, then realised by the
reconciler's writer, with the maps opened once and its input parsed once.

The real verb (imperative.py), the real reconcile.edit and write_differences and the real store
(under a private state dir) run; the kernel is faked at the map owner: Guard.open gives a guard
that counts what is asked of it, and the realised spec it starts from is fixed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from xdpguard.core import policy, prefixes, protection, reconcile, state, store
from xdpguard.core.model.desired import AddressSpec, InterfaceSpec, norm_interface
from xdpguard.core.verbs import imperative
from xdpguard.core.errors import UserError

IF = "xgt0"
ADDR = ipaddress.ip_address("198.18.0.2")


class CountingGuard:
    opened = 0

    def __init__(self, iface):
        type(self).opened += 1
        self.iface = iface
        self.upserts: list = []
        self.deletes: list = []
        self.swept: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def sweep_expired(self, which):
        self.swept.append(which)
        return 0

    def upsert(self, which, prefixes, expires_ns):
        self.upserts.append((which, [str(p) for p in prefixes], expires_ns))
        return len(prefixes), 0

    def delete(self, which, prefixes):
        self.deletes.append((which, [str(p) for p in prefixes]))
        return len(prefixes), []

    # (what `limit set` and its result read and write)
    policies: dict = {}
    writes: list = []

    def protected_addrs(self):
        return [ADDR]

    def read_address_policy(self, a):
        return self.policies.get(a, policy.AddressPolicy())

    def write_address_policy(self, a, pol):
        type(self).writes.append(("address", str(a), pol.limits))
        type(self).policies[a] = pol

    def read_port_limits(self):
        return {}

    def write_port_limits(self, a, proto, lo, hi, lim):
        type(self).writes.append(("port", str(a), proto, lo, hi, lim))

    def check_port_limits_room(self, addrs, proto, lo, hi):
        pass


@pytest.fixture
def kernel(monkeypatch, tmp_path):
    for var, sub in (("XDPGUARD_BPFFS", "bpffs"), ("XDPGUARD_STATE_DIR", "state"), ("XDPGUARD_RUN_DIR", "run")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setattr(state, "require_root", lambda: None)
    monkeypatch.setattr(state, "resolve_iface", lambda name: state.Iface(name, 7, state.netns_key()))
    monkeypatch.setattr(protection, "pick_iface", lambda name=None: name or IF)
    CountingGuard.opened = 0
    CountingGuard.policies = {}
    CountingGuard.writes = []
    guards: list[CountingGuard] = []

    def open_(iface):
        guards.append(CountingGuard(iface))
        return guards[-1]

    monkeypatch.setattr(protection.Guard, "open", staticmethod(open_))
    live = norm_interface(InterfaceSpec(IF, addresses=(AddressSpec(ADDR),)))
    monkeypatch.setattr(reconcile, "export_guard", lambda g, lists=True, stored=None: replace_lists(live, stored))
    parsed: list[str] = []
    real = prefixes.parse_prefix

    def counting_parse(text):
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(protection, "parse_prefix", counting_parse)
    return guards, parsed


def replace_lists(live: InterfaceSpec, stored: InterfaceSpec | None) -> InterfaceSpec:
    return live if stored is None else replace(live, block=stored.block, allow=stored.allow)


def test_block_add_opens_the_map_owner_once_and_parses_once(kernel):
    guards, parsed = kernel
    res = imperative.list_add("block", IF, ["203.0.113.7", "198.51.100.0/24"])
    assert CountingGuard.opened == 1
    assert parsed == ["203.0.113.7", "198.51.100.0/24"]  # each input once
    (g,) = guards
    assert g.swept == ["block"]
    assert g.upserts == [("block", ["203.0.113.7/32", "198.51.100.0/24"], 0)]  # the reconciler wrote them
    assert (res.added, res.updated, res.iface) == (2, 0, IF)
    assert {str(p) for p in store.stored_interface(IF).block} == {"203.0.113.7/32", "198.51.100.0/24"}


def test_block_add_with_a_ttl_is_dynamic(kernel):
    guards, _ = kernel
    imperative.list_add("block", IF, ["203.0.113.7"])
    imperative.list_add("block", IF, ["203.0.113.7"], ttl=60)  # refreshed with a TTL: leaves the spec
    assert CountingGuard.opened == 2
    g = guards[-1]
    ((which, named, expires),) = g.upserts
    assert (which, named) == ("block", ["203.0.113.7/32"]) and expires > 0
    assert g.deletes == []  # not deleted and re-added: it keeps its hit count
    assert store.stored_interface(IF).block == frozenset()


def test_block_del_removes_named_entries_dynamic_ones_too(kernel):
    guards, parsed = kernel
    imperative.list_add("block", IF, ["203.0.113.7"])
    parsed.clear()
    res = imperative.list_del("block", IF, ["203.0.113.7", "198.51.100.9"])
    assert parsed == ["203.0.113.7", "198.51.100.9"]
    assert guards[-1].deletes == [("block", ["203.0.113.7/32", "198.51.100.9/32"])]
    assert res.removed == 2 and store.stored_interface(IF).block == frozenset()


def test_block_load_reads_the_file_once(kernel, monkeypatch, tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("203.0.113.0/24\n198.51.100.7\n")
    reads = []
    real = imperative.read_prefix_file
    monkeypatch.setattr(imperative, "read_prefix_file", lambda p: reads.append(p) or real(p))
    res = imperative.list_load("block", IF, f)
    assert reads == [f] and CountingGuard.opened == 1 and res.added == 2


def test_bad_input_stores_nothing_and_opens_nothing(kernel):
    guards, _ = kernel
    with pytest.raises(UserError, match="0.0.0.0/0"):
        imperative.list_add("block", IF, ["0.0.0.0/0"])
    with pytest.raises(UserError):
        imperative.list_add("block", IF, ["198.51.100.0/33"])
    assert guards == [] and store.stored_interface(IF) is None


def test_limit_set_is_one_edit_realised_by_the_reconciler(kernel):
    lim = policy.Limits(src_pps=100)
    res = imperative.limit_set(IF, lim)
    assert CountingGuard.opened == 1
    assert CountingGuard.writes == [("address", str(ADDR), lim.effective())]  # written once, by the reconciler
    assert store.stored_interface(IF).address(ADDR).limits == lim.effective()
    assert res.changed == 1 and res.limits[0].scope == "address"


def test_limit_set_on_an_unknown_address_changes_nothing(kernel):
    with pytest.raises(UserError, match="198.18.0.9 is not a protected address of xgt0"):
        imperative.limit_set(IF, policy.Limits(src_pps=100), protected="198.18.0.9")
    assert CountingGuard.writes == [] and store.stored_interface(IF) is None
