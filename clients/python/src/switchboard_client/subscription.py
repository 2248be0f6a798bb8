""":class:`Subscription`: one ``subscribe`` of a topic, awaitable (subscribes and gives the
reply's ``position``/``recovered``) and async-iterable (the topic's events, deduplicated by id).

Each subscription buffers at most ``event_queue`` events (default 1024). When the buffer is
full the socket's reader waits for the app: it stops reading the socket (the ``websockets``
library then stops reading TCP), so a slow ``async for`` applies backpressure rather than
growing memory; a gateway that cannot write to the client closes it as a slow consumer (4008)
and the client resumes from the last event the app got.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from .types import Event


class _Owner(Protocol):
    """What a subscription asks of the client that made it (``Client``; a protocol, so this
    module does not import the client's)."""

    async def _subscribe(self, sub: Subscription) -> None: ...

    async def _unsubscribe(self, sub: Subscription) -> None: ...


class Subscription:
    """``await sub`` subscribes (once); ``async for event in sub`` subscribes first if needed,
    then yields the topic's events until :meth:`unsubscribe` or the client's ``close()`` (a
    final close by the gateway, 4009 or 1008, raises :class:`~switchboard_client.Closed`)."""

    def __init__(
        self,
        client: _Owner,
        topic: str,
        since: str | None,
        token: str | None,
        maxsize: int,
    ) -> None:
        self._client = client
        self.topic = topic
        #: The ``position`` of the subscribe reply (the ``since`` to give after a reload).
        self.position: str | None = None
        #: ``recovered`` of the subscribe reply (None when no ``since`` was asked).
        self.recovered: bool | None = None
        self._since = since
        self._token = token
        self._maxsize = max(1, maxsize)
        self._items: deque[Event] = deque()
        self._has_items = asyncio.Event()
        self._space = asyncio.Event()
        self._done = False
        self._error: BaseException | None = None
        self._started: asyncio.Future[None] | None = None

    @property
    def active(self) -> bool:
        """Subscribed (or subscribing) and not ended."""
        return not self._done

    def __await__(self) -> Any:
        return self._ensure().__await__()

    async def _ensure(self) -> Subscription:
        if self._started is None:
            self._started = asyncio.ensure_future(self._client._subscribe(self))
        await asyncio.shield(self._started)
        return self

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._started is None or not self._started.done():
            await self._ensure()
        while True:
            if self._items:
                item = self._items.popleft()
                self._space.set()
                return item
            if self._done:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._has_items.clear()
            await self._has_items.wait()

    async def unsubscribe(self) -> None:
        """Stops this subscription's events at once; the topic is unsubscribed when no other
        subscription of the client wants it."""
        await self._client._unsubscribe(self)

    # Called by the client (its socket reader and its end).

    def _end(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        self._has_items.set()
        self._space.set()

    async def _push(self, event: Event, blocked: Any) -> None:
        """Buffers ``event``, waiting while the buffer is full (``blocked(True/False)`` tells the
        reader's watchdog that the wait is the app's, not the socket's)."""
        while not self._done:
            if len(self._items) < self._maxsize:
                self._items.append(event)
                self._has_items.set()
                return
            self._space.clear()
            blocked(True)
            try:
                await self._space.wait()
            finally:
                blocked(False)
