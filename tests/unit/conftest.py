"""Unit-tier fixtures: the CLI tests fake core verbs, so recording into the desired-state store
(which needs the kernel) is faked too, and what would be recorded is kept for assertions."""

from __future__ import annotations

import pytest

from xdpguard.core import reconcile


@pytest.fixture(autouse=True)
def recorded_calls(monkeypatch) -> list[tuple]:
    log: list[tuple] = []
    monkeypatch.setattr(reconcile, "record", lambda name, lists=False: log.append(("record", name, lists)))
    monkeypatch.setattr(reconcile, "forget", lambda name: log.append(("forget", name)))

    def change(ifname, predict, write, lists=False):  # store first: faked as the write, then the record
        res = write()
        log.append(("record", getattr(res, "iface", ifname), lists))
        return res

    monkeypatch.setattr(reconcile, "change", change)
    return log
