"""Fixed Snapshots for the dashboard's golden tests (no kernel)."""

from __future__ import annotations

from xdpguard.core.observe.stats import AttackRow, BackendRow, CounterRow, Rate, ReasonRow, RuleRow, Snapshot, Talker

T0 = 1_700_000_000.0


def attack_snapshot() -> Snapshot:
    hist = [0, 0, 10, 2000, 51000, 98000, 101000, 99500, 100200, 100000] * 4
    return Snapshot(
        iface="xgp0",
        mode="native",
        prog_id=42,
        protected=["198.18.0.2", "2001:db8:0:1::2"],
        monitor=False,
        time=T0,
        interval_s=1.0,
        rates={
            "received": Rate(100250.0, 78.4e6),
            "dropped": Rate(100000.0, 76.8e6),
            "passed": Rate(250.0, 1.6e6),
            "forwarded": Rate(240.0, 1.5e6),
        },
        history={"received": [h + 250 for h in hist], "dropped": hist, "passed": [250] * 40, "forwarded": [240] * 40},
        counters=[
            CounterRow("drop", "blocklist", 1_500_000, 1_152_000_000, 90000.0, 69.1e6),
            CounterRow("drop", "port", 150_000, 115_200_000, 10000.0, 7.7e6),
            CounterRow("drop", "malformed", 12, 720, 0.0, 0.0),
            CounterRow("pass", "clean", 9000, 6_000_000, 240.0, 1.5e6),
            CounterRow("pass", "bypass", 400, 40_000, 10.0, 8000.0),
        ],
        reasons=[
            ReasonRow("blocklist", "drop", 90000.0, 69.1e6, 0.9),
            ReasonRow("port", "drop", 10000.0, 7.7e6, 0.1),
            ReasonRow("malformed", "drop", 0.0, 0.0, 0.0),
        ],
        sources=[
            Talker("198.18.0.66", 90000.0, 69.1e6, 0.9, 1.0, "blocklist"),
            Talker("203.0.113.7", 9000.0, 6.9e6, 0.09, 1.0, "port"),
            Talker("198.18.0.1", 240.0, 1.5e6, 0.002, 0.0, "clean"),
            Talker("2001:db8:0:1::1", 10.0, 8000.0, 0.0001, 0.0, "clean"),
        ],
        ports=[
            Talker("udp/53", 90000.0, 69.1e6, 0.9, 1.0, "blocklist"),
            Talker("udp/123", 9000.0, 6.9e6, 0.09, 1.0, "port"),
            Talker("tcp/80", 240.0, 1.5e6, 0.002, 0.0, "clean"),
        ],
        sample_every=64,
        samples=1563,
        samples_lost=0,
        rules=[
            RuleRow(
                "198.18.0.2 tcp 80",
                "198.18.0.2",
                [
                    BackendRow("198.51.100.10:8080", "up", 3, False),
                    BackendRow("198.51.100.11:8080", "down", 1, False),
                    BackendRow("198.51.100.12:8080", "unknown", 1, True),
                ],
                9000,
                6_000_000,
                240.0,
                1.5e6,
            )
        ],
        lists={"block": 1, "allow": 0, "bans": 3},
        under_attack=True,
        attack_since=T0 - 83,
        attacked=["198.18.0.2"],
        events=[
            AttackRow("a1", "198.18.0.2", T0 - 3600, T0 - 3500, 50000.0, 40e6, ["port"], ["203.0.113.9"]),
            AttackRow("a2", "198.18.0.2", T0 - 83, None, 100250.0, 78.4e6, ["blocklist", "port"], ["198.18.0.66"]),
        ],
    )


def quiet_snapshot() -> Snapshot:
    return Snapshot(
        iface="eth1",
        mode="skb",
        prog_id=7,
        protected=["203.0.113.10"],
        monitor=True,
        time=T0,
        interval_s=1.0,
        rates={s: Rate() for s in ("received", "dropped", "passed", "forwarded")},
        history={s: [] for s in ("received", "dropped", "passed", "forwarded")},
        counters=[],
        reasons=[],
        sources=[],
        ports=[],
        sample_every=0,
        samples=0,
        samples_lost=0,
        rules=[],
        lists={"block": 0, "allow": 0},
        under_attack=False,
        attack_since=None,
        attacked=[],
        events=[],
    )


def geo_attack_snapshot() -> Snapshot:
    """The attack with a geo database: the top countries of the dropped and passed samples."""
    from dataclasses import replace

    return replace(
        attack_snapshot(),
        countries={
            "dropped": [Talker("QY", 90000.0, 69.1e6, 0.9, 1.0, "geo"), Talker("QZ", 9000.0, 6.9e6, 0.09, 1.0, "port")],
            "passed": [
                Talker("DE", 240.0, 1.5e6, 0.002, 0.0, "clean"),
                Talker("??", 10.0, 8000.0, 0.0001, 0.0, "clean"),
            ],
        },
    )
