"""`Event[M, T]`: a domain object with metadata, encoded as {"meta": {...}, "data": {...}}."""

from __future__ import annotations

import datetime
import os
from typing import Any, Generic, TypeVar

import attrs

__all__ = ["Event", "Meta"]

M = TypeVar("M")
T = TypeVar("T")


@attrs.frozen
class Meta:
    """What happened, by whom, when. The library fills `id`, `type`, `agent` and `created`
    on send unless the sender set them; unset fields are left out of the JSON.

    The fields and their JSON names are those of fogfish/swarm's `Meta`; `realm`,
    `target`, `participant` and `sink` are carried as they are, so an event passing
    through a qchan service keeps them.
    """

    id: str | None = None
    type: str | None = None
    agent: str | None = None
    realm: str | None = None
    created: datetime.datetime | None = None
    target: str | None = None
    participant: str | None = None
    sink: str | None = None


@attrs.frozen
class Event(Generic[M, T]):
    """A generic event: `meta` (a `Meta` or your own class) beside `data`.

    The default category of `Event[Meta, User]` is `"User"`.
    """

    meta: M | None = None
    data: T | None = None


def stamp(event: Event[Any, Any], category: str, agent: str) -> Event[Any, Any]:
    """The event with `Meta`'s id, type, agent and created filled where the sender left them out.

    Events whose `meta` is not a `Meta` (the application's own class) are sent as they are.
    """
    meta = event.meta
    if meta is None:
        meta = Meta()
    elif not isinstance(meta, Meta):
        return event
    if meta.id and meta.type and meta.agent and meta.created:
        return event
    meta = attrs.evolve(
        meta,
        id=meta.id or os.urandom(16).hex(),
        type=meta.type or category,
        agent=meta.agent or agent,
        created=meta.created or datetime.datetime.now(datetime.UTC),
    )
    return attrs.evolve(event, meta=meta)
