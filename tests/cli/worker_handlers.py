"""Handlers that tests/cli/test_worker_command.py runs under `qchan worker`.

Each handled message appends "<order id> <pid>" to the file QCHAN_TEST_HANDLED
names, one O_APPEND write per line, so the lines of several processes never mix
and the test can count handled messages per process. QCHAN_TEST_WORK is the
simulated work per message, in seconds. With QCHAN_TEST_SEED=URL,N importing
this module sends N orders to URL first (for mem://, which only the worker's
own process can reach).
"""

from __future__ import annotations

import os
import time

from qchan import Msg, connect, enqueue
from qchan.testing import Order


def _record(order_id: str) -> None:
    fd = os.open(os.environ["QCHAN_TEST_HANDLED"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{order_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def handle(order: Order) -> None:
    work = float(os.environ.get("QCHAN_TEST_WORK", "0"))
    if work:
        time.sleep(work)  # the handler's own work, not a wait for an outcome
    _record(order.id)


def handle_slowly(order: Order) -> None:
    _record(f"{order.id}-started")
    time.sleep(60)  # a handler busy for a minute: a graceful stop would wait for it


def handle_msg(msg: Msg[Order]) -> None:
    _record(f"{msg.object.id}:{msg.category}")


def untyped(order):  # type: ignore[no-untyped-def]
    _record(order.id)


def _seed() -> None:
    url, _, count = os.environ.get("QCHAN_TEST_SEED", "").rpartition(",")
    if not url:
        return
    q = connect(url)
    with enqueue(Order, q) as (out, _):
        for i in range(int(count)):
            out.send(Order(str(i), 1.0))


_seed()
