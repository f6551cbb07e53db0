"""The HTTP flood generator's command lines (xdpguard/lab/flood.py: l7_command, api_client_command),
parsed back by scripts/l7flood.py's own argument parser."""

from __future__ import annotations

import importlib.util
import sys

from xdpguard.lab import flood


def _l7flood():
    spec = importlib.util.spec_from_file_location("l7flood", flood.L7FLOOD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _parsed(argv: list[str]):
    assert argv[:2] == [sys.executable, str(flood.L7FLOOD)] and flood.L7FLOOD.is_file()
    return _l7flood().parse(argv[2:])


def test_the_api_client_is_one_address_one_connection_at_its_rate_on_its_path():
    a = _parsed(flood.api_client_command("198.18.0.1", "198.18.24.1", 5, 7.5, "/api/status"))
    assert (a.target, a.sources, a.count, a.conns) == ("198.18.0.1", "198.18.24.1/32", 1, 1)
    assert (a.rate, a.duration, a.timeout, a.path, a.keepalive, a.cookie) == (5, 7.5, 2, "/api/status", False, None)


def test_a_flood_passes_its_extra_flags_and_leaves_unset_ones_to_l7flood():
    a = _parsed(
        flood.l7_command(
            "198.18.0.1", "198.18.16.0/22", "--keepalive", count=1000, conns=256, duration=10, timeout=None
        )
    )
    assert (a.count, a.conns, a.duration, a.keepalive, a.path) == (1000, 256, 10, True, "/")
    assert (a.rate, a.timeout) == (1000.0, 3.0)  # l7flood's own defaults
