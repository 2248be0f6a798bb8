"""The client's close-code policy, resume and cancellation against scripted in-process servers
(``websockets`` servers speaking just enough of the protocol): 1012 moves to the next URL at
once, 1013 waits at least its 1 s floor, 1000 from the gateway unasked reconnects, 4009 is
final, a resuming ``hello`` refused with -32001 is said again without ``session`` on the same
socket, a call's reply arriving on the next socket after a resume reaches it, and a cancelled
call sends ``notifications/cancelled``. The real gateway is exercised by
tests/tests/client_python.rs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from switchboard_client import Client, Closed, StateChange

Handler = Callable[["Fake", ServerConnection, dict[str, Any]], Awaitable[None]]


class Fake:
    """A scripted gateway: answers ``hello`` (``resumed`` when a session is given unless told
    otherwise), records every message, and runs ``after_hello`` once hello is answered."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.received: list[dict[str, Any]] = []
        self.hellos: list[dict[str, Any]] = []
        self.connections = 0
        self.connected_at: list[float] = []
        self.after_hello: Callable[[ServerConnection, int], Awaitable[None]] | None = None
        self.refuse_resume = False
        self.on_message: Callable[[ServerConnection, dict[str, Any]], Awaitable[None]] | None = None
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.connected_at.append(time.monotonic())
        n = self.connections
        try:
            async for raw in ws:
                msg = json.loads(raw)
                self.received.append(msg)
                if msg.get("method") == "hello":
                    params = msg.get("params", {})
                    self.hellos.append(params)
                    if "session" in params and self.refuse_resume:
                        await ws.send(
                            json.dumps(
                                {
                                    "jsonrpc": "2.0",
                                    "id": msg["id"],
                                    "error": {"code": -32001, "message": "another identity"},
                                }
                            )
                        )
                        continue
                    resumed = "session" in params
                    await ws.send(
                        json.dumps(
                            {
                                "jsonrpc": "2.0",
                                "id": msg["id"],
                                "result": {
                                    "session": params.get("session", "s-new"),
                                    "resumed": resumed,
                                    "node": self.node,
                                    "heartbeatMs": 25000,
                                    "limits": {},
                                    "subscriptions": [],
                                },
                            }
                        )
                    )
                    if self.after_hello is not None:
                        await self.after_hello(ws, n)
                elif self.on_message is not None:
                    await self.on_message(ws, msg)
        except Exception:
            pass


async def start(*fakes: Fake) -> list[Any]:
    servers = []
    for f in fakes:
        server = await serve(f.handler, "127.0.0.1", 0, subprotocols=["switchboard.v1"])  # type: ignore[list-item]
        port = list(server.sockets)[0].getsockname()[1]
        f.url = f"ws://127.0.0.1:{port}/ws"
        servers.append(server)
    return servers


async def until(what: str, check: Callable[[], bool], limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while not check():
        assert time.monotonic() < end, f"timed out waiting for: {what}"
        await asyncio.sleep(0.01)


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro, timeout=30)

    asyncio.run(main())


def test_1012_moves_to_the_next_url_at_once_and_resumes() -> None:
    async def scenario() -> None:
        a, b = Fake("a"), Fake("b")

        async def restart(ws: ServerConnection, n: int) -> None:
            if n == 1:
                await ws.close(1012, "restarting")

        a.after_hello = restart
        servers = await start(a, b)
        states: list[StateChange] = []
        client = Client([a.url, b.url], backoff_min=0.1, backoff_max=5.0)
        client.on_state(states.append)
        await client.connect()
        await until("resumed on b", lambda: client.node == "b")
        gap = b.connected_at[0] - a.connected_at[0]
        assert gap < 1.0, f"1012: the next URL at once, took {gap:.2f}s"
        assert b.hellos[0]["session"] == "s-new", "resumes its session"
        names = [(s.state, s.code) for s in states]
        assert ("disconnected", 1012) in names and names[-1] == ("resumed", None), names
        await client.close()
        for s in servers:
            s.close()

    run(scenario())


def test_1013_waits_for_its_floor_and_1000_unasked_reconnects() -> None:
    async def scenario() -> None:
        a = Fake("a")

        async def close(ws: ServerConnection, n: int) -> None:
            if n == 1:
                await ws.close(1013, "try again later")
            elif n == 2:
                await ws.close(1000, "bye")

        a.after_hello = close
        servers = await start(a)
        client = Client([a.url], backoff_min=0.05, backoff_max=0.1)
        await client.connect()
        await until("third connection", lambda: a.connections >= 3)
        first_gap = a.connected_at[1] - a.connected_at[0]
        second_gap = a.connected_at[2] - a.connected_at[1]
        assert first_gap >= 1.0, f"1013: at least the 1 s floor, was {first_gap:.2f}s"
        assert second_gap < 1.0, f"1000 unasked: plain backoff, was {second_gap:.2f}s"
        assert not client.closed
        await client.close()
        for s in servers:
            s.close()

    run(scenario())


def test_4009_is_final() -> None:
    async def scenario() -> None:
        a = Fake("a")

        async def takeover(ws: ServerConnection, n: int) -> None:
            await ws.close(4009, "taken over")

        a.after_hello = takeover
        servers = await start(a)
        states: list[StateChange] = []
        client = Client([a.url], backoff_min=0.01, backoff_max=0.02)
        client.on_state(states.append)
        await client.connect()
        await until("closed", lambda: client.closed)
        await asyncio.sleep(0.3)  # an observation window: a reconnect would show here
        assert a.connections == 1
        assert [(s.state, s.code) for s in states][-1] == ("closed", 4009)
        assert "disconnected" not in [s.state for s in states]
        try:
            await client.publish("t", 1)
            raise AssertionError("publish after a final close")
        except Closed as e:
            assert e.code == 4009
        for s in servers:
            s.close()

    run(scenario())


def test_refused_resume_says_hello_again_without_session() -> None:
    async def scenario() -> None:
        a = Fake("a")

        async def drop(ws: ServerConnection, n: int) -> None:
            if n == 1:
                a.refuse_resume = True
                await ws.close(1001, "going away")

        a.after_hello = drop
        servers = await start(a)
        client = Client([a.url], backoff_min=0.01, backoff_max=0.02)
        await client.connect()
        await until("two connections", lambda: a.connections == 2 and len(a.hellos) == 3)
        assert "session" in a.hellos[1] and "session" not in a.hellos[2], a.hellos
        await until("connected", lambda: client.state.state == "connected")
        await client.close()
        for s in servers:
            s.close()

    run(scenario())


def test_call_answered_on_the_next_socket_and_cancel_notifies() -> None:
    async def scenario() -> None:
        a = Fake("a")
        calls: list[Any] = []

        async def on_message(ws: ServerConnection, msg: dict[str, Any]) -> None:
            if msg.get("method") == "tools/call":
                calls.append(msg["id"])
                if msg["params"]["name"] == "slow" and len(calls) == 1:
                    await ws.close(1011, "oops")

        async def answer(ws: ServerConnection, n: int) -> None:
            if n == 2 and calls:
                # The reply of the call sent on the first socket, after the resume.
                await ws.send(
                    json.dumps(
                        {
                            "jsonrpc": "2.0",
                            "id": calls[0],
                            "result": {"content": [], "structuredContent": {"ok": True}},
                        }
                    )
                )

        a.on_message = on_message
        a.after_hello = answer
        servers = await start(a)
        client = Client([a.url], backoff_min=0.01, backoff_max=0.02)
        await client.connect()
        result = await client.call("slow", {})
        assert result.structured_content == {"ok": True}
        assert a.connections == 2

        task = asyncio.create_task(client.call("never", {}))
        await until("the call sent", lambda: len(calls) == 2)
        task.cancel()
        try:
            await task
            raise AssertionError("not cancelled")
        except asyncio.CancelledError:
            pass
        await until(
            "notifications/cancelled",
            lambda: any(
                m.get("method") == "notifications/cancelled"
                and m["params"]["requestId"] == calls[1]
                for m in a.received
            ),
        )
        ids = [m["id"] for m in a.received if "id" in m]
        assert len(ids) == len(set(ids)), f"request ids unique for the session's life: {ids}"
        await client.close()
        for s in servers:
            s.close()

    run(scenario())
