"""The cleansing CLI (limit, proto, reflection, filter, syn, monitor, fragments, ban, block list
--dynamic) with a fake backend: the verbs of xdpguard.core.verbs.cleansing are replaced by fakes that
record their arguments and return the real result dataclasses. No root, bcc or kernel.
"""

from __future__ import annotations

import json

import pytest

from xdpguard.cli.main import run
from xdpguard.core.model import vocab
from xdpguard.core.verbs import cleansing, imperative
from xdpguard.core import policy
from xdpguard.core.errors import UserError
from cli_helpers import invoke, one_line_error

IF = "veth-xg0"
LIMITS = cleansing.LimitResult(
    IF,
    "set",
    2,
    [
        cleansing.LimitView("198.18.0.2", "address", {**policy.Limits(10_000, 10_000, ban_s=60).__dict__}),
        cleansing.LimitView("198.18.0.2", "udp:53-55", {**policy.Limits(dst_pps=1000, dst_burst_pkts=1000).__dict__}),
    ],
)
FILTERS = cleansing.FilterResult(
    IF,
    "add",
    1,
    [
        cleansing.FilterView(
            1,
            policy.Filter(proto="udp", dport=(53, 53)).to_dict(),
            cleansing.describe_filter(policy.Filter(proto="udp", dport=(53, 53))),
        )
    ],
)
BANS = cleansing.BanResult(IF, "list", 0, [policy.BanView("198.18.0.9", 4.2, 1234, "ratelimit")])
VERBS = (
    "limit_set",
    "limit_clear",
    "limit_show",
    "proto_change",
    "proto_show",
    "reflection_change",
    "reflection_list",
    "filter_add",
    "filter_del",
    "filter_list",
    "syn_set",
    "syn_show",
    "monitor_change",
    "monitor_show",
    "fragments_set",
    "fragments_show",
    "ban_add",
    "ban_del",
    "ban_list",
)


class Calls:
    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.log: list[tuple[str, tuple]] = []

    def fake(self, verb: str, result):
        def impl(*args):
            self.log.append((verb, args))
            if isinstance(result, BaseException):
                raise result
            return result

        # the changes are edits of the desired spec (imperative.py); shows and bans are cleansing.py's
        self.monkeypatch.setattr(imperative if hasattr(imperative, verb) else cleansing, verb, impl)


@pytest.fixture
def calls(monkeypatch) -> Calls:
    c = Calls(monkeypatch)
    for verb in VERBS:
        c.fake(verb, AssertionError(f"{verb} was not expected to be called"))
    return c


# ---- limit ----


def test_limit_set_parses_rates_with_suffixes(calls):
    calls.fake("limit_set", LIMITS)
    r = invoke(
        "limit",
        "set",
        "--src-pps",
        "10k",
        "--src-bps",
        "1.5M",
        "--dst-pps",
        "2000",
        "--ban",
        "60",
        "--port",
        "udp:53-55",
        "--protected",
        "198.18.0.2",
        "-i",
        IF,
    )
    assert r.exit_code == 0, r.output
    ((verb, (iface, lim, protected, port)),) = calls.log
    assert (verb, iface, protected, port) == ("limit_set", IF, "198.18.0.2", "udp:53-55")
    assert lim == policy.Limits(src_pps=10_000, src_bps=1_500_000, dst_pps=2000, ban_s=60)
    assert "198.18.0.2 address: src 10,000 pps (burst 10,000), ban 60 s" in r.output
    assert "198.18.0.2 udp:53-55: dst 1,000 pps (burst 1,000)" in r.output


def test_limit_show_json(calls):
    calls.fake("limit_show", LIMITS)
    data = json.loads(invoke("limit", "show", "--json").output)
    assert data["limits"][1]["scope"] == "udp:53-55" and data["limits"][0]["limits"]["ban_s"] == 60


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--src-pps", "-5"], "whole number"),
        (["--src-pps", "abc"], "not a number"),
        (["--src-pps", "1.5"], "whole number"),
        (["--src-pps", "1000000000"], "above the limit"),  # validated by policy.Limits before the backend
        (["--src-bps", "5G"], "above the limit"),
    ],
)
def test_limit_set_bad_rates_exit_2_before_the_backend(calls, capsys, args, needle):
    assert run(["limit", "set", *args]) == 2
    assert needle in one_line_error(capsys)
    assert calls.log == []


def test_limit_clear_port_and_all_ports_conflict(calls, capsys):
    assert run(["limit", "clear", "--port", "udp:53", "--all-ports"]) == 2
    assert "not both" in one_line_error(capsys)
    calls.fake("limit_clear", LIMITS)
    assert invoke("limit", "clear", "--all-ports").exit_code == 0
    assert calls.log == [("limit_clear", (None, None, None, True))]


def test_port_spec_parsing():
    assert vocab.parse_port_spec("UDP:53") == ("udp", 53, 53)
    assert vocab.parse_port_spec("tcp:1000-2000") == ("tcp", 1000, 2000)
    for bad in ("53", "sctp:80", "udp:0", "udp:90-80", "udp:x"):
        with pytest.raises(UserError):
            vocab.parse_port_spec(bad)


# ---- proto, reflection, fragments, monitor, syn ----


def test_proto_block_and_unknown_protocol(calls, capsys):
    calls.fake("proto_change", cleansing.ProtoResult(IF, "block", 1, {"198.18.0.2": ["udp", "icmp"]}))
    r = invoke("proto", "block", "ICMP")
    assert r.exit_code == 0 and "198.18.0.2: blocked udp, icmp" in r.output
    assert calls.log == [("proto_change", (None, "icmp", True, None))]
    assert run(["proto", "block", "sctp"]) == 2
    assert "sctp" in one_line_error(capsys)


def test_reflection_verbs(calls):
    calls.fake("reflection_change", cleansing.ReflectionResult(IF, "add", True, [53, 123], [53]))
    r = invoke("reflection", "add", "53")
    assert r.exit_code == 0 and "changed 1" in r.output and "53, 123" in r.output
    calls.fake("reflection_list", cleansing.ReflectionResult(IF, "list", False, [123]))
    assert "off" in invoke("reflection", "list").output
    assert calls.log[0] == ("reflection_change", (None, "add", ("53",)))


def test_fragments_and_monitor(calls, capsys):
    calls.fake("fragments_set", cleansing.FragmentsResult(IF, "drop", True))
    assert "dropped" in invoke("fragments", "drop").output
    calls.fake("monitor_change", cleansing.MonitorResult(IF, "on", ["ratelimit", "syn"], False))
    r = invoke("monitor", "on", "--reason", "ratelimit", "--reason", "syn")
    assert "ratelimit, syn passed and counted as would_drop" in r.output
    assert calls.log[-1] == ("monitor_change", (None, True, ("ratelimit", "syn")))
    calls.fake("monitor_change", UserError("unknown reason 'clean': use blocklist, …"))
    assert run(["monitor", "on", "--reason", "clean"]) == 2
    assert "unknown reason 'clean'" in one_line_error(capsys)


def test_reason_mask():
    assert cleansing._reason_mask([]) == cleansing.ALL_DROP_MASK
    assert cleansing._reason_mask(["ratelimit"]) == 1 << 11
    with pytest.raises(UserError, match="unknown reason 'clean'"):
        cleansing._reason_mask(["clean"])  # a pass reason cannot be monitored


def test_syn_set(calls):
    calls.fake(
        "syn_set",
        cleansing.SynResult(IF, "set", 1, [cleansing.SynView("198.18.0.2", 1000, 200, 10_000, 600, 0, "retransmit")]),
    )
    r = invoke("syn", "set", "--threshold", "1k", "--mode", "retransmit", "--auth-window", "200-10000", "--keep", "600")
    assert r.exit_code == 0 and "authenticate above 1,000 SYN/s" in r.output
    assert calls.log == [("syn_set", (None, 1000, "200-10000", 600, None, "retransmit", False))]


def test_syn_set_cookie_is_the_default(calls):
    calls.fake(
        "syn_set",
        cleansing.SynResult(IF, "set", 1, [cleansing.SynView("198.18.0.2", 0, 200, 10_000, 600, 0, "cookie", True)]),
    )
    r = invoke("syn", "set", "--threshold", "0", "--always")
    assert r.exit_code == 0 and "SYN cookies always" in r.output
    assert calls.log == [("syn_set", (None, 0, None, None, None, "cookie", True))]


def test_syn_set_bad_mode_is_one_error_line(calls, capsys):
    assert run(["syn", "set", "--threshold", "1k", "--mode", "cookies"]) == 2
    assert "--mode" in one_line_error(capsys)
    assert calls.log == []


def test_syn_window_parsing():
    assert cleansing.parse_window("200-10000") == (200, 10_000)
    for bad in ("200", "a-b", ""):
        with pytest.raises(UserError):
            cleansing.parse_window(bad)


# ---- filter ----


def test_filter_add_builds_a_validated_filter(calls):
    calls.fake("filter_add", FILTERS)
    r = invoke(
        "filter",
        "add",
        "--proto",
        "tcp",
        "--dport",
        "80-81",
        "--len",
        "60-100",
        "--ttl",
        "64",
        "--tcp-flags",
        "syn,!ack",
        "--payload",
        "0xdead",
        "--mask",
        "ff:0f",
        "--base",
        "l4",
        "--offset",
        "20",
        "--action",
        "drop-ban",
        "--ban",
        "30",
        "--position",
        "2",
    )
    assert r.exit_code == 0, r.output
    ((verb, (iface, flt, pos)),) = calls.log
    assert pos == 2 and flt == policy.Filter(
        action="drop-ban",
        proto="tcp",
        dport=(80, 81),
        length=(60, 100),
        ttl=(64, 64),
        tcp_flags=(0x12, 0x02),
        payload=b"\xde\xad",
        payload_mask=b"\xff\x0f",
        payload_base="l4",
        payload_off=20,
        ban_s=30,
    )
    assert "1 of 64 filters" in r.output and "1. udp dport 53 -> drop" in r.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--proto", "gre"], "gre"),
        (["--payload", "00", "--offset", "1100"], "past the packet limit"),
        (["--payload", "zz"], "not hex"),
        (["--payload", "00" * 17], "at most 16"),
        (["--payload", "0000", "--mask", "ff"], "as long as the payload"),
        (["--mask", "ff"], "--mask needs --payload"),
        (["--tcp-flags", "syn,bogus"], "bogus"),
        (["--proto", "udp", "--tcp-flags", "syn"], "only match TCP"),
        (["--ttl", "10-300"], "ttl"),
        (["--sport", "9-x"], "--sport"),
        (["--ban", "30"], "drop-ban"),
    ],
)
def test_filter_add_bad_input_exit_2_before_the_backend(calls, capsys, args, needle):
    assert run(["filter", "add", *args, "--action", "drop"]) == 2
    assert needle in one_line_error(capsys)
    assert calls.log == []


def test_filter_add_needs_action_and_table_full(calls, capsys):
    assert run(["filter", "add", "--proto", "udp"]) == 2
    assert "--action" in one_line_error(capsys)
    calls.fake("filter_add", UserError("too many filters: the table holds 64; delete one first"))
    assert run(["filter", "add", "--action", "drop"]) == 2
    assert "table holds 64" in one_line_error(capsys)


def test_filter_list_json_and_del(calls):
    calls.fake("filter_list", FILTERS)
    data = json.loads(invoke("filter", "list", "--json").output)
    assert data["filters"][0]["filter"]["dport"] == [53, 53] and data["capacity"] == 64
    calls.fake("filter_del", cleansing.FilterResult(IF, "del", 1, []))
    assert "deleted filter 1" in invoke("filter", "del", "1").output


def test_describe_filter():
    f = policy.Filter(
        action="drop-ban",
        proto="tcp",
        sport=(0, 1023),
        tcp_flags=(0x12, 0x02),
        payload=b"\x01\x02",
        payload_mask=b"\xff\x0f",
        payload_base="l3",
        payload_off=9,
        ban_s=5,
    )
    assert cleansing.describe_filter(f) == "tcp sport 0-1023 flags syn,!ack l3+9 0102/ff0f -> drop-ban 5 s"
    assert cleansing.describe_filter(policy.Filter()) == "any -> drop"


# ---- bans ----


def test_ban_list_and_block_list_dynamic(calls):
    calls.fake("ban_list", BANS)
    for args in (["ban", "list"], ["block", "list", "--dynamic"]):
        r = invoke(*args)
        assert r.exit_code == 0 and "198.18.0.9" in r.output and "ratelimit" in r.output and "1234" in r.output
    data = json.loads(invoke("block", "list", "--dynamic", "--json").output)
    assert data["bans"] == [{"source": "198.18.0.9", "expires_in_s": 4.2, "hits": 1234, "reason": "ratelimit"}]


def test_allow_list_dynamic_is_refused(calls, capsys):
    assert run(["allow", "list", "--dynamic"]) == 2
    assert "blocklist" in one_line_error(capsys)


def test_ban_add_needs_ttl(calls, capsys):
    assert run(["ban", "add", "198.18.0.9"]) == 2
    assert "--ttl" in one_line_error(capsys)
    calls.fake("ban_add", BANS)
    assert invoke("ban", "add", "198.18.0.9", "2001:db8::9", "--ttl", "60").exit_code == 0
    assert calls.log == [("ban_add", (None, ["198.18.0.9", "2001:db8::9"], 60))]


def test_ban_ttl_validation_in_core():
    for bad in (0, -1, 8 * 86400, True, "5"):
        with pytest.raises(UserError):
            cleansing._check_ttl(bad)
    assert cleansing._check_ttl(60) == 60.0
