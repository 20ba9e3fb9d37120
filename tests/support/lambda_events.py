"""Lambda events in the shapes AWS sends them, for the qchan.aws tests (tests/aws/).

The shapes follow aws-lambda-powertools' test events (tests/events/sqsEvent.json,
snsEvent.json, eventBridgeEvent.json, s3Event.json, dynamoStreamEvent.json in
aws-powertools/powertools-lambda-python) and the AWS Lambda developer guide's
pages "Using Lambda with Amazon SQS" (FIFO records carry MessageGroupId,
SequenceNumber and MessageDeduplicationId in `attributes`), "... with Amazon
SNS", "... with Amazon S3" and "... with DynamoDB".
"""

from __future__ import annotations

import json
from typing import Any

REGION = "us-east-2"
ACCOUNT = "123456789012"


def sqs_record(
    body: str,
    *,
    message_id: str,
    category: str | None = "Order",
    attributes: dict[str, str] | None = None,
    queue: str = "my-queue",
    group: str | None = None,
    receive_count: int = 1,
) -> dict[str, Any]:
    """One record of an SQS event, as Lambda's event source mapping builds it."""
    message_attributes = {
        name: {
            "stringValue": value,
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        }
        for name, value in {
            **({"Category": category} if category is not None else {}),
            **(attributes or {}),
        }.items()
    }
    system = {
        "ApproximateReceiveCount": str(receive_count),
        "SentTimestamp": "1545082649183",
        "SenderId": "AIDAIENQZJOLO23YVJ4VO",
        "ApproximateFirstReceiveTimestamp": "1545082649185",
    }
    if group is not None:
        system |= {
            "MessageGroupId": group,
            "SequenceNumber": "18849496460467696128",
            "MessageDeduplicationId": f"dedup-{message_id}",
        }
    return {
        "messageId": message_id,
        "receiptHandle": f"AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a-{message_id}",
        "body": body,
        "attributes": system,
        "messageAttributes": message_attributes,
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
        "awsRegion": REGION,
    }


def order(id_: str, amount: float = 9.5) -> str:
    return json.dumps({"id": id_, "amount": amount, "tags": []})


def sns_record(message: str, *, category: str | None = "Order", message_id: str) -> dict[str, Any]:
    """One record of an SNS event (`Sns.MessageAttributes` as {"Type", "Value"})."""
    attributes = {"Test": {"Type": "String", "Value": "TestString"}}
    if category is not None:
        attributes["Category"] = {"Type": "String", "Value": category}
    return {
        "EventVersion": "1.0",
        "EventSubscriptionArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:sns-lambda:21be56ed",
        "EventSource": "aws:sns",
        "Sns": {
            "SignatureVersion": "1",
            "Timestamp": "2019-01-02T12:45:07.000Z",
            "Signature": "tcc6faL2yUC6dgZdmrwh1Y4cGa/ebXEkAi6RibDsvpi+tE/1+82j...65r==",
            "SigningCertUrl": f"https://sns.{REGION}.amazonaws.com/SimpleNotification",
            "MessageId": message_id,
            "Message": message,
            "MessageAttributes": attributes,
            "Type": "Notification",
            "UnsubscribeUrl": f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe",
            "TopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:sns-lambda",
            "Subject": "TestInvoke",
        },
    }


def eventbridge(detail: dict[str, Any], *, detail_type: str = "Order", id_: str) -> dict[str, Any]:
    """An EventBridge event, as a rule invokes Lambda with it (or delivers it to SQS)."""
    return {
        "version": "0",
        "id": id_,
        "detail-type": detail_type,
        "source": "billing",
        "account": ACCOUNT,
        "time": "2017-12-22T18:43:48Z",
        "region": REGION,
        "resources": [],
        "detail": detail,
    }


def s3_record(
    key: str, *, size: int | None = 1305107, name: str = "ObjectCreated:Put"
) -> dict[str, Any]:
    """One record of an S3 event notification (the key URL-encoded, as S3 sends it)."""
    obj: dict[str, Any] = {"key": key, "sequencer": "0C0F6F405D6ED209E1"}
    if size is not None:
        obj |= {"size": size, "eTag": "b21b84d653bb07b05b1e6b33684dc11b"}
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": "2019-09-03T19:37:27.192Z",
        "eventName": name,
        "userIdentity": {"principalId": "AWS:AIDAINPONIXQXHT3IKHL2"},
        "requestParameters": {"sourceIPAddress": "205.255.255.255"},
        "responseElements": {"x-amz-request-id": "D82B88E5F771F645", "x-amz-id-2": "vlR7PnpV2C"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "828aa6fc-f7b5-4305-8584-487c791949c1",
            "bucket": {
                "name": "lambda-artifacts-deafc19498e3f2df",
                "ownerIdentity": {"principalId": "A3I5XTEXAMAI3E"},
                "arn": "arn:aws:s3:::lambda-artifacts-deafc19498e3f2df",
            },
            "object": obj,
        },
    }


def dynamodb_record(
    sequence: str, *, new: dict[str, Any] | None, old: dict[str, Any] | None, name: str = "INSERT"
) -> dict[str, Any]:
    """One record of a DynamoDB Streams event (NEW_AND_OLD_IMAGES)."""
    ddb: dict[str, Any] = {
        "ApproximateCreationDateTime": 1693997155.0,
        "Keys": {"Id": {"N": "101"}},
        "StreamViewType": "NEW_AND_OLD_IMAGES",
        "SequenceNumber": sequence,
        "SizeBytes": 26,
    }
    if new is not None:
        ddb["NewImage"] = new
    if old is not None:
        ddb["OldImage"] = old
    return {
        "eventID": f"event-{sequence}",
        "eventVersion": "1.0",
        "dynamodb": ddb,
        "awsRegion": "us-west-2",
        "eventName": name,
        "eventSourceARN": (
            f"arn:aws:dynamodb:us-west-2:{ACCOUNT}:table/Orders/stream/2023-09-06T10:45:55.123"
        ),
        "eventSource": "aws:dynamodb",
    }


class FakeContext:
    """Lambda's context object, with a clock the test moves: each call to
    get_remaining_time_in_millis returns the next of `remaining` (the last one repeats)."""

    def __init__(self, *remaining: int) -> None:
        self.remaining = list(remaining)
        self.aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining.pop(0) if len(self.remaining) > 1 else self.remaining[0]
