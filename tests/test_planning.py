"""Task planning end to end: the routes, PlanGenerationWorkflow on a real system worker process,
the planning tools reading the organization's rows, and the fake Anthropic API answering the
forced tool calls (or scripted to answer badly). Plus the replay of recorded histories and a
system worker killed mid-generation."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import CancelledError
from temporalio.worker import Replayer

from api.app import create_app
from controlplane.devtools.fake_anthropic import (
    FakeAnthropicClient,
    FakeAnthropicServer,
    FakeReply,
    tool_reply,
)
from controlplane.executions.events import CHANNEL
from controlplane.settings import Settings
from controlplane.system.worker import system_workflows
from tests.conftest import Tenant, assert_error, client_for
from tests.execution_helpers import make_agent, make_queue, read_stream
from tests.planning_helpers import start_system_worker, stop, wait_polled
from tests.test_bad_input import org_rows

HISTORIES = Path(__file__).parent / "histories" / "planning"
SONNET = (3.0, 15.0)  # the catalogue's prices of the default model, per million tokens
# What every step of the fake's default answer leaves in a plan's stream, in order.
TOOLS = {"list_agents", "list_teams", "list_environments", "list_worker_queues"}


@dataclass
class Planner:
    """An API app whose system task queue a system worker process serves."""

    app: Starlette
    task_queue: str
    process: subprocess.Popen[bytes] | None
    temporal: Client

    def client(self, tenant: Tenant, role: str = "member") -> httpx.AsyncClient:
        return client_for(self.app, tenant.keys[role])  # type: ignore[index]


@contextlib.asynccontextmanager
async def planner_stack(
    settings: Settings,
    fake: FakeAnthropicServer,
    *,
    model_key: str | None = "test-key",
    worker: bool = True,
) -> AsyncIterator[Planner]:
    task_queue = f"planning-test-{uuid.uuid4().hex[:8]}"
    app = create_app(
        dataclasses.replace(settings, system_task_queue=task_queue, planning_timeout_seconds=90)
    )
    process = start_system_worker(settings, task_queue, fake, model_key) if worker else None
    try:
        async with app.router.lifespan_context(app):
            temporal = await app.state.cp.temporal.system_client()
            if process is not None:
                await wait_polled(temporal, task_queue, process)
            yield Planner(app, task_queue, process, temporal)
    finally:
        stop(process)


@pytest.fixture(scope="module")
async def planner(settings: Settings, fake_llm: FakeAnthropicServer) -> AsyncIterator[Planner]:
    async with planner_stack(settings, fake_llm) as stack:
        yield stack


@pytest.fixture
def fake(fake_llm: FakeAnthropicServer) -> FakeAnthropicClient:
    return FakeAnthropicClient(fake_llm.base_url)


def token() -> str:
    return f"plan-{uuid.uuid4().hex[:12]}"


async def record(planner: Planner, execution_id: str, name: str) -> None:
    """With RECORD_HISTORIES=1, keep the generation's history for the replay test below."""
    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    handle = planner.temporal.get_workflow_handle(f"plan-{execution_id}")
    history = await handle.fetch_history()
    HISTORIES.mkdir(parents=True, exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


def task(ident: int, dependencies: list[int]) -> dict[str, Any]:
    return {
        "id": ident,
        "title": f"Task {ident}",
        "description": "Do the thing",
        "details": "Carefully",
        "test_strategy": "Check it worked",
        "priority": "high",
        "dependencies": dependencies,
    }


def valid_plan(agent_name: str | None, tasks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "title": "Rotate the TLS certificates",
        "summary": "Renew and roll out the certificates",
        "complexity": {"story_points": 3, "confidence": "medium", "reasoning": "Routine"},
        "team_breakdown": [
            {
                "team_name": "Platform",
                "agent_name": agent_name,
                "responsibilities": ["renew", "roll out"],
                "estimated_time_hours": 2.0,
                "estimated_input_tokens": 120_000,
                "estimated_output_tokens": 30_000,
                "expected_tools": [{"tool_name": "shell", "estimated_calls": 12}],
                "tasks": tasks if tasks is not None else [task(1, []), task(2, [1])],
            }
        ],
        "risks": ["Expired intermediate"],
        "prerequisites": [],
        "success_criteria": ["Certificates valid for a year"],
        "has_questions": False,
        "questions": [],
        "execution_prompt": "Rotate the certificates",
        "without_kubiya_resources": [{"role": "SRE", "hourly_rate": 120.0, "estimated_hours": 6.0}],
    }


GENERATED: FakeReply = {}  # a reply with no content: the fake generates the forced tool call


async def organization(tenant: Tenant, tok: str) -> dict[str, Any]:
    """An environment with a worker queue, and an agent on Haiku (1 and 5 USD per million)."""
    queue = await make_queue(tenant, f"env-{tok[-6:]}")
    response = await tenant.member.post(
        "/api/v1/agents",
        json={
            "name": f"certs-{tok[-6:]}",
            "model_id": "anthropic/claude-haiku-4-5",
            "description": "Rotates certificates",
            "capabilities": ["tls"],
        },
    )
    assert response.status_code == 201, response.text
    return {"queue": queue, "agent": response.json()}


async def wait_for_event(
    settings: Settings, execution_id: str, wanted: str, timeout: float = 90
) -> dict[str, Any]:
    """The first event of the execution matching `wanted` (an event type, or `progress:STAGE`),
    waiting on the NOTIFY each event append sends (an in-process client would buffer a stream
    until it ends)."""
    conn = await asyncpg.connect(settings.database_url)
    woken = asyncio.Event()
    await conn.add_listener(CHANNEL, lambda *args: woken.set())
    kind, _, stage = wanted.partition(":")
    try:
        async with asyncio.timeout(timeout):
            while True:
                woken.clear()
                for row in await conn.fetch(
                    "SELECT event_type, data FROM execution_events WHERE execution_id = $1 "
                    "ORDER BY seq",
                    uuid.UUID(execution_id),
                ):
                    data = json.loads(row["data"])
                    if row["event_type"] == kind and (not stage or data.get("stage") == stage):
                        return dict(data)
                await woken.wait()
    finally:
        await conn.close()


async def events_of(db: asyncpg.Pool[Any], execution_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = await db.fetch(
        "SELECT event_type, data FROM execution_events WHERE execution_id = $1 ORDER BY seq",
        uuid.UUID(execution_id),
    )
    return [(row["event_type"], row["data"]) for row in rows]


# --- the synchronous route -------------------------------------------------------------------


async def test_plan_through_http(
    planner: Planner, tenant: Tenant, fake: FakeAnthropicClient, db: asyncpg.Pool[Any]
) -> None:
    tok = token()
    org = await organization(tenant, tok)
    agent, queue = org["agent"], org["queue"]
    fake.script(tok, [GENERATED, tool_reply("submit_plan", valid_plan(agent["name"]))])
    response = await planner.client(tenant).post(
        "/api/v1/tasks/plan", json={"description": f"Rotate the TLS certificates {tok}"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    plan, execution_id = body["plan"], body["execution_id"]

    # The analysis chose from the organization's own rows (the fake takes the first of each
    # enum), and the names came back as ids.
    chosen = plan["recommended_execution"]
    assert chosen["entity_type"] == "agent"
    assert (chosen["entity_id"], chosen["entity_name"]) == (agent["id"], agent["name"])
    assert chosen["recommended_worker_queue_id"] == queue["id"]
    assert chosen["recommended_environment_id"] == queue["environment_id"]
    assert plan["selected_environment_id"] == queue["environment_id"]
    assert plan["selected_agent_model_id"] == "anthropic/claude-haiku-4-5"
    (stream,) = plan["team_breakdown"]
    assert stream["agent_id"] == agent["id"] and stream["team_id"] is None
    assert [t["id"] for t in stream["tasks"]] == [1, 2]
    assert all(t["agent_id"] == agent["id"] for t in stream["tasks"])
    assert all(t["worker_queue_id"] == queue["id"] for t in stream["tasks"])
    assert stream["tasks"][1]["dependencies"] == [1]

    # Costs come from the catalogue's prices of the agent's model (Haiku: 1 and 5 USD/M).
    info = stream["model_info"]
    assert info["model_id"] == "anthropic/claude-haiku-4-5"
    assert (info["cost_per_1k_input_tokens"], info["cost_per_1k_output_tokens"]) == (0.001, 0.005)
    assert info["total_model_cost"] == pytest.approx(0.12 + 0.15)
    assert plan["cost_estimate"]["estimated_cost_usd"] == pytest.approx(0.27)
    assert plan["cost_estimate"]["llm_costs"][0]["total_cost"] == pytest.approx(0.27)
    savings = plan["realized_savings"]
    assert savings["without_kubiya_cost"] == 720.0 and savings["with_kubiya_hours"] == 2.0
    assert savings["money_saved"] == pytest.approx(719.73)
    assert savings["time_saved_percentage"] == pytest.approx(66.67)

    # Two forced tool calls, with the organization's names in the schemas.
    requests = fake.bodies(tok)
    assert [r["tool_choice"] for r in requests] == [
        {"type": "tool", "name": "submit_analysis"},
        {"type": "tool", "name": "submit_plan"},
    ]
    analysis_schema = requests[0]["tools"][0]["input_schema"]
    names = analysis_schema["properties"]["selected_entity_name"]["anyOf"][0]["enum"]
    assert agent["name"] in names

    # The generation is an execution of its own type, with per-step usage at the planner's prices.
    execution = (await tenant.viewer.get(f"/api/v1/executions/{execution_id}")).json()
    assert execution["execution_type"] == "plan_generation"
    assert execution["status"] == "completed"
    assert execution["temporal_workflow_id"] == f"plan-{execution_id}"
    usage = execution["usage"]
    assert [step["step"] for step in usage["steps"]] == ["analysis", "plan"]
    for step in usage["steps"]:
        expected = step["input_tokens"] * SONNET[0] / 1e6 + step["output_tokens"] * SONNET[1] / 1e6
        assert step["cost_usd"] == pytest.approx(expected)
        assert step["model"] == "anthropic/claude-sonnet-4-5" and step["calls"] == 1
    # The planning tools read what the request left out.
    called = [
        data["tool_name"] for kind, data in await events_of(db, execution_id) if kind == "tool_call"
    ]
    assert set(called) == TOOLS
    await record(planner, execution_id, "plan_generated")


async def test_the_stream_sends_the_planning_events_in_order(
    planner: Planner, tenant: Tenant
) -> None:
    tok = token()
    await organization(tenant, tok)
    lines: list[str] = []
    async with planner.client(tenant).stream(
        "POST", "/api/v1/tasks/plan/stream", json={"description": f"Plan {tok}"}, timeout=90
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        execution_id = response.headers["x-execution-id"]
        lines = [line async for line in response.aiter_lines()]
    assert not any(line.startswith("id:") for line in lines)  # no ids, as Kubiya's
    events: list[tuple[str, dict[str, Any]]] = []
    for kind, data in zip(lines[0::3], lines[1::3], strict=False):
        assert kind.startswith("event: ") and data.startswith("data: "), (kind, data)
        events.append((kind[7:], json.loads(data[6:])))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "complete"
    assert set(kinds) == {"progress", "tool_call", "tool_result", "complete"}
    progress = [data["progress"] for kind, data in events if kind == "progress"]
    assert progress == [0, 5, 25, 50] and events[0][1]["execution_id"] == execution_id
    # Each tool's call comes before its result, all between the start and the analysis.
    analysis_at = kinds.index("progress", 2)
    for tool in TOOLS:
        call = next(
            i for i, (k, d) in enumerate(events) if k == "tool_call" and d["tool_name"] == tool
        )
        result = next(
            i for i, (k, d) in enumerate(events) if k == "tool_result" and d["tool_name"] == tool
        )
        assert 1 < call < result < analysis_at
        assert {"tool_id", "step", "timestamp"} <= set(events[call][1])
        assert events[result][1]["status"] == "success" and "duration" in events[result][1]
    complete = events[-1][1]
    assert complete["progress"] == 100 and complete["plan"]["title"] == "fake title"
    assert complete["plan"]["team_breakdown"][0]["tasks"][0]["id"] == 1


async def test_generate_then_poll(planner: Planner, tenant: Tenant) -> None:
    tok = token()
    client = planner.client(tenant)
    response = await client.post("/api/v1/plans/generate", json={"description": f"Later {tok}"})
    assert response.status_code == 200, response.text
    accepted = response.json()
    execution_id = accepted["execution_id"]
    assert accepted["workflow_id"] == f"plan-{execution_id}"
    assert accepted["status"] == "pending"
    # The generation's events stream like any execution's, ending with `done`.
    streamed = await read_stream(client, execution_id)
    assert [kind for _, kind, _ in streamed].count("done") == 1, streamed
    generation = (await client.get(accepted["status_url"])).json()
    assert generation["status"] == "completed"
    assert generation["plan"]["title"] == "fake title" and generation["error"] is None
    assert generation["planner_model"] == "anthropic/claude-sonnet-4-5"
    assert generation["analysis"]["task_summary"] == "fake task_summary"
    assert generation["usage"]["model_calls"] == 2
    assert generation["completed_at"] is not None


# --- invalid answers ---------------------------------------------------------------------------


async def test_an_invalid_answer_is_repaired(
    planner: Planner, tenant: Tenant, fake: FakeAnthropicClient, db: asyncpg.Pool[Any]
) -> None:
    tok = token()
    bad = {"task_summary": "", "story_points_estimate": 40}
    fake.script(tok, [tool_reply("submit_analysis", bad)])  # then the generated, valid answer
    response = await planner.client(tenant).post(
        "/api/v1/tasks/plan", json={"description": f"Repair me {tok}"}
    )
    assert response.status_code == 200, response.text
    requests = fake.bodies(tok)
    assert len(requests) == 3  # analysis, its repair, the plan
    # The repair call shows the model its answer and what was wrong with it.
    assistant, result = requests[1]["messages"][1:]
    assert assistant["content"][0]["input"] == bad
    feedback = result["content"][0]
    assert feedback["type"] == "tool_result" and feedback["is_error"] is True
    assert "task_summary" in feedback["content"] and "story_points_estimate" in feedback["content"]
    execution_id = response.json()["execution_id"]
    usage = await planner.client(tenant, "viewer").get(f"/api/v1/plans/generation/{execution_id}")
    analysis = usage.json()["usage"]["steps"][0]
    assert analysis["step"] == "analysis" and analysis["calls"] == 2
    stages = [d.get("stage") for k, d in await events_of(db, execution_id) if k == "progress"]
    assert stages == ["begin", "analysis", "analysis_repair", "plan"]
    await record(planner, execution_id, "plan_repaired")


async def test_an_answer_invalid_twice_is_a_clear_error(
    planner: Planner, tenant: Tenant, fake: FakeAnthropicClient
) -> None:
    tok = token()
    cyclic = valid_plan(None, [task(1, [2]), task(2, [1])])
    missing = {"title": "No tasks"}
    fake.script(
        tok, [GENERATED, tool_reply("submit_plan", cyclic), tool_reply("submit_plan", missing)]
    )
    client = planner.client(tenant)
    response = await client.post("/api/v1/tasks/plan", json={"description": f"Fail {tok}"})
    error = assert_error(response, 502, "BAD_GATEWAY")
    assert "did not validate, twice" in error["message"]
    details = error["details"]
    assert details["kind"] == "invalid_model_output" and details["step"] == "plan"
    assert any(e.startswith("summary:") for e in details["errors"]), details
    assert any(e.startswith("team_breakdown:") for e in details["errors"]), details
    # The first answer's own error was shown to the model in the repair call.
    repair = fake.bodies(tok)[2]["messages"][2]["content"][0]["content"]
    assert "cycle (1 -> 2 -> 1)" in repair
    generation = (await client.get(f"/api/v1/plans/generation/{details['execution_id']}")).json()
    assert generation["status"] == "failed" and generation["plan"] is None
    assert generation["error"]["kind"] == "invalid_model_output"
    await record(planner, details["execution_id"], "plan_invalid_twice")


# --- the official client, tenants, bad input -------------------------------------------------


async def test_the_official_clients_call_shape(
    planner: Planner, tenant: Tenant, fake: FakeAnthropicClient, db: asyncpg.Pool[Any]
) -> None:
    """kubiya-sdk's `ControlPlaneClient.task_planning.plan(task_description, context)`: POST
    /api/v1/planning/plan with `{"task_description", "context"}`, `UserKey` auth."""
    tok = token()
    agents = [{"id": str(uuid.uuid4()), "name": "sdk-agent", "model_id": "kubiya/claude-sonnet-4"}]
    client = client_for(
        planner.app,
        Authorization=f"UserKey {tenant.keys['member']}",
        **{"User-Agent": "kubiya-control-plane@2.1.6", "Content-Type": "application/json"},
    )
    response = await client.post(
        "/api/v1/planning/plan",
        json={
            "task_description": f"Audit IAM {tok}",
            "context": {"priority": "high", "agents": agents},
        },
    )
    assert response.status_code == 200, response.text
    plan = response.json()["plan"]
    # The context's agents were the planner's choice (no list_agents read), names to their ids.
    assert plan["recommended_execution"]["entity_id"] == agents[0]["id"]
    assert plan["team_breakdown"][0]["agent_id"] == agents[0]["id"]
    assert plan["team_breakdown"][0]["model_info"]["model_id"] == "anthropic/claude-sonnet-4"
    first = fake.bodies(tok)[0]
    prompt = first["messages"][0]["content"]
    assert "Priority: high" in prompt and "sdk-agent" in prompt
    execution_id = response.json()["execution_id"]
    called = {d["tool_name"] for k, d in await events_of(db, execution_id) if k == "tool_call"}
    assert called == TOOLS - {"list_agents"}


async def test_another_organizations_generation_is_not_found(
    planner: Planner, tenant: Tenant, other_tenant: Tenant
) -> None:
    response = await planner.client(tenant).post(
        "/api/v1/plans/generate", json={"description": f"Mine {token()}"}
    )
    execution_id = response.json()["execution_id"]
    missing = str(uuid.uuid4())
    for ident in (execution_id, missing):
        got = await planner.client(other_tenant, "viewer").get(f"/api/v1/plans/generation/{ident}")
        error = assert_error(got, 404, "RESOURCE_NOT_FOUND")
        assert error["message"] == f"Plan generation '{ident}' not found"
    # An execution of another kind is not a plan generation.
    queue = await make_queue(tenant, "not-a-plan")
    agent_id = await make_agent(tenant, token())
    started = await tenant.member.post(
        f"/api/v1/agents/{agent_id}/execute", json={"prompt": "hi", "worker_queue_id": queue["id"]}
    )
    agent_run = started.json()["execution_id"]
    got = await planner.client(tenant, "viewer").get(f"/api/v1/plans/generation/{agent_run}")
    assert_error(got, 404, "RESOURCE_NOT_FOUND")
    # A plan generation takes no signals.
    refused = await planner.client(tenant).post(
        f"/api/v1/executions/{execution_id}/message", json={"message": "more"}
    )
    assert_error(refused, 409, "RESOURCE_CONFLICT")


BAD_BODIES: list[tuple[Any, str]] = [
    ({}, "description"),
    ({"description": ""}, "description"),
    ({"description": "x", "priority": "urgent"}, "priority"),
    ({"description": "x", "iteration": 0}, "iteration"),
    ({"description": "x", "agents": [{"id": "a"}]}, "agents.0.name"),
    (
        {"description": "x", "worker_queues": [{"id": "q", "name": "q", "active_workers": -1}]},
        "worker_queues.0.active_workers",
    ),
    ({"description": "x", "planning_strategy": "guess"}, "planning_strategy"),
    (["description"], "body"),
]


async def test_bad_input_is_refused_and_writes_nothing(
    planner: Planner, tenant: Tenant, other_tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    client = planner.client(tenant)
    created = await other_tenant.member.post(
        "/api/v1/projects", json={"name": "theirs", "key": f"P{uuid.uuid4().hex[:6].upper()}"}
    )
    assert created.status_code == 201, created.text
    project = created.json()["id"]
    before = await org_rows(db, tenant.id)
    paths = (
        "/api/v1/tasks/plan",
        "/api/v1/planning/plan",
        "/api/v1/tasks/plan/stream",
        "/api/v1/plans/generate",
    )
    for path in paths:
        for body, field in BAD_BODIES:
            error = assert_error(await client.post(path, json=body), 422, "VALIDATION_ERROR")
            fields = [item["field"] for item in error["details"]["validation_errors"]]
            assert field in fields, (path, body, fields)
        # Another organization's project is not found, as a missing one.
        response = await client.post(path, json={"description": "x", "project_id": project})
        assert_error(response, 404, "RESOURCE_NOT_FOUND")
    assert await org_rows(db, tenant.id) == before
    viewer = planner.client(tenant, "viewer")
    assert_error(await viewer.post("/api/v1/tasks/plan", json={"description": "x"}), 403)
    assert await org_rows(db, tenant.id) == before


async def test_health_says_what_planning_needs(planner: Planner, tenant: Tenant) -> None:
    health = (await planner.client(tenant, "viewer").get("/api/v1/tasks/plan/health")).json()
    assert health["status"] == "healthy" and health["system_worker"] is True
    assert health["planner_model"] == "anthropic/claude-sonnet-4-5"
    assert health["task_queue"] == planner.task_queue and health["problems"] == []


# --- no model key, no system worker ------------------------------------------------------------


async def test_no_model_key_is_503_not_a_hang(
    settings: Settings, fake_llm: FakeAnthropicServer, tenant: Tenant, fake: FakeAnthropicClient
) -> None:
    tok = token()
    async with planner_stack(settings, fake_llm, model_key=None) as keyless:
        client = keyless.client(tenant)
        response = await client.post("/api/v1/tasks/plan", json={"description": f"No key {tok}"})
        error = assert_error(response, 503, "SERVICE_UNAVAILABLE")
        assert "ANTHROPIC_API_KEY is not set on the system worker" in error["message"]
        assert error["details"]["kind"] == "model_not_configured"
        generation = await client.get(
            f"/api/v1/plans/generation/{error['details']['execution_id']}"
        )
        assert generation.json()["status"] == "failed"
    assert fake.requests(tok) == []  # it failed before calling anything


async def test_no_system_worker_is_503_and_writes_nothing(
    settings: Settings, fake_llm: FakeAnthropicServer, tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    async with planner_stack(settings, fake_llm, worker=False) as idle:
        before = await org_rows(db, tenant.id)
        client = idle.client(tenant)
        for path in ("/api/v1/tasks/plan", "/api/v1/tasks/plan/stream"):
            error = assert_error(await client.post(path, json={"description": "x"}), 503)
            assert "No system worker serves task queue" in error["message"]
        assert await org_rows(db, tenant.id) == before
        health = (await idle.client(tenant, "viewer").get("/api/v1/tasks/plan/health")).json()
        assert health["status"] == "degraded" and health["system_worker"] is False


async def test_a_generation_can_be_cancelled(
    planner: Planner, tenant: Tenant, fake: FakeAnthropicClient, settings: Settings
) -> None:
    """Through the executions API: the workflow lives in the control plane's namespace."""
    tok = token()
    fake.script(tok, [{"delay_per_chunk_ms": 200}])  # a slow analysis
    client = planner.client(tenant)
    response = await client.post("/api/v1/plans/generate", json={"description": f"Stop {tok}"})
    execution_id = response.json()["execution_id"]
    await asyncio.to_thread(fake.wait_requests, tok, 1)
    cancelled = await client.post(f"/api/v1/executions/{execution_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["workflow_id"] == f"plan-{execution_id}"
    await wait_for_event(settings, execution_id, "error")
    generation = (await client.get(f"/api/v1/plans/generation/{execution_id}")).json()
    assert generation["status"] == "cancelled"
    assert generation["error"]["kind"] == "cancelled" and generation["plan"] is None
    handle = planner.temporal.get_workflow_handle(f"plan-{execution_id}")
    with pytest.raises(WorkflowFailureError) as ended:
        await asyncio.wait_for(handle.result(), 30)
    assert isinstance(ended.value.cause, CancelledError)
    await record(planner, execution_id, "plan_cancelled")


# --- a system worker killed mid-generation -----------------------------------------------------


async def test_a_generation_resumes_on_a_new_system_worker(
    settings: Settings,
    fake_llm: FakeAnthropicServer,
    tenant: Tenant,
    fake: FakeAnthropicClient,
    db: asyncpg.Pool[Any],
) -> None:
    tok = token()
    # The plan step streams slowly, so the system worker dies while it runs.
    fake.script(tok, [GENERATED, {"delay_per_chunk_ms": 100}])
    async with planner_stack(settings, fake_llm) as stack:
        client = stack.client(tenant)
        response = await client.post("/api/v1/plans/generate", json={"description": f"Kill {tok}"})
        execution_id = response.json()["execution_id"]
        await wait_for_event(settings, execution_id, "progress:plan")
        # The plan step's request has reached the model (which streams it for seconds).
        await asyncio.to_thread(fake.wait_requests, tok, 2)
        assert stack.process is not None
        stack.process.send_signal(signal.SIGKILL)
        stack.process.wait(10)
        replacement = start_system_worker(settings, stack.task_queue, fake_llm, "test-key")
        try:
            await wait_for_event(settings, execution_id, "done")
        finally:
            stop(replacement)
        generation = (await client.get(f"/api/v1/plans/generation/{execution_id}")).json()
    assert generation["status"] == "completed", generation
    # The analysis and the planning tools ran once; only the plan step ran again.
    steps = [body["tool_choice"]["name"] for body in fake.bodies(tok)]
    assert steps == ["submit_analysis", "submit_plan", "submit_plan"]
    kinds = [kind for kind, _ in await events_of(db, execution_id)]
    assert kinds.count("tool_call") == len(TOOLS) and kinds.count("done") == 1


# --- replay ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(HISTORIES.glob("*.json")), ids=lambda path: str(Path(path).stem)
)
async def test_recorded_plan_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=system_workflows()).replay_workflow(history)
    assert result.replay_failure is None


def test_plan_histories_were_recorded() -> None:
    recorded = {path.stem for path in HISTORIES.glob("*.json")}
    assert recorded >= {"plan_generated", "plan_repaired", "plan_invalid_twice", "plan_cancelled"}
