"""Fixtures for the RabbitMQ tests: the real broker on 127.0.0.1:5672, one fresh queue per test.

A plugin of tests/conftest.py: the fixtures `rabbit`, `admin`, `queue_name` and
`make_adapter` are taken by name; the helpers below are imported from
`support.rabbitmq`.

Every test gets a uniquely named queue (`queue_name`) and the teardown deletes
it and its dead-letter queue. `admin` is a plain pika channel for setting up
and checking the broker side independently of qchan. `rabbitmqctl` helpers
close a client's connection from the broker side, the way a broker restart or
an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from qchan.adapter import Adapter, Hooks
from qchan.adapters.rabbitmq import RabbitMQAdapter, from_url
from qchan.message import Bag
from support.helpers import wait_for

HOST, PORT = "127.0.0.1", 5672
BROKER = f"amqp://guest:guest@{HOST}:{PORT}/%2F"


def broker_answers() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", name="rabbit")
def rabbit_fixture() -> str:
    """The broker URL (no queue); fails in CI, skips elsewhere, when nothing listens."""
    if not broker_answers():
        message = f"RabbitMQ is not answering on {HOST}:{PORT} (rabbitmq-server -detached)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return BROKER


def url_for(queue: str, **query: Any) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{BROKER}?queue={queue}{extra}"


@pytest.fixture(name="admin")
def admin_fixture(rabbit: str) -> Iterator[Any]:
    """A plain pika channel (not qchan) for arranging and checking the broker state."""
    conn = pika.BlockingConnection(pika.ConnectionParameters(HOST, PORT))
    try:
        yield conn.channel()
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            conn.close()


@pytest.fixture(name="queue_name")
def queue_name_fixture(rabbit: str) -> Iterator[str]:
    """A fresh queue name; the queue and its `.dlq` are deleted after the test."""
    name = f"qchan-test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_queues(name, f"{name}.dlq")


def delete_queues(*names: str) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters(HOST, PORT))
    try:
        for name in names:
            ch = conn.channel()
            ch.queue_delete(name)
    finally:
        conn.close()


class Recorder(Hooks):
    """Hooks that keep every reported error for the test to inspect."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def report(self, error: BaseException) -> None:
        self.errors.append(error)

    def of(self, kind: type[BaseException]) -> list[BaseException]:
        return [e for e in self.errors if isinstance(e, kind)]


@pytest.fixture(name="make_adapter")
def make_adapter_fixture(rabbit: str) -> Iterator[Callable[..., RabbitMQAdapter]]:
    """`make(queue, **options)`: an adapter bound to a Recorder (`adapter.hooks`), closed after."""
    made: list[RabbitMQAdapter] = []

    def make(queue: str, **options: Any) -> RabbitMQAdapter:
        adapter = from_url(url_for(queue), **options)
        adapter.bind(Recorder())
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        adapter.close()


def declare(queue: str, **options: Any) -> None:
    """Declare the queue as qchan does (so plain pika can publish to it before qchan runs)."""
    adapter = from_url(url_for(queue), **options)
    try:
        adapter.receive(0, 0)
    finally:
        adapter.close()


def bag(i: int = 0, category: str = "Order", **attributes: str) -> Bag:
    attrs = {"Category": category, "Source": "tests", "System": "amqp", "Queue": "q", **attributes}
    return Bag(category, b'{"i": %d}' % i, attrs, id=f"m-{i}", content_type="application/json")


def receive_n(adapter: Adapter, n: int, timeout: float = 10.0) -> list[Bag]:
    """Exactly `n` bags (fails on a timeout; more than n is a failure too)."""
    got: list[Bag] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"received {len(got)} of {n} messages within {timeout} s")
        got.extend(adapter.receive(n - len(got), min(left, 1.0)))
    assert len(got) == n
    return got


def queue_depth(admin: Any, queue: str) -> int:
    """Ready messages (not counting deliveries still un-acked)."""
    return int(admin.queue_declare(queue, passive=True).method.message_count)


def ready_count(queue: str) -> int:
    """Ready messages of `queue` on a connection of its own; 0 if there is no such queue."""
    conn = pika.BlockingConnection(pika.ConnectionParameters(HOST, PORT))
    try:
        return queue_depth(conn.channel(), queue)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            return 0
        raise
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            conn.close()


def stays(predicate: Callable[[], Any], seconds: float = 0.5) -> bool:
    """True if predicate() holds throughout `seconds` (for "nothing comes back" checks:
    the broker requeues a closed connection's deliveries a moment after the close)."""
    deadline = time.monotonic() + seconds
    pause = threading.Event()
    while time.monotonic() < deadline:
        if not predicate():
            return False
        pause.wait(0.02)
    return bool(predicate())


def get_one(admin: Any, queue: str, timeout: float = 10.0) -> tuple[Any, Any, bytes]:
    """basic_get with a deadline (auto-acked): (method, properties, body)."""

    def one() -> tuple[Any, Any, bytes] | None:
        method, props, body = admin.basic_get(queue, auto_ack=True)
        return (method, props, body) if method is not None else None

    result: tuple[Any, Any, bytes] = wait_for(one, timeout, f"a message on {queue}")
    return result


# ---- the broker's side: rabbitmqctl ---------------------------------------------


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=True
    )
    return done.stdout


def broker_ready() -> bool:
    """True once RabbitMQ accepts an AMQP connection (after start_app, say)."""
    try:
        conn = pika.BlockingConnection(
            pika.ConnectionParameters(HOST, PORT, connection_attempts=1, socket_timeout=2)
        )
    except (pika.exceptions.AMQPError, OSError):
        return False
    with contextlib.suppress(pika.exceptions.AMQPError):
        conn.close()
    return True


def ensure_broker_running() -> None:
    """After a test stopped the broker app: start it again (if needed) and wait for it."""
    if broker_ready():
        return
    subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, timeout=120, check=False)
    wait_for(broker_ready, 90.0, "RabbitMQ to accept connections again")


def connection_pids(name: str) -> list[str]:
    """Broker-side pids of the client connections whose connection_name is `name`."""
    out = rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid", "client_properties")
    pids = []
    for line in out.splitlines():
        pid, _, props = line.partition("\t")
        if re.search(r'\{"connection_name","' + re.escape(name) + r'"\}', props):
            pids.append(pid)
    return pids


def close_connection(name: str, timeout: float = 15.0) -> None:
    """Have the broker close the client connection called `name` (waits until it exists)."""
    pids = wait_for(lambda: connection_pids(name), timeout, f"connection {name!r}")
    for pid in pids:
        rabbitmqctl("close_connection", pid, "closed by the qchan tests")


# ---- TLS: a TLS-terminating proxy in front of the plain broker --------------------


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class Relay:
    """A TCP relay to the broker on 127.0.0.1:<port>, optionally TLS-terminating (asyncio thread).

    `freeze()` stops forwarding what the broker sends (confirms, deliveries)
    while the client's frames still go through; `sever()` aborts every relayed
    connection at once, like a network cut; `thaw()` undoes a freeze.
    """

    def __init__(self, cert: Path | None = None, key: Path | None = None) -> None:
        self._context: ssl.SSLContext | None = None
        if cert is not None:
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._context.load_cert_chain(cert, key)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._loop.run_forever()

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._relay, HOST, 0, ssl=self._context)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, PORT)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gated: bool) -> None:
            try:
                while data := await src.read(65536):
                    if gated and self._flowing is not None:
                        await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        self._writers.difference_update((writer, up_writer))

    def _call(self, fn: Callable[[], None]) -> None:
        async def run() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    def freeze(self) -> None:
        assert self._flowing is not None
        self._call(self._flowing.clear)

    def thaw(self) -> None:
        assert self._flowing is not None
        self._call(self._flowing.set)

    def sever(self) -> None:
        def abort() -> None:
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()
            if self._flowing is not None:
                self._flowing.set()

        self._call(abort)

    def close(self) -> None:
        def stop() -> None:
            if self._server is not None:
                self._server.close()

        self._call(stop)
        self.sever()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
