"""Traffic generators for the veth floods of ``scripts/bench`` (sections 2 and 3).

Three ways to put one 64-byte frame onto a veth many times, best first:

``live-frames``
    BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: an XDP program returning bpf_redirect into
    the veth; the frames never become skbs on the sending side (the kernel's in-tree generator,
    what xdp-trafficgen uses). Cheapest, so the receivers' differences stand out most.
``af_xdp``
    An AF_XDP socket in copy mode on the veth (``XDP_COPY``; veth has no zero-copy), one UMEM whose
    frames all hold the frame, and a TX ring whose descriptors are written once: a batch costs one
    store to the producer index and one ``sendto``. Every frame becomes an skb and goes through
    ``veth_xmit`` (libxdp from Debian's libxdp1 for the socket set-up).
``trafgen``
    Debian's netsniff-ng trafgen (packet mmap TX ring); every frame is an skb too, and trafgen
    spends more of its own CPU per frame.

Every run is bounded in packets and in seconds. The suite (``Flood`` in bench_suite.py) starts
:func:`worker_main` in its generator namespace once per generator, in this order, until a probe
succeeds; it names the generator in its table and JSON, measures the generator alone (into a sink
that drops the frame at once) in the same rounds as the receivers, and reports every receiver
minus it. docs/bench-generator.md has the details and the measured costs.

Why live-frames fails on some machines (issue 23): the "Issue 23" comment below and
docs/bench-generator.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import mmap
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIVE, AF_XDP, TRAFGEN = "live-frames", "af_xdp", "trafgen"
GENERATORS = (LIVE, AF_XDP, TRAFGEN)

# Issue 23: why live frames fail with EPERM on some kernels (the whole finding, with the probe
# table, is docs/bench-generator.md). Kernel 6.18.44-fc-v1300, a Firecracker guest build; root in
# the initial user namespace with every capability but CAP_SYS_RESOURCE (not in the bounding set).
# Upstream bpf_prog_test_run_xdp() (net/bpf/test_run.c) has no -EPERM on the live path: it checks
# unknown flags (-EINVAL), then `batch_size > TEST_XDP_MAX_BATCH` (-E2BIG), then sets up the page
# pool. Here LIVE|4 still gives EINVAL and a sched_cls program with LIVE gives EINVAL, but LIVE with
# batch_size 1000 gives EPERM, not E2BIG: a non-upstream check between the two refuses every
# live-frames run of an XDP program. The same kernel refuses TRACING/EXT/LSM program loads with
# EPERM before the verifier logs, has no kprobes, and has non-upstream kernel.init_private_*
# sysctls owned by the VM's init: a hardened build's policy. No capability or sysctl the project
# can set in its own namespaces changes it, so the suite falls back to AF_XDP, then trafgen.


# ---------------------------------------------------------------- CPU time


def ksoftirqd_cpu_s() -> float:
    """CPU time of the ksoftirqd threads (softirq work deferred out of the sender's context)."""
    tot = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            st = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if st[st.index("(") + 1 : st.rindex(")")].startswith("ksoftirqd/"):
            f = st[st.rindex(")") + 2 :].split()
            tot += int(f[11]) + int(f[12])
    return tot / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- live frames

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
LIVEGEN_SRC = b"""
BPF_ARRAY(xg_gen_target, u32, 1);
int xg_gen(struct xdp_md *ctx) {
    u32 k = 0;
    u32 *t = xg_gen_target.lookup(&k);
    return t ? bpf_redirect(*t, 0) : XDP_ABORTED;
}
"""


def _test_run_live(fd: int, buf: ctypes.Array, size: int, repeat: int) -> int:
    """One BPF_PROG_TEST_RUN in live-frames mode; 0 or -errno."""
    from xdpguard.core.kernel import libbpf  # noqa: PLC0415

    o = libbpf._TestRunOpts()
    o.sz, o.data_in, o.data_size_in = ctypes.sizeof(o), ctypes.addressof(buf), size
    o.repeat, o.flags = repeat, BPF_F_TEST_XDP_LIVE_FRAMES
    rc = libbpf.lib().bpf_prog_test_run_opts(fd, ctypes.byref(o))
    if rc == 0:
        return 0
    return rc if rc < -1 else -(ctypes.get_errno() or 1)


def probe_live() -> str | None:
    """None if BPF_PROG_TEST_RUN in live-frames mode works here, else the one-line reason. The
    probe runs a bare XDP_DROP program once (nothing is sent anywhere)."""
    import bcc  # noqa: PLC0415  (Debian python3-bpfcc, imported when needed)

    b = bcc.BPF(text=b"int xg_probe(struct xdp_md *ctx) { return XDP_DROP; }")
    try:
        fd = b.load_func(b"xg_probe", bcc.BPF.XDP).fd
        data = bytes(64)
        rc = _test_run_live(fd, ctypes.create_string_buffer(data, len(data)), len(data), 1)
    finally:
        b.cleanup()
    if rc == 0:
        return None
    hint = " (a kernel policy; see docs/bench-generator.md)" if rc == -errno.EPERM else ""
    return f"BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES refused: {os.strerror(-rc)}{hint}"


class LiveFramesSender:
    """An XDP program returning bpf_redirect(ifindex) run with BPF_PROG_TEST_RUN in live-frames
    mode, in growing chunks."""

    def __init__(self) -> None:
        import bcc  # noqa: PLC0415

        self.bpf = bcc.BPF(text=LIVEGEN_SRC)
        self.fd = self.bpf.load_func(b"xg_gen", bcc.BPF.XDP).fd
        self.target = self.bpf[b"xg_gen_target"]

    def send(self, ifname: str, frame: bytes, count: int, seconds: float) -> int:
        self.target[ctypes.c_int(0)] = ctypes.c_uint32(socket.if_nametoindex(ifname))
        buf = ctypes.create_string_buffer(frame, len(frame))
        left, chunk, sent, deadline = count, 1000, 0, time.monotonic() + seconds
        while left > 0 and time.monotonic() < deadline:
            n = min(chunk, left)
            c0 = time.monotonic()
            rc = _test_run_live(self.fd, buf, len(frame), n)
            if rc:
                raise OSError(-rc, f"live-frames test run failed: {os.strerror(-rc)}")
            sent, left = sent + n, left - n
            if time.monotonic() - c0 < 0.05:
                chunk = min(chunk * 2, 1 << 20)
        return sent

    def close(self) -> None:
        self.bpf.cleanup()


# ---------------------------------------------------------------- AF_XDP (libxdp)


class _RingProd(ctypes.Structure):  # struct xsk_ring_prod / xsk_ring_cons (libxdp xsk.h)
    _fields_ = [
        ("cached_prod", ctypes.c_uint32),
        ("cached_cons", ctypes.c_uint32),
        ("mask", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("producer", ctypes.POINTER(ctypes.c_uint32)),
        ("consumer", ctypes.POINTER(ctypes.c_uint32)),
        ("ring", ctypes.c_void_p),
        ("flags", ctypes.POINTER(ctypes.c_uint32)),
    ]


class _UmemConfig(ctypes.Structure):
    _fields_ = [
        ("fill_size", ctypes.c_uint32),
        ("comp_size", ctypes.c_uint32),
        ("frame_size", ctypes.c_uint32),
        ("frame_headroom", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


class _SocketConfig(ctypes.Structure):
    _fields_ = [
        ("rx_size", ctypes.c_uint32),
        ("tx_size", ctypes.c_uint32),
        ("libxdp_flags", ctypes.c_uint32),
        ("xdp_flags", ctypes.c_uint32),
        ("bind_flags", ctypes.c_uint16),
    ]


class _XdpDesc(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint32), ("options", ctypes.c_uint32)]


XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD = 1  # TX only: no XDP program on the sending veth
XDP_COPY = 1 << 1
SOL_XDP = 283
XDP_MAX_TX_SKB_BUDGET = 9  # 6.17+: frames per sendto in copy mode (default 32)
_libxdp = None


def _xdp_lib() -> ctypes.CDLL:
    global _libxdp
    if _libxdp is None:
        name = ctypes.util.find_library("xdp") or "libxdp.so.1"
        lib = ctypes.CDLL(name, use_errno=True)
        lib.xsk_umem__create.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_uint64,
            ctypes.POINTER(_RingProd),
            ctypes.POINTER(_RingProd),
            ctypes.POINTER(_UmemConfig),
        ]
        lib.xsk_socket__create.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_uint32,
            ctypes.c_void_p,
            ctypes.POINTER(_RingProd),
            ctypes.POINTER(_RingProd),
            ctypes.POINTER(_SocketConfig),
        ]
        lib.xsk_socket__fd.argtypes = [ctypes.c_void_p]
        lib.xsk_socket__delete.argtypes = [ctypes.c_void_p]
        lib.xsk_umem__delete.argtypes = [ctypes.c_void_p]
        _libxdp = lib
    return _libxdp


class _XskTx:
    """A TX-only AF_XDP socket (copy mode) on `ifname` of the current namespace."""

    FRAMES = 2048  # = TX ring size: descriptor i always points at frame i
    FRAME_SIZE = 2048

    def __init__(self, ifname: str):
        lib = _xdp_lib()
        self.ifname = ifname
        self.area = mmap.mmap(-1, self.FRAMES * self.FRAME_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.area_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.area))
        self.fill, self.comp, self.tx = _RingProd(), _RingProd(), _RingProd()
        self.umem, self.xsk = ctypes.c_void_p(), ctypes.c_void_p()
        ucfg = _UmemConfig(fill_size=self.FRAMES, comp_size=self.FRAMES, frame_size=self.FRAME_SIZE)
        rc = lib.xsk_umem__create(
            ctypes.byref(self.umem),
            self.area_addr,
            len(self.area),
            ctypes.byref(self.fill),
            ctypes.byref(self.comp),
            ctypes.byref(ucfg),
        )
        if rc:
            self._release()
            raise OSError(-rc, f"xsk_umem__create: {os.strerror(-rc)}")
        scfg = _SocketConfig(
            rx_size=0, tx_size=self.FRAMES, libxdp_flags=XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD, bind_flags=XDP_COPY
        )
        rc = lib.xsk_socket__create(
            ctypes.byref(self.xsk), ifname.encode(), 0, self.umem, None, ctypes.byref(self.tx), ctypes.byref(scfg)
        )
        if rc:
            self._release()
            raise OSError(-rc, f"xsk_socket__create on {ifname}: {os.strerror(-rc)}")
        self.fd = lib.xsk_socket__fd(self.xsk)
        self.sock = socket.socket(44, socket.SOCK_RAW, 0, fileno=os.dup(self.fd))  # AF_XDP
        try:  # a larger budget per sendto, where the kernel has the option; 32 otherwise
            self.sock.setsockopt(SOL_XDP, XDP_MAX_TX_SKB_BUDGET, self.FRAMES)
        except OSError:
            pass
        self.descs = (_XdpDesc * self.tx.size).from_address(self.tx.ring)
        self.comp_prod, self.comp_cons = self.comp.producer, self.comp.consumer
        self.tx_prod = self.tx.producer
        self.frame = b""

    def set_frame(self, frame: bytes) -> None:
        for i in range(self.FRAMES):
            self.area[i * self.FRAME_SIZE : i * self.FRAME_SIZE + len(frame)] = frame
        for i in range(self.tx.size):
            self.descs[i].addr, self.descs[i].len, self.descs[i].options = (
                (i % self.FRAMES) * self.FRAME_SIZE,
                len(frame),
                0,
            )
        self.frame = frame

    def _reap(self) -> int:
        """Move the completion ring's consumer to its producer; frames completed."""
        prod = self.comp_prod[0]
        done = (prod - self.comp_cons[0]) & 0xFFFFFFFF
        self.comp_cons[0] = prod
        return done

    def send(self, count: int, seconds: float) -> int:
        """Send the frame `count` times or until `seconds` pass; returns frames the kernel took
        (completed). Waits for every completion before returning (bounded by a second).

        The rings are driven by plain loads and stores of their indexes: the descriptors never
        change after set_frame, the kernel consumes them in our own sendto (copy mode), and the
        completion entries are never read, so no ordering beyond program order is needed."""
        size = self.tx.size
        outstanding, done, queued = 0, 0, 0
        deadline = time.monotonic() + seconds
        sendto = self.sock.send
        self._reap()
        while queued < count:
            got = self._reap()
            done, outstanding = done + got, outstanding - got
            room = min(size - outstanding, count - queued)
            if room > 0:
                self.tx_prod[0] = (self.tx_prod[0] + room) & 0xFFFFFFFF
                outstanding, queued = outstanding + room, queued + room
            try:
                sendto(b"", socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:  # the device dropped a frame (EBUSY) or had no room: go on
                if e.errno not in (errno.EBUSY, errno.ENOBUFS, errno.EAGAIN):
                    raise
            if time.monotonic() >= deadline:
                break
        end = time.monotonic() + 1.0
        while outstanding > 0 and time.monotonic() < end:
            try:
                sendto(b"", socket.MSG_DONTWAIT)
            except OSError:
                pass
            got = self._reap()
            done, outstanding = done + got, outstanding - got
        return done

    def _release(self) -> None:
        lib = _xdp_lib()
        if getattr(self, "sock", None) is not None:
            self.sock.close()
            self.sock = None
        if self.xsk:
            lib.xsk_socket__delete(self.xsk)
            self.xsk = ctypes.c_void_p()
        if self.umem:
            lib.xsk_umem__delete(self.umem)
            self.umem = ctypes.c_void_p()

    def close(self) -> None:
        self._release()
        self.descs = None
        try:
            self.area.close()
        except BufferError:  # ctypes views into it remain; the process ends soon
            pass


class AfXdpSender:
    """One TX-only AF_XDP socket per interface, kept for the worker's life."""

    def __init__(self) -> None:
        _xdp_lib()
        self.socks: dict[str, _XskTx] = {}

    def _sock(self, ifname: str) -> _XskTx:
        if ifname not in self.socks:
            self.socks[ifname] = _XskTx(ifname)
        return self.socks[ifname]

    def probe(self, ifname: str) -> None:
        _probe_send(self, ifname)

    def send(self, ifname: str, frame: bytes, count: int, seconds: float) -> int:
        x = self._sock(ifname)
        if x.frame != frame:
            x.set_frame(frame)
        return x.send(count, seconds)

    def close(self) -> None:
        for x in self.socks.values():
            x.close()
        self.socks.clear()


# ---------------------------------------------------------------- trafgen


# One frame for a probe: to a MAC nobody has, local experimental EtherType 0x88b5, 64 bytes.
PROBE_FRAME = bytes.fromhex("02000000dead02000000000188b5") + bytes(50)


def _probe_send(sender, ifname: str) -> None:
    """Send PROBE_FRAME once out of `ifname` (the suite's sink); raise if it did not go. (trafgen's
    count comes from the interface counters, which may also hold the kernel's own IPv6 neighbour
    discovery on a link just brought up: at least one, not exactly one.)"""
    sent = sender.send(ifname, PROBE_FRAME, 1, 2.0)
    if sent < 1:
        raise OSError(errno.EIO, f"a probe frame out of {ifname} was not sent ({sent} sent)")


def _tx_frames(ifname: str) -> int:
    """Frames the interface sent or dropped on transmit (sysfs of the current namespace)."""
    st = Path("/sys/class/net") / ifname / "statistics"
    return int((st / "tx_packets").read_text()) + int((st / "tx_dropped").read_text())


class TrafgenSender:
    """Debian's trafgen (netsniff-ng), one process per run: ``--num`` and ``timeout -s INT``."""

    def __init__(self) -> None:
        exe = shutil.which("trafgen")
        if not exe:
            raise OSError(errno.ENOENT, "trafgen is not installed (Debian netsniff-ng)")
        self.exe = exe
        self.tmp = Path(tempfile.mkdtemp(prefix="xgbench-tg-"))

    def probe(self, ifname: str) -> None:
        _probe_send(self, ifname)

    def send(self, ifname: str, frame: bytes, count: int, seconds: float) -> int:
        conf = self.tmp / "frame.cfg"
        conf.write_text("{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }\n")
        before = _tx_frames(ifname)
        p = subprocess.run(
            [
                "timeout",
                "-s",
                "INT",
                f"{seconds:.3f}",
                self.exe,
                "--dev",
                ifname,
                "--conf",
                str(conf),
                "--num",
                str(count),
                "--cpus",
                "1",
                "--no-sock-mem",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=seconds + 30,
        )
        # 124: the time bound ended it. trafgen's last TX_RING flush can meet a full queue on a
        # loaded machine (EAGAIN) and exit 1 after sending: what went out is counted below anyway
        if p.returncode not in (0, 124) and "Flushing TX_RING failed: Resource temporarily unavailable" not in p.stderr:
            raise OSError(errno.EIO, f"trafgen exited {p.returncode}: {p.stderr.strip()[-300:]}")
        return _tx_frames(ifname) - before

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


SENDERS = {LIVE: LiveFramesSender, AF_XDP: AfXdpSender, TRAFGEN: TrafgenSender}


# ---------------------------------------------------------------- the worker


def worker_main(kind: str) -> int:
    """The generator process, run inside the generator namespace. Per stdin line
    ``probe IFNAME`` it answers ``{"ok": true}`` or ``{"error": REASON}``; per line ``send IFNAME
    COUNT SECONDS HEXFRAME`` it sends the frame out of IFNAME until COUNT frames or SECONDS, and
    answers one JSON line: frames sent, wall time, CPU time of this process and its children
    (trafgen), and of ksoftirqd."""

    def say(obj: dict) -> None:
        print(json.dumps(obj), flush=True)

    def why(e: Exception) -> str:
        text = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        return " ".join(text.split())  # one line

    try:
        sender = SENDERS[kind]()
    except Exception as e:  # noqa: BLE001  (reported to the parent as the reason, one line)
        sender, broken = None, why(e)
    for line in sys.stdin:
        cmd, *args = line.split()
        if sender is None:
            say({"error": broken})
            continue
        try:
            if cmd == "probe":
                if kind == LIVE:
                    why_not = probe_live()
                    if why_not:
                        raise OSError(errno.EPERM, why_not)
                else:
                    sender.probe(args[0])
                say({"ok": True})
                continue
            ifname, count, seconds, hexframe = args
            k0, t0 = ksoftirqd_cpu_s(), time.monotonic()
            r0 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
            sent = sender.send(ifname, bytes.fromhex(hexframe), int(count), float(seconds))
            wall = time.monotonic() - t0
            r1 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
            cpu = sum((b.ru_utime - a.ru_utime) + (b.ru_stime - a.ru_stime) for a, b in zip(r0, r1))
            say({"sent": sent, "wall_s": wall, "cpu_s": cpu, "ksoftirqd_s": ksoftirqd_cpu_s() - k0})
        except Exception as e:  # noqa: BLE001  (the parent stops with it, or takes the next generator)
            say({"error": why(e)})
    sender and sender.close()
    return 0
