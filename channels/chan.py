"""Go-style channels for threads: `Chan`, and its one-sided views `RecvChan` and `SendChan`.

A channel is one lock, a deque of buffered items and two queues of parked
threads (receivers waiting for an item, senders waiting with one). A thread
that must wait parks on a lock of its own; the thread that can complete its
operation hands the value over directly and releases that lock, so a blocked
thread burns no CPU and nobody polls. The same waiter can be queued on several
channels at once (that is how `select` waits): the first channel to fire
claims it, and the others drop it as stale.

Locking discipline. Critical sections are short straight-line code. A thread
that finds a channel lock taken yields the GIL and retries rather than
blocking in the kernel (`_acquire_contended`): with the GIL, a thread that
blocks on a lock wakes up owning it but not the GIL, and two threads then
trade lock and GIL once per item (a lock convoy, measured 3-5x slower).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from .errors import ChannelClosed, QchanError, QueueFailed

__all__ = ["Chan", "RecvChan", "SendChan"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)

_allocate_lock = threading.Lock
_yield = time.sleep
_SPINS = 64


def _acquire_contended(lock: Any) -> None:
    """Take a channel lock that another thread holds, without starting a lock convoy.

    Critical sections are a few straight-line microseconds, so the holder only
    needs the GIL to finish. Blocking in the kernel instead would wake us
    owning the lock but not the GIL, and the two threads would then trade both
    once per item (measured: 5x slower). Yield the GIL and retry; after a
    bounded number of tries (the holder may be descheduled by the OS), block.
    """
    for _ in range(_SPINS):
        _yield(0)
        if lock.acquire(False):
            return
    lock.acquire()


class _Waiter:
    """One parked thread: `park` is held until somebody completes the operation.

    `claim` is a test-and-set flag: exactly one party (a peer that completes
    the operation, `close`, or the owner giving up on a timeout) acquires it,
    and only that party writes the result and releases `park`.
    """

    __slots__ = ("busy", "claim", "index", "ok", "park", "value")

    def __init__(self) -> None:
        self.park = _allocate_lock()
        self.park.acquire()
        self.claim = _allocate_lock()
        self.index = 0
        self.value: Any = None
        self.ok = False
        self.busy = False


_local = threading.local()


def _waiter() -> _Waiter:
    """This thread's reusable waiter (a fresh one if it is in use, e.g. from a signal handler)."""
    w: _Waiter | None = getattr(_local, "waiter", None)
    if w is None or w.busy:
        w = _Waiter()
        if getattr(_local, "waiter", None) is None:
            _local.waiter = w
    w.busy = True
    return w


def _release(w: _Waiter) -> None:
    """Make a waiter that completed cleanly reusable by its thread."""
    w.value = None
    w.claim.release()
    w.busy = False


class _Locked:
    """`with _Locked(lock):` for the cold paths (the hot paths inline the same steps)."""

    __slots__ = ("lock",)

    def __init__(self, lock: Any) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        if not self.lock.acquire(False):
            _acquire_contended(self.lock)

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


# A queue entry: (waiter, case index, value to send or None).
_Entry = tuple[_Waiter, int, Any]


def _remove(q: deque[_Entry], w: _Waiter) -> None:
    """Drop every entry of `w` from `q` (the caller holds the channel's lock)."""
    i = 0
    while i < len(q):
        if q[i][0] is w:
            del q[i]
        else:
            i += 1


class Chan(Generic[T]):
    """A channel with Go's semantics, safe for any number of threads.

    `Chan(0)` is unbuffered: `send` returns only once a receiver has taken the
    item (a rendezvous). `Chan(n)` buffers up to `n` items; `send` blocks while
    the buffer is full. There is no unbounded channel.

    Closing is idempotent and wakes every blocked sender, receiver and `select`.
    After `close()` a `send` raises `ChannelClosed`; receivers still get every
    buffered item, then `ChannelClosed` (iteration simply ends).
    """

    __slots__ = (
        "__weakref__",
        "_buf",
        "_cap",
        "_capacity",
        "_closed",
        "_failure",
        "_lock",
        "_recvq",
        "_sendq",
        "_watch",
        "_watch_at",
        "name",
    )

    def __init__(self, capacity: int = 0, *, name: str | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"Chan capacity must be an int >= 0, not {capacity!r}")
        if capacity < 0:
            raise ValueError(f"Chan capacity must be >= 0 (0 is unbuffered), not {capacity}")
        self._lock = _allocate_lock()
        self._buf: deque[T] = deque()
        self._capacity = capacity  # as declared; `_cap` is what the buffer takes now (see _lend)
        self._cap = capacity
        self._recvq: deque[_Entry] = deque()
        self._sendq: deque[_Entry] = deque()
        self._closed = False
        self._failure: QueueFailed | None = None  # set by _fail: closed because its queue failed
        # Called (with no lock held) after a receiver takes an item or parks to wait for
        # one: the kernel sets it on a `rcv` while its poller waits for demand (see
        # kernel/routes.py). None for every other channel: one test per receive.
        self._watch: Callable[[Chan[Any]], None] | None = None
        # ... once a receive leaves at most this many buffered (a receiver that parks
        # always calls it).
        self._watch_at = 0
        self.name = name

    # -- state ---------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """How many items the channel buffers (0: unbuffered)."""
        return self._capacity

    @property
    def closed(self) -> bool:
        """True once `close()` has been called (buffered items may remain)."""
        return self._closed

    def __len__(self) -> int:
        """Number of buffered items."""
        return len(self._buf)

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        state = " failed" if self._failure else " closed" if self._closed else ""
        return f"<Chan{name} capacity={self._capacity} len={len(self._buf)}{state}>"

    def _closed_error(self) -> QchanError:
        """What a send on this closed channel raises."""
        if self._failure is not None:
            return self._failed_error()
        return ChannelClosed(f"send on closed channel {self!r}")

    def _drained_error(self) -> QchanError:
        """What a receive on this closed and drained channel raises."""
        if self._failure is not None:
            return self._failed_error()
        return ChannelClosed(f"recv on closed channel {self!r}")

    def _failed_error(self) -> QueueFailed:
        # A fresh exception per raise (threads raising one instance share its traceback).
        failure = self._failure
        assert failure is not None
        error = QueueFailed(str(failure))
        error.__cause__ = failure.__cause__
        return error

    # -- non-blocking cores (caller holds the lock) --------------------------

    def _offer(self, value: T) -> bool:
        """Hand `value` to a parked receiver or buffer it; False if neither can take it."""
        if self._closed:
            raise self._closed_error()
        rq = self._recvq
        while rq:
            w, i, _ = rq.popleft()
            if w.claim.acquire(False):
                w.index = i
                w.value = value
                w.ok = True
                w.park.release()
                return True
        if len(self._buf) < self._cap:
            self._buf.append(value)
            return True
        return False

    def _take(self) -> tuple[bool, Any, bool]:
        """(done, value, ok): take a buffered or parked-sender item, or see closed-and-drained."""
        buf = self._buf
        sq = self._sendq
        if buf:
            value = buf.popleft()
            while sq:  # a sender waits for room: move its item into the buffer
                w, i, x = sq.popleft()
                if w.claim.acquire(False):
                    buf.append(x)
                    w.index = i
                    w.ok = True
                    w.park.release()
                    break
            return True, value, True
        while sq:
            w, i, x = sq.popleft()
            if w.claim.acquire(False):
                w.index = i
                w.ok = True
                w.park.release()
                return True, x, True
        if self._closed:
            return True, None, False
        return False, None, False

    def _recv_ready(self) -> bool:
        return bool(self._buf or self._sendq or self._closed)

    def _send_ready(self) -> bool:
        return bool(self._closed or self._recvq or len(self._buf) < self._cap)

    def _requeue(self, value: T) -> None:
        """Put back an item a receiver took but could not return (it was interrupted)."""
        with _Locked(self._lock):
            rq = self._recvq
            while rq:
                w, i, _ = rq.popleft()
                if w.claim.acquire(False):
                    w.index = i
                    w.value = value
                    w.ok = True
                    w.park.release()
                    return
            self._buf.appendleft(value)

    # -- blocking operations -------------------------------------------------

    def send(self, value: T, timeout: float | None = None) -> None:
        """Send `value`, blocking while the channel is full (or, unbuffered, until received).

        Raises `ChannelClosed` if the channel is or becomes closed, and
        `TimeoutError` if `timeout` seconds pass first (`timeout=0` never blocks).
        """
        lock = self._lock
        if not lock.acquire(False):
            _acquire_contended(lock)
        try:
            if not self._recvq and len(self._buf) < self._cap and not self._closed:
                self._buf.append(value)  # the common case, inline
                return
            if self._offer(value):
                return
            if timeout is not None and timeout <= 0:
                raise TimeoutError(f"send on {self!r} would block")
            w = _waiter()
            self._sendq.append((w, 0, value))
        finally:
            lock.release()
        if not self._park(w, self._sendq, timeout):
            raise TimeoutError(f"send on {self!r} timed out after {timeout} s")
        ok = w.ok
        _release(w)
        if not ok:
            raise self._closed_error()

    def recv(self, timeout: float | None = None) -> T:
        """Receive the next item, blocking while the channel is empty.

        After `close()` the buffered items are still delivered; then it raises
        `ChannelClosed`. Raises `TimeoutError` if `timeout` seconds pass first
        (`timeout=0` never blocks).
        """
        lock = self._lock
        if not lock.acquire(False):
            _acquire_contended(lock)
        try:
            buf = self._buf
            value: Any
            if buf and not self._sendq:
                value = buf.popleft()  # the common case, inline
                if self._watch is None or len(buf) > self._watch_at:
                    return value  # type: ignore[no-any-return]
                done, ok = True, True
            else:
                done, value, ok = self._take()
                if not done:
                    if timeout is not None and timeout <= 0:
                        raise TimeoutError(f"recv on {self!r} would block")
                    w = _waiter()
                    self._recvq.append((w, 0, None))
        finally:
            lock.release()
        watch = self._watch
        if watch is not None:  # room in the buffer, or a receiver waiting: demand
            watch(self)
        if done:
            if not ok:
                raise self._drained_error()
            return value  # type: ignore[no-any-return]
        if not self._park(w, self._recvq, timeout, receiving=True):
            raise TimeoutError(f"recv on {self!r} timed out after {timeout} s")
        ok, value = w.ok, w.value
        _release(w)
        if not ok:
            raise self._drained_error()
        return value  # type: ignore[no-any-return]

    def _park(
        self, w: _Waiter, q: deque[_Entry], timeout: float | None, receiving: bool = False
    ) -> bool:
        """Wait until a peer completes our operation; False if we withdrew on timeout."""
        try:
            if w.park.acquire(True, -1 if timeout is None else timeout):
                return True
        except BaseException:
            # Interrupted (KeyboardInterrupt from a signal handler): withdraw,
            # or, if a peer already completed the operation, finish it and give
            # a received item back so that nothing is lost.
            if w.claim.acquire(False):
                with _Locked(self._lock):
                    _remove(q, w)
            else:
                w.park.acquire()
                if receiving and w.ok:
                    self._requeue(w.value)
            _local.waiter = None  # never reuse a waiter abandoned mid-flight
            raise
        if w.claim.acquire(False):  # withdraw before anyone hands us a value
            with _Locked(self._lock):
                _remove(q, w)
            _release(w)
            return False
        w.park.acquire()  # a peer claimed us as we timed out: it is completing now
        return True

    def close(self) -> None:
        """Close the channel (idempotent) and wake every blocked sender, receiver and select."""
        self._close(None)

    def _fail(self, failure: QueueFailed) -> None:
        """Close the channel because its queue failed: as `close()`, except that a send, and
        a receive once the buffer is drained, raise `QueueFailed` instead of `ChannelClosed`
        (so `for x in ch` raises too). A channel closed before keeps its plain close."""
        self._close(failure)

    def _close(self, failure: QueueFailed | None) -> None:
        with _Locked(self._lock):
            if self._closed:
                return
            self._failure = failure
            self._closed = True
            rq, self._recvq = self._recvq, deque()
            sq, self._sendq = self._sendq, deque()
            for w, i, _ in rq:
                if w.claim.acquire(False):
                    w.index = i
                    w.value = None
                    w.ok = False
                    w.park.release()
            for w, i, _ in sq:
                if w.claim.acquire(False):
                    w.index = i
                    w.ok = False
                    w.park.release()

    # -- batch operations for the kernel's workers -----------------------------

    def _lend(self, room: int) -> None:
        """Let an unbuffered channel buffer up to `room` items for its one receiver, or
        (`room=0`) stop doing so; items already buffered stay and are received first.

        The emitter lends its batch's room to an at-least-once `out` while it
        gathers: a send then returns as soon as its item joins the batch being
        gathered, which is what the rendezvous with the emitter means, without
        the two thread switches per item a rendezvous costs. Sending the batch,
        the emitter takes the room back, so sends wait again until it gathers.
        """
        with _Locked(self._lock):
            self._cap = max(room, self._capacity)

    def _recv_many(self, n: int) -> list[T]:
        """Up to `n` items available now, without blocking (one lock for the batch)."""
        lock = self._lock
        if not lock.acquire(False):
            _acquire_contended(lock)
        try:
            buf = self._buf
            if not self._sendq:
                if len(buf) <= n:
                    out = list(buf)
                    buf.clear()
                    return out
                return [buf.popleft() for _ in range(n)]
            got: list[T] = []
            while len(got) < n:
                done, value, ok = self._take()
                if not done or not ok:
                    break
                got.append(value)
            return got
        finally:
            lock.release()

    def _withdraw(self, predicate: Callable[[T], bool]) -> list[T]:
        """Take the buffered items that `predicate` picks out of the buffer (no receiver
        will get them); the others keep their order. For the kernel's dispatcher, the one
        sender of the channels it uses this on."""
        with _Locked(self._lock):
            picked = [x for x in self._buf if predicate(x)]
            if picked:
                kept = [x for x in self._buf if not predicate(x)]
                self._buf.clear()  # in place: a reader may hold the deque itself
                self._buf.extend(kept)
            return picked

    def _buffered(self) -> list[T]:
        """A copy of the items buffered now (not yet received), oldest first."""
        with _Locked(self._lock):
            return list(self._buf)

    def _send_many(self, items: deque[T]) -> list[T]:
        """Send items from the left of `items` while that needs no waiting; return those sent."""
        lock = self._lock
        if not lock.acquire(False):
            _acquire_contended(lock)
        try:
            if self._closed:
                raise self._closed_error()
            sent: list[T] = []
            buf = self._buf
            while items:
                if self._recvq:
                    if not self._offer(items[0]):
                        break
                elif len(buf) < self._cap:
                    buf.append(items[0])
                else:
                    break
                sent.append(items.popleft())
            return sent
        finally:
            lock.release()

    def __iter__(self) -> Iterator[T]:
        """Receive until the channel is closed and drained (`QueueFailed` if its queue failed)."""
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return

    # -- views -----------------------------------------------------------------

    def recv_only(self) -> RecvChan[T]:
        """A view that can only receive (Go's `<-chan T`)."""
        return RecvChan(self)

    def send_only(self) -> SendChan[T]:
        """A view that can only send and close (Go's `chan<- T`)."""
        return SendChan(self)


class _RecvFn(Protocol[T_co]):
    def __call__(self, timeout: float | None = None) -> T_co: ...


class _SendFn(Protocol[T_contra]):
    def __call__(self, value: T_contra, timeout: float | None = None) -> None: ...


class _View(Generic[T]):
    """What both halves of a channel show: its state, and the channel for `select`."""

    __slots__ = ("_chan",)

    def __init__(self, chan: Chan[T]) -> None:
        self._chan = chan

    def __len__(self) -> int:
        return len(self._chan)

    @property
    def capacity(self) -> int:
        return self._chan.capacity

    @property
    def closed(self) -> bool:
        return self._chan.closed

    @property
    def name(self) -> str | None:
        return self._chan.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__}{repr(self._chan)[5:]}"


class RecvChan(_View[T]):
    """The receiving half of a `Chan`: `recv(timeout=None)` (as `Chan.recv`), iteration,
    `len`, `capacity`, `closed`, and use as a `select` receive case."""

    __slots__ = ("recv",)
    recv: _RecvFn[T]  # the channel's own bound method: no wrapper call per item

    def __init__(self, chan: Chan[T]) -> None:
        super().__init__(chan)
        self.recv = chan.recv

    def __iter__(self) -> Iterator[T]:
        return iter(self._chan)


class SendChan(_View[T]):
    """The sending half of a `Chan`: `send(value, timeout=None)` (as `Chan.send`), `close()`,
    `len`, `capacity`, `closed`, and use in a `select` send case."""

    __slots__ = ("close", "send")
    send: _SendFn[T]
    close: Callable[[], None]

    def __init__(self, chan: Chan[T]) -> None:
        super().__init__(chan)
        self.send = chan.send
        self.close = chan.close
