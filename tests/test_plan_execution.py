"""Executing a task plan end to end: a plan from the planner, executed by PlanOrchestratorWorkflow
on a real system worker process, its tasks agent executions on a real worker process, the fake
model answering. A diamond of tasks, a task waiting for input, a failing task, cancel, a system
worker killed mid-run, bad input and other tenants; plus the replay of recorded histories."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette
from temporalio.client import WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import CancelledError
from temporalio.worker import Replayer

from controlplane.devtools.fake_anthropic import (
    AsyncFakeAnthropicClient,
    FakeAnthropicClient,
    FakeAnthropicServer,
    error_reply,
    text_reply,
    tool_reply,
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
from tests.test_planning import GENERATED, planner_stack, valid_plan

LONG = " ".join(f"w{i}" for i in range(12))  # a few chunks: slow with a per-chunk delay


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


def task(ident: int, description: str, dependencies: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "id": ident,
        "title": f"Task {ident}",
        "description": description,
        "details": "",
        "test_strategy": "",
        "priority": "high",
        "dependencies": dependencies,
        **extra,
    }


def plan_of(tasks: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "title": "A plan",
        "summary": "Things to do",
        "team_breakdown": [{"team_name": "Team", "tasks": tasks}],
        **fields,
    }


async def execute(org: Org, plan: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = await org.client().post(
        "/api/v1/tasks/plan/execute",
        json={"plan": plan, "worker_queue_id": org.queue["id"], **body},
    )
    assert response.status_code == 200, response.text
    started: dict[str, Any] = response.json()
    return started


async def plan_view(org: Org, execution_id: str) -> dict[str, Any]:
    response = await org.client("viewer").get(f"/api/v1/tasks/plan/{execution_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def ended(settings: Settings, org: Org, execution_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        view = await plan_view(org, execution_id)
        return view if view["status"] in ("completed", "failed", "cancelled") else None

    return await until(settings, check)


def last_prompt(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else str(content)


# --- a diamond: A; B and C after A, at once; D after both --------------------------------------


async def test_a_planned_diamond_runs_in_order_and_passes_outputs_on(
    org: Org, settings: Settings, fake: AsyncFakeAnthropicClient, db: asyncpg.Pool[Any]
) -> None:
    tok = token()
    agent_id = await make_agent(org.tenant, tok, one_shot=True)
    agent = (await org.tenant.viewer.get(f"/api/v1/agents/{agent_id}")).json()
    marks = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in "ABCD"}
    # B and C stream slowly, so they visibly overlap.
    await fake.script(marks["A"], [text_reply("alpha result")])
    await fake.script(marks["B"], [text_reply(f"beta result {LONG}", delay_per_chunk_ms=150)])
    await fake.script(marks["C"], [text_reply(f"gamma result {LONG}", delay_per_chunk_ms=150)])
    await fake.script(marks["D"], [text_reply("delta result")])
    diamond = [
        task(1, f"Start {marks['A']}", []),
        task(2, f"Left {marks['B']}", [1]),
        task(3, f"Right {marks['C']}", [1]),
        task(4, f"Join {marks['D']}", [2, 3]),
    ]
    # The plan, from the planner (its analysis generated, its plan scripted).
    await fake.script(
        tok, [GENERATED, tool_reply("submit_plan", valid_plan(agent["name"], diamond))]
    )
    planned = await org.client().post("/api/v1/tasks/plan", json={"description": f"Diamond {tok}"})
    assert planned.status_code == 200, planned.text
    plan, generation = planned.json()["plan"], planned.json()["execution_id"]
    assert all(t["agent_id"] == agent_id for t in plan["team_breakdown"][0]["tasks"])

    started = await execute(org, plan, plan_generation_id=generation)
    execution_id = started["execution_id"]
    assert started["status"] == "pending" and started["total_tasks"] == 4
    assert started["plan_title"] == plan["title"]
    assert started["workflow_id"] == f"plan-execution-{execution_id}"

    view = await ended(settings, org, execution_id)
    assert view["status"] == "completed", view
    assert (view["completed_tasks"], view["failed_tasks"], view["progress_percentage"]) == (
        4,
        0,
        100.0,
    )
    assert view["plan_generation_id"] == generation and view["waiting_tasks"] == []
    assert view["plan_json"]["title"] == plan["title"]
    outputs = {t["task_id"]: t["output"] for t in view["tasks"]}
    assert outputs[1] == "alpha result" and outputs[4] == "delta result"
    assert view["response"] == "delta result"  # the last task's output

    # Order: A before B and C, which overlap, both before D.
    runs = await children(db, execution_id)
    assert set(runs) == {"1", "2", "3", "4"}
    assert all(run["status"] == "completed" for run in runs.values())
    a, b, c, d = (runs[key] for key in "1234")
    assert a["completed_at"] <= b["created_at"] and a["completed_at"] <= c["created_at"]
    assert max(b["started_at"], c["started_at"]) < min(b["completed_at"], c["completed_at"])
    assert d["created_at"] >= max(b["completed_at"], c["completed_at"])
    # Outputs passed on: B and C were told A's, D was told B's and C's.
    assert "alpha result" in b["prompt"] and "alpha result" in c["prompt"]
    assert "beta result" in d["prompt"] and "gamma result" in d["prompt"]
    assert "alpha result" not in d["prompt"]  # only the tasks it depends on
    (request_d,) = await fake.bodies(marks["D"])
    assert "beta result" in last_prompt(request_d) and "gamma result" in last_prompt(request_d)
    # Each task's execution is the run's child, with the run's owner and queue.
    execution = (await org.tenant.viewer.get(f"/api/v1/executions/{d['id']}")).json()
    assert execution["parent_execution_id"] == execution_id
    assert execution["worker_queue_id"] == org.queue["id"]

    # The run is an execution: transitions, a stream, usage, webhooks.
    run = (await org.tenant.viewer.get(f"/api/v1/executions/{execution_id}")).json()
    assert run["execution_type"] == "plan" and run["status"] == "completed"
    assert set(run["usage"]["steps"]) == {"1", "2", "3", "4"}
    changes = await db.fetch(
        "SELECT payload FROM outbox_events WHERE organization_id = $1 "
        "AND event_type = 'workflow.state_changed' AND payload->'data'->>'execution_id' = $2 "
        "ORDER BY id",
        org.tenant.id,
        execution_id,
    )
    assert [c["payload"]["data"]["status"] for c in changes] == ["running", "completed"]
    kinds = [
        row["event_type"]
        for row in await db.fetch(
            "SELECT event_type FROM execution_events WHERE execution_id = $1 ORDER BY seq",
            uuid.UUID(execution_id),
        )
    ]
    assert kinds.count("task_status") >= 8 and kinds[-1] == "done"
    listed = await org.client("viewer").get("/api/v1/tasks/plan/plan-executions")
    summary = next(i for i in listed.json()["items"] if i["execution_id"] == execution_id)
    assert summary["status"] == "completed" and summary["completed_tasks"] == 4
    await record_run_history(org, started["workflow_id"], "plan_diamond")


# --- a task that waits for input ----------------------------------------------------------------


async def test_a_waiting_task_is_continued_by_message_and_ends_with_its_execution(
    org: Org, settings: Settings, fake: AsyncFakeAnthropicClient, db: asyncpg.Pool[Any]
) -> None:
    """The rule: a task ends when its execution ends. An agent that waits for input keeps its
    task waiting through every answer; a message with `mark_done` ends it."""
    tok, after = token(), token()
    talker = await make_agent(org.tenant, token())  # not one-shot: it waits for input
    closer = await make_agent(org.tenant, token(), one_shot=True)
    await fake.script(
        tok,
        [
            text_reply("Which colour?"),
            text_reply("Blue it is. Anything else?"),
            text_reply("Done: blue."),
        ],
    )
    await fake.script(after, [text_reply("Painted.")])
    plan = plan_of(
        [
            task(1, f"Ask {tok}", [], agent_id=talker),
            task(2, f"Paint {after}", [1], agent_id=closer),
        ]
    )
    execution_id = (await execute(org, plan))["execution_id"]
    client = org.client()

    async def waiting_with(answer: str) -> dict[str, Any] | None:
        view = await plan_view(org, execution_id)
        waiting = view["waiting_tasks"]
        return view if waiting and waiting[0]["output"] == answer else None

    view = await until(settings, lambda: waiting_with("Which colour?"))
    assert view["status"] == "pending_user_input"
    (waiting,) = view["waiting_tasks"]
    assert waiting["task_id"] == 1 and waiting["execution_id"] is not None
    assert [t["status"] for t in view["tasks"]] == ["waiting_for_input", "pending"]
    # Task 2 waits for task 1; a task that does not wait for input takes no message.
    refused = await client.post(
        f"/api/v1/tasks/plan/{execution_id}/tasks/2/message", json={"message": "hi"}
    )
    assert_error(refused, 400, "BAD_REQUEST")
    missing = await client.post(
        f"/api/v1/tasks/plan/{execution_id}/tasks/9/message", json={"message": "hi"}
    )
    assert_error(missing, 404, "RESOURCE_NOT_FOUND")

    # An answer: the task's execution answers and waits again; so does the task.
    sent = await client.post(
        f"/api/v1/tasks/plan/{execution_id}/tasks/1/message", json={"message": "Blue"}
    )
    assert sent.status_code == 202, sent.text
    assert sent.json()["task_execution_id"] == waiting["execution_id"]
    view = await until(settings, lambda: waiting_with("Blue it is. Anything else?"))
    assert view["status"] == "pending_user_input" and view["tasks"][1]["status"] == "pending"

    # An answer that ends it: the execution completes, the task with it, and task 2 runs.
    done = await client.post(
        f"/api/v1/tasks/plan/{execution_id}/tasks/1/message",
        json={"message": "That's all", "mark_done": True},
    )
    assert done.status_code == 202, done.text
    view = await ended(settings, org, execution_id)
    assert view["status"] == "completed", view
    assert [t["output"] for t in view["tasks"]] == ["Done: blue.", "Painted."]
    runs = await children(db, execution_id)
    assert runs["1"]["status"] == "completed" and "Done: blue." in runs["2"]["prompt"]
    (request,) = await fake.bodies(after)
    assert "Done: blue." in last_prompt(request)
    statuses = [
        row["to_state"]
        for row in await db.fetch(
            "SELECT to_state FROM execution_transitions WHERE execution_id = $1 ORDER BY id",
            uuid.UUID(execution_id),
        )
    ]
    assert statuses[:3] == ["pending", "running", "waiting_for_input"]
    assert statuses[-2:] == ["running", "completed"]
    await record_run_history(org, f"plan-execution-{execution_id}", "plan_waiting_task")


# --- a failing task ----------------------------------------------------------------------------


async def test_a_failing_task_skips_its_dependants_not_the_independent_tasks(
    org: Org, settings: Settings, fake: AsyncFakeAnthropicClient, db: asyncpg.Pool[Any]
) -> None:
    broken, side = token(), token()
    agent = await make_agent(org.tenant, token(), one_shot=True)
    await fake.script(broken, [error_reply(400, "prompt is too long")])
    await fake.script(side, [text_reply("Side done.")])
    plan = plan_of(
        [
            task(1, f"Break {broken}", []),
            task(2, "After the break", [1]),
            task(3, "Three, after two", [2]),
            task(4, f"Aside {side}", []),
        ]
    )
    execution_id = (await execute(org, plan, agent_id=agent))["execution_id"]
    view = await ended(settings, org, execution_id)
    assert view["status"] == "failed", view
    by_id = {t["task_id"]: t for t in view["tasks"]}
    assert by_id[1]["status"] == "failed" and "prompt is too long" in by_id[1]["error_message"]
    assert by_id[2]["status"] == "skipped" and by_id[3]["status"] == "skipped"
    assert by_id[2]["execution_id"] is None and by_id[3]["execution_id"] is None
    assert "1 did not complete" in by_id[2]["error_message"]
    assert by_id[4]["status"] == "completed" and by_id[4]["output"] == "Side done."
    assert (view["completed_tasks"], view["failed_tasks"], view["skipped_tasks"]) == (1, 1, 2)
    assert view["progress_percentage"] == 100.0
    assert "3 of 4 tasks did not complete" in view["error_message"]
    assert set(await children(db, execution_id)) == {"1", "4"}
    await record_run_history(org, f"plan-execution-{execution_id}", "plan_failed_task")


# --- cancel ------------------------------------------------------------------------------------


async def test_cancel_mid_run_cancels_the_running_tasks_and_starts_no_more(
    org: Org, settings: Settings, fake: AsyncFakeAnthropicClient, db: asyncpg.Pool[Any]
) -> None:
    slow = token()
    agent = await make_agent(org.tenant, token(), one_shot=True)
    await fake.script(slow, [text_reply(f"slow {LONG} {LONG}", delay_per_chunk_ms=400)])
    plan = plan_of([task(1, f"Slow {slow}", []), task(2, "Next", [1])])
    execution_id = (await execute(org, plan, agent_id=agent))["execution_id"]
    await arrived(fake, slow)  # task 1's model call streams
    cancelled = await org.client().post(f"/api/v1/executions/{execution_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["workflow_id"] == f"plan-execution-{execution_id}"
    view = await ended(settings, org, execution_id)
    assert view["status"] == "cancelled", view
    statuses = {t["task_id"]: t["status"] for t in view["tasks"]}
    assert statuses == {1: "cancelled", 2: "skipped"}
    runs = await children(db, execution_id)
    assert set(runs) == {"1"}

    async def child_cancelled() -> bool:
        status = await db.fetchval("SELECT status FROM executions WHERE id = $1", runs["1"]["id"])
        return bool(status == "cancelled")

    await until(settings, child_cancelled)
    handle = org.stack.temporal.get_workflow_handle(f"plan-execution-{execution_id}")
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), 30)
    assert isinstance(failure.value.cause, CancelledError)
    await record_run_history(org, f"plan-execution-{execution_id}", "plan_cancelled")


async def arrived(fake: AsyncFakeAnthropicClient, match: str) -> None:
    """Until the fake has received a request mentioning `match` (it answers when asked)."""
    waiter = FakeAnthropicClient(fake.base_url)
    await asyncio.to_thread(waiter.wait_requests, match, 1, 60)


# --- a system worker killed mid-run ------------------------------------------------------------


async def test_a_run_resumes_on_a_new_system_worker_and_runs_nothing_twice(
    org: Org,
    settings: Settings,
    fake_llm: FakeAnthropicServer,
    fake: AsyncFakeAnthropicClient,
    db: asyncpg.Pool[Any],
) -> None:
    first, second = token(), token()
    agent = await make_agent(org.tenant, token(), one_shot=True)
    await fake.script(first, [text_reply(f"first {LONG}", delay_per_chunk_ms=300)])
    await fake.script(second, [text_reply("second")])
    plan = plan_of([task(1, f"One {first}", []), task(2, f"Two {second}", [1])])
    async with planner_stack(settings, fake_llm) as stack:
        response = await stack.client(org.tenant).post(
            "/api/v1/tasks/plan/execute",
            json={"plan": plan, "worker_queue_id": org.queue["id"], "agent_id": agent},
        )
        assert response.status_code == 200, response.text
        execution_id = response.json()["execution_id"]
        # Task 1's execution is streaming: the run's system worker awaits it. Kill that worker.
        await arrived(fake, first)
        assert stack.process is not None
        stack.process.kill()
        await asyncio.to_thread(stack.process.wait, 10)
        replacement = start_system_worker(settings, stack.task_queue, fake_llm, "test-key")
        try:

            async def finished() -> dict[str, Any] | None:
                response = await stack.client(org.tenant, "viewer").get(
                    f"/api/v1/tasks/plan/{execution_id}"
                )
                view: dict[str, Any] = response.json()
                return view if view["status"] in ("completed", "failed") else None

            view = await until(settings, finished, timeout=120)
        finally:
            await asyncio.to_thread(stop, replacement)
    assert view["status"] == "completed", view
    assert [t["output"] for t in view["tasks"]] == [f"first {LONG}", "second"]
    # One execution per task, one model call per task: nothing ran twice.
    runs = await children(db, execution_id)
    assert set(runs) == {"1", "2"}
    assert len(await fake.requests(first)) == 1 and len(await fake.requests(second)) == 1
    events = await db.fetch(
        "SELECT data FROM execution_events WHERE execution_id = $1 AND event_type = 'task_status'",
        uuid.UUID(execution_id),
    )
    finals = [e["data"]["task_id"] for e in events if e["data"]["status"] == "completed"]
    assert sorted(finals) == [1, 2]


# --- bad input, other tenants --------------------------------------------------------------------


async def test_bad_plans_are_refused_before_anything_is_written(
    org: Org, other_tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    client, queue = org.client(), org.queue["id"]
    agent = await make_agent(org.tenant, token(), one_shot=True)
    theirs_queue = await make_queue(other_tenant, "theirs")
    theirs_agent = await make_agent(other_tenant, token())
    before = await org_rows(db, org.tenant.id)
    one = [task(1, "x", [])]
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({}, 422, "plan"),
        ({"plan": plan_of(one)}, 422, "worker_queue_id"),
        ({"plan": {"title": "t", "team_breakdown": []}, "worker_queue_id": queue}, 422, "plan"),
        ({"plan": plan_of([task(-1, "x", [])]), "worker_queue_id": queue}, 422, "plan"),
        ({"plan": plan_of([{"id": 1}]), "worker_queue_id": queue}, 422, "plan"),
        ({"plan": plan_of(one), "worker_queue_id": "nope"}, 422, "worker_queue_id"),
    ]
    for body, status, field in cases:
        error = assert_error(await client.post("/api/v1/tasks/plan/execute", json=body), status)
        fields = [e["field"] for e in error["details"]["validation_errors"]]
        assert any(f.startswith(field) for f in fields), (body, fields)
    refused: list[tuple[dict[str, Any], int, str]] = [
        (
            plan_of([task(1, "a", [2]), task(2, "b", [1])], agent_id=None),
            422,
            "cycle (1 -> 2 -> 1)",
        ),
        (plan_of([task(1, "a", [7])]), 422, "depends on '7', which is not a task"),
        (plan_of([task(1, "a", []), task(1, "b", [])]), 422, "task id '1' is used twice"),
        (
            plan_of([task(1, "a", [], agent_id=theirs_agent)]),
            422,
            "not an agent of your organization",
        ),
    ]
    for plan, status, message in refused:
        response = await client.post(
            "/api/v1/tasks/plan/execute",
            json={"plan": plan, "worker_queue_id": queue, "agent_id": agent},
        )
        error = assert_error(response, status, "VALIDATION_ERROR")
        assert any(message in e for e in error["details"]["errors"]), error
    nobody = await client.post(
        "/api/v1/tasks/plan/execute", json={"plan": plan_of(one), "worker_queue_id": queue}
    )
    assert "nobody runs it" in assert_error(nobody, 422)["message"]
    # Another organization's queue, agent or plan generation is not found.
    for body in (
        {"worker_queue_id": theirs_queue["id"], "agent_id": agent},
        {"worker_queue_id": queue, "agent_id": theirs_agent},
        {"worker_queue_id": queue, "agent_id": agent, "plan_generation_id": str(uuid.uuid4())},
    ):
        response = await client.post(
            "/api/v1/tasks/plan/execute", json={"plan": plan_of(one), **body}
        )
        assert_error(response, 404, "RESOURCE_NOT_FOUND")
    viewer = org.client("viewer")
    forbidden = await viewer.post(
        "/api/v1/tasks/plan/execute",
        json={"plan": plan_of(one), "worker_queue_id": queue, "agent_id": agent},
    )
    assert_error(forbidden, 403)
    assert await org_rows(db, org.tenant.id) == before


async def test_another_organizations_plan_execution_is_not_found(
    org: Org, other_tenant: Tenant, settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    agent = await make_agent(org.tenant, token(), one_shot=True)
    execution_id = (await execute(org, plan_of([task(1, "x", [])]), agent_id=agent))["execution_id"]
    await ended(settings, org, execution_id)
    (task_run,) = (await children(db, execution_id)).values()
    theirs = other_client(org, other_tenant)
    before = await org_rows(db, org.tenant.id)
    for ident in (execution_id, str(uuid.uuid4()), "not-an-id"):
        for method, path, body in (
            ("GET", f"/api/v1/tasks/plan/{ident}", None),
            ("GET", f"/api/v1/tasks/plan/{ident}/stream", None),
            ("POST", f"/api/v1/tasks/plan/{ident}/tasks/1/message", {"message": "hi"}),
            ("POST", f"/api/v1/executions/{ident}/cancel", None),
        ):
            response = await theirs.request(method, path, json=body)
            assert_error(response, 404, "RESOURCE_NOT_FOUND")
    listed = (await theirs.get("/api/v1/tasks/plan/plan-executions")).json()
    assert all(item["execution_id"] != execution_id for item in listed["items"])
    mine = org.client()
    # An execution of another kind is not a plan execution.
    assert_error(await mine.get(f"/api/v1/tasks/plan/{task_run['id']}"), 404)
    # A plan execution takes messages per task, not as a whole; an ended task takes none.
    whole = await mine.post(f"/api/v1/executions/{execution_id}/message", json={"message": "hi"})
    assert_error(whole, 409, "RESOURCE_CONFLICT")
    ended_task = await mine.post(
        f"/api/v1/tasks/plan/{execution_id}/tasks/1/message", json={"message": "hi"}
    )
    assert_error(ended_task, 400, "BAD_REQUEST")
    empty = await mine.post(
        f"/api/v1/tasks/plan/{execution_id}/tasks/1/message", json={"message": ""}
    )
    assert_error(empty, 422, "VALIDATION_ERROR")
    for task_id in ("x1", "99999999999", "-1"):
        response = await mine.post(
            f"/api/v1/tasks/plan/{execution_id}/tasks/{task_id}/message", json={"message": "hi"}
        )
        assert_error(response, 404, "RESOURCE_NOT_FOUND")
    bad_status = await mine.get("/api/v1/tasks/plan/plan-executions?status=sleeping")
    assert_error(bad_status, 422, "VALIDATION_ERROR")
    assert await org_rows(db, org.tenant.id) == before


# --- replay ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted(HISTORIES.glob("plan_*.json")),
    ids=lambda path: str(Path(path).stem),
)
async def test_recorded_plan_execution_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=system_workflows()).replay_workflow(history)
    assert result.replay_failure is None
