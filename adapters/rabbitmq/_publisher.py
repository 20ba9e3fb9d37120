"""The publisher side: one pika SelectConnection, created and driven only by the emitter thread.

Publisher confirms stay on, but waiting for each confirm before the next
publish (what `BlockingChannel.confirm_delivery()` does) caps throughput at
one broker round trip per message. Instead `send` publishes the whole batch,
then runs the connection's I/O loop -- only inside `send`, so the connection
stays confined to the emitter thread -- until every delivery tag is confirmed
(`Basic.Ack`, possibly `multiple`), nacked, or `confirm_timeout` passes.

A mandatory publish that no queue takes comes back as `Basic.Return` before
its ack; it is matched to its bag by `message_id`. Its outcome is a
`RejectedError` (dead-lettered by the kernel without retries): the routing
topology, not a passing fault, decides where a message goes.

If the connection or channel closes mid-batch, or a confirm is late, every
unconfirmed bag fails with `ConnectionLost` (the kernel retries it: a
duplicate if the broker had taken it, never a loss) and the connection is
dropped; the next `send` reconnects.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from qchan.errors import ConnectionLost, MessageTooLarge, QchanError, RejectedError
from qchan.message import Bag

from . import _pika as pk
from ._config import Settings, connection_parameters
from ._topology import setup
from ._wire import properties_for

__all__ = ["BrokerNack", "Publisher"]

log = logging.getLogger("qchan.adapters.rabbitmq")

_CONNECT_TIMEOUT = 30.0


class BrokerNack(QchanError):
    """The broker nacked a publish (an internal error, or a full queue with reject-publish)."""


class Publisher:
    def __init__(self, settings: Settings, report: Callable[[BaseException], None]) -> None:
        self._s = settings
        self._report = report
        self._conn: pk.SelectConn | None = None
        self._ch: pk.AsyncChannel | None = None
        self._next_tag = 1
        #: delivery tag -> (index in the current batch, message_id), in tag order.
        self._pending: dict[int, tuple[int, str]] = {}
        self._returned: dict[str, str] = {}
        self._outcomes: list[BaseException | None] = []
        #: Why the connection or channel closed under us (None while healthy).
        self._failure: BaseException | None = None
        self._done: Callable[[], bool] = lambda: True
        self._closing = False

    # ---- emitter thread ---------------------------------------------------

    def send(self, bags: Sequence[Bag]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = [None] * len(bags)
        self._outcomes = outcomes
        self._returned.clear()
        if self._conn is not None:
            self._run_until(lambda: True, 0.0)  # notice a close that happened while idle
            if self._failure is not None:
                self._drop(report=True)
        ch = self._ch if self._conn is not None else None
        if ch is None:
            ch = self._connect()
        s = self._s
        try:
            for i, bag in enumerate(bags):
                if len(bag.body) > s.max_message_size:
                    outcomes[i] = MessageTooLarge(
                        f"message of {len(bag.body)} bytes is larger than max_message_size="
                        f"{s.max_message_size} for queue {s.queue!r}"
                    )
                    continue
                message_id = bag.id or uuid.uuid4().hex
                ch.basic_publish(
                    s.exchange,
                    s.routing_key_for(bag.category),
                    bag.body,
                    properties_for(bag, message_id),
                    mandatory=True,
                )
                self._pending[self._next_tag] = (i, message_id)
                self._next_tag += 1
        except pk.AMQPError as e:
            self._failure = self._failure or e
        if self._failure is None:
            self._run_until(lambda: not self._pending, s.confirm_timeout)
        if self._pending:
            why = self._failure or TimeoutError(
                f"no publisher confirm within {s.confirm_timeout} s"
            )
            for i, _ in self._pending.values():
                outcomes[i] = ConnectionLost(
                    f"publish to queue {s.queue!r} at {s.display_url} not confirmed: "
                    + s.scrub(f"{type(why).__name__}: {why}")
                )
            self._pending.clear()
            # A broken or stalled connection may never answer close-ok: don't wait long.
            self._drop(report=self._failure is not None, patience=1.0)
        elif self._failure is not None:
            self._drop(report=True)
        return outcomes

    def _connect(self) -> pk.AsyncChannel:
        setup(self._s)  # declare or check the topology; raises ConnectionLost/TopologyError
        self._failure = None
        self._next_tag = 1
        conn = pk.select_connection(
            connection_parameters(self._s, "publisher"),
            self._on_open,
            self._on_open_error,
            self._on_close,
        )
        self._conn = conn
        self._run_until(lambda: self._ch is not None, _CONNECT_TIMEOUT)
        if self._ch is None:
            why = self._failure or TimeoutError(f"not open after {_CONNECT_TIMEOUT} s")
            self._drop(report=False)
            raise ConnectionLost(
                f"cannot open a publisher connection to {self._s.display_url} for queue "
                f"{self._s.queue!r}: " + self._s.scrub(f"{type(why).__name__}: {why}")
            )
        log.info("queue %s: publisher connected", self._s.queue)
        return self._ch

    def _run_until(self, done: Callable[[], bool], timeout: float) -> None:
        """Run the connection's I/O loop until `done()`, a failure, or `timeout` s.

        With timeout 0 it handles what is ready on the socket once and returns.
        """
        conn = self._conn
        if conn is None or (timeout > 0 and done()):
            return
        self._done = done
        loop = conn.ioloop
        timer = loop.call_later(timeout, loop.stop)
        try:
            loop.start()
        finally:
            loop.remove_timeout(timer)
            self._done = lambda: True

    def _check_done(self) -> None:
        if self._done() or self._failure is not None:
            assert self._conn is not None
            self._conn.ioloop.stop()

    # ---- callbacks (run inside _run_until, on the emitter thread) ---------

    def _on_open(self, conn: pk.SelectConn) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, ch: pk.AsyncChannel) -> None:
        ch.add_on_close_callback(self._on_channel_closed)
        ch.add_on_return_callback(self._on_return)

        def selected(_frame: Any) -> None:
            self._ch = ch
            self._check_done()

        ch.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected)

    def _on_open_error(self, conn: pk.SelectConn, error: BaseException | str) -> None:
        self._failure = error if isinstance(error, BaseException) else ConnectionLost(error)
        conn.ioloop.stop()

    def _on_close(self, conn: pk.SelectConn, reason: BaseException) -> None:
        if self._failure is None:
            self._failure = reason
        conn.ioloop.stop()

    def _on_channel_closed(self, ch: Any, reason: Exception) -> None:
        if self._failure is None:
            self._failure = reason
        if self._conn is not None:
            self._conn.ioloop.stop()

    def _on_return(
        self, ch: Any, method: pk.ReturnMethod, props: pk.BasicProperties, body: bytes
    ) -> None:
        if props.message_id is not None:
            self._returned[props.message_id] = (
                f"{method.reply_code} {method.reply_text}: exchange {method.exchange!r} has no "
                f"queue bound for routing key {method.routing_key!r}"
            )

    def _on_confirm(self, frame: pk.ConfirmFrame) -> None:
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        nacked = pk.is_nack(frame)
        if multiple:
            tags = [t for t in self._pending if t <= tag]  # dicts keep tag order
        else:
            tags = [tag] if tag in self._pending else []
        for t in tags:
            i, message_id = self._pending.pop(t)
            returned = self._returned.pop(message_id, None)
            if returned is not None:
                self._outcomes[i] = RejectedError(
                    f"RabbitMQ could not route the message for queue {self._s.queue!r}: {returned}"
                )
            elif nacked:
                self._outcomes[i] = BrokerNack(
                    f"RabbitMQ nacked the publish to queue {self._s.queue!r} (will retry)"
                )
        self._check_done()

    # ---- shutdown ---------------------------------------------------------

    def _drop(self, report: bool, patience: float = 1.0) -> None:
        """Forget the connection (closing it if it is still open); maybe report the loss."""
        conn, why = self._conn, self._failure
        self._conn = self._ch = None
        self._pending.clear()
        if conn is not None:
            self._shut(conn, patience)
        if report and why is not None and not self._closing:
            err = ConnectionLost(
                f"publisher connection for queue {self._s.queue!r} at {self._s.display_url} "
                "lost (" + self._s.scrub(f"{type(why).__name__}: {why}") + "); reconnecting"
            )
            log.warning("%s", err)
            self._report(err)
        self._failure = None

    def _shut(self, conn: pk.SelectConn, patience: float) -> None:
        try:
            if not (conn.is_closed or conn.is_closing):
                conn.close()
            if not conn.is_closed:
                self._conn = conn
                self._run_until(lambda: conn.is_closed, patience)
                self._conn = None
        except pk.AMQPError as e:
            log.debug("closing the publisher connection: %s", e)
        finally:
            conn.ioloop.close()

    def close(self) -> None:
        self._closing = True
        if self._conn is not None:
            self._drop(report=False, patience=5.0)
