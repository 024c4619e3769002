"""MCP servers through the MCP Python SDK (activities/mcp_client.py): real servers from
tests/mcp_servers over stdio, streamable HTTP and SSE; listing, calling, the environment a
stdio server sees, failures, timeouts, and the `list_mcp_tools` activity against the API."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from temporalio.testing import ActivityEnvironment

from activities.execution_environment import REDACTED
from activities.mcp_client import (
    McpActivities,
    McpToolListing,
    call_tool,
    list_tools,
    list_tools_report,
    tool_name,
)
from activities.reporting import ControlPlane
from api.app import create_app
from controlplane.services import free_port, wait_for_port
from controlplane.settings import Settings
from tests.conftest import Tenant, client_for
from tests.execution_helpers import make_agent
from tests.mcp_servers.stdio_server import LONG_NAME, PIXEL

SERVERS = Path(__file__).parent / "mcp_servers"
STDIO: dict[str, Any] = {"command": sys.executable, "args": [str(SERVERS / "stdio_server.py")]}
MODEL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOKEN = "remote-token-7f3a9c"
PRIVATE = {"allow_private_networks": True}


@pytest.fixture(scope="module")
def remote() -> Iterator[dict[str, dict[str, Any]]]:
    """The HTTP server script, once over streamable HTTP and once over SSE, each requiring
    `Authorization: Bearer TOKEN`."""
    started: list[subprocess.Popen[bytes]] = []
    ports = {"streamable-http": free_port(), "sse": free_port()}
    for transport, port in ports.items():
        started.append(
            subprocess.Popen(
                [
                    *(sys.executable, str(SERVERS / "http_server.py"), "--port", str(port)),
                    *("--transport", transport, "--token", TOKEN),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        for process, port in zip(started, ports.values(), strict=True):
            wait_for_port(port, 20, process)
        # Loopback servers: only `allow_private_networks` lets the worker reach them.
        common = {"headers": {"Authorization": f"Bearer {TOKEN}"}, "allow_private_networks": True}
        yield {
            "http": {"type": "http", "url": f"http://127.0.0.1:{ports['streamable-http']}/mcp"}
            | common,
            "sse": {"type": "sse", "url": f"http://127.0.0.1:{ports['sse']}/sse"} | common,
        }
    finally:
        for process in started:
            process.terminate()
            process.wait(10)


def by_name(listing: McpToolListing | list[Any]) -> dict[str, Any]:
    tools = listing.tools if isinstance(listing, McpToolListing) else listing
    return {tool.name: tool for tool in tools}


# --- stdio --------------------------------------------------------------------------------------


async def test_stdio_tools_become_tool_specs_with_model_safe_names() -> None:
    # One server under two names that sanitise to the same prefix.
    listing = await list_tools_report({"tool.box": STDIO, "tool_box": STDIO}, {})
    assert listing.errors == {}
    tools = by_name(listing)
    assert len(tools) == len(listing.tools) == 16  # 8 tools x 2 servers, every name unique
    assert all(MODEL_NAME.match(name) for name in tools)

    add = tools["mcp__tool_box__add"]
    assert add.source == "mcp" and add.category == "mcp" and add.risk_level == "high"
    assert add.mcp_server == "tool.box" and add.configuration == {"tool": "add"}
    assert add.description == "Add two integers."
    assert add.input_schema["required"] == ["a", "b"]
    assert add.input_schema["properties"]["a"]["type"] == "integer"
    assert add.model_definition() == {
        "name": "mcp__tool_box__add",
        "description": "Add two integers.",
        "input_schema": add.input_schema,
    }
    # A dot is fine for MCP but not for the model API; the original name is kept for the call.
    dotted = tools["mcp__tool_box__files_read"]
    assert dotted.configuration == {"tool": "files.read"} and dotted.mcp_server == "tool.box"
    (long,) = [
        t
        for t in listing.tools
        if t.configuration["tool"] == LONG_NAME and t.mcp_server == "tool.box"
    ]
    assert len(long.name) == 64 and long.name.startswith("mcp__tool_box__summarise_")

    # The second server's names collide with the first's once sanitised: they get a hash.
    second = {t.name for t in listing.tools if t.mcp_server == "tool_box"}
    assert not second & {t.name for t in listing.tools if t.mcp_server == "tool.box"}
    assert all(re.search(r"_[0-9a-f]{8}$", name) for name in second)

    # Calls use the server's own name, which the model never sees.
    assert await call_tool("tool.box", STDIO, LONG_NAME, {}, {}) == ("summary", False)


def test_tool_names_are_sanitised_stably() -> None:
    assert tool_name("github", "create_issue") == "mcp__github__create_issue"
    assert tool_name("my server!", "files.read") == "mcp__my_server___files_read"
    long = tool_name("server", "x" * 100)
    assert len(long) == 64 and MODEL_NAME.match(long)
    assert long == tool_name("server", "x" * 100)  # stable across listings and workers
    assert long != tool_name("server", "x" * 99)  # the hash keeps truncated names apart
    clash = tool_name("a_b", "t", taken={"mcp__a_b__t"})
    assert clash != "mcp__a_b__t" and MODEL_NAME.match(clash)
    assert tool_name("", "") == "mcp____"


async def test_stdio_calls_and_results() -> None:
    calls: dict[str, tuple[str, dict[str, Any]]] = {
        "add": ("add", {"a": 2, "b": 40}),
        "fail": ("fail", {"message": "disk on fire"}),
        "picture": ("picture", {}),
    }
    results = dict(
        zip(
            calls,
            await asyncio.gather(
                *(call_tool("toolbox", STDIO, tool, args, {}) for tool, args in calls.values())
            ),
            strict=True,
        )
    )
    assert results["add"] == ("42", False)
    output, is_error = results["fail"]
    assert is_error and "disk on fire" in output  # the tool's isError is honoured
    # Text blocks kept, the image summarised, not dumped as base64.
    assert results["picture"] == (f"a pixel\n[image image/png, {len(PIXEL)} bytes]", False)


async def test_stdio_server_sees_the_execution_env_never_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONTROLPLANE_API_KEY", "cpk_the_workers_own_key")
    monkeypatch.setenv("DATABASE_URL", "postgresql://worker:pw@db/cp")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-worker")
    config = {**STDIO, "env": {"FROM_CONFIG": "config-value", "SHARED": "config-wins"}}
    execution_env = {"GITHUB_TOKEN": "ghp_execution_token", "SHARED": "execution-value"}
    probes = ["CONTROLPLANE_API_KEY", "DATABASE_URL", "ANTHROPIC_API_KEY"]
    probes += ["GITHUB_TOKEN", "FROM_CONFIG", "SHARED", "PATH", "LANG", "HOME"]
    output, is_error = await call_tool(
        "toolbox", config, "env_probe", {"names": probes}, execution_env
    )
    assert not is_error, output
    seen = json.loads(output)
    assert seen["CONTROLPLANE_API_KEY"] == "<unset>"
    assert seen["DATABASE_URL"] == "<unset>"
    assert seen["ANTHROPIC_API_KEY"] == "<unset>"
    assert seen["GITHUB_TOKEN"] == "ghp_execution_token"
    assert seen["FROM_CONFIG"] == "config-value"
    assert seen["SHARED"] == "config-wins"  # the server's own config is the last layer
    assert seen["PATH"] != "<unset>" and seen["LANG"] != "<unset>" and seen["HOME"] != "<unset>"


async def test_secret_values_are_redacted_from_outputs_and_errors() -> None:
    secret = "s3cr3t-value-91c2"
    crash = {
        "command": sys.executable,
        "args": ["-c", f"import sys; print('bad token {secret}', file=sys.stderr); sys.exit(3)"],
    }
    echoed, crashed, listing = await asyncio.gather(
        call_tool("toolbox", STDIO, "echo", {"text": f"key={secret}"}, {}, secrets=[secret]),
        call_tool("crash", crash, "anything", {}, {}, secrets=[secret]),
        list_tools_report({"crash": crash}, {"TOKEN": secret}, secrets=[secret]),
    )
    assert echoed == (f"key={REDACTED}", False)
    assert crashed[1] and f"bad token {REDACTED}" in crashed[0] and secret not in crashed[0]
    assert (
        f"bad token {REDACTED}" in listing.errors["crash"] and secret not in listing.errors["crash"]
    )


# --- remote servers -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http", "sse"])
async def test_remote_server_listed_and_called(
    kind: str, remote: dict[str, dict[str, Any]]
) -> None:
    config = remote[kind]
    tools = by_name(await list_tools({"remote": config}, {}))
    assert set(tools) == {
        "mcp__remote__greet",
        "mcp__remote__multiply",
        "mcp__remote__fail",
        "mcp__remote__slow",
    }
    assert tools["mcp__remote__multiply"].input_schema["required"] == ["a", "b"]
    assert await call_tool("remote", config, "greet", {"name": "Ada"}, {}) == ("Hello, Ada!", False)
    assert await call_tool("remote", config, "multiply", {"a": 6, "b": 7}, {}) == ("42.0", False)
    output, is_error = await call_tool("remote", config, "fail", {"message": "quota"}, {})
    assert is_error and "quota" in output

    # Without the configured headers the server refuses: skipped, and the call is an error.
    anonymous = {key: value for key, value in config.items() if key != "headers"}
    listing = await list_tools_report({"remote": anonymous}, {})
    assert listing.tools == [] and "remote" in listing.errors
    output, is_error = await call_tool("remote", anonymous, "greet", {"name": "Ada"}, {})
    assert is_error and output.startswith("MCP server 'remote', tool 'greet': ")
    assert TOKEN not in output


async def test_remote_type_defaults_to_http_when_only_a_url_is_given(
    remote: dict[str, dict[str, Any]],
) -> None:
    config = {"url": remote["http"]["url"], "headers": remote["http"]["headers"]} | PRIVATE
    assert await call_tool("r", config, "greet", {"name": "Bo"}, {}) == ("Hello, Bo!", False)


async def test_remote_urls_pass_the_network_guard(remote: dict[str, dict[str, Any]]) -> None:
    """Without `allow_private_networks` a loopback server is refused before anything connects;
    by name it is resolved and the checked address used; metadata addresses are never reached."""
    for kind in ("http", "sse"):
        closed = {
            key: value for key, value in remote[kind].items() if key != "allow_private_networks"
        }
        listing = await list_tools_report({"remote": closed}, {})
        assert listing.tools == []
        assert "AddressRefused" in listing.errors["remote"]
        assert "allow_private_networks" in listing.errors["remote"]
        output, is_error = await call_tool("remote", closed, "greet", {"name": "Ada"}, {})
        assert is_error and "allow_private_networks" in output
        named = remote[kind] | {"url": remote[kind]["url"].replace("127.0.0.1", "localhost")}
        assert await call_tool("remote", named, "greet", {"name": "Bo"}, {}) == (
            "Hello, Bo!",
            False,
        )
    for url in (
        "http://169.254.169.254/mcp",
        "http://[fd00:ec2::254]/mcp",
        "http://100.100.100.200/sse",
        "http://[::ffff:169.254.169.254]/mcp",
    ):
        for kind in ("http", "sse"):
            config = {"type": kind, "url": url} | PRIVATE
            listing = await list_tools_report({"metadata": config}, {})
            assert "never reachable" in listing.errors["metadata"], listing.errors


async def test_nul_characters_in_tool_output_are_escaped() -> None:
    output, is_error = await call_tool("toolbox", STDIO, "echo", {"text": "a\0b"}, {})
    assert (output, is_error) == ("a\\x00b", False)


# --- failures and timeouts ----------------------------------------------------------------------


async def test_failing_servers_are_skipped_and_the_rest_listed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servers: dict[str, dict[str, Any]] = {
        "good": STDIO,
        "missing_binary": {"command": "/nonexistent/mcp-server"},
        "unreachable": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/mcp"} | PRIVATE,
        "unreachable_sse": {"type": "sse", "url": f"http://127.0.0.1:{free_port()}/sse"} | PRIVATE,
        "bad_type": {"type": "carrier-pigeon", "url": "http://127.0.0.1/"},
        "no_command": {"args": ["x"]},
        "bad_url": {"type": "http", "url": "file:///etc/passwd"},
    }
    with caplog.at_level(logging.WARNING, logger="activities.mcp_client"):
        listing = await list_tools_report(servers, {})
    assert {tool.mcp_server for tool in listing.tools} == {"good"}
    assert len(listing.tools) == 8
    assert set(listing.errors) == set(servers) - {"good"}
    assert "FileNotFoundError" in listing.errors["missing_binary"]
    assert "ConnectError" in listing.errors["unreachable"]
    assert "carrier-pigeon" in listing.errors["bad_type"]
    assert "no command and no url" in listing.errors["no_command"]
    assert "http(s)" in listing.errors["bad_url"]
    warned = {r.getMessage() for r in caplog.records if "skipped" in r.getMessage()}
    assert len(warned) == len(listing.errors)
    # A call to a server that cannot start is an error result, not an exception.
    output, is_error = await call_tool("missing", servers["missing_binary"], "echo", {}, {})
    assert is_error and "FileNotFoundError" in output


async def test_timeouts_bound_listing_and_calls(remote: dict[str, dict[str, Any]]) -> None:
    # A process that never speaks MCP: the listing gives up on it after its timeout.
    silent = {"command": "sleep", "args": ["60"]}
    started = time.monotonic()
    listing, slow_stdio, slow_remote, slow_by_config = await asyncio.gather(
        list_tools_report({"silent": silent}, {}, server_timeout=1),
        call_tool("toolbox", STDIO, "slow", {"seconds": 30}, {}, call_timeout=1),
        call_tool("remote", remote["http"], "slow", {"seconds": 30}, {}, call_timeout=1),
        call_tool("remote", {**remote["http"], "timeout": 1}, "slow", {"seconds": 30}, {}),
    )
    elapsed = time.monotonic() - started
    assert listing == McpToolListing(tools=[], errors={"silent": "no answer within 1 s"})
    assert slow_stdio == ("MCP server 'toolbox', tool 'slow': no answer within 1 s", True)
    assert slow_remote == ("MCP server 'remote', tool 'slow': no answer within 1 s", True)
    assert slow_by_config == slow_remote  # the config's own `timeout`
    assert elapsed < 15  # far below the 30 s the tools would sleep


# --- the activity -------------------------------------------------------------------------------

ENVIRONMENT_ROUTE = "/api/v1/executions/{execution_id}/environment"


@pytest.fixture(scope="module")
async def vault_app(settings: Settings, app: Starlette) -> AsyncIterator[Starlette]:
    """The API with a vault key, on the session's database and Temporal."""
    key = base64.b64encode(os.urandom(32)).decode()
    application = create_app(dataclasses.replace(settings, secret_key=key))
    async with application.router.lifespan_context(application):
        yield application


async def test_list_mcp_tools_activity_reads_the_execution_environment(
    vault_app: Starlette, tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    if not any(isinstance(r, Route) and r.path == ENVIRONMENT_ROUTE for r in vault_app.routes):
        pytest.skip(f"GET {ENVIRONMENT_ROUTE} is not served yet")
    member = client_for(vault_app, tenant.keys["member"])
    admin = client_for(vault_app, tenant.keys["admin"])
    env = await member.post(
        "/api/v1/environments",
        json={"name": "mcp-env", "execution_environment": {"secrets": ["MCP_TOKEN"]}},
    )
    queue = await member.post(
        f"/api/v1/environments/{env.json()['id']}/worker-queues", json={"name": "mcp-q"}
    )
    queue_id = queue.json()["id"]
    agent_id = await make_agent(tenant, uuid.uuid4().hex)
    secret = f"mcp-secret-{uuid.uuid4().hex}"
    created = await admin.post("/api/v1/secrets", json={"name": "MCP_TOKEN", "value": secret})
    assert created.status_code == 201, created.text
    # A server that prints the secret it was given (from a template and from the env) and dies.
    leaky = "import os, sys; print(sys.argv[1], os.environ['MCP_TOKEN'], file=sys.stderr); exit(1)"
    servers = {
        "toolbox": STDIO,
        "broken": {"command": "/nonexistent/mcp-server"},
        "leaky": {"command": sys.executable, "args": ["-c", leaky, "{{.secret.MCP_TOKEN}}"]},
        # Listing starts a process: a policy may refuse it before it starts.
        "refused": {"command": sys.executable, "args": ["-c", "open('/tmp/refused-ran','w')"]},
    }
    skill_ids = []
    for name, config in servers.items():
        skill = await admin.post(
            "/api/v1/skills", json={"name": name, "type": "mcp_server", "configuration": config}
        )
        assert skill.status_code == 201, skill.text
        skill_ids.append(skill.json()["id"])
    attached = await member.patch(
        f"/api/v1/agents/{agent_id}",
        json={"skill_ids": skill_ids, "environment_ids": [env.json()["id"]]},
    )
    assert attached.status_code == 200, attached.text
    policy = await admin.post(
        "/api/v1/policies",
        json={
            "name": "no-refused-server",
            "policy_content": "package kubiya.mcp\nimport rego.v1\n\n"
            'violations contains "not that server" if input.tool.mcp_server == "refused"\n',
        },
    )
    assert policy.status_code == 201, policy.text
    association = await admin.post(
        "/api/v1/policies/associations",
        json={"policy_id": policy.json()["id"], "entity_type": "agent", "entity_id": agent_id},
    )
    assert association.status_code == 201, association.text
    response = await member.post(
        f"/api/v1/agents/{agent_id}/execute",
        json={"prompt": "Hi", "worker_queue_id": queue_id},
    )
    assert response.status_code == 200, response.text
    execution_id = response.json()["execution_id"]
    started = await admin.post(f"/api/v1/worker-queues/{queue_id}/start", json={})
    assert started.status_code == 200, started.text
    # The worker's own client, speaking to the API in process rather than over a port.
    control_plane = ControlPlane("http://testserver", started.json()["worker_token"])
    await control_plane.aclose()
    control_plane.http = client_for(vault_app, started.json()["worker_token"])
    activity = McpActivities(control_plane).list_mcp_tools
    tools = await ActivityEnvironment().run(activity, execution_id)
    again = await ActivityEnvironment().run(activity, execution_id)  # a retry
    await control_plane.aclose()
    assert {tool.mcp_server for tool in tools} == {"toolbox"}
    assert "mcp__toolbox__env_probe" in {tool.name for tool in tools}
    assert [tool.name for tool in again] == [tool.name for tool in tools]
    rows = await db.fetch(
        "SELECT data FROM execution_events WHERE execution_id = $1 AND event_type = $2",
        uuid.UUID(execution_id),
        "mcp_server_error",
    )
    events = {event["server"]: event["error"] for event in (_json(row["data"]) for row in rows)}
    assert len(rows) == 2  # each failing server reported once, though listed twice
    assert "FileNotFoundError" in events["broken"]
    # The leaky server's stderr is in its error, with the secret (both copies) masked.
    assert f"{REDACTED} {REDACTED}" in events["leaky"]
    assert secret not in json.dumps(events) and secret not in repr(tools)
    # The refused server never started; its refusal was streamed once.
    assert "refused" not in events and not Path("/tmp/refused-ran").exists()
    refusals = await db.fetch(
        "SELECT data FROM execution_events WHERE execution_id = $1 AND event_type = $2",
        uuid.UUID(execution_id),
        "policy_violation",
    )
    assert [_json(row["data"])["mcp_server"] for row in refusals] == ["refused"]
    assert _json(refusals[0]["data"])["violations"] == ["not that server"]


def _json(value: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(value) if isinstance(value, str) else value
    return data
