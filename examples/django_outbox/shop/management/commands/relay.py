"""`python manage.py relay`: forward the outbox to settings.QCHAN_RELAY_TO until stopped.

The same as `qchan relay "$DATABASE_URL?queue=$QCHAN_OUTBOX" "$QCHAN_RELAY_TO"`, with the
URLs taken from the settings. A row leaves the outbox only once the target confirmed
it; SIGTERM or Ctrl-C stops after the batch in hand and exits 0. `--drain` returns once
the outbox is empty (scripts, tests).
"""

from __future__ import annotations

import threading
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

import qchan
from qchan.outbox import relay


class Command(BaseCommand):
    help = (
        "Forward the outbox (settings.QCHAN_OUTBOX_URL) to settings.QCHAN_RELAY_TO until "
        "SIGTERM or Ctrl-C (or, with --drain, until the outbox is empty)."
    )
    # For call_command from code: a threading.Event that stops the relay when set.
    stealth_options = ("stop",)

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--to",
            default=None,
            metavar="URL",
            help="the queue to publish to (default: settings.QCHAN_RELAY_TO)",
        )
        parser.add_argument(
            "--drain",
            action="store_true",
            help="return once the outbox is empty, instead of waiting for more",
        )

    def handle(self, *args: Any, **options: Any) -> str:
        source: str = settings.QCHAN_OUTBOX_URL
        target: str = options["to"] or settings.QCHAN_RELAY_TO
        stop: threading.Event = options.get("stop") or threading.Event()
        with qchan.stop_on_signals(stop) as received:
            self.stdout.write(
                f"relay: {qchan.redact(source)} -> {qchan.redact(target)}; "
                f"{'until the outbox is empty' if options['drain'] else 'SIGTERM or Ctrl-C stops'}"
            )
            self.stdout.flush()  # scripts wait for this line
            try:
                done = relay(source, target, stop=stop, drain=options["drain"])
            except (qchan.QchanError, TypeError, ValueError) as e:  # a bad URL or option
                raise CommandError(f"relay: {e}") from e
        why = f" (stopped by {received[0].name})" if received else ""
        return (
            f"relay: {done.relayed} relayed, {done.dead_lettered} dead-lettered, "
            f"{done.resent} sent again{why}"
        )
