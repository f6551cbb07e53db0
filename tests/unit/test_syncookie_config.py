"""The SYN defence mode in the config file: mode/always keys, errors with file/line/field, the
export → load round trip, and the policy ↔ map-entry flag bits (no kernel needed)."""

from __future__ import annotations

import pytest
from cli_helpers import one_line_error

from xdpguard.cli.main import run
from xdpguard.core.kernel import abi
from xdpguard.core import policy
from xdpguard.core.desired.load import ConfigError, loads
from xdpguard.core.desired.dump import to_toml

HEAD = '[[interface]]\nname = "veth0"\nprotect = ["198.18.0.1"]\n\n[[interface.address]]\naddress = "198.18.0.1"\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        loads(text, "x.toml")
    return str(e.value).splitlines()


@pytest.mark.parametrize(
    "syn, needle",
    [
        ('syn = { threshold = 1000, mode = "cookies" }', "x.toml:7: interface[0].address[0].syn.mode: must be"),
        ("syn = { threshold = 1000, mode = 1 }", "x.toml:7: interface[0].address[0].syn.mode: must be a string"),
        ('syn = { always = "yes" }', "x.toml:7: interface[0].address[0].syn.always: must be true or false"),
    ],
)
def test_bad_mode_names_file_line_and_field(syn, needle):
    got = problems(HEAD + syn + "\n")
    assert any(p.startswith(needle) for p in got), got


@pytest.mark.parametrize(
    "syn",
    [
        policy.SynPolicy(1000),
        policy.SynPolicy(1000, mode="retransmit"),
        policy.SynPolicy(always=True),
        policy.SynPolicy(0, mode="retransmit"),
    ],
)
def test_export_round_trip(syn):
    d, _ = loads(HEAD + "syn = { threshold = 1 }\n")
    spec = d.interfaces[0]
    addr = spec.addresses[0]
    d2 = type(d)(
        **{
            **d.__dict__,
            "interfaces": (
                type(spec)(**{**spec.__dict__, "addresses": (type(addr)(**{**addr.__dict__, "syn": syn}),)}),
            ),
        }
    )
    text = to_toml(d2)
    back, _ = loads(text)
    assert back.interfaces[0].addresses[0].syn == syn, text


def test_mode_lives_in_the_entry_flags():
    for syn in (policy.SynPolicy(5000), policy.SynPolicy(5000, mode="retransmit"), policy.SynPolicy(always=True)):
        c = syn.to_c(3)
        assert policy.SynPolicy.from_c(c, syn.flag_bits()) == syn
    # an entry written before cookie mode existed (no XG_PROT_SYN_COOKIE bit) runs as retransmit
    assert policy.SynPolicy.from_c(policy.SynPolicy(5000).to_c(0), 0).mode == "retransmit"
    assert policy.new_protected(0).flags & abi.PROT_SYN_COOKIE


def test_unknown_share_in_the_config_and_its_errors():
    d, _ = loads(HEAD + "limits = { dst_pps = 1000, unknown_share = 30 }\n")
    lim = d.interfaces[0].addresses[0].limits
    assert lim.unknown_share_pct == 30 and lim.to_c().unknown_share_pct == 30
    assert loads(to_toml(d))[0] == d
    got = problems(HEAD + "limits = { dst_pps = 1000, unknown_share = 150 }\n")
    assert any(p.startswith("x.toml:7: interface[0].address[0].limits.unknown_share") for p in got), got


def test_unknown_share_bad_cli_value_is_one_error_line(capsys):
    assert run(["limit", "set", "--dst-pps", "1000", "--unknown-share", "150"]) == 2
    assert "unknown share" in one_line_error(capsys)
