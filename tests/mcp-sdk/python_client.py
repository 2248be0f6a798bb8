"""The official MCP Python SDK (`mcp` 2.x, pinned in requirements.txt) against a gateway node
over Streamable HTTP with its connect-time negotiation (`mode="auto"`: `server/discover` at
2026-07-28, the stateless revision). Lists tools, calls two, and prints one JSON line of what it
saw; tests/tests/mcp_http.rs checks it. Usage: python python_client.py URL
"""

import asyncio
import json
import sys

from mcp import Client


async def main(url: str) -> None:
    async with Client(url, mode="auto") as client:
        session = client.session
        tools = await client.list_tools()
        echo = await client.call_tool("echo", {"from": "python"})
        sleep = await client.call_tool("sleep", {"ms": 20})
        print(
            json.dumps(
                {
                    "version": getattr(session, "_negotiated_version", None),
                    "discovered": session.discover_result is not None,
                    "tools": sorted(t.name for t in tools.tools),
                    "echo": echo.structured_content,
                    "echoError": echo.is_error,
                    "sleepError": sleep.is_error,
                }
            )
        )


asyncio.run(main(sys.argv[1]))
