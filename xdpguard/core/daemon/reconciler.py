"""The reconciler of `xdpguard run --config FILE`: restore at boot, adopt what is attached,
repair drift, re-read the file on SIGHUP.

At start: when the file is the one last applied (same hash), the store wins (it holds the
imperative changes made since); otherwise the file is applied. Then every interface of the
desired state is realised: an attached xdpguard program is adopted (no re-attach, no gap), a
missing one is attached and filled (after a reboot).

Every `interval_s` (0.5 s) a cheap check per interface: our program still attached (else it is
re-attached — the same program, kept open by the daemon or pinned, so its maps, bans and counters
come back as they were; a fresh compile only when neither exists), its pins present, the nft
table present and the forwarding sysctls on while rules exist. A foreign program that replaced
ours is reported loudly, once per program, and never fought over. Every `full_every_s` each
interface is fully realised (maps compared with the desired state; list maps excepted, they are
realised at start, on apply and on reload).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ..kernel import dataplane, libbpf
from ..nat import forward
from .. import fastfwd, guard, protection, reconcile, state, store, tcpstate
from ..model.desired import Desired, InterfaceSpec
from ..errors import UserError
from ..l7 import bans as l7bans


class Reconciler:
    def __init__(
        self, config_path: str | None, report: Callable[[str], None] = lambda m: None, full_every_s: float = 30.0
    ):
        self.path = config_path
        self.report = report
        self.full_every_s = full_every_s
        self.held: dict[str, tuple[int, int]] = {}  # iface → (prog id, fd we keep open)
        self.said: dict[str, str] = {}  # iface → the last problem reported (said once)
        self.reload_requested = False
        self._cache: tuple[tuple | None, Desired] = (None, Desired())
        self._last_full = time.monotonic()
        self.repairs = 0
        self.l7 = l7bans.Watch(report)  # HAProxy kept running, its offenders banned in XDP (reason cc)

    # -- desired state, cached on the store file's identity --

    def desired(self) -> Desired:
        p = store.desired_path()
        try:
            st = p.stat()
            ident = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            ident = None
        if ident != self._cache[0]:
            self._cache = (ident, store.load())
        return self._cache[1]

    def _say(self, name: str, msg: str) -> None:
        if self.said.get(name) != msg:
            self.said[name] = msg
            self.report(msg)

    # -- start, reload --

    def start(self) -> None:
        state.require_root()
        if self.path is not None:
            sha = store.file_sha256(self.path)
            meta = store.load_meta()
            if meta.source_sha256 == sha and Path(meta.source or "") == Path(self.path) and self.desired().interfaces:
                self.report(
                    f"{self.path} unchanged since it was applied (generation {meta.generation}); "
                    f"restoring the stored desired state"
                )
            else:
                res = reconcile.apply_file(self.path)
                self.report(f"applied {self.path}: {len(res.text)} change(s)")
        for spec in self.desired().interfaces:
            self._realise(spec, lists=True)
            self._upgrade_if_older(spec.name)
        self.l7.tick(self.desired().interfaces)  # at boot: HAProxy installed and started
        self._last_full = time.monotonic()

    def _upgrade_if_older(self, name: str) -> None:
        """An xdpguard upgrade leaves the old program attached: swap in this version's, gaplessly."""
        try:
            iface = state.resolve_iface(name)
            if not dataplane.is_ours(dataplane.query(iface.index)) or not protection.needs_upgrade(iface):
                return
            r = reconcile.upgrade(name)
        except UserError as exc:
            self._say(name, f"{name}: upgrade refused: {exc.message}")
            return
        self.report(
            f"{name}: upgraded the attached program in place (prog id {r.old_prog_id} -> {r.prog_id}, "
            f"{r.maps_kept} maps carried over)"
        )
        self._hold(name)

    def reload(self) -> None:
        """SIGHUP: the file wins, as with `apply`; a bad file changes nothing."""
        self.reload_requested = False
        if self.path is None:
            return
        try:
            res = reconcile.apply_file(self.path)
        except UserError as exc:
            self.report(f"reload of {self.path} refused, keeping the current state: {exc.message}")
            return
        self.report(f"reloaded {self.path}: {len(res.text)} change(s)")
        for line in res.text:
            self.report(f"  {line}")

    # -- the loop body --

    def _realise(self, spec: InterfaceSpec, lists: bool, rebuild_nat: bool = False) -> None:
        try:
            r = reconcile.realise(spec, rebuild_nat=rebuild_nat, lists=lists)
        except UserError as exc:
            self._say(spec.name, f"{spec.name}: {exc.message}")
            return
        except Exception as exc:  # one interface's trouble never stops the others
            self._say(spec.name, f"{spec.name}: reconcile failed: {type(exc).__name__}: {exc}")
            return
        if r.action in ("missing", "foreign"):
            self._say(spec.name, "; ".join(r.notes))
            return
        self.said.pop(spec.name, None)
        if r.action == "attached":
            self.repairs += 1
            self.report(f"{spec.name}: attached and restored from the desired state")
        elif r.action == "updated":
            self.repairs += 1
            self.report(f"{spec.name}: repaired drift" + (f" ({'; '.join(r.notes)})" if r.notes else ""))
        self._hold(spec.name)

    def _hold(self, name: str) -> None:
        """Keep our program open, so that a detach can be undone with the very same program."""
        try:
            att = dataplane.query(state.resolve_iface(name).index)
        except UserError:
            return
        if not dataplane.is_ours(att):
            return
        old = self.held.get(name)
        if old is not None and old[0] == att.prog_id:
            return
        try:
            fd = libbpf.prog_get_fd_by_id(att.prog_id)
        except libbpf.BpfError:
            return
        if old is not None:
            os.close(old[1])
        self.held[name] = (att.prog_id, fd)

    def _reattach(self, iface: state.Iface, spec: InterfaceSpec) -> bool:
        """Put our own program back after something detached it. False: nothing to put back."""
        fd = None
        held = self.held.get(iface.name)
        if held is not None:
            fd = os.dup(held[1])
        else:
            try:
                fd = guard.pinned_prog_fd(iface)
            except libbpf.BpfError:
                return False
        try:
            st = state.read_state(iface) or {}
            mode = st.get("mode") or spec.mode
            with state.iface_lock(iface):
                if dataplane.query(iface.index) is not None:
                    return True  # someone was quicker; the next tick looks again
                took, _ = dataplane.attach(iface.name, iface.index, fd, mode if mode in ("native", "skb") else "auto")
            self.repairs += 1
            self.report(
                f"{iface.name}: our XDP program was detached; re-attached it ({took} mode), maps and "
                f"counters as they were"
            )
            return True
        except UserError as exc:
            self._say(iface.name, f"{iface.name}: re-attach failed: {exc.message}")
            return False
        finally:
            os.close(fd)

    def check(self, spec: InterfaceSpec) -> None:
        try:
            iface = state.resolve_iface(spec.name)
        except UserError as exc:
            self._say(spec.name, f"{spec.name}: {exc.message}; waiting for it")
            return
        att = dataplane.query(iface.index)
        if att is None:
            if not self._reattach(iface, spec):
                self._realise(spec, lists=True)
            return
        if not dataplane.is_ours(att):
            self._say(spec.name, reconcile.foreign_note(spec.name, att))
            return
        if self.said.get(spec.name, "").startswith("WARNING"):
            self.said.pop(spec.name, None)
        self._hold(spec.name)
        fixed = tcpstate.repair(iface)
        if fixed:
            if fixed.startswith("the tc egress recorder was removed; put"):
                self.repairs += 1
                self.report(f"{spec.name}: {fixed}")
            else:
                self._say(spec.name, f"WARNING: {spec.name}: {fixed}")
        if not guard.pins_complete(iface):
            with state.iface_lock(iface):
                guard.repin(iface)
            self.repairs += 1
            self.report(f"{spec.name}: pins under {iface.pin_dir} were missing; re-pinned")
        if spec.fast_path is not None:
            with guard.Guard.open(iface) as g:
                whole = fastfwd.intact(g, spec.fast_path)
            if not whole:  # a lost pin emptied the tail-call slot, the return program went, …
                self._realise(spec, lists=False)

    def tick(self) -> None:
        if self.reload_requested:
            self.reload()
        d = self.desired()
        for spec in d.interfaces:
            try:
                self.check(spec)
            except UserError as exc:
                self._say(spec.name, f"{spec.name}: {exc.message}")
        self.l7.tick(d.interfaces)
        drift = forward.forwarding_drift()
        if drift:
            self.report("NAT drift: " + "; ".join(drift) + "; rebuilding")
            for spec in d.interfaces:
                if spec.forwards or any(a.http for a in spec.addresses):  # (HTTP ports: synproxy rules)
                    self._realise(spec, lists=False, rebuild_nat=True)
        if time.monotonic() - self._last_full >= self.full_every_s:
            self._last_full = time.monotonic()
            for spec in d.interfaces:
                self._realise(spec, lists=False)

    def close(self) -> None:
        for _, fd in self.held.values():
            os.close(fd)
        self.held.clear()
