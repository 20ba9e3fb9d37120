"""The orders handler as a long-running worker: `serve` on the queue at $QCHAN_URL.

Run: QCHAN_URL="sqs://orders?region=eu-west-1" python worker.py
SIGTERM or Ctrl-C stops it gracefully: the orders in hand are finished and acked.
"""

from __future__ import annotations

import logging
import os
import threading

from billing import Order, handle

from qchan import connect, serve, stop_on_signals


def main(stop: threading.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (in the main thread) or until `stop` is set."""
    stop = stop or threading.Event()
    q = connect(os.environ["QCHAN_URL"])
    # Installed before the ready line, so a signal sent as soon as it is read stops cleanly.
    with stop_on_signals(stop) as received:
        print(f"orders worker: serving {q.url}", flush=True)
        served = serve(handle, Order, q, stop=stop, signals=())
    why = f"stopped by {received[0].name}" if received else "stopped"
    print(f"orders worker: {why}; {served.handled} handled, {served.failed} failed", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
