"""Where xdpguard keeps things, keyed by network namespace and interface; locking.

- pins:  $XDPGUARD_BPFFS (default /run/xdpguard/bpffs) / net-<ino> / <ifname> / <map name>
  A bpffs outside /sys: `ip netns exec` remounts /sys, so a bpffs there would be a fresh
  instance that dies with the command. Pins are a convenience; the kernel is the truth
  (program on the interface → its maps).
- state: $XDPGUARD_STATE_DIR (default /var/lib/xdpguard) / net-<ino> / <ifname>.json, root-only.
- locks: $XDPGUARD_RUN_DIR (default /run/xdpguard) / locks / net-<ino>.<ifname>.lock
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .model import vocab
from .errors import UserError
from .model.thresholds import EventConfig


def bpffs_root() -> Path:
    return Path(os.environ.get("XDPGUARD_BPFFS", "/run/xdpguard/bpffs"))


def state_root() -> Path:
    return Path(os.environ.get("XDPGUARD_STATE_DIR", "/var/lib/xdpguard"))


def run_root() -> Path:
    return Path(os.environ.get("XDPGUARD_RUN_DIR", "/run/xdpguard"))


SO_NETNS_COOKIE = 71  # socket option (Linux 5.14): a namespace id never reused while the system runs
OWNER_FILE = ".owner"
_claimed: set[str] = set()


def netns_key() -> str:
    """Identifies the network namespace this process is in (inode of /proc/self/ns/net). The
    kernel reuses the inode of a namespace that died, so the first call per process also checks
    that what is kept under that key belongs to this namespace (claim_netns)."""
    key = f"net-{os.stat('/proc/self/ns/net').st_ino}"
    if key not in _claimed:
        _claimed.add(key)
        claim_netns(key)
    return key


def _netns_owner() -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        cookie = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return {"cookie": cookie, "boot_id": boot}


def claim_netns(key: str) -> None:
    """State, pins and locks under `key` left by another namespace of this boot (same inode, other
    cookie) are removed, not adopted. After a reboot the cookie differs too, but then the state is
    the root namespace's own (it survives reboots) and is kept."""
    d = state_root() / key
    try:
        owner = json.loads((d / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return
    me = _netns_owner()
    if owner.get("boot_id") == me["boot_id"] and owner.get("cookie") != me["cookie"]:
        forget_netns(key)


def forget_netns(key: str) -> list[Path]:
    """Remove everything xdpguard keeps for the namespace `key` (net-<ino>): state, desired state,
    pins, locks. For a namespace that is going away (the lab deletes its namespaces with it).
    Returns the directories that existed."""
    gone = [
        d
        for d in (state_root() / key, bpffs_root() / key, run_root() / "samples" / key, run_root() / "l7" / key)
        if d.exists()
    ]
    for d in gone:  # (samples/: the fan-out socket and serve.lock of a daemon that was killed)
        shutil.rmtree(d, ignore_errors=True)
    drop_log_lines(events_log_path(), key)
    for lock in (run_root() / "locks").glob(f"{key}.*"):
        try:
            lock.unlink()
        except OSError:
            pass
    return gone


def events_log_path() -> Path:
    """The attack and mitigation event log, one JSON object a line, shared by every namespace
    (each line names its own: "netns")."""
    return state_root() / "events.jsonl"


def _open_log_locked(path: Path, mode: int) -> int:
    """An fd of the log's current file under flock(mode). A compaction replaces the file: an fd
    that got its lock on the replaced inode opens again."""
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, mode)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def append_log_line(path: Path, rec: dict) -> None:
    """One record appended to a shared log: O_APPEND under a shared lock, so appenders in many
    processes never wait for each other, only for a compaction (drop_log_lines)."""
    private_dir(path.parent)
    line = json.dumps(rec, sort_keys=True) + "\n"
    fd = _open_log_locked(path, fcntl.LOCK_SH)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def drop_log_lines(path: Path, key: str) -> int:
    """Remove the lines of namespace `key` from a shared log (the namespace is gone with its
    state), atomically and under the exclusive lock; a torn last line (a writer that died in its
    write) goes with them. Returns how many lines of `key` went."""
    if not path.exists():
        return 0
    fd = _open_log_locked(path, fcntl.LOCK_EX)
    try:
        keep: list[bytes] = []
        dropped = 0
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn: appenders write whole lines, so only the last can be
                try:
                    mine = json.loads(line).get("netns") == key
                except (ValueError, AttributeError):
                    mine = False  # a whole line that is not a record of ours stays
                if mine:
                    dropped += 1
                else:
                    keep.append(line)
        if dropped:
            write_durably(path, b"".join(keep))
        return dropped
    finally:
        os.close(fd)


def netns_state_dir() -> Path:
    """This namespace's state directory, created root-only and marked as this namespace's."""
    d = private_dir(state_root() / netns_key())
    owner = d / OWNER_FILE
    if not owner.exists():
        write_durably(owner, (json.dumps(_netns_owner()) + "\n").encode())
    return d


@dataclass(frozen=True)
class Iface:
    name: str
    index: int
    nskey: str

    @property
    def pin_dir(self) -> Path:
        return bpffs_root() / self.nskey / self.name

    @property
    def state_file(self) -> Path:
        return state_root() / self.nskey / f"{self.name}.json"

    @property
    def lock_file(self) -> Path:
        return run_root() / "locks" / f"{self.nskey}.{self.name}.lock"


def resolve_iface(name: str) -> Iface:
    if not name or len(name) > 15 or "/" in name:
        raise UserError(f"invalid interface name '{name}'")
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        raise UserError(f"unknown interface '{name}' in this network namespace") from None
    return Iface(name, index, netns_key())


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("xdpguard needs root (CAP_BPF, CAP_NET_ADMIN); run it with sudo")


def _fstype(path: Path) -> str:
    best, fstype = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                mnt = parts[1].replace("\\040", " ")
                if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                    best, fstype = mnt, parts[2]
    return fstype


def ensure_bpffs() -> Path:
    """Make sure a bpffs is mounted at bpffs_root(); mount one if not."""
    root = bpffs_root()
    if _fstype(root) == "bpf":
        if root.stat().st_mode & 0o077:  # e.g. mounted 1777 by an older setup: make it root-only
            os.chmod(root, 0o700)
        return root
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    rc = subprocess.run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", str(root)], capture_output=True, text=True)
    if rc.returncode != 0 or _fstype(root) != "bpf":
        raise UserError(f"cannot mount bpffs at {root}: {rc.stderr.strip() or 'unknown error'}")
    return root


def remove_pins(iface: Iface) -> None:
    d = iface.pin_dir
    if d.exists():
        shutil.rmtree(d, ignore_errors=True)
        for parent in (d.parent,):
            try:
                parent.rmdir()
            except OSError:
                pass


# ---- state file ----
#
# The interface record is JSON that root writes and every verb reads. A record in another shape
# (a crash of an older version, a hand edit, a tool of someone else's) must be one clear error,
# not a traceback deep in whichever verb reads it first: it is checked on read against the shape
# its writers give it (STATE_SHAPE; a key not listed there is kept and not checked). A record of
# the wrong shape is an ERROR, not "absent": it stands for a program that may still be attached,
# rules in the NAT table and sysctls to restore, which "absent" would orphan silently. The
# message says how to recover: remove the file, then detach (the kernel says what is attached).


class Arr:
    """A JSON array of `elem`; with n, of exactly n elements."""

    def __init__(self, elem, n: int | None = None):
        self.elem, self.n = elem, n


class Rec:
    """A JSON object with these keys typed (when present); `required` must be present."""

    def __init__(self, required: tuple[str, ...] = (), **keys):
        self.required, self.keys = required, keys


class Map:
    """A JSON object with any (text) keys and values of `value`."""

    def __init__(self, value):
        self.value = value


NUM = (int, float)
OBJ = dict
_RANGE = Arr(int, 2)
_THRESHOLDS = Rec(pps=NUM, bps=NUM, drop_pps=NUM, drop_bps=NUM, reasons=Map(Arr(NUM, 2)))
_FILTER = Rec(
    ("sport", "dport", "length", "ttl", "tcp_flags"),
    proto=(str, type(None)),
    sport=_RANGE,
    dport=_RANGE,
    length=_RANGE,
    ttl=_RANGE,
    tcp_flags=_RANGE,
    payload=str,
    mask=str,
    base=str,
    offset=int,
)
_MITIGATION = Rec(
    ("id", "protected", "proto", "port", "filter"),
    id=str,
    protected=str,
    proto=str,
    port=int,
    filter=_FILTER,
    fingerprint=str,
    state=str,
)

T = TypeVar("T")


def _same(v):
    return v


@dataclass(frozen=True)
class Field(Generic[T]):
    """One key of the interface record: the only place it is spelled, its JSON shape (checked on
    read), and its typed form: `load` turns the stored JSON (None when absent) into T, `dump`
    turns T back into JSON. Read and written with get/put (on a record) or write_field (one
    field of the file, under the interface lock)."""

    key: str
    shape: object
    load: Callable[[Any], T] = _same
    dump: Callable[[T], Any] = _same


def get(st: dict | None, f: Field[T]) -> T:
    return f.load((st or {}).get(f.key))


def put(st: dict, f: Field[T], value: T) -> None:
    st[f.key] = f.dump(value)


def write_field(iface: Iface, f: Field[T], value: T) -> bool:
    """Set one field of the interface's record on disk (the caller holds the interface lock):
    read, put, written durably only when the field's value changes. True when it was written."""
    st = read_state(iface) or {}
    if get(st, f) == value:
        return False
    put(st, f, value)
    write_state(iface, st)
    return True


def _mitigation_records(v) -> dict:
    d = v or {}
    return {
        "active": list(d.get("active", [])),
        "lifted": list(d.get("lifted", [])),
        "suppressed": dict(d.get("suppressed", {})),
    }


# The record's typed fields and their writers. The writer's modules (forward.py, reconcile.py,
# protection.py, l7/engine.py) still spell forward/forward_health/forward_sysctl_saved/connlimits/
# http themselves (tests/unit/test_state_records.py holds them equal to these) until they use them.
ATTACK = Field(
    "attack",
    Rec(default=_THRESHOLDS, addresses=Map(_THRESHOLDS), hold_s=NUM, hook=(str, type(None))),
    EventConfig.from_json,
    EventConfig.to_json,
)  # events: attack thresholds, hold, hook
LEVELS = Field("levels", Map(str), lambda v: dict(v or {}), dict)  # protected address → level (levelset)
MITIGATIONS = Field(
    "mitigations", Rec(active=Arr(_MITIGATION), lifted=Arr(OBJ), suppressed=Map(NUM)), _mitigation_records, _same
)  # mitigation: active/lifted records, suppressed ids
FORWARD = Field("forward", Arr(Rec(("rule",), rule=OBJ, udp_probe=(str, type(None)))))  # forward: the rules
FORWARD_HEALTH = Field("forward_health", Map(Map(str)), lambda v: dict(v or {}), dict)  # rule → backend → health
FORWARD_SYSCTL_SAVED = Field("forward_sysctl_saved", Map(str))  # forward: sysctls to restore
CONNLIMITS = Field(
    "connlimits", Map(OBJ), lambda v: dict(sorted((v or {}).items())), dict
)  # protected address → ConnLimits fields (connlimit)
HTTP = Field("http", Arr(Rec(("address", "name", "port"), address=str, name=str, port=int)))  # l7/engine
GEO = Field(
    "geo",
    Rec(database=str, stamp=str, countries=Arr(str), cc=Map(Rec(countries=Arr(str), only=bool))),
    lambda v: dict(v or {}),
    dict,
)  # what the geo tries hold, and the rules in mode cc (geo.py)
WATERMARK = Field(
    "watermark", Map(Arr(Rec(("port", "key_file"), port=int, key_file=str))), lambda v: dict(v or {}), dict
)  # protected address → its watermarked services: key file names, never keys (watermark.py)
DEFINES = Field(
    "defines", Map(int), lambda v: dict(v or {}), dict
)  # the -D features the program was compiled with (attach --fast-forward), kept by upgrades
FASTFWD_VIA = Field("fastfwd_via", (str, type(None)))  # legacy (s33): the fast path is the spec's now; read by nobody
FIELDS = (
    ATTACK,
    LEVELS,
    MITIGATIONS,
    FORWARD,
    FORWARD_HEALTH,
    FORWARD_SYSCTL_SAVED,
    CONNLIMITS,
    HTTP,
    GEO,
    WATERMARK,
    FASTFWD_VIA,
    DEFINES,
)

#: the interface record's keys and their shapes (the attach keys: protection.attach; the rest: FIELDS)
STATE_SHAPE = Rec(
    iface=str,
    ifindex=int,
    netns=str,
    prog_id=int,
    mode=str,
    requested_mode=str,
    program_sha256=str,
    protected=Arr(str),
    monitor=bool,
    attached_at=NUM,
    upgraded_at=NUM,
    **{f.key: f.shape for f in FIELDS},
)


def _json_type(v) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def shape_problem(v, shape, path: str = "") -> str | None:
    """Where and how `v` (parsed JSON) is not of `shape`, or None."""
    where = path or "the record"
    if isinstance(shape, Rec):
        if not isinstance(v, dict):
            return f"{where} must be an object, got {_json_type(v)}"
        for k in shape.required:
            if k not in v:
                return f"{where} has no {k!r}"
        for k, sub in shape.keys.items():
            if k in v:
                bad = shape_problem(v[k], sub, f"{path}.{k}" if path else k)
                if bad:
                    return bad
        return None
    if isinstance(shape, Map):
        if not isinstance(v, dict):
            return f"{where} must be an object, got {_json_type(v)}"
        for k, x in v.items():
            bad = shape_problem(x, shape.value, f"{path}[{k!r}]")
            if bad:
                return bad
        return None
    if isinstance(shape, Arr):
        if not isinstance(v, list):
            return f"{where} must be an array, got {_json_type(v)}"
        if shape.n is not None and len(v) != shape.n:
            return f"{where} must have {shape.n} elements, got {len(v)}"
        for i, x in enumerate(v):
            bad = shape_problem(x, shape.elem, f"{path}[{i}]")
            if bad:
                return bad
        return None
    types = shape if isinstance(shape, tuple) else (shape,)
    ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
    if ok and isinstance(v, float) and not math.isfinite(v):
        ok = False
    if ok:
        return None
    want = " or ".join(dict.fromkeys("null" if t is type(None) else _json_type(t()) for t in types))
    return f"{where} must be {want}, got {_json_type(v)} {v!r:.40}"


def read_state(iface: Iface) -> dict | None:
    """The interface's record, checked against STATE_SHAPE; None when there is none. A record
    that is not JSON or not of that shape is a UserError naming the file and the field."""
    p = iface.state_file
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"state file {p} is unreadable: {exc}") from None
    bad = shape_problem(data, STATE_SHAPE)
    if bad:
        raise UserError(
            f"state file {p} is corrupt: {bad}; remove it, then run 'xdpguard detach {iface.name}' and attach again"
        )
    return data


def private_dir(d: Path) -> Path:
    """Create d (and parents) root-only; tighten it if it exists with wider permissions."""
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    if d.stat().st_mode & 0o077:
        os.chmod(d, 0o700)
    return d


def write_durably(path: Path, data: bytes) -> None:
    """Write data to path atomically and durably: a new root-only temporary file in the same
    directory (mkstemp: a fresh name, O_EXCL, so nothing planted there is followed or truncated),
    fsynced, renamed over path, and the directory fsynced, so a crash leaves either the old or
    the new file. Only a regular file, a symlink (itself: the rename replaces the link, it never
    writes through it) or nothing is replaced: a device (/dev/full), a FIFO, a socket or a
    directory at path is a UserError and nothing is written."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    else:
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise UserError(f"cannot write {path}: it is {kind}; only a regular file is replaced")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_state(iface: Iface, state: dict) -> None:
    private_dir(state_root())
    netns_state_dir()
    write_durably(iface.state_file, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())


def remove_state(iface: Iface) -> None:
    try:
        iface.state_file.unlink()
    except FileNotFoundError:
        pass
    drop_netns_dir_if_empty()


def drop_netns_dir_if_empty() -> None:
    """Leave nothing behind: the namespace's directory goes when only its owner mark is left."""
    d = state_root() / netns_key()
    try:
        if {p.name for p in d.iterdir()} <= {OWNER_FILE}:
            (d / OWNER_FILE).unlink(missing_ok=True)
            d.rmdir()
    except OSError:
        pass


def protected_ifaces() -> list[str]:
    """Interfaces of this network namespace that have a state file."""
    d = state_root() / netns_key()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json"))


# ---- lock ----


def flock_wait(path: Path, timeout_s: float, poll_s: float = 0.05) -> int | None:
    """Open (create) path and take an exclusive flock on it, waiting up to timeout_s. Returns
    the fd (the caller closes it to release), or None when the wait ran out (fd closed)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(poll_s)


LOCK_TIMEOUT_S = 30.0


def lock_timeout_s() -> float:
    """$XDPGUARD_LOCK_TIMEOUT (seconds, 0..86400), else 30 s; a bad value is a one-line error."""
    text = os.environ.get("XDPGUARD_LOCK_TIMEOUT")
    if text is None or not text.strip():
        return LOCK_TIMEOUT_S
    return vocab.parse_seconds(text, "XDPGUARD_LOCK_TIMEOUT", 0, 86400)


@contextmanager
def iface_lock(iface: Iface, timeout_s: float | None = None):
    """Serialize mutating commands on one interface. Waits up to timeout_s (default
    $XDPGUARD_LOCK_TIMEOUT or 30 s), then fails with a one-line error."""
    if timeout_s is None:
        timeout_s = lock_timeout_s()
    fd = flock_wait(iface.lock_file, timeout_s)
    if fd is None:
        try:
            holder = iface.lock_file.read_text().strip() or "?"
        except OSError:
            holder = "?"
        raise UserError(
            f"{iface.name}: another xdpguard command (pid {holder}) holds the lock; gave up after {timeout_s:g} s"
        )
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
