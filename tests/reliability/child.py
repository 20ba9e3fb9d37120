"""A producer or consumer process for the crash-safety scenarios (run by test_crash.py).

    python tests/reliability/child.py hold    URL RUN N_HOLD N_ACK [OPTIONS_JSON]
    python tests/reliability/child.py produce URL RUN N CLOSE [OPTIONS_JSON]
    python tests/reliability/child.py poison  URL RUN BAD [OPTIONS_JSON [IDLE]]

`hold`: receive `Numbered` messages of run RUN; ack the first N_ACK, keep the
next N_HOLD un-acked; print one line `holding <acked numbers> | <held
numbers>` and wait forever (the test kills it with SIGKILL).

`produce`: send N messages through a buffered (at-most-once) channel with a
long linger, so most are still batched in the process when it ends; then
CLOSE says how it ends: `close` calls `q.close()`; `exit` just returns from
main (the interpreter's exit hook closes the queue); `abandon` ends with
`os._exit(0)` (no close, no exit hooks: the at-most-once buffer is lost). Prints `sent <n>` before
closing, and `undelivered <k>` if close raised. Exit status 0 unless it fails.

`poison`: see `poison()`: a consumer that dies on message number BAD.

Options (JSON object) go to `qchan.connect`. Arguments are plain strings and
JSON: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for `reliability`

from qchan import AT_MOST_ONCE, EnqueueError, connect, dequeue, enqueue
from reliability.harness import Numbered


def hold(url: str, run: str, n_hold: int, n_ack: int, options: dict[str, object]) -> None:
    q = connect(url, **options)
    rcv, ack = dequeue(Numbered, q)
    acked: list[int] = []
    held: list[int] = []
    while len(held) < n_hold:
        m = rcv.recv(timeout=60)
        if m.object.run != run:
            ack.send(m)
            continue
        if len(acked) < n_ack:
            ack.send(m)
            acked.append(m.object.n)
        else:
            held.append(m.object.n)  # never acked
    # Wait until the acks were handed to the broker before saying so.
    deadline = threading.Event()
    for _ in range(500):
        if q.stats().acked >= len(acked):
            break
        deadline.wait(0.01)
    print(f"holding {' '.join(map(str, acked))} | {' '.join(map(str, held))}", flush=True)
    threading.Event().wait()  # until SIGKILL


def poison(url: str, run: str, bad: int, options: dict[str, object], idle: float = 3.0) -> None:
    """Receive and ack `Numbered` messages of run RUN one at a time (each ack applied
    before the next message), printing `ok N DELIVERIES`; on number BAD print `poison
    DELIVERIES` and die at once (`os._exit`: no close, no release), as a process that a
    poison message kills does. After IDLE s (3) with nothing, print `idle` and close."""
    q = connect(url, **options)
    rcv, ack = dequeue(Numbered, q)
    acked = 0
    while True:
        try:
            m = rcv.recv(timeout=idle)
        except TimeoutError:
            print("idle", flush=True)
            break
        if m.object.run == run and m.object.n == bad:
            print(f"poison {m.deliveries}", flush=True)
            os._exit(3)
        ack.send(m)
        acked += 1
        for _ in range(500):  # the ack applied before the next message, or a crash loses it
            if q.stats().acked >= acked:
                break
            threading.Event().wait(0.01)
        if m.object.run == run:
            print(f"ok {m.object.n} {m.deliveries}", flush=True)
    q.close()


def produce(url: str, run: str, n: int, how: str, options: dict[str, object]) -> None:
    q = connect(url, **{"linger": 0.5, **options})
    out, dlq = enqueue(Numbered, q, policy=AT_MOST_ONCE, capacity=n)
    for i in range(n):
        out.send(Numbered(run, i))
    print(f"sent {n}", flush=True)
    if how == "close":
        try:
            q.close()
        except EnqueueError as e:
            print(f"undelivered {len(e.failed)}", flush=True)
            raise SystemExit(3) from None
        print(f"closed {len(dlq)}", flush=True)
    elif how == "abandon":  # die without closing: what is still buffered is lost
        os._exit(0)
    # how == "exit": return with the queue open; the interpreter's exit hook closes it


def main() -> None:
    mode, url, run = sys.argv[1:4]
    options = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
    if mode == "hold":
        hold(url, run, int(sys.argv[4]), int(sys.argv[5]), options)
    elif mode == "produce":
        produce(url, run, int(sys.argv[4]), sys.argv[5], options)
    elif mode == "poison":
        options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
        idle = float(sys.argv[6]) if len(sys.argv) > 6 else 3.0
        poison(url, run, int(sys.argv[4]), options, idle)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
