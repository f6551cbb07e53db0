"""The HAProxy process owner: one master-worker HAProxy per run directory (and network
namespace), started, reloaded, repaired and stopped by xdpguard only.

    Haproxy(run_dir, netns).apply(rendered, tls)   check → install → start or reload
    .ensure()                                       restart it when it died (drift)
    .stop()

Rules it keeps:
- a configuration is checked with `haproxy -c` in a staging directory first; one HAProxy refuses
  is never installed, never loaded (HaproxyConfigError carries HAProxy's own words), and the
  running one keeps serving;
- a reload goes through the master CLI (`reload`): the master re-executes with the new file, the
  new worker takes the listening sockets over from the old one (`expose-fd listeners`), and the
  old worker finishes its connections (at most hard-stop-after): no connection is refused;
- the master's pid file and the installed configuration's hash live in the run directory, so
  another process (the daemon after a restart) finds and owns the same HAProxy;
- the stick tables survive a reload: they are in a `peers` section with the local peer
  (haproxy_config.py), so the old worker pushes them to the new one. HAProxy 2.6 does that only
  from a worker that has finished its own resync, and the first worker after a start counts as
  finished only 5 s after it (the timeout for a remote resync, waited even without a remote
  peer; fixed upstream in 4b1a7ea66, not in Debian's 2.6.12), a worker that learned nothing 10
  s after it: a reload waits for that (at most RESYNC_WAIT_S), then for the new worker to have
  learned (at most LEARN_WAIT_S; reloading anyway after either, as before: tables emptied) —
  unless the old worker had no stick tables at all (no peers section: nothing to learn).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import runtime
from .haproxy_config import ADMIN_SOCKET, SECRET_BYTES, Rendered, tls_bundle
from .spec import HttpService

CONFIG = "haproxy.cfg"
PIDFILE = "haproxy.pid"
MASTER_SOCKET = "master.sock"
LOADED = "loaded.sha256"  # hash of the configuration the running HAProxy was (re)loaded with
STAGING = "staging"
CHECK_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
RESYNC_WAIT_S = 12.0  # the running worker's resync (HAProxy: 5 s local + 5 s remote at most)
LEARN_WAIT_S = 3.0  # the new worker learning the tables from the old one (a fraction of a second)


class HaproxyError(RuntimeError):
    """HAProxy could not be started, reloaded or stopped."""


class HaproxyConfigError(UserError):
    """`haproxy -c` refused a configuration; nothing was installed or loaded."""


def haproxy_exe() -> str:
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if exe is None:
        raise UserError("haproxy is not installed; run scripts/setup.sh (Debian package haproxy)")
    return exe


def load_secret(path: Path) -> bytes:
    """The challenge secret kept in `path` (0600), made on first use. Kept across restarts, so a
    verified browser stays verified when HAProxy is restarted or reloaded."""
    try:
        data = path.read_bytes()
        if len(data) >= SECRET_BYTES:
            return data[:SECRET_BYTES]
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = secrets.token_bytes(SECRET_BYTES)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return data


def tls_files(services: list[HttpService] | tuple[HttpService, ...]) -> dict[str, str]:
    """The certificate + key bundles the configuration of `services` reads (name → PEM)."""
    out = {}
    for svc in services:
        if svc.tls is not None:
            try:
                out[tls_bundle(svc)] = svc.tls.bundle()
            except OSError as exc:
                raise UserError(f"cannot read the TLS files of {svc.name}: {exc.strerror or exc}") from None
    return out


def _digest(rendered: Rendered, tls: dict[str, str]) -> str:
    h = hashlib.sha256(rendered.text.encode())
    for name, text in sorted({**rendered.files, **tls}.items()):
        h.update(b"\0" + name.encode() + b"\0" + text.encode())
    return h.hexdigest()


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][:1] not in ("Z", "X")
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class ProcInfo:
    master: int
    workers: tuple[int, ...]  # current
    old_workers: tuple[int, ...]  # finishing their connections after a reload
    reloads: int


class Haproxy:
    def __init__(self, run_dir: str | os.PathLike, netns: str | None = None):
        self.run_dir = Path(run_dir)
        self.netns = netns
        self.config = self.run_dir / CONFIG
        self.pidfile = self.run_dir / PIDFILE
        self.master_socket = self.run_dir / MASTER_SOCKET
        self.admin_socket = self.run_dir / ADMIN_SOCKET

    # --- checking and installing ---

    def _files(self, rendered: Rendered, tls: dict[str, str]) -> dict[str, str]:
        return {CONFIG: rendered.text, **rendered.files, **tls}

    def check(self, rendered: Rendered, tls: dict[str, str] | None = None) -> None:
        """`haproxy -c` on the configuration in a staging directory; HaproxyConfigError if refused."""
        staging = self.run_dir / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        for name, text in self._files(rendered, tls or {}).items():
            _write(staging / name, text)
        try:
            p = subprocess.run(
                [haproxy_exe(), "-c", "-q", "-f", str(staging / CONFIG)],
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if p.returncode != 0:
            alerts = [ln.split(":", 3)[-1].strip() for ln in (p.stdout + p.stderr).splitlines() if "ALERT" in ln]
            raise HaproxyConfigError(
                "HAProxy refused the generated configuration: "
                + ("; ".join(alerts) or (p.stdout + p.stderr).strip() or f"exit {p.returncode}")
            )

    def _install(self, rendered: Rendered, tls: dict[str, str]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.run_dir, 0o700)
        for name, text in self._files(rendered, tls).items():
            if name != CONFIG:
                _write(self.run_dir / name, text)
        _write(self.config, rendered.text)  # last: the file HAProxy (re)reads

    # --- the process ---

    def _argv(self, *args: str) -> list[str]:
        pre = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*pre, haproxy_exe(), *args]

    def master_pid(self) -> int | None:
        """The master's pid if it runs with our configuration, else None."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        if not _alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if (
            not cmdline
            or not os.path.basename(cmdline[0].decode(errors="replace")).startswith("haproxy")
            or str(self.config).encode() not in cmdline
        ):
            return None  # a reused pid
        return pid

    def master_command(self, cmd: str, timeout: float = runtime.TIMEOUT_S) -> str:
        return runtime.command(str(self.master_socket), cmd, timeout)

    def proc_info(self) -> ProcInfo | None:
        """`show proc` on the master CLI; None when there is no master."""
        master = self.master_pid()
        if master is None:
            return None
        try:
            text = self.master_command("show proc")
        except runtime.RuntimeApiError:
            return ProcInfo(master, (), (), 0)
        workers: list[int] = []
        old: list[int] = []
        reloads, section = 0, "master"
        for ln in text.splitlines():
            if ln.startswith("#"):
                low = ln.lower()
                section = "old" if "old" in low else "workers" if "worker" in low else section
                continue
            parts = ln.split()
            if len(parts) < 3 or not parts[0].isdigit():
                continue
            if parts[1] == "master":
                reloads = int(parts[2]) if parts[2].isdigit() else 0
            elif parts[1] == "worker":
                (old if section == "old" else workers).append(int(parts[0]))
        return ProcInfo(master, tuple(workers), tuple(old), reloads)

    def running(self) -> bool:
        """A master with at least one current worker that answers on the admin socket."""
        info = self.proc_info()
        if info is None or not info.workers:
            return False
        try:
            runtime.command(str(self.admin_socket), "show info", timeout=2.0)
        except runtime.RuntimeApiError:
            return False
        return True

    def _wait(self, ready, what: str, timeout: float = READY_TIMEOUT_S) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ready():
                return
            time.sleep(0.05)
        raise HaproxyError(f"HAProxy in {self.run_dir}: {what} not seen after {timeout:g} s")

    def start(self) -> int:
        """Start the installed configuration (master-worker, daemon); returns the master's pid."""
        if self.master_pid() is not None:
            raise HaproxyError(f"HAProxy already runs for {self.run_dir}")
        for stale in (self.master_socket, self.admin_socket, self.pidfile):
            stale.unlink(missing_ok=True)
        p = subprocess.run(
            self._argv(
                "-W", "-D", "-S", f"{self.master_socket},mode,600", "-p", str(self.pidfile), "-f", str(self.config)
            ),
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        if p.returncode != 0:
            raise HaproxyError(f"HAProxy did not start: {(p.stderr or p.stdout).strip() or p.returncode}")
        self._wait(self.running, "a running worker")
        pid = self.master_pid()
        assert pid is not None
        return pid

    def peers(self) -> dict[str, bool] | None:
        """`show peers` of the current worker: {peers section: its resync is finished}; {} when
        its configuration has no stick tables to hand over (no peers section), None when it does
        not answer."""
        try:
            return runtime.parse_show_peers(runtime.command(str(self.admin_socket), "show peers", timeout=2.0))
        except runtime.RuntimeApiError:
            return None

    def synced(self) -> bool:
        """The current worker's stick tables are complete (`show peers`: every resync finished),
        so a reload now hands them over. False when the worker does not answer."""
        got = self.peers()
        return got is not None and all(got.values())

    def _wait_synced(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self.synced():
            if time.monotonic() >= end:
                return False
            time.sleep(0.1)
        return True

    def reload(self) -> ProcInfo:
        """Reload the installed configuration without refusing a connection, the stick tables
        handed over from the old worker to the new one."""
        before = self.proc_info()
        if before is None:
            raise HaproxyError(f"HAProxy does not run for {self.run_dir}; nothing to reload")
        self._wait_synced(RESYNC_WAIT_S)
        handing = self.peers() != {}  # the old worker has tables to hand over (or did not say)
        try:
            self.master_command("reload")
        except runtime.RuntimeApiError:
            os.kill(before.master, signal.SIGUSR2)  # the master CLI is the way; the signal does the same

        def done() -> bool:
            info = self.proc_info()
            return (
                info is not None
                and bool(info.workers)
                and set(info.workers).isdisjoint(before.workers)
                and self.running()
            )

        self._wait(done, "a new worker after the reload")
        if handing:  # else nothing comes: the new worker's local resync only times out (5 s)
            self._wait_synced(LEARN_WAIT_S)
        info = self.proc_info()
        assert info is not None
        return info

    def apply(self, rendered: Rendered, tls: dict[str, str] | None = None) -> str:
        """Make the running HAProxy serve `rendered`: 'started', 'reloaded' or 'unchanged'.
        HaproxyConfigError (and nothing changed) when HAProxy refuses the configuration."""
        tls = tls or {}
        digest = _digest(rendered, tls)
        loaded = self.run_dir / LOADED
        running = self.running()
        if running and loaded.exists() and loaded.read_text().strip() == digest:
            return "unchanged"
        self.check(rendered, tls)
        self._install(rendered, tls)
        if running:
            self.reload()
            result = "reloaded"
        else:
            self._stop_pid()
            self.start()
            result = "started"
        _write(loaded, digest + "\n")
        return result

    def ensure(self) -> str:
        """Drift repair: 'ok' when HAProxy runs, 'restarted' when it had died (the installed,
        once-checked configuration is started again), 'absent' when nothing was ever installed."""
        if self.running():
            return "ok"
        if not self.config.exists():
            return "absent"
        self._stop_pid()
        self.start()
        return "restarted"

    def _stop_pid(self) -> None:
        info = self.proc_info()
        if info is None:
            return
        pids = [info.master, *info.workers, *info.old_workers]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < end and any(_alive(p) for p in pids):
                time.sleep(0.05)
            if not any(_alive(p) for p in pids):
                break
        if any(_alive(p) for p in pids):
            raise HaproxyError(f"HAProxy processes {[p for p in pids if _alive(p)]} did not exit")

    def stop(self) -> None:
        """Stop HAProxy (master and every worker) and forget what was loaded. Idempotent."""
        self._stop_pid()
        for f in (self.pidfile, self.master_socket, self.admin_socket, self.run_dir / LOADED):
            f.unlink(missing_ok=True)
