"""``switchboard_client``: an asyncio client for Switchboard gateways.

Reconnects with backoff and full jitter over several URLs, resumes its session (subscriptions,
missed history events, replies of calls in flight), de-duplicates events by id, follows the
close-code policy, refreshes its token before ``exp``, cancels calls with
``notifications/cancelled``. See the README for the API and the policy.

    async with Client(["ws://a:8080/ws", "ws://b:8080/ws"], token=get_token) as sb:
        async for event in sb.subscribe("chat:42"):
            print(event.topic, event.data, event.id, event.from_)
"""

from .client import SUBPROTOCOL, VERSION, Client, Revoked, StateStream
from .errors import (
    Closed,
    Disconnected,
    RequestTimeout,
    RpcError,
    SessionLost,
    SwitchboardError,
)
from .subscription import Subscription
from .token import TokenSource, jwt_exp, refresh_margin
from .types import (
    CLOSED,
    CONNECTED,
    CONNECTING,
    DISCONNECTED,
    NOT_RECOVERED,
    RESUMED,
    REVOKED,
    CallResult,
    Event,
    Progress,
    StateChange,
)

__version__ = VERSION

__all__ = [
    "CLOSED",
    "CONNECTED",
    "CONNECTING",
    "DISCONNECTED",
    "NOT_RECOVERED",
    "RESUMED",
    "REVOKED",
    "SUBPROTOCOL",
    "VERSION",
    "CallResult",
    "Client",
    "Closed",
    "Disconnected",
    "Event",
    "Progress",
    "RequestTimeout",
    "Revoked",
    "RpcError",
    "SessionLost",
    "StateChange",
    "StateStream",
    "Subscription",
    "SwitchboardError",
    "TokenSource",
    "__version__",
    "jwt_exp",
    "refresh_margin",
]
