"""Scenario programs for the Python client's cross-process tests (tests/tests/client_python.rs).

``python scenario.py <name>``: drives ``switchboard_client`` against the gateways the Rust test
started (URLs in ``SB_URL_A``/``SB_URL_B``, HS256 secret in ``SB_SECRET``), reports one JSON
object per line on stdout (each with a ``step``) and reads the test's commands from stdin (one
JSON object per line). Any exception is reported as ``{"step": "error"}``, which fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import ssl
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from switchboard_client import (
    Client,
    Closed,
    Event,
    Progress,
    StateChange,
    Subscription,
)

DEADLINE = 15.0


def report(step: str, **fields: Any) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def mint(sub: str, ttl: float | None = 60.0, exp: float | None = None) -> str:
    """An HS256 JWT for ``sub`` signed with ``SB_SECRET``."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims: dict[str, Any] = {"sub": sub, "iat": int(time.time())}
    if exp is not None:
        claims["exp"] = int(exp)
    elif ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    secret = os.environ["SB_SECRET"].encode()
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


async def command() -> dict[str, Any]:
    """The test's next command line."""
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        raise RuntimeError("stdin closed while a command was awaited")
    value = json.loads(line)
    assert isinstance(value, dict)
    return value


async def next_event(sub: Subscription, limit: float = DEADLINE) -> Event:
    return await asyncio.wait_for(sub.__anext__(), timeout=limit)


def recorder(client: Client) -> list[dict[str, Any]]:
    """Every state change of ``client``, as JSON."""
    seen: list[dict[str, Any]] = []

    def on(change: StateChange) -> None:
        seen.append(
            {
                k: v
                for k, v in {
                    "state": change.state,
                    "code": change.code,
                    "topic": change.topic,
                    "node": change.node,
                }.items()
                if v is not None
            }
        )

    client.on_state(on)
    return seen


async def until(what: str, check: Callable[[], bool], limit: float = DEADLINE) -> None:
    """Waits for ``check()`` (polled), failing after ``limit`` seconds."""
    end = time.monotonic() + limit
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


def tls() -> ssl.SSLContext | None:
    """The context for ``wss://`` URLs: the test's CA (``SB_CA_FILE``), when it gives one."""
    cafile = os.environ.get("SB_CA_FILE")
    return ssl.create_default_context(cafile=cafile) if cafile else None


def urls() -> list[str]:
    return [u for u in (os.environ.get("SB_URL_A"), os.environ.get("SB_URL_B")) if u]


# ------------------------------------------------------------------------------------------------


async def pubsub() -> None:
    """alice on node A, bob on node B: bob's publish reaches alice with ``from``; then history
    recovery with ``since``. Over ``wss://`` too, when the test puts TLS proxies in front."""
    a, b = os.environ["SB_URL_A"], os.environ["SB_URL_B"]
    async with (
        Client([a], token=mint("alice"), ssl=tls()) as alice,
        Client([b], token=mint("bob"), ssl=tls()) as bob,
    ):
        sub = await alice.subscribe("chat:x")
        await bob.publish("chat:x", {"text": "hi"})
        ev = await next_event(sub)
        report(
            "event",
            topic=ev.topic,
            data=ev.data,
            **{"from": ev.from_},
            id=ev.id,
            alice_node=alice.node,
            bob_node=bob.node,
        )
        ids = [await bob.publish("hist:s", {"n": n}) for n in range(5)]
        hist = alice.subscribe("hist:s", since=ids[1])
        await hist
        got = [await next_event(hist) for _ in range(3)]
        later = await bob.publish("hist:s", {"n": 5})
        after = await next_event(hist)
        report(
            "since",
            published=ids + [later],
            ids=[e.id for e in got],
            data=[e.data for e in got],
            recovered=hist.recovered,
            position=hist.position,
            next=after.id,
            next_from=after.from_,
        )
        await hist.unsubscribe()
        await sub.unsubscribe()
        await bob.publish("chat:x", {"text": "after"})
        report("done", topics=alice.topics)


async def kill9() -> None:
    """Subscribed to ``hist:k`` on [A, B] with a call in flight; the test kills our node with
    -9 while a backend publishes; we resume on the other node."""
    calls = 0

    async def token() -> str:
        nonlocal calls
        calls += 1
        return mint("alice")

    client = Client(urls(), token=token, backoff_max=0.3)
    states = recorder(client)
    await client.connect()
    sub = await client.subscribe("hist:k")
    events: list[Event] = []

    async def read() -> None:
        async for ev in sub:
            events.append(ev)

    reader = asyncio.create_task(read())
    progress: list[float] = []

    async def on_progress(p: Progress) -> None:
        progress.append(p.progress)

    call = asyncio.create_task(client.call("sleep", {"ms": 1500}, on_progress=on_progress))
    report("ready", node=client.node, session=client.session, position=sub.position)
    cmd = await command()
    count = int(cmd["count"])
    await until(f"{count} events (have {len(events)})", lambda: len(events) >= count, 20.0)
    result = await asyncio.wait_for(call, timeout=DEADLINE)
    report(
        "events",
        ids=[e.id for e in events],
        data=[e.data for e in events],
        states=states,
        call=result.structured_content,
        call_is_error=result.is_error,
        progress=progress,
        node=client.node,
        session=client.session,
        token_calls=calls,
    )
    await client.close()
    await asyncio.wait_for(reader, timeout=DEADLINE)
    report("closed", state=client.state.state, code=client.state.code)


async def takeover() -> None:
    """Our session is taken over by another connection (4009): closed, never reconnects."""
    client = Client(urls(), token=mint("alice"), backoff_max=0.3)
    states = recorder(client)
    await client.connect()
    sub = await client.subscribe("chat:t")
    report("ready", node=client.node, session=client.session)
    error: BaseException | None = None
    try:
        async for _ in sub:
            pass
    except Closed as e:
        error = e
    assert isinstance(error, Closed), f"iteration ended without Closed: {error!r}"
    # An observation window: a client that reconnected would report `connecting` here.
    await asyncio.sleep(1.5)
    try:
        await client.publish("chat:t", {"x": 1})
        publish_error = None
    except Closed as e:
        publish_error = e.code
    report(
        "closed",
        code=error.code,
        states=states,
        closed=client.closed,
        publish_error=publish_error,
    )


async def token_fn() -> None:
    """1008 with a token function: an expired first token is replaced by a fresh one; a
    function that only gives bad tokens ends with 1008 after one fresh try; a fixed bad token
    ends at once; a short-lived token is refreshed before exp and the socket outlives it."""
    a = os.environ["SB_URL_A"]

    # 1. First token expired: the function is asked again, the session goes on.
    given: list[str] = []

    def first_expired() -> str:
        given.append("expired" if not given else "fresh")
        if len(given) == 1:
            return mint("alice", exp=time.time() - 60)
        return mint("alice")

    c1 = Client([a], token=first_expired, backoff_max=0.3)
    s1 = recorder(c1)
    await c1.connect()
    sub = await c1.subscribe("chat:tok")
    await c1.publish("chat:tok", {"ok": True})
    ev = await next_event(sub)
    report("fresh", given=given, states=s1, data=ev.data, session=c1.session)
    await c1.close()

    # 2. Every token expired: one fresh try, then final 1008.
    asked = 0

    async def always_expired() -> str:
        nonlocal asked
        asked += 1
        return mint("alice", exp=time.time() - 60)

    c2 = Client([a], token=always_expired, backoff_max=0.3)
    s2 = recorder(c2)
    code2: int | None = None
    try:
        await c2.connect()
    except Closed as e:
        code2 = e.code
    report("always_expired", code=code2, asked=asked, states=s2)

    # 3. A fixed expired token: final at once.
    c3 = Client([a], token=mint("alice", exp=time.time() - 60), backoff_max=0.3)
    s3 = recorder(c3)
    code3: int | None = None
    try:
        await c3.connect()
    except Closed as e:
        code3 = e.code
    report("fixed_expired", code=code3, states=s3)

    # 4. An 8-second token, refreshed before exp: the socket outlives exp + 5 s leeway.
    refreshes: list[int] = []

    def short() -> str:
        exp = time.time() + 8
        refreshes.append(int(exp))
        return mint("alice", exp=exp)

    c4 = Client([a], token=short, backoff_max=0.3)
    s4 = recorder(c4)
    await c4.connect()
    sub4 = await c4.subscribe("chat:refresh")
    first_exp = refreshes[0]
    session = c4.session
    report("short_ready", exp=first_exp, session=session)
    # An observation window past the first token's exp plus the gateway's 5 s leeway.
    while time.time() < first_exp + 7:
        await asyncio.sleep(0.25)
    await c4.publish("chat:refresh", {"alive": True})
    ev4 = await next_event(sub4)
    report(
        "short_done",
        states=s4,
        token_calls=len(refreshes),
        session=c4.session,
        same_session=c4.session == session,
        data=ev4.data,
        now=time.time(),
    )
    await c4.close()


async def cancel() -> None:
    """Cancelling the task awaiting a call sends notifications/cancelled: the execution stops,
    so an identical call made afterwards starts a new one (it would share the first's if it
    still ran)."""
    async with Client(urls(), token=mint("alice")) as client:
        progressed = asyncio.Event()
        call = asyncio.create_task(
            client.call("sleep", {"ms": 2000}, on_progress=lambda p: progressed.set())
        )
        await asyncio.wait_for(progressed.wait(), timeout=DEADLINE)
        cancelled_at = time.time() * 1000
        call.cancel()
        raised = None
        try:
            await call
        except asyncio.CancelledError:
            raised = "CancelledError"
        # A short call: it is answered and so the first call never will be.
        quick = await client.call("sleep", {"ms": 10})
        again = await client.call("sleep", {"ms": 2000}, timeout=DEADLINE)
        report(
            "cancelled",
            raised=raised,
            cancelled_at=cancelled_at,
            started_at=again.structured_content["started_at"],
            quick=quick.structured_content,
        )


SCENARIOS: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
    "pubsub": pubsub,
    "kill9": kill9,
    "takeover": takeover,
    "token": token_fn,
    "cancel": cancel,
}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    scenario = SCENARIOS.get(name)
    if scenario is None:
        report("error", message=f"unknown scenario {name!r}: one of {sorted(SCENARIOS)}")
        sys.exit(2)
    try:
        asyncio.run(scenario())
    except BaseException:
        report("error", message=traceback.format_exc())
        sys.exit(1)


if __name__ == "__main__":
    main()
