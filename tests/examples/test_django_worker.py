"""The Django example (examples/django_worker): the view enqueues with the synchronous enqueuer,
the `qchan_worker` command handles and acks every order, and stops on --count, an event, or
SIGTERM/SIGINT (as a real `manage.py` process). mem:// queues, one per test."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client, override_settings
from support.helpers import start, wait_for

from qchan import Constant
from qchan.adapters.embedded import Broker, broker

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "examples",
    "django_worker",
)
ORDER = {"customer": "ann", "item": "book", "quantity": 2}
SUMMARY = re.compile(r"handled (\d+) order\(s\), (\d+) failed")


@pytest.fixture(scope="module", autouse=True)
def django_project() -> Iterator[None]:
    """Configure Django once for this module: the example on sys.path, its settings, setup()."""
    import django
    from django.test.utils import setup_test_environment, teardown_test_environment

    # The example's LOGGING configures the "qchan" logger, and Django sets the process's
    # time zone (TZ) from TIME_ZONE: give both back as they were.
    tz = os.environ.get("TZ")
    saved = {
        name: (lg.level, list(lg.handlers), lg.propagate)
        for name in ("qchan", "orders")
        for lg in [logging.getLogger(name)]
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(EXAMPLE)
        mp.setenv("DJANGO_SETTINGS_MODULE", "worker_site.settings")
        django.setup()
        setup_test_environment()  # allows the test client's host, "testserver"
        try:
            yield
        finally:
            teardown_test_environment()
            for name, (level, handlers, propagate) in saved.items():
                lg = logging.getLogger(name)
                lg.setLevel(level)
                lg.handlers[:] = handlers
                lg.propagate = propagate
            if tz is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = tz
            time.tzset()


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A fresh mem:// queue as settings.QCHAN_URL for the test; the view's queue closed after."""
    from orders.queue import close_queues

    name = f"django-{uuid.uuid4().hex[:8]}"
    with override_settings(QCHAN_URL=f"mem://{name}"):
        yield name
    close_queues()


def post(
    client: Client,
    body: Any = None,
    raw: bytes | None = None,
    path: str = "/orders/",
) -> Any:
    data = raw if raw is not None else json.dumps(body)
    return client.post(path, data=data, content_type="application/json")


def drained(b: Broker) -> bool:
    return b.depth == 0 and b.in_flight == 0


def test_the_view_enqueues_and_the_worker_handles_and_acks_every_order(queue_name: str) -> None:
    client = Client()
    ids = set()
    for i in range(10):
        resp = post(client, {**ORDER, "quantity": i + 1})
        assert resp.status_code == 202, resp.json()
        ids.add(resp.json()["id"])
    assert len(ids) == 10 and broker(queue_name).depth == 10  # synchronous: all on the broker
    out = io.StringIO()
    summary = start(
        call_command,
        "qchan_worker",
        "--workers",
        "1",
        "--count",
        "10",
        stdout=out,
    ).outcome(20)
    assert SUMMARY.search(summary).groups() == ("10", "0")  # type: ignore[union-attr]
    assert "handling orders from mem://" in out.getvalue()
    assert drained(broker(queue_name))  # every order acked, nothing in flight


def test_the_worker_runs_until_its_stop_event_with_several_workers(queue_name: str) -> None:
    stop = threading.Event()
    worker = start(call_command, "qchan_worker", "--workers", "3", stop=stop, stdout=io.StringIO())
    client = Client()
    for i in range(20):  # posted while the worker runs
        assert post(client, {**ORDER, "id": f"o-{i}"}).status_code == 202
    wait_for(
        lambda: broker(queue_name).depth == 0 and broker(queue_name).in_flight == 0,
        timeout=10,
        what="every order handled and acked",
    )
    assert worker.is_alive()  # only the event stops it
    stop.set()
    summary = worker.outcome(20)
    assert SUMMARY.search(summary).groups() == ("20", "0")  # type: ignore[union-attr]
    assert drained(broker(queue_name))
    assert not [t for t in threading.enumerate() if t.name.startswith(f"qchan-worker-{queue_name}")]


def test_a_failing_handler_nacks_and_the_order_comes_back(
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orders.handlers import OrderHandler

    calls: list[str] = []
    original = OrderHandler.__call__

    def flaky(self: OrderHandler, order: Any) -> None:
        calls.append(order.id)
        if len(calls) == 1:
            raise RuntimeError("database is down")
        original(self, order)

    monkeypatch.setattr(OrderHandler, "__call__", flaky)
    assert post(Client(), {**ORDER, "id": "flaky"}).status_code == 202
    summary = start(
        call_command,
        "qchan_worker",
        "--workers",
        "1",
        "--count",
        "1",
        stdout=io.StringIO(),
    ).outcome(20)
    assert SUMMARY.search(summary).groups() == ("1", "1")  # type: ignore[union-attr]
    assert calls == ["flaky", "flaky"] and drained(broker(queue_name))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"customer": "ann"', "malformed JSON"),
        (b'{"customer": "ann", "quantity": 2}', "required field missing @ $.item"),
        (b'{"customer": "ann", "item": "book", "quantity": "2"}', "expected int @ $.quantity"),
        (b'{"customer": "ann", "item": "book", "quantity": 0}', "quantity must be at least 1"),
    ],
    ids=["malformed", "missing", "wrong-type", "invalid"],
)
def test_a_bad_body_is_a_400_that_names_the_problem(
    queue_name: str,
    raw: bytes,
    expected: str,
) -> None:
    resp = post(Client(), raw=raw)
    assert resp.status_code == 400 and expected in resp.json()["error"]
    assert broker(queue_name).depth == 0


def test_orders_without_the_slash_is_the_same_view(queue_name: str) -> None:
    assert post(Client(), ORDER, path="/orders").status_code == 202
    assert broker(queue_name).depth == 1


def test_not_json_is_a_415_and_get_is_a_405(queue_name: str) -> None:
    client = Client()
    resp = client.post("/orders/", data="customer=ann", content_type="text/plain")
    assert resp.status_code == 415
    assert client.get("/orders/").status_code == 405


def test_a_refusing_broker_is_a_503_with_the_reason(queue_name: str) -> None:
    with override_settings(QCHAN_OPTIONS={"retry": Constant(0.01, max_attempts=2)}):
        broker(queue_name).fail_sends(2)
        resp = post(Client(), ORDER)
    assert resp.status_code == 503
    assert "injected send failure" in resp.json()["error"] and resp.json()["id"]
    assert broker(queue_name).depth == 0


def test_a_queue_that_cannot_open_is_a_503() -> None:
    with override_settings(QCHAN_URL="nope://orders"):
        resp = post(Client(), ORDER)
    assert resp.status_code == 503 and "cannot open the queue" in resp.json()["error"]


def test_bad_options_are_a_command_error(queue_name: str) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--workers must be at least 1"):
        call_command("qchan_worker", "--workers", "0")
    with pytest.raises(CommandError, match="cannot open nope://x"):
        call_command("qchan_worker", "--url", "nope://x")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_manage_py_qchan_worker_stops_gracefully_on_a_signal(sig: signal.Signals) -> None:
    """A real process: `python manage.py qchan_worker`, a signal once it runs, exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "qchan_worker", "--workers", "2"],
        cwd=EXAMPLE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "QCHAN_URL": "mem://sigterm-test"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "handling orders from mem://sigterm-test with 2 worker(s)" in first
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "handled 0 order(s), 0 failed" in out and f"stopped by {sig.name}" in out, out
    assert "Traceback" not in err
    assert "queue mem://sigterm-test lives in this process only" in err


def test_a_worker_on_mem_warns_at_start_and_counts_what_is_left(
    queue_name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from orders.handlers import OrderHandler

    def refuse_bad(self: OrderHandler, order: Any) -> None:
        if order.id == "bad":  # never acked: nacked for a later retry, so still on the queue
            raise RuntimeError("cannot handle")

    monkeypatch.setattr(OrderHandler, "__call__", refuse_bad)
    client = Client()
    for order_id in ("bad", "good"):
        assert post(client, {**ORDER, "id": order_id}).status_code == 202
    with caplog.at_level("WARNING", logger="orders"):
        start(
            call_command, "qchan_worker", "--workers", "1", "--count", "1", stdout=io.StringIO()
        ).outcome(20)
    warnings = [r for r in caplog.records if r.name.startswith("orders.queue")]
    url = f"mem://{queue_name}"
    assert all(r.levelname == "WARNING" for r in warnings)
    # The view's first order opens the web side's queue, then the worker opens its own.
    assert len(warnings) == 3
    for opened in warnings[:2]:
        assert f"queue {url} lives in this process only" in opened.getMessage()
        assert "QCHAN_URL" in opened.getMessage()
    assert warnings[-1].getMessage() == (
        f"1 order(s) still on {url} are lost when this process exits"
    )


def test_a_drained_worker_queue_ends_without_a_count(
    queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert post(Client(), ORDER).status_code == 202
    with caplog.at_level("WARNING", logger="orders"):
        start(
            call_command, "qchan_worker", "--workers", "1", "--count", "1", stdout=io.StringIO()
        ).outcome(20)
    assert not [r for r in caplog.records if "still on" in r.getMessage()]
