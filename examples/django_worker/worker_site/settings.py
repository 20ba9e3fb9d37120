"""Settings of the example: no database, one app, and the queue's URL.

Everything a deployment changes comes from the environment:
QCHAN_URL (default mem://django-orders), DJANGO_SECRET_KEY, DJANGO_DEBUG,
DJANGO_ALLOWED_HOSTS (comma-separated).
"""

import os

from qchan import Exponential

# The queue the view sends to and `manage.py qchan_worker` receives from. mem://
# lives inside one process: use amqp://, sqs:// or kafka:// to run the web
# server and the worker as separate processes (see README.md).
QCHAN_URL = os.environ.get("QCHAN_URL", "mem://django-orders")

# Options for `qchan.connect` (see the qchan README: retry, poll_wait, in_flight,
# time_to_flight, close_timeout, ...). The default retry policy of this example
# gives up within 2 s, inside the view's put timeout, so a refusal is a definite
# answer; the worker uses the same options.
QCHAN_OPTIONS = {"retry": Exponential(max_attempts=6, max_elapsed=2.0)}

# Seconds a request waits for the broker to accept an order before answering 503.
QCHAN_PUT_TIMEOUT = float(os.environ.get("QCHAN_PUT_TIMEOUT", "5"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = ["orders"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "worker_site.urls"
WSGI_APPLICATION = "worker_site.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}  # model-free: nothing to migrate
USE_TZ = True
TIME_ZONE = "UTC"  # Django sets the process time zone from this: keep log times honest

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "orders": {"handlers": ["console"], "level": "INFO"},
        "qchan": {"handlers": ["console"], "level": "INFO"},
    },
}
