"""Every header of bpf/include compiles alone: it includes what it uses, and nothing it uses
comes from a header that happened to be included before it (issue 26: the step headers used
policy.h's names and were included from its middle, so none compiled alone).

Each header is the root of its own compile, through the loader's own path (dataplane's
render_source inlines the quoted includes; bcc compiles with its kernel include flags and
defines, the loader's cflags, and implicit function declarations as errors: a helper of another
header that is not included must fail here, not warn). Map sizes are made small: a header with
maps.h creates every map, which is all the compile costs beyond the parse.
"""

from __future__ import annotations

import pytest

from xdpguard.core.kernel import abi, dataplane

pytestmark = pytest.mark.kernel

INCLUDE = abi.BPF_DIR / "include"
HEADERS = sorted(p.relative_to(INCLUDE).as_posix() for p in INCLUDE.rglob("*.h"))
# Small maps for a cheap compile (the layouts do not change; only how many entries).
SMALL = {
    "XG_LIST_MAX": 64,
    "XG_SOURCES_MAX": 64,
    "XG_BANS_MAX": 64,
    "XG_OPBANS_MAX": 64,
    "XG_SYNAUTH_MAX": 64,
    "XG_FLOWS_MAX": 64,
    "XG_EMBRYOS_MAX": 64,
    "XG_GOODSRC_MAX": 64,
    "XG_PORTS_MAX": 64,
    "XG_GEO_MAX": 64,
    "XG_PROTECTED_MAX": 64,
    "XG_SK_SLOTS": 64,
}
CFLAGS = [*dataplane.CFLAGS, "-Werror=implicit-function-declaration"]


def compile_alone(text: str) -> None:
    bcc = dataplane._import_bcc()
    b = bcc.BPF(text=text.encode(), cflags=CFLAGS)
    b.cleanup()


def test_the_step_headers_are_found():
    steps = [h for h in HEADERS if h.startswith("steps/")]
    assert "common.h" in HEADERS and "abi.h" in HEADERS
    assert len(steps) >= 10, steps


@pytest.mark.parametrize("header", HEADERS)
def test_header_compiles_alone(header):
    compile_alone(dataplane.render_source(SMALL, source=INCLUDE / header))


def test_a_header_missing_an_include_fails(tmp_path):
    """The check has teeth: steps/port.h without maps.h (its map's home), and a call of a
    function no header declares, are compile errors."""
    port = (INCLUDE / "steps" / "port.h").read_text()
    assert '#include "maps.h"\n' in port
    broken = tmp_path / "port.h"
    broken.write_text(port.replace('#include "maps.h"\n', ""))
    with pytest.raises(Exception, match="compile"):
        compile_alone(dataplane.render_source(SMALL, source=broken))
    undeclared = tmp_path / "undeclared.h"
    undeclared.write_text(
        '#include "common.h"\nstatic __always_inline int f(void) { return xg_not_declared_anywhere(1); }\n'
    )
    with pytest.raises(Exception, match="compile"):
        compile_alone(dataplane.render_source(SMALL, source=undeclared))
