"""The SNS wire format: SQS's, as a PublishBatch entry, and SNS's limits.

Pure functions, no I/O. A message is published as it is sent to SQS
(`qchan.adapters.sqs._wire.entry` makes it), because an SQS queue with raw
delivery is where it is read: the body as text (base64 with
`ContentTransferEncoding=base64` when it is not text SQS accepts), every
attribute a String message attribute (at most 10, SQS's limit for raw
delivery), the FIFO MessageGroupId and MessageDeduplicationId derived as on SQS
FIFO queues.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qchan.errors import RejectedError

if TYPE_CHECKING:
    from mypy_boto3_sns.type_defs import PublishBatchRequestEntryTypeDef
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

#: PublishBatch limits (https://docs.aws.amazon.com/sns/latest/dg/sns-batch-api-actions.html):
#: 10 entries a request; 256 KiB for one message and for the request (a topic's
#: MaximumMessageSize may raise both to 1 MiB: pass max_request_bytes=).
MAX_BATCH_ENTRIES = 10
DEFAULT_MAX_REQUEST_BYTES = 262_144
MAX_REQUEST_BYTES = 1_048_576
#: What the size limit is called in a MessageTooLarge error.
LIMIT = "the topic's message size"


def entry(message: SendMessageBatchRequestEntryTypeDef) -> PublishBatchRequestEntryTypeDef:
    """The PublishBatch entry of an SQS SendMessageBatch entry; RejectedError if it is empty."""
    if not message["MessageBody"]:
        raise RejectedError("SNS publishes no empty message")
    out: PublishBatchRequestEntryTypeDef = {"Id": message["Id"], "Message": message["MessageBody"]}
    if "MessageAttributes" in message:
        out["MessageAttributes"] = {
            name: {"DataType": "String", "StringValue": value["StringValue"]}
            for name, value in message["MessageAttributes"].items()
        }
    for key in ("MessageGroupId", "MessageDeduplicationId"):
        if key in message:
            out[key] = message[key]
    return out
