"""Drives vendbox's MCP tools with the official MCP Python SDK (`mcp` on PyPI), as an agent's
MCP client would: connects over stdio (`vendbox mcp`) or streamable HTTP (`/mcp`), lists the
tools, buys a box from credits, runs commands (one long, with progress), writes, lists and reads
a file, takes and releases a lock, and prints what it saw as one JSON object on stdout.

Usage: mcp_client.py stdio VENDBOX_BIN URL API_KEY
       mcp_client.py http URL API_KEY
"""

import asyncio
import json
import sys

import httpx2
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client


def result_of(answer):
    """A tool answer as JSON: its structured content, or its text; errors as {"error": text}."""
    text = "".join(getattr(c, "text", "") for c in answer.content)
    if answer.is_error:
        return {"error": text}
    if answer.structured_content is not None:
        return answer.structured_content
    return json.loads(text)


async def drive(session):
    seen = {}
    await session.initialize()
    tools = (await session.list_tools()).tools
    seen["tools"] = sorted(t.name for t in tools)
    seen["schemas"] = {t.name: t.input_schema for t in tools}

    async def call(name, args, progress=None):
        return result_of(await session.call_tool(name, args, progress_callback=progress))

    seen["offers"] = await call("list_offers", {"kind": "sandbox"})
    seen["balance_before"] = await call("balance", {})
    seen["too_cheap"] = await call(
        "buy_box", {"offer_id": "h3retik-custom", "minutes": 10, "actions": 6, "max_price_usdc": "0.01"}
    )
    seen["quote"] = await call("quote", {"offer_id": "h3retik-custom", "minutes": 10, "actions": 6})
    bought = await call(
        "buy_box", {"offer_id": "h3retik-custom", "minutes": 10, "actions": 6, "max_price_usdc": "0.50"}
    )
    seen["bought"] = bought
    seen["balance_after_box"] = await call("balance", {})
    box = bought["box_id"]
    seen["exec"] = await call("exec", {"box_id": box, "command": "python3 -c 'print(6*7)'"})

    progress = []

    async def on_progress(value, total, message):
        progress.append({"progress": value, "message": message})

    seen["long"] = await call(
        "exec",
        {"box_id": box, "command": "for i in 1 2 3; do echo tick $i; sleep 1; done", "timeout_seconds": 30},
        on_progress,
    )
    seen["progress"] = progress
    seen["write"] = await call(
        "write_file", {"box_id": box, "path": "/root/notes/hello.txt", "content": "hello from mcp\n"}
    )
    seen["list"] = await call("list_files", {"box_id": box, "path": "/root/notes"})
    seen["read"] = await call("read_file", {"box_id": box, "path": "/root/notes/hello.txt"})
    seen["ssh"] = await call("ssh_details", {"box_id": box})
    seen["wrong_token"] = await call("exec", {"box_id": box, "command": "true", "token": "nope"})
    seen["lock"] = await call("acquire_lock", {"key": "mcp:deploy", "ttl_seconds": 60, "max_price_usdc": "0.01"})
    seen["renew"] = await call("renew_lock", {"key": "mcp:deploy", "ttl_seconds": 120, "max_price_usdc": "0.01"})
    seen["release"] = await call("release_lock", {"key": "mcp:deploy"})
    seen["balance_after_lock"] = await call("balance", {})
    seen["terminate"] = await call("terminate_box", {"box_id": box})
    seen["after_end"] = await call("exec", {"box_id": box, "command": "true"})
    return seen


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        binary, url, key = sys.argv[2:5]
        params = StdioServerParameters(
            command=binary,
            args=["mcp"],
            env={"VENDBOX_URL": url, "VENDBOX_API_KEY": key, "VENDBOX_LOG": "warn"},
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                seen = await drive(session)
    else:
        url, key = sys.argv[2:4]
        async with httpx2.AsyncClient(headers={"X-API-Key": key}, timeout=120) as http:
            async with streamable_http_client(f"{url}/mcp", http_client=http) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as session:
                    seen = await drive(session)
    print(json.dumps(seen))


asyncio.run(main())
