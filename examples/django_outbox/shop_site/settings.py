"""Settings of the example: one app on PostgreSQL, its outbox, and where the relay sends.

Everything a deployment changes comes from the environment:

- DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test): the shop's database,
  which holds the orders, the bills, the outbox and the "handled" records;
- SHOP_DB_SCHEMA (default: none, the server's search_path): the PostgreSQL schema of the
  app's own tables (orders, bills, Django's migration records); tests give each run its own;
- QCHAN_OUTBOX (default outbox): the outbox table, qchan.<QCHAN_OUTBOX>;
- QCHAN_RELAY_TO (default amqp://guest:guest@127.0.0.1:5672/%2F?queue=orders): where
  `manage.py relay` forwards the outbox, and what `qchan worker billing:bill` reads;
- QCHAN_HANDLED_TABLE (default qchan.handled): the billing handler's "handled" records;
- DJANGO_SECRET_KEY, DJANGO_DEBUG=1, DJANGO_ALLOWED_HOSTS (comma-separated).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SHOP_DB_SCHEMA = os.environ.get("SHOP_DB_SCHEMA", "")
QCHAN_OUTBOX = os.environ.get("QCHAN_OUTBOX", "outbox")
QCHAN_RELAY_TO = os.environ.get(
    "QCHAN_RELAY_TO", "amqp://guest:guest@127.0.0.1:5672/%2F?queue=orders"
)
QCHAN_HANDLED_TABLE = os.environ.get("QCHAN_HANDLED_TABLE", "qchan.handled")
# The outbox as a queue URL: what `manage.py relay` (or `qchan relay`) reads.
QCHAN_OUTBOX_URL = f"{DATABASE_URL}?queue={QCHAN_OUTBOX}"


def _database(url: str, schema: str) -> dict[str, Any]:
    """Django's DATABASES entry for a postgresql:// URL (and a schema, first on the path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    options: dict[str, str] = {}
    if schema:
        options["options"] = f"-c search_path={schema}"
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": options,
    }


DATABASES = {"default": _database(DATABASE_URL, SHOP_DB_SCHEMA)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = ["shop"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "shop_site.urls"
WSGI_APPLICATION = "shop_site.wsgi.application"
USE_TZ = True
TIME_ZONE = "UTC"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # Not propagated: `qchan worker` adds a handler of its own to the root logger.
    "loggers": {
        name: {"handlers": ["console"], "level": "INFO", "propagate": False}
        for name in ("shop", "billing", "qchan")
    },
}
