"""AWS Lambda handlers: one `serve` handler function, run on the events Lambda is invoked with.

    from qchan.aws import lambda_handler

    def bill(order: Order) -> None: ...          # the same function `serve` runs
    handler = lambda_handler(bill, Order)        # Lambda's handler: module.handler

Events from SQS, SNS, EventBridge, S3 and DynamoDB Streams are told apart by
their shape; S3 and DynamoDB records arrive as `S3Record` and `DynamoDBRecord`.
See docs/lambda.md. Nothing here needs boto3.
"""

from ._handler import LambdaHandler, RecordsFailed, lambda_handler
from ._records import DynamoDBRecord, S3Record
from ._sources import UnknownEvent

__all__ = [
    "DynamoDBRecord",
    "LambdaHandler",
    "RecordsFailed",
    "S3Record",
    "UnknownEvent",
    "lambda_handler",
]
