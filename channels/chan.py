"""Go-style channels for threads: `Chan`, its one-sided views `RecvChan` and `SendChan`,
`select`, and `Pipe`, the kernel's channel (a `Chan` with batch operations).

A channel is one lock, a deque of buffered items and two queues of parked
threads (receivers waiting for an item, senders waiting with one). A thread
that must wait parks on a lock of its own; the thread that can complete its
operation hands the value over directly and releases that lock, so a blocked
thread burns no CPU and nobody polls. The same waiter can be queued on several
channels at once (that is how `select` waits): the first channel to fire
claims it, and the others drop it as stale. Completing a waiter is one step
(`_Waiter.fire`) and waiting for completion, or withdrawing on a timeout or an
interrupt, another (`_await`): channels and `select` share both, which is why
`select` lives in this module.

Locking discipline. Critical sections are short straight-line code. A thread
that finds a channel lock taken yields the GIL and retries rather than
blocking in the kernel (`_acquire_contended`): with the GIL, a thread that
blocks on a lock wakes up owning it but not the GIL, and two threads then
trade lock and GIL once per item (a lock convoy, measured 3-5x slower).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from .errors import ChannelClosed, QchanError, QueueFailed

__all__ = ["Chan", "Pipe", "RecvChan", "Selected", "SendChan", "chan_of", "select"]

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

    def fire(self, index: int, value: Any, ok: bool) -> bool:
        """Complete this waiter's operation (case `index`, with `value`; `ok` False for a
        closed channel) and wake its thread, unless another party claimed it first:
        the one completion step of every channel operation and of `select`."""
        if not self.claim.acquire(False):
            return False
        self.index = index
        self.value = value
        self.ok = ok
        self.park.release()
        return True


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


def _withdraw(w: _Waiter, ops: Sequence[tuple[Chan[Any], bool, Any]]) -> None:
    """Take `w`'s entries out of the queues of the channels in `ops`."""
    for c, _, _ in ops:
        with _Locked(c._lock):
            _remove(c._recvq, w)
            _remove(c._sendq, w)


def _await(w: _Waiter, timeout: float | None, ops: Sequence[tuple[Chan[Any], bool, Any]]) -> bool:
    """Park until a peer completes `w`'s operation, one of `ops` (`(channel, sending,
    value)` each, `w.index` says which); False once `timeout` passed and `w` withdrew.
    The one withdraw step of a channel operation and of `select`.

    Interrupted (KeyboardInterrupt from a signal handler), `w` withdraws; if a peer
    completed a receive already, the item goes back to the front of its channel, so
    that nothing is lost.
    """
    try:
        if w.park.acquire(True, -1 if timeout is None else timeout):
            return True
    except BaseException:
        if w.claim.acquire(False):
            _withdraw(w, ops)
        else:
            w.park.acquire()  # a peer claimed it: it is completing now
            _withdraw(w, ops)
            c, sending, _ = ops[w.index]
            if not sending and w.ok:
                c._requeue(w.value)
        _local.waiter = None  # never reuse a waiter abandoned mid-flight
        raise
    if w.claim.acquire(False):  # withdraw before anyone hands us a value
        _withdraw(w, ops)
        _release(w)
        return False
    w.park.acquire()  # a peer claimed us as we timed out: it is completing now
    return True


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
        "_notify",
        "_over",
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
        # Items a `Pipe.push` sent beyond the capacity: sends that completed without a
        # thread parked for each; received before the parked senders, like them not
        # counted by len(), dropped by close.
        self._over: deque[T] = deque()
        self._closed = False
        self._failure: QueueFailed | None = None  # set by _fail: closed because its queue failed
        # Called (with no lock held) after a receiver takes an item or parks to wait for
        # one: the kernel sets it on a `rcv` while its consumer waits for demand (see
        # kernel/routes.py). None for every other channel: one test per receive.
        self._watch: Callable[[Chan[Any]], None] | None = None
        # ... once a receive leaves at most this many buffered (a receiver that parks
        # always calls it).
        self._watch_at = 0
        # Called (with no lock held) after a send that may have left the only item in the
        # buffer, and whenever a sender parks: the kernel sets it on an `ack`, whose
        # one reader does not park on it (see Pipe.notify). None for every other channel.
        self._notify: Callable[[Chan[Any]], None] | None = None
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
            if w.fire(i, value, True):
                return True
        if len(self._buf) < self._cap:
            self._buf.append(value)
            return True
        return False

    def _take(self) -> tuple[bool, Any, bool]:
        """(done, value, ok): take a buffered or parked-sender item, or see closed-and-drained."""
        buf = self._buf
        sq = self._sendq
        over = self._over
        if buf:
            value = buf.popleft()
            if over:
                buf.append(over.popleft())
                return True, value, True
            while sq:  # a sender waits for room: move its item into the buffer
                w, i, x = sq.popleft()
                if w.fire(i, None, True):
                    buf.append(x)
                    break
            return True, value, True
        if over:
            return True, over.popleft(), True
        while sq:
            w, i, x = sq.popleft()
            if w.fire(i, None, True):
                return True, x, True
        if self._closed:
            return True, None, False
        return False, None, False

    def _recv_ready(self) -> bool:
        return bool(self._buf or self._over or self._sendq or self._closed)

    def _send_ready(self) -> bool:
        return bool(self._closed or self._recvq or len(self._buf) < self._cap)

    def _requeue(self, value: T) -> None:
        """Put back an item a receiver took but could not return (it was interrupted)."""
        with _Locked(self._lock):
            rq = self._recvq
            while rq:
                w, i, _ = rq.popleft()
                if w.fire(i, value, True):
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
            buf = self._buf
            if not self._recvq and len(buf) < self._cap and not self._closed:
                buf.append(value)  # the common case, inline
                if self._notify is None or len(buf) > 1:
                    return
                w = None
            elif self._offer(value):
                if self._notify is None or len(buf) != 1:
                    return
                w = None
            else:
                if timeout is not None and timeout <= 0:
                    raise TimeoutError(f"send on {self!r} would block")
                w = _waiter()
                self._sendq.append((w, 0, value))
        finally:
            lock.release()
        notify = self._notify
        if notify is not None:  # an item for a reader that does not park, or a sender parked
            notify(self)
        if w is None:
            return
        if not _await(w, timeout, ((self, True, value),)):
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
                over = self._over
                if over:
                    buf.append(over.popleft())
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
        if not _await(w, timeout, ((self, False, None),)):
            raise TimeoutError(f"recv on {self!r} timed out after {timeout} s")
        ok, value = w.ok, w.value
        _release(w)
        if not ok:
            raise self._drained_error()
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the channel (idempotent) and wake every blocked sender, receiver and select."""
        self._close(None)

    def _close(self, failure: QueueFailed | None) -> None:
        with _Locked(self._lock):
            if self._closed:
                return
            self._failure = failure
            self._closed = True
            self._over.clear()
            rq, self._recvq = self._recvq, deque()
            sq, self._sendq = self._sendq, deque()
            for w, i, _ in (*rq, *sq):
                w.fire(i, None, False)

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


class Pipe(Chan[T]):
    """A `Chan` the kernel makes (`rcv`, `ack`, `out`, `dlq`, its own queues), with the
    operations its threads need on top of Go's: batches under one lock, taking back
    what waits in the buffer, lending room, watching demand and failing with the
    queue. The application sees a pipe as a `Chan` or through a view; the kernel
    never reaches into a channel's state from another module, only through these.
    """

    __slots__ = ("buffer", "overflow")

    def __init__(self, capacity: int = 0, *, name: str | None = None) -> None:
        super().__init__(capacity, name=name)
        #: The buffer itself, for a look without the lock or a call (`if pipe.buffer:`
        #: on a hot path); read it only: take items with `recv`. It stays the same
        #: deque for the pipe's life (`withdraw` changes it in place).
        self.buffer: deque[T] = self._buf
        #: What `push` sent beyond the capacity, waiting to move into the buffer as
        #: receivers take from it (read it only, as `buffer`).
        self.overflow: deque[T] = self._over

    @property
    def waiting(self) -> int:
        """How many receivers (threads and `select`s) are parked on it now."""
        return len(self._recvq)

    def watch(self, fn: Callable[[Chan[Any]], None] | None, at: int = 0) -> None:
        """Call `fn(self)`, with no lock held, after a receive that leaves at most `at`
        items buffered, and whenever a receiver parks to wait (None: stop)."""
        self._watch_at = at
        self._watch = fn

    def notify(self, fn: Callable[[Chan[Any]], None] | None) -> None:
        """Call `fn(self)`, with no lock held, after a send that leaves one item buffered
        (the buffer was empty; `select` calls it after any send), and whenever a sender
        parks to wait (None: stop). `fn` must be cheap and harmless when repeated. For a
        channel whose one reader takes with `recv_many` and never parks on it: the
        kernel's `ack`, which its consumer thread drains between broker calls."""
        self._notify = fn

    def push(self, items: list[T]) -> None:
        """Send every item of `items` now, in order, with one lock: to the receivers parked
        on the channel first, then into the buffer, and what does not fit into the
        overflow, whose items move into the buffer as receivers take from it (they count
        in neither `len` nor the capacity, as sends that wait for room: Go's invariants
        hold). For the one sender of a `rcv`, whose demand rules size what it takes.
        Raises as `send` on a closed channel; a close drops the overflow (the kernel
        still holds those items, and gives them back)."""
        lock = self._lock
        if not lock.acquire(False):
            _acquire_contended(lock)
        try:
            if self._closed:
                raise self._closed_error()
            rq = self._recvq
            i, n = 0, len(items)
            while rq and i < n:
                w, index, _ = rq.popleft()
                if w.fire(index, items[i], True):
                    i += 1
            buf, over = self._buf, self._over
            if over:
                over.extend(items[i:] if i else items)
                return
            room = self._cap - len(buf)
            if n - i <= room:
                buf.extend(items[i:] if i else items)
            else:
                if room > 0:
                    buf.extend(items[i : i + room])
                    i += room
                over.extend(items[i:])
        finally:
            lock.release()

    def fail(self, failure: QueueFailed) -> None:
        """Close the channel because its queue failed: as `close()`, except that a send, and
        a receive once the buffer is drained, raise `QueueFailed` instead of `ChannelClosed`
        (so `for x in ch` raises too). A channel closed before keeps its plain close."""
        self._close(failure)

    def lend(self, room: int) -> None:
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

    def recv_many(self, n: int) -> list[T]:
        """Up to `n` items available now, without blocking (one lock for the batch)."""
        lock = self._lock
        if not lock.acquire(False):
            _acquire_contended(lock)
        try:
            buf = self._buf
            if not self._sendq and not self._over:
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

    def withdraw(self, predicate: Callable[[T], bool]) -> list[T]:
        """Take the buffered items that `predicate` picks out of the buffer (no receiver
        will get them), the overflow's included; the others keep their order. For the
        kernel's consumer thread, the one sender of the channels it uses this on."""
        with _Locked(self._lock):
            picked: list[T] = []
            for q in (self._buf, self._over):
                gone = [x for x in q if predicate(x)]
                if gone:
                    kept = [x for x in q if not predicate(x)]
                    q.clear()  # in place: a reader may hold the deque itself
                    q.extend(kept)
                    picked += gone
            buf, over = self._buf, self._over
            while over and len(buf) < self._cap:  # room made: the overflow moves up
                buf.append(over.popleft())
            return picked


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
    #: True for a channel whose `send` runs in the caller's thread and is no channel
    #: operation (an outbox's `out`: a row written in the caller's transaction).
    _direct = False

    def __init__(self, chan: Chan[T]) -> None:
        super().__init__(chan)
        self.send = chan.send
        self.close = chan.close


def chan_of(view: Chan[T] | RecvChan[T] | SendChan[T]) -> Chan[T]:
    """The channel behind a view (a channel is its own): for the kernel, which keys what
    it made by the channel and hands the application views of it."""
    return view if isinstance(view, Chan) else view._chan


# -- select: in this module because it is the channels' own mechanism (it parks one
# waiter on several channels' queues, and completes and withdraws as they do).


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


#: The case types that are well formed by their type alone (receive cases).
_PLAIN = frozenset({Chan, Pipe, RecvChan})


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
            if ch._direct:
                raise TypeError(
                    f"select cannot send on {ch!r}: its send writes in the caller's "
                    f"transaction and never waits; call its send() directly"
                )
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
    # Every case must be well formed, whichever one fires: channels and receive views are
    # by their type (checked in C, one call for all), the others one by one.
    for case in args:
        if type(case) not in _PLAIN:
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
        if kind is Chan or kind is Pipe:
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
        elif not (c._buf or c._over or c._sendq or c._closed):
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
                if c._notify is not None and len(c._buf) == 1:
                    c._notify(c)
                done: Selected = _new_tuple(Selected, (i, None, True))  # _selected, inlined
                return done
        else:
            buf = c._buf
            if buf and not c._sendq:
                got = buf.popleft()
                if c._over:
                    buf.append(c._over.popleft())
                c._lock.release()
                if c._watch is not None and len(buf) <= c._watch_at:
                    c._watch(c)
                taken: Selected = _new_tuple(Selected, (i, got, True))  # _selected, inlined
                return taken
        try:
            sel = _perform((c, sending, case[1] if sending else None), i)
        finally:
            c._lock.release()
        if sel is not None:
            hook = c._notify if sending else c._watch
            if hook is not None:
                hook(c)
            return sel
    if busy is not None:
        c, sending, _ = busy
        with _Locked(c._lock):
            sel = _perform(busy, busy_index)
        hook = c._notify if sending else c._watch
        if sel is not None and hook is not None:
            hook(c)
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
    # A case performed, or the select parked: tell the channels that watch for it.
    for i, (c, sending, _) in enumerate(ops):
        hook = c._notify if sending else c._watch
        if hook is not None and (sel is None or sel.index == i):
            hook(c)
    if sel is not None:
        return sel
    return _wait(w, ops, timeout)


def _wait(w: Any, ops: list[_Op], timeout: float | None) -> Selected | None:
    """Park until one channel fires (or the timeout), then withdraw from all the others."""
    if not _await(w, timeout, ops):
        return None
    _withdraw(w, ops)
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
