"""bpf/include/abi.h and maps.h against their Python mirror in xdpguard/core/kernel/abi.py.

The C side is read with regexes (no compiler): #defines, `struct xg_* {…}` layouts with
natural alignment, and the BPF_*(name, …) map declarations.
"""

from __future__ import annotations

import ctypes
import enum
import json
import re
import subprocess
import sys

import pytest

from xdpguard.core.kernel import abi

INCLUDE = abi.BPF_DIR / "include"
C_TYPE_SIZES = {"int": 4, "__u8": 1, "__u16": 2, "__be16": 2, "__u32": 4, "__be32": 4, "__u64": 8, "__be64": 8}


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


ABI_H = _strip_comments(
    abi.ABI_HEADER.read_text() + (INCLUDE / "steps" / "budget.h").read_text()
)  # steps/budget.h: its struct
MAPS_H = _strip_comments(
    (INCLUDE / "maps.h").read_text() + (INCLUDE / "sample.h").read_text() + (INCLUDE / "steps" / "budget.h").read_text()
)


def defines(prefix: str) -> dict[str, str]:
    """`#define <prefix>NAME value` → {NAME: value}."""
    return {m[1]: m[2].strip() for m in re.finditer(rf"^\s*#define\s+{prefix}(\w+)\s+(.+?)\s*$", ABI_H, re.M)}


def c_structs() -> dict[str, list[tuple[str, str, int]]]:
    """struct name → [(field, C type, array length or 1)]."""
    out = {}
    for m in re.finditer(r"struct\s+(xg_\w+)\s*\{(.*?)\}\s*;", ABI_H, re.S):
        fields = []
        for decl in filter(None, (d.strip() for d in m[2].split(";"))):
            f = re.fullmatch(r"((?:struct\s+)?\w+)\s+(\w+)\s*(?:\[\s*(\w+)\s*\])?", decl)
            assert f, f"struct {m[1]}: cannot parse field '{decl}'"
            assert f[1] in C_TYPE_SIZES or f[1].removeprefix("struct ").strip() in out, (
                f"struct {m[1]}: unknown type {f[1]}"
            )
            n = f[3] or "1"  # an array length may be a macro of abi.h (XG_SAMPLE_SNAPLEN)
            fields.append((f[2], f[1], int(n) if n.isdigit() else int(defines("")[n])))
        out[m[1]] = fields
    return out


def _size_align(ctype: str) -> tuple[int, int]:
    """sizeof and alignment of a scalar type or of a struct xg_* declared earlier in abi.h."""
    if ctype in C_TYPE_SIZES:
        return C_TYPE_SIZES[ctype], C_TYPE_SIZES[ctype]
    fields = c_structs()[ctype.removeprefix("struct").strip()]
    _, size = c_layout(fields)
    return size, max(_size_align(t)[1] for _, t, _ in fields)


def c_layout(fields: list[tuple[str, str, int]]) -> tuple[list[int], int]:
    """(field offsets, sizeof) with natural alignment."""
    offsets, pos, align = [], 0, 1
    for _, ctype, n in fields:
        size, falign = _size_align(ctype)
        pos = (pos + falign - 1) // falign * falign
        offsets.append(pos)
        pos += size * n
        align = max(align, falign)
    return offsets, (pos + align - 1) // align * align


def c_maps() -> dict[str, tuple[str, list[str]]]:
    """map name → (BPF_* macro, remaining arguments)."""
    out = {}
    for m in re.finditer(r"^\s*(BPF_\w+|XG_MAP)\s*\(([^;]*?)\)\s*;", MAPS_H, re.S | re.M):
        parts = [a.strip() for a in m[2].split(",")]
        macro = m[1]
        if macro in ("BPF_TABLE", "BPF_F_TABLE", "XG_MAP"):  # ("type", key, leaf, name, size[, flags])
            kind, key, leaf, name, *rest = parts
            macro = "BPF_" + kind.strip('"').upper()
            # arrays in the BPF_ARRAY shape (name, leaf, size): their key is a u32 index
            parts = [name, leaf, *rest] if macro.endswith("ARRAY") else [name, key, leaf, *rest]
        name, *args = parts
        assert name not in out, f"map {name} declared twice"
        out[name] = (macro, args)
    return out


def test_header_parses_to_something():
    assert len(defines("XG_REASON_")) > 5 and len(c_structs()) >= 5 and len(c_maps()) >= 5


def test_reasons_match():
    c = defines("XG_REASON_")
    assert int(c.pop("MAX")) == abi.REASON_MAX
    assert {k: int(v) for k, v in c.items()} == {r.name: r.value for r in abi.Reason}
    assert max(abi.Reason) < abi.REASON_MAX
    assert abi.REASON_MAX & (abi.REASON_MAX - 1) == 0, "stats.h masks the reason with XG_REASON_MAX - 1"


def test_kinds_match():
    c = defines("XG_KIND_")
    assert int(c.pop("MAX")) == abi.KIND_MAX
    assert {k: int(v) for k, v in c.items()} == {k.name: k.value for k in abi.Kind}


def test_scalar_constants_match():
    assert int(defines("XG_")["ABI_VERSION"]) == abi.ABI_VERSION
    m = re.fullmatch(r"\(\s*1ULL\s*<<\s*(\d+)\s*\)", defines("XG_CFG_")["ENABLED"])
    assert m and 1 << int(m[1]) == abi.CFG_ENABLED
    assert int(defines("XG_")["PROTECTED_MAX"]) == abi.PROTECTED_MAX
    assert int(defines("XG_")["LIST_MAX"]) == abi.LIST_MAX
    assert defines("XG_")["STATS_SLOTS"] == "(XG_KIND_MAX * XG_REASON_MAX)"
    assert abi.STATS_SLOTS == abi.KIND_MAX * abi.REASON_MAX


# abi.h defines that abi.py does not mirror by the same name, and why; and abi.py's own constants.
C_ONLY = {
    "REASON_*": "abi.Reason is read from these at import (reasons_from_header)",
    "KIND_*": "abi.Kind (test_kinds_match)",
    "LM_*": "the list-mask bits: abi.LISTS_MASK_BITS, by map",
    "VLAN_MAX": "the parser's bound; the reference model's VLAN_MAX",
    "EXPIRED_RETRY": "lists.h's retry bound; the reference model's EXPIRED_RETRY",
    "VDROP_SLOTS": "the length of xg_vdrop_pcpu (MAP_GEOMETRY)",
}
PY_ONLY = {
    "ALL_DROP_MASK",
    "BUDGET_UNIT_BYTES",
    "F_NO_PREALLOC",
    "F_NO_COMMON_LRU",
    "PORT_BY_OPERATOR",
    "PORT_BY_FORWARD",
}


def c_value(expr: str, defs: dict[str, str]) -> int:
    """An abi.h #define's value: a number, (1ULL << n), or arithmetic over other XG_ defines."""
    e = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", expr)
    e = re.sub(r"\bXG_(\w+)\b", lambda m: str(c_value(defs[m[1]], defs)), e)
    assert re.fullmatch(r"[\d\sxa-fA-F()+*<>|-]+", e), f"cannot evaluate '{expr}'"
    return eval(e, {"__builtins__": {}})  # digits and operators only (checked above)


def test_every_constant_matches_its_define():
    """The one check of abi.py's scalars: NAME there is XG_NAME here, with the same value; a define
    with no mirror (or a mirror with no define) fails unless it is named in C_ONLY / PY_ONLY."""
    defs = defines("XG_")
    numeric = {k: v for k, v in defs.items() if not v.startswith('"')}
    py = {
        k: v
        for k, v in vars(abi).items()
        if k.isupper() and isinstance(v, int) and not isinstance(v, (bool, enum.Enum))
    }
    c_only = {k for k in numeric if any(re.fullmatch(pat.replace("*", r"\w+"), k) for pat in C_ONLY)}
    assert {k: py[k] for k in py if k in numeric} == {k: c_value(numeric[k], defs) for k in py if k in numeric}
    assert sorted(set(numeric) - set(py) - c_only) == [], "abi.h defines with no mirror in abi.py"
    assert sorted(set(py) - set(numeric) - PY_ONLY) == [], "abi.py constants with no #define in abi.h"
    assert len(set(py) & set(numeric)) > 50


def test_a_reason_added_to_abi_h_appears_by_itself():
    """What the watermark, SYN+FIN and UDP budget steps do: one #define with its comment."""
    header = abi.ABI_HEADER.read_text().replace(
        "#ifndef XG_REASON_MAX",
        "#define XG_REASON_NEWSTEP    30  /* drop: a step that did not exist;\n"
        "                                   * its comment goes on */\n#ifndef XG_REASON_MAX",
    )
    reason = abi.reasons_from_header(header)
    assert reason(30).label == "newstep" and reason(30).is_drop
    assert reason(30).doc == "drop: a step that did not exist; its comment goes on"
    assert [(r.name, int(r), r.is_drop) for r in reason if r != 30] == [(r.name, int(r), r.is_drop) for r in abi.Reason]
    assert "newstep" not in abi.DROP_REASONS and abi.DROP_REASONS == tuple(r.label for r in abi.Reason if r.is_drop)


def test_pass_reasons_are_the_ones_the_header_says():
    assert [r.label for r in abi.Reason if not r.is_drop] == ["bypass", "clean", "allowlist"]
    assert all(r.doc for r in abi.Reason), "every reason has its comment in abi.h"


def test_every_c_struct_has_a_ctypes_mirror():
    assert set(c_structs()) == set(abi.C_STRUCTS)


@pytest.mark.parametrize("struct_name", sorted(c_structs()))
def test_struct_layout_matches(struct_name):
    fields = c_structs()[struct_name]
    mirror = abi.C_STRUCTS[struct_name]
    assert [f[0] for f in fields] == [f[0] for f in mirror._fields_]
    offsets, size = c_layout(fields)
    assert [getattr(mirror, f[0]).offset for f in fields] == offsets
    assert [getattr(mirror, f[0]).size for f in fields] == [_size_align(t)[0] * n for _, t, n in fields]
    assert ctypes.sizeof(mirror) == size


def test_map_names_match():
    assert set(c_maps()) == {m.value for m in abi.MapName}
    assert set(abi.MAP_LAYOUTS) == set(abi.MapName)


@pytest.mark.parametrize("name", sorted(m.value for m in abi.MapName))
def test_map_name_fits_the_kernel(name):
    assert len(name) <= 15, "BPF_OBJ_NAME_LEN is 16 including the NUL"


def _c_size(ctype: str) -> int:
    if ctype.startswith("struct "):
        return c_layout(c_structs()[ctype.removeprefix("struct ")])[1]
    return C_TYPE_SIZES[ctype]


@pytest.mark.parametrize("name", sorted(m.value for m in abi.MapName))
def test_map_layout_matches(name):
    macro, args = c_maps()[name]
    key_t, value_t, percpu = abi.MAP_LAYOUTS[abi.MapName(name)]
    if macro in ("BPF_RINGBUF_OUTPUT", "BPF_PERF_OUTPUT"):  # (name[, pages]): no key, no value
        c_key = c_value = None
        assert ctypes.sizeof(key_t) == ctypes.sizeof(value_t) == 0
        return
    if macro in ("BPF_ARRAY", "BPF_PERCPU_ARRAY"):  # (name, leaf, size): the key is a u32 index
        c_key, c_value = "__u32", args[0]
    else:  # BPF_HASH / BPF_LPM_TRIE (name, key, leaf, size)
        c_key, c_value = args[0], args[1]
    assert ctypes.sizeof(key_t) == _c_size(c_key)
    assert ctypes.sizeof(value_t) == _c_size(c_value)
    if c_value.startswith("struct "):
        assert abi.C_STRUCTS[c_value.removeprefix("struct ")] is value_t
    assert percpu == ("PERCPU" in macro)


def test_core_imports_neither_click_nor_rich():
    """Every module of xdpguard.core, imported in a fresh interpreter, leaves click and rich out."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import xdpguard.core as core\n"
        "mods = sorted(m.name for m in pkgutil.walk_packages(core.__path__, 'xdpguard.core.'))\n"
        "for m in mods: importlib.import_module(m)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('click', 'rich'))\n"
        "print(json.dumps({'modules': mods, 'bad': bad}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert {
        "xdpguard.core.kernel.abi",
        "xdpguard.core.kernel.dataplane",
        "xdpguard.core.kernel.maps",
        "xdpguard.core.prefixes",
        "xdpguard.core.protection",
        "xdpguard.core.state",
        "xdpguard.core.testrun",
    } <= set(result["modules"])
    assert result["bad"] == []
