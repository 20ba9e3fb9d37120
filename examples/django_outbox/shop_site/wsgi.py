"""WSGI entry point: `gunicorn shop_site.wsgi` (from examples/django_outbox)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_site.settings")

application = get_wsgi_application()
