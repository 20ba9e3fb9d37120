"""A loopback TCP proxy the tests own, for network faults without toxiproxy.

    proxy = TcpProxy(("127.0.0.1", 5672))       # listens on 127.0.0.1:<port>
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F?queue=q"
    proxy.cut()              # every connection closed, new ones refused
    proxy.restore()          # accepting again, on the same port
    proxy.latency(0.2)       # each chunk forwarded 200 ms after it arrived
    proxy.drop_connections() # close what is open now; new connections still work
    proxy.stall()            # a black hole: connections stay open, nothing gets through
    proxy.close()

Why threads and a delay line: each connection has, per direction, a reader
thread that timestamps every chunk it receives and a writer thread that sends
it on once `latency` has passed. Chunks in flight overlap, as on a real long
link, so latency slows round trips without capping throughput at one chunk
per delay (a reader that slept before forwarding would).

`cut()` closes the listening socket, so a client's `connect()` is refused
(ECONNREFUSED, what a stopped broker looks like), rather than accepted and
then closed. `restore()` binds the same port again. The port is chosen below
the kernel's ephemeral range so no outgoing connection can be holding it
while the proxy is cut. Loopback only: the proxy binds 127.0.0.1 and nothing
else.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import struct
import threading
import time
from collections import deque

__all__ = ["TcpProxy"]

log = logging.getLogger("qchan.tests.proxy")

_CHUNK = 64 * 1024
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class _Pipe:
    """One direction of one connection: a reader, a delay line, a writer."""

    def __init__(
        self, conn: _Conn, proxy: TcpProxy, src: socket.socket, dst: socket.socket, label: str
    ):
        self.conn = conn
        self.proxy = proxy
        self.src = src
        self.dst = dst
        self._cond = threading.Condition()
        self._line: deque[tuple[float, bytes]] = deque()
        self._eof = False
        self.reader = threading.Thread(target=self._read, name=f"proxy-read-{label}", daemon=True)
        self.writer = threading.Thread(target=self._write, name=f"proxy-write-{label}", daemon=True)

    def start(self) -> None:
        self.reader.start()
        self.writer.start()

    def _read(self) -> None:
        try:
            while True:
                data = self.src.recv(_CHUNK)
                if not data:
                    break
                due = time.monotonic() + self.proxy._latency
                with self._cond:
                    self._line.append((due, data))
                    self._cond.notify()
        except OSError:
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify()
            self.conn._thread_done()

    def _write(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._line and not self._eof:
                        self._cond.wait()
                    if not self._line:  # eof and nothing left to forward
                        break
                    due, data = self._line[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        self._cond.wait(wait)
                        continue
                    self._line.popleft()
                self.proxy._flowing.wait()  # held here while the link is stalled
                self.dst.sendall(data)
                self.proxy._count(len(data))
            # The source closed: pass the half-close on, as TCP would.
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        except OSError:
            pass
        finally:
            self.conn._thread_done()


class _Conn:
    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket, n: int):
        self.client = client
        self.upstream = upstream
        self._lock = threading.Lock()
        self._running = 4  # two pipes, a reader and a writer each
        self.pipes = (
            _Pipe(self, proxy, client, upstream, f"{proxy.port}-{n}-up"),
            _Pipe(self, proxy, upstream, client, f"{proxy.port}-{n}-down"),
        )
        for p in self.pipes:
            p.start()

    def _thread_done(self) -> None:
        """The last of the four threads closes both sockets (both sides ended)."""
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self.client.close()
            self.upstream.close()

    def close(self) -> None:
        for s in (self.client, self.upstream):
            try:
                # RST rather than FIN: a cut link does not say goodbye politely.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError:
                pass
            try:
                s.shutdown(socket.SHUT_RD)  # wakes our reader; sends nothing to the peer
            except OSError:
                pass
            s.close()  # with SO_LINGER 0: an RST

    def alive(self) -> bool:
        return any(p.reader.is_alive() or p.writer.is_alive() for p in self.pipes)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.pipes:
            for t in (p.reader, p.writer):
                t.join(max(0.0, deadline - time.monotonic()))


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`; see the module docstring for the faults."""

    def __init__(self, target: tuple[str, int], *, port: int | None = None) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._latency = 0.0
        self._bytes = 0
        self._bytes_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._closed = False
        self._flowing = threading.Event()
        self._flowing.set()
        #: Connections accepted since the proxy started (all of them, not only open ones).
        self.accepted = 0
        self.port = port or self._bind_free()
        if self._listener is None:
            self._listen()

    # -- the public faults ----------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def forwarded(self) -> int:
        """Bytes forwarded so far, both directions (a chunk counts once sent on)."""
        with self._bytes_lock:
            return self._bytes

    def _count(self, n: int) -> None:
        # Two writer threads per connection: `+=` unlocked lost updates (a chunk of a
        # 2 MiB round trip went missing from the count about once in 20 runs).
        with self._bytes_lock:
            self._bytes += n

    @property
    def connections(self) -> int:
        """Connections open now."""
        with self._lock:
            self._conns = [c for c in self._conns if c.alive()]
            return len(self._conns)

    def cut(self) -> None:
        """Close every connection and refuse new ones until `restore()`."""
        with self._lock:
            listener, self._listener = self._listener, None
            acceptor, self._acceptor = self._acceptor, None
        if listener is not None:
            # close() alone neither wakes a thread blocked in accept() nor stops the
            # socket listening (that thread still holds it); shutdown() does both.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        if acceptor is not None:
            acceptor.join(5)
        self.drop_connections()
        log.info("proxy %s -> %s: cut", self.port, self.target)

    def stall(self) -> None:
        """Forward nothing until `restore()`: connections stay open and new ones are
        accepted, but every byte waits (a black hole, as a dead route or a lost NAT
        entry looks to both ends; no reset tells them)."""
        self._flowing.clear()
        log.info("proxy %s -> %s: stalled", self.port, self.target)

    def restore(self) -> None:
        """Accept connections again, on the same port, and forward what a stall held (a
        no-op once closed: a fault's timer may end after its test did)."""
        self._flowing.set()
        with self._lock:
            if self._closed or self._listener is not None:
                return
        deadline = time.monotonic() + 10
        while True:
            try:
                self._listen()
                break
            except OSError as e:  # pragma: no cover - the port below the ephemeral range
                if e.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                threading.Event().wait(0.05)
        log.info("proxy %s -> %s: restored", self.port, self.target)

    def latency(self, seconds: float) -> None:
        """Forward each chunk `seconds` after it arrived (both directions; 0 turns it off)."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0 s, not {seconds}")
        self._latency = seconds

    def drop_connections(self) -> int:
        """Reset every open connection (both sides); keep accepting new ones. Returns how many."""
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        for c in conns:
            c.join(5)
        return len(conns)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._flowing.set()  # let held writers run into the closed sockets and end
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "cut" if self._listener is None else "open"
        return f"<TcpProxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]} {state}>"

    # -- internals --------------------------------------------------------------

    def _bind_free(self) -> int:
        """A free port below the ephemeral range (see the module docstring)."""
        high = _ephemeral_low() - 1
        rng = random.Random()
        for _ in range(200):
            port = rng.randint(20000, high)
            try:
                self._listen(port)
            except OSError:
                continue
            return port
        raise RuntimeError("no free port for the proxy")

    def _listen(self, port: int | None = None) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port or self.port))
            s.listen(64)
        except OSError:
            s.close()
            raise
        acceptor = threading.Thread(
            target=self._accept,
            args=(s,),
            name=f"proxy-accept-{s.getsockname()[1]}",
            daemon=True,
        )
        with self._lock:
            self._listener = s
            self._acceptor = acceptor
        acceptor.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener closed: cut() or close()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError as e:
                log.info("proxy %s: upstream %s unreachable: %s", self.port, self.target, e)
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    client.close()
                    upstream.close()
                    return
                self.accepted += 1
                self._conns.append(_Conn(self, client, upstream, self.accepted))
