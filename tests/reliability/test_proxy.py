"""The test-owned TCP proxy itself: forwarding, cut/restore, latency, dropped connections."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from support.helpers import wait_for

from .proxy import TcpProxy


class EchoServer:
    """Echoes every byte back; counts the connections it accepted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = self.sock.getsockname()
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    p = TcpProxy(echo.address)
    yield p
    p.close()


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    return got


def connect(p: TcpProxy) -> socket.socket:
    s = socket.create_connection(p.address, timeout=5)
    return s


def use(sock: socket.socket) -> None:
    """Send a byte and read: raises OSError on a connection that was cut or reset."""
    sock.sendall(b"x")
    if sock.recv(10) == b"":
        raise ConnectionError("closed")


def test_forwards_both_ways_byte_exact(proxy: TcpProxy) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one chunk
    with connect(proxy) as s:
        assert roundtrip(s, payload) == payload
    # The writer counts a chunk just after sending it on: the client may hold the last
    # bytes a moment before they are counted.
    wait_for(lambda: proxy.forwarded >= 2 * len(payload), 5.0, "every byte counted")
    assert proxy.address[0] == "127.0.0.1"


def test_cut_closes_open_connections_and_refuses_new_ones(proxy: TcpProxy) -> None:
    s = connect(proxy)
    assert roundtrip(s, b"hello") == b"hello"
    proxy.cut()
    with pytest.raises(OSError):  # reset, or EOF then a broken pipe
        use(s)
    s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=5)


def test_restore_accepts_again_on_the_same_port(proxy: TcpProxy) -> None:
    port = proxy.port
    proxy.cut()
    proxy.restore()
    assert proxy.port == port
    with connect(proxy) as s:
        assert roundtrip(s, b"back") == b"back"


def test_latency_delays_each_round_trip_without_capping_throughput(proxy: TcpProxy) -> None:
    with connect(proxy) as s:
        roundtrip(s, b"warm")
        started = time.monotonic()
        roundtrip(s, b"ping")
        fast = time.monotonic() - started
        proxy.latency(0.2)
        started = time.monotonic()
        roundtrip(s, b"ping")
        slow = time.monotonic() - started
        # Ten chunks sent back to back: they overlap on the link (about one
        # round trip in all), not ten round trips one after another.
        started = time.monotonic()
        for _ in range(10):
            s.sendall(b"x" * 100)
            time.sleep(0.005)  # separate chunks on the wire, not an outcome wait
        got = b""
        while len(got) < 1000:
            got += s.recv(65536)
        burst = time.monotonic() - started
    assert fast < 0.1
    assert 0.4 <= slow < 1.5, slow  # 200 ms each way
    assert burst < 1.5, burst


def test_stall_holds_every_byte_until_restore(proxy: TcpProxy) -> None:
    with connect(proxy) as s:
        roundtrip(s, b"warm")
        proxy.stall()
        s.sendall(b"held")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(10)  # nothing comes back while stalled
        with connect(proxy) as t:  # new connections are accepted, and held too
            t.settimeout(0.3)
            t.sendall(b"new")
            with pytest.raises(TimeoutError):
                t.recv(10)
            proxy.restore()
            t.settimeout(5)
            assert t.recv(10) == b"new"
        s.settimeout(5)
        assert s.recv(10) == b"held"


def test_restore_after_close_is_a_no_op(echo: EchoServer) -> None:
    p = TcpProxy(echo.address)
    p.close()
    p.restore()  # a fault's timer firing after the test ended
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(p.address, timeout=5)


def test_drop_connections_resets_open_ones_and_keeps_accepting(
    proxy: TcpProxy, echo: EchoServer
) -> None:
    a, b = connect(proxy), connect(proxy)
    roundtrip(a, b"a")
    roundtrip(b, b"b")
    wait_for(lambda: proxy.connections == 2, what="two connections")
    assert proxy.drop_connections() == 2
    for s in (a, b):
        with pytest.raises(OSError):
            use(s)
        s.close()
    with connect(proxy) as c:
        assert roundtrip(c, b"new") == b"new"
    assert proxy.accepted == 3
    assert echo.accepted == 3


def test_unreachable_target_closes_the_client(echo: EchoServer) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    address = dead.getsockname()
    dead.close()  # nothing listens there now
    with TcpProxy(address) as p, connect(p) as s:
        assert s.recv(10) == b""


def test_close_leaves_no_threads_behind(echo: EchoServer) -> None:
    before = {t.ident for t in threading.enumerate()}
    p = TcpProxy(echo.address)
    conns = [connect(p) for _ in range(3)]
    for c in conns:
        roundtrip(c, b"x")
    p.close()
    for c in conns:
        c.close()
    wait_for(
        lambda: (
            not [
                t
                for t in threading.enumerate()
                if t.ident not in before and t.name.startswith("proxy-")
            ]
        ),
        what="proxy threads to end",
    )
