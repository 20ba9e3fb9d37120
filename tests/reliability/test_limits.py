"""Message size limits on send, per transport (issue 8, items 4 and 6).

A message over the broker's limit is refused for good: it goes to `dlq` at
once (no retries) with a `MessageTooLarge` whose text gives the size and the
limit, and the messages sent around it are delivered.
"""

from __future__ import annotations

from qchan import MessageTooLarge, dequeue, enqueue

from .transports import Transport


def test_oversized_message_goes_to_dlq_with_a_clear_error(transport: Transport) -> None:
    name = transport.new_name()
    limit = transport.max_message_size
    q = transport.open(name, **transport.size_options)
    try:
        with enqueue(bytes, q, category="blob") as (out, dlq):
            out.send(b"before")
            out.send(b"x" * (limit + 1))
            out.send(b"after")
            dead = dlq.recv(timeout=60)
        assert isinstance(dead.error, MessageTooLarge), repr(dead.error)
        assert dead.object == b"x" * (limit + 1)  # the original, handed back
        text = str(dead.error)
        # Clear: it names the limit (its value, or the setting to change).
        assert any(
            w in text.replace(",", "")
            for w in (
                str(limit),
                "MaximumMessageSize",
                "max_message_size",
                "message.max.bytes",
            )
        ), text
        assert q.stats().retried == 0, "a message that can never fit was retried"
        with dequeue(bytes, q, category="blob") as (rcv, ack):
            got = []
            for _ in range(2):
                m = rcv.recv(timeout=60)
                got.append(m.object)
                ack.send(m)
        assert sorted(got) == [b"after", b"before"]
    finally:
        q.close()
