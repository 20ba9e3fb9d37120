"""An order, and the bill the billing worker writes for it (once per order)."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=200)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"order {self.pk}: {self.amount} for {self.customer}"


class Bill(models.Model):
    """Written by `billing.bill` in the same transaction as its "handled" record.

    Deliberately no unique constraint on `order`: the handled record alone is what keeps
    a redelivered OrderPlaced from billing twice (add one in your own schema as a belt).
    """

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="bills")
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    message_id = models.CharField(max_length=200)  # the OrderPlaced message's qchan-id
    billed_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"bill {self.pk}: order {self.order_id}, {self.amount}"
