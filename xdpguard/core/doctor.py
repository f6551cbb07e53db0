"""`xdpguard doctor`: is this machine (and an interface) ready for xdpguard? Each check says OK,
WARN or FAIL, and what to do about it.

The check functions are pure: they take what was observed (strings, booleans) and return a
`Check`, so they are tested with fake inputs. `gather()` observes the real machine. The native
XDP trial attach only runs on an interface inside a non-initial network namespace, or when asked
with `try_attach`, and never on the interface that carries the host's default route.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_KERNEL = (5, 10)  # bcc + BTF + bpf_xdp_attach-era helpers; Debian 12 ships 6.1
OLD_KERNEL = (4, 18)  # XDP generic, LPM tries, BPF_PROG_TEST_RUN exist from here
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
        return {"iface": self.iface, "ok": not self.failed, "checks": [asdict(c) for c in self.checks],
                "notes": self.notes}


# ---- pure checks ----


def parse_release(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_kernel(release: str) -> Check:
    ver = parse_release(release)
    if ver >= MIN_KERNEL:
        return Check("kernel", OK, f"Linux {release}")
    if ver >= OLD_KERNEL:
        return Check("kernel", WARN, f"Linux {release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}",
                     "upgrade to a Debian 12 kernel (6.1) or newer")
    return Check("kernel", FAIL, f"Linux {release} lacks the XDP features xdpguard uses",
                 "use Linux 5.10 or newer (Debian 12: 6.1)")


def check_btf(exists: bool) -> Check:
    if exists:
        return Check("btf", OK, "/sys/kernel/btf/vmlinux present")
    return Check("btf", WARN, "no /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF)",
                 "bcc still works with kernel headers; use a distribution kernel for BTF")


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
    return Check("bpffs", WARN, f"no bpffs at {path} (xdpguard mounts it on first attach)",
                 f"mkdir -p {path} && mount -t bpf bpf {path}  (or {SETUP})")


def check_headers(release: str, build_dir_ok: bool, env_source: str | None, env_source_ok: bool) -> Check:
    if env_source:
        if env_source_ok:
            return Check("kernel-headers", OK, f"BCC_KERNEL_SOURCE={env_source}")
        return Check("kernel-headers", FAIL, f"BCC_KERNEL_SOURCE={env_source} does not exist",
                     "point BCC_KERNEL_SOURCE at a kernel header tree or unset it")
    if build_dir_ok:
        return Check("kernel-headers", OK, f"/lib/modules/{release}/build")
    return Check("kernel-headers", FAIL, f"no kernel headers at /lib/modules/{release}/build",
                 f"apt-get install linux-headers-{release} ({SETUP} falls back to linux-headers-amd64)")


def check_import(name: str, error: str | None, package: str) -> Check:
    if error is None:
        return Check(name, OK, "importable")
    return Check(name, FAIL, f"cannot import: {error}", f"apt-get install {package}, then {SETUP}")


def check_bcc_compile(error: str | None, skipped: str | None = None) -> Check:
    if skipped:
        return Check("bcc-compile", WARN, f"not tried: {skipped}")
    if error is None:
        return Check("bcc-compile", OK, "compiled and loaded a trivial XDP program")
    return Check("bcc-compile", FAIL, f"bcc cannot compile: {error.strip().splitlines()[-1] if error.strip() else error}",
                 f"install matching kernel headers ({SETUP})")


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
    native = {"virtio_net", "veth", "ixgbe", "i40e", "ice", "mlx5_core", "mlx4_en", "bnxt_en", "ena", "igb", "igc",
              "tun", "nfp", "qede", "hv_netvsc", "xen-netfront"}
    if drv in native:
        return Check("driver", OK, f"{iface}: driver {drv} (has native XDP)")
    return Check("driver", WARN, f"{iface}: driver {drv} (native XDP support unknown; generic mode works)",
                 "xdpguard attach --mode auto falls back to skb mode and says so")


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
        return Check("mtu", FAIL, f"{iface}: MTU {mtu} > {VIRTIO_XDP_MAX_MTU}: virtio_net refuses native XDP",
                     f"ip link set {iface} mtu 1500")
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
        return Check("queues", WARN, f"{iface}: {current} of {maxes} combined queues in use; native XDP needs "
                                     f"{ncpus} spare", f"ethtool -L {iface} combined {maxes - ncpus}")
    return Check("queues", WARN, f"{iface}: only {maxes} queues for {ncpus} CPUs; virtio native XDP may fail "
                                 f"or be slow", f"give the VM NIC {need} queues (libvirt: <driver queues='{need}'/>)")


def check_native_xdp(iface: str, result: str | None, skipped: str | None) -> Check:
    if skipped:
        return Check("native-xdp", WARN if "default route" not in skipped else OK, f"{iface}: trial attach "
                     f"skipped ({skipped})", "" if "default route" in skipped else "give --try-attach to test it")
    if result is None:
        return Check("native-xdp", OK, f"{iface}: a trivial XDP_PASS program attached in native mode and was removed")
    return Check("native-xdp", WARN, f"{iface}: native attach failed: {result}",
                 "xdpguard attach --mode auto will use generic (skb) mode")


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


def default_route_ifaces() -> set[str]:
    out = set()
    for fam in ("-4", "-6"):
        text = _cmd(["ip", fam, "route", "show", "default"]) or ""
        out.update(re.findall(r"\bdev (\S+)", text))
    return out


def attach_skip_reason(iface: str, try_attach: bool, initial_ns: bool, default_ifaces: set[str]) -> str | None:
    """Why the trial attach must not run (None: it may)."""
    if iface in default_ifaces:
        return "it carries the default route; never touched"
    if initial_ns and not try_attach:
        return "host namespace"
    return None


def _trial_attach(iface: str) -> str | None:
    """Attach a trivial XDP_PASS in native mode and remove it; None on success, else the error."""
    try:
        from bcc import BPF

        from . import dataplane, state

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
        check_kernel(release),
        check_btf(Path("/sys/kernel/btf/vmlinux").exists()),
        check_bpffs(mounts),
        check_headers(release, Path(f"/lib/modules/{release}/build").exists(), env_src,
                      bool(env_src) and Path(env_src).exists()),
        check_import("bcc", bcc_err, "python3-bpfcc"),
    ]
    if bcc_err is not None:
        checks.append(check_bcc_compile(None, skipped="bcc is not importable"))
    elif os.geteuid() != 0:
        checks.append(check_bcc_compile(None, skipped="needs root"))
    elif compile_bcc:
        checks.append(check_bcc_compile(_bcc_compile()))
    checks.append(check_import("nftables", _import_error("nftables"), "python3-nftables"))
    notes = []
    if iface:
        if not Path(f"/sys/class/net/{iface}").exists():
            checks.append(Check("iface", FAIL, f"no interface '{iface}' in this network namespace",
                                "check the name (ip link)"))
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
