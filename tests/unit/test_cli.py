"""The click CLI with a fake backend: the verbs of xdpguard.core.protection are replaced by fakes
returning the real result dataclasses, so no root, bcc or kernel is involved.

`run([...])` (what the console script calls) is used for exit codes and the one-line error
contract; CliRunner for output rendering.
"""

from __future__ import annotations

import errno
import json

import pytest

from xdpguard import __version__
from xdpguard.cli.main import run
from xdpguard.core.verbs import imperative
from xdpguard.core import protection, reconcile
from xdpguard.core.errors import UserError
from xdpguard.core.kernel.libbpf import BpfError
from xdpguard.core.protection import (
    AttachResult,
    CounterView,
    DetachResult,
    ListChangeResult,
    ListEntryView,
    ListResult,
    StatusResult,
)
from cli_helpers import invoke, one_line_error

ATTACHED = AttachResult(
    "veth-xg0",
    7,
    4242,
    "native",
    ["198.18.0.1", "2001:db8::1"],
    False,
    "/run/xdpguard/bpffs/net-1/veth-xg0",
    ["replaced foreign XDP program id 12 ('other')"],
)
STATUS = StatusResult(
    iface="veth-xg0",
    ifindex=7,
    prog_id=4242,
    mode="skb",
    protected=["198.18.0.1", "2001:db8::1"],
    monitor=True,
    list_sizes={"block": 3, "allow": 1},
    counters=[CounterView("pass", "clean", 1234, 98_765), CounterView("drop", "blocklist", 5678, 3_400_000)],
    totals={"pass": {"packets": 1234, "bytes": 98_765}, "drop": {"packets": 5678, "bytes": 3_400_000}},
    pinned=True,
)
BLOCKLIST = ListResult(
    "veth-xg0",
    "block",
    [
        ListEntryView("203.0.113.0/24", 31337, None),
        ListEntryView("2001:db8:bad::/48", 0, 119.6),
    ],
)


class Calls:
    """Fakes for protection's verbs: record each call, return (or raise) what the test says."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.log: list[tuple[str, tuple, dict]] = []

    def fake(self, verb: str, result):
        def impl(*args, **kwargs):
            self.log.append((verb, args, kwargs))
            if isinstance(result, BaseException):
                raise result
            return result

        # attach and detach are the verb layer's (store first; detach also tears down NAT)
        # the list verbs are edits of the desired spec (imperative.py)
        mod = reconcile if verb in ("attach", "detach") else imperative if verb in LIST_VERBS else protection
        self.monkeypatch.setattr(mod, verb, impl)


LIST_VERBS = ("list_add", "list_del", "list_load")


@pytest.fixture
def calls(monkeypatch) -> Calls:
    c = Calls(monkeypatch)
    for verb in ("attach", "detach", "status", "list_add", "list_del", "list_load", "list_show"):
        c.fake(verb, AssertionError(f"protection.{verb} was not expected to be called"))
    return c


# ---- exit codes and the one-line error contract ----


def test_version(capsys):
    assert run(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert invoke("--version").output.strip() == f"xdpguard, version {__version__}"


def test_attach_requires_protect(calls, capsys):
    assert run(["attach", "veth-xg0"]) == 2
    assert "--protect" in one_line_error(capsys)
    assert calls.log == []


def test_invalid_cidr_is_rejected_before_the_backend(calls, capsys):
    assert run(["block", "add", "203.0.113.7", "198.18.0.0/33"]) == 2
    line = one_line_error(capsys)
    assert "198.18.0.0/33" in line and "exceeds 32" in line
    assert calls.log == []


def test_invalid_mode(calls, capsys):
    assert run(["attach", "veth-xg0", "--protect", "198.18.0.1", "--mode", "turbo"]) == 2
    assert "turbo" in one_line_error(capsys)
    assert calls.log == []


def test_invalid_interface_name(calls, capsys):
    assert run(["detach", "a-name-longer-than-15"]) == 2
    assert "a-name-longer-than-15" in one_line_error(capsys)


def test_user_error_from_core(calls, capsys):
    calls.fake("list_add", UserError("no interface is protected in this network namespace; give --iface"))
    assert run(["block", "add", "203.0.113.7"]) == 2
    assert (
        one_line_error(capsys) == "xdpguard: error: no interface is protected in this network namespace; give --iface"
    )


def test_kernel_error_is_exit_1(calls, capsys):
    calls.fake("detach", BpfError(errno.EPERM, "bpf_xdp_detach: Operation not permitted"))
    assert run(["detach", "veth-xg0"]) == 1
    assert one_line_error(capsys) == "xdpguard: error: bpf_xdp_detach: Operation not permitted"


def test_ctrl_c_is_exit_130(calls, capsys):
    calls.fake("status", KeyboardInterrupt())
    assert run(["status"]) == 130
    # click turns Ctrl-C into Abort after echoing a newline (ends the "^C" line on a terminal).
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(err) == 1 and err[0].startswith("xdpguard: error: ")


def test_unknown_command(capsys):
    assert run(["frobnicate"]) == 2
    assert "frobnicate" in one_line_error(capsys)


# ---- attach / detach ----


def test_attach_human(calls):
    calls.fake("attach", ATTACHED)
    r = invoke("attach", "veth-xg0", "--protect", "198.18.0.1,2001:db8::1", "--mode", "native")
    assert r.exit_code == 0
    assert calls.log == [
        (
            "attach",
            ("veth-xg0", ["198.18.0.1,2001:db8::1"]),
            {"mode": "native", "monitor": False, "force": False, "level": "normal"},
        )
    ]
    for figure in (
        "veth-xg0",
        "ifindex 7",
        "prog id 4242",
        "native",
        "198.18.0.1",
        "2001:db8::1",
        ATTACHED.pin_dir,
        "replaced foreign XDP program id 12",
    ):
        assert figure in r.output


def test_attach_json(calls):
    calls.fake("attach", ATTACHED)
    r = invoke("attach", "veth-xg0", "--protect", "198.18.0.1", "--monitor", "--json")
    assert json.loads(r.output) == ATTACHED.to_dict()
    assert calls.log[0][2]["monitor"] is True


def test_detach_human(calls):
    calls.fake("detach", DetachResult("veth-xg0", 4242, []))
    r = invoke("detach", "veth-xg0")
    assert r.exit_code == 0 and "detached" in r.output and "prog id 4242" in r.output
    assert calls.log == [("detach", ("veth-xg0",), {})]


# ---- status ----


def test_status_json(calls):
    calls.fake("status", [STATUS])
    r = invoke("status", "--json")
    assert r.exit_code == 0
    [data] = json.loads(r.output)
    assert data["prog_id"] == 4242 and data["mode"] == "skb" and data["monitor"] is True
    assert data["protected"] == ["198.18.0.1", "2001:db8::1"]
    assert data["list_sizes"] == {"block": 3, "allow": 1}
    assert {"kind": "drop", "reason": "blocklist", "packets": 5678, "bytes": 3_400_000} in data["counters"]
    assert data["totals"]["pass"] == {"packets": 1234, "bytes": 98_765}
    assert calls.log == [("status", (None,), {})]


def test_status_human(calls):
    calls.fake("status", [STATUS])
    r = invoke("status", "veth-xg0")
    assert r.exit_code == 0
    for figure in (
        "veth-xg0",
        "ifindex 7",
        "prog id 4242",
        "mode skb",
        "MONITOR",
        "198.18.0.1",
        "2001:db8::1",
        "blocklist: 3 entries",
        "allowlist: 1 entries",
        "clean",
        "1234",
        "98.8 KB",
        "5678",
        "3.4 MB",
    ):
        assert figure in r.output
    assert calls.log == [("status", ("veth-xg0",), {})]


def test_status_nothing_protected(calls):
    calls.fake("status", [])
    r = invoke("status")
    assert r.exit_code == 0 and "no interface is protected" in r.output


# ---- lists ----


def test_block_add(calls):
    calls.fake(
        "list_add", ListChangeResult("veth-xg0", "block", "add", 2, 1, 0, [], ["203.0.113.77/24 -> 203.0.113.0/24"])
    )
    r = invoke("block", "add", "203.0.113.77/24", "2001:db8:bad::/48", "198.51.100.9", "--ttl", "600", "-i", "veth-xg0")
    assert r.exit_code == 0
    assert calls.log == [
        (
            "list_add",
            ("block", "veth-xg0", ["203.0.113.77/24", "2001:db8:bad::/48", "198.51.100.9"], 600.0),
            {"force": False},
        )
    ]
    assert "added 2, refreshed 1" in r.output
    assert "normalised 203.0.113.77/24 -> 203.0.113.0/24" in r.output


def test_allow_del_reports_missing(calls):
    calls.fake("list_del", ListChangeResult("veth-xg0", "allow", "del", 0, 0, 1, ["198.51.100.0/24"], []))
    r = invoke("allow", "del", "203.0.113.7", "198.51.100.0/24")
    assert r.exit_code == 0
    assert calls.log[0][1] == ("allow", None, ["203.0.113.7", "198.51.100.0/24"])
    assert "removed 1" in r.output and "198.51.100.0/24 was not in the allowlist" in r.output


def test_block_load(calls, tmp_path):
    f = tmp_path / "attackers.txt"
    f.write_text("203.0.113.0/24\n")  # the CLI checks that FILE is a readable file before the core reads it
    calls.fake("list_load", ListChangeResult("veth-xg0", "block", "load", 1000, 0, 0, [], []))
    r = invoke("block", "load", str(f), "--json")
    assert r.exit_code == 0
    ((verb, args, kwargs),) = calls.log  # (that the verb reads the file once: tests/unit/test_one_writer.py)
    assert (verb, args, kwargs) == ("list_load", ("block", None, str(f), None), {"force": False})
    assert json.loads(r.output)["added"] == 1000


def test_block_list_json(calls):
    calls.fake("list_show", BLOCKLIST)
    r = invoke("block", "list", "--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data["list"] == "block"
    assert data["entries"] == [
        {"prefix": "203.0.113.0/24", "hits": 31337, "expires_in_s": None},
        {"prefix": "2001:db8:bad::/48", "hits": 0, "expires_in_s": 119.6},
    ]
    assert calls.log == [("list_show", ("block", None), {})]


def test_block_list_human(calls):
    calls.fake("list_show", BLOCKLIST)
    r = invoke("block", "list")
    assert r.exit_code == 0
    assert "blocklist on veth-xg0: 2 entries" in r.output
    lines = r.output.splitlines()
    [v4] = [ln for ln in lines if "203.0.113.0/24" in ln]
    [v6] = [ln for ln in lines if "2001:db8:bad::/48" in ln]
    assert "31337" in v4 and "never" in v4
    assert "120 s" in v6 and "never" not in v6


def test_allow_list_empty(calls):
    calls.fake("list_show", ListResult("veth-xg0", "allow", []))
    r = invoke("allow", "list")
    assert r.exit_code == 0 and "allowlist on veth-xg0: 0 entries" in r.output
