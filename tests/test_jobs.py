"""Jobs end to end: CRUD and its checks (a bad cron or time zone writes nothing), other tenants,
a cron job's Temporal Schedule (triggered with `ScheduleHandle.trigger()`, not waited for),
paused and resumed with the job, deleted with it; manual triggers with parameters, signed inbound
webhooks, and a workflow job; on a real system worker process and a real worker process, with
the fake model the only stand-in. Plus JobRunWorkflow's crash test (its system worker killed
mid-start) and the replay of its recorded histories."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette
from temporalio.client import (
    ScheduleActionExecutionStartWorkflow,
    ScheduleHandle,
    WorkflowExecutionStatus,
    WorkflowHistory,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer

from api.app import create_app
from controlplane.devtools.fake_anthropic import AsyncFakeAnthropicClient, FakeAnthropicServer
from controlplane.jobs.schedules import ScheduleSpecOfJob, build
from controlplane.services import free_port
from controlplane.settings import Settings
from controlplane.system.worker import HOUSEKEEPING_SCHEDULE, system_workflows
from tests.conftest import Tenant, assert_error, client_for, make_tenant, temporal_for
from tests.execution_helpers import make_agent
from tests.planning_helpers import start_system_worker, stop
from tests.resource_helpers import (
    assert_all_not_found,
    assert_validation,
    check_pagination,
    ordered_ids,
    rows_of,
)
from tests.run_helpers import Org, org_stack, other_client, token, until
from tests.test_planning import planner_stack
from tests.test_team_execution import make_team

HISTORIES = Path(__file__).parent / "histories" / "jobs"


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


@pytest.fixture(scope="module")
async def agent(org: Org) -> str:
    return await make_agent(org.tenant, token(), one_shot=True)


def job_body(org: Org, agent: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": f"job-{uuid.uuid4().hex[:8]}",
        "trigger_type": "manual",
        "entity_type": "agent",
        "entity_id": agent,
        "prompt_template": "Say hello",
        "worker_queue_id": org.queue["id"],
        **fields,
    }


async def create_job(org: Org, agent: str, **fields: Any) -> dict[str, Any]:
    response = await org.client().post("/api/v1/jobs", json=job_body(org, agent, **fields))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def schedule_of(org: Org, job_id: str) -> ScheduleHandle:
    return org.stack.temporal.get_schedule_handle(f"job-{job_id}")


async def job_executions(org: Org, job_id: str) -> list[dict[str, Any]]:
    response = await org.client("viewer").get(f"/api/v1/jobs/{job_id}/executions")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def finished(org: Org, settings: Settings, execution_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body: dict[str, Any] = (
            await org.client("viewer").get(f"/api/v1/executions/{execution_id}")
        ).json()
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    return await until(settings, check)


def signed(secret: str, body: bytes) -> str:
    # Independently of controlplane/jobs/signatures.py: what a sender (GitHub) computes.
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def record_job_history(org: Org, workflow_id: str, name: str) -> None:
    """With RECORD_HISTORIES=1, keep a JobRunWorkflow history for the replay test below."""
    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    history = await org.stack.temporal.get_workflow_handle(workflow_id).fetch_history()
    HISTORIES.mkdir(parents=True, exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


async def triggered_run(org: Org, job_id: str) -> str:
    """Trigger the job's Schedule now and answer the id of the JobRunWorkflow it started."""
    handle = schedule_of(org, job_id)
    before = {
        action.action.workflow_id
        for action in (await handle.describe()).info.recent_actions
        if isinstance(action.action, ScheduleActionExecutionStartWorkflow)
    }
    await handle.trigger()

    async def started() -> str | None:
        for action in (await handle.describe()).info.recent_actions:
            started = action.action
            if (
                isinstance(started, ScheduleActionExecutionStartWorkflow)
                and started.workflow_id not in before
            ):
                return started.workflow_id
        return None

    # The Schedule records its action asynchronously; no execution event marks it.
    return str(await until_true(started))


async def until_true(check: Any, attempts: int = 300) -> Any:
    for _ in range(attempts):
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


# --- CRUD and its checks -------------------------------------------------------------------------


async def test_crud_list_and_conflicts(org: Org, agent: str, db: asyncpg.Pool[Any]) -> None:
    client = org.client()
    created = await create_job(
        org, agent, description="Nightly", prompt_template="Check {{service}}"
    )
    assert created["trigger_type"] == "manual" and created["enabled"] is True
    assert created["status"] == "active" and created["entity_name"]
    assert created["webhook_url"] is None and created["webhook_secret"] is None
    assert created["temporal_schedule_id"] is None and created["next_run_at"] is None
    assert created["total_executions"] == 0 and created["last_run_at"] is None
    ident = created["id"]
    fetched = (await org.client("viewer").get(f"/api/v1/jobs/{ident}")).json()
    assert "webhook_secret" not in fetched and fetched["description"] == "Nightly"
    duplicate = await client.post("/api/v1/jobs", json=job_body(org, agent, name=created["name"]))
    assert_error(duplicate, 409, "RESOURCE_CONFLICT")
    patched = await client.patch(
        f"/api/v1/jobs/{ident}", json={"prompt_template": "Check {{service}} twice"}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["prompt_template"] == "Check {{service}} twice"
    # trigger_type is fixed; a manual job takes no schedule.
    assert_validation(
        await client.patch(f"/api/v1/jobs/{ident}", json={"cron_schedule": "* * * * *"}),
        "cron_schedule",
    )
    assert_validation(await client.patch(f"/api/v1/jobs/{ident}", json={"name": None}), "name")
    for _ in range(2):
        await create_job(org, agent)
    expected = await ordered_ids(db, "jobs", "organization_id = $1", org.tenant.id)
    await check_pagination(org.client("viewer"), "/api/v1/jobs", expected)
    manual = (await org.client("viewer").get("/api/v1/jobs?trigger_type=manual")).json()
    assert manual["total"] == len(expected)
    # A viewer reads, never writes.
    assert_error(await org.client("viewer").post(f"/api/v1/jobs/{ident}/trigger", json={}), 403)
    deleted = await client.delete(f"/api/v1/jobs/{ident}")
    assert deleted.json() == {"id": ident, "deleted": True}
    assert_error(await client.get(f"/api/v1/jobs/{ident}"), 404, "RESOURCE_NOT_FOUND")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron_schedule": "61 * * * *"}, "cron_schedule"),
        ({"cron_schedule": "* * *"}, "cron_schedule"),
        ({"cron_schedule": "5-1 * * * *"}, "cron_schedule"),
        ({"cron_schedule": "*/0 * * * *"}, "cron_schedule"),
        ({"cron_schedule": "0 9 * * MON", "cron_timezone": "Mars/Olympus"}, "cron_timezone"),
        ({"cron_schedule": "0 9 * * MON", "cron_timezone": "../../etc/passwd"}, "cron_timezone"),
        ({"cron_schedule": None}, "cron_schedule"),
    ],
)
async def test_a_bad_schedule_is_422_and_writes_nothing(
    org: Org, agent: str, db: asyncpg.Pool[Any], fields: dict[str, Any], field: str
) -> None:
    before = await rows_of(db, "jobs", org.tenant.id)
    body = job_body(org, agent, trigger_type="cron", **fields)
    assert_validation(await org.client().post("/api/v1/jobs", json=body), field)
    assert await rows_of(db, "jobs", org.tenant.id) == before


async def test_bad_bodies_and_references(
    org: Org, agent: str, db: asyncpg.Pool[Any], other_tenant: Tenant
) -> None:
    client = org.client()
    before = await rows_of(db, "jobs", org.tenant.id)
    malformed = await client.post(
        "/api/v1/jobs", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert_error(malformed, 400, "BAD_REQUEST")
    assert_validation(
        await client.post("/api/v1/jobs", json={"name": ""}),
        "name",
        "trigger_type",
        "entity_type",
        "entity_id",
        "prompt_template",
        "worker_queue_id",
    )
    bad_enum = job_body(org, agent, trigger_type="hourly", entity_type="robot")
    assert_validation(await client.post("/api/v1/jobs", json=bad_enum), "trigger_type")
    # A schedule on a job that has none.
    manual_cron = job_body(org, agent, cron_schedule="* * * * *")
    assert_validation(await client.post("/api/v1/jobs", json=manual_cron), "cron_schedule")
    # Another tenant's agent and queue, and ids that name nothing: 404, nothing written.
    other_agent = await make_agent(other_tenant, token())
    missing = str(uuid.uuid4())
    for fields in (
        {"entity_id": other_agent},
        {"entity_id": missing},
        {"entity_type": "team"},
        {"entity_type": "workflow"},
        {"worker_queue_id": missing},
    ):
        response = await client.post("/api/v1/jobs", json=job_body(org, agent, **fields))
        assert_error(response, 404, "RESOURCE_NOT_FOUND")
    # Credentials for runs are an admin's to give.
    secrets = job_body(org, agent, execution_environment={"secrets": ["DB_PASSWORD"]})
    assert_error(await client.post("/api/v1/jobs", json=secrets), 403, "AUTHORIZATION_ERROR")
    assert await rows_of(db, "jobs", org.tenant.id) == before


async def test_another_tenants_job_is_not_found_on_every_route(
    org: Org, agent: str, other_tenant: Tenant
) -> None:
    job = await create_job(org, agent, trigger_type="cron", cron_schedule="0 3 * * *")
    other = other_client(org, other_tenant)
    requests = [
        lambda ident: other.get(f"/api/v1/jobs/{ident}"),
        lambda ident: other.patch(f"/api/v1/jobs/{ident}", json={"description": "mine"}),
        lambda ident: other.delete(f"/api/v1/jobs/{ident}"),
        lambda ident: other.post(f"/api/v1/jobs/{ident}/enable"),
        lambda ident: other.post(f"/api/v1/jobs/{ident}/disable"),
        lambda ident: other.post(f"/api/v1/jobs/{ident}/trigger", json={}),
        lambda ident: other.get(f"/api/v1/jobs/{ident}/executions"),
    ]
    for request in requests:
        await assert_all_not_found(request, job["id"])
    listed = (await other.get("/api/v1/jobs")).json()
    assert job["id"] not in {item["id"] for item in listed["items"]}
    still = (await org.client("viewer").get(f"/api/v1/jobs/{job['id']}")).json()
    assert still["enabled"] is True and still["description"] is None
    assert (await schedule_of(org, job["id"]).describe()).schedule.state.paused is False


async def test_temporal_down_is_503_and_changes_nothing(
    org: Org, agent: str, settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    """The row and its Schedule stay together: without Temporal, no cron job is created,
    changed, disabled or deleted, and reading one says so."""
    job = await create_job(org, agent, trigger_type="cron", cron_schedule="0 5 * * *")
    unreachable = dataclasses.replace(
        settings,
        temporal_address=f"127.0.0.1:{free_port()}",
        system_task_queue=org.stack.task_queue,
    )
    down = create_app(unreachable)
    before = await rows_of(db, "jobs", org.tenant.id)
    async with down.router.lifespan_context(down):
        client = client_for(down, org.tenant.keys["member"])
        ident = job["id"]
        for response in (
            await client.post(
                "/api/v1/jobs",
                json=job_body(org, agent, trigger_type="cron", cron_schedule="0 6 * * *"),
            ),
            await client.get(f"/api/v1/jobs/{ident}"),
            await client.patch(f"/api/v1/jobs/{ident}", json={"cron_schedule": "0 7 * * *"}),
            await client.post(f"/api/v1/jobs/{ident}/disable"),
            await client.delete(f"/api/v1/jobs/{ident}"),
        ):
            assert_error(response, 503, "SERVICE_UNAVAILABLE")
        # A manual job needs no Schedule.
        manual = await client.post("/api/v1/jobs", json=job_body(org, agent))
        assert manual.status_code == 201, manual.text
    after = await rows_of(db, "jobs", org.tenant.id)
    assert [row for row in after if str(row["id"]) != manual.json()["id"]] == before
    described = await schedule_of(org, job["id"]).describe()
    assert described.schedule.state.paused is False


# --- cron jobs: their Temporal Schedule ------------------------------------------------------


async def test_a_cron_job_runs_when_its_schedule_fires(
    org: Org, settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    tok = token()
    agent = await make_agent(org.tenant, tok, one_shot=True)
    job = await create_job(
        org,
        agent,
        trigger_type="cron",
        cron_schedule="*/5  *  * * *",
        cron_timezone="Europe/Paris",
        prompt_template=f"Nightly report {tok}",
    )
    assert job["cron_schedule"] == "*/5 * * * *" and job["cron_timezone"] == "Europe/Paris"
    assert job["temporal_schedule_id"] == f"job-{job['id']}"
    assert job["next_run_at"] is not None and job["last_run_at"] is None
    described = await schedule_of(org, job["id"]).describe()
    assert described.schedule.spec.cron_expressions == ["*/5 * * * *"] or (
        described.schedule.spec.calendars  # the server may store it parsed
    )
    assert described.schedule.spec.time_zone_name == "Europe/Paris"
    assert described.schedule.state.paused is False

    workflow_id = await triggered_run(org, job["id"])
    result = await org.stack.temporal.get_workflow_handle(workflow_id).result()
    assert result["execution_id"] and result["skipped"] is None
    done = await finished(org, settings, result["execution_id"])
    assert done["status"] == "completed", done
    assert done["trigger_source"] == "job_cron" and done["job_id"] == job["id"]
    assert done["prompt"] == f"Nightly report {tok}"
    assert done["execution_metadata"]["job_run_key"] == workflow_id
    runs = await job_executions(org, job["id"])
    assert [run["id"] for run in runs] == [result["execution_id"]]
    after = (await org.client("viewer").get(f"/api/v1/jobs/{job['id']}")).json()
    assert after["last_run_at"] is not None and after["total_executions"] == 1
    await record_job_history(org, workflow_id, "cron_run_started")


async def test_disable_pauses_the_schedule_and_enable_resumes_it(
    org: Org, agent: str, db: asyncpg.Pool[Any]
) -> None:
    job = await create_job(org, agent, trigger_type="cron", cron_schedule="@hourly")
    disabled = await org.client().post(f"/api/v1/jobs/{job['id']}/disable")
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["enabled"] is False and disabled.json()["status"] == "disabled"
    assert disabled.json()["next_run_at"] is None
    assert (await schedule_of(org, job["id"]).describe()).schedule.state.paused is True
    # A run while disabled (a Schedule triggered by hand runs even when paused) starts nothing.
    workflow_id = await triggered_run(org, job["id"])
    result = await org.stack.temporal.get_workflow_handle(workflow_id).result()
    assert result == {"execution_id": None, "skipped": "the job is disabled"}
    assert await job_executions(org, job["id"]) == []
    refused = await org.client().post(f"/api/v1/jobs/{job['id']}/trigger", json={})
    assert_error(refused, 400, "BAD_REQUEST")
    await record_job_history(org, workflow_id, "cron_run_skipped")

    enabled = await org.client().post(f"/api/v1/jobs/{job['id']}/enable")
    assert enabled.json()["enabled"] is True and enabled.json()["next_run_at"] is not None
    assert (await schedule_of(org, job["id"]).describe()).schedule.state.paused is False
    # PATCH moves the Schedule too.
    patched = await org.client().patch(
        f"/api/v1/jobs/{job['id']}", json={"cron_schedule": "0 4 * * *", "cron_timezone": "UTC"}
    )
    assert patched.status_code == 200, patched.text
    spec = (await schedule_of(org, job["id"]).describe()).schedule.spec
    assert spec.cron_expressions == ["0 4 * * *"] or spec.calendars
    assert patched.json()["next_run_at"].endswith(("04:00:00Z", "04:00:00+00:00"))
    # A bad schedule in a PATCH changes neither the row nor the Schedule.
    before = await rows_of(db, "jobs", org.tenant.id)
    bad = await org.client().patch(f"/api/v1/jobs/{job['id']}", json={"cron_schedule": "60 * *"})
    assert_validation(bad, "cron_schedule")
    assert await rows_of(db, "jobs", org.tenant.id) == before


async def test_delete_removes_the_schedule(org: Org, agent: str) -> None:
    job = await create_job(
        org, agent, trigger_type="cron", cron_schedule="0 0 1 * *", enabled=False
    )
    # Created disabled: its Schedule starts paused.
    assert job["status"] == "disabled" and job["next_run_at"] is None
    assert (await schedule_of(org, job["id"]).describe()).schedule.state.paused is True
    assert (await org.client().delete(f"/api/v1/jobs/{job['id']}")).status_code == 200
    with pytest.raises(RPCError) as gone:
        await schedule_of(org, job["id"]).describe()
    assert gone.value.status == RPCStatusCode.NOT_FOUND


async def test_a_schedule_without_its_job_removes_itself(org: Org) -> None:
    """What a create whose row did not commit leaves behind: its first run takes it away."""
    orphan = str(uuid.uuid4())
    spec = ScheduleSpecOfJob(orphan, org.tenant.id, "0 0 1 1 *", None, enabled=True)
    await org.stack.temporal.create_schedule(f"job-{orphan}", build(spec, org.stack.task_queue))
    workflow_id = await triggered_run(org, orphan)
    result = await org.stack.temporal.get_workflow_handle(workflow_id).result()
    assert result == {"execution_id": None, "skipped": "the job was deleted"}
    with pytest.raises(RPCError) as gone:
        await schedule_of(org, orphan).describe()
    assert gone.value.status == RPCStatusCode.NOT_FOUND
    await record_job_history(org, workflow_id, "cron_run_job_gone")


# --- manual and webhook triggers -----------------------------------------------------------------


async def test_a_manual_trigger_fills_the_template(
    org: Org, settings: Settings, fake_llm: FakeAnthropicServer
) -> None:
    tok = token()
    agent = await make_agent(org.tenant, tok, one_shot=True)
    job = await create_job(org, agent, prompt_template="Check {{service}} in {{region}} {{x}}")
    not_an_object = await org.client().post(
        f"/api/v1/jobs/{job['id']}/trigger", json={"parameters": ["billing"]}
    )
    assert_validation(not_an_object, "parameters")
    response = await org.client().post(
        f"/api/v1/jobs/{job['id']}/trigger",
        json={"parameters": {"service": "billing", "region": "eu-west-1"}},
    )
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["trigger_source"] == "job_manual" and run["job_id"] == job["id"]
    assert run["prompt"] == "Check billing in eu-west-1 {{x}}"
    done = await finished(org, settings, run["execution_id"])
    assert done["status"] == "completed", done
    assert done["trigger_source"] == "job_manual" and done["job_id"] == job["id"]
    # What the model received.
    bodies = await AsyncFakeAnthropicClient(fake_llm.base_url).bodies(tok)
    assert bodies, "the model was never called"
    user_texts = json.dumps([message for body in bodies for message in body["messages"]])
    assert "Check billing in eu-west-1 {{x}}" in user_texts
    listed = (await org.client("viewer").get(f"/api/v1/executions?job_id={job['id']}")).json()
    assert [item["id"] for item in listed["items"]] == [run["execution_id"]]


async def test_inbound_webhooks_are_verified(
    org: Org, settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    tok = token()
    agent = await make_agent(org.tenant, tok, one_shot=True)
    job = await create_job(
        org,
        agent,
        trigger_type="webhook",
        prompt_template=f"Review PR {{{{payload.pull_request.title}}}} {tok}",
    )
    secret = job["webhook_secret"]
    assert secret and job["webhook_url"].startswith(settings.public_url)
    path = job["webhook_url"].rsplit("/", 1)[1]
    assert len(path) >= 32
    fetched = (await org.client("viewer").get(f"/api/v1/jobs/{job['id']}")).json()
    assert fetched["webhook_url"] == job["webhook_url"] and "webhook_secret" not in fetched
    sealed = await db.fetchval(
        "SELECT webhook_secret_ciphertext FROM jobs WHERE id = $1", uuid.UUID(job["id"])
    )
    assert sealed and secret.encode() not in sealed
    anonymous = client_for(org.stack.app)  # no key: the signature authenticates
    url = f"/api/v1/jobs/webhook/{path}"
    body = json.dumps({"action": "opened", "pull_request": {"title": "Fix the cache"}}).encode()
    json_type = {"content-type": "application/json"}

    # Bad, missing or misplaced signatures: 401, nothing runs.
    good = signed(secret, body)
    tampered = good[:-1] + ("1" if good[-1] == "0" else "0")
    signatures: tuple[dict[str, str], ...] = (
        {},
        {"X-Webhook-Signature": signed("not-the-secret", body)},
        {"X-Webhook-Signature": signed(secret, body + b" ")},
        {"X-Hub-Signature-256": tampered},
        {"X-Webhook-Signature": "sha1=" + hmac.new(secret.encode(), body, "sha1").hexdigest()},
    )
    for headers in signatures:
        response = await anonymous.post(url, content=body, headers=json_type | headers)
        assert_error(response, 401, "AUTHENTICATION_ERROR")
    not_ascii = [(b"x-webhook-signature", "sha256=\u00e9".encode("latin-1"))]
    assert_error(await anonymous.post(url, content=body, headers=not_ascii), 401)
    assert await job_executions(org, job["id"]) == []
    unknown = await anonymous.post(
        "/api/v1/jobs/webhook/nothing-here",
        content=body,
        headers=json_type | {"X-Webhook-Signature": signed(secret, body)},
    )
    assert_error(unknown, 404, "RESOURCE_NOT_FOUND")

    # Both header forms run it, the payload in the template.
    started = []
    for header in ("X-Webhook-Signature", "X-Hub-Signature-256"):
        response = await anonymous.post(
            url, content=body, headers=json_type | {header: signed(secret, body)}
        )
        assert response.status_code == 200, response.text
        assert response.json()["trigger_source"] == "job_webhook"
        assert response.json()["prompt"] == f"Review PR Fix the cache {tok}"
        started.append(response.json()["execution_id"])
    for execution_id in started:
        done = await finished(org, settings, execution_id)
        assert done["status"] == "completed", done
        assert done["trigger_source"] == "job_webhook" and done["job_id"] == job["id"]
    assert {run["id"] for run in await job_executions(org, job["id"])} == set(started)

    # Disabled: the signature is still checked first, then the run is refused.
    await org.client().post(f"/api/v1/jobs/{job['id']}/disable")
    assert_error(await anonymous.post(url, content=body, headers=json_type), 401)
    refused = await anonymous.post(
        url, content=body, headers=json_type | {"X-Webhook-Signature": signed(secret, body)}
    )
    assert_error(refused, 400, "BAD_REQUEST")
    assert len(await job_executions(org, job["id"])) == 2


async def test_a_workflow_job_starts_a_workflow_run(org: Org, settings: Settings) -> None:
    tok = token()
    agent = await make_agent(org.tenant, tok, one_shot=True)
    workflow = await org.client().post(
        "/api/v1/workflows",
        json={
            "name": f"wf-{uuid.uuid4().hex[:8]}",
            "steps": [
                {
                    "id": "only",
                    "type": "agent",
                    "agent_id": agent,
                    "prompt": f"Do {{{{inputs.prompt}}}} for {{{{inputs.team}}}} {tok}",
                }
            ],
        },
    )
    assert workflow.status_code == 201, workflow.text
    job = await create_job(
        org,
        agent,
        entity_type="workflow",
        entity_id=workflow.json()["id"],
        prompt_template="the backup of {{db}}",
    )
    response = await org.client().post(
        f"/api/v1/jobs/{job['id']}/trigger", json={"parameters": {"db": "orders", "team": "sre"}}
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["execution_id"]
    assert response.json()["workflow_id"] == f"workflow-execution-{run_id}"
    done = await finished(org, settings, run_id)
    assert done["status"] == "completed", done
    assert done["execution_type"] == "workflow" and done["job_id"] == job["id"]
    assert done["trigger_source"] == "job_manual"
    assert done["execution_metadata"]["job_id"] == job["id"]
    state = (await org.client("viewer").get(f"/api/v1/workflows/{workflow.json()['id']}")).json()
    step = state["state"]["steps"]["only"]
    assert step["prompt"] == f"Do the backup of orders for sre {tok}"
    assert [run["id"] for run in await job_executions(org, job["id"])] == [run_id]


async def test_a_team_job_runs_its_team(org: Org, settings: Settings) -> None:
    tok = token()
    member = await make_agent(org.tenant, tok, one_shot=True)
    team = await make_team(org.tenant, tok, [member], coordination_type="sequential")
    job = await create_job(
        org, member, entity_type="team", entity_id=team["id"], prompt_template="Ship {{what}}"
    )
    assert job["entity_name"] == team["name"]
    response = await org.client().post(
        f"/api/v1/jobs/{job['id']}/trigger", json={"parameters": {"what": "v2"}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["workflow_id"].startswith("team-execution-")
    done = await finished(org, settings, response.json()["execution_id"])
    assert done["status"] == "completed", done
    assert done["execution_type"] == "team" and done["prompt"] == "Ship v2"
    assert done["trigger_source"] == "job_manual" and done["job_id"] == job["id"]


async def test_an_organization_without_jobs_lists_none(app: Starlette, db: Any) -> None:
    tenant = await make_tenant(app, db)
    listed = (await tenant.viewer.get("/api/v1/jobs")).json()
    assert listed == {"items": [], "total": 0, "limit": 50, "offset": 0}


# --- a system worker killed mid-run ------------------------------------------------------------


async def test_a_run_whose_system_worker_dies_mid_start_starts_one_execution(
    org: Org,
    settings: Settings,
    fake_llm: FakeAnthropicServer,
    db: asyncpg.Pool[Any],
    temporal_address: str,
) -> None:
    """JobRunWorkflow's crash test. Its activity is the whole workflow, so the crash that matters
    is the one inside it: the execution's row committed, its workflow not started yet, and the
    activity's completion never reported. The attempt Temporal retries (on a new system worker,
    once the dead one's attempt times out) must answer that execution and start it, not start
    a second one.

    The kill lands there deterministically: the test holds the job's row lock, so the activity's
    insert of the execution waits on its foreign key check (Postgres says who waits on whom);
    the worker is killed then, and once the lock is released the dead worker's backend finishes
    its statement and commits it, as Postgres does for a client that died mid-statement."""
    tok = token()
    agent = await make_agent(org.tenant, tok, one_shot=True)
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    # Housekeeping also starts an execution whose start is still due after 30s; paused, so what
    # is seen is what the retried activity does, whichever system worker runs its rounds.
    housekeeping = org.stack.temporal.get_schedule_handle(HOUSEKEEPING_SCHEDULE)
    await housekeeping.pause(note="a job run's crash test")
    lock = await asyncpg.connect(settings.database_url)
    replacement = None
    try:
        async with planner_stack(settings, fake_llm) as stack:
            assert stack.process is not None
            # Created through this stack's app: its Schedule runs on the worker killed below.
            created = await stack.client(org.tenant).post(
                "/api/v1/jobs",
                json=job_body(
                    org,
                    agent,
                    trigger_type="cron",
                    cron_schedule="0 0 1 1 *",
                    prompt_template=f"Yearly report {tok}",
                ),
            )
            assert created.status_code == 201, created.text
            job_id = uuid.UUID(created.json()["id"])
            async with lock.transaction():
                await lock.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job_id)
                holder = await lock.fetchval("SELECT pg_backend_pid()")
                workflow_id = await triggered_run(org, str(job_id))
                waiting = await until_true(
                    lambda: db.fetchval(
                        "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                        holder,
                    )
                )
                stack.process.kill()
                await asyncio.to_thread(stack.process.wait, 10)
            await until_true(
                lambda: db.fetchval(
                    "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", waiting
                )
            )
            # The window: the row committed, its workflow not started, the run not done.
            (row,) = await db.fetch(
                "SELECT id, status, execution_metadata->>'job_run_key' AS run_key "
                "FROM executions WHERE job_id = $1",
                job_id,
            )
            assert row["status"] == "pending" and row["run_key"] == workflow_id
            tenant_temporal = await temporal_for(temporal_address, org.tenant)
            with pytest.raises(RPCError) as unknown:
                await tenant_temporal.get_workflow_handle(f"agent-execution-{row['id']}").describe()
            assert unknown.value.status == RPCStatusCode.NOT_FOUND
            job_run = org.stack.temporal.get_workflow_handle(workflow_id)
            assert (await job_run.describe()).status == WorkflowExecutionStatus.RUNNING
            assert await fake.requests(tok) == []

            replacement = start_system_worker(settings, stack.task_queue, fake_llm, "test-key")
            # The dead attempt is retried once its start_to_close_timeout (two minutes) ends.
            async with asyncio.timeout(240):
                result = await job_run.result()
            # One execution for the run, the one the dead attempt recorded: none started twice.
            executions = await db.fetch("SELECT id FROM executions WHERE job_id = $1", job_id)
            assert [execution["id"] for execution in executions] == [row["id"]]
            assert result == {"execution_id": str(row["id"]), "skipped": None}
            done = await finished(org, settings, str(row["id"]))
    finally:
        await asyncio.to_thread(stop, replacement)
        await lock.close()
        await housekeeping.unpause()
    assert done["status"] == "completed", done
    assert done["trigger_source"] == "job_cron" and done["prompt"] == f"Yearly report {tok}"
    assert len(await fake.requests(tok)) == 1  # one model call: it ran once


# --- replay ------------------------------------------------------------------------------------


def test_job_histories_were_recorded() -> None:
    assert {path.stem for path in HISTORIES.glob("*.json")} >= {
        "cron_run_started",
        "cron_run_skipped",
        "cron_run_job_gone",
    }


@pytest.mark.parametrize(
    "path", sorted(HISTORIES.glob("*.json")), ids=lambda path: str(Path(path).stem)
)
async def test_recorded_job_run_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=system_workflows()).replay_workflow(history)
    assert result.replay_failure is None
