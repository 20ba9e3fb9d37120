from django.apps import AppConfig


class ShopConfig(AppConfig):
    """Orders and bills; the outbox relay as `manage.py relay`."""

    name = "shop"
