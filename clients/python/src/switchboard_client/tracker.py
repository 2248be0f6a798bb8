"""What a session knows about each topic the app wants: the last event id delivered (to drop
duplicates), the newest position the gateway vouched for, and so where to resume from.

A port of the Rust client's ``tracker.rs``. Event ids are ``<ms>-<seq>`` and compare as the
integer pair ``(ms, seq)``, never as strings. A topic's *known* position is the later of the
last id delivered and the last ``position`` a subscribe reply (or a resume) gave: after a
reconnect it goes in ``hello {positions}`` (resume) or ``subscribe {since}`` (new session). A
confirmed topic without a known position resumes from ``0-0`` so that nothing published during
the gap is missed silently (a topic without history answers ``recovered: false`` to that).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ID = re.compile(r"^([0-9]{1,20})-([0-9]{1,20})$")

EventId = tuple[int, int]
ZERO: EventId = (0, 0)


def parse_id(value: object) -> EventId | None:
    """``"<ms>-<seq>"`` as a comparable pair; None for anything else."""
    if not isinstance(value, str):
        return None
    m = _ID.match(value)
    if m is None:
        return None
    return (int(m.group(1)), int(m.group(2)))


def format_id(value: EventId) -> str:
    return f"{value[0]}-{value[1]}"


def _later(a: EventId | None, b: EventId | None) -> EventId | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


@dataclass
class _Topic:
    last: EventId | None = None
    floor: EventId | None = None
    confirmed: bool = False
    #: The ``since`` the app asked for, used until a subscribe is confirmed.
    hint: str | None = None

    def known(self) -> EventId | None:
        return _later(self.last, self.floor)


class Tracker:
    """The session's topics (all methods are synchronous: one event loop owns it)."""

    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}

    def want(self, topic: str, since: str | None = None) -> str | None:
        """The app wants ``topic``; returns the ``since`` its subscribe should carry."""
        t = self._topics.setdefault(topic, _Topic())
        if not t.confirmed and since is not None:
            t.hint = since
        return self.since(topic)

    def since(self, topic: str) -> str | None:
        """The ``since`` to subscribe ``topic`` with (after a reconnect): the known position,
        ``0-0`` for a confirmed topic without one, the app's own ``since`` before that."""
        t = self._topics.get(topic)
        if t is None:
            return None
        if not t.confirmed:
            return t.hint
        return format_id(t.known() or ZERO)

    def confirm(self, topic: str, position: str | None) -> None:
        """A subscribe of ``topic`` was answered (or restored by a resume) with ``position``."""
        t = self._topics.get(topic)
        if t is not None:
            t.confirmed = True
            t.floor = _later(t.floor, parse_id(position))

    def forget(self, topic: str) -> None:
        self._topics.pop(topic, None)

    def wants(self, topic: str) -> bool:
        return topic in self._topics

    def confirmed(self, topic: str) -> bool:
        t = self._topics.get(topic)
        return t is not None and t.confirmed

    def topics(self) -> list[str]:
        return sorted(self._topics)

    def admit(self, topic: str, event_id: str | None) -> bool:
        """Whether an event goes to the app: its topic is wanted and, when it has an id, the id
        is newer than the last one delivered for the topic (which it then becomes)."""
        t = self._topics.get(topic)
        if t is None:
            return False
        parsed = parse_id(event_id)
        if parsed is None:
            return True
        if t.last is not None and parsed <= t.last:
            return False
        t.last = parsed
        return True

    def positions(self) -> dict[str, str]:
        """The known position of every confirmed topic that has one, for ``hello``."""
        out: dict[str, str] = {}
        for topic, t in self._topics.items():
            known = t.known()
            if t.confirmed and known is not None:
                out[topic] = format_id(known)
        return out
