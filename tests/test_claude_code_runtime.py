"""The claude_code runtime end to end: the HTTP API, a real worker process running the Claude
Code CLI bundled with claude-agent-sdk, the Temporal dev server and the fake Anthropic server."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from controlplane.devtools.fake_anthropic import (
    AsyncFakeAnthropicClient,
    FakeAnthropicServer,
    error_reply,
    text_reply,
    tool_reply,
)
from tests.conftest import Tenant
from tests.execution_helpers import read_stream, wait_status
from tests.test_governance_e2e import DENY_SHELL, attach_policy


async def make_claude_code_agent(tenant: Tenant, token: str, **configuration: Any) -> str:
    response = await tenant.member.post(
        "/api/v1/agents",
        json={
            "name": f"cc-{uuid.uuid4().hex[:6]}",
            "model_id": "anthropic/claude-sonnet-4-5",
            "runtime": "claude_code",
            # The CLI sends the system prompt, so the fake matches the token there.
            "system_prompt": f"You help. [{token}]",
            "configuration": configuration,
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def execute(tenant: Tenant, agent_id: str, queue_id: str, prompt: str) -> str:
    started = await tenant.member.post(
        f"/api/v1/agents/{agent_id}/execute",
        json={"prompt": prompt, "worker_queue_id": queue_id},
    )
    assert started.status_code == 200, started.text
    return str(started.json()["execution_id"])


def texts(content: Any) -> list[str]:
    """The texts of a system prompt or message content: a string or a list of blocks."""
    if isinstance(content, str):
        return [content]
    return [block["text"] for block in content if block.get("type") == "text"]


async def test_one_shot_turn_runs_through_the_cli(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    token = uuid.uuid4().hex
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    reply = "Claude Code says the answer is forty-two."
    await fake.script(token, [text_reply(reply)])
    agent_id = await make_claude_code_agent(tenant, token, one_shot=True)
    execution_id = await execute(tenant, agent_id, running_queue["id"], "What is the answer?")

    final = await wait_status(tenant, execution_id, "completed", "failed")
    assert final["status"] == "completed", final
    assert final["response"] == reply
    usage = final["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0 and usage["cost_usd"] > 0

    events = await read_stream(tenant.viewer, execution_id)
    chunks = [d["data"] for _, t, d in events if t == "message_chunk"]
    assert "".join(c["content"] for c in chunks) == reply
    assert chunks[-1]["is_final"] and chunks[0]["turn"] == 1

    # What the CLI sent: one streamed request for the catalogue's API model name, the agent's
    # system prompt, the user's prompt as written, and no tools.
    [request] = await fake.requests(token)
    body = request["body"]
    assert request["path"] == "/v1/messages" and body["stream"] is True
    assert body["model"] == "claude-sonnet-4-5"
    assert any(f"You help. [{token}]" in text for text in texts(body["system"]))
    assert texts(body["messages"][-1]["content"])[-1] == "What is the answer?"
    assert body["tools"] == []


async def test_conversation_carries_to_the_next_turn(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    token = uuid.uuid4().hex
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(token, [text_reply("The first answer."), text_reply("The second answer.")])
    agent_id = await make_claude_code_agent(tenant, token)
    execution_id = await execute(tenant, agent_id, running_queue["id"], "Remember the colour teal.")
    waiting = await wait_status(tenant, execution_id, "waiting_for_input")
    assert waiting["response"] == "The first answer."
    sent = await tenant.member.post(
        f"/api/v1/executions/{execution_id}/message", json={"message": "Which colour?"}
    )
    assert sent.status_code == 202
    for _ in range(100):
        second = await wait_status(tenant, execution_id, "waiting_for_input")
        if second["response"] == "The second answer.":
            break
        await asyncio.sleep(0.1)
    assert second["response"] == "The second answer."
    assert second["usage"]["turns"] == 2
    assert (await tenant.member.post(f"/api/v1/executions/{execution_id}/mark-done")).is_success
    await wait_status(tenant, execution_id, "completed")

    # A fresh CLI per turn: the earlier turns ride in the system prompt, the newest message
    # is the prompt.
    bodies = await fake.bodies(token)
    assert len(bodies) == 2
    system = "\n".join(texts(bodies[1]["system"]))
    assert "Remember the colour teal." in system and "The first answer." in system
    assert texts(bodies[1]["messages"][-1]["content"])[-1] == "Which colour?"
    assert "The first answer." not in "\n".join(texts(bodies[0]["system"]))


async def test_bad_request_fails_without_retrying(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    token = uuid.uuid4().hex
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(token, [error_reply(400, "the widget is broken", times=3)])
    agent_id = await make_claude_code_agent(tenant, token, one_shot=True)
    execution_id = await execute(tenant, agent_id, running_queue["id"], "Hi")
    final = await wait_status(tenant, execution_id, "failed", "completed")
    assert final["status"] == "failed"
    assert "the widget is broken" in final["error_message"]
    assert "(400)" in final["error_message"]
    # One CLI run, not retried by Temporal (the CLI itself may resend a 400 with fewer betas).
    bodies = await fake.bodies(token)
    assert len({json.loads(b["metadata"]["user_id"])["session_id"] for b in bodies}) == 1


async def test_rate_limit_is_retried_by_temporal(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    token = uuid.uuid4().hex
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    # The CLI tries twice (one retry of its own), then the activity fails and Temporal retries.
    await fake.script(
        token, [error_reply(429, "slow down", times=2, retry_after=0), text_reply("Made it.")]
    )
    agent_id = await make_claude_code_agent(tenant, token, one_shot=True)
    execution_id = await execute(tenant, agent_id, running_queue["id"], "Hi")
    final = await wait_status(tenant, execution_id, "completed", "failed")
    assert final["status"] == "completed" and final["response"] == "Made it."
    assert [r["status"] for r in await fake.requests(token)] == [429, 429, 200]


# --- tools ------------------------------------------------------------------------------------

SHELL_CLI_NAME = "mcp__controlplane__shell"


async def make_shell_agent(tenant: Tenant, token: str) -> str:
    skill = await tenant.admin.post(
        "/api/v1/skills",
        json={"name": f"shell-{uuid.uuid4().hex[:6]}", "type": "shell", "configuration": {}},
    )
    assert skill.status_code == 201, skill.text
    response = await tenant.member.post(
        "/api/v1/agents",
        json={
            "name": f"cc-{uuid.uuid4().hex[:6]}",
            "model_id": "anthropic/claude-sonnet-4-5",
            "runtime": "claude_code",
            "system_prompt": f"You use tools. [{token}]",
            "configuration": {"one_shot": True},
            "skill_ids": [skill.json()["id"]],
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def tool_result_of(body: dict[str, Any]) -> dict[str, Any]:
    """The tool_result the CLI sent back in its next request."""
    [result] = [
        block
        for message in body["messages"]
        if message["role"] == "user" and isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]
    return dict(result)


async def test_agent_tools_run_through_the_cli_on_the_worker(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    token = uuid.uuid4().hex
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        token,
        [tool_reply(SHELL_CLI_NAME, {"command": "echo home=$HOME"}), text_reply("It said so.")],
    )
    agent_id = await make_shell_agent(tenant, token)
    execution_id = await execute(tenant, agent_id, running_queue["id"], "Where is home?")
    final = await wait_status(tenant, execution_id, "completed", "failed")
    assert final["status"] == "completed", final
    assert final["response"] == "It said so."

    # The CLI offered exactly the agent's tool, under its MCP name, and none of its own.
    first, second = await fake.bodies(token)
    [offered] = first["tools"]
    assert offered["name"] == SHELL_CLI_NAME
    assert offered["input_schema"]["properties"]["command"]
    # The tool ran on the worker, in the execution's workspace (its HOME).
    result = tool_result_of(second)
    assert result.get("is_error") is not True, result
    assert "home=" in str(result["content"]) and execution_id in str(result["content"])
    [tool_use] = [
        block
        for message in second["messages"]
        if message["role"] == "assistant" and isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_use"
    ]
    assert tool_use["name"] == SHELL_CLI_NAME and result["tool_use_id"] == tool_use["id"]

    events = await read_stream(tenant.viewer, execution_id)
    kinds = [kind for _, kind, _ in events]
    assert kinds.index("tool_started") < kinds.index("tool_completed") < kinds.index("done")
    started = next(data["data"] for _, kind, data in events if kind == "tool_started")
    # Events name the tool as the agent knows it, under the model's tool_use id.
    assert started["tool_name"] == "shell"
    assert started["tool_execution_id"] == result["tool_use_id"]
    assert not any(kind == "policy_violation" for kind in kinds)


async def test_a_denying_policy_stops_a_cli_tool_call(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex
    marker = tmp_path / "should-not-exist"
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        token,
        [tool_reply(SHELL_CLI_NAME, {"command": f"touch {marker}"}), text_reply("No shell then.")],
    )
    agent_id = await make_shell_agent(tenant, token)
    await attach_policy(tenant, agent_id, DENY_SHELL)
    execution_id = await execute(tenant, agent_id, running_queue["id"], "Touch the marker.")
    final = await wait_status(tenant, execution_id, "completed", "failed")
    assert final["status"] == "completed", final
    assert final["response"] == "No shell then."
    assert not marker.exists()

    result = tool_result_of((await fake.bodies(token))[1])
    assert result["is_error"] is True
    assert "shell is not allowed for this agent" in str(result["content"])
    events = await read_stream(tenant.viewer, execution_id)
    [violation] = [data["data"] for _, kind, data in events if kind == "policy_violation"]
    assert violation["tool_name"] == "shell"
    assert violation["violations"] == ["shell is not allowed for this agent"]
    completed = [data["data"] for _, kind, data in events if kind == "tool_completed"]
    assert [c["tool_status"] for c in completed] == ["denied"]


async def test_a_claude_code_team_runs_its_members_as_subagents(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    """The leader runs through the CLI with its members as SDK subagents (the Agent tool); what
    a member says reaches the team's stream as member_message_complete."""
    lead, mine = uuid.uuid4().hex, uuid.uuid4().hex
    member_id = await make_claude_code_agent(tenant, mine)
    name = f"scout-{mine[:6]}"
    renamed = await tenant.member.patch(
        f"/api/v1/agents/{member_id}", json={"name": name, "description": "Finds facts"}
    )
    assert renamed.status_code == 200, renamed.text
    team = await tenant.member.post(
        "/api/v1/teams",
        json={
            "name": f"cc-team-{mine[:6]}",
            "runtime": "claude_code",
            "configuration": {
                "member_ids": [member_id],
                "instructions": f"Lead well. [{lead}]",
                "one_shot": True,
            },
        },
    )
    assert team.status_code == 201, team.text
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        lead,
        [
            tool_reply(
                "Agent",
                {"description": "Find facts", "prompt": "Find the facts", "subagent_type": name},
            ),
            text_reply("The team found the facts."),
        ],
    )
    await fake.script(mine, [text_reply("Facts: water is wet.")])
    started = await tenant.member.post(
        f"/api/v1/teams/{team.json()['id']}/execute",
        json={"prompt": "Find facts", "worker_queue_id": running_queue["id"]},
    )
    assert started.status_code == 200, started.text
    execution_id = started.json()["execution_id"]
    final = await wait_status(tenant, execution_id, "completed", "failed", timeout=90)
    assert final["status"] == "completed", final
    assert final["response"] == "The team found the facts."
    # The leader was offered the Agent tool, and told of the member as a subagent type; the
    # member's call had its own prompt.
    first = (await fake.bodies(lead))[0]
    assert "Agent" in [tool["name"] for tool in first["tools"]]
    assert f"- {name}: Finds facts" in json.dumps(first["messages"])
    [member_call] = await fake.bodies(mine)
    assert any(f"You help. [{mine}]" in text for text in texts(member_call["system"]))
    events = await read_stream(tenant.viewer, execution_id)
    said = [data for _, kind, data in events if kind == "member_message_complete"]
    assert said and said[-1]["content"] == "Facts: water is wet."
    assert said[-1]["member_id"] == member_id and said[-1]["member_name"] == name
