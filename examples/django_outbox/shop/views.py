"""POST /orders/: save the order and its OrderPlaced message in one transaction.

201 {"id": ...} once both are committed; 400 naming the bad field (nothing written);
415 for a body that is not JSON. The broker is not involved: the message waits in the
outbox for the relay, so a broker outage does not fail an order.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .messages import InvalidOrder, parse_order
from .orders import place_order

log = logging.getLogger("shop.views")


# A JSON API for programs: no cookies, no session, so no CSRF to protect against.
@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    if request.content_type != "application/json":
        return JsonResponse(
            {"error": "send the order as JSON (Content-Type: application/json)"}, status=415
        )
    try:
        new = parse_order(request.body)
    except InvalidOrder as e:
        return JsonResponse({"error": str(e)}, status=400)
    with transaction.atomic():  # the order and its message: both or neither
        order = place_order(new)
    log.info("order %s placed: %s for %s", order.pk, order.amount, order.customer)
    return JsonResponse({"id": order.pk}, status=201)
