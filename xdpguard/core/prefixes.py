"""Prefix files for the allow/block lists: bulk reading, cached per file while it stays the same.

The prefix type and its parsers are value types in model/prefixes.py; their names are re-exported
here for the old import path (a shim for one stop, issue 26).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .model.prefixes import Parsed, Prefix, _parse, parse_address, parse_prefix, whole_family

__all__ = [
    "Parsed",
    "Prefix",
    "PrefixFile",
    "parse_address",
    "parse_prefix",
    "read_prefix_file",
    "read_prefix_set",
    "whole_family",
]


@dataclass
class PrefixFile:
    prefixes: list[Prefix]
    normalised: int
    lines: int


def read_prefix_file(path: str | Path) -> PrefixFile:
    """One CIDR per line, '#' comments, blank lines; v4 and v6 mixed. All or nothing: the
    first bad line raises UserError with its line number."""
    try:
        fh = open(Path(path), "rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    if not (stat.S_ISREG(os.fstat(fh.fileno()).st_mode) or stat.S_ISFIFO(os.fstat(fh.fileno()).st_mode)):
        fh.close()  # /dev/zero would be read forever
        raise UserError(f"cannot read {path}: not a regular file")
    out: list[Prefix] = []
    normalised = 0
    lineno = 0
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{lineno}: not UTF-8 text; nothing was loaded") from None
            hash_at = line.find("#")
            if hash_at >= 0:
                line = line[:hash_at]
            line = line.strip()
            if not line:
                continue
            try:
                prefix, cleared = _parse(line, line)
            except UserError as exc:
                raise UserError(f"{path}:{lineno}: {exc.message}; nothing was loaded") from None
            normalised += cleared
            out.append(prefix)
    return PrefixFile(out, normalised, lineno)


_FILE_CACHE: dict[tuple, tuple[Prefix, ...]] = {}
_FILE_CACHE_MAX = 8


def read_prefix_set(path: str | Path) -> tuple[Prefix, ...]:
    """The prefixes of a regular file, parsed once per process while the file stays the same
    (device, inode, size and mtime): one command loads the desired-state store several times, and
    a million-line list file took ~4.5 s to parse each time (`limit set` next to a 1M list: 18.6 s).
    The store writes its files by rename, so a rewrite is a new inode."""
    try:
        st = os.stat(Path(path))
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        return tuple(read_prefix_file(path).prefixes)  # not cached; the reader names any problem
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _FILE_CACHE.get(key)
    if hit is None:
        hit = tuple(read_prefix_file(path).prefixes)
        if len(_FILE_CACHE) >= _FILE_CACHE_MAX:
            _FILE_CACHE.pop(next(iter(_FILE_CACHE)))
        _FILE_CACHE[key] = hit
    return hit
