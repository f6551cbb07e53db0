"""`xdpguard forward …` and `xdpguard run` without root: the CLI with the core verbs faked, and
the pure parts of core (rule building, nft error mapping, the health checker with a fake prober
and a fake libnftables on real state files in a temporary directory)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from xdpguard.cli.main import cli, run
from xdpguard.core.nat import forward, health, nft as nat
from xdpguard.core.verbs import imperative
from xdpguard.core import state
from xdpguard.core.errors import UserError
from xdpguard.core.nat.forward import BackendView, ForwardChangeResult, ForwardListResult, RuleView
from cli_helpers import one_line_error

LISTING = ForwardListResult(
    rules=[
        RuleView(
            "tcp/198.18.0.2/80",
            "xgp0",
            "tcp",
            "198.18.0.2",
            "80",
            [BackendView("198.18.1.2:8080", 3, False, "up"), BackendView("198.18.2.2:8080", 1, True, "down")],
            60,
            False,
            None,
            12,
            3456,
        )
    ],
    ip_forward={"net.ipv4.ip_forward": "1"},
    table=True,
)


class Calls:
    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.log: list[tuple[str, tuple, dict]] = []

    def fake(self, module, verb: str, result):
        def impl(*args, **kwargs):
            self.log.append((verb, args, kwargs))
            if isinstance(result, BaseException):
                raise result
            return result

        self.monkeypatch.setattr(module, verb, impl)


@pytest.fixture
def calls(monkeypatch) -> Calls:
    c = Calls(monkeypatch)
    for verb in ("forward_add", "forward_delete"):  # the changes: edits of the desired spec
        c.fake(imperative, verb, AssertionError(f"imperative.{verb} was not expected"))
    c.fake(forward, "show", AssertionError("forward.show was not expected"))
    c.fake(health, "run", AssertionError("health.run was not expected"))
    return c


def test_add_passes_every_option(calls):
    calls.fake(
        imperative, "forward_add", ForwardChangeResult("xgp0", "add", "udp/198.18.0.2/53", True, ["enabled forwarding"])
    )
    res = CliRunner().invoke(
        cli,
        [
            "forward",
            "add",
            "udp",
            "53",
            "--to",
            "198.18.1.2:53,198.18.2.2:53",
            "--weight",
            "3,1",
            "--backup",
            "198.18.3.2:53",
            "--persist",
            "60",
            "--preserve-client-ip",
            "--udp-probe",
            "00ff",
            "--protected",
            "198.18.0.2",
            "-i",
            "xgp0",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0
    assert "added udp/198.18.0.2/53" in res.output and "note: enabled forwarding" in res.output
    ((verb, args, kwargs),) = calls.log
    assert args == ("udp", "53", "198.18.1.2:53,198.18.2.2:53")
    assert kwargs == dict(
        ifname="xgp0",
        protected="198.18.0.2",
        weights="3,1",
        backup="198.18.3.2:53",
        persist_s=60,
        preserve_client_ip=True,
        udp_probe="00ff",
    )


def test_add_json_and_del(calls):
    calls.fake(imperative, "forward_delete", ForwardChangeResult("xgp0", "del", "tcp/198.18.0.2/80", True, []))
    res = CliRunner().invoke(cli, ["forward", "del", "tcp", "80", "--json"], catch_exceptions=False)
    assert json.loads(res.output) == {
        "iface": "xgp0",
        "action": "del",
        "key": "tcp/198.18.0.2/80",
        "changed": True,
        "notes": [],
    }
    assert calls.log == [("forward_delete", ("tcp", "80"), {"ifname": None, "protected": None})]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["forward", "add", "icmp", "80", "--to", "198.18.1.2"], "icmp"),
        (["forward", "add", "tcp", "80"], "--to"),
        (["forward", "add", "tcp", "80", "--to", "198.18.1.2", "--persist", "-1"], "--persist"),
        (["forward", "add", "tcp", "80", "--to", "198.18.1.2", "-i", "bad/name"], "bad/name"),
        (["run", "--interval", "soon"], "--interval"),
    ],
)
def test_click_level_bad_input(calls, capsys, argv, needle):
    assert run(argv) == 2
    assert needle in one_line_error(capsys)
    assert calls.log == []


def test_core_user_error_is_one_line(calls, capsys):
    calls.fake(
        imperative, "forward_add", UserError("rule tcp/198.18.0.2/85-100 overlaps existing rule tcp/198.18.0.2/80-90")
    )
    assert run(["forward", "add", "tcp", "85-100", "--to", "198.18.1.2"]) == 2
    assert "overlaps" in one_line_error(capsys)


def test_list_text_and_json(calls):
    calls.fake(forward, "show", LISTING)
    out = CliRunner().invoke(cli, ["forward", "list"], catch_exceptions=False).output
    assert (
        "tcp/198.18.0.2/80" in out
        and "198.18.1.2:8080  weight 3  up" in out
        and "198.18.2.2:8080  weight 1  backup  down" in out
    )
    assert "persist 60s" in out and "3.5 KB" in out
    data = json.loads(CliRunner().invoke(cli, ["forward", "list", "--json"], catch_exceptions=False).output)
    assert data["rules"][0]["backends"][1] == {
        "endpoint": "198.18.2.2:8080",
        "weight": 1,
        "backup": True,
        "health": "down",
    }
    assert data["rules"][0]["packets"] == 12


def test_run_options(calls):
    calls.fake(health, "run", 1)
    res = CliRunner().invoke(
        cli,
        ["run", "--interval", "0.5", "--fall", "2", "--rise", "1", "--timeout", "0.3", "--once"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0 and "stopped after 1 round" in res.output
    ((verb, args, kwargs),) = calls.log
    assert args == (health.HealthParams(0.5, 0.3, 1, 2),) and kwargs["once"] is True


# ---- core, pure parts ----

ST = {"protected": ["198.18.0.2", "198.18.0.3", "2001:db8::2"]}


@pytest.mark.parametrize(
    "ports, to, kw, needle",
    [
        ("0", "198.18.1.2:80", {}, "out of range"),
        ("65536", "198.18.1.2:80", {}, "out of range"),
        ("90-80", "198.18.1.2:80", {}, "reversed"),
        ("80", "198.18.1.2:http", {}, "not a number"),
        ("80", "198.18.1.2:80,198.18.2.2:80", {"weights": "1"}, "1 weight(s) given for 2 backend(s)"),
        ("80", "198.18.1.2:80", {}, "several IPv4"),
        ("80", "[2001:db8:1::2]:80", {"protected": "198.18.0.2"}, "IPv6"),
    ],
)
def test_build_rule_errors(ports, to, kw, needle):
    protected = kw.pop("protected", "198.18.0.2" if needle != "several IPv4" else None)
    with pytest.raises(UserError) as exc:
        forward.build_rule("tcp", ports, to, protected, ST, "xgp0", **kw)
    assert needle in exc.value.message


def test_build_rule_picks_the_only_address_of_the_family():
    rule = forward.build_rule("tcp", "80", "[2001:db8:1::2]:8080", None, ST, "xgp0")
    assert str(rule.protected) == "2001:db8::2" and rule.key == "tcp/2001:db8::2/80"


class FakeNft:
    def __init__(self, rc: int = 0):
        self.rc = rc
        self.batches: list[dict] = []

    def json_cmd(self, obj):
        if "list" in json.dumps(obj):
            return 0, {"nftables": []}, ""
        self.batches.append(obj)
        return (
            (self.rc, "", "internal:0:0-0: Error: Could not process rule: No such file or directory")
            if self.rc
            else (0, "", "")
        )


def test_nft_error_becomes_user_error():
    applier = nat.NftApplier(nft=FakeNft(rc=1))
    rule = forward.StoredRule("xgp0", forward.build_rule("tcp", "80", "198.18.1.2:8080", "198.18.0.2", ST, "xgp0"))
    with pytest.raises(UserError) as exc:
        forward.apply_rules(applier, {"xgp0": ST}, [rule])
    assert "Could not process rule" in exc.value.message and "unchanged" in exc.value.message


def _dnat_targets(batch: dict) -> str:
    return json.dumps([item for item in batch["nftables"] if "dnat" in json.dumps(item)])


def test_health_checker_fails_over_to_backup_and_back(tmp_path, monkeypatch):
    monkeypatch.setenv("XDPGUARD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDPGUARD_RUN_DIR", str(tmp_path / "run"))
    iface = state.Iface("xgp0", 0, state.netns_key())
    rule = forward.build_rule("udp", "53", "198.18.1.2:53", "198.18.0.2", ST, "xgp0", backup="198.18.2.2:53")
    state.write_state(iface, {**ST, forward.FORWARD_KEY: [forward.StoredRule("xgp0", rule, b"\x01").to_dict()]})
    nft = FakeNft()
    monkeypatch.setattr(forward, "_applier", lambda: nat.NftApplier(nft=nft))
    alive = {"198.18.1.2": True, "198.18.2.2": True}
    payloads = []

    def prober(target, timeout):
        payloads.append(target.payload)
        return alive[str(target.backend.host)]

    checker = health.HealthChecker(health.HealthParams(0.1, 0.1, rise=1, fall=2), prober=prober)
    assert {(c.backend, c.new) for c in checker.round()} == {("198.18.1.2:53", "up"), ("198.18.2.2:53", "up")}
    assert set(payloads) == {b"\x01"}
    assert '"198.18.1.2"' in _dnat_targets(nft.batches[-1])
    alive["198.18.1.2"] = False
    assert checker.round() == []  # one failure is not yet down (fall 2)
    (t,) = checker.round()
    assert (t.backend, t.old, t.new) == ("198.18.1.2:53", "up", "down")
    dnat = _dnat_targets(nft.batches[-1])
    assert '"198.18.2.2"' in dnat and '"198.18.1.2"' not in dnat  # the backup took over
    assert state.read_state(iface)[forward.HEALTH_KEY] == {rule.key: {"198.18.1.2:53": "down", "198.18.2.2:53": "up"}}
    alive["198.18.1.2"] = True
    (t,) = checker.round()
    assert t.new == "up" and '"198.18.1.2"' in _dnat_targets(nft.batches[-1])
