"""An idempotent handler whose store (the real Redis, through a TCP proxy) is cut while
messages arrive: none is handled without the check, every one is nacked and comes back,
and once the store answers again each is handled exactly once (duplicates included)."""

from __future__ import annotations

import collections
import threading
import uuid

import attrs
import pytest
from support.helpers import start, wait_for

import qchan
from qchan import RedisStore, Retries, enqueue, idempotent, serve

from .proxy import TcpProxy

pytestmark = pytest.mark.integration


@attrs.frozen
class Charge:
    id: str


def test_store_cut_nacks_every_message_then_each_is_handled_once() -> None:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis("127.0.0.1", 6379, socket_connect_timeout=2).ping()
    except redis.RedisError:
        pytest.skip("Redis is not answering on 127.0.0.1:6379")
    proxy = TcpProxy(("127.0.0.1", 6379))
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", timeout=0.5)
    namespace = f"charge-{uuid.uuid4().hex[:8]}"
    effects: collections.Counter[str] = collections.Counter()
    calls_while_down: list[str] = []
    down = threading.Event()
    lock = threading.Lock()

    @idempotent(store, key=lambda c: c.id, namespace=namespace)
    def charge(c: Charge) -> None:
        with lock:
            if down.is_set():
                calls_while_down.append(c.id)
            effects[c.id] += 1

    ids = [f"c{i}" for i in range(20)]
    q = qchan.connect(f"mem://{namespace}", poll_wait=0.1)
    stop = threading.Event()
    proxy.cut()
    down.set()
    try:
        with enqueue(Charge, q) as (out, _):
            for i in ids + ids[:5]:  # five sent twice
                out.send(Charge(i))
        served = start(
            serve,
            charge,
            Charge,
            q,
            workers=2,
            stop=stop,
            retries=Retries(delay=0.05, max_delay=0.2, max_deliveries=None),
        )
        wait_for(lambda: q.stats().nacked >= 25, 30, "every message nacked while the store is cut")
        assert not effects and not calls_while_down
        down.clear()
        proxy.restore()
        wait_for(lambda: set(effects) == set(ids), 30, "every charge once the store is back")
        wait_for(lambda: q.stats().acked == 25, 30, "all 25 deliveries acked")
    finally:
        stop.set()
        proxy.close()
    result = served.outcome(30)
    assert effects == collections.Counter(dict.fromkeys(ids, 1)), effects
    assert result.handled == 25
    store.close()
    with redis.Redis("127.0.0.1", 6379) as direct:
        assert direct.delete(*(f"qchan:handled:{namespace}:{i}" for i in ids)) == len(ids)
