"""An agent's side of Gatehouse's /mcp, through the official MCP Python SDK.

usage: mcp_agent.py URL TOKEN list
       mcp_agent.py URL TOKEN call TOOL ARGUMENTS_JSON

`list` prints the tools as JSON ([{"name", "description"}]); `call` prints what the tool call
returned: {"is_error", "text", "structured", "progress"} (the progress messages received while
the call ran).
"""

import asyncio
import json
import sys
import warnings

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

warnings.simplefilter("ignore", DeprecationWarning)


async def main(url, token, action, *args):
    headers = {"Authorization": f"Bearer {token}"}
    async with streamablehttp_client(url, headers=headers, timeout=60) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            if action == "list":
                tools = await session.list_tools()
                print(json.dumps([{"name": t.name, "description": t.description} for t in tools.tools]))
            elif action == "call":
                progress = []

                async def on_progress(value, total, message):
                    progress.append(message)

                result = await session.call_tool(args[0], json.loads(args[1]), progress_callback=on_progress)
                texts = [c.text for c in result.content if c.type == "text"]
                print(json.dumps({"is_error": bool(result.isError), "text": texts,
                                  "structured": result.structuredContent, "progress": progress}))
            else:
                raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
