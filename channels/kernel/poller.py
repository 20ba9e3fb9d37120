"""The poller: one thread per queue that takes messages from the broker.

It calls `adapter.receive` while some category is open, fewer than `in_flight`
messages are outstanding and the consumers have demand (free `rcv` buffer and
waiting receivers beyond what was received and not handed over yet: see
`Gate.want`), asking for no more than that demand; `adapter.hold` while the
limit is reached or there is no demand, `adapter.idle` while no channel is open.
It decodes each bag with its category's codec and hands the batch to the
dispatcher. Bags it cannot decode or route go
to the dispatcher as `Poison`, which reports them and applies the adapter's
poison policy.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..chan import Chan
from ..codec import JSONCodec
from ..errors import ChannelClosed, ConnectionLost, DecodeError, UnroutableError
from ..message import Msg
from .context import Context, resolved
from .routes import ANY, Gate, Handoff, Poison, Receiver, Stray, short, type_name

__all__ = ["Poller"]

log = logging.getLogger("qchan.listener")


class Poller:
    """The poller thread of one queue (started by `Listener`)."""

    def __init__(self, ctx: Context, gate: Gate, inbox: Chan[Handoff]) -> None:
        self.ctx = ctx
        self.gate = gate
        self.inbox = inbox
        self.log = logging.LoggerAdapter(log, {"queue": ctx.name})
        self.thread = threading.Thread(
            target=self._run, name=f"qchan-poller-{gate.adapter.scheme}-{ctx.name}", daemon=True
        )

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:
            self.ctx.fail(e, "poller")

    def _loop(self) -> None:
        ctx, gate = self.ctx, self.gate
        adapter = gate.adapter
        poll_wait = resolved(ctx.options.poll_wait)
        failures = 0
        state = ""
        serviceable = True  # does the adapter want hold/idle calls? (it says so by returning True)
        while True:
            with gate.cond:
                while True:
                    if gate.stopping or ctx.failure() is not None:
                        return
                    want = gate.want()
                    now = "receive" if want > 0 else "hold" if want == 0 else "idle"
                    if now != state:  # a new state: ask the adapter (again) whether it tends it
                        state, serviceable = now, True
                    if state == "receive" or serviceable:
                        break
                    gate.cond.wait()
                gate.idling = state != "receive"
            if state != "receive":
                # Two different signals, never one: hold keeps what the adapter took
                # (the application is only slow); idle may give it back (nobody listens).
                tend = adapter.hold if state == "hold" else adapter.idle
                try:
                    serviceable = bool(tend(poll_wait))
                except Exception as e:
                    ctx.report(e)
                    serviceable = False
                continue
            try:
                bags = adapter.receive(min(adapter.max_receive, want), poll_wait)
                failures = 0
            except Exception as e:
                failures += 1
                ctx.report(
                    e
                    if isinstance(e, ConnectionLost)
                    else ConnectionLost(f"queue {ctx.name!r}: receive failed ({e!r}); retrying")
                )
                backoff = min(5.0, 0.05 * 2 ** min(failures, 7))
                with gate.cond:  # back off, but wake at once when the queue closes
                    if gate.cond.wait_for(gate.is_stopping, backoff):
                        return
                continue
            if bags:
                gate.taken(len(bags))
                self._route(bags)
                bags = []  # hold no message while receiving the next

    def _route(self, bags: Any) -> None:
        stats = self.ctx.counters
        routes = self.gate.routes
        handoff: Handoff = []
        if not routes:
            # The last channel closed while this receive ran: give the bags back at
            # once rather than leave them to the broker's visibility timeout.
            handoff.extend(Stray(bag) for bag in bags)
            self._hand_over(handoff)
            return
        stats.received += len(bags)
        run: list[Msg[Any]] = []  # consecutive messages for one receiver
        last: Receiver | None = None
        name = self.ctx.name
        routed = 0
        for bag in bags:
            if bag.deliveries > 1:
                stats.redelivered += 1
            r = routes.get(bag.category) or routes.get(ANY)
            if r is None:
                handoff.append(
                    Poison(
                        bag,
                        UnroutableError(
                            f"queue {name!r}: no channel receives category "
                            f"{short(bag.category)} (message {short(bag.id)}); it goes back to the "
                            f"broker",
                            bag,
                        ),
                    )
                )
                last = None
                continue
            try:
                obj = r.codec.decode(bag.body)
            except Exception as e:
                why = JSONCodec.explain(e)
                err = DecodeError(
                    f"queue {name!r}: cannot decode a {short(bag.category)} message "
                    f"({short(bag.id)}, {len(bag.body)} bytes) as {type_name(r.codec)}: "
                    f"{why[:500]}",
                    bag,
                )
                err.__cause__ = e
                handoff.append(Poison(bag, err))
                last = None
                continue
            if r is not last:
                run = []
                handoff.append((r, run))
                last = r
            # positional: a third faster than with the keyword (1.2 us against 1.7)
            run.append(Msg(obj, bag.category, bag.digest, bag.attributes, None, None, bag))
            routed += 1
        self.gate.sent += routed  # only this thread writes it
        self._hand_over(handoff)

    def _hand_over(self, handoff: Handoff) -> None:
        try:
            self.inbox.send(handoff)
        except ChannelClosed:
            # The queue closed while this receive was still running (a long poll
            # that outlived close's timeout). Nothing acks these bags: the broker
            # makes them visible again by its own redelivery.
            self.log.info(
                "queue %s: %d message(s) received after close; left to broker redelivery",
                self.ctx.name,
                len(handoff),
            )
