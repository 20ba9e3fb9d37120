"""The orders handler as an AWS Lambda function: handler "lambda_function.handler".

Lambda calls `handler(event, context)` with a batch of SQS records; the answer names the
failed ones (partial batch response), which go back to the queue. See README.md.
"""

from __future__ import annotations

from billing import Order, handle

from qchan.aws import lambda_handler

handler = lambda_handler(handle, Order)
