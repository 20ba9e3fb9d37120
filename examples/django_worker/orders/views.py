"""POST /orders/: validate, enqueue synchronously, and say whether the broker has it.

202 with the order id once the broker accepted the order; 400 naming the bad
field; 415 for a body that is not JSON; 503 with the reason when the broker
refused it or did not answer in time (then it may still be delivered). Never a
500 for broker trouble.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from qchan import ChannelClosed, EnqueueError, QchanError

from .messages import InvalidOrder, Order, parse_order
from .queue import order_sender

log = logging.getLogger("orders.views")


def _error(status: int, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


# A JSON API for programs: no cookies, no session, so no CSRF to protect against.
@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    if request.content_type != "application/json":
        return _error(415, "send the order as JSON (Content-Type: application/json)")
    try:
        data = json.loads(request.body)
    except ValueError as e:  # includes bytes that are not UTF-8
        return _error(400, f"malformed JSON: {e}")
    try:
        new = parse_order(data)
    except InvalidOrder as e:
        return _error(400, str(e), problems=e.problems)
    order = Order(
        id=new.id or uuid.uuid4().hex,
        customer=new.customer,
        item=new.item,
        quantity=new.quantity,
    )
    timeout: float = settings.QCHAN_PUT_TIMEOUT
    try:
        sender = order_sender()  # the first order opens the queue; a transport may connect now
    except QchanError as e:
        log.error("order %s: cannot open the queue: %s", order.id, e)
        return _error(503, f"cannot open the queue: {e}", id=order.id)
    try:
        sender.put(order, timeout=timeout)
    except TimeoutError:
        log.warning("order %s: no answer from the broker within %s s", order.id, timeout)
        return _error(
            503,
            f"the broker did not answer within {timeout} s; the order may still be delivered "
            f"(retry with the same id so that it can be recognised)",
            id=order.id,
        )
    except (EnqueueError, ChannelClosed) as e:
        cause = e.__cause__ or e
        log.warning("order %s: not accepted by the broker: %s", order.id, cause)
        return _error(503, f"the broker did not accept the order: {cause}", id=order.id)
    log.info(
        "order %s accepted: %s x %s for %s", order.id, order.quantity, order.item, order.customer
    )
    return JsonResponse({"id": order.id, "status": "accepted"}, status=202)
