"""The Flask outbox example (examples/flask_outbox), run as its README says: the app
in-process (Flask's test client and CLI runner), `qchan relay` to SQS (moto's server) as a
process stopped by SIGTERM, and `qchan worker billing:bill` against real PostgreSQL.

Each test has its own PostgreSQL schema (the app's tables), outbox and SQS queue.
"""

from __future__ import annotations

import importlib.util
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
from types import ModuleType
from typing import IO, Any

import attrs
import boto3
import psycopg
import pytest
from psycopg import sql
from support.helpers import wait_for

pytestmark = pytest.mark.integration

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "flask_outbox"
HOST, PORT = "127.0.0.1", 5432
DSN = f"postgresql://postgres@{HOST}:{PORT}/test"
REGION = "us-east-1"
SKIPPED = "handled before; skipped"  # what billing.bill logs for a message it handled before


def _load_example() -> ModuleType:
    """Import app.py as a module of its own name, without putting examples/ on sys.path."""
    spec = importlib.util.spec_from_file_location("qchan_flask_outbox_example", EXAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Flask(__name__) and SQLAlchemy look it up there
    spec.loader.exec_module(module)
    return module


example = _load_example()


def _postgres_answers() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=2):
            return True
    except OSError:
        return False


@attrs.frozen
class Project:
    """One isolated instance of the example: its schema, outbox, SQS queue, environment."""

    schema: str
    outbox: str
    queue: str
    queue_url: str  # qchan's sqs:// URL
    env: dict[str, str]
    sqs: Any  # a boto3 SQS client on the endpoint

    @property
    def outbox_url(self) -> str:
        return f"{DSN}?queue={self.outbox}"


@pytest.fixture
def project(sqs_endpoint: str) -> Iterator[Project]:
    """A schema for the app's tables, an outbox and an SQS queue of the test's own; all
    dropped after."""
    if not _postgres_answers():
        message = f"PostgreSQL is not answering on {HOST}:{PORT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    tag = uuid.uuid4().hex[:10]
    schema, outbox, queue = f"flshop_{tag}", f"floutbox_{tag}", f"flask-orders-{tag}"
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    env = {
        **os.environ,  # sqs_endpoint put dummy AWS credentials there
        "DATABASE_URL": DSN,
        "SHOP_DB_SCHEMA": schema,
        "QCHAN_OUTBOX": outbox,
        "QCHAN_HANDLED_TABLE": f"{schema}.handled",
        "PYTHONUNBUFFERED": "1",
    }
    sqs = boto3.client("sqs", endpoint_url=sqs_endpoint, region_name=REGION)
    url = f"sqs://{queue}?endpoint={sqs_endpoint}&region={REGION}"
    try:
        yield Project(schema, outbox, queue, url, env, sqs)
    finally:
        try:
            sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=queue)["QueueUrl"])
        except sqs.exceptions.QueueDoesNotExist:
            pass
        with psycopg.connect(DSN, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
            for table in (outbox, f"{outbox}_dlq"):
                admin.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("qchan", table))
                )


@pytest.fixture
def app(project: Project) -> Iterator[Any]:
    """The example's app on the project's schema and outbox, with its tables (init-db)."""
    made = example.create_app(
        {
            "SHOP_DB_SCHEMA": project.schema,
            "QCHAN_OUTBOX": project.outbox,
            "QCHAN_HANDLED_TABLE": project.env["QCHAN_HANDLED_TABLE"],
        }
    )
    try:
        # flask --app app init-db
        result = made.test_cli_runner().invoke(args=["init-db"])
        assert result.exit_code == 0, result.output
        assert "created tables bills, orders" in result.output
        yield made
    finally:
        made.extensions[example.EXTENSION].close()


def query(statement: str, *params: Any, schema: str | None = None) -> list[tuple[Any, ...]]:
    options = f"-c search_path={schema}" if schema else ""
    with psycopg.connect(DSN, autocommit=True, options=options) as c:
        return c.execute(statement, params).fetchall()


def outbox_rows(project: Project) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(body, attributes) of each row waiting in the outbox."""
    got = query(f'SELECT body, attributes FROM qchan."{project.outbox}" ORDER BY id')
    return [(json.loads(bytes(body)), attributes) for body, attributes in got]


def handled(project: Project) -> int:
    """The billing handler's "handled" records (0 before its first, which makes the table)."""
    table = f'"{project.schema}".handled'
    if query("SELECT to_regclass(%s)", table) == [(None,)]:
        return 0
    return int(query(f"SELECT count(*) FROM {table}")[0][0])


def on_queue(project: Project) -> int:
    """Messages on the SQS queue, visible or not (0 once every one was deleted: acked)."""
    url = project.sqs.get_queue_url(QueueName=project.queue)["QueueUrl"]
    got = project.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(got["ApproximateNumberOfMessages"]) + int(
        got["ApproximateNumberOfMessagesNotVisible"]
    )


def start(project: Project, args: list[str], log: IO[str]) -> subprocess.Popen[str]:
    """`qchan ARGS` (as `python -m qchan`, the same command) in the example's folder, its
    output to `log` (a file: nobody reads a pipe while it runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "qchan", *args],
        cwd=EXAMPLE,
        env=project.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str], log: pathlib.Path) -> str:
    """SIGTERM, then the exit code must be 0 (a graceful stop); the process's output."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=20)
    output = log.read_text()
    assert code == 0, output
    return output


def test_committed_orders_are_published_to_sqs_and_billed_exactly_once(
    project: Project, app: Any, tmp_path: pathlib.Path
) -> None:
    client = app.test_client()
    shop = app.extensions[example.EXTENSION]

    # 3 orders placed, 5 refused (nothing written), 1 rolled back after its send.
    placed = []
    for customer, amount in (("ann", "19.90"), ("bob", 5), ("cy", 0.5)):
        resp = client.post("/orders", json={"customer": customer, "amount": amount})
        assert resp.status_code == 201, resp.get_json()
        placed.append(resp.get_json()["id"])
    for body, status, error in (
        (b'{"customer": "dee", "amount": ', 400, "malformed JSON"),
        (b'{"customer": "dee", "amount": "-3"}', 400, "amount: must be more than 0"),
        (b'{"customer": "dee", "amount": true}', 400, "amount: a number or a decimal string"),
        (b'{"customer": "  ", "amount": "1"}', 400, "customer: a non-empty string"),
        (b'{"customer": "dee"}', 400, "amount: a number"),
    ):
        resp = client.post("/orders", data=body, content_type="application/json")
        assert (resp.status_code, error in resp.get_json()["error"]) == (status, True), body
    resp = client.post("/orders", data="customer=dee", content_type="text/plain")
    assert resp.status_code == 415
    with app.app_context():
        order = shop.place_order(example.NewOrder(customer="eve", amount=Decimal("7.00")))
        rolled_back = order.id
        shop.session.rollback()  # after the send: the order and its message go together

    orders = query("SELECT id FROM orders ORDER BY id", schema=project.schema)
    assert [o for (o,) in orders] == placed
    waiting = outbox_rows(project)
    assert [body["order_id"] for body, _ in waiting] == placed
    assert [body["amount"] for body, _ in waiting] == ["19.90", "5.00", "0.50"]
    ids = {body["order_id"]: attributes["qchan-id"] for body, attributes in waiting}
    assert len(set(ids.values())) == 3

    # qchan relay FROM TO: until the outbox is empty, then SIGTERM (exit 0).
    relay_log = tmp_path / "relay.log"
    with relay_log.open("w") as log:
        relay = start(
            project, ["relay", project.outbox_url, f"{project.queue_url}&create=true"], log
        )
        try:
            wait_for(lambda: outbox_rows(project) == [], 20, "the outbox relayed")
        finally:
            output = stop(relay, relay_log)
    assert "stopped: 3 relayed, 0 dead-lettered" in output
    wait_for(lambda: on_queue(project) == 3, 10, "3 orders on SQS")

    # A duplicate delivery on purpose: a copy of one message (same body and attributes,
    # qchan-id included, as a relay resending after a crash sends it) next to the
    # original, which is made visible again at once.
    sqs = project.sqs
    queue_url = sqs.get_queue_url(QueueName=project.queue)["QueueUrl"]

    def one() -> Any:
        got = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=1, MessageAttributeNames=["All"]
        ).get("Messages")
        return got[0] if got else None

    original = wait_for(one, 10, "a message on SQS")
    attributes = {
        name: {"DataType": value["DataType"], "StringValue": value["StringValue"]}
        for name, value in original["MessageAttributes"].items()
    }
    assert attributes["qchan-id"]["StringValue"] == ids[json.loads(original["Body"])["order_id"]]
    sqs.send_message(QueueUrl=queue_url, MessageBody=original["Body"], MessageAttributes=attributes)
    sqs.change_message_visibility(
        QueueUrl=queue_url, ReceiptHandle=original["ReceiptHandle"], VisibilityTimeout=0
    )
    assert on_queue(project) == 4

    # qchan -v worker billing:bill URL: every delivery handled, each order billed once.
    worker_log = tmp_path / "worker.log"
    with worker_log.open("w") as log:
        worker = start(
            project, ["-v", "worker", "billing:bill", f"{project.queue_url}&wait=1"], log
        )
        try:
            wait_for(lambda: handled(project) == 3, 20, "3 handled records")
            wait_for(lambda: on_queue(project) == 0, 10, "every message deleted (acked)")
        finally:
            output = stop(worker, worker_log)
    billed = query(
        "SELECT order_id, amount, message_id FROM bills ORDER BY order_id, id",
        schema=project.schema,
    )
    assert billed == [
        (placed[0], Decimal("19.90"), ids[placed[0]]),
        (placed[1], Decimal("5.00"), ids[placed[1]]),
        (placed[2], Decimal("0.50"), ids[placed[2]]),
    ]
    assert rolled_back not in {order for order, _, _ in billed}
    assert output.count(SKIPPED) == 1, output
    assert on_queue(project) == 0
