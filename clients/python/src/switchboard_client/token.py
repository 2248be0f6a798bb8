"""Tokens: a fixed string or a function returning (an awaitable of) a string, the JWT ``exp``
read without verification, and when to ask for a fresh one.

The client sends the token in ``hello {token}`` (never in the URL). With a function, it is asked
before a connect when the cached token is within its refresh margin of ``exp`` (or has none
cached), and again at ``exp - margin`` to send ``refresh {token}`` on the open socket, where
``margin = min(30 s, lifetime left / 3)``: a 9-second token is refreshed about 3 s before exp.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import time
from typing import Awaitable, Callable, Union

TokenFunction = Callable[[], Union[str, Awaitable[str]]]
TokenLike = Union[str, TokenFunction, None]

#: The longest margin before ``exp`` at which a token is refreshed (seconds).
MAX_MARGIN = 30.0


def jwt_exp(token: str) -> float | None:
    """The ``exp`` claim (unix seconds) of a JWT, read without verifying it; None when the
    token is not a JWT or has no numeric ``exp``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict):
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)


def refresh_margin(exp: float, now: float) -> float:
    """How long before ``exp`` to refresh: ``min(30 s, (exp - now) / 3)``, at least 0."""
    return max(0.0, min(MAX_MARGIN, (exp - now) / 3.0))


def refresh_at(exp: float, issued: float) -> float:
    """When (unix seconds) a token with ``exp``, obtained at ``issued``, should be refreshed."""
    return exp - refresh_margin(exp, issued)


class TokenSource:
    """The app's ``token`` argument, with the last token a function gave cached."""

    def __init__(self, token: TokenLike) -> None:
        if token is not None and not isinstance(token, str) and not callable(token):
            raise TypeError("token: a string, a function returning (an awaitable of) a string, or None")
        self._token = token
        self._cached: str | None = None
        self._cached_at = 0.0

    @property
    def is_function(self) -> bool:
        """Whether a fresh token can be asked for (a 1008 or an expiry can be recovered from)."""
        return callable(self._token)

    @property
    def current(self) -> str | None:
        """The last token given (or the fixed one)."""
        if isinstance(self._token, str):
            return self._token
        return self._cached

    def refresh_due(self) -> float | None:
        """When the current token should be refreshed (unix seconds); None: never (a fixed
        token, no token, or one without ``exp``)."""
        if not self.is_function or self._cached is None:
            return None
        exp = jwt_exp(self._cached)
        if exp is None:
            return None
        return refresh_at(exp, self._cached_at)

    async def get(self, *, fresh: bool = False, now: Callable[[], float] = time.time) -> str | None:
        """The token to send: the fixed one, or the function's (cached while it is not within
        its refresh margin of ``exp``; ``fresh`` asks the function regardless)."""
        token = self._token
        if token is None or isinstance(token, str):
            return token
        if not fresh and self._cached is not None:
            due = self.refresh_due()
            if due is None or now() < due:
                return self._cached
        value = token()
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str) or not value:
            raise TypeError("the token function must return a non-empty string")
        self._cached = value
        self._cached_at = now()
        return value
