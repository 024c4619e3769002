"""MCP servers of an execution environment: their tools listed and called through the MCP
Python SDK, on the worker (which can reach them; the control plane may not).

A server config is stdio `{command, args[], env{}}` or remote `{type: "http"|"sse", url,
headers{}, allow_private_networks}` (no type and a command means stdio; no type and a url means
http), already rendered by the control plane. Every connection is short-lived: one for the
listing at the start of a run, one per tool call, so a worker that dies mid-run leaves no
session behind and a retried activity starts clean.

Invariants:
- A stdio server gets a minimal environment (PATH, HOME, LANG), then the execution's
  environment, then its config's own `env`; never the worker's own variables. (The SDK also
  passes on LOGNAME, SHELL, TERM and USER, which name the account and hold nothing secret.)
  Nor can it read them from /proc/<worker>: the worker is non-dumpable before a server starts
  (activities.tools.protect_worker_process).
- A remote server's host is resolved once and every address checked by
  activities/tools/network_guard.py before anything connects: loopback, private, unique-local
  and CGNAT addresses only when the config sets `allow_private_networks: true`; link-local and
  cloud metadata addresses never. Requests then go to the checked addresses only (the Host
  header and TLS server name stay the name), so a DNS answer cannot change in between.
- Secret values never leave here in clear: errors and tool outputs have them replaced by
  `[REDACTED]` before they are logged, returned to the model or written to Temporal history.
- Outputs hold no NUL characters (escaped as `\\x00`): they end in a Postgres text column.
- A server that fails or hangs costs at most its timeout: it is skipped (listing) or the call
  answers an error result (calling); the execution goes on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import anyio
import httpx2
import mcp_types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from temporalio import activity

from activities.execution_environment import Redactor, fetch_execution_environment
from activities.reporting import ControlPlane
from activities.tools import nul_free, protect_worker_process
from activities.tools.network_guard import Address, checked_addresses
from workflows.contracts import LIST_MCP_TOOLS, ToolSpec

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0  # seconds to start or reach a server and list its tools
CALL_TIMEOUT = 120.0  # default seconds a tool call may take (a config's `timeout` overrides)
MAX_CALL_TIMEOUT = 540.0  # below the run_tool activity's 10-minute bound
OUTPUT_LIMIT = 100_000  # characters of tool output kept for the model
MAX_PAGES = 50  # tools/list pages read per server
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|AUTH|CREDENTIAL|COOKIE", re.I)

Transport = Literal["stdio", "http", "sse"]


# The name a server's tool listing is policy-checked under (with `mcp_server` set).
LIST_TOOLS_CALL = "list_tools"


class McpConfigError(ValueError):
    """A server config that names no usable transport."""


@dataclass
class McpToolListing:
    """The tools of every server that answered, and why each other server was skipped
    (server name → error message, secrets redacted)."""

    tools: list[ToolSpec] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


# --- configs, names, redaction ------------------------------------------------------------------


def transport_of(config: Mapping[str, Any]) -> Transport:
    kind = str(config.get("type") or config.get("transport") or "").lower().replace("_", "-")
    if kind in ("", "stdio") and isinstance(config.get("command"), str) and config["command"]:
        return "stdio"
    if kind in ("http", "streamable-http", "streamablehttp") or (not kind and config.get("url")):
        return "http"
    if kind == "sse":
        return "sse"
    if kind == "stdio":
        raise McpConfigError("a stdio server needs a command")
    raise McpConfigError(f"unknown MCP server type {kind!r}" if kind else "no command and no url")


def tool_name(server: str, tool: str, taken: Iterable[str] = ()) -> str:
    """`mcp__{server}__{tool}` as the model API accepts it (`^[a-zA-Z0-9_-]{1,64}$`): other
    characters become `_`; a name too long, or one that collides with a name in `taken`, ends in
    a hash of the original so it stays unique and stable."""
    raw = f"mcp__{server}__{tool}"
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", raw)
    used = set(taken)
    if len(name) > 64 or name in used:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = f"{name[:55]}_{digest}"
    return name


def _redactor(config: Mapping[str, Any], secrets: Iterable[str]) -> Redactor:
    values = list(secrets)
    values += [str(v) for v in (config.get("headers") or {}).values()]
    values += [str(v) for k, v in (config.get("env") or {}).items() if SECRET_NAME.search(str(k))]
    return Redactor(values)


def _innermost(error: BaseException) -> BaseException:
    """The error inside task-group exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _describe(error: BaseException) -> str:
    error = _innermost(error)
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise McpConfigError(f"{what} must be an object")
    return {str(k): str(v) for k, v in value.items() if v is not None}


def stdio_environment(env: Mapping[str, str], config_env: Mapping[str, str]) -> dict[str, str]:
    base = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", tempfile.gettempdir()),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    return {**base, **env, **config_env}


def _call_timeout(config: Mapping[str, Any]) -> float:
    value = config.get("timeout")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return min(float(value), MAX_CALL_TIMEOUT)
    return CALL_TIMEOUT


class PinnedTransport(httpx2.AsyncBaseTransport):
    """Sends the requests for one checked host to its checked addresses (in order, until one
    connects) and refuses any other host. The request keeps its Host header; the TLS server
    name is the host, so certificates are verified against the name."""

    def __init__(self, host: str, addresses: list[Address]) -> None:
        self.host = host
        self.addresses = addresses
        self.inner = httpx2.AsyncHTTPTransport(trust_env=False)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        original = request.url
        if original.host != self.host:
            raise httpx2.ConnectError(
                f"{original.host!r} is not the checked host {self.host!r}", request=request
            )
        failure: httpx2.ConnectError | None = None
        try:
            for address in self.addresses:
                request.url = original.copy_with(host=str(address))
                if original.scheme == "https":
                    request.extensions["sni_hostname"] = self.host
                try:
                    return await self.inner.handle_async_request(request)
                except httpx2.ConnectError as error:
                    failure = error
        finally:
            request.url = original  # the response (and redirect checks) see the real URL
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _pinned_transport(url: str, config: Mapping[str, Any]) -> PinnedTransport:
    """The guard's check of a remote server's URL, as the transport that connects to it."""
    parsed = httpx2.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    allow_private = config.get("allow_private_networks") is True
    return PinnedTransport(parsed.host, await checked_addresses(parsed.host, port, allow_private))


@contextlib.asynccontextmanager
async def connect(
    config: Mapping[str, Any],
    env: Mapping[str, str],
    errlog: TextIO,
    request_timeout: float,
    read_timeout: float | None = None,
) -> AsyncIterator[Client]:
    """An MCP session with one server, closed (its process stopped) on exit.
    `request_timeout` bounds each request and network operation; `read_timeout` (default the
    same) how long a response may take, for calls that run longer than the handshake may."""
    read = max(request_timeout, read_timeout or 0.0)
    kind = transport_of(config)
    if kind == "stdio":
        args = config.get("args") or []
        if not isinstance(args, list):
            raise McpConfigError("args must be a list")
        protect_worker_process()  # the server is our child: /proc/<worker> stays closed to it
        params = StdioServerParameters(
            command=str(config["command"]),
            args=[str(a) for a in args],
            env=stdio_environment(env, _strings(config.get("env"), "env")),
        )
        async with Client(
            stdio_client(params, errlog=errlog), read_timeout_seconds=request_timeout
        ) as c:
            yield c
        return
    url = str(config.get("url") or "")
    if not url.startswith(("http://", "https://")):
        raise McpConfigError("url must be an http(s) URL")
    headers = _strings(config.get("headers"), "headers")
    pinned = await _pinned_transport(url, config)
    if kind == "sse":

        def pinned_client(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(
                headers=headers, timeout=timeout, auth=auth, transport=pinned, trust_env=False
            )

        transport = sse_client(
            url,
            headers=headers,
            timeout=request_timeout,
            sse_read_timeout=read,
            httpx_client_factory=pinned_client,
        )
        async with Client(transport, read_timeout_seconds=request_timeout) as c:
            yield c
        return
    http = httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(request_timeout, read=read),
        transport=pinned,
        trust_env=False,
    )
    async with (
        http,
        Client(
            streamable_http_client(url, http_client=http), read_timeout_seconds=request_timeout
        ) as c,
    ):
        yield c


def _stderr_tail(errlog: TextIO) -> str:
    with contextlib.suppress(OSError, ValueError):
        errlog.seek(0)
        lines = [line for line in errlog.read()[-4000:].splitlines() if line.strip()]
        return " | ".join(lines[-3:])[-500:]
    return ""


def _failure(error: BaseException, errlog: TextIO, timeout: float, redact: Redactor) -> str:
    error = _innermost(error)
    if isinstance(error, TimeoutError) or (
        isinstance(error, MCPError) and error.error.code == mcp_types.REQUEST_TIMEOUT
    ):
        message = f"no answer within {timeout:g} s"
    else:
        message = _describe(error)
    tail = _stderr_tail(errlog)
    if tail:
        message += f" (stderr: {tail})"
    return nul_free(redact(message))


# --- listing ------------------------------------------------------------------------------------


async def _list_server(
    config: Mapping[str, Any], env: Mapping[str, str], server_timeout: float, redact: Redactor
) -> list[mcp_types.Tool] | str:
    """The server's tools, or why it could not list them."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errlog:
        try:
            with anyio.fail_after(server_timeout):
                async with connect(config, env, errlog, server_timeout) as client:
                    tools: list[mcp_types.Tool] = []
                    cursor: str | None = None
                    for _ in range(MAX_PAGES):
                        page = await client.list_tools(cursor=cursor)
                        tools.extend(page.tools)
                        cursor = page.next_cursor
                        if not cursor:
                            break
                    return tools
        except Exception as error:
            return _failure(error, errlog, server_timeout, redact)


async def list_tools_report(
    servers: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, str],
    *,
    secrets: Iterable[str] = (),
    server_timeout: float = CONNECT_TIMEOUT,
) -> McpToolListing:
    """The tools of every server, listed concurrently, each server bounded by `server_timeout`.
    A server that fails is skipped with a logged warning and named in `errors`."""
    secret_list = list(secrets)
    names = list(servers)
    results = await asyncio.gather(
        *(
            _list_server(servers[name], env, server_timeout, _redactor(servers[name], secret_list))
            for name in names
        )
    )
    listing = McpToolListing()
    taken: set[str] = set()
    for name, result in zip(names, results, strict=True):
        if isinstance(result, str):
            logger.warning("MCP server %r skipped: %s", name, result)
            listing.errors[name] = result
            continue
        for tool in result:
            spec = ToolSpec(
                name=tool_name(name, tool.name, taken),
                description=tool.description or tool.title or f"{tool.name} (MCP server {name})",
                input_schema=dict(tool.input_schema or {"type": "object", "properties": {}}),
                source="mcp",
                category="mcp",
                risk_level="high",
                configuration={"tool": tool.name},
                mcp_server=name,
            )
            taken.add(spec.name)
            listing.tools.append(spec)
    return listing


async def list_tools(
    servers: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, str],
    *,
    secrets: Iterable[str] = (),
    server_timeout: float = CONNECT_TIMEOUT,
) -> list[ToolSpec]:
    """The tools of the servers that answered (see `list_tools_report` for the failures)."""
    return (
        await list_tools_report(servers, env, secrets=secrets, server_timeout=server_timeout)
    ).tools


# --- calling ------------------------------------------------------------------------------------


def flatten(result: mcp_types.CallToolResult) -> str:
    """A tool result as text for the model: text blocks joined, other blocks summarised."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            kind = "image" if isinstance(block, mcp_types.ImageContent) else "audio"
            parts.append(f"[{kind} {block.mime_type}, {_decoded_size(block.data)} bytes]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource link {block.name}: {block.uri}]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(f"[resource {resource.uri}]\n{resource.text}")
            else:
                mime = resource.mime_type or "application/octet-stream"
                size = _decoded_size(resource.blob)
                parts.append(f"[resource {resource.uri}, {mime}, {size} bytes]")
        else:
            parts.append(f"[{getattr(block, 'type', 'unknown')} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, default=str))
    text = "\n".join(parts)
    if not text and result.is_error:
        text = "the tool reported an error"
    text = nul_free(text)
    if len(text) > OUTPUT_LIMIT:
        text = text[:OUTPUT_LIMIT] + f"\n[output truncated: {len(text) - OUTPUT_LIMIT} more chars]"
    return text


def _decoded_size(data: str) -> int:
    try:
        return len(base64.b64decode(data, validate=False))
    except ValueError:
        return len(data)


async def call_tool(
    server_name: str,
    server_config: Mapping[str, Any],
    tool_name: str,
    arguments: dict[str, Any],
    env: Mapping[str, str],
    *,
    secrets: Iterable[str] = (),
    call_timeout: float | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> tuple[str, bool]:
    """Call one tool (`tool_name` is the server's own name for it) → (text output, is_error).
    Every failure — server down, unknown tool, the tool's own error, a timeout — is an error
    result for the model, never an exception (cancellation aside). `call_timeout` defaults to the
    config's `timeout` or CALL_TIMEOUT."""
    call_timeout = call_timeout or _call_timeout(server_config)
    redact = _redactor(server_config, secrets)
    connected = False
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errlog:
        try:
            # One bound over connecting, calling and closing; the call has its own read timeout.
            with anyio.fail_after(connect_timeout + call_timeout):
                async with connect(
                    server_config, env, errlog, connect_timeout, call_timeout
                ) as client:
                    connected = True
                    result = await client.call_tool(
                        tool_name, arguments, read_timeout_seconds=call_timeout
                    )
        except Exception as error:
            limit = call_timeout if connected else connect_timeout
            detail = _failure(error, errlog, limit, redact)
            return f"MCP server {server_name!r}, tool {tool_name!r}: {detail}", True
    return redact(flatten(result)), bool(result.is_error)


# --- activities ---------------------------------------------------------------------------------


class McpActivities:
    def __init__(self, control_plane: ControlPlane) -> None:
        self.control_plane = control_plane

    @activity.defn(name=LIST_MCP_TOOLS)
    async def list_mcp_tools(self, execution_id: str) -> list[ToolSpec]:
        """The MCP tools of the execution's environment. Listing starts the servers (a stdio
        server is a process on this worker), so each server is policy-checked first, like a
        tool call named `list_tools`; a denied server is left out with a `policy_violation`
        event. A server that fails is left out and reported as an `mcp_server_error` event
        (keyed per server, so a retry reports once)."""
        environment = await fetch_execution_environment(self.control_plane, execution_id)
        if not environment.mcp_servers:
            return []
        servers: dict[str, dict[str, Any]] = {}
        for server, config in environment.mcp_servers.items():
            decision = await self.control_plane.send(
                "POST",
                "/api/v1/policies/enforce",
                {
                    "execution_id": execution_id,
                    "tool_name": LIST_TOOLS_CALL,
                    "arguments": {},
                    "mcp_server": server,
                },
            )
            if decision.get("allowed"):
                servers[server] = config
                continue
            await self.control_plane.publish(
                execution_id,
                "policy_violation",
                {
                    "tool_name": LIST_TOOLS_CALL,
                    "mcp_server": server,
                    "violations": decision.get("violations") or [],
                    "engine_error": decision.get("engine_error"),
                },
                key=f"policy_violation:mcp-list:{server}",
            )
        if not servers:
            return []
        listing = await list_tools_report(
            servers,
            environment.process_env(),
            secrets=environment.secret_values(),
        )
        for server, error in listing.errors.items():
            await self.control_plane.publish(
                execution_id,
                "mcp_server_error",
                {"server": server, "error": error},
                key=f"mcp-server-error-{server}",
            )
        return listing.tools
