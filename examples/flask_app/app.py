"""A Flask app that takes orders over HTTP and puts them on a queue.

POST /orders answers 202 only once the broker has accepted the order (the
synchronous enqueuer), so a client that got 202 knows the order is queued, and
a client that got 503 knows why it may not be. GET /health reports the
queue's counters.

Run it (from this folder):

    flask --app app run                                      # mem://flask-orders
    QCHAN_URL='amqp://guest:guest@127.0.0.1:5672/%2F?queue=orders' flask --app app run

See README.md in this folder.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.preconf.json import make_converter
from cattrs.v import format_exception
from flask import Flask, Response, jsonify, request

import qchan
from qchan import ChannelClosed, EnqueueError, Exponential
from qchan.adapters.embedded import EmbeddedAdapter

log = logging.getLogger("flask_app")

DEFAULT_URL = "mem://flask-orders"
EXTENSION = "qchan"  # app.extensions[EXTENSION] is the app's OrderQueue


# -- the message -------------------------------------------------------------------


@attrs.frozen
class Order:
    """What goes on the queue (category "Order"; the Django example's worker reads the same)."""

    id: str
    customer: str
    item: str
    quantity: int


def _not_empty(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise ValueError(f"{attribute.name} must not be empty")


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


@attrs.frozen
class NewOrder:
    """What a client POSTs. `id` is optional: send your own to make retries recognisable."""

    customer: str = attrs.field(validator=_not_empty)
    item: str = attrs.field(validator=_not_empty)
    quantity: int = attrs.field(validator=_positive)
    id: str | None = attrs.field(default=None)


class InvalidOrder(ValueError):
    """The request body is not a valid order; `problems` lists each one, naming the field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid order: " + "; ".join(problems))
        self.problems = problems


def _exact(type_: type[Any]) -> Any:
    """A strict structure hook: JSON `2.7` or `true` is not an int, `5` is not a str."""

    def structure(value: Any, _: Any) -> Any:
        if type(value) is not type_:
            raise TypeError(f"expected {type_.__name__}, got {type(value).__name__}")
        return value

    return structure


# cattrs as qchan uses it, but strict about types and unknown fields: a web API
# should say "quantity: expected int" rather than turn "2.7" into 2.
_INPUT = make_converter(forbid_extra_keys=True)
_INPUT.register_structure_hook(int, _exact(int))
_INPUT.register_structure_hook(str, _exact(str))


def _describe(exc: BaseException, type_: type[Any] | None) -> str:
    if type_ is None and isinstance(exc, ValueError):  # an attrs validator: its message
        return str(exc)  # already names the field
    return format_exception(exc, type_)


def parse_order(data: Any) -> NewOrder:
    """Validate a decoded JSON body into a `NewOrder`, or raise `InvalidOrder`."""
    if not isinstance(data, dict):
        raise InvalidOrder([f"expected a JSON object, got {type(data).__name__}"])
    try:
        return _INPUT.structure(data, NewOrder)
    except cattrs.BaseValidationError as e:
        problems = cattrs.transform_error(e, format_exception=_describe)
        raise InvalidOrder([p.removesuffix(" @ $") for p in problems]) from None


# -- the queue ---------------------------------------------------------------------


class OrderQueue:
    """The app's one queue and its synchronous sender, closed once at interpreter exit."""

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        self.queue = qchan.connect(url, **options)
        if isinstance(self.queue.adapter, EmbeddedAdapter):
            log.warning(
                "queue %s lives in this process only: no other process can take its orders, "
                "and those left at exit are lost; set QCHAN_URL to a broker "
                "(amqp://, sqs://, kafka://) to hand them to a worker",
                url,
            )
        self.orders = qchan.enqueue_sync(Order, self.queue)
        # Flask has no "app stops" hook (teardown_appcontext runs after every
        # request), so the process's exit closes the queue. See README.md.
        atexit.register(self.close)

    def close(self) -> None:
        atexit.unregister(self.close)
        self.orders.close()
        try:
            self.queue.close()
        except EnqueueError as e:  # cannot happen for puts that returned: they are on the broker
            log.error("closing %r: %s", self.queue, e)
        adapter = self.queue.adapter
        if isinstance(adapter, EmbeddedAdapter) and adapter.broker.pending:
            # An in-process queue dies with the process: say so rather than lose them quietly.
            log.warning(
                "%d accepted order(s) still on %s are lost when this process exits",
                adapter.broker.pending,
                self.queue.url,
            )


# -- the app -----------------------------------------------------------------------


def _error(status: int, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify(error=message, **extra), status


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app and open its queue.

    Configuration (environment variables, overridden by `config`):
    QCHAN_URL (default mem://flask-orders); QCHAN_PUT_TIMEOUT, seconds a request
    waits for the broker (default 5); QCHAN_OPTIONS, a dict of `qchan.connect`
    options (default: a retry policy that gives up within 2 s, well inside
    the put timeout, so a refusal is a definite answer rather than a timeout).
    """
    app = Flask(__name__)
    app.config.from_mapping(
        QCHAN_URL=os.environ.get("QCHAN_URL", DEFAULT_URL),
        QCHAN_PUT_TIMEOUT=float(os.environ.get("QCHAN_PUT_TIMEOUT", "5")),
        QCHAN_OPTIONS={"retry": Exponential(max_attempts=6, max_elapsed=2.0)},
        MAX_CONTENT_LENGTH=64 * 1024,  # an order is small; Werkzeug answers 413 beyond this
    )
    if config:
        app.config.update(config)
    orders = OrderQueue(app.config["QCHAN_URL"], app.config["QCHAN_OPTIONS"])
    app.extensions[EXTENSION] = orders
    timeout: float = app.config["QCHAN_PUT_TIMEOUT"]

    @app.post("/orders")
    def create_order() -> tuple[Response, int]:
        if not request.is_json:
            return _error(415, "send the order as JSON (Content-Type: application/json)")
        try:
            data = json.loads(request.get_data())
        except ValueError as e:  # includes bytes that are not UTF-8
            return _error(400, f"malformed JSON: {e}")
        try:
            new = parse_order(data)
        except InvalidOrder as e:
            return _error(400, str(e), problems=e.problems)
        order = Order(
            id=new.id or uuid.uuid4().hex,
            customer=new.customer,
            item=new.item,
            quantity=new.quantity,
        )
        try:
            orders.orders.put(order, timeout=timeout)
        except TimeoutError:
            log.warning("order %s: no answer from %r within %s s", order.id, orders.queue, timeout)
            return _error(
                503,
                f"the broker did not answer within {timeout} s; the order may still be "
                f"delivered (retry with the same id so that it can be recognised)",
                id=order.id,
            )
        except (EnqueueError, ChannelClosed) as e:
            cause = e.__cause__ or e
            log.warning("order %s: not accepted by %r: %s", order.id, orders.queue, cause)
            return _error(
                503,
                f"the broker did not accept the order: {cause}",
                id=order.id,
            )
        log.info(
            "order %s accepted: %s x %s for %s",
            order.id,
            order.quantity,
            order.item,
            order.customer,
        )
        return jsonify(id=order.id, status="accepted"), 202

    @app.get("/health")
    def health() -> tuple[Response, int]:
        q = orders.queue
        body = jsonify(queue=q.url, closed=q.closed, stats=attrs.asdict(q.stats()))
        return body, 503 if q.closed else 200

    return app


if __name__ == "__main__":  # python app.py: Flask's development server
    logging.basicConfig(level=logging.INFO)
    create_app().run()
