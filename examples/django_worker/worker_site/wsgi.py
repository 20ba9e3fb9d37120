"""WSGI entry point: `gunicorn worker_site.wsgi` (from examples/django_worker)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "worker_site.settings")

application = get_wsgi_application()
