"""The watermark client SDK (xdpguard/sdk/watermark.py): SipHash-2-4 against the reference
vectors of the paper's implementation, and the published mark vectors both ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xdpguard.sdk import watermark as sdk

VEC = json.load(open(sdk.VECTORS))


def test_siphash24_reference_vectors_all_64():
    key = bytes.fromhex(VEC["siphash24"]["key"])
    outs = VEC["siphash24"]["outputs"]
    assert len(outs) == 64
    assert [sdk.siphash24(key, bytes(range(i))).hex() for i in range(64)] == outs
    # the paper's worked example (15 bytes 00..0e): a129ca6149be45e5 as a 64-bit number
    assert int.from_bytes(sdk.siphash24(bytes(range(16)), bytes(range(15))), "little") == 0xA129CA6149BE45E5


@pytest.mark.parametrize("v", VEC["marks"], ids=lambda v: f"{v['port']}-{len(v['data']) // 2}B-w{v['window']}")
def test_mark_vectors(v):
    key, data = bytes.fromhex(v["key"]), bytes.fromhex(v["data"])
    ep = sdk.epoch_of(v["now"], v["step"])
    assert sdk.message(data, ep, v["port"], v["window"]).hex() == v["message"]
    assert len(bytes.fromhex(v["message"])) == 8 + v["window"]
    out = sdk.mark(data, key, v["now"], port=v["port"], step=v["step"], window=v["window"])
    assert out.hex() == v["datagram"]
    assert sdk.verify(out, key, v["now"], port=v["port"], step=v["step"], window=v["window"]) == data


def test_verify_refuses_what_the_data_path_refuses():
    key, now = bytes(16), 1_800_000_000.0
    d = sdk.mark(b"payload", key, now, port=9)
    assert sdk.verify(d, key, now + 30, port=9) == b"payload"  # skew 1
    assert sdk.verify(d, key, now + 60, port=9) is None  # stale
    assert sdk.verify(d, key, now - 60, port=9) is None  # too far ahead
    assert sdk.verify(d, key, now, port=10) is None  # bound to the port
    assert sdk.verify(d, bytes([1]) + bytes(15), now, port=9) is None
    assert sdk.verify(b"x" + d, key, now, port=9) is None  # bound to the length


@pytest.mark.parametrize("step,window", [(0, 32), (30, 12), (30, 72), (30, -8), (1.5, 32)])
def test_bad_parameters(step, window):
    with pytest.raises(ValueError):
        sdk.mark(b"", bytes(16), 0, port=1, step=step, window=window)


def test_keys(tmp_path):
    p = tmp_path / "k"
    sdk.write_key(str(p))
    assert oct(os.stat(p).st_mode & 0o777) == "0o600"
    assert len(sdk.load_key(str(p))) == 16
    with pytest.raises(FileExistsError):
        sdk.write_key(str(p))  # never overwritten
    assert sdk.parse_key(b"00" * 16 + b"\n") == bytes(16)
    assert sdk.parse_key(bytes(range(16))) == bytes(range(16))
    for bad in (b"00" * 15, b"zz" * 16, b"", bytes(17)):
        with pytest.raises(ValueError):
            sdk.parse_key(bad)


def test_cli_mark_matches_the_module(tmp_path):
    k = tmp_path / "k"
    k.write_text(bytes(range(16)).hex())
    v = VEC["marks"][1]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "xdpguard.sdk.watermark",
            "mark",
            "--key-file",
            str(k),
            "--port",
            str(v["port"]),
            "--now",
            str(v["now"]),
            v["data"],
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == v["datagram"]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "xdpguard.sdk.watermark",
            "mark",
            "--key-file",
            str(tmp_path / "no"),
            "--port",
            "7",
            "00",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("watermark: error:") and "Traceback" not in bad.stderr
