"""Options are checked where they are given (issue 14, point 2; DESIGN.md section 9).

Each misuse raises at the call that made it, with the option's name in the
message, the valid names and the nearest one; nothing is opened, nothing hangs.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from qchan import Chan, Constant, Queue, URLError, connect, dequeue, enqueue, enqueue_sync, serve
from qchan.adapters.embedded import EmbeddedAdapter
from qchan.options import OptionError
from qchan.testing import Order

AMQP = "amqp://guest:guest@127.0.0.1:1/%2F"


@pytest.fixture
def url() -> str:
    return f"mem://opt-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"batchsize": 10}, "unknown option 'batchsize' (did you mean 'batch_size'?)"),
        ({"in_fligth": 10}, "did you mean 'in_flight'?"),
        ({"visiblity_timeout": 5}, "did you mean 'visibility_timeout'?"),
        ({"linger": "5ms"}, "linger must be a number of seconds (e.g. 0.005 for 5 ms), not '5ms'"),
        ({"batch_size": "10"}, "batch_size must be an int >= 1 or None, not '10'"),
        ({"batch_size": 0}, "batch_size must be >= 1, not 0"),
        ({"in_flight": 2.5}, "in_flight must be an int >= 1, not 2.5"),
        ({"in_flight": True}, "in_flight must be an int >= 1, not True"),
        ({"time_to_flight": 0}, "time_to_flight must be > 0 s, not 0"),
        ({"extend_every": -1}, "extend_every must be > 0 s, not -1"),
        ({"close_timeout": float("nan")}, "close_timeout must be a finite number"),
        ({"retry": 3}, "retry must be a qchan.Backoff policy"),
        ({"errors": []}, "errors must be a qchan.Chan"),
        ({"visibility_timeout": "5"}, "visibility_timeout must be a number of seconds"),
        ({"max_deliveries": 0}, "max_deliveries must be >= 1, not 0"),
    ],
)
def test_connect_names_the_bad_keyword(url: str, options: dict[str, Any], said: str) -> None:
    with pytest.raises(OptionError) as info:
        connect(url, **options)
    assert said in str(info.value)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_an_unknown_name_lists_the_valid_ones(url: str) -> None:
    with pytest.raises(TypeError) as info:
        connect(url, colour="blue")
    text = str(info.value)
    for name in ("batch_size", "in_flight", "visibility_timeout", "max_deliveries"):
        assert name in text


@pytest.mark.parametrize(
    ("query", "error", "said"),
    [
        ("batchsize=10", URLError, "did you mean 'batch_size'?"),
        ("visibility=5", URLError, "did you mean 'visibility_timeout'?"),
        ("linger=5ms", URLError, "bad value '5ms' for linger="),
        ("in_flight=0", OptionError, "in_flight must be >= 1, not 0"),
        ("max_deliveries=x", URLError, "bad value 'x' for max_deliveries="),
    ],
)
def test_url_query_keys_are_checked_alike(
    url: str, query: str, error: type[Exception], said: str
) -> None:
    with pytest.raises(error) as info:
        connect(f"{url}?{query}")
    assert said in str(info.value)


def test_queue_options_may_come_from_the_url_and_a_keyword_wins(url: str) -> None:
    with connect(f"{url}?in_flight=100&linger=0.02&visibility_timeout=5", in_flight=7) as q:
        assert (q.options.in_flight, q.options.linger) == (7, 0.02)
        assert q.adapter.broker.visibility_timeout == 5.0  # type: ignore[attr-defined]
    with connect(f"{url}?in_flight=100") as q:
        assert q.options.in_flight == 100


@pytest.mark.parametrize(
    ("target", "options", "said"),
    [
        ("kafka://127.0.0.1:1/t", {"grup": "g"}, "did you mean 'group'?"),
        ("kafka://127.0.0.1:1/t?grup=g", {}, "did you mean 'group'?"),
        (f"{AMQP}?queue=q", {"prefetchh": 5}, "did you mean 'prefetch'?"),
        (f"{AMQP}?queue=q&prefetchh=5", {}, "did you mean 'prefetch'?"),
        ("sqs://q?endpoint=http://127.0.0.1:1", {"regoin": "x"}, "did you mean 'region'?"),
        ("sqs://q?endpoint=http://127.0.0.1:1&regoin=x", {}, "did you mean 'region'?"),
    ],
)
def test_every_transport_suggests_the_nearest_name(
    target: str, options: dict[str, Any], said: str
) -> None:
    pytest.importorskip(
        {"kafka": "confluent_kafka", "amqp": "pika", "sqs": "boto3"}[
            target.split(":", maxsplit=1)[0]
        ]
    )
    with pytest.raises(TypeError) as info:  # OptionError for a keyword, URLOptionError in a URL
        connect(target, **options)
    assert said in str(info.value)


@pytest.mark.parametrize(
    ("target", "said"),
    [
        (
            "kafka://127.0.0.1:1/t?max_deliveries=x",
            "kafka URL option max_deliveries='x' is not valid",
        ),
        (f"{AMQP}?queue=q&max_deliveries=x", "bad value 'x' for max_deliveries= in 'amqp://"),
    ],
)
def test_every_transport_names_a_query_value_that_does_not_parse(target: str, said: str) -> None:
    pytest.importorskip(
        {"kafka": "confluent_kafka", "amqp": "pika"}[target.split(":", maxsplit=1)[0]]
    )
    with pytest.raises(URLError) as info:
        connect(target)
    assert said in str(info.value)
    assert "guest:guest" not in str(info.value)


def test_queue_refuses_a_url_and_says_what_to_use() -> None:
    with pytest.raises(OptionError, match=r"use qchan.connect\(url\)"):
        Queue("mem://x")  # type: ignore[arg-type]


def test_endpoints_check_their_arguments(url: str) -> None:
    with pytest.raises(OptionError, match=r"enqueue needs a qchan.Queue .*qchan.connect"):
        enqueue(Order, url)  # type: ignore[arg-type]
    with connect(url) as q:
        with pytest.raises(OptionError, match="enqueue needs the type of the objects"):
            enqueue(Order(id="1", amount=1.0), q)  # type: ignore[arg-type]
        with pytest.raises(OptionError, match="capacity must be >= 0"):
            enqueue(Order, q, capacity=-1)
        with pytest.raises(OptionError, match="policy must be AT_LEAST_ONCE or AT_MOST_ONCE"):
            enqueue(Order, q, policy="at-most-once")  # type: ignore[arg-type]
        with pytest.raises(OptionError, match="dequeue: capacity must be an int"):
            dequeue(Order, q, capacity="32")  # type: ignore[arg-type]
        with pytest.raises(OptionError, match=r"enqueue_sync needs a qchan\.Queue"):
            enqueue_sync(Order, None)  # type: ignore[arg-type]
        with pytest.raises(OptionError, match="serve: workers must be >= 1"):
            serve(print, Order, q, workers=0)
        with pytest.raises(OptionError, match="serve needs a handler function"):
            serve(None, Order, q)  # type: ignore[arg-type]
        # None of it opened a channel: the queue still works.
        with enqueue(Order, q) as (out, _), dequeue(Order, q) as (rcv, ack):
            out.send(Order(id="1", amount=1.0))
            ack.send(rcv.recv(timeout=5.0))


def test_a_good_queue_with_every_option_opens(url: str) -> None:
    errors: Chan[Exception] = Chan(10)
    q = Queue(
        EmbeddedAdapter(url[6:]),
        agent="a",
        system="s",
        batch_size=10,
        linger=0,
        retry=Constant(),
        poll_wait=0.1,
        in_flight=10,
        time_to_flight=1,
        ack_linger=0,
        extend_every=0.5,
        errors=errors,
        close_timeout=1,
    )
    q.close()


def test_the_old_names_of_max_deliveries_still_work_and_warn(url: str) -> None:
    from qchan.adapters.embedded import broker

    deprecated = "max_receives= is deprecated, use max_deliveries="
    with pytest.warns(DeprecationWarning, match=deprecated) as w:
        connect(f"{url}?max_receives=3").close()
    assert w[0].filename == __file__  # the warning names the caller's line
    assert broker(url[6:]).max_deliveries == 3
    with pytest.warns(DeprecationWarning, match="max_receives="):
        connect(url, max_receives=4).close()
    assert broker(url[6:]).max_deliveries == 4
    with pytest.raises(OptionError, match="give max_deliveries= only"):
        connect(url, max_receives=4, max_deliveries=5)
    pytest.importorskip("confluent_kafka")
    from qchan.adapters import kafka

    with pytest.warns(DeprecationWarning, match="max_attempts= is deprecated"):
        assert kafka.from_url("kafka://127.0.0.1:1/t?max_attempts=3").options.max_deliveries == 3
    pytest.importorskip("pika")
    from qchan.adapters import rabbitmq

    with pytest.warns(DeprecationWarning, match="max_attempts= is deprecated"):
        adapter = rabbitmq.from_url(f"{AMQP}?queue=q", max_attempts=3)
    assert adapter.settings.max_deliveries == 3


def test_a_query_key_the_transport_owns_stays_the_transports() -> None:
    """`heartbeat` is pika's in an amqp:// URL (the AMQP heartbeat), not the queue's."""
    pytest.importorskip("pika")
    with connect(f"{AMQP}?queue=q&heartbeat=30&in_flight=9") as q:
        assert (q.options.extend_every, q.options.in_flight) == (None, 9)
        assert q.adapter.settings.heartbeat_in_url  # type: ignore[attr-defined]


def test_the_options_table_in_the_docs_is_the_one_the_code_makes() -> None:
    from pathlib import Path

    from qchan.options import QueueOptions

    doc = (Path(__file__).parents[2] / "docs" / "options.md").read_text()
    begin, end = "<!-- options table: generated from QueueOptions.table() -->\n", "\n<!-- end"
    assert doc[doc.index(begin) + len(begin) : doc.index(end)] == QueueOptions.table()


def test_the_typed_keywords_are_the_options_and_their_types() -> None:
    """`QueueKeywords` (what type checkers see of `Queue(**options)`) is `QueueOptions`."""
    import attrs

    from qchan.options import QueueKeywords, QueueOptions

    fields = {a.name: a.type for a in attrs.fields(QueueOptions)}
    keywords = {
        k: getattr(t, "__forward_arg__", t) for k, t in QueueKeywords.__annotations__.items()
    }
    assert keywords.pop("heartbeat") == "float | None"  # extend_every's deprecated name
    assert keywords == fields


def test_heartbeat_is_extend_everys_old_name_except_on_amqp(url: str) -> None:
    with pytest.warns(DeprecationWarning, match="heartbeat= is deprecated, use extend_every="):
        q = Queue(EmbeddedAdapter(url[6:]), heartbeat=0.5)
    with q:
        assert q.options.extend_every == 0.5
    with (
        pytest.warns(DeprecationWarning, match="extend_every="),
        connect(f"{url}?visibility_timeout=3&heartbeat=0.7") as q,
    ):
        assert q.options.extend_every == 0.7
    with pytest.raises(OptionError, match="give extend_every= only"):
        connect(url, heartbeat=1, extend_every=1)


def test_an_option_read_from_the_queue_warns_and_one_set_on_it_is_refused(url: str) -> None:
    with Queue(EmbeddedAdapter(url[6:]), in_flight=7) as q:
        with pytest.warns(DeprecationWarning, match=r"read q\.options\.in_flight"):
            assert q.in_flight == 7  # type: ignore[attr-defined]
        with pytest.raises(AttributeError, match="give retry= to Queue"):
            q.retry = Constant()  # type: ignore[attr-defined]
        assert q.options.retry is not None and not isinstance(q.options.retry, Constant)
