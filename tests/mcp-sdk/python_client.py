"""The official MCP Python SDK (`mcp` 2.x, pinned in requirements.txt) against two gateway
nodes over Streamable HTTP, every request to the next node in turn (its HTTP client's
transport picks the node), with its connect-time negotiation (`mode="auto"`:
`server/discover` at 2026-07-28, the stateless revision). Lists tools, calls two (one with progress), cancels a
call (asyncio cancellation closes its stream, which is how the revision cancels), and listens
(`subscriptions/listen`) while it starts a worker with a new tool, until the tools'
`list_changed` arrives. Prints one JSON line of what it saw; tests/tests/mcp_http.rs checks it.
Usage: python python_client.py URL_A URL_B SWITCHBOARD_BIN REDIS_URL TOOL_FILE
"""

import asyncio
import json
import subprocess
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ToolsListChanged

# How long the listen waits for the new worker's tools (the test fails past it).
LIST_CHANGED_TIMEOUT_S = 20


class RoundRobin(httpx2.AsyncBaseTransport):
    """Sends each request to the next node: no stickiness."""

    def __init__(self, urls: list[str]) -> None:
        self.nodes = [httpx2.URL(u) for u in urls]
        self.hits = [0] * len(urls)
        self.next = 0
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        i = self.next % len(self.nodes)
        self.next += 1
        self.hits[i] += 1
        node = self.nodes[i]
        request.url = request.url.copy_with(host=node.host, port=node.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def main(url_a: str, url_b: str, switchboard: str, redis_url: str, tool_file: str) -> None:
    nodes = RoundRobin([url_a, url_b])
    http = httpx2.AsyncClient(transport=nodes, timeout=httpx2.Timeout(30, read=300))
    async with Client(streamable_http_client(url_a, http_client=http), mode="auto") as client:
        session = client.session
        tools = await client.list_tools()
        echo = await client.call_tool("echo", {"from": "python"})
        progress = []

        async def on_progress(value, total, message):
            progress.append(value)

        sleep = await client.call_tool("sleep", {"ms": 400}, progress_callback=on_progress)

        # Cancelled by the caller: the SDK closes the request's stream.
        long_call = asyncio.create_task(client.call_tool("sleep", {"ms": 600000}))
        await asyncio.sleep(0.5)
        long_call.cancel()
        try:
            await long_call
            cancelled = False
        except asyncio.CancelledError:
            cancelled = True

        # Listening while a worker with a new tool joins.
        events = []
        async with client.listen(tools_list_changed=True) as sub:
            honored = bool(sub.honored.tools_list_changed)
            worker = subprocess.Popen(
                [switchboard, "worker", "--redis", redis_url, "--tools", tool_file],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                async with asyncio.timeout(LIST_CHANGED_TIMEOUT_S):
                    async for event in sub:
                        events.append(type(event).__name__)
                        if isinstance(event, ToolsListChanged):
                            break
            except BaseException:
                worker.kill()
                worker.wait()
                raise
        # Each node follows the worker registry on its own: the node that listed next may
        # see the new tool up to a registry interval later.
        for _ in range(100):
            after = await client.list_tools()
            if any(t.name not in ("echo", "fail", "sleep") for t in after.tools):
                break
            await asyncio.sleep(0.05)
        worker.kill()
        worker.wait()
        print(
            json.dumps(
                {
                    "version": getattr(session, "_negotiated_version", None),
                    "discovered": session.discover_result is not None,
                    "tools": sorted(t.name for t in tools.tools),
                    "echo": echo.structured_content,
                    "echoError": echo.is_error,
                    "sleepError": sleep.is_error,
                    "progress": progress,
                    "cancelled": cancelled,
                    "honored": honored,
                    "events": events,
                    "toolsAfter": sorted(t.name for t in after.tools),
                    "hits": nodes.hits,
                }
            )
        )


asyncio.run(main(*sys.argv[1:6]))
