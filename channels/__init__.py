"""qchan: message queues as Go channels, in plain synchronous Python.

from qchan import connect, enqueue, dequeue

with connect("mem://orders") as q:
    with enqueue(Order, q) as (out, dlq):
        out.send(Order(id="1", amount=9.5))
    with dequeue(Order, q) as (rcv, ack):
        for msg in rcv:
            handle(msg.object)
            ack.send(msg)            # or ack.send(msg.fail(err)) to redeliver
"""

from ._transactions import TransactionError
from .adapter import Adapter, Depth, Hooks, Operations, ReceivingAdapter
from .chan import Chan, RecvChan, SendChan
from .codec import BytesCodec, Codec, EncodeError, JSONCodec, PydanticCodec, StrCodec
from .endpoints import (
    AT_LEAST_ONCE,
    AT_MOST_ONCE,
    Dequeued,
    Enqueued,
    Policy,
    SyncEnqueuer,
    dequeue,
    enqueue,
    enqueue_sync,
)
from .errors import (
    ChannelClosed,
    ConnectionLost,
    DecodeError,
    EnqueueError,
    MessageError,
    MessageTooLarge,
    NotSupported,
    QchanError,
    QueueFailed,
    RejectedError,
    SendOnlyError,
    UnroutableError,
)
from .event import Event, Meta
from .idempotency import (
    MemoryStore,
    PostgresStore,
    RedisStore,
    StillRunning,
    Store,
    StoreUnavailable,
    idempotent,
    message_key,
)
from .kernel.queue import Queue, connect
from .kernel.routes import ANY
from .kernel.stats import Stats, observe
from .message import Bag, Msg
from .msgspec_codec import MsgspecCodec
from .options import OptionError
from .retry import Backoff, Constant, Exponential, Linear, Retries
from .select import Selected, select
from .urls import URLError, redact, register_scheme
from .worker import Served, serve, stop_on_signals

__all__ = [
    "ANY",
    "AT_LEAST_ONCE",
    "AT_MOST_ONCE",
    "Adapter",
    "Backoff",
    "Bag",
    "BytesCodec",
    "Chan",
    "ChannelClosed",
    "Codec",
    "ConnectionLost",
    "Constant",
    "DecodeError",
    "Depth",
    "Dequeued",
    "EncodeError",
    "EnqueueError",
    "Enqueued",
    "Event",
    "Exponential",
    "Hooks",
    "JSONCodec",
    "Linear",
    "MemoryStore",
    "MessageError",
    "MessageTooLarge",
    "Meta",
    "Msg",
    "MsgspecCodec",
    "NotSupported",
    "Operations",
    "OptionError",
    "Policy",
    "PostgresStore",
    "PydanticCodec",
    "QchanError",
    "Queue",
    "QueueFailed",
    "ReceivingAdapter",
    "RecvChan",
    "RedisStore",
    "RejectedError",
    "Retries",
    "Selected",
    "SendChan",
    "SendOnlyError",
    "Served",
    "Stats",
    "StillRunning",
    "Store",
    "StoreUnavailable",
    "StrCodec",
    "SyncEnqueuer",
    "TransactionError",
    "URLError",
    "UnroutableError",
    "connect",
    "dequeue",
    "enqueue",
    "enqueue_sync",
    "idempotent",
    "message_key",
    "observe",
    "redact",
    "register_scheme",
    "select",
    "serve",
    "stop_on_signals",
]
__version__ = "0.1.0"
