"""The desired-state store of one network namespace: the one file that says what this box does.

    $XDPGUARD_STATE_DIR/net-<ino>/desired.toml   the desired state, as `xdpguard export` writes it,
                                                 naming its lists' files:
    $XDPGUARD_STATE_DIR/net-<ino>/desired.lists/<iface>.block|allow   one prefix a line
    $XDPGUARD_STATE_DIR/net-<ino>/desired.meta
        {"source": the config file last applied, "source_sha256": its hash, "generation": N}

`apply` writes it (fsynced) before it touches the kernel; the imperative verbs record what they
changed into it; `run` restores from it after a reboot and repairs drift against it. It lives
under /var/lib (it survives a reboot); pins and locks live under /run (they do not).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from . import state
from .model.desired import Desired, InterfaceSpec
from .desired.dump import to_toml
from .desired.load import ConfigError, loads
from .errors import UserError

STORE_LOCK = "@store"  # a lock name no interface can have


def _dir() -> Path:
    return state.state_root() / state.netns_key()


def desired_path() -> Path:
    return _dir() / "desired.toml"


def meta_path() -> Path:
    return _dir() / "desired.meta"


def lists_dir() -> Path:
    return _dir() / "desired.lists"


@dataclass(frozen=True)
class Meta:
    source: str | None = None
    source_sha256: str | None = None
    generation: int = 0


def file_sha256(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror}") from None


@contextmanager
def locked():
    """The namespace-wide store lock (held only around a read-modify-write of the store)."""
    with state.iface_lock(state.Iface(STORE_LOCK, 0, state.netns_key())):
        yield


def load() -> Desired:
    """The stored desired state (empty when nothing was ever stored). A corrupt store is an
    error naming its path."""
    p = desired_path()
    try:
        text = p.read_text()
    except FileNotFoundError:
        return Desired()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"desired-state store {p} is unreadable: {exc}") from None
    try:
        return loads(text, str(p))[0]
    except ConfigError as exc:
        raise UserError(f"desired-state store {p} is corrupt: {exc.problems[0]}") from None


def load_meta() -> Meta:
    try:
        d = json.loads(meta_path().read_text())
        return Meta(d.get("source"), d.get("source_sha256"), int(d.get("generation", 0)))
    except FileNotFoundError:
        return Meta()
    except (OSError, ValueError, TypeError, AttributeError):
        return Meta()


def save(
    desired: Desired,
    source: str | None = None,
    source_sha256: str | None = None,
    keep_source: bool = True,
    previous: Desired | None = None,
) -> Meta:
    """Write the desired state durably: the lists first (one prefix file per interface and list,
    rewritten only when it changed from `previous`), then desired.toml naming them, then the
    meta. `keep_source` keeps the recorded config file (an imperative change amends what was
    applied; it does not replace it)."""
    old = load_meta()
    if desired == Desired():  # nothing left to say: only the generation stays (it never goes back)
        for p in (desired_path(), *(lists_dir().glob("*") if lists_dir().is_dir() else [])):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        try:
            lists_dir().rmdir()
        except OSError:
            pass
        meta = Meta(None, None, old.generation + 1)
        state.private_dir(state.state_root())
        state.netns_state_dir()
        state.write_durably(meta_path(), (json.dumps(meta.__dict__, sort_keys=True) + "\n").encode())
        return meta
    meta = Meta(
        old.source if keep_source and source is None else source,
        old.source_sha256 if keep_source and source_sha256 is None else source_sha256,
        old.generation + 1,
    )
    files = {
        (spec.name, which): str(lists_dir() / f"{spec.name}.{which}")
        for spec in desired.interfaces
        for which in ("block", "allow")
    }
    text = to_toml(desired, files)
    check_loads_back(desired, text)  # before anything is written: the store never holds what load() refuses
    state.private_dir(state.state_root())
    state.netns_state_dir()
    state.private_dir(lists_dir())
    for spec in desired.interfaces:
        for which, prefixes in (("block", spec.block), ("allow", spec.allow)):
            path = Path(files[(spec.name, which)])
            before = previous.interface(spec.name) if previous is not None else None
            if before is not None and getattr(before, which) == prefixes and path.exists():
                continue  # unchanged: a verb that did not touch lists does not rewrite a million lines
            state.write_durably(path, "".join(f"{p}\n" for p in prefixes).encode())
    for stale in lists_dir().glob("*"):
        if str(stale) not in files.values() and not stale.name.endswith(".tmp"):
            stale.unlink()
    state.write_durably(desired_path(), text.encode())
    state.write_durably(meta_path(), (json.dumps(meta.__dict__, sort_keys=True) + "\n").encode())
    return meta


def check_loads_back(desired: Desired, text: str) -> None:
    """The text about to be stored loads back (its list files named, not read) to `desired`;
    else a UserError, and nothing is stored: a value the loader refuses would make every later
    verb fail on a corrupt store."""
    try:
        back, _ = loads(text, str(desired_path()), read_files=False)
    except ConfigError as exc:
        raise UserError(f"refusing to store the desired state: {exc.problems[0]}") from None
    bare = replace(
        desired, interfaces=tuple(replace(s, block=frozenset(), allow=frozenset()) for s in desired.interfaces)
    )
    if back != bare:
        raise UserError(
            "refusing to store the desired state: it does not load back as it is "
            "(a bug: please report it with `xdpguard export --json`)"
        )


def update_interface(name: str, fn) -> Desired:
    """Read-modify-write one interface's spec: fn(spec or None) → spec or None (remove)."""
    with locked():
        d = load()
        new = fn(d.interface(name))
        d2 = d.without_interface(name) if new is None else d.with_interface(new)
        if d2 != d:
            save(d2, previous=d)
        return d2


def stored_interface(name: str) -> InterfaceSpec | None:
    return load().interface(name)
