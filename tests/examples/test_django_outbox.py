"""The Django outbox example (examples/django_outbox), run as its README says: `manage.py
migrate`, orders posted through the view (Django's test Client), `manage.py relay` to
RabbitMQ, and `qchan worker billing:bill`, against real PostgreSQL and RabbitMQ.

Every Django process is a subprocess with its own settings (environment variables): this
pytest process may have Django configured already for tests/examples/test_django_worker.py.
Each test has its own PostgreSQL schema (the app's tables), outbox and RabbitMQ queue.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import IO, Any

import attrs
import psycopg
import pytest
from psycopg import sql
from support.helpers import wait_for
from support.rabbitmq import get_one, ready_count, stays, url_for

pytestmark = pytest.mark.integration

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "django_outbox"
HOST, PORT = "127.0.0.1", 5432
DSN = f"postgresql://postgres@{HOST}:{PORT}/test"
SKIPPED = "handled before; skipped"  # what billing.bill logs for a message it handled before

# Run with `python -c` in the example's folder: posts orders through the view with Django's
# test Client, and places one more in a transaction that rolls back after the send.
CLIENT = """
import json, os
from decimal import Decimal

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_site.settings")
django.setup()
from django.db import transaction
from django.test import Client
from django.test.utils import setup_test_environment

from shop.messages import NewOrder
from shop.orders import place_order

setup_test_environment()  # allows the test client's host, "testserver"
client = Client()


def post(body, content_type="application/json"):
    response = client.post("/orders/", data=body, content_type=content_type)
    return response.status_code, response.json()


out = {"placed": [], "refused": []}
for customer, amount in (("ann", "19.90"), ("bob", 5), ("cy", 0.5)):
    status, body = post(json.dumps({"customer": customer, "amount": amount}))
    assert status == 201, (status, body)
    out["placed"].append(body["id"])
for bad in (
    '{"customer": "dee", "amount": ',
    '{"customer": "dee", "amount": "-3"}',
    '{"customer": "dee", "amount": "1.005"}',
    '{"customer": "", "amount": "1"}',
    '{"customer": "dee", "amount": "1", "coupon": "x"}',
):
    out["refused"].append(post(bad))
out["refused"].append(post("customer=dee", content_type="text/plain"))


class Undo(Exception):
    pass


try:
    with transaction.atomic():
        order = place_order(NewOrder(customer="eve", amount=Decimal("7.00")))
        out["rolled_back"] = order.pk
        raise Undo  # after the send: the order and its message go together
except Undo:
    pass
print(json.dumps(out))
"""


def _postgres_answers() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=2):
            return True
    except OSError:
        return False


@attrs.frozen
class Project:
    """One isolated instance of the example: its schema, outbox, queue and environment."""

    schema: str
    outbox: str
    queue: str
    env: dict[str, str]

    @property
    def queue_url(self) -> str:
        return self.env["QCHAN_RELAY_TO"]


@pytest.fixture
def project(rabbit: str, queue_name: str) -> Iterator[Project]:
    """A schema for the app's tables, an outbox and a RabbitMQ queue of the test's own,
    as the example's environment; all dropped after (the queue by `queue_name`)."""
    if not _postgres_answers():
        message = f"PostgreSQL is not answering on {HOST}:{PORT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    tag = uuid.uuid4().hex[:10]
    schema, outbox = f"djshop_{tag}", f"djoutbox_{tag}"
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    env = {
        **os.environ,
        "DATABASE_URL": DSN,
        "SHOP_DB_SCHEMA": schema,
        "QCHAN_OUTBOX": outbox,
        "QCHAN_RELAY_TO": url_for(queue_name),
        "QCHAN_HANDLED_TABLE": f"{schema}.handled",
        "DJANGO_SETTINGS_MODULE": "shop_site.settings",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_DEBUG", None)
    try:
        yield Project(schema, outbox, queue_name, env)
    finally:
        with psycopg.connect(DSN, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
            for table in (outbox, f"{outbox}_dlq"):
                admin.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("qchan", table))
                )


def run(project: Project, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A command in the example's folder, with the project's environment; fails on exit != 0."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=EXAMPLE,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def query(statement: str, *params: Any, schema: str | None = None) -> list[tuple[Any, ...]]:
    options = f"-c search_path={schema}" if schema else ""
    with psycopg.connect(DSN, autocommit=True, options=options) as c:
        return c.execute(statement, params).fetchall()


def outbox_rows(project: Project) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(body, attributes) of each row waiting in the outbox."""
    got = query(f'SELECT body, attributes FROM qchan."{project.outbox}" ORDER BY id')
    return [(json.loads(bytes(body)), attributes) for body, attributes in got]


def bills(project: Project) -> list[tuple[int, Decimal, str]]:
    """(order id, amount, message id) of each bill."""
    return [
        (int(order), Decimal(amount), str(mid))
        for order, amount, mid in query(
            "SELECT order_id, amount, message_id FROM shop_bill ORDER BY order_id, id",
            schema=project.schema,
        )
    ]


def handled(project: Project) -> int:
    """The billing handler's "handled" records (0 before its first, which makes the table)."""
    table = f'"{project.schema}".handled'
    if query("SELECT to_regclass(%s)", table) == [(None,)]:
        return 0
    return int(query(f"SELECT count(*) FROM {table}")[0][0])


def test_committed_orders_are_published_once_and_billed_exactly_once(
    project: Project, admin: Any, tmp_path: pathlib.Path
) -> None:
    # python manage.py migrate
    migrated = run(project, "manage.py", "migrate")
    assert "Applying shop.0001_initial... OK" in migrated.stdout

    # Orders through the view: 3 placed, 6 refused, 1 rolled back after its send.
    client = run(project, "-c", CLIENT)
    out = json.loads(client.stdout.strip().splitlines()[-1])
    placed: list[int] = out["placed"]
    rolled_back: int = out["rolled_back"]
    assert len(placed) == 3
    assert [status for status, _ in out["refused"]] == [400, 400, 400, 400, 400, 415]
    errors = [body["error"] for _, body in out["refused"]]
    assert errors[0].startswith("malformed JSON")
    assert "amount: must be more than 0" in errors[1]
    assert "at most 2 decimal places" in errors[2]
    assert "customer: a non-empty string" in errors[3]
    assert "unknown field(s): coupon" in errors[4]

    # Exactly the committed orders, each with its message, and nothing of the others.
    orders = query("SELECT id FROM shop_order ORDER BY id", schema=project.schema)
    assert [o for (o,) in orders] == placed
    waiting = outbox_rows(project)
    assert [body["order_id"] for body, _ in waiting] == placed
    assert [body["amount"] for body, _ in waiting] == ["19.90", "5.00", "0.50"]
    assert {attributes["Category"] for _, attributes in waiting} == {"OrderPlaced"}
    ids = {body["order_id"]: attributes["qchan-id"] for body, attributes in waiting}
    assert len(set(ids.values())) == 3

    # python manage.py relay --drain: everything to RabbitMQ, the outbox empty.
    relayed = run(project, "manage.py", "relay", "--drain")
    assert "relay: 3 relayed, 0 dead-lettered" in relayed.stdout
    assert outbox_rows(project) == []
    wait_for(lambda: ready_count(project.queue) == 3, 10, "the 3 relayed orders on RabbitMQ")

    # A duplicate delivery on purpose: the first message taken off the queue and put back
    # twice (same body, headers and qchan-id, as a relay resending after a crash sends it).
    _, props, body = get_one(admin, project.queue)
    assert json.loads(body)["order_id"] == placed[0]
    assert props.headers["qchan-id"] == ids[placed[0]]
    for _ in range(2):
        admin.basic_publish(exchange="", routing_key=project.queue, body=body, properties=props)
    wait_for(lambda: ready_count(project.queue) == 4, 10, "the original and its copy")

    # qchan worker billing:bill URL: every delivery handled, each order billed once.
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = _start_worker(project, log)
        try:
            wait_for(lambda: handled(project) == 3, 20, "3 handled records")
            # The 4th delivery, the copy, handled too (its ack follows, also on SIGTERM).
            wait_for(lambda: SKIPPED in log_path.read_text(), 10, "the copy skipped")
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=20)
    output = log_path.read_text()
    assert code == 0, output
    # Every delivery was acked: nothing comes back once the worker's connection is gone.
    assert stays(lambda: ready_count(project.queue) == 0, 0.5), output
    assert bills(project) == [
        (placed[0], Decimal("19.90"), ids[placed[0]]),
        (placed[1], Decimal("5.00"), ids[placed[1]]),
        (placed[2], Decimal("0.50"), ids[placed[2]]),
    ]
    assert rolled_back not in {order for order, _, _ in bills(project)}
    assert output.count(SKIPPED) == 1, output
    assert handled(project) == 3


def _start_worker(project: Project, log: IO[str]) -> subprocess.Popen[str]:
    """`qchan worker billing:bill URL` (as `python -m qchan`, the same command) in the
    example's folder, its output to `log` (a file: nobody reads a pipe while it runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "qchan", "worker", "billing:bill", project.queue_url],
        cwd=EXAMPLE,
        env=project.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
