"""geo and watermark verbs are edits through reconcile.edit (issue 26, one writer): the edited spec
is stored before the reconciler's writer runs, and bad input (a rule that drops the management
address without --force, a port that is not watermarked) stores nothing and writes nothing. The
store is real (test_store_first's fixture: a temp state dir, the kernel faked at the map owner)."""

from __future__ import annotations

import ipaddress

import pytest

from xdpguard.core import geo, reconcile, store
from xdpguard.core.verbs import georules, watermarkrules
from xdpguard.core.errors import UserError
from xdpguard.lab.geodb import write_location_db
from xdpguard.sdk import watermark as sdk

from test_store_first import ADDR, IF, S0, stored  # noqa: F401 (the fixture)

MGMT_QY = ipaddress.ip_address("198.18.64.1")  # in the lab database's country QY


@pytest.fixture
def writes(stored, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv(geo.DB_ENV, str(write_location_db(tmp_path / "lab.db")))
    seen = []

    def write(g, old, new, **kw):
        seen.append((old, new, store.stored_interface(IF)))
        return ["written"]

    monkeypatch.setattr(reconcile, "write_differences", write)
    monkeypatch.setattr(reconcile, "management_addresses", lambda: {MGMT_QY})
    return seen


def test_geo_block_is_stored_then_written(writes):
    res = georules.change(IF, "block", ["qz"])
    ((old, new, at_write),) = writes
    assert old == S0 and at_write == new  # stored before the writer ran
    assert new.address(ADDR).geo.countries == frozenset({"QZ"})
    assert store.stored_interface(IF) == new
    assert res.rules[str(ADDR)]["countries"] == ["QZ"] and res.notes == ["written"]


def test_geo_rule_dropping_the_management_address_needs_force(writes):
    gen = store.load_meta().generation
    with pytest.raises(UserError, match="management address 198.18.64.1"):
        georules.change(IF, "block", ["QY"])
    assert writes == [] and store.stored_interface(IF) == S0 and store.load_meta().generation == gen
    georules.change(IF, "block", ["QY"], force=True)
    assert store.stored_interface(IF).address(ADDR).geo.countries == frozenset({"QY"})


def test_watermark_enable_then_disable_of_another_port(writes, tmp_path):
    key = tmp_path / "k.key"
    sdk.write_key(str(key))
    res = watermarkrules.enable(IF, 5000, str(key))
    assert [w.port for w in store.stored_interface(IF).address(ADDR).watermark] == [5000]
    assert res.services[str(ADDR)][0]["port"] == 5000 and len(writes) == 1
    gen = store.load_meta().generation
    with pytest.raises(UserError, match="udp/5001 is not watermarked on any protected address"):
        watermarkrules.disable(IF, 5001)
    assert len(writes) == 1 and store.load_meta().generation == gen
