"""RabbitMQ consume rates: the code of 84ac3a1 vs the new one (issue 25, delivery follows demand).

What changed: at 84ac3a1 a consumer subscribed with `basic.qos` prefetch = the
queue's `in_flight` (500) and took that many, whatever its consumers could use. The
new kernel asks only for what the consumers can take soon (the receivers waiting,
plus each open `rcv`'s buffer, which grows with the messages settled up to its
capacity, `dequeue(..., capacity=32)` by default, or to what the application settles
in 50 ms if more: kernel/routes.py), and the RabbitMQ adapter subscribes several
times ("credit lines") with credit that follows that demand
(adapters/rabbitmq/_consumer.py). This measures whether that costs throughput.

Both versions run in the same run, as separate processes: each measurement is a child
process (this script with `--child CASE`) that prints one JSON line. "today" children
run with `PYTHONPATH=/tmp/basepkg` (`--base`), a package tree of qchan at 84ac3a1,
so `import qchan` gets the old code; "new" and raw pika children run without it and
get the venv's installed qchan (this checkout, an editable install: the working tree
as it is when each child starts), or with `--new DIR`, a package tree of the code to
measure (a snapshot, so that edits made meanwhile do not leak into the run; say
`mkdir /tmp/newpkg && cp -rL build/__editable__.qchan-*/qchan /tmp/newpkg/`). Each
child checks which tree it imported (`qchan.__file__`) and fails if it is the wrong one.

Throughput table. For every run of every case: a fresh, uniquely named quorum queue
declared as qchan's adapter declares it (its `.dlq` too), N messages of about 1 KiB
of JSON pre-loaded with raw pika (not timed; the load is checked complete), then the
child consumes them, timed from the first message received until N acks are applied
(qchan: `q.stats().acked` reaches N, bench_serve.py's `wait_acked`; raw pika: the
last `basic_ack` written). Every consumer decodes each message into the same attrs
class (raw pika: `json.loads` + the constructor) and marks its id: the child fails
unless it saw exactly the N distinct ids. Once the child has exited, the parent checks
the queue and its dead-letter queue are empty (every ack reached the broker, nothing
was dead-lettered), then deletes both. Rows:
- raw pika: `BlockingConnection`, `basic_qos(500)`, `basic_consume`, `basic_ack` per
  message (the reference), and `basic_ack(multiple=True)` every 100 messages;
- `with dequeue(Payload, q) as (rcv, ack): for msg in rcv: ack.send(msg)`, today and
  new with default options; new with `dequeue(..., capacity=8|128|512)`; today with
  `connect(url, in_flight=100, prefetch=100)` (today's way to take less);
- `serve(handler, Payload, q, workers=4)` with a trivial handler, stopped
  (`stop.set()`) once the N acks are applied (as bench_serve.py), today and new, and
  new with `capacity=128`.
The cases run interleaved (A, B, C, ..., A, B, C, ...), R rounds; wall time on a small
shared machine swings 2-3x, so read the medians, and the paired column.

Fairness table (small): 400 messages wait; two `serve(workers=2)` consumers on
connections of their own, in one child process, a 20 ms handler, the second started
0.5 s after the first (tests/reliability/test_demand.py's scenario); how many each
handled, how many were handled twice, and the seconds until all 400 were handled.

The tree of 84ac3a1, once (`qchan` laid out as the package installs):
    git worktree add /tmp/qchan-84ac3a1 84ac3a1
    mkdir -p /tmp/basepkg/qchan && ln -s /tmp/qchan-84ac3a1/channels/* /tmp/basepkg/qchan/ \
        && ln -s /tmp/qchan-84ac3a1/adapters /tmp/basepkg/qchan/adapters

Run (RabbitMQ on 127.0.0.1:5672, guest/guest; from the checkout, with the venv):
    .venv/bin/python benchmarks/bench_demand.py [--messages 20000] [--rounds 5]
        [--fair-rounds 3] [--cases raw,today-loop,new-loop,...] [--base /tmp/basepkg]
        [--new DIR]
    .venv/bin/python benchmarks/bench_demand.py --quick    # 3,000 messages, 1 round
`--cases` takes the keys in the first column of the tables (see `--list`).

Reading it: msg/s is N over the timed span; "runs" lists every round's rate in order;
CPU µs/msg is the consumer process's CPU time (all its threads, `time.process_time`)
over the same span, per message: less noisy than wall time on a shared machine. "vs
raw pika" is the row's median over raw pika's (ack per message). "vs today" compares a
new row with today's row of the same kind (loop with the loop, serve with serve):
the ratio of the medians, and "paired", the median over rounds of each round's own
ratio (the two ran a few seconds apart, so a slow spell of the machine hits both).
A new row near 1.00x today (within the spread of the runs) costs no throughput. The
exit status is 1 if any run failed (its row says why).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs
import pika  # type: ignore[import-untyped]

import qchan
from qchan import Queue, connect, dequeue, serve

HOST, PORT = "127.0.0.1", 5672
AMQP = f"amqp://guest:guest@{HOST}:{PORT}/%2F"
PREFETCH = 500  # raw pika's, and today's default (in_flight = prefetch = 500)
BASE = "/tmp/basepkg"  # qchan at 84ac3a1, importable as a package tree
HEADERS = {"Category": "Payload", "Source": "bench", "System": "amqp", "Queue": "bench"}
FAIR_MESSAGES, FAIR_WORK, FAIR_WORKERS, FAIR_DELAY = 400, 0.02, 2, 0.5

Code = Literal["raw", "today", "new"]
Kind = Literal["pika", "loop", "serve", "fair"]


@attrs.frozen
class Payload:
    """About 1 KiB once encoded as JSON (bench_rabbitmq.py's), with a distinct id each."""

    id: int
    text: str


@attrs.frozen
class Case:
    key: str
    label: str
    code: Code
    kind: Kind
    capacity: int = 32  # dequeue's / serve's
    options: dict[str, int] = attrs.field(factory=dict)  # connect(url, **options)
    every: int = 1  # raw pika: ack with multiple=True every `every` messages (1: each)
    versus: str = ""  # the key of today's row of the same kind


CASES: list[Case] = [
    Case("raw", "raw pika, basic_ack per message, prefetch 500", "raw", "pika"),
    Case("raw-multi", "raw pika, basic_ack multiple=True every 100", "raw", "pika", every=100),
    Case("today-loop", "dequeue + ack loop, defaults", "today", "loop"),
    Case("new-loop", "dequeue + ack loop, defaults", "new", "loop", versus="today-loop"),
    Case("new-loop-c8", "dequeue + ack loop, capacity=8", "new", "loop", 8, versus="today-loop"),
    Case(
        "new-loop-c128",
        "dequeue + ack loop, capacity=128",
        "new",
        "loop",
        128,
        versus="today-loop",
    ),
    Case(
        "new-loop-c512",
        "dequeue + ack loop, capacity=512",
        "new",
        "loop",
        512,
        versus="today-loop",
    ),
    Case(
        "today-loop-p100",
        "dequeue + ack loop, in_flight=100, prefetch=100",
        "today",
        "loop",
        options={"in_flight": 100, "prefetch": 100},
    ),
    Case("today-serve4", "serve(workers=4)", "today", "serve"),
    Case("new-serve4", "serve(workers=4)", "new", "serve", versus="today-serve4"),
    Case(
        "new-serve4-c128",
        "serve(workers=4, capacity=128)",
        "new",
        "serve",
        128,
        versus="today-serve4",
    ),
]
FAIR_CASES: list[Case] = [
    Case("fair-today", "two serve(workers=2), 20 ms handler", "today", "fair"),
    Case("fair-new", "two serve(workers=2), 20 ms handler", "new", "fair"),
]
BY_KEY = {case.key: case for case in CASES + FAIR_CASES}


def url(queue: str) -> str:
    return f"{AMQP}?queue={queue}&queue_type=quorum"


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# ---- the parent: queues, children, tables ------------------------------------------------


def blocking() -> Any:
    return pika.BlockingConnection(pika.ConnectionParameters(HOST, PORT))


def declare() -> str:
    """A fresh quorum queue and its dead-letter queue, with the arguments qchan's adapter
    declares (adapters/rabbitmq/_topology.py, the same at 84ac3a1 and now)."""
    name = f"bench-demand-{uuid.uuid4().hex[:10]}"
    conn = blocking()
    ch = conn.channel()
    ch.queue_declare(f"{name}.dlq", durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_declare(
        name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{name}.dlq",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    conn.close()
    return name


def depth(ch: Any, queue: str) -> int:
    """Messages ready on `queue` (a quorum queue counts what it has applied)."""
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def fill(queue: str, n: int, timeout: float = 120.0) -> None:
    """n messages with ids 0..n-1, published without confirms; returns once the queue holds
    all n (the broker has applied them), or raises."""
    text = "x" * 1000
    conn = blocking()
    ch = conn.channel()
    for i in range(n):
        body = json.dumps({"id": i, "text": text}).encode()
        props = pika.BasicProperties(
            content_type="application/json", message_id=str(i), headers=HEADERS, delivery_mode=2
        )
        ch.basic_publish("", queue, body, props)
    deadline = time.monotonic() + timeout
    while (held := depth(ch, queue)) < n:
        if time.monotonic() > deadline:
            conn.close()
            raise RuntimeError(f"pre-load: the queue holds {held} of {n} after {timeout} s")
        conn.sleep(0.05)
    conn.close()
    if held != n:
        raise RuntimeError(f"pre-load: the queue holds {held}, not {n}")


def drained(queue: str, timeout: float = 15.0) -> None:
    """Raise unless the queue and its dead-letter queue are empty (the consumer has exited,
    so anything it had not acked is back on the queue)."""
    conn = blocking()
    ch = conn.channel()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left, dead = depth(ch, queue), depth(ch, f"{queue}.dlq")
            if not left and not dead:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"after the child: {left} message(s) left on the queue, {dead} dead-lettered"
                )
            conn.sleep(0.1)
    finally:
        conn.close()


def delete(queue: str) -> None:
    conn = blocking()
    ch = conn.channel()
    ch.queue_delete(queue)
    ch.queue_delete(f"{queue}.dlq")
    conn.close()


@attrs.frozen
class Trees:
    """Where each code's qchan comes from: package trees put first on PYTHONPATH."""

    base: str  # today's
    new: str = ""  # the new code's; "" for the venv's installed qchan

    def env(self, code: Code) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        tree = self.base if code == "today" else self.new if code == "new" else ""
        if tree:
            env["PYTHONPATH"] = tree
        return env

    def argv(self) -> list[str]:
        return ["--base", self.base] + (["--new", self.new] if self.new else [])

    def check(self, code: Code, imported: Path) -> None:
        """Exit unless `imported` (qchan/__init__.py, as imported) is `code`'s."""

        def under(tree: str) -> bool:
            # Not resolved: a package tree may be links into a checkout.
            return bool(tree) and imported.is_relative_to(Path(tree).absolute())

        if code == "today":
            right = under(self.base)
        elif code == "new" and self.new:
            right = under(self.new)
        else:
            right = not under(self.base)
        if not right:
            raise SystemExit(f"a {code!r} child imported the wrong qchan: {imported}")


def run_child(case: Case, n: int, trees: Trees) -> dict[str, Any]:
    """One run of `case` on a fresh queue holding n messages: the child's JSON result."""
    queue = declare()
    try:
        fill(queue, n)
        argv = [sys.executable, __file__, "--child", case.key, "--queue", queue]
        argv += ["--messages", str(n), *trees.argv()]
        out = subprocess.run(
            argv,
            env=trees.env(case.code),
            capture_output=True,
            text=True,
            timeout=90 + n / 200,
            check=False,
        )
        if out.returncode != 0:
            tail = "\n".join(out.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"child exited {out.returncode}:\n{tail}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        drained(queue)
        return result
    finally:
        delete(queue)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def throughput(cases: list[Case], n: int, rounds: int, trees: Trees) -> bool:
    """Run the cases interleaved, print the table; False if any run failed."""
    rates: dict[str, list[float]] = {c.key: [] for c in cases}
    cpus: dict[str, list[float]] = {c.key: [] for c in cases}
    by_round: dict[str, dict[int, float]] = {c.key: {} for c in cases}
    failed: dict[str, str] = {}
    before = load()
    for r in range(rounds):
        for case in cases:
            try:
                res = run_child(case, n, trees)
            except Exception as e:  # noqa: BLE001 - the row says why; the run goes on
                failed[case.key] = str(e).strip().splitlines()[-1][:200]
                print(f"  round {r + 1}/{rounds} {case.key}: FAILED\n{e}", file=sys.stderr)
                continue
            rate = n / res["seconds"]
            rates[case.key].append(rate)
            cpus[case.key].append(res["cpu"] * 1e6 / n)
            by_round[case.key][r] = rate
            print(
                f"  round {r + 1}/{rounds} {case.key}: {rate:,.0f} msg/s, "
                f"{res['cpu'] * 1e6 / n:.0f} µs CPU/msg  ({res['qchan']})",
                file=sys.stderr,
            )
    body = len(json.dumps({"id": n - 1, "text": "x" * 1000}))
    print(
        f"RabbitMQ consume, today (84ac3a1, PYTHONPATH={trees.base}) vs new "
        f"({f'PYTHONPATH={trees.new}' if trees.new else 'the installed qchan'}), "
        f"{n:,} pre-loaded messages of ~{body} bytes on a fresh quorum queue per run, "
        f"median of {rounds} interleaved round(s); Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {before} before, {load()} after\n"
    )
    print(
        "| case | consumer | code | msg/s (median) | runs msg/s | CPU µs/msg | vs raw pika "
        "| vs today | vs today, paired |"
    )
    print("|---|---|---|---:|---|---:|---:|---:|---:|")
    raw = median(rates.get("raw", []))
    for case in cases:
        rate = median(rates[case.key])
        if rate is None:
            why = failed.get(case.key, "no run")
            print(f"| {case.key} | {case.label} | {case.code} | — | FAILED: {why} | | | | |")
            continue
        runs = ", ".join(f"{x:,.0f}" for x in rates[case.key])
        if case.key in failed:
            runs += f" (and FAILED: {failed[case.key]})"
        cpu = median(cpus[case.key]) or 0.0
        vs_raw = f"{rate / raw:.2f}x" if raw else "—"
        vs_today = paired = "" if not case.versus else "—"
        today = median(rates.get(case.versus, []))
        if case.versus and today:
            vs_today = f"{rate / today:.2f}x"
            mine, theirs = by_round[case.key], by_round[case.versus]
            ratios = [mine[i] / theirs[i] for i in mine if i in theirs]
            paired = f"{statistics.median(ratios):.2f}x" if ratios else "—"
        print(
            f"| {case.key} | {case.label} | {case.code} | {rate:,.0f} | {runs} | {cpu:.0f} "
            f"| {vs_raw} | {vs_today} | {paired} |"
        )
    print()
    return not failed


def fairness(cases: list[Case], rounds: int, trees: Trees) -> bool:
    """The slow-handler scenario, interleaved; print its table; False if any run failed."""
    rows: list[tuple[Case, int, dict[str, Any] | str]] = []
    before = load()
    for r in range(rounds):
        for case in cases:
            try:
                res: dict[str, Any] | str = run_child(case, FAIR_MESSAGES, trees)
            except Exception as e:  # noqa: BLE001 - the row says why; the run goes on
                res = str(e).strip().splitlines()[-1][:200]
                print(f"  fairness round {r + 1} {case.key}: FAILED\n{e}", file=sys.stderr)
            else:
                print(f"  fairness round {r + 1} {case.key}: {res}", file=sys.stderr)
            rows.append((case, r + 1, res))
    print(
        f"Slow handlers: {FAIR_MESSAGES} messages waiting; two serve(workers={FAIR_WORKERS}) "
        f"consumers on connections of their own, a {FAIR_WORK * 1000:.0f} ms handler, the "
        f"second started {FAIR_DELAY} s after the first; load average {before} before, "
        f"{load()} after\n"
    )
    print("| case | code | round | first consumer | second consumer | handled twice | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    ok = True
    for case, r, res in rows:
        if isinstance(res, str):
            ok = False
            print(f"| {case.key} | {case.code} | {r} | FAILED: {res} | | | |")
            continue
        first, second = res["shares"]
        print(
            f"| {case.key} | {case.code} | {r} | {first} | {second} | {res['twice']} "
            f"| {res['seconds']:.1f} |"
        )
    print()
    return ok


def parent(args: argparse.Namespace) -> int:
    for option, tree in (("--base", args.base), ("--new", args.new)):
        if tree and not (Path(tree) / "qchan" / "__init__.py").is_file():
            raise SystemExit(f"{option} {tree}: no qchan package there")
    trees = Trees(args.base, args.new)
    keys = [k.strip() for k in args.cases.split(",") if k.strip()] if args.cases else []
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(BY_KEY)}")
    wanted = set(keys) if keys else set(BY_KEY)
    n, rounds, fair_rounds = args.messages, args.rounds, args.fair_rounds
    if args.quick:
        n, rounds, fair_rounds = 3000, 1, 1
    began = time.monotonic()
    print(f"Python {sys.version.split()[0]}; load average {load()} at start\n")
    ok = True
    chosen = [c for c in CASES if c.key in wanted]
    if chosen:
        ok &= throughput(chosen, n, rounds, trees)
    fair = [c for c in FAIR_CASES if c.key in wanted]
    if fair and fair_rounds > 0:
        ok &= fairness(fair, fair_rounds, trees)
    print(f"({time.monotonic() - began:.0f} s in all)")
    return 0 if ok else 1


# ---- the child: one measurement, one JSON line ----------------------------------------------


class Seen:
    """The ids consumed so far (each message's `id`, 0..n-1): counts and checks them."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.marks = bytearray(n)
        self.count = itertools.count(1).__next__  # atomic under the GIL (serve's workers)
        self.all_in = threading.Event()
        self.first = 0.0
        self.first_cpu = 0.0

    def __call__(self, obj: Payload) -> None:
        seen = self.count()
        if seen == 1:
            self.first, self.first_cpu = time.perf_counter(), time.process_time()
        self.marks[obj.id] = 1  # an id >= n raises: not one of ours
        if seen == self.n:
            self.all_in.set()

    def check(self, consumed: int) -> None:
        distinct = self.n - self.marks.count(0)
        if consumed != self.n or distinct != self.n:
            raise RuntimeError(
                f"consumed {consumed} message(s), {distinct} distinct, of {self.n} pre-loaded"
            )


def wait_acked(q: Queue, n: int, timeout: float = 120.0) -> None:
    """bench_serve.py's: until the queue has applied n acks."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while q.stats().acked < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {q.stats().acked} of {n} acked in {timeout} s")
        pause.wait(0.0005)


def child_pika(case: Case, queue: str, n: int) -> tuple[float, float]:
    conn = blocking()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=PREFETCH)
    seen = Seen(n)
    every = case.every
    got = 0

    def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
        nonlocal got
        seen(Payload(**json.loads(body)))
        got += 1
        if every == 1:
            ch.basic_ack(method.delivery_tag)
        elif got % every == 0 or got == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if got >= n:
            ch.stop_consuming()

    ch.basic_consume(queue, on_message)
    ch.start_consuming()  # basic_ack writes the frame at once: the last ack is sent
    ended, ended_cpu = time.perf_counter(), time.process_time()
    conn.close()
    seen.check(got)
    return ended - seen.first, ended_cpu - seen.first_cpu


def child_loop(case: Case, queue: str, n: int) -> tuple[float, float]:
    q = connect(url(queue), **case.options)
    seen = Seen(n)
    got = 0
    with dequeue(Payload, q, capacity=case.capacity) as (rcv, ack):
        send = ack.send
        for msg in rcv:
            seen(msg.object)
            send(msg)
            got += 1
            if got == n:
                break
        wait_acked(q, n)
        ended, ended_cpu = time.perf_counter(), time.process_time()
    q.close()
    seen.check(got)
    return ended - seen.first, ended_cpu - seen.first_cpu


def child_serve(case: Case, queue: str, n: int) -> tuple[float, float]:
    q = connect(url(queue), **case.options)
    seen = Seen(n)
    stop = threading.Event()
    ended: list[tuple[float, float]] = []

    def watch() -> None:
        seen.all_in.wait()  # no polling while the workers run
        wait_acked(q, n)
        ended.append((time.perf_counter(), time.process_time()))
        stop.set()

    watcher = threading.Thread(target=watch, daemon=True)  # no hang if serve raises
    watcher.start()
    served = serve(seen, Payload, q, workers=4, capacity=case.capacity, stop=stop, signals=())
    watcher.join(10)
    if not ended:
        raise RuntimeError(f"serve returned with {served.handled} handled, before {n} acks")
    seen.check(served.handled)
    return ended[0][0] - seen.first, ended[0][1] - seen.first_cpu


def child_fair(queue: str, n: int) -> dict[str, Any]:
    """Two serve consumers, the second FAIR_DELAY s later; until all n are handled."""
    handled: list[dict[int, int]] = [{}, {}]
    union: set[int] = set()
    lock = threading.Lock()
    done = threading.Event()
    stops = [threading.Event(), threading.Event()]
    errors: list[Exception] = []

    def consumer(i: int) -> None:
        def handle(obj: Payload) -> None:
            time.sleep(FAIR_WORK)  # the handler's work
            with lock:
                handled[i][obj.id] = handled[i].get(obj.id, 0) + 1
                union.add(obj.id)
                if len(union) >= n:
                    done.set()

        try:
            q = connect(url(queue))
            serve(handle, Payload, q, workers=FAIR_WORKERS, stop=stops[i], signals=())
        except Exception as e:  # noqa: BLE001 - reported below, loudly
            errors.append(e)
            done.set()

    began = time.perf_counter()
    threads = [threading.Thread(target=consumer, args=(0,))]
    threads[0].start()
    time.sleep(FAIR_DELAY)
    threads.append(threading.Thread(target=consumer, args=(1,)))
    threads[1].start()
    finished = done.wait(120)
    seconds = time.perf_counter() - began
    for stop in stops:
        stop.set()
    for t in threads:
        t.join(30)
    if errors:
        raise RuntimeError(f"a consumer raised: {errors[0]!r}") from errors[0]
    if not finished or len(union) != n or any(t.is_alive() for t in threads):
        raise RuntimeError(f"handled {len(union)} distinct of {n}; consumers still running?")
    both = [sum(h.values()) for h in handled]
    twice = sum(1 for i in range(n) if handled[0].get(i, 0) + handled[1].get(i, 0) > 1)
    return {"shares": both, "twice": twice, "seconds": seconds}


def child(args: argparse.Namespace) -> int:
    case = BY_KEY[args.child]
    imported = Path(qchan.__file__).absolute()
    Trees(args.base, args.new).check(case.code, imported)
    where = imported.resolve()
    out: dict[str, Any] = {"case": case.key, "qchan": str(where.parent)}
    if case.kind == "fair":
        out |= child_fair(args.queue, args.messages)
    else:
        run: dict[Kind, Callable[[Case, str, int], tuple[float, float]]] = {
            "pika": child_pika,
            "loop": child_loop,
            "serve": child_serve,
        }
        seconds, cpu = run[case.kind](case, args.queue, args.messages)
        out |= {"consumed": args.messages, "seconds": seconds, "cpu": cpu}
    print(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--fair-rounds", type=int, default=3, help="rounds of the fairness table")
    ap.add_argument("--cases", help="comma list of case keys (default: all); see --list")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3,000 messages, 1 round")
    ap.add_argument("--base", default=BASE, help="package tree holding today's qchan")
    ap.add_argument(
        "--new", default="", help="package tree holding the new qchan (default: the installed)"
    )
    ap.add_argument("--list", action="store_true", help="list the case keys and exit")
    ap.add_argument("--child", choices=sorted(BY_KEY), help=argparse.SUPPRESS)
    ap.add_argument("--queue", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.list:
        for case in CASES + FAIR_CASES:
            print(f"{case.key:16} {case.code:6} {case.label}")
        return 0
    if args.child:
        return child(args)
    return parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
