"""qchan: message queues as Go channels, in plain synchronous Python."""

from .chan import Chan, RecvChan, SendChan
from .errors import (
    ChannelClosed,
    DecodeError,
    EnqueueError,
    MessageError,
    MessageTooLarge,
    QchanError,
    RejectedError,
    UnroutableError,
)
from .select import Selected, select

__all__ = [
    "Chan",
    "ChannelClosed",
    "DecodeError",
    "EnqueueError",
    "MessageError",
    "MessageTooLarge",
    "QchanError",
    "RecvChan",
    "RejectedError",
    "Selected",
    "SendChan",
    "UnroutableError",
    "select",
]
__version__ = "0.1.0"
