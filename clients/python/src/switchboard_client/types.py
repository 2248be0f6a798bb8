"""The values a Switchboard client hands the app: events, call results, progress and state
changes, as frozen dataclasses (the wire format is docs/protocol.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: A socket is being opened (before every connect attempt).
CONNECTING = "connecting"
#: ``hello`` answered on a new session (the first connect, or a session that expired).
CONNECTED = "connected"
#: ``hello`` answered and the session resumed: subscriptions restored, missed events replayed.
RESUMED = "resumed"
#: Events of ``topic`` may have been missed (its history no longer reaches back): reload it.
NOT_RECOVERED = "recovered:false"
#: A ``refresh`` dropped ``topic`` (the new token no longer allows it): its subscriptions end.
REVOKED = "revoked"
#: The socket was lost (``code``/``reason``); the client reconnects.
DISCONNECTED = "disconnected"
#: Final (``code``/``reason``): the app's ``close()``, a takeover (4009), a refused token (1008).
CLOSED = "closed"


@dataclass(frozen=True)
class Event:
    """An ``event`` notification: ``id`` on topics with history, ``from_`` (the publisher's
    subject) on events a client published."""

    topic: str
    data: Any
    id: str | None = None
    from_: str | None = None


@dataclass(frozen=True)
class Progress:
    """A ``notifications/progress`` of a call."""

    progress: float
    total: float | None = None
    message: str | None = None


@dataclass(frozen=True)
class CallResult:
    """A tool's MCP ``CallToolResult``; ``raw`` is the whole result object."""

    content: list[Any]
    structured_content: Any = None
    is_error: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Any) -> CallResult:
        if not isinstance(value, dict):
            return cls(content=[], raw={"value": value})
        content = value.get("content")
        meta = value.get("_meta")
        return cls(
            content=content if isinstance(content, list) else [],
            structured_content=value.get("structuredContent"),
            is_error=value.get("isError") is True,
            meta=meta if isinstance(meta, dict) else {},
            raw=value,
        )


@dataclass(frozen=True)
class StateChange:
    """A change of the client's state; ``state`` is one of the module's constants."""

    state: str
    code: int | None = None
    reason: str | None = None
    topic: str | None = None
    node: str | None = None
    session: str | None = None
    url: str | None = None
