"""Reconnect delays (exponential backoff with full jitter) and the close-code policy.

Full jitter (a uniform draw between zero and the exponential ceiling) spreads the clients of a
node that went away over the whole window. :func:`policy` maps a close code to what the client
does next; the table is in the README and docs/clients.md.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

DEFAULT_MIN = 0.1
DEFAULT_MAX = 5.0
#: The first delay after a 1013 (try again later) is at least this long (seconds).
FLOOR_TRY_LATER = 1.0
#: The first delay after a 4029 (rate limited) is at least this long (seconds).
FLOOR_RATE_LIMITED = 5.0


def ceiling(attempt: int, min_delay: float, max_delay: float) -> float:
    """``min(max, min * 2**attempt)``, without overflow for long outages."""
    if attempt >= 62:
        return max_delay
    return float(min(max_delay, min_delay * (2**attempt)))


def delay(
    attempt: int,
    min_delay: float = DEFAULT_MIN,
    max_delay: float = DEFAULT_MAX,
    draw: Callable[[float], float] | None = None,
) -> float:
    """The delay before reconnect attempt ``attempt`` (0 for the first): uniform in
    ``[0, min(max, min * 2**attempt)]``; ``draw`` maps the ceiling to a value in it."""
    top = ceiling(attempt, min_delay, max_delay)
    value = draw(top) if draw is not None else random.uniform(0.0, top)
    return min(max(value, 0.0), top)


@dataclass(frozen=True)
class Action:
    """What to do after a socket closed with some code."""

    #: Never reconnect: the session is over.
    final: bool
    #: Seconds added to the jittered delay of the next attempt (1013: 1 s, 4029: 5 s).
    floor: float = 0.0
    #: Restart the backoff at attempt 0 (1012: the node is going away, try the next one now).
    reset: bool = False
    #: 1008: the token is bad; only a token function can help (ask it for a fresh one).
    token_refused: bool = False


def policy(code: int | None, *, by_app: bool = False) -> Action:
    """The close-code policy (``code`` None: the socket ended without a close frame)."""
    if by_app:
        return Action(final=True)
    if code == 4009:
        return Action(final=True)
    if code == 1008:
        return Action(final=False, token_refused=True)
    if code == 1012:
        return Action(final=False, reset=True)
    if code == 1013:
        return Action(final=False, floor=FLOOR_TRY_LATER)
    if code == 4029:
        return Action(final=False, floor=FLOOR_RATE_LIMITED)
    # 1000 unasked, 1001, 1005/1006, 1011, 4001, 4002, 4008, 1002, 1003, 1007, 1009, ...
    return Action(final=False)
