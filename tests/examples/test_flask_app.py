"""The Flask example (examples/flask_app): 202 only once the broker has the order, 400 for bad
bodies, 503 (never 500) for broker trouble, and a health endpoint. Flask's test client, mem://."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from support.helpers import wait_for

from qchan import Constant, connect, dequeue
from qchan.adapters.embedded import broker

APP_PY = pathlib.Path(__file__).resolve().parents[2] / "examples" / "flask_app" / "app.py"


def _load_example() -> ModuleType:
    """Import app.py as a module of its own name, without putting examples/ on sys.path."""
    spec = importlib.util.spec_from_file_location("qchan_flask_example", APP_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Flask(__name__) looks itself up there
    spec.loader.exec_module(module)
    return module


example = _load_example()
ORDER = {"customer": "ann", "item": "book", "quantity": 2}


class Example:
    """One app on its own mem:// queue, and its test client."""

    def __init__(self, **config: Any) -> None:
        self.name = f"flask-{uuid.uuid4().hex[:8]}"
        self.app: Flask = example.create_app({"QCHAN_URL": f"mem://{self.name}", **config})
        self.client: FlaskClient = self.app.test_client()
        self.broker = broker(self.name)

    def close(self) -> None:
        self.app.extensions[example.EXTENSION].close()


@pytest.fixture
def make() -> Iterator[Any]:
    made: list[Example] = []

    def factory(**config: Any) -> Example:
        made.append(Example(**config))
        return made[-1]

    yield factory
    for e in made:
        e.close()


def test_an_accepted_order_is_on_the_broker_and_arrives(make: Any) -> None:
    ex = make()
    resp = ex.client.post("/orders", json=ORDER)
    assert resp.status_code == 202, resp.get_json()
    order_id = resp.get_json()["id"]
    # Synchronous: the broker had it before the response was written.
    assert ex.broker.depth == 1
    with connect(f"mem://{ex.name}", poll_wait=0.1) as q, dequeue(example.Order, q) as (rcv, ack):
        msg = rcv.recv(timeout=5)
        ack.send(msg)
    assert msg.object == example.Order(id=order_id, customer="ann", item="book", quantity=2)
    assert msg.category == "Order" and msg.attributes["Queue"] == ex.name
    assert ex.broker.depth == 0 and ex.broker.in_flight == 0


def test_a_client_chosen_id_is_kept(make: Any) -> None:
    ex = make()
    resp = ex.client.post("/orders", json={**ORDER, "id": "order-42"})
    assert (resp.status_code, resp.get_json()["id"]) == (202, "order-42")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"customer": "ann", "item": ', "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b'["ann", "book", 2]', "expected a JSON object, got list"),
        (b'{"customer": "ann", "quantity": 2}', "required field missing @ $.item"),
        (b'{"customer": "ann", "item": "book", "quantity": "2"}', "expected int @ $.quantity"),
        (b'{"customer": "ann", "item": "book", "quantity": 2.5}', "expected int @ $.quantity"),
        (b'{"customer": "ann", "item": "book", "quantity": 0}', "quantity must be at least 1"),
        (b'{"customer": " ", "item": "book", "quantity": 1}', "customer must not be empty"),
        (b'{"customer": "a", "item": "b", "quantity": 1, "qty": 1}', "extra fields found (qty)"),
    ],
    ids=[
        "truncated",
        "not-utf8",
        "list",
        "missing",
        "str-int",
        "float-int",
        "zero",
        "blank",
        "extra",
    ],
)
def test_a_bad_body_is_a_400_that_names_the_problem(make: Any, body: bytes, expected: str) -> None:
    ex = make()
    resp = ex.client.post("/orders", data=body, content_type="application/json")
    assert resp.status_code == 400
    assert expected in resp.get_json()["error"]
    assert ex.broker.depth == 0  # nothing was sent


def test_a_body_that_is_not_json_is_a_415(make: Any) -> None:
    ex = make()
    resp = ex.client.post("/orders", data="customer=ann", content_type="text/plain")
    assert resp.status_code == 415 and "application/json" in resp.get_json()["error"]


def test_a_refusing_broker_is_a_503_with_the_reason_then_recovers(make: Any) -> None:
    ex = make(QCHAN_OPTIONS={"retry": Constant(0.01, max_attempts=2)})
    ex.broker.fail_sends(2)  # both attempts fail: the retry policy gives up
    resp = ex.client.post("/orders", json=ORDER)
    assert resp.status_code == 503
    assert "did not accept" in resp.get_json()["error"]
    assert "injected send failure" in resp.get_json()["error"]
    assert ex.broker.depth == 0
    resp = ex.client.post("/orders", json=ORDER)  # the faults are spent
    assert resp.status_code == 202 and ex.broker.depth == 1


def test_a_slow_broker_is_a_503_that_says_it_may_still_be_delivered(make: Any) -> None:
    ex = make(QCHAN_OPTIONS={"retry": Constant(0.5, max_attempts=3)}, QCHAN_PUT_TIMEOUT=0.1)
    ex.broker.fail_sends(1)  # the first attempt fails, the retry comes after the request gave up
    resp = ex.client.post("/orders", json=ORDER)
    assert resp.status_code == 503
    assert "may still be delivered" in resp.get_json()["error"]
    assert resp.get_json()["id"]
    wait_for(lambda: ex.broker.depth == 1, timeout=5, what="the retried order on the broker")


def test_a_closed_queue_is_a_503(make: Any) -> None:
    ex = make()
    ex.close()
    resp = ex.client.post("/orders", json=ORDER)
    assert resp.status_code == 503 and "closed" in resp.get_json()["error"]
    assert ex.client.get("/health").status_code == 503


def test_health_reports_the_queue_stats(make: Any) -> None:
    ex = make()
    for _ in range(3):
        assert ex.client.post("/orders", json=ORDER).status_code == 202
    resp = ex.client.get("/health")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["queue"] == f"mem://{ex.name}" and body["closed"] is False
    assert body["stats"]["sent"] == 3 and body["stats"]["dead_lettered"] == 0


def test_close_is_idempotent(make: Any) -> None:
    ex = make()
    orders = ex.app.extensions[example.EXTENSION]
    ex.close()
    assert orders.queue.closed
    ex.close()  # the fixture closes it once more: no error


def test_the_process_exits_cleanly_with_the_queue_open() -> None:
    """Nobody closes the queue: exit does (atexit), promptly and without a traceback."""
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('app', {str(APP_PY)!r})\n"
        "app_module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['app'] = app_module\n"
        "spec.loader.exec_module(app_module)\n"
        "app = app_module.create_app({'QCHAN_URL': 'mem://exit-test'})\n"
        "resp = app.test_client().post('/orders', json={'customer': 'a', 'item': 'b', "
        "'quantity': 1})\n"
        "print(resp.status_code, flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "202"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "mem://exit-test lives in this process only" in proc.stderr
    assert "1 accepted order(s) still on mem://exit-test are lost when this process exits" in (
        proc.stderr
    )


def test_a_mem_queue_warns_that_it_lives_in_this_process(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="flask_app"):
        ex = make()
    [record] = [r for r in caplog.records if "lives in this process only" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert f"mem://{ex.name}" in record.getMessage() and "QCHAN_URL" in record.getMessage()


def test_orders_left_on_a_mem_queue_are_counted_at_close(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ex = make()
    for _ in range(2):
        assert ex.client.post("/orders", json=ORDER).status_code == 202
    caplog.clear()  # the start's warning
    with caplog.at_level("WARNING", logger="flask_app"):
        ex.close()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"2 accepted order(s) still on mem://{ex.name} are lost when this process exits"
    ]


def test_an_emptied_mem_queue_closes_without_a_warning(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ex = make()
    assert ex.client.post("/orders", json=ORDER).status_code == 202
    with connect(f"mem://{ex.name}", poll_wait=0.1) as q, dequeue(example.Order, q) as (rcv, ack):
        ack.send(rcv.recv(timeout=5))
    wait_for(lambda: ex.broker.pending == 0, timeout=5, what="the order acked")
    with caplog.at_level("WARNING", logger="flask_app"):
        ex.close()
    assert not [r for r in caplog.records if "still on" in r.getMessage()]
