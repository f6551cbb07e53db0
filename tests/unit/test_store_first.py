"""The imperative verbs are store first (issue 9, crash safety), one writer (issue 26):
reconcile.edit stores the edited desired spec (fsynced) — the realised spec with the verb's change
— before the reconciler's writer touches the kernel, puts it back when the write fails, and
stores nothing for bad input. The store is real (a temp state dir); the kernel write
(write_differences) is a function that looks at the store and succeeds or fails. No root, bcc or
kernel."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

import pytest

from xdpguard.core import policy, protection, reconcile, state, store
from xdpguard.core.model.desired import AddressSpec, Desired, InterfaceSpec, norm_interface, ALL_DROP_MASK
from xdpguard.core.verbs import imperative
from xdpguard.core.errors import UserError
from xdpguard.core.prefixes import parse_prefix

IF = "xgt0"
ADDR = ipaddress.ip_address("198.18.0.2")
P = parse_prefix("198.51.100.0/24").prefix
S0 = InterfaceSpec(IF, addresses=(AddressSpec(ADDR),), block=frozenset({parse_prefix("203.0.113.0/24").prefix}))


@dataclass(frozen=True)
class Res:
    iface: str
    notes: tuple = ()


class NoMaps:
    """The map owner of an interface whose realised spec is S0 (export_guard is faked)."""

    def __init__(self, iface):
        self.iface = iface

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def protected_addrs(self):
        return [ADDR]


@pytest.fixture
def stored(monkeypatch, tmp_path, recorded_calls):
    monkeypatch.setenv("XDPGUARD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDPGUARD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(state, "require_root", lambda: None)
    monkeypatch.setattr(state, "resolve_iface", lambda name: state.Iface(name, 7, state.netns_key()))
    monkeypatch.setattr(protection, "pick_iface", lambda name=None: name or IF)
    monkeypatch.setattr(protection.Guard, "open", staticmethod(NoMaps))
    monkeypatch.setattr(reconcile, "export_iface", lambda name, lists=True: S0)  # what the kernel does
    monkeypatch.setattr(reconcile, "export_guard", lambda g, lists=True, stored=None: S0)
    store.save(Desired((S0,)))
    return recorded_calls


def change(ifname, f, write, monkeypatch):
    """A verb: the edit f(spec), and `write` as the kernel write (write_differences)."""
    monkeypatch.setattr(reconcile, "write_differences", lambda g, old, new, **kw: write())
    return reconcile.edit(ifname, lambda s, g: f(s), lambda g, old, new, notes: notes)


def add_block(s: InterfaceSpec) -> InterfaceSpec:
    return replace(s, block=s.block | {P})


def test_the_store_holds_the_change_before_the_kernel_is_written(stored, monkeypatch):
    seen = []

    def write():
        seen.append(store.stored_interface(IF))  # what a SIGKILL here would leave behind
        return Res(IF)

    change(IF, add_block, write, monkeypatch)
    assert seen == [add_block(S0)]
    assert store.stored_interface(IF) == add_block(S0)
    assert stored == []  # nothing recorded afterwards: the reconciler wrote what was stored


def test_a_failed_kernel_write_puts_the_store_back(stored, monkeypatch):
    seen = []

    def write():
        seen.append(store.stored_interface(IF))
        raise UserError("kernel said no")

    text_before = store.desired_path().read_text()
    with pytest.raises(UserError, match="kernel said no"):
        change(IF, add_block, write, monkeypatch)
    assert seen == [add_block(S0)]  # it was stored first
    assert store.stored_interface(IF) == S0
    assert store.desired_path().read_text() == text_before
    assert (store.lists_dir() / f"{IF}.block").read_text() == "203.0.113.0/24\n"
    assert stored == []  # nothing recorded


def test_the_store_is_put_back_without_reading_it(stored, monkeypatch):
    """A stored spec that the loader would refuse (e.g. an overlapping forward) must not
    stick: the store is rewritten from what it was, not read back."""

    def write():
        store.desired_path().write_text("[[interface]]\nname = 1\n")  # unreadable now
        raise UserError("kernel said no")

    with pytest.raises(UserError, match="kernel said no"):
        change(IF, add_block, write, monkeypatch)
    assert store.stored_interface(IF) == S0


def test_an_interrupted_kernel_write_puts_the_store_back(stored, monkeypatch):
    def write():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        change(IF, add_block, write, monkeypatch)
    assert store.stored_interface(IF) == S0


def test_bad_input_stores_nothing_and_writes_nothing(stored, monkeypatch):
    writes = []
    monkeypatch.setattr(reconcile, "write_differences", lambda g, old, new, **kw: writes.append(1))
    with pytest.raises(UserError, match="unknown protocol"):
        imperative.proto_change(IF, "sctp", True)  # validated before the store is read
    with pytest.raises(UserError, match="invalid protected address"):
        imperative.proto_change(IF, "udp", True, protected="not-an-ip")
    with pytest.raises(UserError, match="198.18.0.9 is not a protected address of xgt0"):
        imperative.limit_set(IF, policy.Limits(src_pps=10), protected="198.18.0.9")
    assert writes == [] and store.stored_interface(IF) == S0 and stored == []


def test_an_unchanged_spec_is_not_rewritten(stored, monkeypatch):
    gen = store.load_meta().generation
    change(IF, lambda s: s, lambda: [], monkeypatch)
    assert store.load_meta().generation == gen


@pytest.mark.parametrize(
    "verb, edit, want",
    [
        ("block add", lambda s: imperative._lists(s, "block", [P], True), lambda s: replace(s, block=s.block | {P})),
        (
            "block add --ttl",
            lambda s: imperative._lists(s, "block", list(S0.block), False),
            lambda s: replace(s, block=frozenset()),
        ),
        (
            "port open",
            lambda s: imperative._each_of(s, [ADDR], lambda a: replace(a, open_ports=(("tcp", 22, 22),))),
            lambda s: replace(s, addresses=(AddressSpec(ADDR, open_ports=(("tcp", 22, 22),)),)),
        ),
    ],
)
def test_edits_are_what_export_would_say(stored, verb, edit, want):
    assert norm_interface(edit(S0)) == want(S0), verb


def test_port_limit_edits_merge_into_runs(stored):
    lim = policy.Limits(dst_pps=1000)
    a = imperative._port_limits(AddressSpec(ADDR), "udp", 53, 55, lim)
    assert a.port_limits == (("udp", 53, 55, lim.effective()),)
    a = imperative._port_limits(a, "udp", 54, 54, None)
    assert a.port_limits == (("udp", 53, 53, lim.effective()), ("udp", 55, 55, lim.effective()))


@pytest.fixture
def attachable(stored, monkeypatch):
    """`attach` with the kernel side faked: the interface exists and nothing is attached;
    protection.attach is whatever the test sets in calls['attach']."""
    calls: dict = {"realise": []}
    monkeypatch.setattr(state, "resolve_iface", lambda name: state.Iface(name, 7, "net-1"))
    monkeypatch.setattr(protection, "check_attachable", lambda iface, force: None)
    monkeypatch.setattr(protection, "attach", lambda *a, **kw: calls["attach"](*a, **kw))
    monkeypatch.setattr(
        reconcile, "realise", lambda spec, **kw: calls["realise"].append(spec) or reconcile.RealiseResult(IF, "updated")
    )
    return calls


def test_attach_stores_the_interface_before_the_kernel_is_touched(attachable, stored):
    seen = []
    new = ipaddress.ip_address("198.18.0.9")
    attachable["attach"] = lambda *a, **kw: seen.append(store.stored_interface("xgt1")) or Res("xgt1")
    reconcile.attach("xgt1", [str(new)], level="strict")
    (spec,) = seen
    assert spec.protected == [new] and spec.address(new).level == "strict"
    assert spec.global_.drop_fragments  # strict drops fragments, as the attach itself writes
    assert store.stored_interface(IF) == S0  # the other interface is untouched
    assert stored == [("record", "xgt1", True)] and attachable["realise"] == []


def test_re_attach_stores_the_stored_policy_for_the_addresses_still_protected(attachable, stored):
    seen = []
    new = ipaddress.ip_address("198.18.0.9")
    attachable["attach"] = lambda *a, **kw: seen.append(store.stored_interface(IF)) or Res(IF)
    reconcile.attach(IF, [f"{ADDR},{new}"], monitor=True)
    (spec,) = seen
    assert spec.address(ADDR) == S0.address(ADDR) and spec.address(new).level == "normal"
    assert spec.block == S0.block and spec.global_.monitor_mask == ALL_DROP_MASK
    assert attachable["realise"] == [spec]  # then it is brought back into the new program


def test_a_failed_attach_puts_the_store_back(attachable, stored):
    text_before = store.desired_path().read_text()

    def fail(*a, **kw):
        assert store.stored_interface(IF).global_.monitor_mask == ALL_DROP_MASK  # stored first
        raise UserError("cannot attach")

    attachable["attach"] = fail
    with pytest.raises(UserError, match="cannot attach"):
        reconcile.attach(IF, [str(ADDR)], monitor=True)
    assert store.stored_interface(IF) == S0 and store.desired_path().read_text() == text_before
    assert stored == []


def test_attach_with_bad_input_stores_nothing(attachable, stored):
    attachable["attach"] = lambda *a, **kw: pytest.fail("the kernel was touched")
    gen = store.load_meta().generation
    for protect, level, msg in ((["not-an-ip"], "normal", "protected address"), ([str(ADDR)], "extreme", "level")):
        with pytest.raises(UserError, match=msg):
            reconcile.attach("xgt1", protect, level=level)
    assert store.load_meta().generation == gen and store.stored_interface("xgt1") is None
