"""Unit tests of the pure parts: the tracker (dedupe, positions), the backoff and close-code
policy, and the token's ``exp`` and refresh margin (run by tests/tests/client_python.rs)."""

from __future__ import annotations

import asyncio
import base64
import json

from switchboard_client import backoff
from switchboard_client.token import TokenSource, jwt_exp, refresh_at, refresh_margin
from switchboard_client.tracker import Tracker, parse_id


def jwt(claims: dict[str, object]) -> str:
    def part(v: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(claims)}.sig"


def test_ids_compare_as_integer_pairs() -> None:
    assert parse_id("10-2") == (10, 2)
    assert parse_id("9-10") is not None and parse_id("9-10") < parse_id("10-0")  # type: ignore[operator]
    # As strings "9-10" > "10-0" and "1-10" < "1-9": pairs are compared numerically.
    assert parse_id("1-10") > parse_id("1-9")  # type: ignore[operator]
    assert parse_id("1700000000000-18446744073709551615") == (1700000000000, 2**64 - 1)
    for bad in ["", "1", "a-b", "1-", "-1", "1-2-3", None, 5]:
        assert parse_id(bad) is None


def test_tracker_drops_what_was_delivered_and_passes_events_without_ids() -> None:
    t = Tracker()
    assert not t.admit("a", "1-0"), "not wanted"
    assert t.want("a") is None, "a new topic starts from now"
    assert t.admit("a", "5-0")
    assert not t.admit("a", "5-0"), "duplicate"
    assert not t.admit("a", "4-9"), "older"
    assert t.admit("a", None), "no id: passes"
    assert t.admit("a", "bad"), "unparseable id: passes"
    assert t.admit("a", "5-10")
    assert not t.admit("a", "5-9"), "numeric, not string, order"
    t.want("b")
    assert t.admit("b", "1-0")
    t.forget("a")
    assert not t.admit("a", "9-0")


def test_tracker_resumes_from_the_later_of_delivered_and_vouched_for() -> None:
    t = Tracker()
    t.want("a")
    assert t.positions() == {}, "unconfirmed: nothing owed yet"
    t.confirm("a", "10-0")
    assert t.since("a") == "10-0"
    assert t.admit("a", "11-0")
    assert t.since("a") == "11-0"
    t.confirm("a", "20-3")
    assert t.positions() == {"a": "20-3"}
    t.confirm("a", "1-0")
    assert t.want("a") == "20-3", "an older position never moves it back"
    t.want("b")
    t.confirm("b", None)
    assert t.since("b") == "0-0", "confirmed without a position: from the start"
    assert "b" not in t.positions()
    # The app's own since is used until the gateway confirms the topic.
    assert t.want("c", since="7-1") == "7-1"
    t.confirm("c", "9-0")
    assert t.since("c") == "9-0"
    assert t.topics() == ["a", "b", "c"]


def test_backoff_ceiling_doubles_up_to_the_cap_with_full_jitter() -> None:
    top = lambda attempt: backoff.delay(attempt, 0.1, 5.0, draw=lambda c: c)  # noqa: E731
    assert top(0) == 0.1 and top(1) == 0.2 and abs(top(5) - 3.2) < 1e-9
    assert top(6) == 5.0 and top(10_000) == 5.0
    assert backoff.delay(3, 0.1, 5.0, draw=lambda c: 0.0) == 0.0
    assert backoff.delay(0, 0.1, 5.0, draw=lambda c: c + 1) == 0.1, "clamped"
    draws = [backoff.delay(4, 0.1, 5.0) for _ in range(200)]
    assert all(0.0 <= d <= 1.6 for d in draws)
    assert len(set(draws)) > 20, "full jitter spreads"


def test_close_code_policy() -> None:
    p = backoff.policy
    assert p(4009).final
    assert p(1000, by_app=True).final
    assert not p(1000).final, "1000 from the gateway unasked: reconnect"
    assert p(1008).token_refused and not p(1008).final
    assert p(1012).reset
    assert p(1013).floor == 1.0
    assert p(4029).floor == 5.0
    for code in [None, 1001, 1002, 1003, 1005, 1006, 1007, 1009, 1011, 4001, 4002, 4008]:
        a = p(code)
        assert not a.final and a.floor == 0 and not a.token_refused, code


def test_jwt_exp_and_refresh_margin() -> None:
    assert jwt_exp(jwt({"sub": "a", "exp": 1234})) == 1234.0
    assert jwt_exp(jwt({"sub": "a"})) is None
    assert jwt_exp(jwt({"sub": "a", "exp": "soon"})) is None
    assert jwt_exp("not-a-jwt") is None
    assert jwt_exp("a.!!!.c") is None
    # A 9-second token refreshes about 3 s before exp; a long one 30 s before.
    assert refresh_margin(109.0, 100.0) == 3.0
    assert refresh_margin(100_000.0, 0.0) == 30.0
    assert refresh_margin(10.0, 20.0) == 0.0
    assert refresh_at(109.0, 100.0) == 106.0


def test_token_source_caches_until_the_margin() -> None:
    calls: list[int] = []
    clock = [1000.0]

    async def fn() -> str:
        calls.append(1)
        return jwt({"sub": "a", "exp": clock[0] + 9})

    async def scenario() -> None:
        src = TokenSource(fn)
        assert src.is_function
        t1 = await src.get(now=lambda: clock[0])
        assert await src.get(now=lambda: clock[0]) == t1 and len(calls) == 1, "cached"
        clock[0] += 6.5  # within 3 s of exp
        await src.get(now=lambda: clock[0])
        assert len(calls) == 2
        await src.get(fresh=True, now=lambda: clock[0])
        assert len(calls) == 3
        fixed = TokenSource("tok")
        assert not fixed.is_function and await fixed.get(fresh=True) == "tok"
        assert await TokenSource(None).get() is None
        sync = TokenSource(lambda: "plain")
        assert await sync.get() == "plain"

    asyncio.run(scenario())
