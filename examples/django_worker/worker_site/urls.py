"""URLs: POST /orders/ (or /orders, as in the Flask example) enqueues an order.

Both spellings are routed: CommonMiddleware's APPEND_SLASH would answer a POST
to /orders with a redirect that drops the body.
"""

from django.urls import path
from orders import views

urlpatterns = [
    path("orders/", views.create_order, name="create-order"),
    path("orders", views.create_order),
]
