"""The web process's queue: opened on the first order, shared by every request thread.

Not in `AppConfig.ready()`: that runs for every management command (migrate,
shell, the worker itself) and in runserver's file-watching parent process,
none of which sends orders. Opened lazily, a process that never takes an order
never connects. qchan closes open queues when the interpreter exits; every
order a view acknowledged (202) is already on the broker by then, so nothing
is left to flush.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings

import qchan
from qchan.adapters.embedded import EmbeddedAdapter

from .messages import Order

log = logging.getLogger(__name__)
_lock = threading.Lock()
_open: dict[str, tuple[qchan.Queue, qchan.SyncEnqueuer[Order]]] = {}


def order_sender() -> qchan.SyncEnqueuer[Order]:
    """The process's synchronous sender of orders to `settings.QCHAN_URL` (thread-safe).

    Keyed by URL, so that a test that overrides QCHAN_URL gets its own queue.
    """
    url: str = settings.QCHAN_URL
    with _lock:
        entry = _open.get(url)
        if entry is None:
            q = qchan.connect(url, **settings.QCHAN_OPTIONS)
            warn_if_in_process(q)
            entry = _open[url] = (q, qchan.enqueue_sync(Order, q))
        return entry[1]


def close_queues() -> None:
    """Close the queues this process opened (tests use it; at exit qchan does it anyway)."""
    with _lock:
        entries = list(_open.values())
        _open.clear()
    for q, sender in entries:
        sender.close()
        q.close()
        warn_if_left(q)


def warn_if_in_process(q: qchan.Queue) -> None:
    """Log a warning if `q` is a mem:// queue: no other process can reach it."""
    if isinstance(q.adapter, EmbeddedAdapter):
        log.warning(
            "queue %s lives in this process only: the web server and the worker must share "
            "a broker; set QCHAN_URL to amqp://, sqs:// or kafka://",
            q.url,
        )


def warn_if_left(q: qchan.Queue) -> None:
    """Log a warning if `q` is a mem:// queue that still holds orders (lost at exit)."""
    adapter = q.adapter
    if isinstance(adapter, EmbeddedAdapter) and adapter.broker.pending:
        log.warning(
            "%d order(s) still on %s are lost when this process exits",
            adapter.broker.pending,
            q.url,
        )
