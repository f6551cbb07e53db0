"""The watermark's desired state: [[interface.address.watermark]] (schema, export round trip,
diff), the record that never holds a key, rotation, and bad input through the CLI (one error
line, exit 2, nothing stored)."""

from __future__ import annotations

import textwrap

import pytest

from xdpguard.cli.main import run
from xdpguard.core import store
from xdpguard.core.desired.load import loads, ConfigError
from xdpguard.core.desired.dump import to_toml
from xdpguard.core.desired.diff import diff
from xdpguard.core.prefixes import parse_address
from xdpguard.core import watermark as wm
from xdpguard.core.errors import UserError

from cli_helpers import one_line_error

BASE = """\
[[interface]]
name = "veth0"
protect = ["198.18.0.1", "2001:db8::1"]

[[interface.address]]
address = "198.18.0.1"
"""


@pytest.fixture
def key(tmp_path):
    p = tmp_path / "k.key"
    p.write_text("00112233445566778899aabbccddeeff\n")
    return str(p)


def load(body: str):
    return loads(BASE + textwrap.dedent(body), "t.toml")[0]


def test_watermark_tables_load_and_round_trip(key):
    d = load(
        f'[[interface.address.watermark]]\nport = 7777\nkey_file = "{key}"\nstep = 10\nwindow = 64\n'
        f'[[interface.address.watermark]]\nport = 53\nkey_file = "{key}"\n'
    )
    a = d.interfaces[0].addresses[0]
    assert [w.port for w in a.watermark] == [53, 7777]  # sorted by port
    assert a.watermark[1] == wm.WatermarkSpec(7777, key, step=10, window=64)
    text = to_toml(d)
    assert "[[interface.address.watermark]]" in text and "00112233" not in text  # a path, never the key
    assert loads(text, "again.toml")[0] == d
    assert not diff(d, loads(text, "again.toml")[0])
    d2 = load(f'[[interface.address.watermark]]\nport = 7777\nkey_file = "{key}"\n')
    ch = diff(d, d2)
    assert len(ch) == 1 and "watermark" in ch[0].path


@pytest.mark.parametrize(
    "body, needle",
    [
        ('port = 7\nkey_file = "k"', "absolute path"),
        ("port = 7", "needs port and key_file"),
        ('port = 0\nkey_file = "/k"', "port must be 1-65535"),
        ('port = 7\nkey_file = "/k"\nwindow = 12', "window must be a multiple of 8"),
        ('port = 7\nkey_file = "/k"\nwindow = 72', "window must be a multiple of 8"),
        ('port = 7\nkey_file = "/k"\nstep = 0', "step must be"),
        ('port = 7\nkey_file = "/k"\nskew = 99', "skew must be 0-16"),
        ('port = 7\nkey_file = "/k"\nkey = "00"', "key"),
    ],
)
def test_bad_watermark_tables_name_the_field(body, needle):
    with pytest.raises(ConfigError) as e:
        load("[[interface.address.watermark]]\n" + body + "\n")
    assert needle in e.value.message and "watermark" in e.value.message


def test_a_port_watermarked_twice_is_refused():
    with pytest.raises(ConfigError) as e:
        load(
            '[[interface.address.watermark]]\nport = 7\nkey_file = "/a"\n'
            '[[interface.address.watermark]]\nport = 7\nkey_file = "/b"\n'
        )
    assert "udp/7 is watermarked twice" in e.value.message


def test_record_and_show_never_hold_the_key(key):
    d = load(f'[[interface.address.watermark]]\nport = 7\nkey_file = "{key}"\n')
    rec = wm.record(d.interfaces[0].addresses)
    assert rec == {"198.18.0.1": [{"port": 7, "key_file": key, "step": 30, "window": 32, "skew": 1, "overlap": 300}]}
    w = d.interfaces[0].addresses[0].watermark[0]
    assert "00112233" not in repr(rec) and "00112233" not in w.describe()
    assert wm.fingerprint(bytes.fromhex("00112233445566778899aabbccddeeff")) in w.describe()
    a = parse_address("198.18.0.1")
    v = wm.value(wm.read_key(key), w)
    assert wm.exported(rec, {("198.18.0.1", 7): v}, a) == (w,)
    assert wm.exported(rec, {}, a) == ()  # not in the kernel: drift
    assert wm.exported(rec, {("198.18.0.1", 7): wm.value(bytes(16), w)}, a) == ()  # key file replaced on disk
    v.clock_off_ns -= 5 * 10**9
    assert wm.exported(rec, {("198.18.0.1", 7): v}, a) == ()  # the clock was stepped: rewrite the offset


def test_rotation_keeps_the_old_key_for_the_overlap(key):
    w = wm.WatermarkSpec(7, key, overlap=120)
    r = wm.rotated(w, "/new.key", now=1000.0)
    assert (r.key_file, r.previous_key_file, r.previous_until) == ("/new.key", key, 1120)
    with pytest.raises(UserError):
        wm.rotated(r, "/new.key")
    assert wm.rotated(wm.WatermarkSpec(7, key, overlap=0), "/n", now=1.0).previous_key_file is None
    v = wm.value(bytes(16), r, previous=bytes(range(16)), now=1100.0)
    assert v.prev_until_s == 1120 and v.pk0 == int.from_bytes(bytes(range(8)), "little")
    assert wm.value(bytes(16), r, previous=bytes(range(16)), now=1121.0).pk0 == 0


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"0011", "16 bytes"),
        (b"zz" * 16, "16 bytes"),
        (b"", "16 bytes"),
    ],
)
def test_cli_bad_key_files(tmp_path, capsys, content, needle):
    p = tmp_path / "bad.key"
    p.write_bytes(content)
    before = store.load()
    assert run(["watermark", "enable", "7", "--key-file", str(p)]) == 2
    line = one_line_error(capsys)
    assert needle in line and str(p) in line
    assert store.load() == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (["watermark", "enable", "7", "--key-file", "/nonexistent/k"], "/nonexistent/k"),
        (["watermark", "rotate", "7"], "--key-file"),
    ],
)
def test_cli_bad_input(capsys, args, needle):
    assert run(args) == 2
    assert needle in one_line_error(capsys)


def test_cli_bad_window_is_one_line(key, capsys):
    assert run(["watermark", "enable", "70000", "--key-file", key]) == 2
    assert "70000" in one_line_error(capsys)
    assert run(["watermark", "enable", "7", "--key-file", key, "--window", "12"]) == 2
    assert "window must be a multiple of 8" in one_line_error(capsys)


def test_keygen(tmp_path, capsys):
    p = tmp_path / "new.key"
    assert run(["watermark", "keygen", str(p)]) == 0
    assert "sip:" in capsys.readouterr().out and len(wm.read_key(str(p))) == 16
    assert run(["watermark", "keygen", str(p)]) == 2
    assert "never overwritten" in one_line_error(capsys)
