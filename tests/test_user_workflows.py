"""User-defined workflows end to end: CRUD and the checks of a definition, runs by
WorkflowInterpreterWorkflow on a real system worker process with agent steps on a real worker
process, approval steps approved and rejected, the status machine, other tenants; plus the
replay of recorded histories."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from controlplane.devtools.fake_anthropic import (
    AsyncFakeAnthropicClient,
    FakeAnthropicServer,
    text_reply,
)
from controlplane.settings import Settings
from controlplane.system.worker import system_workflows
from tests.conftest import Tenant, assert_error
from tests.execution_helpers import make_agent, make_queue
from tests.planning_helpers import start_system_worker, stop
from tests.run_helpers import (
    HISTORIES,
    Org,
    children,
    org_stack,
    other_client,
    record_run_history,
    token,
    until,
)
from tests.test_bad_input import org_rows
from tests.test_plan_execution import LONG, arrived
from tests.test_planning import planner_stack
from tests.test_team_execution import make_team


@pytest.fixture(scope="module")
async def org(
    app: Starlette,
    db: asyncpg.Pool[Any],
    settings: Settings,
    live_api: str,
    fake_llm: FakeAnthropicServer,
) -> AsyncIterator[Org]:
    async with org_stack(app, db, settings, live_api, fake_llm) as stack:
        yield stack


@pytest.fixture
def fake(fake_llm: FakeAnthropicServer) -> AsyncFakeAnthropicClient:
    return AsyncFakeAnthropicClient(fake_llm.base_url)


async def create(org: Org, steps: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    response = await org.client().post(
        "/api/v1/workflows",
        json={"name": f"wf-{uuid.uuid4().hex[:8]}", "steps": steps, **fields},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def start(org: Org, workflow_id: str, **inputs: Any) -> dict[str, Any]:
    response = await org.client().post(
        f"/api/v1/workflows/{workflow_id}/start",
        json={"inputs": inputs, "worker_queue_id": org.queue["id"]},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def get(org: Org, workflow_id: str) -> dict[str, Any]:
    response = await org.client("viewer").get(f"/api/v1/workflows/{workflow_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def until_status(
    settings: Settings, org: Org, workflow_id: str, *wanted: str
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await get(org, workflow_id)
        return body if body["status"] in wanted else None

    return await until(settings, check)


async def until_step(
    settings: Settings, org: Org, workflow_id: str, step_id: str, status: str
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await get(org, workflow_id)
        steps = body["state"]["steps"]
        return body if step_id in steps and steps[step_id]["status"] == status else None

    return await until(settings, check)


def agent_step(ident: str, agent_id: str, prompt: str, *after: str) -> dict[str, Any]:
    return {
        "id": ident,
        "type": "agent",
        "agent_id": agent_id,
        "prompt": prompt,
        "depends_on": list(after),
    }


def approval(ident: str, prompt: str, *after: str) -> dict[str, Any]:
    return {"id": ident, "type": "approval", "prompt": prompt, "depends_on": list(after)}


# --- a system worker killed mid-run ------------------------------------------------------------


async def test_a_run_resumes_on_a_new_system_worker_and_runs_nothing_twice(
    org: Org,
    settings: Settings,
    fake_llm: FakeAnthropicServer,
    fake: AsyncFakeAnthropicClient,
    db: asyncpg.Pool[Any],
) -> None:
    """WorkflowInterpreterWorkflow's crash test: its system worker is killed while a step's
    execution streams; a new one finishes the run, and no step runs twice."""
    first, second = token(), token()
    agent = await make_agent(org.tenant, token(), one_shot=True)
    await fake.script(first, [text_reply(f"first {LONG}", delay_per_chunk_ms=300)])
    await fake.script(second, [text_reply("second")])
    workflow = await create(
        org,
        [
            agent_step("one", agent, f"One {first}"),
            agent_step("two", agent, f"Two after {{{{steps.one.output}}}} {second}", "one"),
        ],
    )
    async with planner_stack(settings, fake_llm) as stack:
        # Started through this stack's app, so the run goes to the system worker killed below.
        started = await stack.client(org.tenant).post(
            f"/api/v1/workflows/{workflow['id']}/start",
            json={"inputs": {}, "worker_queue_id": org.queue["id"]},
        )
        assert started.status_code == 200, started.text
        await arrived(fake, first)  # step one streams; the run's worker awaits it
        assert stack.process is not None
        stack.process.kill()
        await asyncio.to_thread(stack.process.wait, 10)
        replacement = start_system_worker(settings, stack.task_queue, fake_llm, "test-key")
        try:
            done = await until_status(settings, org, workflow["id"], "completed", "failed")
        finally:
            await asyncio.to_thread(stop, replacement)
    assert done["status"] == "completed", done
    steps = done["state"]["steps"]
    assert steps["one"]["output"] == f"first {LONG}"
    assert steps["two"]["output"] == "second"
    assert steps["two"]["prompt"] == f"Two after first {LONG} {second}"
    # One execution per step, one model call per step: nothing ran twice.
    assert set(await children(db, done["state"]["run_id"])) == {"one", "two"}
    assert len(await fake.requests(first)) == 1 and len(await fake.requests(second)) == 1


# --- an approval step, approved ----------------------------------------------------------------


async def test_a_workflow_with_an_approval_step_approved(
    org: Org, settings: Settings, fake: AsyncFakeAnthropicClient, db: asyncpg.Pool[Any]
) -> None:
    draft_tok, publish_tok = token(), token()
    agent = await make_agent(org.tenant, token(), one_shot=True)
    await fake.script(draft_tok, [text_reply("A draft about cats.")])
    await fake.script(publish_tok, [text_reply("Published.")])
    workflow = await create(
        org,
        [
            agent_step("draft", agent, f"Draft a post about {{{{inputs.topic}}}} {draft_tok}"),
            approval("review", "Publish this? {{steps.draft.output}}", "draft"),
            agent_step(
                "publish",
                agent,
                f"Publish {{{{steps.draft.output}}}} ({{{{steps.review.output}}}}) {publish_tok}",
                "review",
            ),
        ],
        description="Draft, review, publish",
    )
    assert workflow["status"] == "pending" and workflow["state"]["steps"] == {}
    ident = workflow["id"]
    started = await start(org, ident, topic="cats")
    assert started["status"] == "running" and started["state"]["inputs"] == {"topic": "cats"}
    assert set(started["state"]["steps"]) == {"draft", "review", "publish"}

    waiting = await until_step(settings, org, ident, "review", "waiting_for_approval")
    assert waiting["status"] == "running" and waiting["current_step"] == "review"
    steps = waiting["state"]["steps"]
    assert (
        steps["draft"]["status"] == "completed"
        and steps["draft"]["output"] == "A draft about cats."
    )
    assert steps["draft"]["prompt"] == f"Draft a post about cats {draft_tok}"
    assert steps["review"]["prompt"] == "Publish this? A draft about cats."
    assert steps["publish"]["status"] == "pending"
    run_id = waiting["state"]["run_id"]
    run = (await org.tenant.viewer.get(f"/api/v1/executions/{run_id}")).json()
    assert run["execution_type"] == "workflow" and run["status"] == "waiting_for_input"
    # An agent step takes no decision; the approval step takes one.
    not_approval = await org.client().post(
        f"/api/v1/workflows/{ident}/steps/draft/approve", json={}
    )
    assert_error(not_approval, 400, "BAD_REQUEST")
    unknown = await org.client().post(f"/api/v1/workflows/{ident}/steps/nope/approve", json={})
    assert_error(unknown, 404, "RESOURCE_NOT_FOUND")
    approved = await org.client().post(
        f"/api/v1/workflows/{ident}/steps/review/approve", json={"comment": "ship it"}
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["decision"] == "approved" and approved.json()["run_id"] == run_id

    done = await until_status(settings, org, ident, "completed", "failed")
    assert done["status"] == "completed", done
    steps = done["state"]["steps"]
    assert steps["review"]["status"] == "completed" and steps["review"]["output"] == "ship it"
    assert steps["review"]["decided_by"] is not None
    assert steps["publish"]["output"] == "Published."
    assert steps["publish"]["prompt"] == f"Publish A draft about cats. (ship it) {publish_tok}"
    assert done["started_at"] is not None and done["completed_at"] is not None
    assert done["current_step"] is None and done["error_message"] is None
    runs = await children(db, run_id)
    assert set(runs) == {"draft", "publish"}  # the approval is no execution
    # A decision that comes late is refused.
    late = await org.client().post(f"/api/v1/workflows/{ident}/steps/review/approve", json={})
    assert_error(late, 400, "BAD_REQUEST")
    listed = (await org.client("viewer").get(f"/api/v1/workflows/{ident}/runs")).json()
    assert listed["total"] == 1 and listed["items"][0]["run_id"] == run_id
    assert listed["items"][0]["status"] == "completed"
    assert listed["items"][0]["inputs"] == {"topic": "cats"}
    await record_run_history(org, f"workflow-execution-{run_id}", "workflow_approved")


# --- an approval step, rejected ----------------------------------------------------------------


async def test_a_rejected_step_skips_what_follows_it_not_the_rest(
    org: Org, settings: Settings, fake: AsyncFakeAnthropicClient, db: asyncpg.Pool[Any]
) -> None:
    side_tok = token()
    agent = await make_agent(org.tenant, token(), one_shot=True)
    await fake.script(side_tok, [text_reply("Side work done.")])
    workflow = await create(
        org,
        [
            approval("gate", "Deploy to production?"),
            agent_step("deploy", agent, "Deploy", "gate"),
            agent_step("notes", agent, f"Write release notes {side_tok}"),
        ],
    )
    ident = workflow["id"]
    await start(org, ident)
    await until_step(settings, org, ident, "gate", "waiting_for_approval")
    rejected = await org.client().post(
        f"/api/v1/workflows/{ident}/steps/gate/reject", json={"comment": "not today"}
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["decision"] == "rejected"
    done = await until_status(settings, org, ident, "completed", "failed")
    assert done["status"] == "failed", done
    steps = done["state"]["steps"]
    assert steps["gate"]["status"] == "rejected"
    assert "not today" in steps["gate"]["error_message"]
    assert steps["deploy"]["status"] == "skipped" and steps["deploy"]["execution_id"] is None
    assert steps["notes"]["status"] == "completed" and steps["notes"]["output"] == "Side work done."
    assert "2 of 3 steps did not complete" in done["error_message"]
    assert set(await children(db, done["state"]["run_id"])) == {"notes"}
    await record_run_history(
        org, f"workflow-execution-{done['state']['run_id']}", "workflow_rejected"
    )


# --- the status machine ------------------------------------------------------------------------


async def test_the_status_machine(org: Org, settings: Settings, db: asyncpg.Pool[Any]) -> None:
    """Backed by the run's workflow: approval steps keep it running without any model."""
    workflow = await create(org, [approval("first", "Go?"), approval("second", "And?", "first")])
    ident, client = workflow["id"], org.client()

    async def act(action: str) -> Any:
        return await client.post(f"/api/v1/workflows/{ident}/{action}")

    # Nothing runs yet: no action but start.
    for action in ("pause", "resume", "cancel", "complete"):
        assert_error(await act(action), 400, "BAD_REQUEST")
    await start(org, ident)
    again = await client.post(
        f"/api/v1/workflows/{ident}/start", json={"worker_queue_id": org.queue["id"]}
    )
    assert assert_error(again, 400, "BAD_REQUEST")["message"] == "Workflow is already running"
    await until_step(settings, org, ident, "first", "waiting_for_approval")
    assert_error(await act("resume"), 400)  # only from paused
    assert_error(await client.delete(f"/api/v1/workflows/{ident}"), 400)  # running

    paused = await act("pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    await until_status(settings, org, ident, "paused")
    assert_error(await act("pause"), 400)  # only from running
    # Paused: an approval is taken, but the next step does not start.
    await client.post(f"/api/v1/workflows/{ident}/steps/first/approve", json={})
    body = await until_step(settings, org, ident, "first", "completed")
    assert body["status"] == "paused" and body["state"]["steps"]["second"]["status"] == "pending"
    assert (await act("resume")).status_code == 200
    await until_step(settings, org, ident, "second", "waiting_for_approval")
    assert (await get(org, ident))["status"] == "running"

    # Complete ends the run completed, stopping what still waits.
    assert (await act("complete")).status_code == 200
    done = await until_status(settings, org, ident, "completed")
    assert done["state"]["steps"]["second"]["status"] == "cancelled"
    assert done["completed_at"] is not None
    for action in ("pause", "resume", "cancel", "complete"):
        assert_error(await act(action), 400)

    # A new run; cancel ends it.
    second_run = (await start(org, ident))["state"]["run_id"]
    assert second_run != done["state"]["run_id"]
    await until_step(settings, org, ident, "first", "waiting_for_approval")
    cancelled = await act("cancel")
    assert cancelled.status_code == 200 and cancelled.json()["run_id"] == second_run
    body = await until_status(settings, org, ident, "cancelled")
    assert body["state"]["steps"] == {
        "first": body["state"]["steps"]["first"] | {"status": "cancelled"},
        "second": body["state"]["steps"]["second"] | {"status": "skipped"},
    }
    assert_error(await act("cancel"), 400)
    runs = (await org.client("viewer").get(f"/api/v1/workflows/{ident}/runs")).json()
    assert [r["status"] for r in runs["items"]] == ["cancelled", "completed"]
    # A run takes no message as a whole; its state changes reached webhook subscribers.
    message = await client.post(f"/api/v1/executions/{second_run}/message", json={"message": "x"})
    assert_error(message, 409, "RESOURCE_CONFLICT")
    changes = await db.fetch(
        "SELECT payload FROM outbox_events WHERE event_type = 'workflow.state_changed' "
        "AND payload->'data'->>'execution_id' = $1 ORDER BY id",
        second_run,
    )
    assert [c["payload"]["data"]["status"] for c in changes][-1] == "cancelled"
    assert changes[0]["payload"]["data"]["workflow_id"] == ident
    deleted = await client.delete(f"/api/v1/workflows/{ident}")
    assert deleted.status_code == 200 and deleted.json() == {"id": ident, "deleted": True}
    await record_run_history(org, f"workflow-execution-{second_run}", "workflow_cancelled")


# --- definitions: CRUD and their checks --------------------------------------------------------


async def test_crud_and_a_definitions_checks(
    org: Org, other_tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    client = org.client()
    agent = await make_agent(org.tenant, token())
    team = await make_team(org.tenant, token(), [agent])
    theirs = await make_agent(other_tenant, token())
    created = await create(
        org,
        [
            agent_step("a", agent, "Go"),
            {
                "id": "t",
                "type": "team",
                "team_id": team["id"],
                "prompt": "{{steps.a.output}}",
                "depends_on": ["a"],
            },
            approval("ok", "{{steps.a.output}} then {{steps.t.output}}", "t"),
        ],
        configuration={"owner": "ops"},
        team_id=team["id"],
    )
    ident = created["id"]
    assert created["team_id"] == team["id"] and created["configuration"] == {"owner": "ops"}
    assert [s["id"] for s in created["steps"]] == ["a", "t", "ok"]
    patched = await client.patch(f"/api/v1/workflows/{ident}", json={"description": "New"})
    assert patched.status_code == 200 and patched.json()["description"] == "New"
    listed = (await client.get("/api/v1/workflows", params={"team_id": team["id"]})).json()
    assert [w["id"] for w in listed["items"]] == [ident]
    pending = (await client.get("/api/v1/workflows", params={"status_filter": "pending"})).json()
    assert ident in [w["id"] for w in pending["items"]]

    before = await org_rows(db, org.tenant.id)
    bad: list[tuple[list[dict[str, Any]], str]] = [
        ([approval("a", "", "b"), approval("b", "", "a")], "cycle (a -> b -> a)"),
        ([approval("a", "", "zz")], "depends on 'zz', which is not a step"),
        ([approval("a", ""), approval("a", "")], "step id 'a' is used twice"),
        ([agent_step("a", theirs, "Go")], "is not an agent of your organization"),
        ([agent_step("a", str(uuid.uuid4()), "Go")], "is not an agent of your organization"),
        (
            [{"id": "t", "type": "team", "team_id": str(uuid.uuid4()), "prompt": "Go"}],
            "is not a team of your organization",
        ),
        (
            [approval("a", "x"), approval("b", "{{steps.a.output}}")],
            "uses the output of step 'a', which it does not depend on",
        ),
        ([approval("a", "{{steps.a}}")], "is not {{inputs.NAME}} or {{steps.ID.output}}"),
    ]
    for steps, message in bad:
        for response in (
            await client.post("/api/v1/workflows", json={"name": "bad", "steps": steps}),
            await client.patch(f"/api/v1/workflows/{ident}", json={"steps": steps}),
        ):
            error = assert_error(response, 422, "VALIDATION_ERROR")
            assert any(message in e for e in error["details"]["errors"]), (message, error)
    shapes: list[tuple[dict[str, Any], str]] = [
        ({"name": "x", "steps": [{"id": "a", "type": "agent", "prompt": "Go"}]}, "steps.0"),
        ({"name": "x", "steps": [{"id": "a", "type": "agent", "agent_id": agent}]}, "steps.0"),
        ({"name": "x", "steps": [{"id": "a b", "type": "approval"}]}, "steps.0.id"),
        ({"name": "x", "steps": [{"id": "a", "type": "script"}]}, "steps.0.type"),
        ({"name": "x", "steps": [approval("a", "") | {"agent_id": agent}]}, "steps.0"),
        ({"name": ""}, "name"),
        ({"name": "x", "team_id": str(uuid.uuid4())}, "errors"),
    ]
    for body, field in shapes:
        error = assert_error(await client.post("/api/v1/workflows", json=body), 422)
        fields = [e["field"] for e in (error["details"] or {}).get("validation_errors", [])]
        assert field in fields or field in (error["details"] or {}), (body, error)
    for field in ("status", "current_step", "state"):
        value = {} if field == "state" else "running"
        response = await client.patch(f"/api/v1/workflows/{ident}", json={field: value})
        error = assert_error(response, 422, "VALIDATION_ERROR")
        assert "read-only" in error["details"]["validation_errors"][0]["message"]
    duplicate = await client.post("/api/v1/workflows", json={"name": created["name"], "steps": []})
    assert_error(duplicate, 409, "RESOURCE_CONFLICT")
    assert await org_rows(db, org.tenant.id) == before
    # A start checks its inputs, its queue and the definition (agents deleted since).
    inputs = await create(org, [agent_step("a", agent, "About {{inputs.topic}}")])
    missing = await client.post(
        f"/api/v1/workflows/{inputs['id']}/start", json={"worker_queue_id": org.queue["id"]}
    )
    assert "Inputs missing: topic" in assert_error(missing, 422)["message"]
    empty = await create(org, [])
    no_steps = await client.post(
        f"/api/v1/workflows/{empty['id']}/start", json={"worker_queue_id": org.queue["id"]}
    )
    assert_error(no_steps, 422)
    before = await org_rows(db, org.tenant.id)
    theirs_queue = await make_queue(other_tenant, "theirs")
    for queue in (theirs_queue["id"], str(uuid.uuid4())):
        response = await client.post(
            f"/api/v1/workflows/{inputs['id']}/start",
            json={"inputs": {"topic": "x"}, "worker_queue_id": queue},
        )
        assert_error(response, 404, "RESOURCE_NOT_FOUND")
    assert_error(
        await org.client("viewer").post(
            f"/api/v1/workflows/{inputs['id']}/start",
            json={"inputs": {"topic": "x"}, "worker_queue_id": org.queue["id"]},
        ),
        403,
    )
    assert await org_rows(db, org.tenant.id) == before

    # Another organization sees none of it.
    other = other_client(org, other_tenant)
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/api/v1/workflows/{ident}", None),
        ("PATCH", f"/api/v1/workflows/{ident}", {"description": "x"}),
        ("DELETE", f"/api/v1/workflows/{ident}", None),
        ("POST", f"/api/v1/workflows/{ident}/start", {"worker_queue_id": org.queue["id"]}),
        ("POST", f"/api/v1/workflows/{ident}/pause", None),
        ("POST", f"/api/v1/workflows/{ident}/resume", None),
        ("POST", f"/api/v1/workflows/{ident}/cancel", None),
        ("POST", f"/api/v1/workflows/{ident}/complete", None),
        ("POST", f"/api/v1/workflows/{ident}/steps/ok/approve", {}),
        ("POST", f"/api/v1/workflows/{ident}/steps/ok/reject", {}),
        ("GET", f"/api/v1/workflows/{ident}/runs", None),
        ("GET", "/api/v1/workflows/not-an-id", None),
    ]
    for method, path, payload in requests:
        assert_error(await other.request(method, path, json=payload), 404, "RESOURCE_NOT_FOUND")
    assert ident not in [w["id"] for w in (await other.get("/api/v1/workflows")).json()["items"]]
    assert await org_rows(db, org.tenant.id) == before
    deleted = await client.delete(f"/api/v1/workflows/{ident}")
    assert deleted.status_code == 200
    assert_error(await client.get(f"/api/v1/workflows/{ident}"), 404)


# --- replay ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(HISTORIES.glob("workflow_*.json")), ids=lambda path: str(Path(path).stem)
)
async def test_recorded_workflow_run_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=system_workflows()).replay_workflow(history)
    assert result.replay_failure is None


def test_run_histories_were_recorded() -> None:
    recorded = {path.stem for path in HISTORIES.glob("*.json")}
    assert recorded >= {
        "plan_diamond",
        "plan_waiting_task",
        "plan_failed_task",
        "plan_cancelled",
        "workflow_approved",
        "workflow_rejected",
        "workflow_cancelled",
    }
