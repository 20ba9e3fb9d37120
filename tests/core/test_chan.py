"""Chan: Go's channel semantics, one behaviour per test."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from support.helpers import start, wait_for

from qchan import Chan, ChannelClosed, RecvChan, SendChan, select

# -- construction ------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, -100])
def test_negative_capacity_is_a_value_error(bad: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Chan(bad)


@pytest.mark.parametrize("bad", [1.5, "3", None, True])
def test_non_int_capacity_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="capacity"):
        Chan(bad)  # type: ignore[arg-type]


def test_generic_alias_constructs_a_channel() -> None:
    ch = Chan[int](2)
    ch.send(1)
    assert ch.recv() == 1


def test_state_and_repr() -> None:
    ch: Chan[int] = Chan(3, name="orders")
    ch.send(1)
    assert (len(ch), ch.capacity, ch.closed) == (1, 3, False)
    assert repr(ch) == "<Chan 'orders' capacity=3 len=1>"
    ch.close()
    assert ch.closed and repr(ch).endswith("closed>")


# -- unbuffered: rendezvous --------------------------------------------------


def test_unbuffered_send_blocks_until_a_receiver_takes_the_item() -> None:
    ch: Chan[int] = Chan()
    sent = threading.Event()

    def sender() -> None:
        ch.send(7)
        sent.set()

    w = start(sender)
    assert not sent.wait(0.2), "send on an unbuffered channel returned with no receiver"
    assert ch.recv(timeout=5) == 7
    assert sent.wait(5)
    w.outcome()


def test_unbuffered_send_timeout_zero_never_blocks() -> None:
    ch: Chan[int] = Chan()
    with pytest.raises(TimeoutError):
        ch.send(1, timeout=0)


def test_unbuffered_len_is_always_zero() -> None:
    ch: Chan[int] = Chan()
    w = start(ch.send, 1)
    wait_for(lambda: ch._sendq, what="the sender to park")
    assert len(ch) == 0  # a parked sender's item is not buffered
    assert ch.recv(timeout=5) == 1
    w.outcome()


# -- buffered ----------------------------------------------------------------


def test_buffered_send_does_not_block_until_full() -> None:
    ch: Chan[int] = Chan(3)
    for i in range(3):
        ch.send(i, timeout=0)
    with pytest.raises(TimeoutError):
        ch.send(3, timeout=0)
    assert [ch.recv(timeout=0) for _ in range(3)] == [0, 1, 2]


def test_buffered_sender_parked_on_full_channel_is_moved_in_order() -> None:
    ch: Chan[int] = Chan(2)
    ch.send(0)
    ch.send(1)
    w = start(ch.send, 2)
    # The parked sender's item enters the buffer when room appears, after 0 and 1.
    assert [ch.recv(timeout=5) for _ in range(3)] == [0, 1, 2]
    w.outcome()


def test_send_timeout_elapses_and_withdraws_the_item() -> None:
    ch: Chan[int] = Chan(1)
    ch.send(1)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        ch.send(2, timeout=0.05)
    assert time.monotonic() - t0 >= 0.05
    # The timed-out item is not in the channel.
    assert ch.recv(timeout=0) == 1
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0)


def test_recv_timeout_withdraws_the_waiter_so_no_item_is_lost() -> None:
    ch: Chan[int] = Chan()
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0.02)
    # Had the timed-out receiver stayed parked, this send would hand the item
    # to nobody and return.
    with pytest.raises(TimeoutError):
        ch.send(1, timeout=0)


def test_recv_timeout_zero_on_empty_channel() -> None:
    with pytest.raises(TimeoutError):
        Chan[int](4).recv(timeout=0)


# -- close -------------------------------------------------------------------


def test_close_is_idempotent() -> None:
    ch: Chan[int] = Chan(1)
    ch.close()
    ch.close()
    assert ch.closed


def test_send_on_closed_channel_raises_naming_the_channel() -> None:
    ch: Chan[int] = Chan(1, name="billing.out")
    ch.close()
    with pytest.raises(ChannelClosed, match=r"billing\.out"):
        ch.send(1)


def test_close_keeps_buffered_items_for_receivers() -> None:
    ch: Chan[int] = Chan(3)
    for i in range(3):
        ch.send(i)
    ch.close()
    assert list(ch) == [0, 1, 2]
    with pytest.raises(ChannelClosed):
        ch.recv()


def test_close_wakes_every_blocked_receiver() -> None:
    ch: Chan[int] = Chan()
    ws = [start(ch.recv) for _ in range(4)]
    wait_for(lambda: len(ch._recvq) == 4, what="4 parked receivers")
    ch.close()
    for w in ws:
        with pytest.raises(ChannelClosed):
            w.outcome()


def test_close_wakes_every_blocked_sender() -> None:
    ch: Chan[int] = Chan()
    ws = [start(ch.send, i) for i in range(4)]
    wait_for(lambda: len(ch._sendq) == 4, what="4 parked senders")
    ch.close()
    for w in ws:
        with pytest.raises(ChannelClosed):
            w.outcome()


def test_iteration_ends_when_closed_and_drained() -> None:
    ch: Chan[int] = Chan()

    def produce() -> None:
        for i in range(100):
            ch.send(i)
        ch.close()

    w = start(produce)
    assert list(ch) == list(range(100))
    w.outcome()


# -- views ---------------------------------------------------------------------


def test_views_expose_only_their_half() -> None:
    ch: Chan[int] = Chan(1, name="v")
    rx, tx = ch.recv_only(), ch.send_only()
    assert isinstance(rx, RecvChan) and isinstance(tx, SendChan)
    assert not hasattr(rx, "send") and not hasattr(rx, "close")
    assert not hasattr(tx, "recv")
    tx.send(5)
    assert (len(rx), rx.capacity, rx.name) == (1, 1, "v")
    assert rx.recv() == 5
    tx.close()
    assert rx.closed and tx.closed
    assert list(rx) == []
    assert "RecvChan 'v'" in repr(rx) and "SendChan 'v'" in repr(tx)


# -- no polling ----------------------------------------------------------------


def _cpu_while_blocked(block: object) -> float:
    """CPU seconds a thread burns inside `block()` (which blocks for about a second)."""

    def run() -> float:
        t0 = time.thread_time()
        try:
            block()  # type: ignore[operator]
        except TimeoutError:
            pass
        return time.thread_time() - t0

    return start(run).outcome(10)  # type: ignore[no-any-return]


@pytest.mark.parametrize("op", ["recv", "send", "recv_forever"])
def test_a_blocked_thread_burns_no_cpu(op: str) -> None:
    ch: Chan[int] = Chan()
    if op == "recv":
        cpu = _cpu_while_blocked(lambda: ch.recv(timeout=1.0))
    elif op == "send":
        cpu = _cpu_while_blocked(lambda: ch.send(1, timeout=1.0))
    else:
        threading.Timer(1.0, ch.close).start()
        cpu = _cpu_while_blocked(lambda: list(ch))
    assert cpu < 0.01, f"{cpu:.4f} s of CPU while blocked for 1 s"


# -- interruption (Ctrl-C while blocked) -----------------------------------


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: object) -> None:
    raise _Interrupted


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX timers")
def test_interrupted_recv_withdraws_and_loses_nothing() -> None:
    ch: Chan[int] = Chan()
    old = signal.signal(signal.SIGALRM, _raise_interrupted)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(_Interrupted):
            ch.recv()  # blocked in the main thread, interrupted by the signal handler
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # The interrupted receiver is gone: a send finds nobody to hand the item to.
    with pytest.raises(TimeoutError):
        ch.send(1, timeout=0)
    w = start(ch.send, 2)
    assert ch.recv(timeout=5) == 2
    w.outcome()


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX timers")
def test_interrupted_select_withdraws_from_every_channel_and_loses_nothing() -> None:
    """select parks one waiter on several channels and shares Chan's withdraw step: an
    interrupt takes it off all of them, so no later send is handed to a dead select."""
    a: Chan[int] = Chan()
    b: Chan[int] = Chan()
    old = signal.signal(signal.SIGALRM, _raise_interrupted)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(_Interrupted):
            select(a, b)  # parked on both, interrupted by the signal handler
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not a._recvq and not b._recvq, "the interrupted select is still queued"
    for ch in (a, b):
        with pytest.raises(TimeoutError):
            ch.send(1, timeout=0)  # nobody waits on either any more
    w = start(b.send, 2)
    assert b.recv(timeout=5) == 2
    w.outcome()
