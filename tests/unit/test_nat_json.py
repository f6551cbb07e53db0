"""Forwarding rules and the nftables JSON built from them.

Golden files in tests/unit/golden/nat/ hold the exact batch for every rule shape; regenerate them
with ``XDPGUARD_UPDATE_GOLDEN=1 pytest tests/unit/test_nat_json.py`` and review the diff. The
``kernel`` tests load every golden into a throwaway network namespace, so a golden is known to be
nftables that the running kernel accepts, not just JSON we like.

Everything except the ``kernel`` tests runs without root and without the nftables module.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xdpguard.core.nat import nft as nat
from xdpguard.core.model.forwarding import (
    Backend,
    ForwardRule,
    check_backend_not_protected,
    check_overlap,
    make_rule,
    parse_backend,
    parse_backends,
    parse_port_range,
    rule_key,
)

GOLDEN_DIR = Path(__file__).parent / "golden" / "nat"
UPDATE_GOLDEN = os.environ.get("XDPGUARD_UPDATE_GOLDEN") == "1"
REPO_ROOT = Path(__file__).resolve().parents[2]

IP = ipaddress.ip_address


# --- golden cases -----------------------------------------------------------------------


def _case_single() -> dict[str, Any]:
    return nat.build_ruleset([make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:8080")])


def _case_port_range() -> dict[str, Any]:
    # No backend port: every port of the range goes to the same port on the backend.
    return nat.build_ruleset([make_rule("tcp", "198.18.0.1", "8000-8010", "198.18.1.10")])


def _case_port_range_shift() -> dict[str, Any]:
    # 8000-8003 → 9000-9003, port for port (a port map; see nat module docstring).
    return nat.build_ruleset([make_rule("tcp", "198.18.0.1", "8000-8003", "198.18.1.10:9000")])


def _case_weighted() -> dict[str, Any]:
    return nat.build_ruleset([make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80,198.18.1.11:80", weights="3,1")])


def _case_weighted_ports() -> dict[str, Any]:
    # Backends on different ports: the map yields ADDR . PORT.
    return nat.build_ruleset([make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80,198.18.1.11:8080", weights="3,1")])


def _case_persistent() -> dict[str, Any]:
    return nat.build_ruleset(
        [
            make_rule(
                "tcp",
                "198.18.0.1",
                "443",
                "198.18.1.10:443,198.18.1.11:443",
                weights="3,1",
                persist_s=300,
            )
        ]
    )


def _case_routed() -> dict[str, Any]:
    return nat.build_ruleset([make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80", preserve_client_ip=True)])


def _case_ipv6() -> dict[str, Any]:
    return nat.build_ruleset(
        [make_rule("udp", "2001:db8::1", "53", "[2001:db8::10]:53,[2001:db8::11]:53", persist_s=60)]
    )


def _backup_rule() -> ForwardRule:
    return make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80", backups="198.18.1.20:80")


def _case_backup() -> dict[str, Any]:
    # The primary is down, the backup is up: the backup takes the traffic.
    rule = _backup_rule()
    return nat.build_ruleset([rule], healthy={rule.key: {parse_backend("198.18.1.20:80")}})


def _case_no_healthy() -> dict[str, Any]:
    rule = make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80,198.18.1.11:80")
    return nat.build_ruleset([rule], healthy={rule.key: set()})


def _multi_rules() -> list[ForwardRule]:
    return [
        make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80"),
        make_rule("udp", "198.18.0.1", "27015-27020", "198.18.1.11"),
        make_rule("tcp", "198.18.0.2", "22", "198.18.1.12:2222", preserve_client_ip=True),
        make_rule("tcp", "2001:db8::1", "443", "[2001:db8::10]:443"),
    ]


MULTI_COUNTERS = {"tcp/198.18.0.1/80": (1234, 567890), "tcp/2001:db8::1/443": (5, 600)}


def _case_multi() -> dict[str, Any]:
    # Several rules in one table, counters carried over from the previous table.
    return nat.build_ruleset(_multi_rules(), counters=MULTI_COUNTERS)


def _case_custom_table() -> dict[str, Any]:
    return nat.build_ruleset([make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80")], table="xdpguard_lab")


def _case_empty() -> dict[str, Any]:
    return nat.build_ruleset([])


def _case_delete() -> dict[str, Any]:
    return nat.delete_table()


CASES = {
    "single": _case_single,
    "port_range": _case_port_range,
    "port_range_shift": _case_port_range_shift,
    "weighted": _case_weighted,
    "weighted_ports": _case_weighted_ports,
    "persistent": _case_persistent,
    "routed": _case_routed,
    "ipv6": _case_ipv6,
    "backup": _case_backup,
    "no_healthy": _case_no_healthy,
    "multi": _case_multi,
    "custom_table": _case_custom_table,
    "empty": _case_empty,
    "delete": _case_delete,
}

#: Golden batches that build a table (everything but the delete batch), with the table name.
BUILD_CASES = {name: "xdpguard_lab" if name == "custom_table" else "xdpguard" for name in CASES if name != "delete"}


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    path = GOLDEN_DIR / f"{name}.json"
    text = _dump(CASES[name]())
    if UPDATE_GOLDEN:
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with XDPGUARD_UPDATE_GOLDEN=1"
    assert json.loads(path.read_text()) == json.loads(text), (
        f"{path.name} differs; if the change is intended, rerun with XDPGUARD_UPDATE_GOLDEN=1"
    )


def test_no_stale_goldens() -> None:
    assert {p.stem for p in GOLDEN_DIR.glob("*.json")} == set(CASES)


# --- structure of every batch -------------------------------------------------------------


def _objects(batch: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for command in batch["nftables"]:
        ((verb, body),) = command.items()
        ((kind, obj),) = body.items()
        yield verb, kind, obj


@pytest.mark.parametrize("name", sorted(BUILD_CASES))
def test_batch_replaces_only_our_table(name: str) -> None:
    table = BUILD_CASES[name]
    batch = CASES[name]()
    head = [(verb, kind, obj["name"]) for verb, kind, obj in itertools.islice(_objects(batch), 3)]
    assert head == [("add", "table", table), ("delete", "table", table), ("add", "table", table)]
    for verb, kind, obj in _objects(batch):
        assert obj["family"] == "inet"
        assert obj.get("table", obj.get("name")) == table, (verb, kind, obj)
        if verb == "delete":
            assert kind == "table"


def test_delete_batch_is_idempotent_and_scoped() -> None:
    assert nat.delete_table("t") == {
        "nftables": [
            {"add": {"table": {"family": "inet", "name": "t"}}},
            {"delete": {"table": {"family": "inet", "name": "t"}}},
        ]
    }


def test_chains_hooks_and_priorities() -> None:
    chains = {obj["name"]: obj for verb, kind, obj in _objects(_case_single()) if kind == "chain"}
    assert {n: (c["type"], c["hook"], c["prio"]) for n, c in chains.items()} == {
        "prerouting": ("nat", "prerouting", -100),
        "postrouting": ("nat", "postrouting", 100),
        "forward": ("filter", "forward", 0),
    }
    assert all(c["policy"] == "accept" for c in chains.values())


def _rules(batch: dict[str, Any], chain: str) -> list[dict[str, Any]]:
    return [obj for verb, kind, obj in _objects(batch) if kind == "rule" and obj["chain"] == chain]


def _dnats(batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [s["dnat"] for r in _rules(batch, "prerouting") for s in r["expr"] if "dnat" in s]


def test_every_rule_carries_its_key_and_a_named_counter() -> None:
    batch = _case_multi()
    keys = {r.key for r in _multi_rules()}
    for chain in ("prerouting", "postrouting"):
        assert {r["comment"] for r in _rules(batch, chain)} <= keys
    for rule in _rules(batch, "prerouting"):
        assert {"counter": "new_" + nat.rule_ident(_by_key(rule["comment"]))} in rule["expr"]
    assert {r["comment"] for r in _rules(batch, "prerouting")} == keys


def test_forward_counting_is_one_rule_and_a_mark_map() -> None:
    """Every forwarded packet walks ONE forward rule (a counter map keyed by our ct mark bits),
    whatever the number of forwarding rules; each DNAT stamps its rule's mark."""
    batch = _case_multi()
    rules = _multi_rules()
    (fwd,) = _rules(batch, "forward")
    our_bits = {"&": [{"ct": {"key": "mark"}}, 0xFFFF0000]}
    assert fwd["expr"] == [{"counter": {"map": {"key": our_bits, "data": "@traffic_marks"}}}]
    marks = nat.traffic_marks(r.key for r in rules)
    assert len(set(marks.values())) == len(rules)
    assert all(m & 0xFFFF == 0 and m >> 16 for m in marks.values())
    (tmap,) = [obj for verb, kind, obj in _objects(batch) if kind == "map"]
    assert (tmap["name"], tmap["type"], tmap["map"]) == ("traffic_marks", "mark", "counter")
    want = sorted((marks[r.key], nat.traffic_counter_name(r)) for r in rules)
    assert sorted(map(tuple, tmap["elem"])) == want
    keep_theirs = {"&": [{"ct": {"key": "mark"}}, 0xFFFF]}
    for rule in _rules(batch, "prerouting"):
        if any("dnat" in s for s in rule["expr"]):
            mark = marks[rule["comment"]]
            stamp = {"mangle": {"key": {"ct": {"key": "mark"}}, "value": {"|": [keep_theirs, mark]}}}
            assert stamp in rule["expr"]
            dnat_at = next(i for i, s in enumerate(rule["expr"]) if "dnat" in s)
            assert rule["expr"].index(stamp) < dnat_at
    # The ids come from the keys, not the order: a re-apply with other rules keeps them.
    assert nat.traffic_marks([rules[1].key]) == {rules[1].key: marks[rules[1].key]}
    # No rules: no forward chain, nothing hooked into forwarding.
    empty = nat.build_ruleset([])
    assert not [o for verb, kind, o in _objects(empty) if kind == "chain" and o["name"] == "forward"]


def test_traffic_mark_collisions_take_the_next_id() -> None:
    keys = [f"tcp/198.18.0.1/{p}" for p in range(1, 3000)]
    marks = nat.traffic_marks(keys)
    assert len(set(marks.values())) == len(keys)
    assert all(0 < m >> 16 <= 0xFFFF for m in marks.values())
    # Two keys whose crc32 gives the same id: the second takes the next free one.
    ids: dict[int, str] = {}
    for key in keys:
        ident = zlib.crc32(key.encode()) % 0xFFFF + 1
        if ident in ids:
            first, second = ids[ident], key
            break
        ids[ident] = key
    else:
        pytest.fail("no colliding pair among the keys")
    pair = nat.traffic_marks([first, second])
    assert pair[first] >> 16 == ident
    assert pair[second] >> 16 == ident % 0xFFFF + 1


def _by_key(key: str) -> ForwardRule:
    return next(r for r in _multi_rules() if r.key == key)


def test_routed_rule_gets_no_masquerade() -> None:
    batch = _case_multi()
    masqueraded = {r["comment"] for r in _rules(batch, "postrouting")}
    assert masqueraded == {"tcp/198.18.0.1/80", "udp/198.18.0.1/27015-27020", "tcp/2001:db8::1/443"}
    assert _rules(_case_routed(), "postrouting") == []


def test_masquerade_matches_only_flows_this_rule_dnated() -> None:
    (rule,) = _rules(_case_single(), "postrouting")
    assert rule["expr"] == [
        {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
        {
            "match": {
                "op": "==",
                "left": {"ct": {"key": "ip daddr", "dir": "original"}},
                "right": "198.18.0.1",
            }
        },
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
        {
            "match": {
                "op": "==",
                "left": {"ct": {"key": "proto-dst", "dir": "original"}},
                "right": 80,
            }
        },
        {"masquerade": None},
    ]


def test_counters_are_seeded() -> None:
    counters = {
        obj["name"]: (obj.get("packets"), obj.get("bytes"))
        for verb, kind, obj in _objects(_case_multi())
        if kind == "counter" and obj["name"].startswith("traffic_")
    }
    v4 = nat.traffic_counter_name(_multi_rules()[0])
    assert counters[v4] == (1234, 567890)
    assert counters[nat.traffic_counter_name(_multi_rules()[1])] == (None, None)


def test_port_kept_or_shifted() -> None:
    assert _dnats(_case_port_range()) == [{"family": "ip", "addr": "198.18.1.10"}]
    (shift,) = _dnats(_case_port_range_shift())
    assert shift["port"]["map"]["data"]["set"] == [
        [8000, 9000],
        [8001, 9001],
        [8002, 9002],
        [8003, 9003],
    ]
    rule = make_rule("tcp", "198.18.0.1", "8000-8003", "198.18.1.10:8000")
    assert _dnats(nat.build_ruleset([rule])) == [{"family": "ip", "addr": "198.18.1.10"}]


def _intervals(dnat: dict[str, Any]) -> list[tuple[int, int, Any]]:
    out = []
    for key, data in dnat["addr"]["map"]["data"]["set"]:
        lo, hi = key["range"] if isinstance(key, dict) else (key, key)
        out.append((lo, hi, data))
    return out


@pytest.mark.parametrize("weights", ["1,1", "3,1", "1,2,3,4", "1000,1"])
def test_weighted_map_intervals_follow_weights(weights: str) -> None:
    hosts = ",".join(f"198.18.1.{10 + i}:80" for i in range(len(weights.split(","))))
    (dnat,) = _dnats(nat.build_ruleset([make_rule("tcp", "198.18.0.1", "80", hosts, weights=weights)]))
    total = sum(int(w) for w in weights.split(","))
    assert dnat["addr"]["map"]["key"] == {"numgen": {"mode": "random", "mod": total, "offset": 0}}
    intervals = _intervals(dnat)
    assert intervals[0][0] == 0 and intervals[-1][1] == total - 1
    assert [hi - lo + 1 for lo, hi, _ in intervals] == [int(w) for w in weights.split(",")]
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(intervals))


@pytest.mark.parametrize("weights", ["1,1", "3,1", "1,2,3,4", "5,1,1"])
def test_persistent_cascade_is_the_weighted_choice(weights: str) -> None:
    """New clients: rule n matches with probability w_n / R_n given the earlier ones did not, so
    overall P(n) = w_n / total. Computed exactly from the JSON, with fractions."""
    from fractions import Fraction

    ws = [int(w) for w in weights.split(",")]
    hosts = ",".join(f"198.18.1.{10 + i}" for i in range(len(ws)))
    rule = make_rule("tcp", "198.18.0.1", "80", hosts, weights=weights, persist_s=30)
    rules = _rules(nat.build_ruleset([rule]), "prerouting")
    sets = [nat.persist_set_name(rule, i) for i in range(len(ws))]
    lookups, choices, fallback = (
        rules[: len(ws)],
        rules[len(ws) : 2 * len(ws)],
        rules[2 * len(ws) :],
    )
    assert len(fallback) == 1 and "jhash" in json.dumps(fallback[0])
    for index, lookup in enumerate(lookups):  # known clients go back to their backend
        assert {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": "@" + sets[index],
            }
        } in lookup["expr"]
    not_yet = Fraction(1)
    for index, choice in enumerate(choices):
        assert {
            "set": {
                "op": "update",
                "elem": {"payload": {"protocol": "ip", "field": "saddr"}},
                "set": "@" + sets[index],
            }
        } in choice["expr"]
        numgen = [s["match"] for s in choice["expr"] if "numgen" in json.dumps(s)]
        if numgen:
            (m,) = numgen
            assert m["op"] == "<"
            p = Fraction(m["right"], m["left"]["numgen"]["mod"])
        else:
            p = Fraction(1)
        assert not_yet * p == Fraction(ws[index], sum(ws))
        not_yet *= 1 - p
    assert not_yet == 0


def test_single_backend_persistence_needs_no_sets() -> None:
    batch = nat.build_ruleset([make_rule("tcp", "198.18.0.1", "80", "198.18.1.10", persist_s=30)])
    assert [kind for verb, kind, obj in _objects(batch) if kind == "set"] == []


def test_persist_sets_have_timeout() -> None:
    sets = [obj for verb, kind, obj in _objects(_case_persistent()) if kind == "set"]
    assert len(sets) == 2
    assert all(s["timeout"] == 300 and s["flags"] == ["timeout"] and s["type"] == "ipv4_addr" for s in sets)


def test_backup_only_when_every_primary_is_down() -> None:
    rule = make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80,198.18.1.11:80", backups="198.18.1.20:80")
    primary_a, primary_b, backup = rule.backends
    assert nat.active_backends(rule) == (primary_a, primary_b)
    assert nat.active_backends(rule, {primary_b, backup}) == (primary_b,)
    assert nat.active_backends(rule, {backup}) == (backup,)
    assert nat.active_backends(rule, set()) == ()
    # Health is matched by address and port, whatever weight/backup flag the checker passes.
    assert nat.active_backends(rule, {Backend(IP("198.18.1.11"), 80, weight=7)}) == (primary_b,)
    assert _dnats(_case_backup()) == [{"family": "ip", "addr": "198.18.1.20", "port": 80}]
    assert "198.18.1.20" not in json.dumps(nat.build_ruleset([_backup_rule()]))


def test_no_healthy_backend_drops_new_connections() -> None:
    (rule,) = _rules(_case_no_healthy(), "prerouting")
    assert rule["expr"][-1] == {"drop": None}
    assert _dnats(_case_no_healthy()) == []


def test_missing_health_entry_means_healthy() -> None:
    rule = make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80")
    assert nat.build_ruleset([rule], healthy={}) == nat.build_ruleset([rule])


def test_duplicate_keys_refused() -> None:
    rule = make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80")
    with pytest.raises(ValueError, match="same key"):
        nat.build_ruleset([rule, rule])


def test_ipv6_uses_ip6_everywhere() -> None:
    text = json.dumps(_case_ipv6())
    assert '"ip"' not in text and '"ipv4_addr"' not in text
    assert '"ip6 daddr"' in text and '"ipv6_addr"' in text


def test_rule_idents_are_unique_for_v6_lookalikes() -> None:
    a = make_rule("tcp", "2001:db8::1:80", "443", "[2001:db8::10]")
    b = make_rule("tcp", "2001:db8::1", "80-443", "[2001:db8::10]")
    assert nat.rule_ident(a) != nat.rule_ident(b)


# --- counters read back -------------------------------------------------------------------

# Trimmed from `nft -j list table inet xdpguard` (nftables 1.0.6) after traffic.
LISTING = {
    "nftables": [
        {
            "metainfo": {
                "version": "1.0.6",
                "release_name": "Lester Gooch #5",
                "json_schema_version": 1,
            }
        },
        {"table": {"family": "inet", "name": "xdpguard", "handle": 7}},
        {
            "counter": {
                "family": "inet",
                "name": "traffic_tcp_c6120001_80_80",
                "table": "xdpguard",
                "handle": 1,
                "comment": "tcp/198.18.0.1/80",
                "packets": 8,
                "bytes": 465,
            }
        },
        {
            "counter": {
                "family": "inet",
                "name": "new_tcp_c6120001_80_80",
                "table": "xdpguard",
                "handle": 2,
                "comment": "tcp/198.18.0.1/80",
                "packets": 1,
                "bytes": 60,
            }
        },
        {
            "counter": {
                "family": "inet",
                "name": "traffic_tcp_c6120001_81_81",
                "table": "xdpguard",
                "handle": 3,
                "packets": 2016,
                "bytes": 116216,
            }
        },
        {
            "counter": {
                "family": "inet",
                "name": "traffic_tcp_c6120001_82_82",
                "table": "other",
                "handle": 3,
                "comment": "tcp/198.18.0.1/82",
                "packets": 9,
                "bytes": 9,
            }
        },
        {
            "rule": {
                "family": "inet",
                "table": "xdpguard",
                "chain": "forward",
                "handle": 9,
                "comment": "tcp/198.18.0.1/81",
                "expr": [{"counter": "traffic_tcp_c6120001_81_81"}],
            }
        },
    ]
}


def test_parse_counters() -> None:
    assert nat.parse_counters(LISTING) == {
        "tcp/198.18.0.1/80": (8, 465),
        "tcp/198.18.0.1/81": (2016, 116216),  # key found through the rule's comment
    }
    assert nat.parse_new_connections(LISTING) == {"tcp/198.18.0.1/80": 1}
    assert nat.parse_counters(None) == {}
    assert nat.parse_counters(LISTING, table="other") == {"tcp/198.18.0.1/82": (9, 9)}


# --- applier, with a fake libnftables -----------------------------------------------------


class FakeNft:
    def __init__(self, results: list[tuple[int, Any, str]] | None = None, tables: list[str] | None = None):
        self.results = list(results or [])
        self.tables = tables or []
        self.calls: list[dict[str, Any]] = []

    def json_cmd(self, obj: dict[str, Any]) -> tuple[int, Any, str]:
        self.calls.append(obj)
        if obj == {"nftables": [{"list": {"tables": None}}]}:
            return (
                0,
                {"nftables": [{"table": {"family": "inet", "name": t}} for t in self.tables]},
                "",
            )
        if self.results:
            return self.results.pop(0)
        return 0, "", ""


def test_applier_raises_nft_error_with_the_failing_batch() -> None:
    batch = _case_single()
    fake = FakeNft([(1, "", "internal:0:0-0: Error: Could not process rule: No such file or directory\n\n")])
    with pytest.raises(nat.NftError) as info:
        nat.NftApplier(nft=fake).apply(batch)
    assert info.value.failing_json is batch
    assert str(info.value) == "nft rejected the batch (rc 1): Error: Could not process rule: No such file or directory"
    assert "\n" not in str(info.value)


def test_applier_list_table() -> None:
    listing = {"nftables": [{"table": {"family": "inet", "name": "xdpguard"}}]}
    fake = FakeNft([(0, listing, "")], tables=["xdpguard", "other"])
    applier = nat.NftApplier(nft=fake)
    assert applier.table_exists() and applier.table_exists("other") and not applier.table_exists("nope")
    assert applier.list_table() == listing
    assert fake.calls[-1] == {"nftables": [{"list": {"table": {"family": "inet", "name": "xdpguard"}}}]}
    assert nat.NftApplier(nft=FakeNft(tables=["other"])).list_table() is None


def test_missing_nftables_module_gives_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nftables", None)  # makes `import nftables` fail
    with pytest.raises(RuntimeError, match=r"install python3-nftables \(run scripts/setup.sh\)"):
        nat.NftApplier().apply(_case_single())


def test_probe_reports_failures_and_always_cleans_up() -> None:
    class Picky(FakeNft):
        def json_cmd(self, obj: dict[str, Any]) -> tuple[int, Any, str]:
            self.calls.append(obj)
            return (1, "", "Error: nope") if "jhash" in json.dumps(obj) else (0, "", "")

    fake = Picky()
    caps = nat.probe_capabilities(nat.NftApplier(nft=fake))
    assert caps.missing() == ["dynamic_set", "ipv6"]  # the persistent rules (jhash fallback)
    assert fake.calls[-1] == nat.delete_table(nat.PROBE_TABLE)
    assert all(nat.PROBE_TABLE in json.dumps(call) and '"xdpguard"' not in json.dumps(call) for call in fake.calls)


# --- parsing and validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("80", (80, 80)),
        (" 8000-8010 ", (8000, 8010)),
        ("1", (1, 1)),
        ("65535", (65535, 65535)),
        ("5-5", (5, 5)),
    ],
)
def test_parse_port_range_ok(text: str, expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("0", "out of range"),
        ("65536", "out of range"),
        ("0-80", "out of range"),
        ("80-65536", "out of range"),
        ("8010-8000", "reversed"),
        ("", "empty"),
        ("http", "not a number"),
        ("80-", "not a number"),
        ("-80", "not a number"),
        ("1-2-3", "not a number"),
        ("+80", "not a number"),
        ("٨٠", "not a number"),  # Arabic-Indic digits: str.isdigit() says yes, we say no
    ],
)
def test_parse_port_range_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_port_range(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, host, port",
    [
        ("198.18.1.10:80", "198.18.1.10", 80),
        ("198.18.1.10", "198.18.1.10", None),
        ("[2001:db8::10]:80", "2001:db8::10", 80),
        ("[2001:db8::10]", "2001:db8::10", None),
        ("2001:db8::10", "2001:db8::10", None),
        ("2001:db8::1:80", "2001:db8::1:80", None),  # a bare IPv6 address never carries a port
    ],
)
def test_parse_backend_ok(text: str, host: str, port: int | None) -> None:
    backend = parse_backend(text)
    assert (backend.host, backend.port, backend.weight, backend.backup) == (
        IP(host),
        port,
        1,
        False,
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("198.18.1.10:0", "out of range"),
        ("198.18.1.10:65536", "out of range"),
        ("198.18.1.10:", "not a number"),
        ("198.18.1.10:http", "not a number"),
        ("backend.example:80", "not an IP address"),
        ("198.18.1.300:80", "not an IP address"),
        ("[2001:db8::10", "closing"),
        ("[2001:db8::10]80", "expected ':PORT'"),
        ("[198.18.1.10]:80", "not an IPv6 address"),
        ("2001:db8::zz", "not an address"),
        ("", "empty"),
        ("0.0.0.0:80", "not a unicast"),
        ("127.0.0.1:80", "not a unicast"),
        ("224.0.0.1:80", "not a unicast"),
        ("[fe80::1]:80", "link-local"),
        ("[::ffff:198.18.1.10]:80", "IPv4-mapped"),
    ],
)
def test_parse_backend_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_backend(text)
    assert "\n" not in str(info.value)


def test_parse_backends_weights_and_backups() -> None:
    backends = parse_backends("198.18.1.10:80, 198.18.1.11:80", weights="3,1", backups="198.18.1.20:80")
    assert [(str(b.host), b.port, b.weight, b.backup) for b in backends] == [
        ("198.18.1.10", 80, 3, False),
        ("198.18.1.11", 80, 1, False),
        ("198.18.1.20", 80, 1, True),
    ]


@pytest.mark.parametrize(
    "to, weights, message",
    [
        ("198.18.1.10:80,198.18.1.11:80", "3", "1 weight\\(s\\) given for 2 backend"),
        ("198.18.1.10:80", "3,1", "2 weight\\(s\\) given for 1 backend"),
        ("198.18.1.10:80,198.18.1.11:80", "3,x", "not a whole number"),
        ("198.18.1.10:80,198.18.1.11:80", "3,0", "out of range"),
        ("198.18.1.10:80,,198.18.1.11:80", None, "empty entry"),
        ("198.18.1.10:80,nope:80", None, "not an IP address"),
    ],
)
def test_parse_backends_rejects(to: str, weights: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_backends(to, weights=weights)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(proto="sctp"), "tcp or udp"),
        (dict(to="[2001:db8::10]:80"), "is IPv6 but protected address 198.18.0.1 is IPv4"),
        (dict(to="198.18.0.1:8080"), "protected address itself"),
        (dict(to="198.18.1.10:80,198.18.1.10:80"), "listed twice"),
        (dict(ports="8000-8010", to="198.18.1.10:9000,198.18.1.11:9100"), "same port"),
        (dict(ports="8000-8010", to="198.18.1.10:65530"), "beyond 65535"),
        (dict(persist_s=-1), "out of range"),
        (dict(protected="0.0.0.0"), "not a unicast"),
    ],
)
def test_rule_rejects(kwargs: dict[str, Any], message: str) -> None:
    args = dict(proto="tcp", protected="198.18.0.1", ports="80", to="198.18.1.10:80") | kwargs
    with pytest.raises(ValueError, match=message) as info:
        make_rule(args.pop("proto"), args.pop("protected"), args.pop("ports"), args.pop("to"), **args)
    assert "\n" not in str(info.value)


def test_rule_needs_a_primary() -> None:
    with pytest.raises(ValueError, match="not a backup"):
        ForwardRule("tcp", IP("198.18.0.1"), 80, 80, (Backend(IP("198.18.1.10"), 80, backup=True),))


def test_check_overlap() -> None:
    existing = [
        make_rule("tcp", "198.18.0.1", "8000-8010", "198.18.1.10"),
        make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80"),
    ]
    for ports in ("8010", "7990-8000", "8005", "7000-9000"):
        with pytest.raises(ValueError, match="overlaps existing rule tcp/198.18.0.1/8000-8010"):
            check_overlap(existing, make_rule("tcp", "198.18.0.1", ports, "198.18.1.11"))
    with pytest.raises(ValueError, match="overlaps existing rule tcp/198.18.0.1/80$"):
        check_overlap(existing, make_rule("tcp", "198.18.0.1", "80", "198.18.1.11:80"))
    # Other protocol, other address, adjacent range, or the very same rule: fine.
    check_overlap(existing, make_rule("udp", "198.18.0.1", "8000-8010", "198.18.1.10"))
    check_overlap(existing, make_rule("tcp", "198.18.0.2", "8000-8010", "198.18.1.10"))
    check_overlap(existing, make_rule("tcp", "198.18.0.1", "8011-8020", "198.18.1.10"))
    check_overlap(existing, make_rule("tcp", "198.18.0.1", "8000-8010", "198.18.1.10"))


def test_check_backend_not_protected() -> None:
    rule = make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80,198.18.0.2:80")
    with pytest.raises(ValueError, match=r"backend 198.18.0.2:80 is a protected address"):
        check_backend_not_protected(rule, [IP("198.18.0.1"), IP("198.18.0.2")])
    check_backend_not_protected(rule, [IP("198.18.0.1"), IP("198.18.0.3")])


def test_rule_key() -> None:
    assert rule_key(make_rule("tcp", "198.18.0.1", "80", "198.18.1.10")) == "tcp/198.18.0.1/80"
    assert make_rule("udp", "2001:db8::1", "8000-8010", "2001:db8::10").key == "udp/2001:db8::1/8000-8010"


def test_target_port() -> None:
    rule = make_rule("tcp", "198.18.0.1", "8000-8010", "198.18.1.10:9000")
    assert rule.target_port(rule.backends[0], 8005) == 9005
    kept = make_rule("tcp", "198.18.0.1", "8000-8010", "198.18.1.10")
    assert kept.target_port(kept.backends[0], 8005) == 8005


@pytest.mark.parametrize("rule", _multi_rules() + [_backup_rule()], ids=lambda r: r.key)
def test_dict_round_trip(rule: ForwardRule) -> None:
    assert ForwardRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("proto"), "lacks proto"),
        (lambda d: d.update(colour="red"), "unknown field"),
        (lambda d: d.update(protected="nope"), "not an IP address"),
        (lambda d: d.update(port_lo="80"), "must be an integer"),
        (lambda d: d.update(backends={}), "must be a list"),
        (lambda d: d["backends"][0].update(weight=True), "must be an integer"),
        (lambda d: d["backends"][0].pop("host"), "backend lacks host"),
    ],
)
def test_from_dict_rejects(mutate: Any, message: str) -> None:
    data = make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80").to_dict()
    mutate(data)
    with pytest.raises(ValueError, match=message):
        ForwardRule.from_dict(data)


# --- kernel: the goldens are real nftables ------------------------------------------------

_netns_counter = itertools.count()


def _run(*argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv!r} exited {result.returncode}: {result.stderr.strip()}")
    return result


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (named like the lab's, so leftovers are caught), deleted after."""
    name = f"xg-nat-{os.getpid()}-{next(_netns_counter)}"
    _run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        _run("ip", "netns", "del", name, check=False)
        assert not os.path.exists(f"/run/netns/{name}"), f"namespace {name} left behind"


def _nft(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run("ip", "netns", "exec", ns, "nft", *argv, check=check)


def _tables(ns: str) -> set[tuple[str, str]]:
    listing = json.loads(_nft(ns, "-j", "list", "tables").stdout)
    return {(t["table"]["family"], t["table"]["name"]) for t in listing["nftables"] if "table" in t}


@pytest.mark.kernel
def test_goldens_load_into_a_kernel(netns: str, tmp_path: Path) -> None:
    _nft(netns, "add", "table", "inet", "other")
    _nft(netns, "add", "chain", "inet", "other", "keep", "{ type filter hook input priority 0 ; }")
    _nft(netns, "add", "rule", "inet", "other", "keep", "tcp", "dport", "22", "accept")
    deletes = {}
    for table in set(BUILD_CASES.values()):
        deletes[table] = tmp_path / f"delete-{table}.json"
        deletes[table].write_text(json.dumps(nat.delete_table(table)))
    for name, table in sorted(BUILD_CASES.items()):
        path = GOLDEN_DIR / f"{name}.json"
        # Deleting twice: removing a table that is already gone succeeds too.
        for _ in range(2):
            result = _nft(netns, "-j", "-f", str(deletes[table]), check=False)
            assert result.returncode == 0, f"delete before {name}: {result.stderr.strip()}"
        assert ("inet", table) not in _tables(netns)
        for attempt in ("table absent", "table present"):
            result = _nft(netns, "-j", "-f", str(path), check=False)
            assert result.returncode == 0, f"{name} ({attempt}): {result.stderr.strip()}"
        listing = json.loads(_nft(netns, "-j", "list", "table", "inet", table).stdout)
        # Rule comments and named counters survive the round trip through the kernel.
        batch = json.loads(path.read_text())
        keys = {obj["comment"] for verb, kind, obj in _objects(batch) if kind == "rule" and "comment" in obj}
        assert set(nat.parse_counters(listing, table=table)) == keys, name
        if name == "multi":
            seeded = {k: v for k, v in nat.parse_counters(listing).items() if k in MULTI_COUNTERS}
            assert seeded == MULTI_COUNTERS
        assert ("inet", "other") in _tables(netns)
    for path in [GOLDEN_DIR / "delete.json", deletes["xdpguard_lab"]]:
        result = _nft(netns, "-j", "-f", str(path), check=False)
        assert result.returncode == 0, result.stderr.strip()
    assert _tables(netns) == {("inet", "other")}
    assert "tcp dport 22 accept" in _nft(netns, "list", "table", "inet", "other").stdout


APPLIER_SCRIPT = textwrap.dedent(
    """
    import json
    from xdpguard.core.nat import nft as nat
    from xdpguard.core.model.forwarding import make_rule

    applier = nat.NftApplier()
    out = {"absent": applier.list_table() is None}
    rules = [make_rule("tcp", "198.18.0.1", "80", "198.18.1.10:80,198.18.1.11:80", weights="3,1",
                       persist_s=30)]
    applier.apply(nat.build_ruleset(rules))
    before = applier.list_table()
    bad = nat.build_ruleset(rules + [make_rule("tcp", "198.18.0.1", "81", "198.18.1.10:81")])
    bad["nftables"].append({"add": {"rule": {"family": "inet", "table": "xdpguard",
                                             "chain": "missing", "expr": [{"accept": None}]}}})
    try:
        applier.apply(bad)
        out["error"] = None
    except nat.NftError as exc:
        out["error"] = str(exc)
        out["failing_json_is_batch"] = exc.failing_json is bad
    strip = lambda listing: [o for o in listing["nftables"] if "metainfo" not in o]
    out["unchanged"] = strip(before) == strip(applier.list_table())
    out["missing"] = nat.probe_capabilities(applier).missing()
    out["probe_left"] = applier.table_exists(nat.PROBE_TABLE)
    applier.delete()
    applier.delete()
    out["deleted"] = not applier.table_exists()
    print(json.dumps(out))
    """
)


@pytest.mark.kernel
def test_applier_in_a_kernel(netns: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = _run("ip", "netns", "exec", netns, sys.executable, "-c", APPLIER_SCRIPT, env=env)
    out = json.loads(result.stdout)
    assert out["absent"] is True
    assert out["error"] and out["error"].startswith("nft rejected the batch") and "\n" not in out["error"]
    assert out["failing_json_is_batch"] is True
    assert out["unchanged"] is True, "a failed batch must leave the previous ruleset in place"
    assert out["missing"] == []
    assert out["probe_left"] is False
    assert out["deleted"] is True
