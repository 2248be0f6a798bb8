""":class:`Client`: a Switchboard session over one WebSocket at a time that survives its sockets.

A port of the Rust client's ``client/src/session.rs`` to asyncio on ``websockets``. One
supervisor task owns the connection: it opens a socket (the next URL in rotation), says
``hello`` (``{token, client}``, plus ``{session, positions}`` to resume), and when the socket
ends applies the close-code policy (``backoff.policy``) and reconnects after a full-jitter
backoff. One reader task per socket routes replies to their requests by id, events to their
subscriptions (deduplicated per topic by the tracker), progress to its call.

- Resumed: the gateway restored the subscriptions and replays what was missed (from
  ``positions``); topics it could not recover are reported (``recovered:false``); topics the
  app subscribed meanwhile are subscribed, those it dropped unsubscribed. Replies of calls in
  flight arrive on the new socket with their ids: ids come from one counter for the client's
  life and the pending table outlives sockets.
- Not resumed (the session expired): a new session; every wanted topic is subscribed again
  with ``since`` (its known id, ``0-0`` without one); calls in flight fail with SessionLost.
- Requests made while reconnecting wait for the next ready socket (within their timeout); a
  request other than a call in flight when its socket dropped fails with Disconnected.
- Heartbeat: a socket that received nothing for one heartbeat gets a JSON ``ping``; one that
  received nothing for ``stale_heartbeats`` heartbeats (while the app is not the one holding
  the reader back) is dropped and the client reconnects.
- Token: a string, or a function returning (an awaitable of) a string, asked before connects
  and again before ``exp`` to send ``refresh`` (``token.py``).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from . import backoff
from .errors import (
    INTERNAL,
    OVERLOADED,
    UNAUTHORIZED,
    Closed,
    Disconnected,
    RequestTimeout,
    RpcError,
    SessionLost,
    SwitchboardError,
)
from .subscription import Subscription
from .token import TokenLike, TokenSource
from .tracker import Tracker
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

__all__ = ["Client", "StateStream", "VERSION", "SUBPROTOCOL"]

log = logging.getLogger("switchboard_client")

VERSION = "0.1.0"
SUBPROTOCOL = "switchboard.v1"

ProgressCallback = Callable[[Progress], "None | Awaitable[None]"]
StateCallback = Callable[[StateChange], None]


class Revoked(SwitchboardError):
    """A ``refresh`` dropped the topic: the new token no longer allows it."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"subscription to {topic} revoked by a token refresh")
        self.topic = topic


class _Default:
    pass


_DEFAULT = _Default()


class _Pending:
    __slots__ = ("future", "method", "call", "conn")

    def __init__(self, future: asyncio.Future[Any], method: str, call: bool, conn: _Conn) -> None:
        self.future = future
        self.method = method
        self.call = call
        self.conn = conn


class _Conn:
    """One socket and what the client knows about it."""

    def __init__(self, ws: ClientConnection, url: str, fresh_token: bool) -> None:
        self.ws = ws
        self.url = url
        self.fresh_token = fresh_token
        self.last_rx = time.monotonic()
        self.blocked = 0
        self.pinging = False
        self.ended = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Runs ``coro`` for this socket's life (cancelled when it ends)."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def set_blocked(self, on: bool) -> None:
        self.blocked += 1 if on else -1
        if not on:
            self.last_rx = time.monotonic()

    def close_info(self) -> tuple[int | None, str]:
        # The sans-I/O protocol's (the connection's own properties came in websockets 15).
        code = self.ws.protocol.close_code
        reason = self.ws.protocol.close_reason or ""
        if code == 1006 or code is None:
            return (code, reason or "connection lost")
        return (code, reason)


class _Outcome:
    """How a socket ended, for the policy."""

    def __init__(
        self,
        code: int | None,
        reason: str,
        was_ready: bool,
        by_app: bool = False,
        floor: float = 0.0,
    ) -> None:
        self.code = code
        self.reason = reason
        self.was_ready = was_ready
        self.by_app = by_app
        self.floor = floor


class StateStream:
    """``async for change in client.states()``: every state change from its creation on, until
    ``closed`` (bounded: past ``maxsize`` unread changes the oldest are dropped)."""

    def __init__(self, client: Client, maxsize: int = 256) -> None:
        self._client = client
        self._items: deque[StateChange] = deque(maxlen=maxsize)
        self._wake = asyncio.Event()
        self._ended = False

    def _put(self, change: StateChange) -> None:
        self._items.append(change)
        self._wake.set()

    def __aiter__(self) -> StateStream:
        return self

    async def __anext__(self) -> StateChange:
        while True:
            if self._items:
                change = self._items.popleft()
                if change.state == CLOSED:
                    self._ended = True
                return change
            if self._ended or (self._client._final is not None and not self._items):
                self._client._state_streams.discard(self)
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()


class Client:
    """A reconnecting, resuming Switchboard client.

    ``urls``: one or more ``ws://``/``wss://`` gateway URLs, tried in rotation. ``token``: a
    string, or a function returning (an awaitable of) a string (asked for a fresh token before
    ``exp`` and after a 1008). Use as ``async with Client(...) as sb:`` or ``await
    sb.connect()`` / ``await sb.close()``. ``ssl``: an ``ssl.SSLContext`` for ``wss://`` URLs
    (a custom CA: ``ssl.create_default_context(cafile=...)``); by default the system's roots.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        token: TokenLike = None,
        *,
        client_info: dict[str, Any] | None = None,
        backoff_min: float = backoff.DEFAULT_MIN,
        backoff_max: float = backoff.DEFAULT_MAX,
        event_queue: int = 1024,
        hello_timeout: float = 10.0,
        connect_timeout: float | None = 30.0,
        request_timeout: float = 30.0,
        call_timeout: float | None = 300.0,
        close_timeout: float = 2.0,
        stale_heartbeats: int = 3,
        max_message_bytes: int | None = 16 * 1024 * 1024,
        refresh_retry_delay: float = 1.0,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self._urls = [urls] if isinstance(urls, str) else list(urls)
        if not self._urls:
            raise ValueError("urls: at least one URL")
        if backoff_min <= 0 or backoff_max < backoff_min:
            raise ValueError("backoff: backoff_min above zero and backoff_max at least backoff_min")
        if event_queue < 1:
            raise ValueError("event_queue: at least 1")
        if hello_timeout <= 0 or request_timeout <= 0:
            raise ValueError("hello_timeout and request_timeout: above zero")
        self._token = TokenSource(token)
        self._client_info: dict[str, Any] = client_info or {
            "name": "switchboard-python",
            "version": VERSION,
        }
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._event_queue = event_queue
        self._hello_timeout = hello_timeout
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._call_timeout = call_timeout
        self._close_timeout = close_timeout
        self._stale_heartbeats = stale_heartbeats
        self._max_message_bytes = max_message_bytes
        self._refresh_retry_delay = refresh_retry_delay
        self._ssl = ssl

        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._progress: dict[str, ProgressCallback] = {}
        self._cancel_backlog: list[tuple[int, str]] = []
        self._tracker = Tracker()
        self._subs: dict[str, list[Subscription]] = {}
        self._session: str | None = None
        self._node: str | None = None
        self._heartbeat: float | None = None
        self._limits: dict[str, Any] = {}
        self._link: _Conn | None = None
        self._final: tuple[int | None, str] | None = None
        self._closing = False
        self._url_index = -1
        self._reconnections = 0
        self._runner: asyncio.Task[None] | None = None
        # Created lazily inside the running loop.
        self._ready_ev: asyncio.Event | None = None
        self._closing_ev: asyncio.Event | None = None
        self._first_ready: asyncio.Event | None = None
        self._state = StateChange(CONNECTING)
        self._state_callbacks: list[StateCallback] = []
        self._state_streams: set[StateStream] = set()
        self._tools_changed: list[Callable[[], None]] = []

    # ------------------------------------------------------------------------------------------
    # Public surface

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> str | None:
        """The session id (it changes when a reconnect could not resume the session)."""
        return self._session

    @property
    def node(self) -> str | None:
        """The node of the current (or last) socket, as its ``hello`` named it."""
        return self._node

    @property
    def state(self) -> StateChange:
        """The latest state change."""
        return self._state

    @property
    def limits(self) -> dict[str, Any]:
        """``hello``'s ``limits`` from the current node."""
        return dict(self._limits)

    @property
    def reconnections(self) -> int:
        """Successful reconnects (``hello`` answered on a socket after the first)."""
        return self._reconnections

    @property
    def topics(self) -> list[str]:
        """The topics the client keeps subscribed, sorted."""
        return self._tracker.topics()

    @property
    def closed(self) -> bool:
        return self._final is not None

    def on_state(self, callback: StateCallback) -> None:
        """Calls ``callback(change)`` on every state change (synchronously, in the loop)."""
        self._state_callbacks.append(callback)

    def on_tools_changed(self, callback: Callable[[], None]) -> None:
        """Calls ``callback()`` on ``notifications/tools/list_changed``."""
        self._tools_changed.append(callback)

    def states(self) -> StateStream:
        """An async iterator of state changes from now on, ending after ``closed``."""
        stream = StateStream(self)
        self._state_streams.add(stream)
        return stream

    async def connect(self) -> None:
        """Opens the session: returns once a ``hello`` was answered. Raises :class:`Closed`
        when the policy ends it first (a refused token, or no URL reachable in a first round),
        :class:`RequestTimeout` after ``connect_timeout``."""
        if self._runner is not None:
            raise RuntimeError("connect() was already called")
        self._ready_ev = asyncio.Event()
        self._closing_ev = asyncio.Event()
        self._first_ready = asyncio.Event()
        self._runner = asyncio.create_task(self._run(), name="switchboard-supervisor")
        waiter = asyncio.create_task(self._first_ready.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, self._runner},
                timeout=self._connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if self._first_ready.is_set() and self._final is None:
            return
        if self._final is not None:
            raise Closed(*self._final)
        await self.close()
        raise RequestTimeout(f"no gateway answered hello within {self._connect_timeout} s")

    async def close(self) -> None:
        """Closes the socket with 1000, final: pending requests and calls fail with
        :class:`Closed`, subscriptions end, state ``closed``."""
        if self._runner is None:
            self._final = self._final or (1000, "closed by the client")
            return
        if self._final is None:
            self._closing = True
            assert self._closing_ev is not None
            self._closing_ev.set()
            for subs in list(self._subs.values()):
                for sub in subs:
                    sub._end(None)
        await asyncio.shield(self._runner)

    def subscribe(
        self, topic: str, *, since: str | None = None, token: str | None = None
    ) -> Subscription:
        """A :class:`Subscription` of ``topic``: ``await`` it to subscribe (its ``position``
        and ``recovered`` are the reply's), or iterate it (which subscribes first). ``since``:
        replay the history after that event id; ``token``: a subscription token."""
        return Subscription(self, topic, since, token, self._event_queue)

    async def publish(self, topic: str, data: Any, *, history: bool | None = None) -> str | None:
        """Publishes ``data`` to ``topic``; returns the event's id on a topic with history."""
        params: dict[str, Any] = {"topic": topic, "data": data}
        if history is not None:
            params["history"] = history
        result = await self.request("publish", params)
        if isinstance(result, dict) and isinstance(result.get("id"), str):
            return str(result["id"])
        return None

    async def list_tools(self) -> list[dict[str, Any]]:
        """``tools/list``: the tools this client may call."""
        result = await self.request("tools/list", {})
        tools = result.get("tools") if isinstance(result, dict) else None
        return tools if isinstance(tools, list) else []

    async def ping(self) -> None:
        await self.request("ping", {})

    async def request(
        self, method: str, params: dict[str, Any], *, timeout: float | None | _Default = _DEFAULT
    ) -> Any:
        """Any request on the current socket (waiting for one while reconnecting), within
        ``timeout`` (default ``request_timeout``): its ``result``, or :class:`RpcError`."""
        limit = self._request_timeout if isinstance(timeout, _Default) else timeout

        async def go() -> Any:
            conn = await self._wait_ready()
            return await self._rpc(conn, method, params)

        return await _within(go(), limit, f"{method}: no reply within {limit} s")

    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None | _Default = _DEFAULT,
        cache: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> CallResult:
        """``tools/call``: the tool's result, awaited across reconnects (after a resume it
        arrives on the new socket). ``on_progress(Progress)`` receives progress; ``timeout``
        (default ``call_timeout``, 300 s; None: none); ``cache``: ``use``, ``bypass`` or
        ``refresh``. Cancelling the awaiting task sends ``notifications/cancelled`` and
        re-raises ``CancelledError``. Raises :class:`RpcError`, :class:`SessionLost`,
        :class:`Closed`, :class:`RequestTimeout`."""
        limit = self._call_timeout if isinstance(timeout, _Default) else timeout
        rid = next(self._ids)
        params: dict[str, Any] = {"name": name, "arguments": arguments or {}}
        m: dict[str, Any] = dict(meta or {})
        progress_token: str | None = None
        if on_progress is not None:
            progress_token = f"sb-py-{rid}"
            m["progressToken"] = progress_token
            self._progress[progress_token] = on_progress
        if cache is not None:
            m["switchboard/cache"] = cache
        if m:
            params["_meta"] = m
        frame = json.dumps(
            {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}
        )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sent = False

        async def run() -> Any:
            nonlocal sent
            stale: _Conn | None = None
            while True:
                conn = await self._wait_ready(exclude=stale)
                # Registered before it is sent, so that the reply cannot come first.
                self._pending[rid] = _Pending(future, "tools/call", True, conn)
                sent = True
                try:
                    await conn.ws.send(frame)
                    break
                except ConnectionClosed:
                    # Never sent: send it on the next socket.
                    self._pending.pop(rid, None)
                    sent = False
                    stale = conn
            return await future

        try:
            result = await _within(run(), limit, f"{name}: no result within {limit} s")
        except RequestTimeout:
            if sent:
                await self._send_cancel(rid, "timed out")
            raise
        except asyncio.CancelledError:
            answered = future.done() and not future.cancelled()
            if sent and not answered:
                await self._send_cancel(rid, "cancelled")
            raise
        finally:
            self._pending.pop(rid, None)
            if progress_token is not None:
                self._progress.pop(progress_token, None)
        return CallResult.from_json(result)

    # ------------------------------------------------------------------------------------------
    # Subscriptions (called by Subscription)

    async def _subscribe(self, sub: Subscription) -> None:
        if self._final is not None:
            raise Closed(*self._final)
        topic = sub.topic
        self._subs.setdefault(topic, []).append(sub)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._request_timeout
        try:
            while True:
                since = self._tracker.want(topic, sub._since)
                params: dict[str, Any] = {"topic": topic}
                if since is not None:
                    params["since"] = since
                if sub._token is not None:
                    params["token"] = sub._token
                left = deadline - loop.time()
                try:
                    result = await self.request("subscribe", params, timeout=max(left, 0.001))
                    break
                except Disconnected:
                    # Still wanted; say it again on the next socket (a no-op if restored).
                    if loop.time() >= deadline:
                        raise RequestTimeout(f"subscribe {topic}: no reply in time") from None
                    continue
        except BaseException as e:
            self._drop(sub, error=e if isinstance(e, Exception) else None)
            raise
        if isinstance(result, dict):
            position = result.get("position")
            self._tracker.confirm(topic, position if isinstance(position, str) else None)
            sub.position = position if isinstance(position, str) else None
            recovered = result.get("recovered")
            sub.recovered = recovered if isinstance(recovered, bool) else None

    def _drop(self, sub: Subscription, error: Exception | None) -> bool:
        """Ends ``sub``; returns whether its topic is no longer wanted at all."""
        sub._end(error)
        subs = self._subs.get(sub.topic)
        if subs is not None and sub in subs:
            subs.remove(sub)
        if subs:
            return False
        self._subs.pop(sub.topic, None)
        if self._tracker.confirmed(sub.topic) and error is not None:
            # A subscribe that failed on a topic that is still confirmed elsewhere: kept.
            pass
        self._tracker.forget(sub.topic)
        return True

    async def _unsubscribe(self, sub: Subscription) -> None:
        if sub._done and sub not in self._subs.get(sub.topic, []):
            return
        if not self._drop(sub, None):
            return
        conn = self._link
        if conn is None or self._final is not None:
            # A restore unsubscribes what the app no longer wants.
            return
        try:
            await _within(
                self._rpc(conn, "unsubscribe", {"topic": sub.topic}),
                self._request_timeout,
                "unsubscribe: no reply",
            )
        except (Disconnected, Closed):
            pass

    # ------------------------------------------------------------------------------------------
    # Requests

    async def _wait_ready(self, exclude: _Conn | None = None) -> _Conn:
        assert self._ready_ev is not None, "connect() first"
        while True:
            if self._final is not None:
                raise Closed(*self._final)
            conn = self._link
            if conn is not None and conn is not exclude and not conn.ended.is_set():
                return conn
            self._ready_ev.clear()
            await self._ready_ev.wait()

    async def _rpc(
        self, conn: _Conn, method: str, params: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """A request on ``conn``; fails with Disconnected when ``conn`` ends first."""
        if conn.ended.is_set():
            raise Disconnected(f"{method}: the socket is gone")
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(future, method, False, conn)
        try:
            try:
                await conn.ws.send(
                    json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
                )
            except ConnectionClosed:
                raise Disconnected(f"{method}: the socket is gone") from None
            if timeout is None:
                return await future
            return await _within(future, timeout, f"{method}: no reply within {timeout} s")
        finally:
            self._pending.pop(rid, None)

    async def _send_cancel(self, rid: int, reason: str) -> None:
        conn = self._link
        frame = json.dumps(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": rid, "reason": reason},
            }
        )
        if conn is None or conn.ended.is_set():
            # Sent once the session is back (its calls are carried over to the new socket).
            self._cancel_backlog.append((rid, reason))
            return
        try:
            await asyncio.wait_for(conn.ws.send(frame), timeout=self._close_timeout)
        except (ConnectionClosed, asyncio.TimeoutError):
            self._cancel_backlog.append((rid, reason))

    def _fail(self, predicate: Callable[[_Pending], bool], error: Callable[[], Exception]) -> None:
        for rid, p in list(self._pending.items()):
            if predicate(p):
                self._pending.pop(rid, None)
                if not p.future.done():
                    p.future.set_exception(error())

    # ------------------------------------------------------------------------------------------
    # States

    def _emit(self, change: StateChange) -> None:
        self._state = change
        log.debug("state %s", change)
        for cb in list(self._state_callbacks):
            try:
                cb(change)
            except Exception:
                log.exception("state callback failed")
        for stream in list(self._state_streams):
            stream._put(change)

    # ------------------------------------------------------------------------------------------
    # The supervisor

    async def _run(self) -> None:
        attempt = 0
        floor = 0.0
        first = True
        initial_failures = 0
        force_fresh = False
        last_error = ""
        try:
            while not self._closing:
                if not first:
                    d = floor + backoff.delay(attempt, self._backoff_min, self._backoff_max)
                    attempt += 1
                    floor = 0.0
                    if await self._sleep_or_closing(d):
                        break
                first = False
                self._url_index = (self._url_index + 1) % len(self._urls)
                url = self._urls[self._url_index]
                self._emit(StateChange(CONNECTING, url=url, session=self._session))
                try:
                    token = await self._token.get(fresh=force_fresh)
                except Exception as e:
                    log.warning("the token function failed: %s", e)
                    last_error = f"token function failed: {e}"
                    continue
                used_fresh = force_fresh
                force_fresh = False
                ws = await self._open(url)
                if isinstance(ws, BaseException):
                    last_error = f"{url}: {ws}"
                    log.debug("connect to %s failed: %s", url, ws)
                    if not self._first_ready_set():
                        initial_failures += 1
                        if initial_failures >= len(self._urls):
                            self._finish(None, f"could not connect: {last_error}")
                            return
                    continue
                if ws is None:
                    break
                out = await self._serve(_Conn(ws, url, used_fresh), token)
                action = backoff.policy(out.code, by_app=out.by_app or self._closing)
                if action.final:
                    if self._closing:
                        break
                    self._finish(out.code, out.reason)
                    return
                if action.token_refused:
                    if not self._token.is_function or (used_fresh and not out.was_ready):
                        self._finish(1008, out.reason or "token refused")
                        return
                    force_fresh = True
                    attempt = 0
                if out.was_ready:
                    attempt = 0
                    self._emit(
                        StateChange(
                            DISCONNECTED,
                            code=out.code,
                            reason=out.reason,
                            node=self._node,
                            session=self._session,
                            url=url,
                        )
                    )
                if action.reset:
                    attempt = 0
                floor = max(action.floor, out.floor)
        except asyncio.CancelledError:
            self._finish(1000, "closed by the client")
            raise
        except Exception as e:  # a bug: end visibly rather than hang
            log.exception("switchboard client supervisor failed")
            self._finish(None, f"internal error: {e}")
            return
        self._finish(1000, "closed by the client")

    def _first_ready_set(self) -> bool:
        return self._first_ready is not None and self._first_ready.is_set()

    async def _sleep_or_closing(self, delay: float) -> bool:
        """Sleeps ``delay`` seconds; True when ``close()`` was called meanwhile."""
        assert self._closing_ev is not None
        try:
            await asyncio.wait_for(self._closing_ev.wait(), timeout=delay)
            return True
        except asyncio.TimeoutError:
            return self._closing

    async def _open(self, url: str) -> ClientConnection | BaseException | None:
        """A new socket; the error when it fails; None when ``close()`` came first."""
        assert self._closing_ev is not None
        opening = asyncio.ensure_future(
            ws_connect(
                url,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                open_timeout=self._hello_timeout,
                ping_interval=None,
                close_timeout=self._close_timeout,
                max_size=self._max_message_bytes,
                user_agent_header=f"switchboard-python/{VERSION}",
                # A context of the application's (a custom CA, a client certificate) for
                # wss:// URLs; websockets refuses one for ws://. None: the system's defaults.
                ssl=self._ssl if url.startswith("wss:") else None,
            )
        )
        closing = asyncio.create_task(self._closing_ev.wait())
        try:
            await asyncio.wait({opening, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        if not opening.done():
            opening.cancel()
            try:
                await opening
            except BaseException:
                pass
            return None
        try:
            return opening.result()
        except asyncio.CancelledError:
            return None
        except Exception as e:
            return e

    async def _serve(self, conn: _Conn, token: str | None) -> _Outcome:
        """Runs one socket: its reader, its handshake, its watchdog, until it ends."""
        assert self._closing_ev is not None
        reader = asyncio.create_task(self._reader(conn), name="switchboard-reader")
        closing = asyncio.create_task(self._closing_ev.wait())
        was_ready = False
        floor = 0.0
        forced: tuple[int, str] | None = None
        try:
            handshake = asyncio.create_task(self._handshake(conn, token))
            await asyncio.wait({handshake, closing}, return_when=asyncio.FIRST_COMPLETED)
            if not handshake.done():
                handshake.cancel()
            else:
                verdict = handshake.result()
                if verdict == "ready":
                    was_ready = True
                    watch = asyncio.create_task(self._watch(conn))
                    await asyncio.wait({watch, closing}, return_when=asyncio.FIRST_COMPLETED)
                    watch.cancel()
                elif verdict == "refused":
                    forced = (1008, "token refused")
                elif verdict == "later":
                    floor = backoff.FLOOR_TRY_LATER
        finally:
            closing.cancel()
            if self._link is conn:
                self._link = None
            for t in list(conn.tasks):
                t.cancel()
            by_app = self._closing
            if by_app:
                for subs in list(self._subs.values()):
                    for sub in subs:
                        sub._end(None)
            await self._close_socket(conn, 1000 if by_app else 4000, reader, by_app)
        code, reason = conn.close_info()
        if forced is not None and code in (None, 1006, 1000, 4000):
            code, reason = forced
        if by_app:
            return _Outcome(1000, "closed by the client", was_ready, by_app=True)
        return _Outcome(code, reason, was_ready, floor=floor)

    async def _close_socket(
        self, conn: _Conn, code: int, reader: asyncio.Task[None], by_app: bool
    ) -> None:
        if not conn.ended.is_set() or conn.ws.protocol.close_code is None:
            try:
                await asyncio.wait_for(
                    conn.ws.close(code, "closed by the client" if by_app else "reconnecting"),
                    timeout=self._close_timeout + 1.0,
                )
            except Exception:
                pass
        if by_app:
            try:
                await asyncio.wait_for(asyncio.shield(reader), timeout=self._close_timeout)
            except Exception:
                reader.cancel()
        else:
            # The reader delivers what the socket already gave before the next socket's events
            # (it may wait for the app to make room: backpressure).
            try:
                await reader
            except Exception:
                pass

    async def _handshake(self, conn: _Conn, token: str | None) -> str:
        """``hello`` on a new socket, then the restore; ``ready``, ``retry``, ``later`` (1013's
        floor applies) or ``refused`` (the token: the 1008 policy applies)."""
        base: dict[str, Any] = {"client": self._client_info}
        if token is not None:
            base["token"] = token
        params = dict(base)
        resuming = self._session is not None
        if resuming:
            params["session"] = self._session
            positions = self._tracker.positions()
            if positions:
                params["positions"] = positions
        try:
            try:
                result = await self._rpc(conn, "hello", params, timeout=self._hello_timeout)
            except RpcError as e:
                if e.code != UNAUTHORIZED or not resuming:
                    raise
                # A session of another identity (the socket stays open): start afresh; a bad
                # token fails again and the gateway closes with 1008.
                result = await self._rpc(conn, "hello", dict(base), timeout=self._hello_timeout)
        except RpcError as e:
            log.debug("hello refused: %s", e)
            if e.code == UNAUTHORIZED:
                return "refused"
            if e.code in (INTERNAL, OVERLOADED):
                return "later"
            return "retry"
        except (Disconnected, RequestTimeout) as e:
            log.debug("hello failed: %s", e)
            return "retry"
        if not isinstance(result, dict) or not isinstance(result.get("session"), str):
            return "retry"
        resumed = result.get("resumed") is True
        if not resumed and resuming:
            # Before the link is ready, so only calls sent on earlier sockets fail.
            self._fail(lambda p: p.call, lambda: SessionLost("the session could not be resumed"))
        self._session = str(result["session"])
        node = result.get("node")
        self._node = node if isinstance(node, str) else None
        hb = result.get("heartbeatMs")
        self._heartbeat = hb / 1000.0 if isinstance(hb, (int, float)) and hb > 0 else None
        limits = result.get("limits")
        self._limits = limits if isinstance(limits, dict) else {}
        subscribe, unsubscribe, not_recovered = self._restore_plan(result, resumed)
        self._link = conn
        assert self._ready_ev is not None and self._first_ready is not None
        if self._first_ready.is_set():
            self._reconnections += 1
        self._first_ready.set()
        self._ready_ev.set()
        self._emit(
            StateChange(
                RESUMED if resumed else CONNECTED,
                node=self._node,
                session=self._session,
                url=conn.url,
            )
        )
        for topic in not_recovered:
            self._emit(StateChange(NOT_RECOVERED, topic=topic, node=self._node))
        conn.spawn(self._restore(conn, subscribe, unsubscribe, not_recovered))
        if self._token.is_function:
            conn.spawn(self._refresh_loop(conn))
        return "ready"

    def _restore_plan(
        self, result: dict[str, Any], resumed: bool
    ) -> tuple[list[tuple[str, str | None]], list[str], list[str]]:
        restored: set[str] = set()
        unsubscribe: list[str] = []
        not_recovered: list[str] = []
        if resumed:
            subs = result.get("subscriptions")
            for s in subs if isinstance(subs, list) else []:
                if not isinstance(s, dict) or not isinstance(s.get("topic"), str):
                    continue
                topic = str(s["topic"])
                if not self._tracker.wants(topic):
                    unsubscribe.append(topic)
                    continue
                position = s.get("position")
                self._tracker.confirm(topic, position if isinstance(position, str) else None)
                if s.get("recovered") is False:
                    not_recovered.append(topic)
                else:
                    restored.add(topic)
        subscribe = [
            (t, self._tracker.since(t)) for t in self._tracker.topics() if t not in restored
        ]
        return subscribe, unsubscribe, not_recovered

    async def _restore(
        self,
        conn: _Conn,
        subscribe: list[tuple[str, str | None]],
        unsubscribe: list[str],
        not_recovered: list[str],
    ) -> None:
        backlog, self._cancel_backlog = self._cancel_backlog, []
        for rid, reason in backlog:
            await self._send_cancel(rid, reason)
        for topic, since in subscribe:
            if not self._tracker.wants(topic):
                continue
            params: dict[str, Any] = {"topic": topic}
            if since is not None:
                params["since"] = since
            try:
                r = await self._rpc(conn, "subscribe", params, timeout=self._request_timeout)
            except RpcError as e:
                if e.code == INTERNAL:
                    log.debug("backend unavailable during restore; reconnecting")
                    await conn.ws.close(4000, "restore failed")
                    return
                log.warning("could not restore the subscription to %s: %s", topic, e)
                continue
            except (Disconnected, RequestTimeout, Closed):
                return
            position = r.get("position") if isinstance(r, dict) else None
            self._tracker.confirm(topic, position if isinstance(position, str) else None)
            if not self._tracker.wants(topic):
                try:
                    await self._rpc(conn, "unsubscribe", {"topic": topic})
                except SwitchboardError:
                    pass
                continue
            if isinstance(r, dict) and r.get("recovered") is False and topic not in not_recovered:
                self._emit(StateChange(NOT_RECOVERED, topic=topic, node=self._node))
        for topic in unsubscribe:
            if self._tracker.wants(topic):
                continue
            try:
                await self._rpc(conn, "unsubscribe", {"topic": topic})
            except SwitchboardError as e:
                log.debug("could not drop the restored subscription to %s: %s", topic, e)

    async def _refresh_loop(self, conn: _Conn) -> None:
        """Sends ``refresh {token}`` with a fresh token before each token's ``exp``."""
        while not conn.ended.is_set():
            due = self._token.refresh_due()
            if due is None:
                return
            wait = due - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            for tries in range(2):
                try:
                    token = await self._token.get(fresh=True)
                    result = await self._rpc(
                        conn, "refresh", {"token": token}, timeout=self._request_timeout
                    )
                except (Disconnected, RequestTimeout, Closed):
                    return
                except Exception as e:
                    log.warning("token refresh failed: %s", e)
                    if tries == 0:
                        await asyncio.sleep(self._refresh_retry_delay)
                        continue
                    # The gateway closes with 1008 at expiry; the 1008 policy takes over.
                    return
                revoked = result.get("revoked") if isinstance(result, dict) else None
                for topic in revoked if isinstance(revoked, list) else []:
                    if isinstance(topic, str):
                        self._revoke(topic)
                break

    def _revoke(self, topic: str) -> None:
        self._tracker.forget(topic)
        for sub in self._subs.pop(topic, []):
            sub._end(Revoked(topic))
        self._emit(StateChange(REVOKED, topic=topic, node=self._node))

    async def _watch(self, conn: _Conn) -> None:
        """Returns when ``conn`` ends or went silent for ``stale_heartbeats`` heartbeats."""
        while not conn.ended.is_set():
            hb = self._heartbeat
            tick = min(max(hb / 4, 0.05), 1.0) if hb else 1.0
            try:
                await asyncio.wait_for(conn.ended.wait(), timeout=tick)
                return
            except asyncio.TimeoutError:
                pass
            if not hb or self._stale_heartbeats <= 0 or conn.blocked:
                continue
            idle = time.monotonic() - conn.last_rx
            if idle > hb * self._stale_heartbeats:
                log.debug("socket silent for %.1f s; reconnecting", idle)
                return
            if idle > hb and not conn.pinging:
                conn.pinging = True
                conn.spawn(self._ping(conn, hb))

    async def _ping(self, conn: _Conn, hb: float) -> None:
        try:
            await self._rpc(conn, "ping", {}, timeout=hb)
        except SwitchboardError:
            pass
        finally:
            conn.pinging = False

    # ------------------------------------------------------------------------------------------
    # The reader

    async def _reader(self, conn: _Conn) -> None:
        try:
            async for raw in conn.ws:
                conn.last_rx = time.monotonic()
                if not isinstance(raw, str):
                    continue
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    await self._dispatch(conn, msg)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("switchboard reader failed")
        finally:
            conn.ended.set()
            # Requests other than calls sent on this socket will not be answered.
            self._fail(
                lambda p: p.conn is conn and not p.call,
                lambda: Disconnected("the socket dropped before the reply"),
            )
            if self._ready_ev is not None:
                self._ready_ev.set()

    async def _dispatch(self, conn: _Conn, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        if isinstance(method, str):
            params = msg.get("params")
            if not isinstance(params, dict):
                params = {}
            if "id" in msg:
                # A request from the gateway (calls of tools offered by clients): not offered.
                try:
                    await conn.ws.send(
                        json.dumps(
                            {
                                "jsonrpc": "2.0",
                                "id": msg["id"],
                                "error": {"code": -32601, "message": "method not found"},
                            }
                        )
                    )
                except ConnectionClosed:
                    pass
                return
            if method == "event":
                await self._deliver(conn, params)
            elif method == "notifications/progress":
                await self._on_progress(params)
            elif method == "notifications/tools/list_changed":
                for cb in list(self._tools_changed):
                    try:
                        cb()
                    except Exception:
                        log.exception("tools-changed callback failed")
            return
        rid = msg.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            return
        p = self._pending.pop(rid, None)
        if p is None or p.future.done():
            return
        if "error" in msg:
            p.future.set_exception(RpcError.from_json(msg["error"]))
        else:
            p.future.set_result(msg.get("result"))

    async def _deliver(self, conn: _Conn, params: dict[str, Any]) -> None:
        topic = params.get("topic")
        if not isinstance(topic, str):
            return
        eid = params.get("id")
        eid = eid if isinstance(eid, str) else None
        if not self._tracker.admit(topic, eid):
            return
        sender = params.get("from")
        event = Event(
            topic=topic,
            data=params.get("data"),
            id=eid,
            from_=sender if isinstance(sender, str) else None,
        )
        for sub in list(self._subs.get(topic, ())):
            await sub._push(event, conn.set_blocked)

    async def _on_progress(self, params: dict[str, Any]) -> None:
        token = params.get("progressToken")
        cb = self._progress.get(token) if isinstance(token, str) else None
        if cb is None:
            return
        progress = params.get("progress")
        total = params.get("total")
        message = params.get("message")
        value = Progress(
            progress=float(progress) if isinstance(progress, (int, float)) else 0.0,
            total=float(total) if isinstance(total, (int, float)) else None,
            message=message if isinstance(message, str) else None,
        )
        try:
            r = cb(value)
            if inspect.isawaitable(r):
                await r
        except Exception:
            log.exception("progress callback failed")

    # ------------------------------------------------------------------------------------------
    # The end

    def _finish(self, code: int | None, reason: str) -> None:
        if self._final is not None:
            return
        self._final = (code, reason)
        self._link = None
        by_app = self._closing
        self._fail(lambda p: True, lambda: Closed(code, reason))
        for subs in list(self._subs.values()):
            for sub in subs:
                sub._end(None if by_app else Closed(code, reason))
        if self._ready_ev is not None:
            self._ready_ev.set()
        self._emit(StateChange(CLOSED, code=code, reason=reason, node=self._node, session=self._session))


async def _within(aw: Awaitable[Any], limit: float | None, message: str) -> Any:
    """``aw`` within ``limit`` seconds (None: no limit); RequestTimeout past it."""
    if limit is None:
        return await aw
    try:
        return await asyncio.wait_for(aw, timeout=limit)
    except asyncio.TimeoutError:
        raise RequestTimeout(message) from None
