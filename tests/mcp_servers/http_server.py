"""An MCP server over the network, as a remote third party would run one:
`python http_server.py --port N --transport streamable-http|sse --token T`.

Every request must carry `Authorization: Bearer T`, so a client that drops the configured
headers is refused.
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp, Receive, Scope, Send

server = MCPServer("remote", log_level="WARNING")


@server.tool(description="Greet someone.")
def greet(name: str) -> str:
    return f"Hello, {name}!"


@server.tool(description="Multiply two numbers.")
def multiply(a: float, b: float) -> float:
    return a * b


@server.tool(description="Always fails with the given message.")
def fail(message: str) -> str:
    raise ToolError(message)


@server.tool(description="Sleep, then answer.")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


class RequireBearer:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != (
            self.expected
        ):
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--transport", choices=["streamable-http", "sse"], default="streamable-http"
    )
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    app = server.streamable_http_app() if args.transport == "streamable-http" else server.sse_app()
    uvicorn.run(
        RequireBearer(app, args.token), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
