"""Security (issue 8, item 6): secrets stay secret, nothing executes what it decodes, TLS
options reach the client libraries.

Secrets: for each transport, a distinctive password / secret key goes in the
way users pass it (URL userinfo, Kafka SASL properties, the AWS environment);
then the failure paths run (wrong password, unreachable broker, refused
sends) with every logger at DEBUG, and the secret must not appear in any
`repr`, `str`, log record, error reported on the errors channel, dead
letter, or exception, tracebacks and chained causes included.
"""

from __future__ import annotations

import logging
import pathlib
import re
import socket
import ssl
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support.helpers import start, wait_for
from support.rabbitmq import Relay, self_signed_cert

from qchan import Chan, Constant, Event, Meta, Queue, connect, dequeue, enqueue
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.codec import BytesCodec, JSONCodec, StrCodec
from qchan.testing import Order
from qchan.urls import redact

ROOT = pathlib.Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def secret() -> str:
    return f"S3cr3t-{uuid.uuid4().hex[:12]}"


class Exposure:
    """Everything a user or an operator could see: reprs, errors, dead letters, logs."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.texts: list[str] = []

    def add(self, *objects: Any) -> None:
        for obj in objects:
            self.texts.append(repr(obj))
            self.texts.append(str(obj))
            if isinstance(obj, BaseException):
                self.texts.append("".join(traceback.format_exception(obj)))
                self.texts.append(repr(getattr(obj, "failed", "")))

    def drain(self, chan: Any) -> None:
        while True:
            try:
                self.add(chan.recv(timeout=0))
            except (TimeoutError, Exception):
                return

    def assert_hidden(self, *secrets: str) -> None:
        records = "\n".join(
            f"{r.name} {r.getMessage()} {r.args!r} "
            + ("".join(traceback.format_exception(*r.exc_info)) if r.exc_info else "")
            for r in self.caplog.records
        )
        everything = "\n".join([*self.texts, records])
        assert self.texts and self.caplog.records, "nothing was captured: the test saw no failure"
        for s in secrets:
            assert s not in everything, f"secret {s[:4]}... leaked: " + _context(everything, s)


def _context(text: str, needle: str) -> str:
    i = text.find(needle)
    return text[max(0, i - 200) : i + 50]


@pytest.fixture
def exposure(caplog: pytest.LogCaptureFixture) -> Exposure:
    caplog.set_level(logging.DEBUG)  # every logger: qchan's and the client libraries'
    return Exposure(caplog)


def exercise(exposure: Exposure, q: Queue, errors: Chan[Exception], seconds: float = 2.0) -> None:
    """Send (to dlq after two quick tries) and receive (errors while it reconnects)."""
    exposure.add(q, q.adapter)
    out, dlq = enqueue(Order, q)
    out.send(Order("1", 1.0))
    dead = dlq.recv(timeout=60)
    exposure.add(dead, dead.error)
    with dequeue(Order, q) as (rcv, _):
        start(rcv.recv, seconds + 30)  # a receiver waits: the poller tries to receive
        wait_for(lambda: len(errors) > 0, seconds + 30, "an error reported by the poller")
    exposure.drain(errors)
    try:
        q.close()
    except Exception as e:
        exposure.add(e)
    exposure.add(q)


# -- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "amqp://user:{pw}@host:5672/%2F?queue=q",
        "amqps://user:{pw}@host/%2F?queue=q",
        "kafka://user:{pw}@host:9092/topic",
        "amqp://user:p%40{pw}@host/%2F?queue=q",  # percent-encoded
        "amqp://user:p@{pw}@host/%2F?queue=q",  # an unencoded @ in the password
    ],
)
def test_redact_masks_the_password(url: str) -> None:
    pw = secret()
    shown = redact(url.format(pw=pw))
    assert pw not in shown and "***" in shown


@pytest.mark.parametrize("sep", ["/", "?", "#"])
def test_redact_masks_a_password_with_a_url_delimiter(sep: str) -> None:
    pw = f"pa{sep}{secret()}"
    shown = redact(f"amqp://user:{pw}@host:5672/%2F?queue=q")
    assert pw.split(sep)[1] not in shown, shown


def test_queue_repr_hides_secrets_given_as_query_parameters() -> None:
    pw = secret()
    q = connect(
        f"kafka://127.0.0.1:{closed_port()}/t?security.protocol=SASL_PLAINTEXT"
        f"&sasl.mechanism=PLAIN&sasl.username=u&sasl.password={pw}"
    )
    try:
        assert pw not in repr(q) and pw not in repr(q.adapter)
    finally:
        q.close()


# -- RabbitMQ: wrong password, unreachable broker ----------------------------------------


@pytest.mark.integration
def test_amqp_password_stays_hidden_through_failures(rabbit: str, exposure: Exposure) -> None:
    pw = secret()
    name = f"qchan-sec-{uuid.uuid4().hex[:8]}"
    for port in (5672, closed_port()):  # the broker refuses the login; nothing listens
        errors: Chan[Exception] = Chan(64)
        q = connect(
            f"amqp://guest:{pw}@127.0.0.1:{port}/%2F?queue={name}",
            errors=errors,
            retry=Constant(0.05, max_attempts=2),
            poll_wait=0.2,
        )
        exercise(exposure, q, errors)
    # Bad URLs and options: the URL shows up in the error, the password does not.
    for bad in (
        f"amqp://guest:{pw}@127.0.0.1:5672/%2F",
        f"amqp://guest:{pw}@h/%2F?queue=q&x=1",
        f"amqp://guest:{pw}@h:notaport/%2F?queue=q",
    ):
        with pytest.raises(Exception) as info:
            connect(bad)
        exposure.add(info.value)
    with pytest.raises(TypeError) as info2:
        connect(f"amqp://guest:{pw}@h/%2F?queue=q", colour="blue")
    exposure.add(info2.value)
    exposure.assert_hidden(pw)


# -- Redis and PostgreSQL: a password in the URL, an unreachable server -------------------


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["redis", "postgresql"])
def test_redis_and_postgres_passwords_stay_hidden_through_failures(
    scheme: str, exposure: Exposure
) -> None:
    pw = secret()
    name = f"qchan_sec_{uuid.uuid4().hex[:8]}"
    if scheme == "redis":
        # Redis refuses the login (it has no password here); then nothing listens.
        urls = [
            f"redis://user:{pw}@127.0.0.1:{port}/0?stream={name}&wait=0.2"
            for port in (6379, closed_port())
        ]
        bad = [f"redis://user:{pw}@h/0", f"redis://user:{pw}@h/0?stream=s&x=1"]
    else:
        urls = [f"postgresql://app:{pw}@127.0.0.1:{closed_port()}/test?queue={name}&wait=0.2"]
        bad = [f"postgresql://app:{pw}@h/db", f"postgresql://app:{pw}@h/db?queue=q&x=1"]
    for url in urls:
        errors: Chan[Exception] = Chan(64)
        q = connect(url, errors=errors, retry=Constant(0.05, max_attempts=2), poll_wait=0.2)
        exercise(exposure, q, errors)
    for url in bad:
        with pytest.raises(Exception) as info:
            connect(url)
        exposure.add(info.value)
    with pytest.raises(TypeError) as info2:
        connect(urls[0], colour="blue")
    exposure.add(info2.value)
    exposure.assert_hidden(pw)


# -- SQS: the AWS secret key --------------------------------------------------------------


@pytest.mark.integration
def test_aws_secret_key_stays_hidden_through_failures(
    sqs_endpoint: str,
    exposure: Exposure,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key_id, key = f"AKIA{uuid.uuid4().hex[:16].upper()}", secret()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key)
    name = f"qchan-sec-{uuid.uuid4().hex[:8]}"
    errors: Chan[Exception] = Chan(64)
    # A reachable endpoint first (requests are signed with the key), then an unreachable one.
    q = connect(
        f"sqs://{name}?endpoint={sqs_endpoint}&region=us-east-1&create=true",
        errors=errors,
        retry=Constant(0.05, max_attempts=2),
        poll_wait=0.2,
    )
    with enqueue(Order, q) as (out, _):
        out.send(Order("ok", 1.0))
    with dequeue(Order, q) as (rcv, ack):
        ack.send(rcv.recv(timeout=30))
    q.close()
    errors = Chan(64)
    q = connect(
        f"sqs://{name}?endpoint=http://127.0.0.1:{closed_port()}&region=us-east-1",
        errors=errors,
        retry=Constant(0.05, max_attempts=2),
        poll_wait=0.2,
        connect_timeout=0.5,
        max_attempts=1,
    )
    exercise(exposure, q, errors)
    exposure.assert_hidden(key)
    # The key id is no secret to AWS, but qchan itself never prints it either
    # (botocore's own DEBUG lines carry it in the signed Authorization header).
    ours = [r.getMessage() for r in exposure.caplog.records if r.name.startswith("qchan")]
    assert not any(key_id in t for t in [*exposure.texts, *ours])


# -- Kafka: the SASL password --------------------------------------------------------------


@pytest.mark.parametrize("how", ["userinfo", "config"])
def test_kafka_sasl_password_stays_hidden_through_failures(exposure: Exposure, how: str) -> None:
    pw = secret()
    port = closed_port()
    errors: Chan[Exception] = Chan(256)
    options: dict[str, Any] = {
        "errors": errors,
        "retry": Constant(0.05, max_attempts=2),
        "poll_wait": 0.2,
        "send_timeout": 1.0,
        "admin_timeout": 1.0,
    }
    if how == "userinfo":
        url = (
            f"kafka://alice:{pw}@127.0.0.1:{port}/t-{uuid.uuid4().hex[:6]}"
            f"?security.protocol=SASL_PLAINTEXT"
        )
    else:
        url = f"kafka://127.0.0.1:{port}/t-{uuid.uuid4().hex[:6]}"
        options["config"] = {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "alice",
            "sasl.password": pw,
        }
    try:
        q = connect(url, **options)
    except Exception as e:  # the topic cannot be created on a broker that is not there
        exposure.add(e)
    else:
        exposure.add(q, q.adapter)
        out, dlq = enqueue(Order, q)
        out.send(Order("1", 1.0))
        exposure.add(dlq.recv(timeout=60))
        with dequeue(Order, q):
            wait_for(lambda: len(errors) > 0, 30, "an error reported")
        exposure.drain(errors)
        try:
            q.close()
        except Exception as e:
            exposure.add(e)
    exposure.assert_hidden(pw)


# -- no pickle, no code-executing decoder ----------------------------------------------------

# What could turn received bytes into code: serializers that run constructors or
# bytecode (pickle and friends, marshal, shelve, yaml's full loaders), evaluation
# (eval, exec, compile, __import__), and process pools, which pickle everything
# they pass. ast.literal_eval is safe and allowed.
BANNED = re.compile(
    r"\b(pickle|cPickle|cloudpickle|dill|jsonpickle|marshal|shelve|copyreg|"
    r"yaml\.(load|unsafe_load|full_load|load_all|Loader|UnsafeLoader|FullLoader)|"
    r"eval|exec|compile|__import__|multiprocessing|ProcessPoolExecutor)\b"
)


def _code_lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    """Lines of code, without comments or docstrings/strings that only document."""
    in_doc: str | None = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if in_doc:
            if in_doc in stripped:
                in_doc = None
            continue
        for quote in ('"""', "'''"):
            if stripped.startswith(quote) and not (
                stripped.count(quote) >= 2 and len(stripped) > 3
            ):
                in_doc = quote
        if in_doc or stripped.startswith(('"""', "'''")):
            continue
        yield n, line.split("#", 1)[0]


def test_no_code_executing_decoder_in_anything_that_ships_or_runs() -> None:
    folders = ("channels", "adapters", "examples", "benchmarks")
    offenders = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for folder in folders
        if (ROOT / folder).exists()
        for p in sorted((ROOT / folder).rglob("*.py"))
        for n, line in _code_lines(p)
        if BANNED.search(line) and "re.compile" not in line
    ]
    assert offenders == []


def test_the_grep_would_catch_an_unpickle(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""Doc mentioning pickle is fine."""\nimport json  # pickle in a comment\n'
        "obj = __import__('pick' + 'le').loads(data)\nv = eval(text)\n"
    )
    found = [n for n, line in _code_lines(bad) if BANNED.search(line)]
    assert found == [3, 4]


# A protocol-0 pickle that would run os.system("touch <marker>") if anything unpickled it.
def _pickle_bomb(marker: pathlib.Path) -> bytes:
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


def test_a_pickle_payload_is_never_executed_by_any_codec(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    bomb = _pickle_bomb(marker)
    for codec in (JSONCodec(Order), JSONCodec(Event[Meta, Order]), StrCodec(), BytesCodec()):
        try:
            codec.decode(bomb)
        except Exception:
            pass
    assert not marker.exists()


def test_a_pickle_payload_through_the_listener_is_reported_or_delivered_as_bytes(
    tmp_path: pathlib.Path,
) -> None:
    from qchan import Bag

    marker = tmp_path / "pwned"
    name = f"sec-{uuid.uuid4().hex[:8]}"
    errors: Chan[Exception] = Chan(16)
    q = Queue(EmbeddedAdapter(name), errors=errors, poll_wait=0.1)
    try:
        bomb = _pickle_bomb(marker)
        with dequeue(Order, q), dequeue(bytes, q, category="blob") as (rcv, ack):
            # Both channels are open before the broker has the messages: otherwise the
            # poller may take "blob" between the two dequeues, as unroutable (a flake).
            broker(name).send(
                [
                    Bag("Order", bomb, {"Category": "Order"}, id="b1"),
                    Bag("blob", bomb, {"Category": "blob"}, id="b2"),
                ]
            )
            m = rcv.recv(timeout=5)
            ack.send(m)
            err = errors.recv(timeout=5)
        assert m.object == bomb  # handed over as the raw bytes it is
        assert type(err).__name__ == "DecodeError"
    finally:
        q.close()
    assert not marker.exists()


# -- TLS options pass through ----------------------------------------------------------------


def test_amqps_verifies_certificates_by_default_and_takes_a_ca(tmp_path: pathlib.Path) -> None:
    from qchan.adapters.rabbitmq._config import (
        connection_parameters,
        settings_from_url,
    )

    cert, _ = self_signed_cert(tmp_path)
    default = settings_from_url("amqps://u:p@rabbit.example/%2F?queue=q", {})
    params = connection_parameters(default, "consumer")
    assert params.ssl_options is not None and params.port == 5671
    ctx = params.ssl_options.context
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    custom = settings_from_url(
        f"amqps://u:p@rabbit.example/%2F?queue=q&cafile={cert}&server_hostname=mq.internal", {}
    )
    params = connection_parameters(custom, "publisher")
    assert params.ssl_options.server_hostname == "mq.internal"
    assert params.ssl_options.context.cert_store_stats()["x509_ca"] == 1
    with pytest.raises(ValueError, match="amqps"):
        settings_from_url(f"amqp://u:p@h/%2F?queue=q&cafile={cert}", {})


@pytest.mark.integration
def test_amqps_refuses_an_untrusted_certificate_and_works_with_its_ca(
    rabbit: str, tmp_path: pathlib.Path
) -> None:
    """End to end through a TLS-terminating relay with a self-signed certificate."""
    cert, key = self_signed_cert(tmp_path)
    relay = Relay(cert, key)
    name = f"qchan-tls-{uuid.uuid4().hex[:8]}"
    base = f"amqps://guest:guest@127.0.0.1:{relay.port}/%2F?queue={name}"
    try:
        q = connect(base, retry=Constant(0.05, max_attempts=2))
        with enqueue(Order, q) as (out, dlq):
            out.send(Order("untrusted", 1.0))
            dead = dlq.recv(timeout=60)
        assert "CERTIFICATE_VERIFY_FAILED" in repr(dead.error) + repr(
            dead.error.__cause__
        ) + "".join(traceback.format_exception(dead.error)), dead.error
        q.close()
        q = connect(f"{base}&cafile={cert}")
        with enqueue(Order, q) as (out, _):
            out.send(Order("trusted", 1.0))
        with dequeue(Order, q) as (rcv, ack):
            m = rcv.recv(timeout=30)
            ack.send(m)
        assert m.object.id == "trusted"
        q.close()
    finally:
        relay.close()
        import pika

        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
        ch = conn.channel()
        ch.queue_delete(name)
        ch.queue_delete(f"{name}.dlq")
        conn.close()


def test_kafka_security_properties_reach_librdkafka() -> None:
    from qchan.adapters.kafka._config import (
        KafkaOptions,
        consumer_config,
        parse_url,
        producer_config,
    )

    log = logging.getLogger("qchan.tests")
    options, config = parse_url(
        "kafka://b1:9093,b2:9093/orders?security.protocol=SSL&ssl.ca.location=/etc/ca.pem"
        "&ssl.endpoint.identification.algorithm=https"
    )
    o = KafkaOptions(**options, config=config)
    for conf in (producer_config(o, log, print), consumer_config(o, log, print, print)):
        assert conf["security.protocol"] == "SSL"
        assert conf["ssl.ca.location"] == "/etc/ca.pem"
        assert conf["ssl.endpoint.identification.algorithm"] == "https"
    # Credentials in the URL turn SASL over TLS on, unless the query says otherwise.
    _, config = parse_url("kafka://alice:pw@b1:9093/orders")
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "PLAIN"


def test_sqs_https_endpoint_and_verify_pass_through(tmp_path: pathlib.Path) -> None:
    from qchan.adapters.sqs import SQSAdapter

    ca = tmp_path / "ca.pem"
    ca.write_text("")
    for verify in (None, False, str(ca)):
        a = SQSAdapter(
            "orders", endpoint="https://sqs.internal:8443", region="eu-west-1", verify=verify
        )
        assert a.endpoint == "https://sqs.internal:8443"
        used = a.client._endpoint.http_session._verify
        if verify is None:  # verification on, with the system's CA bundle
            assert used is True or pathlib.Path(used).exists(), used
        else:
            assert used == verify
    default = SQSAdapter("orders", region="eu-west-1")
    assert default.endpoint.startswith("https://")
