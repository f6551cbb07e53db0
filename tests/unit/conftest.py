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
    return log
