"""policy.VerifySettings (xg_vcfg_arr): validation and the round trip through the C layout."""

from __future__ import annotations

import pytest

from xdpguard.core.kernel import abi
from xdpguard.core import policy
from xdpguard.core.errors import UserError


def test_round_trip_through_the_c_layout():
    v = policy.VerifySettings(
        tcp_pps=100, tcp_burst=200, udp_pps=10, udp_burst=20, udp_peace_pps=3000, udp_learning=False, spoof_ban_s=5
    )
    c = v.to_c()
    assert c.flags == abi.VC_NO_UDP_LEARN
    assert policy.VerifySettings.from_c(c) == v
    assert policy.VerifySettings.from_c(policy.VerifySettings().to_c()) == policy.VerifySettings()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tcp_pps": -1},
        {"udp_burst": 1 << 33},
        {"spoof_ban_s": -1},
        {"spoof_ban_s": policy.MAX_BAN_S + 1},
        {"udp_peace_pps": policy.MAX_PPS + 1},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(UserError):
        policy.VerifySettings(**kwargs)
