from django.apps import AppConfig


class OrdersConfig(AppConfig):
    """No models: the app exists for its view and its `qchan_worker` management command."""

    name = "orders"
