"""`xdpguard doctor`: is this machine (and an interface) ready for xdpguard? Each check says OK,
WARN or FAIL, and what to do about it.

The check functions are pure: they take what was observed (strings, booleans) and return a
`Check`, so they are tested with fake inputs. `gather()` observes the real machine. The native
XDP trial attach only runs on an interface inside a non-initial network namespace, or when asked
with `try_attach`, and never on an interface that carries a default route in use (the
lowest-metric default route of IPv4 or IPv6; a backup default route with a higher metric does
not count).

The kernel check names what the kernel lacks of what xdpguard's program uses, from the kernel's
own symbol table when it is readable (else from the version), and the `xdp-program` check
compiles and loads the real program, so a verifier that refuses it is reported with its reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..kernel import dataplane
from .. import state

OK, WARN, FAIL = "ok", "warn", "fail"
OLD_KERNEL = (4, 18)  # XDP generic, LPM tries, BPF_PROG_TEST_RUN exist from here
# What xdpguard's XDP program needs beyond OLD_KERNEL: (kernel symbol, since, what it is for).
KERNEL_FEATURES = (
    ("bpf_ringbuf_output", (5, 8), "BPF ring buffer (events)"),
    ("bpf_xdp_load_bytes", (5, 18), "bpf_xdp_load_bytes helper (payload filters)"),
)
MIN_KERNEL = max(since for _, since, _ in KERNEL_FEATURES)  # 5.18; Debian 12 ships 6.1
VIRTIO_XDP_MAX_MTU = 3498  # virtio_net refuses native XDP above this MTU (no multi-buffer XDP)
BPFFS_DIR = "/run/xdpguard/bpffs"
SETUP = "run scripts/setup.sh"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class DoctorReport:
    checks: list[Check]
    iface: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)

    def to_dict(self) -> dict:
        return {
            "iface": self.iface,
            "ok": not self.failed,
            "checks": [asdict(c) for c in self.checks],
            "notes": self.notes,
        }


# ---- pure checks ----


def parse_release(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def kernel_symbols(kallsyms: str) -> set[str]:
    """Function names in /proc/kallsyms text (addresses may read as zeros: names still count)."""
    out = set()
    for line in kallsyms.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.add(parts[2])
    return out


def missing_features(release: str, symbols: set[str] | None) -> list[str]:
    """What the kernel lacks of KERNEL_FEATURES: by symbol when known, else by version."""
    ver = parse_release(release)
    if symbols:
        return [what for sym, _, what in KERNEL_FEATURES if sym not in symbols]
    return [what for _, since, what in KERNEL_FEATURES if ver < since]


def check_kernel(release: str, symbols: set[str] | None = None) -> Check:
    ver = parse_release(release)
    source = "kernel symbols" if symbols else "version"
    if ver < OLD_KERNEL:
        return Check(
            "kernel",
            FAIL,
            f"Linux {release} lacks the XDP features xdpguard uses",
            f"use Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer (Debian 12: 6.1)",
        )
    missing = missing_features(release, symbols)
    if missing:
        return Check(
            "kernel",
            FAIL,
            f"Linux {release} lacks (by {source}): {', '.join(missing)}",
            f"use Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer (Debian 12: 6.1)",
        )
    return Check(
        "kernel",
        OK,
        f"Linux {release}: has what the XDP program uses "
        f"({', '.join(what for _, _, what in KERNEL_FEATURES)}; by {source})",
    )


def check_program(error: str | None, skipped: str | None = None) -> Check:
    if skipped:
        return Check("xdp-program", WARN, f"not tried: {skipped}")
    if error is None:
        return Check("xdp-program", OK, "xdpguard's XDP program compiles and the verifier accepts it")
    return Check(
        "xdp-program",
        FAIL,
        f"xdpguard's XDP program does not load: {error}",
        "report it with the kernel version (xdpguard attach --ebpf prints the C source)",
    )


def check_btf(exists: bool) -> Check:
    if exists:
        return Check("btf", OK, "/sys/kernel/btf/vmlinux present")
    return Check(
        "btf",
        WARN,
        "no /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF)",
        "bcc still works with kernel headers; use a distribution kernel for BTF",
    )


def _bpf_mountpoints(mounts: str) -> set[str]:
    out = set()
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "bpf":
            out.add(parts[1])
    return out


def check_bpffs(mounts: str, path: str = BPFFS_DIR) -> Check:
    if path in _bpf_mountpoints(mounts):
        return Check("bpffs", OK, f"bpffs mounted at {path}")
    return Check(
        "bpffs",
        WARN,
        f"no bpffs at {path} (xdpguard mounts it on first attach)",
        f"mkdir -p {path} && mount -t bpf bpf {path}  (or {SETUP})",
    )


def check_headers(release: str, build_dir_ok: bool, env_source: str | None, env_source_ok: bool) -> Check:
    if env_source:
        if env_source_ok:
            return Check("kernel-headers", OK, f"BCC_KERNEL_SOURCE={env_source}")
        return Check(
            "kernel-headers",
            FAIL,
            f"BCC_KERNEL_SOURCE={env_source} does not exist",
            "point BCC_KERNEL_SOURCE at a kernel header tree or unset it",
        )
    if build_dir_ok:
        return Check("kernel-headers", OK, f"/lib/modules/{release}/build")
    return Check(
        "kernel-headers",
        FAIL,
        f"no kernel headers at /lib/modules/{release}/build",
        f"apt-get install linux-headers-{release} ({SETUP} falls back to linux-headers-amd64)",
    )


def check_import(name: str, error: str | None, package: str) -> Check:
    if error is None:
        return Check(name, OK, "importable")
    return Check(name, FAIL, f"cannot import: {error}", f"apt-get install {package}, then {SETUP}")


def check_bcc_compile(error: str | None, skipped: str | None = None) -> Check:
    if skipped:
        return Check("bcc-compile", WARN, f"not tried: {skipped}")
    if error is None:
        return Check("bcc-compile", OK, "compiled and loaded a trivial XDP program")
    return Check(
        "bcc-compile",
        FAIL,
        f"bcc cannot compile: {error.strip().splitlines()[-1] if error.strip() else error}",
        f"install matching kernel headers ({SETUP})",
    )


def parse_ethtool_kv(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip().lower()] = v.strip()
    return out


def check_driver(iface: str, ethtool_i: str | None) -> Check:
    if ethtool_i is None:
        return Check("driver", WARN, f"{iface}: ethtool -i failed", "apt-get install ethtool")
    drv = parse_ethtool_kv(ethtool_i).get("driver", "?")
    native = {
        "virtio_net",
        "veth",
        "ixgbe",
        "i40e",
        "ice",
        "mlx5_core",
        "mlx4_en",
        "bnxt_en",
        "ena",
        "igb",
        "igc",
        "tun",
        "nfp",
        "qede",
        "hv_netvsc",
        "xen-netfront",
    }
    if drv in native:
        return Check("driver", OK, f"{iface}: driver {drv} (has native XDP)")
    return Check(
        "driver",
        WARN,
        f"{iface}: driver {drv} (native XDP support unknown; generic mode works)",
        "xdpguard attach --mode auto falls back to skb mode and says so",
    )


def check_lro(iface: str, ethtool_k: str | None) -> Check:
    if ethtool_k is None:
        return Check("lro", WARN, f"{iface}: ethtool -k failed")
    lro = parse_ethtool_kv(ethtool_k).get("large-receive-offload", "off")
    if lro.startswith("off"):
        return Check("lro", OK, f"{iface}: LRO off")
    return Check("lro", FAIL, f"{iface}: LRO {lro} (native XDP cannot run with LRO)", f"ethtool -K {iface} lro off")


def check_mtu(iface: str, driver: str | None, mtu: int | None) -> Check:
    if mtu is None:
        return Check("mtu", WARN, f"{iface}: MTU unknown")
    if driver == "virtio_net" and mtu > VIRTIO_XDP_MAX_MTU:
        return Check(
            "mtu",
            FAIL,
            f"{iface}: MTU {mtu} > {VIRTIO_XDP_MAX_MTU}: virtio_net refuses native XDP",
            f"ip link set {iface} mtu 1500",
        )
    return Check("mtu", OK, f"{iface}: MTU {mtu}")


def _ethtool_l_counts(text: str) -> tuple[int | None, int | None]:
    """(max combined, current combined) from `ethtool -l`."""
    maxes, current, section = None, None, None
    for line in text.splitlines():
        low = line.strip().lower()
        if low.startswith("pre-set maximums"):
            section = "max"
        elif low.startswith("current hardware settings"):
            section = "cur"
        elif low.startswith("combined:") and section:
            v = low.split(":", 1)[1].strip()
            n = int(v) if v.isdigit() else None
            if section == "max":
                maxes = n
            else:
                current = n
    return maxes, current


def check_queues(iface: str, driver: str | None, ethtool_l: str | None, ncpus: int) -> Check:
    if driver != "virtio_net":
        return Check("queues", OK, f"{iface}: queue check only matters for virtio_net")
    if ethtool_l is None:
        return Check("queues", WARN, f"{iface}: ethtool -l failed")
    maxes, current = _ethtool_l_counts(ethtool_l)
    if maxes is None or current is None:
        return Check("queues", WARN, f"{iface}: cannot read channel counts")
    # virtio_net needs spare TX queues (one per CPU) for XDP_TX/redirect: 2 × CPUs in total.
    need = 2 * ncpus
    if maxes >= need and current <= maxes - ncpus:
        return Check("queues", OK, f"{iface}: {current} of {maxes} combined queues, {ncpus} CPUs")
    if maxes >= need:
        return Check(
            "queues",
            WARN,
            f"{iface}: {current} of {maxes} combined queues in use; native XDP needs {ncpus} spare",
            f"ethtool -L {iface} combined {maxes - ncpus}",
        )
    return Check(
        "queues",
        WARN,
        f"{iface}: only {maxes} queues for {ncpus} CPUs; virtio native XDP may fail or be slow",
        f"give the VM NIC {need} queues (libvirt: <driver queues='{need}'/>)",
    )


def check_native_xdp(iface: str, result: str | None, skipped: str | None) -> Check:
    if skipped:
        return Check(
            "native-xdp",
            WARN if "default route" not in skipped else OK,
            f"{iface}: trial attach skipped ({skipped})",
            "" if "default route" in skipped else "give --try-attach to test it",
        )
    if result is None:
        return Check("native-xdp", OK, f"{iface}: a trivial XDP_PASS program attached in native mode and was removed")
    if "already attached" in result:
        return Check(
            "native-xdp",
            WARN,
            f"{iface}: not tried: {result}",
            f"xdpguard detach {iface} (or ip link set {iface} xdp off) and run doctor again",
        )
    return Check(
        "native-xdp",
        WARN,
        f"{iface}: native attach failed: {result}",
        "xdpguard attach --mode auto will use generic (skb) mode",
    )


# ---- observing the machine ----


def _cmd(argv: list[str]) -> str | None:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def _import_error(module: str) -> str | None:
    try:
        __import__(module)
    except Exception as exc:  # ImportError or a library failing to load
        return str(exc)
    return None


_TRIVIAL = "int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }"


def _bcc_compile() -> str | None:
    try:
        from bcc import BPF

        b = BPF(text=_TRIVIAL)
        b.load_func("xdp_pass", BPF.XDP)
        b.cleanup()
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


def in_initial_netns() -> bool:
    """False only when we are sure: pid 1 is elsewhere, or we are in a named (`ip netns`) namespace."""
    try:
        me = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return True
    try:
        return me == os.stat("/proc/1/ns/net").st_ino
    except OSError:
        pass  # /proc/1 hidden (containers): fall back to the named namespaces
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return True
    for name in names:
        try:
            if os.stat(os.path.join("/run/netns", name)).st_ino == me:
                return False
        except OSError:
            continue
    return True  # cannot tell: assume the host


FAMILY_NAMES = {"-4": "IPv4", "-6": "IPv6"}


def route_ifaces_in_use(routes_json: str, family: str) -> dict[str, str]:
    """Interfaces of the default route in use, from `ip -j FAMILY route show default`: the
    lowest-metric route (and each of its nexthops); a higher-metric backup is not in use.
    Maps each interface to a description such as 'the IPv4 default route (via 198.18.0.1)'."""
    try:
        routes = json.loads(routes_json or "[]")
    except ValueError:
        return {}
    routes = [
        r for r in routes if isinstance(r, dict) and r.get("dst") == "default" and r.get("type", "unicast") == "unicast"
    ]
    if not routes:
        return {}
    best = min(int(r.get("metric", 0)) for r in routes)
    out: dict[str, str] = {}
    for r in routes:
        if int(r.get("metric", 0)) != best:
            continue
        hops = r.get("nexthops") or [r]
        for hop in hops:
            dev = hop.get("dev")
            if dev:
                via = f" via {hop['gateway']}" if hop.get("gateway") else ""
                out.setdefault(dev, f"the {FAMILY_NAMES.get(family, family)} default route{via}")
    return out


def default_route_ifaces() -> dict[str, str]:
    """Interfaces carrying a default route in use, IPv4 or IPv6, each with what it carries."""
    out: dict[str, str] = {}
    for fam in ("-4", "-6"):
        for dev, what in route_ifaces_in_use(_cmd(["ip", "-j", fam, "route", "show", "default"]) or "", fam).items():
            out[dev] = f"{out[dev]} and {what}" if dev in out else what
    return out


def attach_skip_reason(iface: str, try_attach: bool, initial_ns: bool, default_ifaces: dict[str, str]) -> str | None:
    """Why the trial attach must not run (None: it may)."""
    if iface in default_ifaces:
        return f"it carries {default_ifaces[iface]}; never touched"
    if initial_ns and not try_attach:
        return "host namespace"
    return None


def _trial_attach(iface: str) -> str | None:
    """Attach a trivial XDP_PASS in native mode and remove it; None on success, else the error."""
    try:
        from bcc import BPF  # optional: doctor reports a missing bcc instead of failing to import

        idx = state.resolve_iface(iface).index
        if dataplane.query(idx) is not None:
            return "an XDP program is already attached; not replacing it"
        b = BPF(text=_TRIVIAL)
        fn = b.load_func("xdp_pass", BPF.XDP)
        flags = (1 << 0) | (1 << 2)  # XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_DRV_MODE
        try:
            b.attach_xdp(iface, fn, flags)
        except Exception as exc:
            return str(exc)
        finally:
            try:
                b.remove_xdp(iface, 1 << 2)
            except Exception:
                pass
            b.cleanup()
    except Exception as exc:
        return str(exc)
    return None


def verifier_reason(log: str) -> str | None:
    """The verifier's complaint in a bcc load log: the last line before 'processed N insns'."""
    lines = [ln.strip() for ln in log.splitlines()]
    for i, ln in enumerate(lines):
        if ln.startswith("processed ") and " insns " in ln:
            before = [x for x in lines[:i] if x]
            return before[-1] if before else None
    return None


def _program_load() -> str | None:
    """Compile and load (not attach) xdpguard's program; None when the kernel accepts it, else
    the error with the verifier's reason (bcc writes the verifier log to fd 2: captured here)."""
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            dataplane.compile_program().close()
            error = None
        except Exception as exc:
            error = str(exc).removeprefix("compiling/loading the XDP program failed: ") or type(exc).__name__
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        if error is None:
            return None
        log.seek(0)
        reason = verifier_reason(log.read())
    return f"{error} (verifier: {reason})" if reason else error


def _kernel_symbols() -> set[str] | None:
    try:
        return kernel_symbols(Path("/proc/kallsyms").read_text()) or None
    except OSError:
        return None


def _mtu(iface: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{iface}/mtu").read_text())
    except (OSError, ValueError):
        return None


def gather(iface: str | None = None, try_attach: bool = False, compile_bcc: bool = True) -> DoctorReport:
    release = os.uname().release
    env_src = os.environ.get("BCC_KERNEL_SOURCE")
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        mounts = ""
    bcc_err = _import_error("bcc")
    checks = [
        check_kernel(release, _kernel_symbols()),
        check_btf(Path("/sys/kernel/btf/vmlinux").exists()),
        check_bpffs(mounts),
        check_headers(
            release, Path(f"/lib/modules/{release}/build").exists(), env_src, bool(env_src) and Path(env_src).exists()
        ),
        check_import("bcc", bcc_err, "python3-bpfcc"),
    ]
    if bcc_err is not None:
        checks.append(check_bcc_compile(None, skipped="bcc is not importable"))
    elif os.geteuid() != 0:
        checks.append(check_bcc_compile(None, skipped="needs root"))
    elif compile_bcc:
        bcc_compile_err = _bcc_compile()
        checks.append(check_bcc_compile(bcc_compile_err))
        checks.append(
            check_program(None, skipped="bcc cannot compile") if bcc_compile_err else check_program(_program_load())
        )
    checks.append(check_import("nftables", _import_error("nftables"), "python3-nftables"))
    notes = []
    if iface:
        if not Path(f"/sys/class/net/{iface}").exists():
            checks.append(
                Check("iface", FAIL, f"no interface '{iface}' in this network namespace", "check the name (ip link)")
            )
            return DoctorReport(checks, iface)
        ethtool_i = _cmd(["ethtool", "-i", iface])
        driver = parse_ethtool_kv(ethtool_i).get("driver") if ethtool_i else None
        checks += [
            check_driver(iface, ethtool_i),
            check_lro(iface, _cmd(["ethtool", "-k", iface])),
            check_mtu(iface, driver, _mtu(iface)),
            check_queues(iface, driver, _cmd(["ethtool", "-l", iface]), os.cpu_count() or 1),
        ]
        skip = attach_skip_reason(iface, try_attach, in_initial_netns(), default_route_ifaces())
        if skip is None and os.geteuid() != 0:
            skip = "needs root"
        if skip is None and bcc_err is not None:
            skip = "bcc is not importable"
        checks.append(check_native_xdp(iface, None if skip else _trial_attach(iface), skip))
    return DoctorReport(checks, iface, notes)
