"""Many threads on one channel: nothing lost, nothing duplicated, everyone ends at close."""

from __future__ import annotations

import pytest
from support.helpers import join_all, start

from qchan import Chan


@pytest.mark.parametrize("capacity", [0, 1, 64])
def test_8_producers_8_consumers_move_200k_items_exactly_once(capacity: int) -> None:
    producers, consumers, total = 8, 8, 200_000
    per = total // producers
    ch: Chan[int] = Chan(capacity)

    def produce(p: int) -> None:
        send = ch.send
        for i in range(p * per, (p + 1) * per):
            send(i)

    def consume() -> list[int]:
        return list(ch)  # ends only when the channel is closed and drained

    cs = [start(consume, name=f"consumer-{i}") for i in range(consumers)]
    ps = [start(produce, p, name=f"producer-{p}") for p in range(producers)]
    join_all(ps, 120)
    ch.close()
    parts = join_all(cs, 60)  # every consumer returns once closed and drained
    got = [v for part in parts for v in part]
    assert len(got) == total, f"{total - len(got)} items lost or {len(got) - total} duplicated"
    assert sorted(got) == list(range(total))
    # Per-producer FIFO is visible to each consumer (Go guarantees order per sender).
    for part in parts:
        last: dict[int, int] = {}
        for v in part:
            p = v // per
            assert v > last.get(p, -1)
            last[p] = v
