"""One consumer of the sample ring: `xdpguard run` drains xg_samples and fans the samples out.

A ring buffer has one consumer position, so two readers split its records between them. While
the daemon runs it is the only reader (it holds each interface's sample flock for its whole
life) and hands every sample to its own detection and, over a unix socket, to `top`, `stats` and
`capture`; they fall back to reading the ring themselves (taking turns) when no daemon answers.

- Socket: `$XDPGUARD_RUN_DIR/samples/<netns>/samples.sock` (mode 0600 in 0700 directories; a
  peer must be uid 0, checked with SO_PEERCRED), one per network namespace; `serve.lock` beside it
  is held by the serving daemon, so a second daemon of the namespace becomes a client instead.
- Protocol: the client sends one JSON line `{"iface": NAME, "record_size": N}`; the daemon answers
  one JSON line (`{"ok": true, ...}` or `{"ok": false, "error": ...}`), then frames: a header
  `<BI` (type, payload length); type 1 carries whole ring records (the `Sample` struct, N bytes
  each), type 2 the cumulative number of samples this client missed (`<Q`).
- Never blocking the daemon: each client has a bounded queue (CLIENT_QUEUE records); when it is
  full, new samples for that client are dropped and counted, and the count is sent with the next
  frame. The client keeps its own bounded buffer the same way; `missed` is both together.
"""

from __future__ import annotations

import collections
import json
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from ..kernel import dataplane
from .. import protection, state
from . import sampling
from ..kernel.abi import Sample
from ..errors import UserError

REC = sampling.SAMPLE_SIZE
CLIENT_QUEUE = 16384  # records queued per socket client before the daemon drops for it
LOCAL_QUEUE = 65536  # records a subscriber or a client buffers before it drops
FRAME = struct.Struct("<BI")
T_SAMPLES, T_MISSED = 1, 2
BATCH = 256  # records per frame
REFRESH_S = 1.0  # how often the daemon looks for interfaces attached, detached or replaced
SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)


def socket_dir(nskey: str | None = None) -> Path:
    return state.run_root() / "samples" / (nskey or state.netns_key())


def socket_path(nskey: str | None = None) -> Path:
    return socket_dir(nskey) / "samples.sock"


@contextmanager
def _addr(path: Path):
    """An AF_UNIX address for path: itself, or through an O_PATH fd of its directory when it is
    longer than sun_path takes (108 bytes; a deep $XDPGUARD_RUN_DIR, e.g. under pytest's tmp)."""
    if len(os.fsencode(str(path))) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _decode(raw: bytes) -> sampling.PacketSample:
    return sampling.PacketSample.from_record(Sample.from_buffer_copy(raw))


def _ts(raw: bytes) -> int:
    return int.from_bytes(raw[:8], "little")


class _Buffered:
    """A sample source fed by someone else (the daemon's ring thread, or a socket thread):
    a bounded queue of raw records; full → the newest are dropped and counted in `missed`."""

    takes_turns = False  # everyone sees every sample: no turns, the whole interval is sampled

    def __init__(self, maxlen: int = LOCAL_QUEUE):
        self.maxlen = maxlen
        self.q: collections.deque[bytes] = collections.deque()
        self.cond = threading.Condition()
        self.dropped = 0
        self.ended = False
        self._min_ts = 0
        self._started = False

    @property
    def missed(self) -> int:
        return self.dropped

    def put(self, recs: list[bytes]) -> None:
        with self.cond:
            room = self.maxlen - len(self.q)
            if room < len(recs):
                self.dropped += len(recs) - max(room, 0)
                recs = recs[: max(room, 0)]
            self.q.extend(recs)
            self.cond.notify_all()

    def drain(self, timeout_ms: int = 0) -> list[sampling.PacketSample]:
        with self.cond:
            if not self.q and timeout_ms > 0:
                if self.ended:  # nothing will come: wait as a ring would, never spin
                    self.cond.release()
                    try:
                        time.sleep(timeout_ms / 1000)
                    finally:
                        self.cond.acquire()
                else:
                    self.cond.wait(timeout_ms / 1000)
            got = list(self.q)
            self.q.clear()
        return [_decode(r) for r in got if _ts(r) >= self._min_ts]

    def discard_old(self) -> None:
        self._min_ts = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        with self.cond:
            self.q.clear()

    @contextmanager
    def exclusive(self, wait_s: float = 1.0):
        yield

    def window(
        self, seconds: float, wait_s: float = 1.0, stop: Callable[[], bool] | None = None
    ) -> list[sampling.PacketSample]:
        """The samples since the previous call (since now on the first), after waiting `seconds`
        (less when `stop()`, polled every 50 ms, says so)."""
        if not self._started:
            self._started = True
            self.discard_old()
        deadline = time.monotonic() + seconds
        while not self.ended:
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop()):
                break
            time.sleep(min(left, 0.05))
        return self.drain()

    def close(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the daemon's side ----


class Subscription(_Buffered):
    """The daemon's own consumer of one interface's samples (its detection)."""

    via = "daemon"

    def __init__(self, hub: Hub, iface: str):
        super().__init__()
        self.hub, self.iface = hub, iface

    def close(self) -> None:
        super().close()
        self.hub._unsubscribe(self)


class _Ring:
    def __init__(self, name: str):
        self.name = name
        self.iface = state.resolve_iface(name)
        self.lock_fd = state.flock_wait(sampling.lock_path(self.iface), 0)
        if self.lock_fd is None:
            raise sampling.SamplerBusy(f"another xdpguard process is reading the samples of {name}")
        try:
            self.guard = protection.open_guard(name)
            self.reader = sampling.SampleReader(self.guard.samples_fd(), self.iface, raw=True)
        except BaseException:
            os.close(self.lock_fd)
            raise
        self.prog_id = self.guard.att.prog_id
        self.epfd = self.reader.epoll_fd()
        self.delivered = 0

    def replaced(self) -> bool:
        att = dataplane.query(self.iface.index)
        return att is None or att.prog_id != self.prog_id

    def close(self) -> None:
        self.reader.close()
        self.guard.close()
        os.close(self.lock_fd)


class _Client:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = b""
        self.iface: str | None = None
        self.q: collections.deque[bytes] = collections.deque()
        self.out = b""
        self.missed = 0
        self.sent_missed = 0

    def offer(self, recs: list[bytes]) -> None:
        room = CLIENT_QUEUE - len(self.q)
        if room < len(recs):
            self.missed += len(recs) - max(room, 0)
            recs = recs[: max(room, 0)]
        self.q.extend(recs)

    def pending(self) -> bool:
        return bool(self.out or self.q or self.missed != self.sent_missed)

    def flush(self) -> bool:
        """Send what the socket takes without blocking; False when the client is gone."""
        while True:
            if not self.out:
                if self.missed != self.sent_missed:
                    self.out = FRAME.pack(T_MISSED, 8) + struct.pack("<Q", self.missed)
                    self.sent_missed = self.missed
                elif self.q:
                    n = min(BATCH, len(self.q))
                    body = b"".join(self.q.popleft() for _ in range(n))
                    self.out = FRAME.pack(T_SAMPLES, len(body)) + body
                else:
                    return True
            try:
                k = self.sock.send(self.out)
            except BlockingIOError:
                return True
            except OSError:
                return False
            self.out = self.out[k:]


class Hub:
    """The daemon's sample owner: one thread drains every protected interface's ring and hands
    each record to the subscribers and socket clients of that interface."""

    def __init__(self, report: Callable[[str], None] = lambda m: None, serve: bool = True):
        self.report = report
        self.serve = serve
        self.rings: dict[str, _Ring] = {}
        self.subs: dict[str, list[Subscription]] = {}
        self.clients: list[_Client] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.listener: socket.socket | None = None
        self.lock_fd: int | None = None
        self.thread: threading.Thread | None = None
        self.said: dict[str, str] = {}
        self.wake_r = self.wake_w = -1
        self.owner = False  # True once start() took the ring ownership
        self._refreshed = 0.0
        self._missed_gone: dict[str, int] = {}  # iface → what readers that left had missed
        self.on_samples: list[Callable[[str, list], None]] = []  # (iface, decoded samples): e.g. geo.CountryTally.feed

    # -- start and stop --

    def start(self) -> bool:
        """Take the namespace's ring ownership; False when another daemon already serves it (or
        the socket cannot be made: said through report): then nobody here owns the ring."""
        state.require_root()
        if self.serve:
            d = socket_dir()
            state.private_dir(d.parent)
            state.private_dir(d)
            fd = self._serve_lock(d / "serve.lock")
            if fd is None:
                self.report("another `xdpguard run` of this namespace serves the samples; reading them from it")
                return False
            self.lock_fd = fd
            p = socket_path()
            try:
                p.unlink()  # a stale socket of a daemon that died (we hold serve.lock: nobody serves)
            except FileNotFoundError:
                pass
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            old = os.umask(0o177)
            try:
                with _addr(p) as a:
                    s.bind(a)
                os.chmod(p, 0o600)
                s.listen(16)
            except OSError as exc:  # e.g. a $XDPGUARD_RUN_DIR too long for a socket path
                s.close()
                os.close(fd)
                self.lock_fd = None
                self.report(
                    f"cannot serve the samples on {p}: {exc.strerror or exc}; top, stats and capture "
                    "read the ring themselves, taking turns with detection"
                )
                return False
            finally:
                os.umask(old)
            s.setblocking(False)
            self.listener = s
        self.owner = True
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._loop, name="samples", daemon=True)
        self.thread.start()
        return True

    @staticmethod
    def _serve_lock(path: Path) -> int | None:
        """flock serve.lock; the file is removed by the daemon that leaves, so a lock taken on a
        file that was unlinked meanwhile is retried on the new one (never two owners)."""
        for _ in range(10):
            fd = state.flock_wait(path, 0)
            if fd is None:
                return None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        return None

    def close(self) -> None:
        self.stop.set()
        if not self.owner:
            return
        self._wake(b"x")
        if self.thread is not None:
            self.thread.join(timeout=5)
        for c in self.clients:
            c.sock.close()
        self.clients.clear()
        for r in self.rings.values():
            r.close()
        self.rings.clear()
        if self.listener is not None:
            try:
                socket_path().unlink()
            except FileNotFoundError:
                pass
            self.listener.close()
            self.listener = None
        if self.lock_fd is not None:
            d = socket_dir()
            for leftover in (d / "serve.lock",):  # removed while held: see _serve_lock
                try:
                    leftover.unlink()
                except FileNotFoundError:
                    pass
            try:
                d.rmdir()  # nothing left behind (the parent `samples` stays, like `locks`)
            except OSError:
                pass
            os.close(self.lock_fd)
            self.lock_fd = None
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.owner = False

    def _wake(self, what: bytes) -> None:
        try:
            os.write(self.wake_w, what)
        except (BlockingIOError, OSError):
            pass

    # -- subscribers in this process --

    def subscribe(self, iface: str) -> Subscription | None:
        """The samples of iface for this process; None when another daemon owns the ring (then a
        Collector reads them from that daemon's socket, as `top` does)."""
        if not self.owner:
            return None
        sub = Subscription(self, iface)
        with self.lock:
            self.subs.setdefault(iface, []).append(sub)
        self._wake(b"s")  # the ring thread opens the interface now, not in a second
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self.lock:
            lst = self.subs.get(sub.iface, [])
            if sub in lst:
                lst.remove(sub)
                self._missed_gone[sub.iface] = self._missed_gone.get(sub.iface, 0) + sub.dropped

    def delivered(self) -> dict[str, int]:
        return {n: r.delivered for n, r in list(self.rings.items())}

    def missed(self) -> dict[str, int]:
        """iface → samples dropped for readers (socket clients, subscribers) that read too slowly,
        cumulative since the daemon started (xdpguard_samples_missed_total)."""
        with self.lock:
            out = dict(self._missed_gone)
            for name, lst in self.subs.items():
                out[name] = out.get(name, 0) + sum(s.dropped for s in lst)
        for c in list(self.clients):
            if c.iface is not None:
                out[c.iface] = out.get(c.iface, 0) + c.missed
        for name in list(self.rings):
            out.setdefault(name, 0)
        return out

    # -- the thread --

    def _say(self, key: str, msg: str | None) -> None:
        if msg is None:
            self.said.pop(key, None)
        elif self.said.get(key) != msg:
            self.said[key] = msg
            self.report(msg)

    def _open(self, name: str) -> _Ring | None:
        r = self.rings.get(name)
        if r is not None:
            return r
        try:
            r = self.rings[name] = _Ring(name)
        except UserError:  # not attached, foreign, gone: the reconciler and detection say so; retried
            return None
        except (sampling.SamplerBusy, OSError) as exc:
            self._say(name, f"samples of {name}: {exc}; retrying")
            return None
        self._say(name, None)
        return r

    def _refresh(self) -> None:
        names = set(state.protected_ifaces())
        with self.lock:
            names |= {n for n, lst in self.subs.items() if lst}
        for name in list(self.rings):
            r = self.rings[name]
            try:
                gone = name not in names or r.replaced()
            except (UserError, OSError):
                gone = True
            if gone:
                r.close()
                del self.rings[name]
        for name in sorted(names):
            self._open(name)

    def _dispatch(self, name: str, recs: list[bytes]) -> None:
        if self.on_samples:
            decoded = [_decode(r) for r in recs]
            for fn in self.on_samples:
                try:
                    fn(name, decoded)
                except Exception as exc:  # a tally's failure never stops the fan-out
                    self._say(f"on_samples {name}", f"samples of {name}: {type(exc).__name__}: {exc}")
        with self.lock:
            subs = list(self.subs.get(name, []))
        for s in subs:
            s.put(recs)
        for c in self.clients:
            if c.iface == name:
                c.offer(recs)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, struct.calcsize("3i")))[1]
            if uid != 0:
                sock.close()
                continue
            sock.setblocking(False)
            self.clients.append(_Client(sock))

    def _hello(self, c: _Client) -> bool:
        try:
            data = c.sock.recv(4096)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        if c.iface is not None:
            return True  # nothing more is expected from a client; ignore
        c.inbuf += data
        if b"\n" not in c.inbuf:
            return len(c.inbuf) < 4096
        line = c.inbuf.split(b"\n", 1)[0]
        try:
            req = json.loads(line)
            name = str(req["iface"])
            size = int(req.get("record_size", 0))
        except (ValueError, KeyError, TypeError):
            c.out = b'{"ok": false, "error": "bad request"}\n'
            c.flush()
            return False
        if size != REC:
            c.out = (json.dumps({"ok": False, "error": f"record size {size}, the daemon's is {REC}"}) + "\n").encode()
            c.flush()
            return False
        r = self._open(name)
        if r is None:
            c.out = (
                json.dumps({"ok": False, "error": f"the daemon does not read the samples of {name}"}) + "\n"
            ).encode()
            c.flush()
            return False
        c.iface = name
        c.out = (json.dumps({"ok": True, "iface": name, "record_size": REC, "pid": os.getpid()}) + "\n").encode()
        return c.flush()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self._round()
            except Exception as exc:  # the sample thread never dies of one bad round
                self._say("loop", f"samples: {type(exc).__name__}: {exc}")
                time.sleep(0.2)

    def _round(self) -> None:
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_S:
            self._refreshed = now
            self._refresh()
        p = select.poll()
        p.register(self.wake_r, select.POLLIN)
        fds: dict[int, object] = {}
        if self.listener is not None:
            p.register(self.listener.fileno(), select.POLLIN)
            fds[self.listener.fileno()] = "listen"
        for r in self.rings.values():
            p.register(r.epfd, select.POLLIN)
            fds[r.epfd] = r
        for c in self.clients:
            p.register(c.sock.fileno(), select.POLLIN | (select.POLLOUT if c.pending() else 0))
            fds[c.sock.fileno()] = c
        timeout = max(1, int((self._refreshed + REFRESH_S - time.monotonic()) * 1000))
        events = p.poll(min(timeout, 200))
        gone: set[int] = set()
        for fd, ev in events:
            if fd == self.wake_r:
                try:
                    if b"s" in os.read(self.wake_r, 64):
                        self._refreshed = 0.0
                except BlockingIOError:
                    pass
                continue
            what = fds.get(fd)
            if what == "listen":
                self._accept()
            elif isinstance(what, _Client):
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR) and not self._hello(what):
                    gone.add(id(what))
        for r in list(self.rings.values()):  # drain every ring each round (cheap when empty)
            recs = r.reader.drain()
            if recs:
                r.delivered += len(recs)
                self._dispatch(r.name, recs)
        for c in self.clients:
            if id(c) not in gone and c.iface is not None and c.pending() and not c.flush():
                gone.add(id(c))
        if gone:
            for c in [c for c in self.clients if id(c) in gone]:
                c.sock.close()
                if c.iface is not None:
                    with self.lock:
                        self._missed_gone[c.iface] = self._missed_gone.get(c.iface, 0) + c.missed
            self.clients = [c for c in self.clients if id(c) not in gone]


# ---- the clients' side ----


class Stream(_Buffered):
    """Samples of one interface from the daemon's socket (a thread reads it into the buffer)."""

    via = "daemon"

    def __init__(self, sock: socket.socket, iface: str):
        super().__init__()
        self.sock, self.iface = sock, iface
        self.server_missed = 0
        self.thread = threading.Thread(target=self._read, name="samples-client", daemon=True)
        self.thread.start()

    @property
    def missed(self) -> int:
        return self.dropped + self.server_missed

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                buf += data
                while len(buf) >= FRAME.size:
                    kind, n = FRAME.unpack_from(buf)
                    if len(buf) < FRAME.size + n:
                        break
                    body, buf = buf[FRAME.size : FRAME.size + n], buf[FRAME.size + n :]
                    if kind == T_SAMPLES:
                        self.put([body[i : i + REC] for i in range(0, len(body) - REC + 1, REC)])
                    elif kind == T_MISSED and n == 8:
                        self.server_missed = struct.unpack("<Q", body)[0]
        except OSError:
            pass
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def close(self) -> None:
        super().close()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(timeout=2)
        self.sock.close()


def connect(iface: str, timeout_s: float = 2.0) -> Stream | None:
    """A stream of the daemon's samples of `iface`; None when no daemon serves them."""
    p = socket_path()
    if not p.exists():
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout_s)
    try:
        with _addr(p) as a:
            s.connect(a)
        s.sendall((json.dumps({"iface": iface, "record_size": REC}) + "\n").encode())
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(1)
            if not chunk:
                raise ConnectionError("closed")
            line += chunk
        reply = json.loads(line)
    except (OSError, ValueError):
        s.close()
        return None
    if not isinstance(reply, dict) or not reply.get("ok"):
        s.close()
        return None
    s.settimeout(None)
    return Stream(s, iface)


def open_source(guard: protection.Guard):
    """The daemon's stream of the guard's interface when a daemon serves it, else the ring."""
    stream = connect(guard.iface.name)
    if stream is not None:
        return stream
    return sampling.SampleReader(guard.samples_fd(), guard.iface)
