"""The C reference port of the watermark SDK (xdpguard/sdk/c) against the shared vectors: the
64 SipHash-2-4 reference outputs and every mark vector, byte for byte."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from xdpguard.sdk import watermark as sdk

SRC = Path(sdk.__file__).parent / "c"
VEC = json.load(open(sdk.VECTORS))


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path_factory.mktemp("wmc") / "xg_watermark_vectors"
    subprocess.run(
        [
            cc,
            "-std=c99",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
            str(exe),
            str(SRC / "xg_watermark.c"),
            str(SRC / "xg_watermark_vectors.c"),
        ],
        check=True,
    )
    return exe


def test_c_siphash_reference_vectors(driver):
    key = VEC["siphash24"]["key"]
    for i, want in enumerate(VEC["siphash24"]["outputs"]):
        out = subprocess.run(
            [str(driver), "siphash", key, bytes(range(i)).hex()], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert out == want, i


def test_c_mark_vectors(driver):
    for v in VEC["marks"]:
        # the vectors' `now` may have a fraction: the epoch is floor(now / step), as floor(int(now) / step)
        out = subprocess.run(
            [
                str(driver),
                "mark",
                v["key"],
                str(v["port"]),
                str(v["step"]),
                str(v["window"]),
                str(int(v["now"])),
                v["data"] or "",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == v["datagram"], v
    assert subprocess.run([str(driver), "mark", "00" * 16, "7", "30", "12", "0", "00"]).returncode == 1  # bad window
