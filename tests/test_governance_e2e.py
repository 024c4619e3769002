"""Governance in full executions: real tool runs on a worker, policies that deny and allow them,
and secrets that reach the tool but never Temporal history nor the stream."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from controlplane.devtools.fake_anthropic import (
    AsyncFakeAnthropicClient,
    FakeAnthropicServer,
    text_reply,
    tool_reply,
)
from tests.conftest import Tenant, assert_error, temporal_for
from tests.execution_helpers import execute, wait_status

DENY_SHELL = """package controlplane.tools
import rego.v1

default allow := true

allow := false if input.tool.name == "shell"

violations contains msg if {
    input.tool.name == "shell"
    msg := "shell is not allowed for this agent"
}
"""

DENY_EXECUTION = """package controlplane.runs
import rego.v1

violations contains "no executions on Fridays or any day" if input.action == "agent_execution"
"""


async def make_tooled_agent(
    tenant: Tenant, token: str, skills: list[dict[str, Any]], **agent_fields: Any
) -> str:
    skill_ids = []
    for skill in skills:
        created = await tenant.admin.post(
            "/api/v1/skills", json={"name": f"{skill['type']}-{uuid.uuid4().hex[:6]}", **skill}
        )
        assert created.status_code == 201, created.text
        skill_ids.append(created.json()["id"])
    response = await tenant.member.post(
        "/api/v1/agents",
        json={
            "name": f"agent-{uuid.uuid4().hex[:6]}",
            "model_id": "anthropic/claude-sonnet-4-5",
            "system_prompt": f"You use tools. [{token}]",
            "configuration": {"one_shot": True},
            "skill_ids": skill_ids,
            **agent_fields,
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def attach_policy(tenant: Tenant, agent_id: str, rego: str) -> None:
    policy = await tenant.admin.post(
        "/api/v1/policies", json={"name": f"p-{uuid.uuid4().hex[:6]}", "policy_content": rego}
    )
    assert policy.status_code == 201, policy.text
    association = await tenant.admin.post(
        "/api/v1/policies/associations",
        json={"policy_id": policy.json()["id"], "entity_type": "agent", "entity_id": agent_id},
    )
    assert association.status_code == 201, association.text


async def events_of(tenant: Tenant, execution_id: str) -> list[tuple[str, dict[str, Any]]]:
    async with tenant.viewer.stream(
        "GET", f"/api/v1/executions/{execution_id}/stream", timeout=30
    ) as response:
        kind = ""
        out: list[tuple[str, dict[str, Any]]] = []
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                import json

                out.append((kind, json.loads(line[6:])))
    return out


async def test_a_shell_tool_really_runs_and_the_model_gets_its_output(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    token = uuid.uuid4().hex
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        token,
        [tool_reply("shell", {"command": "echo home=$HOME"}), text_reply("It said 42.")],
    )
    agent_id = await make_tooled_agent(
        tenant, token, [{"type": "shell", "configuration": {"allowed_commands": ["echo"]}}]
    )
    execution_id = await execute(tenant, agent_id, running_queue["id"])
    final = await wait_status(tenant, execution_id, "completed", "failed")
    assert final["status"] == "completed", final
    assert final["response"] == "It said 42."
    bodies = await fake.bodies(token)
    assert [tool["name"] for tool in bodies[0]["tools"]] == ["shell"]
    tool_result = bodies[1]["messages"][-1]["content"][0]
    # $HOME expanded by the shell on the worker: the per-execution workspace.
    assert tool_result["type"] == "tool_result"
    assert "home=" in str(tool_result["content"]) and execution_id in str(tool_result["content"])
    kinds = [kind for kind, _ in await events_of(tenant, execution_id)]
    assert kinds.index("tool_started") < kinds.index("tool_completed") < kinds.index("done")


async def test_a_denying_policy_stops_the_tool_and_the_execution_goes_on(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex
    marker = tmp_path / "should-not-exist"
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        token,
        [tool_reply("shell", {"command": f"touch {marker}"}), text_reply("Understood, no shell.")],
    )
    agent_id = await make_tooled_agent(tenant, token, [{"type": "shell", "configuration": {}}])
    await attach_policy(tenant, agent_id, DENY_SHELL)
    execution_id = await execute(tenant, agent_id, running_queue["id"])
    final = await wait_status(tenant, execution_id, "completed", "failed")
    assert final["status"] == "completed" and final["response"] == "Understood, no shell."
    assert not marker.exists()
    tool_result = (await fake.bodies(token))[1]["messages"][-1]["content"][0]
    assert tool_result["is_error"] is True
    assert "shell is not allowed for this agent" in str(tool_result["content"])
    events = await events_of(tenant, execution_id)
    violations = [data for kind, data in events if kind == "policy_violation"]
    assert violations and "shell is not allowed" in str(violations[0])


async def test_an_execution_denied_by_policy_creates_nothing(
    tenant: Tenant, running_queue: dict[str, Any], db: Any
) -> None:
    agent_id = await make_tooled_agent(tenant, "denied", [])
    await attach_policy(tenant, agent_id, DENY_EXECUTION)
    response = await tenant.member.post(
        f"/api/v1/agents/{agent_id}/execute",
        json={"prompt": "hi", "worker_queue_id": running_queue["id"]},
    )
    error = assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert error["details"]["violations"] == ["no executions on Fridays or any day"]
    count = "SELECT count(*) FROM executions WHERE organization_id = $1"
    assert await db.fetchval(count, tenant.id) == 0


async def test_secrets_reach_the_tool_but_not_history_events_or_the_model(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    temporal_address: str,
    db: Any,
) -> None:
    token = uuid.uuid4().hex
    secret_value = f"s3cr3t-{uuid.uuid4().hex}"
    created = await tenant.admin.post(
        "/api/v1/secrets", json={"name": "DEPLOY_TOKEN", "value": secret_value}
    )
    assert created.status_code == 201, created.text
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        token,
        [
            tool_reply("shell", {"command": 'echo "len=${#DEPLOY_TOKEN} value=$DEPLOY_TOKEN"'}),
            text_reply("Done."),
        ],
    )
    agent_id = await make_tooled_agent(
        tenant,
        token,
        [{"type": "shell", "configuration": {}}],
        execution_environment={"secrets": ["DEPLOY_TOKEN"]},
    )
    execution_id = await execute(tenant, agent_id, running_queue["id"])
    final = await wait_status(tenant, execution_id, "completed", "failed")
    assert final["status"] == "completed", final
    tool_result = str((await fake.bodies(token))[1]["messages"][-1]["content"])
    assert f"len={len(secret_value)}" in tool_result  # the tool saw the real value
    assert secret_value not in tool_result  # the model did not
    client = await temporal_for(temporal_address, tenant)
    history = await client.get_workflow_handle(f"agent-execution-{execution_id}").fetch_history()
    assert secret_value not in history.to_json()
    stored = await db.fetch(
        "SELECT data::text AS data FROM execution_events WHERE execution_id = $1",
        uuid.UUID(execution_id),
    )
    assert stored and all(secret_value not in row["data"] for row in stored)
    audit = await tenant.admin.get("/api/v1/secrets/access-log")
    assert execution_id in audit.text


async def test_system_prompt_templates_are_rendered_on_the_worker_only(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    temporal_address: str,
) -> None:
    token = uuid.uuid4().hex
    secret_value = f"tmpl-{uuid.uuid4().hex}"
    await tenant.admin.post("/api/v1/secrets", json={"name": "API_PASS", "value": secret_value})
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    # The model repeats the secret: what is stored and streamed must not.
    await fake.script(token, [text_reply(f"The pass is {secret_value}.")])
    response = await tenant.member.post(
        "/api/v1/agents",
        json={
            "name": f"agent-{uuid.uuid4().hex[:6]}",
            "model_id": "anthropic/claude-sonnet-4-5",
            "system_prompt": f"[{token}] Region {{{{.env.REGION}}}}, pass {{{{.secret.API_PASS}}}}",
            "configuration": {"one_shot": True},
            "execution_environment": {"env_vars": {"REGION": "eu-west"}, "secrets": ["API_PASS"]},
        },
    )
    assert response.status_code == 201, response.text
    execution_id = await execute(tenant, str(response.json()["id"]), running_queue["id"])
    final = await wait_status(tenant, execution_id, "completed", "failed")
    assert final["status"] == "completed", final
    system = str((await fake.bodies(token))[0]["system"])
    assert f"Region eu-west, pass {secret_value}" in system
    assert secret_value not in final["response"] and "[REDACTED]" in final["response"]
    events = await events_of(tenant, execution_id)
    assert all(secret_value not in str(data) for _, data in events)
    client = await temporal_for(temporal_address, tenant)
    history = await client.get_workflow_handle(f"agent-execution-{execution_id}").fetch_history()
    assert secret_value not in history.to_json()


async def test_mcp_server_tools_are_listed_and_called_in_an_execution(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    token = uuid.uuid4().hex
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        token,
        [tool_reply("mcp__toolbox__echo", {"text": "through MCP"}), text_reply("Echoed.")],
    )
    server = Path(__file__).parent / "mcp_servers" / "stdio_server.py"
    # A server run on the worker comes from an admin's mcp_server skill.
    agent_id = await make_tooled_agent(
        tenant,
        token,
        [
            {
                "type": "mcp_server",
                "name": "toolbox",
                "configuration": {"command": sys.executable, "args": [str(server)]},
            }
        ],
    )
    execution_id = await execute(tenant, agent_id, running_queue["id"])
    final = await wait_status(tenant, execution_id, "completed", "failed", timeout=60)
    assert final["status"] == "completed", final
    bodies = await fake.bodies(token)
    assert "mcp__toolbox__echo" in [tool["name"] for tool in bodies[0]["tools"]]
    tool_result = bodies[1]["messages"][-1]["content"][0]
    assert tool_result["is_error"] is False and "through MCP" in str(tool_result["content"])


async def test_resolved_context_reaches_the_system_prompt(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    token = uuid.uuid4().hex
    agent_id = await make_tooled_agent(tenant, token, [])
    knowledge = f"kb-{uuid.uuid4().hex[:8]}"
    org_resource = f"res-{uuid.uuid4().hex[:8]}"
    put = await tenant.member.put(
        f"/api/v1/context/agent/{agent_id}", json={"knowledge_uuids": [knowledge]}
    )
    assert put.status_code == 200, put.text
    put = await tenant.member.put(
        f"/api/v1/context/organization/{tenant.id}", json={"resource_ids": [org_resource]}
    )
    assert put.status_code == 200, put.text
    execution_id = await execute(tenant, agent_id, running_queue["id"])
    await wait_status(tenant, execution_id, "completed")
    system = str((await AsyncFakeAnthropicClient(fake_llm.base_url).bodies(token))[0]["system"])
    assert knowledge in system and org_resource in system


async def test_a_report_the_api_refuses_ends_the_execution_failed_not_running(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    """The model asks for a tool with arguments nested deeper than the API takes: the worker's
    report of that call is refused (400), retrying cannot help, and the execution ends `failed`
    saying why instead of staying `running`."""
    token = uuid.uuid4().hex
    deep: dict[str, Any] = {"command": "echo hi"}
    for _ in range(80):
        deep = {"x": deep}
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(token, [tool_reply("shell", deep), text_reply("unreachable")])
    agent_id = await make_tooled_agent(
        tenant, token, [{"type": "shell", "configuration": {"allowed_commands": ["echo"]}}]
    )
    execution_id = await execute(tenant, agent_id, running_queue["id"])
    final = await wait_status(tenant, execution_id, "completed", "failed")
    assert final["status"] == "failed", final
    assert "control plane refused" in final["error_message"], final
    assert "nested deeper than" in final["error_message"], final
    assert final["completed_at"] is not None
    assert len(await fake.requests(token)) == 1  # the model was not called again
