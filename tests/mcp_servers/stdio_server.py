"""An MCP server over stdio, as a third party would ship one: `python stdio_server.py`.

Its tools cover what the client must handle: plain results, errors the tool reports
(`isError`), a slow call, mixed content, names the model API would refuse, and `env_probe`,
which tells the test what environment the server process was given.
"""

from __future__ import annotations

import asyncio
import json
import os

from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

# A 1x1 transparent PNG.
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f650000000049454e44ae426082"
)
LONG_NAME = "summarise_the_quarterly_report_of_every_department_in_the_company"

server = MCPServer("toolbox", log_level="WARNING")


@server.tool(description="Repeat the text back.")
def echo(text: str) -> str:
    return text


@server.tool(description="Add two integers.")
def add(a: int, b: int) -> int:
    return a + b


@server.tool(description="Always fails with the given message.")
def fail(message: str) -> str:
    raise ToolError(message)


@server.tool(description="The values of environment variables of this server process (JSON).")
def env_probe(names: list[str]) -> str:
    return json.dumps({name: os.environ.get(name, "<unset>") for name in names})


@server.tool(description="Sleep, then answer.")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool(description="A caption and a picture.")
def picture() -> list[str | Image]:
    return ["a pixel", Image(data=PIXEL, format="png")]


@server.tool(name="files.read", description="A name with a dot, as SEP-986 allows.")
def files_read(path: str) -> str:
    return f"contents of {path}"


@server.tool(name=LONG_NAME, description="A name too long once prefixed.")
def long_named() -> str:
    return "summary"


if __name__ == "__main__":
    server.run("stdio")
