"""A pool of worker threads fed by one channel, with a `done` channel for cancellation.

Run: python examples/worker_pool.py
"""

from __future__ import annotations

import threading

from qchan import Chan, select


def main() -> None:
    jobs: Chan[int] = Chan(0, name="jobs")
    results: Chan[tuple[str, int]] = Chan(8, name="results")
    done: Chan[None] = Chan(0, name="done")  # closing it cancels every worker

    def worker() -> None:
        name = threading.current_thread().name
        while True:
            sel = select(jobs, done)
            assert sel is not None
            if sel.index == 1 or not sel.ok:  # cancelled, or no more jobs
                return
            results.send((name, sel.value * sel.value))

    workers = [threading.Thread(target=worker, name=f"worker-{i}") for i in range(4)]
    for w in workers:
        w.start()

    def feed() -> None:
        for j in range(20):
            jobs.send(j)
        jobs.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    total = sum(results.recv()[1] for _ in range(20))
    done.close()
    for t in [feeder, *workers]:
        t.join()
    print(f"4 workers squared 20 numbers; sum = {total}")


if __name__ == "__main__":
    main()
