"""A Flask app that saves orders with SQLAlchemy and publishes OrderPlaced on commit.

POST /orders writes the Order row and its OrderPlaced message (a row of the outbox table
`qchan.<QCHAN_OUTBOX>`) in one SQLAlchemy transaction: the message exists if and only if
the order committed. `qchan relay` forwards the outbox to SQS; `qchan worker billing:bill`
bills each order once. See README.md in this folder:

    flask --app app init-db
    flask --app app run
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs
import click
from flask import Flask, Response, jsonify, request
from sqlalchemy import DateTime, Engine, ForeignKey, Numeric, String, create_engine, func
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker

from qchan import SyncEnqueuer, enqueue_sync
from qchan.outbox import Outbox

log = logging.getLogger("flask_outbox")

EXTENSION = "shop"  # app.extensions[EXTENSION] is the app's Shop
#: The largest amount an order may have (the columns hold 10 digits, 2 after the point).
MAX_AMOUNT = Decimal("99999999.99")


def config_from_env() -> dict[str, str]:
    """The settings a deployment changes, from the environment (defaults: this machine).

    DATABASE_URL: the shop's PostgreSQL database (orders, bills, the outbox, the handled
    records); SHOP_DB_SCHEMA: the schema of the app's own tables (empty: the server's
    search_path); QCHAN_OUTBOX: the outbox table, qchan.<QCHAN_OUTBOX> (its own name, so
    that the Django example can share the database); QCHAN_HANDLED_TABLE: the billing
    handler's "handled" records.
    """
    return {
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        "SHOP_DB_SCHEMA": os.environ.get("SHOP_DB_SCHEMA", ""),
        "QCHAN_OUTBOX": os.environ.get("QCHAN_OUTBOX", "flask_outbox"),
        "QCHAN_HANDLED_TABLE": os.environ.get("QCHAN_HANDLED_TABLE", "qchan.handled"),
    }


# -- the tables ----------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(200))
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Bill(Base):
    """Written by billing.bill in the same transaction as its "handled" record (no unique
    constraint on order_id: the record alone keeps a redelivery from billing twice)."""

    __tablename__ = "bills"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    message_id: Mapped[str] = mapped_column(String(200))  # the OrderPlaced's qchan-id
    billed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def make_engine(database_url: str, schema: str = "") -> Engine:
    """An engine on `database_url` (postgresql://...) with psycopg 3, the app's tables
    in `schema` if given (first on the search_path)."""
    url = make_url(database_url).set(drivername="postgresql+psycopg")
    connect_args = {"options": f"-c search_path={schema}"} if schema else {}
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)


# -- the message ---------------------------------------------------------------------------


@attrs.frozen
class OrderPlaced:
    """Published (category "OrderPlaced") when, and only when, an order is committed."""

    order_id: int
    customer: str
    amount: Decimal  # travels as a string: exact


@attrs.frozen
class NewOrder:
    """A valid request body."""

    customer: str
    amount: Decimal


class InvalidOrder(ValueError):
    """The request body is not a valid order (the message names the field)."""


def parse_order(body: bytes) -> NewOrder:
    """`{"customer": "ann", "amount": "19.90"}` (amount: a string or a JSON number), or
    raise `InvalidOrder`."""
    try:
        data = json.loads(body)
    except ValueError as e:  # includes bytes that are not UTF-8
        raise InvalidOrder(f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidOrder(f"expected a JSON object, got {type(data).__name__}")
    extra = sorted(set(data) - {"customer", "amount"})
    if extra:
        raise InvalidOrder(f"unknown field(s): {', '.join(extra)}")
    customer = data.get("customer")
    if not isinstance(customer, str) or not customer.strip():
        raise InvalidOrder("customer: a non-empty string is required")
    if len(customer) > 200:
        raise InvalidOrder("customer: at most 200 characters")
    return NewOrder(customer=customer.strip(), amount=_amount(data.get("amount")))


def _amount(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidOrder('amount: a number or a decimal string ("19.90") is required')
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise InvalidOrder(f"amount: not a number: {value!r}") from None
    if not amount.is_finite() or amount <= 0:
        raise InvalidOrder(f"amount: must be more than 0, not {value!r}")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise InvalidOrder(f"amount: at most 2 decimal places, not {value!r}")
    if amount > MAX_AMOUNT:
        raise InvalidOrder(f"amount: at most {MAX_AMOUNT}, not {value!r}")
    return amount.quantize(Decimal("0.01"))


# -- the app -------------------------------------------------------------------------------


class Shop:
    """The app's database: its engine, a session per thread (`scoped_session`), and the
    outbox on that session, shared by every request thread."""

    def __init__(self, database_url: str, schema: str, outbox: str) -> None:
        self.engine = make_engine(database_url, schema)
        self.session: scoped_session[Any] = scoped_session(sessionmaker(self.engine))
        # Writes on the calling thread's session, in its transaction.
        self.outbox = Outbox(self.session, outbox, agent="flask-shop")
        self.order_placed: SyncEnqueuer[OrderPlaced] = enqueue_sync(OrderPlaced, self.outbox)

    def place_order(self, new: NewOrder) -> Order:
        """Add the order and write its OrderPlaced message in the session's transaction:
        the caller commits both, or rolls both back."""
        session = self.session()
        order = Order(customer=new.customer, amount=new.amount)
        session.add(order)
        session.flush()  # its id
        self.order_placed.put(
            OrderPlaced(order_id=order.id, customer=new.customer, amount=new.amount)
        )
        return order

    def create_tables(self) -> None:
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.session.remove()
        self.engine.dispose()


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The app; `config` overrides the environment's settings (`config_from_env`)."""
    app = Flask(__name__)
    app.config.from_mapping(config_from_env())
    app.config.from_mapping(config or {})
    shop = Shop(
        app.config["DATABASE_URL"], app.config["SHOP_DB_SCHEMA"], app.config["QCHAN_OUTBOX"]
    )
    app.extensions[EXTENSION] = shop

    @app.teardown_appcontext
    def remove_session(_: BaseException | None) -> None:
        shop.session.remove()  # rolls back whatever a failed request left open

    @app.post("/orders")
    def create_order() -> tuple[Response, int]:
        if not request.is_json:
            return _error(415, "send the order as JSON (Content-Type: application/json)")
        try:
            new = parse_order(request.get_data())
        except InvalidOrder as e:
            return _error(400, str(e))
        try:
            order = shop.place_order(new)
            shop.session.commit()  # the order and its message: both or neither
        except BaseException:
            shop.session.rollback()
            raise
        log.info("order %s placed: %s for %s", order.id, order.amount, order.customer)
        return jsonify(id=order.id), 201

    @app.cli.command("init-db")
    def init_db() -> None:
        """Create the orders and bills tables (the outbox makes its own on first use)."""
        shop.create_tables()
        click.echo(f"created tables {', '.join(sorted(Base.metadata.tables))}")

    return app
