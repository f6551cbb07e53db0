"""Network-namespace labs: namespaces, veth pairs, addresses, routes and processes, all undone on close.

Every setup step registers its undo right after it succeeds; `Lab.close()` runs the undos last
first, never raises over a resource that is already gone, and may be called any number of times.
Commands are argument lists (never shell strings) run through `ip` from iproute2.

Safety: a Lab only configures namespaces it created itself, and only with addresses from the
benchmarking range, the TEST-NETs and the IPv6 documentation prefix (plus loopback and link-local).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from typing import Any

from xdpguard.core import state

log = logging.getLogger(__name__)

#: Every lab namespace is named f"{NS_PREFIX}{prefix}-{pid}-{n}", so leftovers are easy to find.
NS_PREFIX = "xg-"
NETNS_DIR = "/run/netns"
IFNAME_MAX_LEN = 15  # IFNAMSIZ - 1

#: Addresses a lab may configure (DESIGN.md, safety rules).
ALLOWED_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "198.18.0.0/15",  # RFC 2544 benchmarking
        "192.0.2.0/24",  # TEST-NET-1
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "127.0.0.0/8",
        "2001:db8::/32",  # IPv6 documentation
        "fe80::/10",  # link-local (IPv6 next hops)
        "::1/128",
    )
)

# Lab.forward_bed's addresses (the protected one, the client, the backend and the protector's
# address on the backend's link)
BED_PROT4, BED_CLIENT4, BED_BACKEND4, BED_GW4 = "198.18.0.2", "198.18.0.1", "198.18.1.2", "198.18.1.1"

DEFAULT_TIMEOUT_S = 30.0
PROCESS_STOP_TIMEOUT_S = 5.0

_NAME_RE = re.compile(r"^[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*$")
_ns_counter = itertools.count()  # module-wide: two Labs in one process never pick the same name


class LabError(RuntimeError):
    """A lab setup step was refused or failed."""


class LabCommandError(LabError):
    """A command run by the lab exited non-zero; carries its argv and output."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr or stdout or "").strip()
        super().__init__(f"command {argv!r} exited {returncode}" + (f": {detail}" if detail else ""))


def leftover_namespaces(prefix: str = NS_PREFIX, pid: int | None = None) -> list[str]:
    """Named network namespaces whose name starts with `prefix` (and, with `pid`, made by that pid)."""
    try:
        names = os.listdir(NETNS_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        if not name.startswith(prefix):
            continue
        if pid is not None:
            parts = name.rsplit("-", 2)
            if len(parts) != 3 or parts[1] != str(pid):
                continue
        found.append(name)
    return sorted(found)


def _check_ifname(ifname: str) -> None:
    if not ifname or len(ifname) > IFNAME_MAX_LEN or "/" in ifname or any(c.isspace() for c in ifname):
        raise LabError(f"invalid interface name {ifname!r} (1..{IFNAME_MAX_LEN} chars, no '/' or spaces)")


def _check_allowed(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network,
    what: str,
) -> None:
    if isinstance(address, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        ok = any(address.version == net.version and address.subnet_of(net) for net in ALLOWED_NETWORKS)
    else:
        ok = any(address in net for net in ALLOWED_NETWORKS)
    if not ok:
        allowed = ", ".join(str(net) for net in ALLOWED_NETWORKS)
        raise LabError(f"{what} {address} is outside the lab address ranges ({allowed})")


class Lab:
    """A set of network namespaces and what lives in them, torn down by `close()`.

    Use as a context manager::

        with Lab() as lab:
            a, b = lab.netns("a"), lab.netns("b")
            lab.veth(a, "veth0", b, "veth0")
            lab.addr(a, "veth0", "198.18.0.1/30")
    """

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT_S):
        self.timeout = timeout
        self._undos: list[tuple[str, Callable[[], Any]]] = []
        self._namespaces: list[str] = []
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The namespaces this lab created and has not yet deleted, oldest first."""
        return tuple(self._namespaces)

    def defer(self, description: str, undo: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Register `undo(*args, **kwargs)` to run on close (last registered runs first)."""
        self._undos.append((description, lambda: undo(*args, **kwargs)))

    def close(self) -> None:
        """Run every registered undo, last first. Logs failures, never raises; idempotent."""
        self._closed = True
        while self._undos:
            description, undo = self._undos.pop()
            try:
                undo()
            except Exception:  # an undo must not stop the others
                log.warning("lab cleanup step failed: %s", description, exc_info=True)

    def _check_open(self) -> None:
        if self._closed:
            raise LabError("lab is closed")

    def _check_own(self, ns: str) -> None:
        self._check_open()
        if ns not in self._namespaces:
            raise LabError(f"namespace {ns!r} was not created by this lab; refusing to change it")

    # --- commands -------------------------------------------------------------------------

    def _cmd(
        self, argv: list[str], *, check: bool = True, timeout: float | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        log.debug("lab: %s", argv)
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=self.timeout if timeout is None else timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise LabCommandError(argv, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def _quiet(self, argv: list[str]) -> None:
        """Run a cleanup command; a failure (resource already gone) is only logged at debug."""
        try:
            proc = self._cmd(argv, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("lab cleanup command %s failed: %s", argv, exc)
            return
        if proc.returncode != 0:
            log.debug("lab cleanup %s exited %d: %s", argv, proc.returncode, proc.stderr.strip())

    def run(
        self, ns: str, *argv: str, check: bool = True, timeout: float | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `ns` (`ip netns exec`), capture text output, raise on failure if `check`."""
        self._check_open()
        return self._cmd(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout, input=input)

    def popen(self, ns: str, *argv: str, **popen_kwargs: Any) -> subprocess.Popen:
        """Start `argv` inside `ns` in its own process group; it is stopped (TERM, then KILL) on close."""
        self._check_open()
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs["start_new_session"] = True
        full = ["ip", "netns", "exec", ns, *argv]
        log.debug("lab: start %s", full)
        proc = subprocess.Popen(full, **popen_kwargs)
        self.defer(f"stop {full}", _stop_process, proc)
        return proc

    # --- namespaces and links -------------------------------------------------------------

    def netns(self, prefix: str) -> str:
        """Create a uniquely named namespace with `lo` up and return its name."""
        self._check_open()
        if not _NAME_RE.match(prefix):
            raise LabError(f"invalid namespace prefix {prefix!r}")
        while True:
            name = f"{NS_PREFIX}{prefix}-{os.getpid()}-{next(_ns_counter)}"
            if not os.path.exists(os.path.join(NETNS_DIR, name)):
                break
        self._cmd(["ip", "netns", "add", name])
        self._namespaces.append(name)
        self.defer(f"delete netns {name}", self._delete_netns, name)
        self._cmd(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def _delete_netns(self, name: str) -> None:
        if name in self._namespaces:
            self._namespaces.remove(name)
        path = os.path.join(NETNS_DIR, name)
        if os.path.exists(path):
            try:  # what xdpguard kept for this namespace goes with it (the kernel reuses its inode)
                state.forget_netns(f"net-{os.stat(path).st_ino}")
            except OSError:
                pass
            self._quiet(["ip", "netns", "del", name])

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """Create a veth pair `ns_a:if_a` <-> `ns_b:if_b`, both up, tx checksum offload off.

        The pair is created from inside `ns_a`, so the root namespace never sees either end.
        """
        self._check_own(ns_a)
        self._check_own(ns_b)
        _check_ifname(if_a)
        _check_ifname(if_b)
        self._cmd(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
        # Deleting one end deletes both; with the namespace gone it is gone already.
        self.defer(f"delete veth {ns_a}:{if_a}", self._quiet, ["ip", "-n", ns_a, "link", "del", if_a])
        for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
            self._cmd(["ip", "-n", ns, "link", "set", ifname, "up"])
            self._tx_checksum_off(ns, ifname)

    def forward_bed(self, tag: str) -> tuple[str, str, str]:
        """The benches' forwarding bed, three namespaces `<tag>c`, `<tag>p`, `<tag>b`: client
        xgc0 BED_CLIENT4/24 ─ xgp0 BED_PROT4/24 protector xgb1 BED_GW4/24 ─ xgb0 BED_BACKEND4/24
        backend (no routes, no forwarding: the caller sets those up). Returns the three names."""
        client, prot, backend = self.netns(f"{tag}c"), self.netns(f"{tag}p"), self.netns(f"{tag}b")
        self.veth(client, "xgc0", prot, "xgp0")
        self.veth(prot, "xgb1", backend, "xgb0")
        self.addr(client, "xgc0", f"{BED_CLIENT4}/24")
        self.addr(prot, "xgp0", f"{BED_PROT4}/24")
        self.addr(prot, "xgb1", f"{BED_GW4}/24")
        self.addr(backend, "xgb0", f"{BED_BACKEND4}/24")
        return client, prot, backend

    def _tx_checksum_off(self, ns: str, ifname: str) -> None:
        # veth hands CHECKSUM_PARTIAL packets to XDP and the peer; turning tx offload off makes
        # every packet carry a real checksum (as on a wire), which XDP and tcpdump expect.
        if shutil.which("ethtool") is None:
            log.warning("ethtool not found; leaving tx checksum offload on for %s:%s", ns, ifname)
            return
        self.run(ns, "ethtool", "-K", ifname, "tx", "off")

    # --- addresses, routes, sysctls -------------------------------------------------------

    def addr(self, ns: str, ifname: str, cidr: str) -> None:
        """Add address `cidr` (IPv4 or IPv6, e.g. "198.18.0.1/30") to `ns:ifname`; IPv6 skips DAD."""
        self._check_own(ns)
        _check_ifname(ifname)
        iface = ipaddress.ip_interface(cidr)
        _check_allowed(iface.ip, "address")
        argv = ["ip", "-n", ns, "addr", "add", str(iface), "dev", ifname]
        if iface.version == 6:
            argv.append("nodad")
        self._cmd(argv)
        self.defer(
            f"delete address {cidr} on {ns}:{ifname}",
            self._quiet,
            ["ip", "-n", ns, "addr", "del", str(iface), "dev", ifname],
        )

    def route(self, ns: str, dst: str, via: str) -> None:
        """Add a route to `dst` (a prefix or "default") through next hop `via` inside `ns`."""
        self._check_own(ns)
        gateway = ipaddress.ip_address(via)
        _check_allowed(gateway, "next hop")
        family = f"-{gateway.version}"
        if dst != "default":
            network = ipaddress.ip_network(dst, strict=False)
            if network.version != gateway.version:
                raise LabError(f"route {dst} via {via}: address families differ")
            _check_allowed(network, "destination")
            dst = str(network)
        self._cmd(["ip", family, "-n", ns, "route", "add", dst, "via", str(gateway)])
        self.defer(
            f"delete route {dst} in {ns}",
            self._quiet,
            ["ip", family, "-n", ns, "route", "del", dst, "via", str(gateway)],
        )

    def sysctl(self, ns: str, key: str, value: str | int) -> None:
        """Set sysctl `key` (dotted, e.g. "net.ipv4.ip_forward") inside `ns`; restored on close.

        Only `net.*` keys are accepted: they are (mostly) per-namespace, so the host is left alone;
        the old value is restored either way.
        """
        self._check_own(ns)
        if not key.startswith("net.") or ".." in key or "/" in key:
            raise LabError(f"sysctl {key!r}: only net.* keys are namespaced; refusing")
        path = "/proc/sys/" + key.replace(".", "/")
        old = self.run(ns, "cat", path).stdout.strip()
        self.run(ns, "tee", path, input=f"{value}\n")
        self.defer(f"restore sysctl {key}={old} in {ns}", self._restore_sysctl, ns, path, old)

    def _restore_sysctl(self, ns: str, path: str, old: str) -> None:
        if not os.path.exists(os.path.join(NETNS_DIR, ns)):
            return  # the namespace, and its sysctls, are gone
        proc = self._cmd(["ip", "netns", "exec", ns, "tee", path], check=False, input=f"{old}\n")
        if proc.returncode != 0:
            log.debug("lab cleanup: restoring %s in %s failed: %s", path, ns, proc.stderr.strip())


def stop_group(proc: subprocess.Popen, steps: tuple[tuple[int, float], ...]) -> bool:
    """Send each (signal, wait) of `steps` to the process group of `proc` in turn until it
    exits; reap it. False if it is still running after the last step."""
    for sig, wait in steps:
        if proc.poll() is not None:
            return True
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return True
        except subprocess.TimeoutExpired:
            continue
    return proc.poll() is not None


def _stop_process(proc: subprocess.Popen, timeout: float = PROCESS_STOP_TIMEOUT_S) -> None:
    """TERM the process group of `proc`, then KILL it if it does not exit in time; reap it."""
    if not stop_group(proc, ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout))):
        raise LabError(f"process {proc.pid} ({proc.args!r}) did not exit after SIGKILL")
