"""`python manage.py qchan_worker`: handle orders from the queue until told to stop.

Built on `qchan.serve`: `--workers` threads each take an order, call the
handler, ack it on return and nack it (redelivery) if the handler raises. On
SIGTERM or Ctrl-C each worker finishes the order in hand and acks it, orders
not yet handed to a worker go back to the broker, the queue closes, and the
command exits 0 with a summary.
"""

from __future__ import annotations

import signal
import threading
from argparse import ArgumentParser
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

import qchan
from orders.handlers import OrderHandler
from orders.messages import Order
from orders.queue import warn_if_in_process, warn_if_left

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Command(BaseCommand):
    help = (
        "Handle orders from settings.QCHAN_URL until SIGTERM or Ctrl-C (or --count orders), "
        "then finish the orders in hand, ack them, and exit 0."
    )
    # For call_command from code and tests: a threading.Event that stops the worker when set.
    stealth_options = ("stop",)

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--workers",
            type=int,
            default=4,
            metavar="N",
            help="threads handling orders at once (default 4)",
        )
        parser.add_argument(
            "--count",
            type=int,
            default=None,
            metavar="N",
            help="stop once N orders are handled (for scripts and tests). Orders other "
            "workers hold at that moment are finished too, so with --workers above 1 "
            "up to N + workers - 1 may be handled; --workers 1 makes it exact.",
        )
        parser.add_argument(
            "--url",
            default=None,
            help="the queue (default: settings.QCHAN_URL)",
        )

    def handle(self, *args: Any, **options: Any) -> str:
        workers: int = options["workers"]
        count: int | None = options["count"]
        if workers < 1:
            raise CommandError(f"--workers must be at least 1, not {workers}")
        if count is not None and count < 1:
            raise CommandError(f"--count must be at least 1, not {count}")
        stop: threading.Event = options.get("stop") or threading.Event()
        url: str = options["url"] or settings.QCHAN_URL
        handler = OrderHandler()
        try:
            q = qchan.connect(url, **settings.QCHAN_OPTIONS)
        except (qchan.QchanError, TypeError, ValueError) as e:  # bad URL, option or broker
            raise CommandError(f"cannot open {qchan.redact(url)}: {e}") from e
        warn_if_in_process(q)
        # Installed before the ready line (not left to serve): a script that sends SIGTERM
        # as soon as it reads that line must get a graceful stop, not the default (kill).
        with qchan.stop_on_signals(stop, STOP_SIGNALS) as received:
            self.stdout.write(
                f"qchan_worker: handling orders from {q.url} with {workers} worker(s); "
                f"SIGTERM or Ctrl-C stops"
            )
            self.stdout.flush()  # scripts wait for this line
            served = qchan.serve(
                _counting(handler, count, stop),
                Order,
                q,
                workers=workers,
                stop=stop,
                signals=(),  # stop_on_signals above handles them
            )
        warn_if_left(q)  # serve closed the queue: what a mem:// one holds dies with us
        why = f" (stopped by {received[0].name})" if received else ""
        return (
            f"qchan_worker: handled {served.handled} order(s), {served.failed} failed, "
            f"in {served.seconds:.1f} s{why}"
        )


def _counting(
    handler: Callable[[Order], None],
    count: int | None,
    stop: threading.Event,
) -> Callable[[Order], None]:
    """Call `handler`; once `count` orders were handled, set `stop`."""
    if count is None:
        return handler
    lock = threading.Lock()
    handled = 0

    def handle(order: Order) -> None:
        nonlocal handled
        handler(order)  # raises: not counted, the order is redelivered
        with lock:
            handled += 1
            if handled >= count:
                stop.set()

    return handle
