"""`qchan redrive` through a broker cut: nothing lost, nothing duplicated beyond what it reports.

500 dead letters move from `X.dlq` to `X` over connections through the scenario's
fault link (the TCP proxy for RabbitMQ and SQS, the mock cluster's brokers for
Kafka, the adapter boundary for mem://), cut for 1.5 s once a fifth has moved.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from support.helpers import start, wait_for
from support.rabbitmq import declare

from qchan import Adapter, Bag
from qchan.cli.operate import Redriven, open_raw, redrive

from .harness import LONG
from .links import InjectedLink, Link
from .proxy import TcpProxy
from .transports import KafkaTransport, RabbitTransport, SQSTransport, Transport

N = 500
CUT = 1.5


def _dlq(t: Transport, name: str) -> str:
    return f"{name}-dlq" if isinstance(t, SQSTransport) else f"{name}.dlq"


def _url(t: Transport, name: str, link: Link | None) -> str:
    """The queue's URL, through `link` where the link is a proxy."""
    if isinstance(t, RabbitTransport):
        return t.url(name, link.port if isinstance(link, TcpProxy) else None)
    if isinstance(t, SQSTransport):
        endpoint = f"http://127.0.0.1:{link.port}" if isinstance(link, TcpProxy) else None
        # The queue's own 30 s visibility: a message is not handed out twice while moved.
        return t.url(name, endpoint).replace("&visibility_timeout=2", "")
    if isinstance(t, KafkaTransport):
        session = f"&session.timeout.ms={t.session_ms}&heartbeat.interval.ms={t.heartbeat_ms}"
        return t.url(name) + session
    return t.url(name)


def _open(t: Transport, name: str, link: Link | None) -> Adapter:
    adapter = open_raw(_url(t, name, link), 30.0, moving=True)
    if isinstance(link, InjectedLink):
        adapter = link.wrap(adapter)
    return adapter


def _read_all(t: Transport, name: str) -> Counter[str]:
    """Every message now in `name`, by its `N` attribute (acked): receives until all N
    came, then until three receives in a row come back empty (no duplicate is left)."""
    a = _open(t, name, None)
    seen: Counter[str] = Counter()
    idle = 0
    try:
        while idle < 3 or len(seen) < N:
            got = a.receive(500, 1.0)
            idle = 0 if got else idle + 1
            assert idle < 30, f"received {len(seen)} of {N}; then nothing for 30 tries"
            seen.update(b.attributes["N"] for b in got)
            if got:
                a.ack(got)
    finally:
        a.close()
    return seen


# RabbitMQ (a TCP proxy cut, the case) in `make test`; the others, about 60 s
# together, in `make test-reliability`.
@pytest.mark.parametrize(
    "transport",
    [
        pytest.param("amqp", id="amqp", marks=pytest.mark.integration),
        pytest.param("mem", id="mem", marks=LONG),
        pytest.param("sqs", id="sqs", marks=[pytest.mark.integration, *LONG]),
        pytest.param("kafka", id="kafka", marks=[pytest.mark.integration, *LONG]),
    ],
    indirect=True,
)
def test_redrive_through_a_cut_loses_nothing(transport: Transport) -> None:
    t = transport
    link = t.new_link()  # first: Kafka's scenario queues live on the cluster it breaks
    x = t.new_name()
    dlq = _dlq(t, x)
    # new_name made X (and, on Kafka, X.dlq)
    if isinstance(t, SQSTransport):
        t.client.create_queue(QueueName=dlq)  # the default 30 s visibility
    elif isinstance(t, RabbitTransport):
        declare(x)  # and its dead-letter queue, X.dlq, as qchan declares them
    try:
        filler = _open(t, dlq, None)
        try:
            sent = [
                Bag("Order", b'{"n": %d}' % i, {"Category": "Order", "N": str(i)}, id=f"m-{i}")
                for i in range(N)
            ]
            for i in range(0, N, 10):
                assert filler.send_batch(sent[i : i + 10]) == [None] * 10
        finally:
            filler.close()

        source, target = _open(t, dlq, link), _open(t, x, link)
        if isinstance(link, InjectedLink):  # in-process: slow enough for the cut to land
            source.max_receive = 10
            link.latency(0.01)
        r = Redriven()
        worker = start(
            redrive, source, target, count=None, timeout=10.0, retry_seconds=60.0, done=r
        )
        try:
            wait_for(lambda: r.moved >= N // 5 or worker.done.is_set(), 60, "a fifth moved")
            link.cut()
            threading.Event().wait(CUT)  # the cut's length, not a wait for an outcome
            link.restore()
            worker.outcome(timeout=180)
        finally:
            link.restore()
            source.close()
            target.close()
        assert (r.moved, r.failed) == (N, 0), r
        seen = _read_all(t, x)
        assert set(seen) == {str(i) for i in range(N)}, f"lost: {N - len(seen)}"
        copies = sum(seen.values()) - N  # extra copies, and the messages that have them
        duplicated = sum(1 for n in seen.values() if n > 1)
        assert duplicated <= r.maybe_duplicated, (duplicated, r)
        assert copies <= r.resends + r.unsure, (copies, r)
        wait_for(lambda: t.leftover(dlq) == 0, 30, f"{dlq} empty")
        print(f"{t.name}: {r}; {duplicated} duplicated, {copies} extra copies")
    finally:
        link.close()
        for q in (x, dlq):
            try:
                t.cleanup(q)
            except Exception:  # best effort: the broker may be gone
                pass
