"""`run_tool` as a worker runs it: a real activity context, a worker token from the API over
real HTTP, the execution's environment and secrets from the vault, the policy check, events
in Postgres. Tools really run; a denied one never does."""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.execution_environment import REDACTED
from activities.reporting import ControlPlane
from activities.tool_runner import ToolActivities
from controlplane.tool_catalogue import tool_specs
from tests.conftest import Tenant
from workflows.contracts import PolicyContext, ToolCall, ToolOutcome, ToolSpec

SECRET = "s3cr3t-value-4242"
MCP_SERVER = Path(__file__).parent / "mcp_servers" / "stdio_server.py"
NO_TOUCH = """package kubiya.tools
import rego.v1

default allow := false

allow if count(violations) == 0

violations contains msg if {
    input.tool.category == "shell"
    contains(input.tool.arguments.command, "touch")
    msg := sprintf("'touch' is not allowed (agent %s)", [input.execution.agent_name])
}
"""


@dataclass
class Rig:
    """An execution on a queue no worker serves, and the activities of a worker on that queue."""

    tenant: Tenant
    admin: httpx.AsyncClient
    member: httpx.AsyncClient
    execution_id: str
    agent_id: str
    agent_name: str
    environment_id: str
    queue_id: str
    activities: ToolActivities
    workspaces: Path

    def call(self, tool: ToolSpec, arguments: dict[str, Any], tool_use_id: str = "") -> ToolCall:
        return ToolCall(
            execution_id=self.execution_id,
            turn=1,
            tool_use_id=tool_use_id or f"toolu_{uuid.uuid4().hex[:12]}",
            tool=tool,
            arguments=arguments,
            policy=PolicyContext(
                organization_id=self.tenant.id,
                execution_id=self.execution_id,
                agent_id=self.agent_id,
                agent_name=self.agent_name,
                environment_ids=[self.environment_id],
                user={"id": "user-1", "email": "u@example.com"},
            ),
        )


def api_client(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


async def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def tool_skills(admin: httpx.AsyncClient) -> list[str]:
    """One skill of each built-in type, and the stdio MCP server `box` (skills are admins')."""
    skills: list[dict[str, Any]] = [
        {"type": "shell"},
        {"type": "file_system"},
        {"type": "python"},
        {"type": "http", "configuration": {"allowed_hosts": ["example.com"]}},
        {"type": "sleep"},
        {
            "type": "mcp_server",
            "name": "box",
            "configuration": {"command": sys.executable, "args": [str(MCP_SERVER)]},
        },
    ]
    ids = []
    for skill in skills:
        body = {"name": f"{skill['type']}-{uuid.uuid4().hex[:6]}", **skill}
        ids.append((await ok(await admin.post("/api/v1/skills", json=body), 201))["id"])
    return ids


async def new_execution(
    member: httpx.AsyncClient, skill_ids: list[str] | None = None, **execution_environment: Any
) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """(environment, agent, queue id, execution id); no worker serves the queue."""
    environment = await ok(
        await member.post(
            "/api/v1/environments",
            json={
                "name": f"env-{uuid.uuid4().hex[:6]}",
                "execution_environment": execution_environment,
            },
        ),
        201,
    )
    queue = await ok(
        await member.post(
            f"/api/v1/environments/{environment['id']}/worker-queues", json={"name": "q"}
        ),
        201,
    )
    agent = await ok(
        await member.post(
            "/api/v1/agents",
            json={
                "name": f"agent-{uuid.uuid4().hex[:6]}",
                "model_id": "anthropic/claude-sonnet-4-5",
                "environment_ids": [environment["id"]],
                "skill_ids": skill_ids or [],
            },
        ),
        201,
    )
    executed = await ok(
        await member.post(
            f"/api/v1/agents/{agent['id']}/execute",
            json={"prompt": "Hi", "worker_queue_id": queue["id"]},
        )
    )
    return environment, agent, queue["id"], str(executed["execution_id"])


async def worker_activities(
    admin: httpx.AsyncClient, url: str, queue_id: str, workspaces: Path
) -> ToolActivities:
    """The tool activities of a worker started on the queue."""
    started = await ok(await admin.post(f"/api/v1/worker-queues/{queue_id}/start", json={}))
    return ToolActivities(ControlPlane(url, started["worker_token"]), workspaces)


@pytest.fixture
async def rig(tenant: Tenant, live_api: str, tmp_path: Path) -> AsyncIterator[Rig]:
    admin = api_client(live_api, tenant.keys["admin"])
    member = api_client(live_api, tenant.keys["member"])
    await ok(
        await admin.post("/api/v1/secrets", json={"name": "TOOL_SECRET", "value": SECRET}), 201
    )
    environment, agent, queue_id, execution_id = await new_execution(
        member,
        await tool_skills(admin),
        env_vars={"PLAIN": "plain-value"},
        secrets=["TOOL_SECRET"],
    )
    workspaces = tmp_path / "workspaces"
    activities = await worker_activities(admin, live_api, queue_id, workspaces)
    yield Rig(
        tenant,
        admin,
        member,
        execution_id,
        agent["id"],
        agent["name"],
        environment["id"],
        queue_id,
        activities,
        workspaces,
    )
    await activities.control_plane.aclose()
    await admin.aclose()
    await member.aclose()


def builtin(skill_type: str, name: str, **configuration: Any) -> ToolSpec:
    """The tool spec the API builds for a skill of this type (controlplane/tool_catalogue.py)."""
    specs = tool_specs(str(uuid.uuid4()), "ops", skill_type, configuration)
    return next(spec for spec in specs if spec.name == name)


async def run(rig: Rig, call: ToolCall, activities: ToolActivities | None = None) -> ToolOutcome:
    outcome: ToolOutcome = await ActivityEnvironment().run(
        (activities or rig.activities).run_tool, call
    )
    return outcome


async def events(db: asyncpg.Pool[Any], execution_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = await db.fetch(
        "SELECT event_type, data FROM execution_events WHERE execution_id = $1 "
        "AND event_type IN ('tool_started', 'tool_completed', 'policy_violation') ORDER BY seq",
        uuid.UUID(execution_id),
    )
    return [(row["event_type"], dict(row["data"])) for row in rows]


async def test_a_tool_runs_with_the_execution_environment_and_streams(
    rig: Rig, db: asyncpg.Pool[Any]
) -> None:
    command = (
        'echo hello; echo "$PLAIN"; test "$TOOL_SECRET" = "' + SECRET + '" && echo same; '
        'echo "$TOOL_SECRET"; pwd; echo "key=$CONTROLPLANE_API_KEY"'
    )
    call = rig.call(builtin("shell", "shell"), {"command": command}, "toolu_shell_1")
    outcome = await run(rig, call)
    workspace = rig.workspaces / rig.execution_id
    assert outcome == ToolOutcome(
        output=f"hello\nplain-value\nsame\n{REDACTED}\n{workspace}\nkey=\n",
        is_error=False,
        status="success",
    )
    recorded = await events(db, rig.execution_id)
    assert [kind for kind, _ in recorded] == ["tool_started", "tool_completed"]
    started, completed = recorded[0][1], recorded[1][1]
    # The model's arguments held the secret (it had leaked into the prompt): redacted too.
    assert started["tool_name"] == "shell" and started["tool_execution_id"] == "toolu_shell_1"
    assert started["tool_input"] == {"command": command.replace(SECRET, REDACTED)}
    assert completed == {
        "tool_name": "shell",
        "tool_execution_id": "toolu_shell_1",
        "tool_output": outcome.output,
        "tool_status": "success",
    }
    assert SECRET not in json.dumps([data for _, data in recorded])
    # A retried activity runs the tool again, but its events land once.
    again = await run(rig, call)
    assert again.output == outcome.output
    assert len(await events(db, rig.execution_id)) == 2


async def test_encoded_secrets_and_nul_bytes_are_safe_in_events(
    rig: Rig, db: asyncpg.Pool[Any]
) -> None:
    """A tool printing the secret in base64 or hex gets the marker in its place; a NUL byte in
    the output (which a Postgres text or jsonb value cannot hold) is escaped, and the event with
    it is stored."""
    command = (
        'printf %s "$TOOL_SECRET" | base64; '
        'printf %s "$TOOL_SECRET" | od -An -tx1 | tr -d " \\n"; echo; '
        "printf 'a\\0b'"
    )
    call = rig.call(builtin("shell", "shell"), {"command": command}, "toolu_encoded")
    outcome = await run(rig, call)
    assert outcome.output == f"{REDACTED}\n{REDACTED}\na\\x00b", outcome.output
    completed = [
        data for kind, data in await events(db, rig.execution_id) if kind != "tool_started"
    ]
    assert completed[0]["tool_output"] == outcome.output


async def test_every_builtin_runs_through_the_activity(rig: Rig) -> None:
    written = await run(
        rig,
        rig.call(builtin("file_system", "write_file"), {"path": "a/b.txt", "content": "data"}),
    )
    assert written.status == "success", written.output
    read = await run(rig, rig.call(builtin("file_system", "read_file"), {"path": "a/b.txt"}))
    assert read.output == "data"
    code = "import os; print(os.environ['PLAIN'], open('a/b.txt').read())"
    python = await run(rig, rig.call(builtin("python", "run_python"), {"code": code}))
    assert python.output == "plain-value data\n"
    slept = await run(rig, rig.call(builtin("sleep", "sleep"), {"seconds": 0.1}))
    assert slept.output == "Slept 0.1 seconds"
    http = await run(
        rig,
        rig.call(
            builtin("http", "http_request", allowed_hosts=["example.com"]),
            {"method": "GET", "url": "http://127.0.0.1:9/"},
        ),
    )
    assert http.status == "error" and "not in allowed_hosts" in http.output


async def test_failing_tools_are_error_results(rig: Rig, db: asyncpg.Pool[Any]) -> None:
    failed = await run(rig, rig.call(builtin("shell", "shell"), {"command": "exit 4"}))
    assert (failed.is_error, failed.status, failed.output) == (True, "error", "[exit code 4]")
    escaped = await run(
        rig, rig.call(builtin("file_system", "read_file"), {"path": "../../../etc/passwd"})
    )
    assert escaped.status == "error" and "outside the allowed directory" in escaped.output
    # A tool that raises (here: its workspace cannot be created) is an error result too.
    blocker = rig.workspaces.parent / "not-a-dir"
    blocker.write_text("")
    broken = ToolActivities(rig.activities.control_plane, blocker)
    raised = await run(rig, rig.call(builtin("shell", "shell"), {"command": "echo hi"}), broken)
    assert raised.status == "error" and raised.output.startswith("Tool 'shell' failed:")
    statuses = [
        d["tool_status"] for k, d in await events(db, rig.execution_id) if k != "tool_started"
    ]
    assert statuses == ["error", "error", "error"]


async def test_a_denied_tool_never_runs(rig: Rig, db: asyncpg.Pool[Any]) -> None:
    policy = await ok(
        await rig.admin.post(
            "/api/v1/policies", json={"name": "no-touch", "policy_content": NO_TOUCH}
        ),
        201,
    )
    await ok(
        await rig.admin.post(
            "/api/v1/policies/associations",
            json={"policy_id": policy["id"], "entity_type": "agent", "entity_id": rig.agent_id},
        ),
        201,
    )
    call = rig.call(builtin("shell", "shell"), {"command": "touch marker"}, "toolu_denied")
    outcome = await run(rig, call)
    violation = f"'touch' is not allowed (agent {rig.agent_name})"
    assert outcome == ToolOutcome(
        output=f"Policy denied this tool call: {violation}",
        is_error=True,
        status="denied",
        violations=[violation],
    )
    assert not (rig.workspaces / rig.execution_id / "marker").exists()
    recorded = await events(db, rig.execution_id)
    assert [kind for kind, _ in recorded] == ["tool_started", "policy_violation", "tool_completed"]
    assert recorded[1][1]["violations"] == [violation]
    assert recorded[1][1]["tool_execution_id"] == "toolu_denied"
    assert recorded[2][1]["tool_status"] == "denied"
    # The same policy lets other commands through, and they run.
    allowed = await run(rig, rig.call(builtin("shell", "shell"), {"command": "echo fine"}))
    assert allowed.output == "fine\n"


async def test_environment_policies_are_enforced(rig: Rig) -> None:
    policy = await ok(
        await rig.admin.post(
            "/api/v1/policies", json={"name": "env-no-touch", "policy_content": NO_TOUCH}
        ),
        201,
    )
    await ok(
        await rig.admin.post(
            "/api/v1/policies/associations",
            json={
                "policy_id": policy["id"],
                "entity_type": "environment",
                "entity_id": rig.environment_id,
            },
        ),
        201,
    )
    code = "import pathlib; pathlib.Path('marker').touch()"
    python = await run(rig, rig.call(builtin("python", "run_python"), {"code": code}))
    assert python.status == "success"  # the policy is about shell commands
    denied = await run(rig, rig.call(builtin("shell", "shell"), {"command": "touch marker2"}))
    assert denied.status == "denied"
    assert not (rig.workspaces / rig.execution_id / "marker2").exists()


async def test_another_executions_environment_is_out_of_reach(
    rig: Rig, live_api: str, other_tenant: Tenant, tmp_path: Path
) -> None:
    # A worker of another queue of the same organization.
    _, _, other_queue, _ = await new_execution(rig.member)
    intruder = await worker_activities(rig.admin, live_api, other_queue, tmp_path / "other")
    call = rig.call(builtin("shell", "shell"), {"command": "touch marker; echo $TOOL_SECRET"})
    with pytest.raises(ApplicationError) as refused:
        await run(rig, call, intruder)
    assert refused.value.non_retryable and "404" in str(refused.value)
    assert not (tmp_path / "other" / rig.execution_id).exists()
    # A worker of another organization.
    stranger_member = api_client(live_api, other_tenant.keys["member"])
    stranger_admin = api_client(live_api, other_tenant.keys["admin"])
    _, _, stranger_queue, _ = await new_execution(stranger_member)
    stranger = await worker_activities(stranger_admin, live_api, stranger_queue, tmp_path / "x")
    with pytest.raises(ApplicationError):
        await run(rig, call, stranger)
    assert not (tmp_path / "x").exists()
    for activities in (intruder, stranger):
        await activities.control_plane.aclose()
    await stranger_member.aclose()
    await stranger_admin.aclose()


async def test_mcp_tools_run_with_secrets_redacted(rig: Rig, db: asyncpg.Pool[Any]) -> None:
    probe = ToolSpec(
        name="mcp__box__env_probe",
        description="probe",
        input_schema={"type": "object"},
        source="mcp",
        category="mcp",
        mcp_server="box",
        configuration={"tool": "env_probe"},
    )
    outcome = await run(rig, rig.call(probe, {"names": ["PLAIN", "TOOL_SECRET"]}))
    assert outcome.status == "success", outcome.output
    values = json.loads(outcome.output)
    assert values["PLAIN"] == "plain-value"
    assert SECRET not in outcome.output and values["TOOL_SECRET"] != SECRET
    # A server the execution's environment does not have: the control plane refuses the call.
    gone = dataclasses.replace(probe, mcp_server="nowhere")
    missing = await run(rig, rig.call(gone, {"names": []}))
    assert missing.status == "denied" and "not one of this execution's tools" in missing.output
    assert SECRET not in json.dumps(await events(db, rig.execution_id))
