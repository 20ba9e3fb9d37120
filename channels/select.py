"""`select`: wait on several channel operations and perform exactly one, as Go's select does."""

from __future__ import annotations

import itertools
import random
from typing import Any, NamedTuple

from .chan import (
    Chan,
    RecvChan,
    SendChan,
    _acquire_contended,
    _local,
    _Locked,
    _release,
    _remove,
    _waiter,
)

__all__ = ["Selected", "select"]


class Selected(NamedTuple):
    """The case `select` performed.

    `index` is the case's position. For a receive, `value` is the item and `ok`
    is True, or `(None, False)` when that channel is closed and drained. For a
    send, `value` is None and `ok` is True.
    """

    index: int  # type: ignore[assignment]  # shadows tuple.index, as DESIGN names it
    value: Any
    ok: bool


Case = Chan[Any] | RecvChan[Any] | tuple[Chan[Any] | SendChan[Any], Any]
# (channel, sending, value to send)
_Op = tuple[Chan[Any], bool, Any]

_random = random.random
_sample = random.sample
_new_tuple = tuple.__new__
# Every ordering of n cases, for the small n that almost every select has.
_PERMS_UPTO = 6
_PERMS = [list(itertools.permutations(range(n))) for n in range(_PERMS_UPTO)]


def _selected(index: int, value: Any, ok: bool) -> Selected:
    # tuple.__new__ skips NamedTuple's Python-level constructor (a third of a
    # fast select's cost).
    sel: Selected = _new_tuple(Selected, (index, value, ok))
    return sel


def _parse(case: Any) -> _Op:
    """(channel, sending, value) for one case, or TypeError saying what a case is."""
    if isinstance(case, Chan):
        return case, False, None
    if isinstance(case, RecvChan):
        return case._chan, False, None
    if isinstance(case, tuple) and len(case) == 2:
        ch, value = case
        if isinstance(ch, Chan):
            return ch, True, value
        if isinstance(ch, SendChan):
            return ch._chan, True, value
        raise TypeError(f"select send case needs a Chan or SendChan, not {ch!r}")
    raise TypeError(
        f"select case must be a channel (receive) or a (channel, value) pair (send), not {case!r}"
    )


def _perform(op: _Op, index: int) -> Selected | None:
    """Perform one case (the caller holds its channel's lock); None if it cannot proceed."""
    c, sending, value = op
    if sending:
        return _selected(index, None, True) if c._offer(value) else None
    done, got, ok = c._take()
    if done and not ok and c._failure is not None:
        raise c._failed_error()
    return _selected(index, got, ok) if done else None


def select(*cases: Case, timeout: float | None = None) -> Selected | None:
    """Block until one case can proceed, perform exactly that one, and say which.

    A case is a channel to receive from, or a `(channel, value)` pair to send.
    When several are ready one is chosen uniformly at random. A send case on a
    closed channel raises `ChannelClosed`; a case on a channel of a failed
    queue raises `QueueFailed` (a receive case once its buffer is drained).
    Returns None once `timeout` seconds pass with no case ready (`timeout=0`
    polls once).
    """
    n = len(cases)
    if n == 0:
        raise ValueError("select needs at least one case (select() would block forever)")
    args: Any = cases  # the fast path below is deliberately dynamic
    for case in args:  # every case must be well formed, whichever one fires
        if type(case) is not Chan:
            _parse(case)
    sel = _fast(args, n)
    if sel is not None:
        return sel
    return _slow([_parse(case) for case in args], timeout)


def _fast(cases: Any, n: int) -> Selected | None:
    """Go's poll order: visit the cases in a uniformly random order, perform the first ready.

    That makes the choice uniform among the ready cases. Readiness is read
    without locks (a snapshot) and checked again under the one lock taken;
    the common operations run inline, with no Python call under the lock.
    """
    order: Any = (
        _PERMS[n][int(_random() * len(_PERMS[n]))] if n < _PERMS_UPTO else (_sample(range(n), n))
    )
    busy: _Op | None = None  # the first ready case whose lock another thread held
    busy_index = -1
    for i in order:
        case = cases[i]
        kind = type(case)
        if kind is Chan:
            c = case
            sending = False
        elif kind is RecvChan:
            c = case._chan
            sending = False
        elif kind is tuple:
            c = case[0]
            if type(c) is SendChan:
                c = c._chan
            sending = True
        else:
            c, sending, _ = _parse(case)  # subclasses of Chan, RecvChan or tuple
        if sending:
            if not (c._closed or c._recvq or len(c._buf) < c._cap):
                continue
        elif not (c._buf or c._sendq or c._closed):
            continue
        # Never wait for a lock while another case may be free (see chan.py).
        if not c._lock.acquire(False):
            if busy is None:
                busy, busy_index = (c, sending, case[1] if sending else None), i
            continue
        if sending:
            if not c._recvq and len(c._buf) < c._cap and not c._closed:
                c._buf.append(case[1])
                c._lock.release()
                return _selected(i, None, True)
        else:
            buf = c._buf
            if buf and not c._sendq:
                got = buf.popleft()
                c._lock.release()
                if c._watch is not None and len(buf) <= c._watch_at:
                    c._watch(c)
                return _selected(i, got, True)
        try:
            sel = _perform((c, sending, case[1] if sending else None), i)
        finally:
            c._lock.release()
        if sel is not None:
            if not sending and c._watch is not None:
                c._watch(c)
            return sel
    if busy is not None:
        with _Locked(busy[0]._lock):
            sel = _perform(busy, busy_index)
        watch = busy[0]._watch
        if sel is not None and not busy[1] and watch is not None:
            watch(busy[0])
        return sel
    return None


def _slow(ops: list[_Op], timeout: float | None) -> Selected | None:
    """Lock every channel (in a fixed order: no deadlock between selects), check, park."""
    chans = list({id(c): c for c, _, _ in ops}.values())
    if len(chans) > 1:
        chans.sort(key=id)
    for c in chans:
        if not c._lock.acquire(False):
            _acquire_contended(c._lock)
    try:
        ready = [
            i
            for i, (c, sending, _) in enumerate(ops)
            if (c._send_ready() if sending else c._recv_ready())
        ]
        sel = None
        while ready:
            k = ready[int(_random() * len(ready))]
            sel = _perform(ops[k], k)
            if sel is not None:
                break
            ready.remove(k)  # its parked peers had all been claimed elsewhere
        else:
            if timeout is not None and timeout <= 0:
                return None
            w = _waiter()
            for i, (c, sending, value) in enumerate(ops):
                (c._sendq if sending else c._recvq).append((w, i, value))
    finally:
        for c in chans:
            c._lock.release()
    # A receive performed, or receivers now parked: tell the channels that watch for it.
    for i, (c, sending, _) in enumerate(ops):
        if not sending and c._watch is not None and (sel is None or sel.index == i):
            c._watch(c)
    if sel is not None:
        return sel
    return _wait(w, ops, chans, timeout)


def _wait(w: Any, ops: list[_Op], chans: list[Chan[Any]], timeout: float | None) -> Selected | None:
    """Park until one channel fires (or the timeout), then withdraw from all the others."""

    def withdraw() -> None:
        for c in chans:
            with _Locked(c._lock):
                _remove(c._recvq, w)
                _remove(c._sendq, w)

    try:
        fired = w.park.acquire(True, -1 if timeout is None else timeout)
    except BaseException:
        # Interrupted (KeyboardInterrupt from a signal handler): withdraw; if a
        # peer already completed a receive for us, give the item back.
        if w.claim.acquire(False):
            withdraw()
        else:
            w.park.acquire()
            withdraw()
            c, sending, _ = ops[w.index]
            if not sending and w.ok:
                c._requeue(w.value)
        _local.waiter = None
        raise
    if not fired:
        if w.claim.acquire(False):
            withdraw()
            _release(w)
            return None
        w.park.acquire()  # claimed just as we timed out: the peer is completing it
    withdraw()
    index, value, ok = w.index, w.value, w.ok
    _release(w)
    c, sending, _ = ops[index]
    if sending:
        if not ok:
            raise c._closed_error()
        return _selected(index, None, True)
    if not ok and c._failure is not None:
        raise c._failed_error()
    return _selected(index, value, ok)
