"""The exceptions a Switchboard client raises.

Every one derives from :class:`SwitchboardError`, so an app may catch them all at once:

- :class:`RpcError`: the gateway answered a request with a JSON-RPC error (code, message, data).
- :class:`Disconnected`: the socket a request (other than a call) was sent on dropped before the
  reply; the session reconnects by itself, the request may be made again.
- :class:`SessionLost`: a reconnect could not resume the session, so the calls in flight on the
  old one will never be answered.
- :class:`Closed`: the client is closed for good (by the app, a takeover 4009, a refused token
  1008, or a first connection that reached no URL).
- :class:`RequestTimeout`: a request or call was not answered in time (also a ``TimeoutError``).
"""

from __future__ import annotations

from typing import Any

# JSON-RPC error codes of docs/protocol.md, section 4.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL = -32603
UNAUTHORIZED = -32001
FORBIDDEN = -32002
RATE_LIMITED = -32003
NOT_FOUND = -32004
TIMEOUT = -32005
OVERLOADED = -32006
TOO_LARGE = -32007


class SwitchboardError(Exception):
    """Base class of every error this package raises."""


class RpcError(SwitchboardError):
    """A JSON-RPC error reply: ``code``, ``message`` and optional ``data``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.data = data

    @classmethod
    def from_json(cls, error: Any) -> RpcError:
        if not isinstance(error, dict):
            return cls(INTERNAL, f"malformed error: {error!r}")
        code = error.get("code")
        message = error.get("message")
        return cls(
            code if isinstance(code, int) else INTERNAL,
            message if isinstance(message, str) else "",
            error.get("data"),
        )


class Disconnected(SwitchboardError):
    """The socket dropped before the reply; the client is reconnecting."""


class SessionLost(SwitchboardError):
    """The session could not be resumed: calls in flight on it will never be answered."""


class Closed(SwitchboardError):
    """The client is closed for good; ``code``/``reason`` say why (``code`` None: no socket)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed ({code}): {reason}" if code is not None else f"closed: {reason}")
        self.code = code
        self.reason = reason


class RequestTimeout(SwitchboardError, TimeoutError):
    """A request or call got no reply within its timeout."""
